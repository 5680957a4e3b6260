"""Choosing, checking, transforming (VAE moments, rescaling) and normalising the samples."""

from pathlib import Path

import numpy as np
import pytest
from artifacts import estimate_with
from typer.testing import CliRunner

from vrcurve.artifact import read_artifact
from vrcurve.cli import app
from vrcurve.errors import VRCurveError
from vrcurve.readers import open_source
from vrcurve.readers.arrays import NpySource
from vrcurve.samples import LatentTransform, apply_moments, choose_indices, load_samples, moments_noise, normalize
from vrcurve.schedulers import LinearScheduler

N, C = 12, 4


def tiny_estimate(data, out, **kw):
    """A whole estimate at test size: M = 8 of N, K = 4, T = 20; returns (tensors, metadata) of the artifact."""
    kw = {"samples": 8, "noise": 4, "timesteps": 20, "table_size": 64, "seed": 3, **kw}
    estimate_with(str(data), Path(out), LinearScheduler(), **kw)
    return read_artifact(out)


def assert_same_tensors(a, b):
    for k in a[0]:
        np.testing.assert_array_equal(a[0][k], b[0][k], err_msg=k)


def _save(path, x):
    np.save(path, x)
    return NpySource(path)


@pytest.fixture(scope="module")
def moments():
    """N VAE moments (2C, 3, 3): mean, then log-variance (negative, as real VAEs give)."""
    rng = np.random.default_rng(11)
    mean = rng.standard_normal((N, C, 3, 3))
    logvar = rng.uniform(-4.0, -0.5, (N, C, 3, 3))
    return np.concatenate([mean, logvar], axis=1).astype(np.float32)


# ---- choosing ------------------------------------------------------------------------------------------------

def test_choose_indices_is_uniform_distinct_sorted_and_seeded():
    idx = choose_indices(1000, 200, 5)
    assert idx.dtype == np.int64 and len(np.unique(idx)) == 200 and np.all(np.diff(idx) > 0)
    assert idx.min() >= 0 and idx.max() < 1000
    np.testing.assert_array_equal(idx, choose_indices(1000, 200, 5))
    assert not np.array_equal(idx, choose_indices(1000, 200, 6))
    # Uniform: over many seeds every index is chosen about M/N of the time.
    counts = np.bincount(np.concatenate([choose_indices(50, 10, s) for s in range(2000)]), minlength=50)
    assert abs(counts.mean() - 400) < 1e-9 and counts.min() > 320 and counts.max() < 480
    np.testing.assert_array_equal(choose_indices(7, None, 0), np.arange(7))


def test_too_few_samples_says_n_and_suggests_samples():
    with pytest.raises(VRCurveError, match=r"the data holds 12 samples, fewer than --samples 200; pass --samples 12 "
                                           r"or fewer \(or --samples all\)"):
        choose_indices(12, 200, 0)
    with pytest.raises(VRCurveError, match="--samples must be at least 1"):
        choose_indices(12, 0, 0)
    with pytest.raises(VRCurveError, match="--seed must be 0 or more"):
        choose_indices(12, 3, -1)


def test_fingerprint_recognises_the_same_samples(tmp_path):
    x = np.random.default_rng(0).standard_normal((N, 5)).astype(np.float32)
    src = _save(tmp_path / "x.npy", x)
    a, b = load_samples(src, 6, 1), load_samples(src, 6, 1)
    assert a.fingerprint == b.fingerprint
    assert load_samples(src, 6, 2).fingerprint != a.fingerprint
    x[a.indices[0], 0] += 1e-3  # the same indices, one value changed
    assert load_samples(_save(tmp_path / "y.npy", x), 6, 1).fingerprint != a.fingerprint
    # The fingerprint is of the data as stored: normalisation and rescaling do not change it.
    assert load_samples(src, 6, 1, "none", LatentTransform(scaling_factor=2.0)).fingerprint == a.fingerprint


def test_nan_or_inf_names_the_sample(tmp_path):
    x = np.ones((N, 3), np.float32)
    x[4, 1] = np.nan
    with pytest.raises(VRCurveError, match=r"sample 4 of .*x\.npy contains NaN or Inf"):
        load_samples(_save(tmp_path / "x.npy", x), None, 0)
    x[4, 1], x[9, 0] = 0, -np.inf
    with pytest.raises(VRCurveError, match=r"sample 9 of .*y\.npy contains NaN or Inf"):
        load_samples(_save(tmp_path / "y.npy", x), None, 0)


