"""Resolution buckets: the allocation of M, per-bucket estimates, the pooled density, format version 2, the
runtime's ``shape=``, the CLI per bucket, and the resolution-dependent shift line and its export."""

import json
import math

import numpy as np
import pytest
import torch
from artifacts import estimate_with
from safetensors.numpy import save_file
from scipy.stats import kstest
from typer.testing import CliRunner

import vrcurve
from vrcurve.artifact import TENSORS, bucket_tensor_name, payload_checksum, read_artifact, write_artifact
from vrcurve.buckets import allocate, fit_shift_line, sequence_length
from vrcurve.cli import app
from vrcurve.density import density_from_curve
from vrcurve.errors import VRCurveError
from vrcurve.estimator import estimate
from vrcurve.readers import open_source
from vrcurve.samples import choose_indices, load_buckets
from vrcurve.schedulers import get_scheduler

runner = CliRunner()
SMALL, LARGE = (2, 4, 4), (2, 4, 6)


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _mixed_folder(folder, counts=((SMALL, 30), (LARGE, 18)), seed=0):
    """Per-sample .npy files of two latent shapes, interleaved in file order as a bucketed cache is."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    shapes = [s for s, n in counts for _ in range(n)]
    rng.shuffle(shapes)
    for i, shape in enumerate(shapes):
        # the larger bucket is spread wider, so the two curves differ
        scale = 1.0 if shape == counts[0][0] else 3.0
        np.save(folder / f"{i:04d}.npy", (rng.standard_normal(shape) * scale + 0.5).astype(np.float32))
    return folder


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return _mixed_folder(tmp_path_factory.mktemp("buckets") / "latents")


@pytest.fixture(scope="module")
def bucketed(mixed, tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "bucketed.safetensors"
    result = estimate_with(str(mixed), out, get_scheduler("linear"), samples=40, noise=6, timesteps=64, seed=3,
                          precision="float32", bootstrap=20, min_bucket=8, table_size=256)
    return out, result


# --- allocation ------------------------------------------------------------------------------------------------

def test_allocation_is_proportional_when_no_bound_binds():
    assert allocate([600, 300, 100], 100, minimum=2) == [60, 30, 10]
    # largest remainders: 50/3 each -> 17, 17, 16 (ties to the earlier, larger bucket)
    assert allocate([30, 30, 30], 50, minimum=2) == [17, 17, 16]


def test_allocation_pins_small_buckets_at_the_minimum_and_splits_the_rest():
    # shares 90, 8, 2 of M = 100: the two small buckets get 16 each, the first the remaining 68
    assert allocate([900, 80, 20], 100, minimum=16) == [68, 16, 16]
    # a bucket is never given more than it holds
    assert allocate([1000, 20], 1010, minimum=16) == [990, 20]


@pytest.mark.parametrize("counts,M,minimum", [([37, 21, 16], 60, 16), ([1000, 300, 17, 16], 200, 16),
                                              ([5, 5], 10, 2)])
def test_allocation_adds_up_and_stays_in_bounds(counts, M, minimum):
    got = allocate(counts, M, minimum)
    assert sum(got) == M
    assert all(minimum <= g <= c for g, c in zip(got, counts))


def test_allocation_refuses_too_few_samples_for_the_minimum():
    with pytest.raises(VRCurveError, match=r"--samples 20 cannot give each of the 2 resolution buckets its minimum of "
                                           r"16 samples; pass --samples 32 or more"):
        allocate([100, 50], 20, minimum=16)


def test_allocation_of_all_samples():
    assert allocate([7, 3], None, minimum=2) == [7, 3]


# --- the estimate per bucket -------------------------------------------------------------------------------------

def test_per_bucket_curves_equal_single_bucket_estimates_of_the_same_samples_and_noise(mixed, bucketed):
    path, result = bucketed
    arrays, meta = read_artifact(path)
    source = open_source(str(mixed))
    groups = source.groups()
    assert [tuple(b["shape"]) for b in meta["buckets"]] == list(groups) == [SMALL, LARGE]
    assert [b["samples"] for b in meta["buckets"]] == [25, 15]  # 40 split 30 : 18
    # the pooled statistics: the mixture of the buckets by their shares 30/48 and 18/48
    rows = {s: np.stack([np.load(source.files[i]) for i in idx[choose_indices(len(idx), m, 3)]]).astype(np.float64)
            for (s, idx), m in zip(groups.items(), (25, 15))}
    w = {SMALL: 30 / 48, LARGE: 18 / 48}
    mean = sum(w[s] * x.mean() for s, x in rows.items())
    std = math.sqrt(sum(w[s] * (x.var() + (x.mean() - mean) ** 2) for s, x in rows.items()))
    assert meta["normalization"]["mean"] == pytest.approx(mean, rel=1e-12)
    assert meta["normalization"]["std"] == pytest.approx(std, rel=1e-12)
    for b, ((shape, idx), m) in enumerate(zip(groups.items(), (25, 15))):
        ids = idx[choose_indices(len(idx), m, 3)]  # each bucket chooses among its own samples with the seed
        x = torch.from_numpy(((rows[shape] - mean) / std).astype(np.float32))
        ref = estimate(x, get_scheduler("linear"), noise=6, timesteps=64, seed=3, source_ids=ids, precision="float32")
        np.testing.assert_allclose(arrays[bucket_tensor_name(b, "variance")], ref.variance.astype(np.float32),
                                   rtol=1e-6)
        np.testing.assert_allclose(arrays[bucket_tensor_name(b, "S")], ref.S.astype(np.float32), rtol=1e-6)
        dens = density_from_curve(ref.variance, 256)
        np.testing.assert_allclose(arrays[bucket_tensor_name(b, "cdf")], dens.cdf.astype(np.float32), atol=1e-6)


def test_pooled_density_is_the_share_weighted_mixture(bucketed):
    path, _ = bucketed
    arrays, meta = read_artifact(path)
    shares = [b["share"] for b in meta["buckets"]]
    assert shares == pytest.approx([30 / 48, 18 / 48])
    for name in ("pdf", "cdf"):
        mix = sum(w * arrays[bucket_tensor_name(b, name)].astype(np.float64) for b, w in enumerate(shares))
        np.testing.assert_allclose(arrays[name], mix, atol=2e-6)
    assert meta["samples"] == 40 and meta["format_version"] == 2
    assert meta["logitnormal_m_ci90"][0] <= meta["logitnormal_m"] <= meta["logitnormal_m_ci90"][1]


def test_the_two_buckets_really_differ(bucketed):
    # the fixture gives the larger bucket three times the spread, which the pooled normalisation keeps
    _, meta = read_artifact(bucketed[0])
    small, large = (b["logitnormal_m"] for b in meta["buckets"])
    assert large < small


def test_single_shape_data_gives_the_layout_of_one_curve(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 2, 4, 4)).astype(np.float32)
    folder = tmp_path / "one"
    folder.mkdir()
    for i, row in enumerate(x):
        np.save(folder / f"{i}.npy", row)
    np.save(tmp_path / "all.npy", x)
    common = dict(samples=12, noise=4, timesteps=32, seed=0, precision="float32", bootstrap=0)
    estimate_with(str(folder), tmp_path / "a.safetensors", get_scheduler("linear"), **common)
    estimate_with(str(tmp_path / "all.npy"), tmp_path / "b.safetensors", get_scheduler("linear"), **common)
    a, meta = read_artifact(tmp_path / "a.safetensors")
    b, _ = read_artifact(tmp_path / "b.safetensors")
    assert "buckets" not in meta and not [k for k in a if k.startswith("bucket.")]
    assert sorted(a) == sorted(TENSORS)
    for k in TENSORS:
        np.testing.assert_array_equal(a[k], b[k])


def test_check_convergence_over_buckets(mixed, tmp_path):
    result = estimate_with(str(mixed), tmp_path / "c.safetensors", get_scheduler("linear"), samples=40, noise=4,
                          timesteps=32, seed=0, precision="float32", bootstrap=0, min_bucket=8, check_convergence=True)
    rows = result.convergence.rows
    # the same fraction of every bucket: 25 -> 6 and 12 (round(f M), at least 2), 15 -> 4 and 8
    assert [r.samples for r in rows] == [6 + 4, 12 + 8, 40]
    assert rows[-1].ks_to_full == 0.0


def test_channel_counts_that_differ_are_refused(tmp_path):
    folder = tmp_path / "mixed_channels"
    folder.mkdir()
    for i in range(20):
        np.save(folder / f"{i}.npy", np.random.default_rng(i).standard_normal((4 if i % 2 else 16, 4, 4)))
    source = open_source(str(folder))
    with pytest.raises(VRCurveError, match=r"mixes samples of shape 4x4x4 and 16x4x4, whose channel counts"):
        load_buckets(source, source.groups(), [5, 5], 0)


def test_pooled_global_normalisation_closed_form(tmp_path):
    # bucket A holds the value 1, bucket B the value 3, half the data each: mean 2, std 1
    folder = tmp_path / "const"
    folder.mkdir()
    for i in range(8):
        np.save(folder / f"{i}.npy", np.full((1, 2, 2) if i % 2 else (1, 2, 3), 1.0 if i % 2 else 3.0, np.float32))
    source = open_source(str(folder))
    loaded, stats = load_buckets(source, source.groups(), [None, None], 0)
    assert stats["mean"] == pytest.approx(2.0) and stats["std"] == pytest.approx(1.0)
    assert {float(s.x.mean()) for s in loaded} == {-1.0, 1.0}


# --- bad input: a bucket too small ----------------------------------------------------------------------------

def test_a_bucket_too_small_is_refused_in_one_sentence_and_nothing_is_written(tmp_path):
    data = _mixed_folder(tmp_path / "d", counts=((SMALL, 40), (LARGE, 5)))
    out = tmp_path / "vr.safetensors"
    r = _cli("estimate", "--data", data, "-o", out, "-M", 30, "-K", 2, "-T", 16)
    assert r.exit_code == 1
    assert "the resolution bucket 2x4x6 of" in r.output and "holds 5 samples, fewer than the minimum of 16 per bucket; " \
        "pass --drop-small-buckets to leave such buckets out, --min-bucket 5 to estimate it from that few" in r.output
    assert r.output.count("\n") == 1 and not out.exists()


def test_small_buckets_dropped_on_request_are_recorded(tmp_path):
    data = _mixed_folder(tmp_path / "d", counts=((SMALL, 40), (LARGE, 18), ((2, 6, 6), 3)))
    out = tmp_path / "vr.safetensors"
    r = _cli("estimate", "--data", data, "-o", out, "-M", 40, "-K", 2, "-T", 16, "--drop-small-buckets",
             "--bootstrap", 0, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["buckets_dropped"] == [{"shape": [2, 6, 6], "samples_total": 3}]
    assert [b["samples"] for b in summary["buckets"]] == [24, 16]  # 40 * 40/58 = 27.6, pinned: 16 for 18
    assert sum(vrcurve.load(out).buckets.values()) == pytest.approx(1.0)


def test_min_bucket_lets_a_small_bucket_in(tmp_path):
    data = _mixed_folder(tmp_path / "d", counts=((SMALL, 40), (LARGE, 5)))
    r = _cli("estimate", "--data", data, "-o", tmp_path / "vr.safetensors", "-M", 30, "-K", 2, "-T", 16,
             "--min-bucket", 5, "--bootstrap", 0, "--json")
    assert r.exit_code == 0, r.output
    assert [b["samples"] for b in json.loads(r.output)["buckets"]] == [25, 5]


# --- the runtime ---------------------------------------------------------------------------------------------

def _two_bucket_artifact(path, T=50):
    """A hand-made version-2 artifact: bucket (4, 8, 8) has pdf 2t, bucket (4, 16, 16) pdf 2(1 - t)."""
    edges = np.arange(T + 1) / T
    mid = (np.arange(T) + 0.5) / T
    densities = [density_from_curve(2 * mid, 512, uniform_mix=0.0), density_from_curve(2 * (1 - mid), 512, uniform_mix=0.0)]
    shares = [0.75, 0.25]
    pooled_pdf = sum(w * d.pdf for w, d in zip(shares, densities))
    pooled = density_from_curve(pooled_pdf, 512, uniform_mix=0.0)
    tensors = {"t": mid, "S": mid, "h2": mid, "variance": pooled_pdf, "pdf": pooled.pdf, "cdf": pooled.cdf,
               "icdf": pooled.icdf, "ks_m": np.zeros(25), "ks": np.zeros(25), "S_stderr": 0 * mid,
               "variance_stderr": 0 * mid}
    buckets = []
    for b, (shape, d, w) in enumerate(zip([[4, 8, 8], [4, 16, 16]], densities, shares)):
        for name, v in (("S", mid), ("variance", d.pdf), ("S_stderr", 0 * mid), ("variance_stderr", 0 * mid),
                        ("pdf", d.pdf), ("cdf", d.cdf), ("icdf", d.icdf)):
            tensors[bucket_tensor_name(b, name)] = v
        buckets.append({"shape": shape, "dim": int(np.prod(shape)), "samples_total": 30 if b == 0 else 10,
                        "share": w, "samples": 16, "logitnormal_m": 1.0 - 2 * b, "logitnormal_m_grid": 1.0 - 2 * b,
                        "logitnormal_s": 1.0, "ks": 0.1})
    write_artifact(path, tensors, {"time_convention": "t0_noise", "logitnormal_m": 0.5, "shape": [4, 8, 8],
                                   "buckets": buckets})
    assert np.allclose(edges ** 2, densities[0].cdf)
    return path


def test_sample_with_shape_draws_from_that_bucket(tmp_path):
    vr = vrcurve.load(_two_bucket_artifact(tmp_path / "two.safetensors"))
    assert vr.buckets == {(4, 8, 8): 0.75, (4, 16, 16): 0.25}
    g = torch.Generator().manual_seed(0)
    small = vr.sample(20000, shape=torch.Size([4, 8, 8]), generator=g).double().numpy()
    large = vr.sample(20000, shape=(4, 16, 16), generator=g).double().numpy()
    assert kstest(small, lambda t: t ** 2).pvalue > 1e-3            # the bucket's own cdf, t^2
    assert kstest(large, lambda t: 1 - (1 - t) ** 2).pvalue > 1e-3  # and 1 - (1 - t)^2
    assert kstest(small, lambda t: 1 - (1 - t) ** 2).statistic > 0.2
    # the pooled density when no shape is given: 0.75 t^2 + 0.25 (1 - (1 - t)^2)
    pooled = vr.sample(20000, generator=g).double().numpy()
    assert kstest(pooled, lambda t: 0.75 * t ** 2 + 0.25 * (1 - (1 - t) ** 2)).pvalue > 1e-3


def test_an_unseen_shape_takes_the_nearest_bucket_by_size(tmp_path):
    vr = vrcurve.load(_two_bucket_artifact(tmp_path / "two.safetensors"))
    assert vr.bucket((4, 10, 10)) is vr.bucket((4, 8, 8))      # 400 elements: 256 is nearer than 1024
    assert vr.bucket((4, 12, 16)) is vr.bucket((4, 16, 16))    # 768: nearer 1024
    assert vr.bucket((4, 8, 8)).logitnormal_m == 1.0 and vr.bucket((4, 16, 16)).logitnormal_m == -1.0
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    torch.testing.assert_close(vr.pdf(t, shape=(4, 12, 16)), 2 * (1 - t), atol=0.05, rtol=0)
    torch.testing.assert_close(vr.weights(t, shape=(4, 8, 8)), 1 / vr.bucket((4, 8, 8)).pdf(t))


def test_flip_keeps_the_buckets(tmp_path):
    vr = vrcurve.load(_two_bucket_artifact(tmp_path / "two.safetensors"))
    flipped = vr.flip()
    assert flipped.buckets == vr.buckets
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(flipped.cdf(t, shape=(4, 8, 8)), 1 - vr.cdf(1 - t, shape=(4, 8, 8)))
    assert flipped.bucket((4, 16, 16)).logitnormal_m == 1.0  # -(-1) in the t = 1 noise convention


def test_a_bad_shape_argument_is_one_sentence(tmp_path):
    vr = vrcurve.load(_two_bucket_artifact(tmp_path / "two.safetensors"))
    with pytest.raises(VRCurveError, match="shape= must be a sequence of whole numbers"):
        vr.sample(3, shape="4x8x8")


def test_a_version_1_artifact_still_loads(tmp_path):
    """A file in the version-1 layout, written here as vrcurve 0.1 wrote it (not through write_artifact)."""
    T, U = 20, 64
    mid = (np.arange(T) + 0.5) / T
    d = density_from_curve(mid * (1 - mid), U, uniform_mix=0.0)
    tensors = {"t": mid, "S": mid, "h2": mid, "variance": mid * (1 - mid), "pdf": d.pdf, "cdf": d.cdf, "icdf": d.icdf,
               "ks_m": np.zeros(25), "ks": np.zeros(25), "S_stderr": 0 * mid, "variance_stderr": 0 * mid}
    tensors = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
    meta = {"format": "vrcurve", "format_version": "1", "vrcurve_version": "0.1.0", "time_convention": "t0_noise",
            "logitnormal_m": "0.0", "shape": "[4, 8, 8]", "checksum": payload_checksum(tensors)}
    path = tmp_path / "v1.safetensors"
    save_file(tensors, str(path), metadata=meta)
    vr = vrcurve.load(path)
    assert vr.meta["format_version"] == 1
    assert vr.buckets == {(4, 8, 8): 1.0}
    assert vr.bucket((4, 32, 32)) is vr
    torch.testing.assert_close(vr.cdf(torch.tensor([0.5], dtype=torch.float64)), torch.tensor([0.5], dtype=torch.float64))
    assert vr.sample(5, shape=(4, 8, 8)).shape == (5,)
    r = _cli("show", path)
    assert r.exit_code == 0 and "format_version" in r.output and "resolution buckets" not in r.output


def test_a_version_1_file_with_buckets_is_refused(tmp_path):
    path = _two_bucket_artifact(tmp_path / "two.safetensors")
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(str(path), framework="numpy") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(path))
    # a version 1 checksum covers the tensors only
    save_file(tensors, str(path), metadata={**meta, "format_version": "1", "checksum": payload_checksum(tensors)})
    with pytest.raises(VRCurveError, match="format version 1 but holds resolution buckets"):
        read_artifact(path)


@pytest.mark.parametrize("change,message", [
    (lambda t, b: t.pop(bucket_tensor_name(1, "icdf")), "bucket 1 lacks its tensor bucket.1.icdf"),
    (lambda t, b: b[0].update(share=0.5), r"the bucket shares \[0.5, 0.25\] do not add up to 1"),
    (lambda t, b: b[1].update(shape=[4, 8, 8]), "two buckets have the same shape"),
    (lambda t, b: t.update({bucket_tensor_name(0, "pdf"): np.ones(7)}), "bucket.0.pdf has shape"),
    (lambda t, b: b[0].pop("share"), "bucket 0 lacks share"),
    (lambda t, b: b[1].update(samples=0), "bucket 1 has an invalid samples 0"),
    (lambda t, b: t.update({bucket_tensor_name(1, "cdf"): t[bucket_tensor_name(1, "cdf")][::-1].copy()}),
     "bucket 1: the cdf does not rise from 0 to 1"),
    (lambda t, b: t[bucket_tensor_name(0, "pdf")].__setitem__(3, -1.0), "bucket 0: the density pdf is negative"),
])
def test_inconsistent_buckets_are_refused(tmp_path, change, message):
    path = _two_bucket_artifact(tmp_path / "two.safetensors")
    arrays, meta = read_artifact(path)
    change(arrays, meta["buckets"])
    bad = tmp_path / "bad.safetensors"
    keep = {k: v for k, v in meta.items() if k not in ("format", "format_version", "vrcurve_version", "checksum")}
    write_artifact(bad, arrays, keep)
    with pytest.raises(VRCurveError, match=message):
        read_artifact(bad)


# --- the command line per bucket ----------------------------------------------------------------------------

def test_show_lists_the_buckets(bucketed):
    r = _cli("show", bucketed[0])
    assert r.exit_code == 0, r.output
    assert "resolution buckets" in r.output
    lines = [ln.split() for ln in r.output.splitlines() if ln.strip().startswith(("2x4x4", "2x4x6"))]
    assert [ln[:4] for ln in lines] == [["2x4x4", "30", "0.625", "25"], ["2x4x6", "18", "0.375", "15"]]


def test_fit_logitnormal_per_bucket(bucketed):
    from vrcurve.fit import fit_logitnormal

    path = bucketed[0]
    arrays, meta = read_artifact(path)
    r = _cli("fit-logitnormal", path, "--json", "--convention", "t1-noise")
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    for b, row in enumerate(got["buckets"]):
        expected = fit_logitnormal(arrays[bucket_tensor_name(b, "cdf")].astype(np.float64)).m
        assert row["m"] == pytest.approx(-expected) and row["shape"] == meta["buckets"][b]["shape"]
    assert got["m"] == pytest.approx(-meta["logitnormal_m"])
    one = _cli("fit-logitnormal", path, "--bucket", "2x4x6", "-q")
    assert float(one.output) == pytest.approx(round(meta["buckets"][1]["logitnormal_m"], 4))
    assert _cli("fit-logitnormal", path, "--bucket", "big").exit_code == 2


def test_compare_per_bucket(bucketed, mixed, tmp_path):
    other = tmp_path / "other.safetensors"
    estimate_with(str(mixed), other, get_scheduler("linear"), samples=40, noise=6, timesteps=64, seed=4,
                 precision="float32", bootstrap=0, min_bucket=8, table_size=256)
    r = _cli("compare", bucketed[0], other, "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    rows = got["buckets"]
    assert [(tuple(x["shape"]), x["path"] == str(bucketed[0])) for x in rows] == [
        (SMALL, True), (SMALL, False), (LARGE, True), (LARGE, False)]
    assert rows[0]["ks"] == 0.0 and rows[1]["ks"] > 0
    worst = max(x["ks"] for x in rows + got["artifacts"])
    assert got["max_ks"] == pytest.approx(worst)
    r = _cli("compare", bucketed[0], other, "--fail-above", worst / 2)
    assert r.exit_code == 1 and "--fail-above" in r.output


def test_compare_a_single_shape_artifact_with_its_bucket(bucketed, tmp_path):
    """An artifact of one shape is compared with the reference's bucket of that shape (and --fail-above sees it)."""
    folder = _mixed_folder(tmp_path / "small_only", counts=((SMALL, 20),), seed=9)
    single = tmp_path / "single.safetensors"
    estimate_with(str(folder), single, get_scheduler("linear"), samples=20, noise=6, timesteps=64, seed=4,
                 precision="float32", bootstrap=0, table_size=256)
    r = _cli("compare", bucketed[0], single, "--json")
    assert r.exit_code == 0, r.output
    rows = [x for x in json.loads(r.output)["buckets"] if x["path"] == str(single)]
    assert [(tuple(x["shape"]), x["share"]) for x in rows] == [(SMALL, 1.0)]
    ref_m = next(b["logitnormal_m"] for b in read_artifact(bucketed[0])[1]["buckets"] if tuple(b["shape"]) == SMALL)
    assert rows[0]["dm"] == pytest.approx(read_artifact(single)[1]["logitnormal_m"] - ref_m)


