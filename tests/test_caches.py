"""Trainers' per-sample latent caches (kohya .npz, SimpleTuner / OneTrainer .pt): each cache, written here in the
trainer's own layout, gives the estimate of the same latents stored as one .npy; every bad input is one sentence."""

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from artifacts import estimate_with
from PIL import Image
from typer.testing import CliRunner

import vrcurve
from vrcurve.artifact import read_artifact
from vrcurve.cli import app
from vrcurve.errors import VRCurveError
from vrcurve.readers import open_source
from vrcurve.samples import load_samples
from vrcurve.schedulers import LinearScheduler

N = 12
SHAPE = (4, 6, 6)


def tiny_estimate(data, out, **kw):
    """A whole estimate at test size: M = 8 of N, K = 4, T = 20; returns (tensors, metadata) of the artifact."""
    estimate_with(str(data), Path(out), LinearScheduler(), samples=8, noise=4, timesteps=20, table_size=64, seed=3, **kw)
    return read_artifact(out)


def assert_same_estimate(a, b, n=N):
    (ta, ma), (tb, mb) = a, b
    assert ta.keys() == tb.keys()
    for k in ta:
        np.testing.assert_array_equal(ta[k], tb[k], err_msg=k)
    assert ma["data"]["fingerprint"] == mb["data"]["fingerprint"]
    assert ma["data"]["samples_total"] == mb["data"]["samples_total"] == n


@pytest.fixture(scope="module")
def X():
    """N distinct latents of SHAPE, so that a wrong or reordered sample changes the estimate."""
    return np.random.default_rng(11).standard_normal((N, *SHAPE)).astype(np.float32)


def reference(X, tmp_path, name="ref"):
    np.save(tmp_path / f"{name}.npy", X)
    return tiny_estimate(tmp_path / f"{name}.npy", tmp_path / f"{name}.safetensors")


def _image(path: Path, size=(16, 16)):
    Image.fromarray(np.full((size[1], size[0], 3), 128, dtype=np.uint8)).save(path)


# ---- kohya sd-scripts: <image>_<WWWW>x<HHHH>_<arch>.npz beside the images ------------------------------------

def kohya_save(path: Path, latents: dict, image_size=(48, 48), flipped=False, alpha=False):
    """One cache the way kohya's LatentsCachingStrategy.save_latents_to_disk writes it: np.savez, float32 latents
    (C, H, W) under ``latents`` + suffix, with original_size, crop_ltrb and the optional flipped latents and alpha
    mask under the same suffix. ``latents``: {key suffix ('' or '_<h>x<w>'): latent}."""
    arrays = {}
    for suffix, z in latents.items():
        arrays["latents" + suffix] = np.asarray(z, dtype=np.float32)
        arrays["original_size" + suffix] = np.array(image_size)
        arrays["crop_ltrb" + suffix] = np.array([0, 0, *image_size])
        if flipped:
            arrays["latents_flipped" + suffix] = np.asarray(z, dtype=np.float32)[..., ::-1]
        if alpha:
            arrays["alpha_mask" + suffix] = np.ones(z.shape[-2:], dtype=np.float32)
    np.savez(path, **arrays)