def test_nan_in_a_per_sample_file_names_the_file(tmp_path):
    for i in range(N):
        np.save(tmp_path / f"{i}.npy", np.full(3, np.nan if i == 8 else i, np.float32))
    with pytest.raises(VRCurveError, match=r"8\.npy \(sample 8\) contains NaN or Inf"):
        load_samples(open_source(str(tmp_path)), None, 0)


# ---- normalisation ---------------------------------------------------------------------------------------------

def test_statistics_come_from_the_chosen_samples_and_are_recorded(tmp_path):
    x = np.random.default_rng(1).normal(3.0, 2.0, (40, 2, 4)).astype(np.float32)
    chosen = load_samples(_save(tmp_path / "x.npy", x), 10, 0, "global")
    raw = x[chosen.indices].astype(np.float64)
    assert chosen.normalization["mean"] == pytest.approx(raw.mean(), rel=1e-12)
    assert chosen.normalization["std"] == pytest.approx(raw.std(), rel=1e-12)
    np.testing.assert_allclose(chosen.x, (raw - raw.mean()) / raw.std(), rtol=1e-5, atol=1e-6)
    per_channel = load_samples(_save(tmp_path / "y.npy", x), 10, 0, "channel").normalization
    np.testing.assert_allclose(per_channel["mean"], raw.mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(per_channel["std"], raw.std(axis=(0, 2)), rtol=1e-12)


def test_zero_variance_cannot_be_normalised(tmp_path):
    with pytest.raises(VRCurveError, match=r"x\.npy: all 12 chosen samples hold the one value 2 \(variance 0\).*"
                                           r"--normalize none"):
        load_samples(_save(tmp_path / "x.npy", np.full((N, 2, 3), 2.0, np.float32)), None, 0, "global")
    x = np.random.default_rng(0).standard_normal((N, 2, 3)).astype(np.float32)
    x[:, 1] = 5.0
    with pytest.raises(VRCurveError, match=r"y\.npy: channel 1 holds one value in all 12 chosen samples"):
        load_samples(_save(tmp_path / "y.npy", x), None, 0, "channel")
    # --normalize none leaves constant data alone.
    assert load_samples(_save(tmp_path / "z.npy", np.full((N, 2, 3), 2.0, np.float32)), None, 0, "none").x.max() == 2.0


def test_unknown_normalisation():
    with pytest.raises(VRCurveError, match="unknown normalisation 'l2'"):
        normalize(np.zeros((2, 2), np.float32), "l2")


# ---- rescaling -----------------------------------------------------------------------------------------------

def test_scaling_and_shift_factor_equal_prescaled_latents(tmp_path):
    x = np.random.default_rng(2).standard_normal((N, C, 3, 3)).astype(np.float32)
    np.save(tmp_path / "raw.npy", x)
    # 0.25 and 0.5 are exact in binary, so (x - 0.25) * 0.5 is exact in float32 too.
    np.save(tmp_path / "scaled.npy", (x - np.float32(0.25)) * np.float32(0.5))
    a = tiny_estimate(tmp_path / "raw.npy", tmp_path / "a.safetensors", normalization="none", scaling_factor=0.5,
                      shift_factor=0.25)
    b = tiny_estimate(tmp_path / "scaled.npy", tmp_path / "b.safetensors", normalization="none")
    assert_same_tensors(a, b)
    assert a[1]["normalization"] == {"mode": "none", "scaling_factor": 0.5, "shift_factor": 0.25}
    c = tiny_estimate(tmp_path / "raw.npy", tmp_path / "c.safetensors", normalization="none")
    assert not np.array_equal(a[0]["variance"], c[0]["variance"])  # the factors did change the data


def test_global_normalisation_undoes_any_rescaling(tmp_path):
    x = np.random.default_rng(3).standard_normal((N, C, 3, 3)).astype(np.float32)
    src = _save(tmp_path / "x.npy", x)
    plain = load_samples(src, 8, 0, "global").x
    scaled = load_samples(src, 8, 0, "global", LatentTransform(scaling_factor=0.18215, shift_factor=0.7)).x
    np.testing.assert_allclose(scaled, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw, message", [
    ({"scaling_factor": 0.0}, "--scaling-factor must be a finite non-zero number"),
    ({"scaling_factor": float("inf")}, "--scaling-factor must be a finite non-zero number"),
    ({"shift_factor": float("nan")}, "--shift-factor must be a finite number"),
    ({"moments": "median"}, "unknown --moments 'median'"),
    ({"moments_kind": "var"}, "unknown --moments-kind 'var'"),
])
def test_bad_transform_options(kw, message):
    with pytest.raises(VRCurveError, match=message):
        LatentTransform(**kw)