def test_plot_draws_each_bucket(bucketed, tmp_path):
    pytest.importorskip("matplotlib")
    r = _cli("plot", bucketed[0], "-o", tmp_path / "p.png", "-q")
    assert r.exit_code == 0 and (tmp_path / "p.png").stat().st_size > 0


# --- the resolution-dependent shift -------------------------------------------------------------------------

def test_sequence_length():
    assert sequence_length((16, 128, 128), 2) == 4096       # Flux at 1024 x 1024
    assert sequence_length((16, 64, 96), 2) == 32 * 48
    assert sequence_length((16, 5, 32, 32), 2) == 5 * 256   # video: frames are not patched
    assert sequence_length((4, 32, 32), 1) == 1024
    with pytest.raises(VRCurveError, match="not divisible into 2 x 2 patches"):
        sequence_length((4, 33, 32), 2)
    with pytest.raises(VRCurveError, match="no \\(C, H, W\\) axes"):
        sequence_length((64,), 2)


def test_shift_line_recovers_a_known_line():
    # buckets whose m_p lie on Flux's default line mu = 0.5 at 256 tokens, 1.15 at 4096
    L = [256, 1024, 4096]
    mu = [0.5 + (1.15 - 0.5) * (x - 256) / (4096 - 256) for x in L]
    line = fit_shift_line(L, [-m for m in mu])
    assert line.endpoints(256, 4096) == pytest.approx((0.5, 1.15))
    assert line.residual == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(VRCurveError, match="at least two latent sequence lengths"):
        fit_shift_line([256, 256], [0.1, 0.2])