def kohya_dataset(folder: Path, X, arch="sdxl", multi_resolution=False, images=True, text_encoder=True, **kw):
    """A kohya dataset folder: img<i>.png, its latent cache img<i>_0048x0048_<arch>.npz and, as with
    --cache_text_encoder_outputs_to_disk, its text-encoder cache img<i>_<arch>_te.npz (no latents inside)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, z in enumerate(X):
        if images:
            _image(folder / f"img{i}.png")
            (folder / f"img{i}.txt").write_text("a caption")
        suffix = f"_{z.shape[-2]}x{z.shape[-1]}" if multi_resolution else ""
        kohya_save(folder / f"img{i}_0048x0048_{arch}.npz", {suffix: z}, **kw)
        if text_encoder:
            np.savez(folder / f"img{i}_{arch}_te.npz", hidden_state=np.zeros((7, 8), np.float32),
                     pool=np.zeros((8,), np.float32))
    return folder


def test_kohya_dataset_folder_gives_the_estimate_of_the_same_latents_as_npy(X, tmp_path):
    folder = kohya_dataset(tmp_path / "train", X, arch="sdxl", flipped=True, alpha=True)
    source = open_source(str(folder))
    assert (source.format, source.n, source.shape) == ("npz-caches", N, SHAPE)
    # the caches are preferred over the images beside them, and the source says so
    assert len(source.notes) == 1 and "reading the 12 latent caches (.npz)" in source.notes[0]
    assert "not the 12 images" in source.notes[0]
    np.testing.assert_array_equal(source.read(np.arange(N)), X)
    assert_same_estimate(tiny_estimate(folder, tmp_path / "vr.safetensors"), reference(X, tmp_path))


@pytest.mark.parametrize("arch", ["sd3", "flux", "lumina"])
def test_multi_resolution_keys_of_flux_and_sd3_caches(X, tmp_path, arch):
    """SD3 / Flux caches store the latent as latents_<h>x<w> (kohya's multi_resolution=True)."""
    folder = kohya_dataset(tmp_path / "c", X, arch=arch, multi_resolution=True, images=False)
    source = open_source(str(folder))
    assert source.describe()["keys"] == ["latents_6x6"]
    assert_same_estimate(tiny_estimate(folder, tmp_path / "vr.safetensors"), reference(X, tmp_path))


def test_old_sd_caches_named_after_the_image(X, tmp_path):
    """Old SD runs wrote <image>.npz; 10 sorts after 9 (digit runs by value), as in every per-file format."""
    folder = tmp_path / "old"
    folder.mkdir()
    for i, z in enumerate(X):
        _image(folder / f"{i}.jpg")
        kohya_save(folder / f"{i}.npz", {"": z})
    source = open_source(str(folder))
    assert source.notes and source.sources()[9:11] == [str(folder / "9.npz"), str(folder / "10.npz")]
    assert_same_estimate(tiny_estimate(folder, tmp_path / "vr.safetensors"), reference(X, tmp_path))


def test_video_latents_of_five_dimensional_batches(tmp_path):
    """Anima / Qwen-Image VAEs encode a batch to (B, C, 1, H, W): one cache holds (C, 1, H, W)."""
    V = np.random.default_rng(5).standard_normal((N, 4, 1, 4, 6)).astype(np.float32)
    folder = kohya_dataset(tmp_path / "v", V, arch="anima", multi_resolution=True, images=False)
    source = open_source(str(folder))
    assert source.shape == (4, 1, 4, 6) and source.describe()["keys"] == ["latents_4x6"]
    assert_same_estimate(tiny_estimate(folder, tmp_path / "vr.safetensors"), reference(V, tmp_path))


def test_compressed_caches_and_a_glob(X, tmp_path):
    folder = tmp_path / "z"
    folder.mkdir()
    for i, z in enumerate(X):
        np.savez_compressed(folder / f"a{i}_0048x0048_flux.npz", latents=z, original_size=np.array([48, 48]),
                            crop_ltrb=np.array([0, 0, 48, 48]))
    (folder / "notes.md").write_text("not data")
    assert_same_estimate(tiny_estimate(str(folder / "*_flux.npz"), tmp_path / "vr.safetensors"),
                         reference(X, tmp_path))


def test_a_file_with_several_resolutions_gives_one_sample_per_resolution(tmp_path):
    """The same image cached for datasets at two resolutions: each latents_<h>x<w> is a sample of its own bucket."""
    rng = np.random.default_rng(2)
    small = rng.standard_normal((5, 4, 4, 6)).astype(np.float32)
    large = rng.standard_normal((5, 4, 8, 12)).astype(np.float32)
    folder = tmp_path / "multi"
    folder.mkdir()
    for i in range(5):
        kohya_save(folder / f"img{i}_0096x0064_flux.npz", {"_4x6": small[i], "_8x12": large[i]})
    source = open_source(str(folder))
    assert source.n == 10 and source.describe()["sources_total"] == 5
    groups = source.groups()
    assert list(groups) == [(4, 4, 6), (4, 8, 12)]  # equal counts: the smaller shape first
    np.testing.assert_array_equal(groups[(4, 4, 6)], [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(source.subset(groups[(4, 4, 6)]).read(np.arange(5)), small)
    np.testing.assert_array_equal(source.subset(groups[(4, 8, 12)]).read(np.arange(5)), large)
    assert source.sample_name(1) == f"{folder / 'img0_0096x0064_flux.npz'}:latents_8x12 (sample 1)"


def test_caches_of_several_latent_sizes_form_groups_and_stop_a_single_shape_read(tmp_path):
    rng = np.random.default_rng(4)
    folder = tmp_path / "buckets"
    folder.mkdir()
    shapes = [(4, 6, 6)] * 7 + [(4, 4, 8)] * 5
    for i, shape in enumerate(shapes):
        kohya_save(folder / f"img{i:02d}_0048x0048_flux.npz", {f"_{shape[1]}x{shape[2]}": rng.standard_normal(shape)})
    source = open_source(str(folder))
    groups = source.groups()
    assert {s: idx.tolist() for s, idx in groups.items()} == {(4, 6, 6): list(range(7)), (4, 4, 8): list(range(7, 12))}
    with pytest.raises(VRCurveError, match=r"differ in shape"):
        load_samples(source, None, 0)


def test_a_kohya_folder_of_two_latent_sizes_is_estimated_per_bucket(tmp_path):
    """End to end: caches of two sizes give one curve per size, each equal to the estimator run on that size's
    latents alone, with the noise keyed by each sample's index in the whole folder."""
    import torch

    from vrcurve.artifact import bucket_tensor_name
    from vrcurve.estimator import estimate
    from vrcurve.schedulers import get_scheduler

    rng = np.random.default_rng(5)
    shapes = [(4, 6, 6)] * 6 + [(4, 4, 8)] * 6
    latents = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    folder = tmp_path / "buckets"
    folder.mkdir()
    for i, z in enumerate(latents):
        kohya_save(folder / f"img{i:02d}_0048x0048_flux.npz", {f"_{z.shape[1]}x{z.shape[2]}": z})
    out = tmp_path / "vr.safetensors"
    result = _cli("--data", str(folder), "-o", str(out), "-M", "all", "--min-bucket", "6", "--normalize", "none",
                  "--bootstrap", "0", "--precision", "float32", "-q")
    assert result.exit_code == 0, result.output
    dist = vrcurve.load(out)
    assert dist.buckets == {(4, 4, 8): 0.5, (4, 6, 6): 0.5}
    for b, bucket in enumerate(dist.meta["buckets"]):
        ids = np.array([i for i, z in enumerate(latents) if list(z.shape) == bucket["shape"]])
        x = torch.from_numpy(np.stack([latents[i] for i in ids]))
        ref = estimate(x, get_scheduler("linear"), noise=4, timesteps=20, seed=0, source_ids=ids, precision="float32")
        np.testing.assert_allclose(dist.arrays[bucket_tensor_name(b, "variance")], ref.variance, rtol=1e-5)


def test_one_cache_file_is_one_sample_not_four(X, tmp_path):
    folder = kohya_dataset(tmp_path / "train", X[:3], images=False)
    one = folder / "img0_0048x0048_sdxl.npz"
    out = tmp_path / "vr.safetensors"
    result = _cli("--data", str(one), "--key", "latents", "-M", "all", "-o", str(out))
    assert result.exit_code == 1 and not out.exists()
    assert f"{one} is a latent cache of one image (latents (4, 6, 6))" in _flat(result.output)
    assert f"--data {folder}" in _flat(result.output)


def test_an_npz_dataset_that_is_not_a_cache_is_still_read_as_rows(X, tmp_path):
    """An archive whose array is named latents but has no kohya side arrays is an (N, ...) dataset."""
    np.savez(tmp_path / "x.npz", latents=X)
    assert open_source(str(tmp_path / "x.npz"), key="latents").n == N


def test_key_reads_one_array_of_every_file(X, tmp_path):
    folder = kohya_dataset(tmp_path / "c", X, images=False, flipped=True)
    source = open_source(str(folder), key="latents_flipped")
    np.testing.assert_array_equal(source.read(np.arange(N)), X[..., ::-1])


# ---- per-sample .pt caches ------------------------------------------------------------------------------------

def simpletuner_cache(folder: Path, X, compress=False):
    """SimpleTuner's VAE cache: <image>.pt per image, a bare (C, H, W) tensor in the VAE's dtype (bf16), written
    with torch.save, or gzip of those bytes with compress_cache."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, z in enumerate(X):
        tensor = torch.from_numpy(z).to(torch.bfloat16)
        if compress:
            buf = io.BytesIO()
            torch.save(tensor, buf)
            (folder / f"img{i}.pt").write_bytes(gzip.compress(buf.getvalue()))
        else:
            torch.save(tensor, folder / f"img{i}.pt")
    return folder


def onetrainer_cache(root: Path, X):
    """OneTrainer's disk cache: <cache>/image/<group>/variation-0/<i>.pt, a dict of the split names (latent_image
    in the training dtype, original_resolution, crop_offset), beside the group's aggregate.pt."""
    folder = root / "image" / "3f2a9c" / "variation-0"
    folder.mkdir(parents=True)
    for i, z in enumerate(X):
        torch.save({"latent_image": torch.from_numpy(z).to(torch.bfloat16), "original_resolution": (48, 48),
                    "crop_offset": (0, 0)}, folder / f"{i}.pt")
    torch.save([{"image_path": f"img{i}.png", "crop_resolution": (48, 48)} for i in range(len(X))],
               folder / "aggregate.pt")
    return root / "image"


def bf16(X):
    return torch.from_numpy(X).to(torch.bfloat16).float().numpy()


@pytest.mark.parametrize("compress", [False, True])
def test_simpletuner_bf16_cache_gives_the_estimate_of_the_same_latents_as_npy(X, tmp_path, compress):
    folder = simpletuner_cache(tmp_path / "cache_vae", X, compress=compress)
    source = open_source(str(folder))
    assert (source.format, source.n, source.shape, source.describe()["key"]) == ("pt-files", N, SHAPE, None)
    assert_same_estimate(tiny_estimate(folder, tmp_path / "vr.safetensors"), reference(bf16(X), tmp_path))


def test_onetrainer_cache_gives_the_estimate_of_the_same_latents_as_npy(X, tmp_path):
    folder = onetrainer_cache(tmp_path / "workspace-cache", X)
    source = open_source(str(folder))
    assert source.describe()["key"] == "latent_image" and source.n == N  # aggregate.pt is not a sample
    assert_same_estimate(tiny_estimate(folder, tmp_path / "vr.safetensors"), reference(bf16(X), tmp_path))


def test_pt_dict_key_detection_and_key_wins(X, tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    for i, z in enumerate(X):
        torch.save({"mean": torch.from_numpy(z), "logvar": torch.from_numpy(-z), "label": torch.tensor(i)},
                   folder / f"{i:03d}.pt")
    np.testing.assert_array_equal(open_source(str(folder)).read(np.arange(N)), X)  # mean, a known latent name
    np.testing.assert_array_equal(open_source(str(folder), key="logvar").read(np.arange(N)), -X)
    with pytest.raises(VRCurveError, match=r"000\.pt has no tensor 'std'; its tensors are: label \(\), logvar "
                                           r"\(4, 6, 6\), mean \(4, 6, 6\)\. Pass one with --key\."):
        open_source(str(folder), key="std")


def test_pt_with_two_unnamed_tensors_asks_for_a_key(X, tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    for i in range(3):
        torch.save({"a": torch.zeros(2, 3), "b": torch.zeros(2, 3)}, folder / f"{i}.pt")
    with pytest.raises(VRCurveError, match=r"holds 2 tensors that could be the latent \(a \(2, 3\), b \(2, 3\)\); "
                                           r"choose one with --key"):
        open_source(str(folder))


def test_pt_batch_of_one_loses_its_batch_axis(X, tmp_path):
    folder = tmp_path / "b"
    folder.mkdir()
    for i, z in enumerate(X):
        torch.save({"latents": torch.from_numpy(z)[None]}, folder / f"{i}.pt")
    assert_same_estimate(tiny_estimate(folder, tmp_path / "vr.safetensors"), reference(X, tmp_path))


def test_pt_caches_of_several_sizes_form_groups(tmp_path):
    rng = np.random.default_rng(8)
    folder = tmp_path / "p"
    folder.mkdir()
    shapes = [(4, 4, 6), (4, 6, 4), (4, 4, 6)]
    for i, shape in enumerate(shapes):
        torch.save(torch.from_numpy(rng.standard_normal(shape).astype(np.float32)), folder / f"{i}.pt")
    source = open_source(str(folder))
    assert {s: idx.tolist() for s, idx in source.groups().items()} == {(4, 4, 6): [0, 2], (4, 6, 4): [1]}
    with pytest.raises(VRCurveError, match=r"samples differ in shape: .*0\.pt is \(4, 4, 6\) but .*1\.pt is "
                                           r"\(4, 6, 4\); .*resolution buckets"):
        open_source(str(folder)).read(np.arange(3))


def test_float64_beyond_float32_in_every_cache_format(tmp_path):
    # Each per-sample cache reader names float64 values that float32 cannot hold, as the array readers do,
    # rather than turning them into Inf.
    from safetensors.torch import save_file

    z = np.ones(SHAPE)
    z[1, 2, 3] = -3e40
    (tmp_path / "kohya").mkdir()
    (tmp_path / "pt").mkdir()
    (tmp_path / "musubi").mkdir()
    for i in range(3):
        np.savez(tmp_path / "kohya" / f"img{i}_0048x0048_sdxl.npz", latents=z, original_size=np.array([48, 48]),
                 crop_ltrb=np.array([0, 0, 48, 48]))
        torch.save(torch.from_numpy(z), tmp_path / "pt" / f"img{i}.pt")
        save_file({"latents_6x6_float64": torch.from_numpy(z)},
                  str(tmp_path / "musubi" / f"img{i}_0048x0048_wan.safetensors"))
    for data in ("kohya", "pt", "musubi"):
        with pytest.raises(VRCurveError, match=r"img0.*holds float64 values beyond the float32 range"):
            open_source(str(tmp_path / data)).read(np.arange(3))


# ---- musubi-tuner: <item>_<WWWW>x<HHHH>_<arch>.safetensors ------------------------------------------------

def musubi_cache(folder: Path, X, arch="wan", video=True, images=False):
    """musubi-tuner's cache_latents.py: one safetensors file per item, the latent (C, F, H, W) (video models) or
    (C, H, W) under latents_<F>x<H>x<W>_<dtype> (latents_<H>x<W>_<dtype> for Flux 2) in the VAE's dtype, beside
    conditions (clip_*, latents_image_*), with the architecture and size as metadata; and the text-encoder cache
    <item>_<arch>_te.safetensors."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    for i, z in enumerate(X):
        latent = torch.from_numpy(z).to(torch.bfloat16)
        if video:
            latent = latent[:, None]  # F = 1
            name = f"latents_1x{z.shape[1]}x{z.shape[2]}_bfloat16"
        else:
            name = f"latents_{z.shape[1]}x{z.shape[2]}_bfloat16"
        tensors = {name: latent, "clip_bfloat16": torch.zeros(3, 5, dtype=torch.bfloat16),
                   name.replace("latents_", "latents_image_"): torch.zeros_like(latent)}
        save_file(tensors, str(folder / f"img{i}_0048x0048_{arch}.safetensors"),
                  metadata={"architecture": arch, "width": "48", "height": "48", "format_version": "1.0.1"})
        save_file({"t5_bfloat16": torch.zeros(7, 8, dtype=torch.bfloat16)},
                  str(folder / f"img{i}_{arch}_te.safetensors"))
        if images:
            _image(folder / f"img{i}.jpg")
    return folder


def test_musubi_video_cache_gives_the_estimate_of_the_same_latents_as_npy(X, tmp_path):
    folder = musubi_cache(tmp_path / "cache", X, arch="wan", video=True)
    source = open_source(str(folder))
    assert (source.format, source.n, source.shape) == ("safetensors-caches", N, (4, 1, 6, 6))
    assert_same_estimate(tiny_estimate(folder, tmp_path / "vr.safetensors"), reference(bf16(X)[:, :, None], tmp_path))


def test_musubi_image_cache_beside_its_images(X, tmp_path):
    folder = musubi_cache(tmp_path / "data", X, arch="f2d", video=False, images=True)
    source = open_source(str(folder))
    assert source.shape == SHAPE and "reading the 12 latent caches (.safetensors)" in source.notes[0]
    assert_same_estimate(tiny_estimate(folder, tmp_path / "vr.safetensors"), reference(bf16(X), tmp_path))
    one = folder / "img0_0048x0048_f2d.safetensors"
    _fails(tmp_path, one, f"{one} is a latent cache of one item (latents_6x6_bfloat16 (4, 6, 6))")


def test_musubi_caches_of_several_sizes_form_groups(tmp_path):
    rng = np.random.default_rng(6)
    small, large = rng.standard_normal((3, 4, 4, 6)), rng.standard_normal((2, 4, 6, 8))
    folder = musubi_cache(tmp_path / "c", list(small.astype(np.float32)), arch="qi", video=False)
    musubi_cache(tmp_path / "c2", list(large.astype(np.float32)), arch="qi", video=False)
    for i, p in enumerate(sorted((tmp_path / "c2").glob("*_qi.safetensors"))):
        p.rename(folder / f"big{i}_0064x0048_qi.safetensors")
    source = open_source(str(folder))
    assert {s: len(idx) for s, idx in source.groups().items()} == {(4, 4, 6): 3, (4, 6, 8): 2}


# ---- bad input: one sentence, exit 1, nothing written ---------------------------------------------------------

runner = CliRunner()


def _cli(*args):
    return runner.invoke(app, ["estimate", "-M", "8", "-K", "4", "-T", "20", "--table-size", "64", *args])


def _flat(text):
    return " ".join(text.split())


def _fails(tmp_path, data, message, *extra):
    out = tmp_path / "failed.safetensors"
    result = _cli("--data", str(data), "-o", str(out), *extra)
    text = _flat(result.output)
    assert result.exit_code == 1, result.output
    assert message in text, text
    assert text.startswith("error:") and text.count("error:") == 1 and "Traceback" not in result.output
    assert not out.exists()
    return text


def test_note_on_stderr_unless_quiet(X, tmp_path):
    folder = kohya_dataset(tmp_path / "train", X, images=True)
    out = tmp_path / "vr.safetensors"
    result = _cli("--data", str(folder), "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    assert _flat(result.stderr).startswith("note: reading the 12 latent caches (.npz) in the folder")
    assert "note:" not in result.stdout
    out.unlink()
    result = _cli("--data", str(folder), "-o", str(out), "-q")
    assert result.exit_code == 0 and result.output == ""


def test_a_cache_folder_with_no_readable_latents(X, tmp_path):
    only_te = tmp_path / "te"
    only_te.mkdir()
    for i in range(3):
        np.savez(only_te / f"img{i}_flux_te.npz", t5=np.zeros((4, 8), np.float32))
    _fails(tmp_path, only_te, f"the folder {only_te} holds only text-encoder caches (3 files such as "
                              "img0_flux_te.npz), no latent caches")
    not_caches = tmp_path / "arrays"
    not_caches.mkdir()
    for i in range(3):
        np.savez(not_caches / f"part{i}.npz", x=X)
    _fails(tmp_path, not_caches, f"none of the 3 .npz files of {not_caches} is a latent cache (latents or "
                                 f"latents_<h>x<w> beside original_size and crop_ltrb")
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(3):
        (broken / f"img{i}_0048x0048_flux.npz").write_bytes(b"PK\x03\x04 not really")
    _fails(tmp_path, broken, "cannot decode file")
    _fails(tmp_path, broken, f"none of the 3 .npz files of {broken} can be read", "--skip-bad")


def test_a_stray_npz_among_caches_is_named_or_skipped(X, tmp_path):
    folder = kohya_dataset(tmp_path / "c", X, images=False, text_encoder=False)
    np.savez(folder / "img99_0048x0048_sdxl.npz", stats=np.zeros(3))
    _fails(tmp_path, f"{folder}/*.npz", f"{folder / 'img99_0048x0048_sdxl.npz'} holds no latents (its arrays: "
                                        "stats), unlike the other caches")
    source = open_source(f"{folder}/*.npz", skip_bad=True)
    assert source.n == N and source.describe()["files_without_latents"] == 1


def test_images_and_latent_files_without_a_way_to_decide(X, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(3):
        _image(folder / f"photo{i}.png")
        kohya_save(folder / f"other{i}_0048x0048_flux.npz", {"": X[i]})
    _fails(tmp_path, folder, f"the folder {folder} holds 3 images and 3 .npz files, and 3 of those (e.g. "
                             f"{folder / 'other0_0048x0048_flux.npz'}) are not named after an image as latent caches "
                             "are, so there is no way to decide which to read; pass a glob")


def test_caches_cover_only_some_images_says_how_many(X, tmp_path):
    folder = kohya_dataset(tmp_path / "train", X, images=True)
    for i in range(3):
        _image(folder / f"new{i}.png")
    assert "(3 of which have no cache)" in open_source(str(folder)).notes[0]


def test_caches_of_two_models_in_one_folder(X, tmp_path):
    folder = kohya_dataset(tmp_path / "train", X, arch="sdxl", images=True)
    kohya_dataset(folder, X, arch="sd", images=False)  # same 4-channel VAE: only the names tell them apart
    _fails(tmp_path, folder, f"the folder {folder} holds latent caches of several models or kinds (12 *_sd.npz, "
                             f"12 *_sdxl.npz); pass a glob that matches one, e.g. --data '{folder}/**/*_sd.npz'")
    assert open_source(f"{folder}/**/*_sdxl.npz").n == N


def test_pt_that_needs_pickle_is_refused(X, tmp_path):
    folder = simpletuner_cache(tmp_path / "c", X[:4])
    torch.save({"latents": torch.from_numpy(X[4]), "meta": np.zeros(2)}, folder / "img4.pt")
    text = _fails(tmp_path, folder, f"{folder / 'img4.pt'} needs pickle to load (it calls numpy.", "-M", "all")
    assert "torch.load(weights_only=True), which runs no code from the file" in text
    _fails(tmp_path, folder, "needs pickle to load", "-M", "all", "--skip-bad")  # a refusal, not a damaged file


def test_channel_counts_differing_between_files(X, tmp_path):
    npz = kohya_dataset(tmp_path / "k", X[:4], images=False, text_encoder=False)
    kohya_save(npz / "img9_0048x0048_sdxl.npz", {"": np.zeros((16, 6, 6), np.float32)})
    _fails(tmp_path, npz, "channel counts differ between files of")
    pt = simpletuner_cache(tmp_path / "p", X[:4])
    torch.save(torch.zeros(16, 6, 6), pt / "img9.pt")
    _fails(tmp_path, pt, "channel counts differ between files of", "-M", "all")
    with pytest.raises(VRCurveError, match=r"channel counts differ between files of .* is \(4, 6, 6\) but .*img9\.pt"):
        open_source(str(pt)).groups()


def test_one_pt_file_and_broken_pt_files(X, tmp_path):
    folder = simpletuner_cache(tmp_path / "c", X)
    _fails(tmp_path, folder / "img0.pt", "is one .pt file, and vrcurve reads .pt latent caches as one sample per file")
    (folder / "img3.pt").write_bytes((folder / "img3.pt").read_bytes()[:100])
    _fails(tmp_path, folder, f"cannot decode file {folder / 'img3.pt'}", "-M", "all")
    result = _cli("--data", str(folder), "-o", str(tmp_path / "vr.safetensors"), "-M", "all", "--skip-bad", "-q")
    assert result.exit_code == 0, result.output
    assert read_artifact(tmp_path / "vr.safetensors")[1]["data"]["skipped"] == 1