# ---- VAE moments ---------------------------------------------------------------------------------------------

def test_moments_mean_equals_the_means_given_as_latents(moments, tmp_path):
    np.save(tmp_path / "moments.npy", moments)
    np.save(tmp_path / "mean.npy", moments[:, :C])
    a = tiny_estimate(tmp_path / "moments.npy", tmp_path / "a.safetensors", moments="mean")
    b = tiny_estimate(tmp_path / "mean.npy", tmp_path / "b.safetensors")
    assert_same_tensors(a, b)
    assert a[1]["shape"] == [C, 3, 3] and a[1]["dim"] == C * 9
    assert a[1]["data"]["moments"] == {"mode": "mean", "kind": None}


def test_moments_sample_with_zero_std_is_the_mean(moments, tmp_path):
    with_zero_std = moments.copy()
    with_zero_std[:, C:] = 0.0  # all non-negative: detected as a std
    np.save(tmp_path / "moments.npy", with_zero_std)
    np.save(tmp_path / "mean.npy", moments[:, :C])
    a = tiny_estimate(tmp_path / "moments.npy", tmp_path / "a.safetensors", moments="sample")
    b = tiny_estimate(tmp_path / "mean.npy", tmp_path / "b.safetensors")
    assert_same_tensors(a, b)
    assert a[1]["data"]["moments"] == {"mode": "sample", "kind": "std"}


def test_moments_sample_draws_with_the_std_or_the_logvar(moments, tmp_path):
    rng = np.random.default_rng(4)
    d = 4096
    mean = rng.standard_normal((3, 2, d))
    idx = np.array([0, 5, 9])
    src = _save(tmp_path / "m.npy", moments)  # names samples in messages only
    for kind, second, spread in (("std", np.full((3, 2, d), 0.5), 0.5), ("logvar", np.full((3, 2, d), np.log(4.0)), 2.0),
                                 ("auto", np.full((3, 2, d), np.log(0.25)), 0.5)):
        x = np.concatenate([mean, second], axis=1).astype(np.float32)
        z, used = apply_moments(x, idx, 0, "sample", kind, src)
        assert used == ("logvar" if kind == "auto" else kind)  # auto: a negative value cannot be a std
        eps = (z - mean.astype(np.float32)) / spread
        assert abs(eps.std() - 1.0) < 0.03 and abs(eps.mean()) < 0.03


def test_moments_noise_depends_only_on_seed_and_sample_index(moments, tmp_path):
    src = _save(tmp_path / "m.npy", moments)
    z_all, _ = apply_moments(moments, np.arange(N), 7, "sample", "logvar", src)
    z_some, _ = apply_moments(moments[[2, 9]], np.array([2, 9]), 7, "sample", "logvar", src)
    np.testing.assert_array_equal(z_some, z_all[[2, 9]])
    z_other_seed, _ = apply_moments(moments[[2, 9]], np.array([2, 9]), 8, "sample", "logvar", src)
    assert not np.allclose(z_other_seed, z_some)
    np.testing.assert_array_equal(moments_noise(7, 9, (2, 3)), moments_noise(7, 9, (2, 3)))
    assert not np.array_equal(moments_noise(7, 9, (2, 3)), moments_noise(7, 2, (2, 3)))


def test_moments_sample_gives_the_same_latents_through_any_reader(moments, tmp_path):
    """The same data and seed give the same drawn latents through any reader."""
    np.save(tmp_path / "m.npy", moments)
    for i in range(N):
        np.save(tmp_path / f"{i:02d}.npy", moments[i])
    a = tiny_estimate(tmp_path / "m.npy", tmp_path / "a.safetensors", moments="sample")
    b = tiny_estimate(str(tmp_path / "[0-9][0-9].npy"), tmp_path / "b.safetensors", moments="sample")
    assert_same_tensors(a, b)
    assert a[1]["data"]["moments"] == {"mode": "sample", "kind": "logvar"}


def test_negative_std_is_refused_naming_the_sample(moments, tmp_path):
    with pytest.raises(VRCurveError, match=r"sample 0 of .*m\.npy has negative values in its std channels.*"
                                           r"--moments-kind logvar"):
        load_samples(_save(tmp_path / "m.npy", moments), None, 0, "global", LatentTransform("sample", "std"))