def _diffusers_mu(L, cfg):
    """diffusers' calculate_shift, re-implemented from its definition."""
    slope = (cfg["max_shift"] - cfg["base_shift"]) / (cfg["max_image_seq_len"] - cfg["base_image_seq_len"])
    return cfg["base_shift"] + slope * (L - cfg["base_image_seq_len"])


def test_dynamic_shift_export_reproduces_each_buckets_location(bucketed):
    path = bucketed[0]
    _, meta = read_artifact(path)
    r = _cli("export", path, "--to", "dynamic-shift", "--quiet")
    assert r.exit_code == 0, r.output
    cfg = json.loads("{" + r.output.strip().rstrip(",") + "}")
    assert cfg["use_dynamic_shifting"] is True and cfg["time_shift_type"] == "exponential"
    L = [sequence_length(b["shape"], 2) for b in meta["buckets"]]
    assert (cfg["base_image_seq_len"], cfg["max_image_seq_len"]) == (min(L), max(L)) == (4, 6)
    for b, length in zip(meta["buckets"], L):  # two buckets: the line passes through both
        assert _diffusers_mu(length, cfg) == pytest.approx(-b["logitnormal_m"], abs=2e-6)
    # a sampler shifting sigma = sigmoid(z) by exp(mu), as diffusers and kohya's flux_shift do, in vrcurve time
    g = torch.Generator().manual_seed(0)
    sigma = torch.sigmoid(torch.randn(200000, generator=g, dtype=torch.float64))
    mu = _diffusers_mu(L[0], cfg)
    shifted = math.exp(mu) * sigma / (math.exp(mu) * sigma + 1 - sigma)
    t = 1 - shifted
    assert float(torch.log(t / (1 - t)).mean()) == pytest.approx(meta["buckets"][0]["logitnormal_m"], abs=0.01)
    # other lengths give the same line
    r2 = _cli("export", path, "--to", "dynamic-shift", "--quiet", "--base-seq-len", 256, "--max-seq-len", 4096)
    cfg2 = json.loads("{" + r2.output.strip().rstrip(",") + "}")
    assert _diffusers_mu(5, cfg2) == pytest.approx(_diffusers_mu(5, cfg), abs=1e-5)


def test_dynamic_shift_of_a_shifted_artifact_uses_the_path_location(tmp_path):
    from vrcurve.export import bucket_shift_line
    from vrcurve.meta import ArtifactMeta

    meta = {"scheduler": {"name": "linear", "shift": 3.0},
            "buckets": [{"shape": [16, 64, 64], "logitnormal_m": 0.2}, {"shape": [16, 128, 128], "logitnormal_m": -0.1}]}
    line = bucket_shift_line(ArtifactMeta.from_values(meta))
    assert line.lengths == (1024, 4096)
    assert line.mus == pytest.approx((-(0.2 - math.log(3)), -(-0.1 - math.log(3))))


def test_dynamic_shift_of_one_shape_is_refused(tiny_artifact):
    r = _cli("export", tiny_artifact, "--to", "dynamic-shift")
    assert r.exit_code == 1 and "estimated on samples of one shape" in r.output


def test_kohya_export_says_what_the_line_is_against_flux_shift(bucketed):
    r = _cli("export", bucketed[0], "--to", "kohya")
    assert r.exit_code == 0, r.output
    assert "flux_shift" in r.output and "mu(L) = 0.456667 + 0.000169271 * L" in r.output
    assert r.output.strip().splitlines()[-1].startswith("--timestep_sampling shift")