def test_moments_need_an_even_channel_axis(tmp_path):
    with pytest.raises(VRCurveError, match=r"--moments needs an even number of channels .*x\.npy has 3 in samples of "
                                           r"shape \(3, 2\)"):
        load_samples(_save(tmp_path / "x.npy", np.ones((N, 3, 2), np.float32)), None, 0, "none",
                     LatentTransform("mean"))
    with pytest.raises(VRCurveError, match=r"--moments needs samples with a channel axis"):
        load_samples(_save(tmp_path / "y.npy", np.arange(N, dtype=np.float32)), None, 0, "none",
                     LatentTransform("mean"))


# ---- skipping undecodable files -------------------------------------------------------------------------------

def _npy_files_with_bad(tmp_path, bad):
    for i in range(N):
        path = tmp_path / f"{i:02d}.npy"
        if i in bad:
            path.write_bytes(b"\x93NUMPY broken")
        else:
            np.save(path, np.full((2, 2), i, np.float32) + np.eye(2, dtype=np.float32))
    return str(tmp_path)


def test_skip_bad_replaces_skipped_files_by_seeded_draws(tmp_path):
    folder = _npy_files_with_bad(tmp_path, bad={0, 1, 2, 3, 4, 5})
    a = load_samples(open_source(folder, skip_bad=True), 6, 0)
    assert len(a.indices) == 6 and np.all(np.diff(a.indices) > 0)
    assert set(a.indices) == {6, 7, 8, 9, 10, 11}  # the only decodable ones
    assert set(a.skipped) <= {0, 1, 2, 3, 4, 5} and len(a.skipped) >= 1
    b = load_samples(open_source(folder, skip_bad=True), 6, 0)
    assert a.skipped == b.skipped and a.fingerprint == b.fingerprint
    with pytest.raises(VRCurveError, match=r"only 6 of the 12 samples .* could be decoded .*fewer than --samples 7; "
                                           r"fix the files or pass --samples 6 or fewer"):
        load_samples(open_source(folder, skip_bad=True), 7, 0)


def test_skipped_files_are_recorded_in_the_artifact(tmp_path):
    (tmp_path / "d").mkdir()
    folder = _npy_files_with_bad(tmp_path / "d", bad={3})
    _, meta = tiny_estimate(folder, tmp_path / "a.safetensors", samples=None, skip_bad=True)
    data = meta["data"]
    assert data["skipped"] == 1 and data["skipped_files"][0].endswith("03.npy (sample 3)")
    assert data["samples_total"] == N and data["samples_chosen"] == N - 1 and meta["samples"] == N - 1


# ---- what the artifact records, and the command line ----------------------------------------------------------

runner = CliRunner()


def test_cli_records_the_data_facts(moments, tmp_path):
    np.save(tmp_path / "m.npy", moments)
    out = tmp_path / "vr.safetensors"
    res = runner.invoke(app, ["estimate", "--data", str(tmp_path / "m.npy"), "-M", "8", "-K", "4", "-T", "20",
                              "--table-size", "64", "--moments", "sample", "--moments-kind", "logvar",
                              "--scaling-factor", "0.18215", "--shift-factor", "0.1", "--normalize", "none",
                              "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    _, meta = read_artifact(out)
    data = meta["data"]
    assert data["path"] == str(tmp_path / "m.npy") and data["format"] == "npy"
    assert data["sources"] == [str(tmp_path / "m.npy")] and data["samples_total"] == N
    assert data["samples_chosen"] == 8 and len(data["fingerprint"]) == 16 and data["skipped"] == 0
    assert data["moments"] == {"mode": "sample", "kind": "logvar"}
    assert meta["normalization"] == {"mode": "none", "scaling_factor": 0.18215, "shift_factor": 0.1}
    assert meta["shape"] == [C, 3, 3]


def test_cli_data_errors_exit_1_without_output(moments, tmp_path):
    bad = moments.copy()
    bad[5, 0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "odd.npy", moments[:, :3])
    out = tmp_path / "vr.safetensors"
    for args, message in (
        (["--data", str(tmp_path / "nan.npy"), "-M", "all"], "sample 5 of"),
        (["--data", str(tmp_path / "nan.npy"), "-M", "13"], "fewer than --samples 13"),
        (["--data", str(tmp_path / "odd.npy"), "--moments", "mean"], "even number of channels"),
        (["--data", str(tmp_path / "nan.npy"), "--scaling-factor", "0"], "--scaling-factor must be"),
    ):
        res = runner.invoke(app, ["estimate", "-M", "8", "-K", "4", "-T", "20", "-q", "-o", str(out), *args])
        assert res.exit_code == 1, (args, res.output)
        assert message in res.output.replace("\n", " ") and "Traceback" not in res.output
        assert not out.exists()