def test_export_of_one_bucket_uses_its_own_fit(bucketed):
    _, meta = read_artifact(bucketed[0])
    r = _cli("export", bucketed[0], "--to", "simpletuner", "--bucket", "2x4x6", "--quiet")
    assert r.exit_code == 0, r.output
    shift = float(r.output.split("--flow_schedule_shift")[1])
    assert shift == pytest.approx(math.exp(-meta["buckets"][1]["logitnormal_m"]), rel=1e-5)
    pooled = float(_cli("export", bucketed[0], "--to", "simpletuner", "-q").output.split("--flow_schedule_shift")[1])
    assert pooled == pytest.approx(math.exp(-meta["logitnormal_m"]), rel=1e-5)
    assert _cli("export", bucketed[0], "--to", "json", "--bucket", "2x4x6").exit_code == 2


def test_show_draws_each_bucket(bucketed):
    r = _cli("show", bucketed[0])
    _, meta = read_artifact(bucketed[0])
    for b in meta["buckets"]:
        shape = "x".join(map(str, b["shape"]))
        assert f"bucket {shape} ({b['share']:.0%} of the data, m = {b['logitnormal_m']:+.4f})" in r.output


def test_moments_noise_of_a_bucket_is_keyed_by_the_index_in_the_whole_data(tmp_path):
    from vrcurve.samples import LatentTransform, moments_noise

    folder = tmp_path / "moments"
    folder.mkdir()
    rng = np.random.default_rng(0)
    files = []
    for i in range(12):  # mean and std of a 2-channel latent, two spatial sizes
        shape = (4, 2, 2) if i % 3 else (4, 2, 4)
        m = np.concatenate([rng.standard_normal((2, *shape[1:])), np.full((2, *shape[1:]), 0.5)]).astype(np.float32)
        np.save(folder / f"{i:02d}.npy", m)
        files.append(m)
    source = open_source(str(folder))
    loaded, _ = load_buckets(source, source.groups(), [None, None], 7, "none", LatentTransform(moments="sample"))
    for s in loaded:
        for row, i in zip(s.x, s.indices):
            expected = files[i][:2] + 0.5 * moments_noise(7, int(i), files[i][:2].shape)
            np.testing.assert_allclose(row, expected, rtol=1e-6)


def test_samples_all_uses_every_sample_of_every_bucket(mixed, tmp_path):
    result = estimate_with(str(mixed), tmp_path / "all.safetensors", get_scheduler("linear"), samples=None, noise=2,
                          timesteps=16, seed=0, precision="float32", bootstrap=0)
    assert [b["samples"] for b in result.metadata["buckets"]] == [30, 18]
    assert result.metadata["samples"] == 48


def test_nearest_bucket_is_the_exact_shape_else_the_nearest_size_and_the_first_on_ties():
    from vrcurve.buckets import nearest_bucket

    shapes = [(4, 8, 8), (4, 8, 12), (4, 4, 4)]  # 256, 384 and 64 elements
    assert nearest_bucket(shapes, (4, 8, 12)) == 1
    assert nearest_bucket(shapes, [4, 8, 11]) == 1  # 352: 32 from 384, 96 from 256
    assert nearest_bucket(shapes, (4, 4, 10)) == 0  # 160: 96 from 256 and from 64, the first wins
