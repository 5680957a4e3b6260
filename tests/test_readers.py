"""Readers: every format gives the estimate of the same samples stored as one .npy; discovery, keys, errors."""

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from artifacts import estimate_with
from PIL import Image
from safetensors.numpy import save_file
from safetensors.torch import save_file as save_torch_file
from typer.testing import CliRunner

from vrcurve.artifact import read_artifact
from vrcurve.cli import app
from vrcurve.errors import VRCurveError
from vrcurve.readers import open_source
from vrcurve.readers.hdf5 import PER_SAMPLE_MIN
from vrcurve.readers.images import center_crop_resize
from vrcurve.samples import load_samples
from vrcurve.schedulers import LinearScheduler

N = 12  # > PER_SAMPLE_MIN, so per-sample HDF5 layouts are detected
SHAPE = (4, 3, 3)
assert N >= PER_SAMPLE_MIN


def tiny_estimate(data, out, **kw):
    """A whole estimate at test size: M = 8 of N, K = 4, T = 20; returns (tensors, metadata) of the artifact."""
    estimate_with(str(data), Path(out), LinearScheduler(), samples=8, noise=4, timesteps=20, table_size=64, seed=3, **kw)
    return read_artifact(out)


def assert_same_estimate(a, b):
    (ta, ma), (tb, mb) = a, b
    assert ta.keys() == tb.keys()
    for k in ta:
        np.testing.assert_array_equal(ta[k], tb[k], err_msg=k)
    assert ma["data"]["fingerprint"] == mb["data"]["fingerprint"]
    assert ma["data"]["samples_total"] == mb["data"]["samples_total"] == N
    assert ma["normalization"] == mb["normalization"]


@pytest.fixture(scope="module")
def X():
    """N latents of SHAPE; each sample distinct, so a wrong row gives a different estimate."""
    return np.random.default_rng(7).standard_normal((N, *SHAPE)).astype(np.float32)


@pytest.fixture
def reference(X, tmp_path):
    np.save(tmp_path / "ref.npy", X)
    return tiny_estimate(tmp_path / "ref.npy", tmp_path / "ref.safetensors")


# Writers: (folder, X) -> (value of --data, extra estimate_with arguments).
def _npz(d, X):
    np.savez(d / "x.npz", latents=X, labels=np.arange(N))
    return d / "x.npz", {"key": "latents"}


def _npz_compressed(d, X):
    np.savez_compressed(d / "x.npz", X)
    return d / "x.npz", {}


def _h5_rows(d, X):
    with h5py.File(d / "x.h5", "w") as f:
        f.create_dataset("latents", data=X, chunks=(1, *SHAPE))
        f["labels"] = np.arange(N)  # (N,): not taken for samples, so the key is detected
    return d / "x.h5", {}


def _h5_big_chunks(d, X):
    with h5py.File(d / "x.hdf5", "w") as f:
        f.create_dataset("data/z", data=X, chunks=(5, *SHAPE), compression="gzip")
    return d / "x.hdf5", {}


def _h5_contiguous(d, X):
    with h5py.File(d / "x.h5", "w") as f:
        f["z"] = X
    return d / "x.h5", {"key": "/z"}


def _h5_sample_datasets(d, X):
    with h5py.File(d / "x.h5", "w") as f:
        for i in range(N):
            f[f"latents/{i}"] = X[i]  # natural order: 2 before 10
    return d / "x.h5", {}


def _h5_sample_groups(d, X):
    with h5py.File(d / "x.h5", "w") as f:
        for i in range(N):
            f[f"img_{i:03d}/latent"] = X[i]
            f[f"img_{i:03d}/label"] = np.array(i)  # one number: not a sample
    return d / "x.h5", {}


def _safetensors(d, X):
    save_file({"latents": X, "labels": np.arange(N)}, str(d / "x.safetensors"))
    return d / "x.safetensors", {}


def _safetensors_shards_dir(d, X):
    (d / "shards").mkdir()
    # Shard order is by number, not by string: 2 before 10.
    for name, part in (("part-2", X[:3]), ("part-10", X[3:7]), ("part-11", X[7:])):
        save_file({"z": part}, str(d / "shards" / f"{name}.safetensors"))
    return d / "shards", {"key": "z"}


def _safetensors_shards_glob(d, X):
    save_file({"z": X[:5]}, str(d / "a-0.safetensors"))
    save_file({"z": X[5:]}, str(d / "a-1.safetensors"))
    save_file({"z": X}, str(d / "other.safetensors"))  # not matched by the glob
    return str(d / "a-*.safetensors"), {}


def _npy_dir(d, X):
    (d / "feats" / "sub").mkdir(parents=True)
    for i in range(N):
        np.save(d / "feats" / f"{i}.npy", X[i])
    (d / "feats" / ".hidden").mkdir()
    np.save(d / "feats" / ".hidden" / "junk.npy", np.zeros(3))  # hidden folders are skipped
    return d / "feats", {}


def _npy_glob_batch_of_one(d, X):
    # fast-DiT writes each latent as a batch of one, (1, C, H, W).
    for i in range(N):
        np.save(d / f"feat_{i}.npy", X[i][None])
    return str(d / "feat_*.npy"), {}


WRITERS = {f.__name__.lstrip("_"): f for f in (
    _npz, _npz_compressed, _h5_rows, _h5_big_chunks, _h5_contiguous, _h5_sample_datasets, _h5_sample_groups,
    _safetensors, _safetensors_shards_dir, _safetensors_shards_glob, _npy_dir, _npy_glob_batch_of_one)}


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_format_gives_the_estimate_of_the_same_samples_as_npy(fmt, X, reference, tmp_path):
    data, kw = WRITERS[fmt](tmp_path, X)
    assert_same_estimate(tiny_estimate(data, tmp_path / "out.safetensors", **kw), reference)


def test_safetensors_bfloat16_is_read(X, tmp_path):
    import torch

    save_torch_file({"latents": torch.from_numpy(X).to(torch.bfloat16)}, str(tmp_path / "bf16.safetensors"))
    src = open_source(str(tmp_path / "bf16.safetensors"))
    expected = torch.from_numpy(X).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(src.read(np.array([1, 4, 5])), expected[[1, 4, 5]])


def test_uncompressed_npz_member_is_memory_mapped(X, tmp_path):
    np.savez(tmp_path / "x.npz", latents=X)
    src = open_source(str(tmp_path / "x.npz"))
    assert isinstance(src._arr, np.memmap)  # only the chosen rows are paged in
    np.testing.assert_array_equal(src.read(np.array([0, 5, 11])), X[[0, 5, 11]])


@pytest.mark.parametrize("chunks", [None, (1, *SHAPE), (5, *SHAPE), (N, *SHAPE)])
def test_hdf5_reads_exactly_the_chosen_rows(X, tmp_path, chunks):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("z", data=X, chunks=chunks)
    src = open_source(str(tmp_path / "x.h5"))
    for idx in ([0], [N - 1], [0, 1, 2, 3, 4, 5], [1, 4, 5, 6, 10, 11], list(range(N))):
        np.testing.assert_array_equal(src.read(np.array(idx)), X[idx])


def test_npy_files_are_read_in_natural_order(X, tmp_path):
    data, _ = _npy_dir(tmp_path, X)
    src = open_source(str(data))
    assert src.n == N and src.shape == SHAPE
    assert [Path(f).name for f in src.files[:3]] + [Path(src.files[10]).name] == ["0.npy", "1.npy", "2.npy", "10.npy"]
    np.testing.assert_array_equal(src.read(np.array([2, 10])), X[[2, 10]])


def test_safetensors_shards_record_their_sources(X, tmp_path):
    data, kw = _safetensors_shards_dir(tmp_path, X)
    d = open_source(str(data), **kw).describe()
    assert [Path(s).name for s in d["sources"]] == ["part-2.safetensors", "part-10.safetensors", "part-11.safetensors"]
    assert d["samples_total"] == N and d["key"] == "z"


# ---- images -------------------------------------------------------------------------------------------------

def _pixels(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_known_tiny_image_decodes_to_rgb_in_minus_one_one(tmp_path):
    px = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]], [[0, 0, 0], [51, 102, 204]]], np.uint8)
    Image.fromarray(px).save(tmp_path / "a.png")  # 2 wide, 3 high
    src = open_source(str(tmp_path))
    assert src.shape == (3, 3, 2)
    x = src.read(np.array([0]))[0]
    np.testing.assert_allclose(x[:, 0, 0], [1, -1, -1])  # red
    np.testing.assert_allclose(x[:, 1, 1], [1, 1, 1])  # white
    np.testing.assert_allclose(x[:, 2, 0], [-1, -1, -1])  # black
    np.testing.assert_allclose(x[:, 2, 1], np.array([51, 102, 204]) / 127.5 - 1, rtol=1e-6)


def test_grayscale_and_rgba_images_become_rgb(tmp_path):
    Image.fromarray(np.full((4, 4), 255, np.uint8), mode="L").save(tmp_path / "0.png")
    Image.fromarray(np.full((4, 4, 4), 255, np.uint8), mode="RGBA").save(tmp_path / "1.png")
    x = open_source(str(tmp_path)).read(np.array([0, 1]))
    assert x.shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(x, 1.0)


def test_center_crop_and_resize(tmp_path):
    # 6 wide, 2 high; the middle 2 x 2 columns are white, the rest black: at resolution 2 the crop is exact.
    px = np.zeros((2, 6, 3), np.uint8)
    px[:, 2:4] = 255
    Image.fromarray(px).save(tmp_path / "a.png")
    np.testing.assert_array_equal(open_source(str(tmp_path), resolution=2).read(np.array([0]))[0], 1.0)
    # A large image is box-halved while its short side is at least 2R (64x40 -> 32x20 -> 16x10), resized
    # bicubically so its short side is R (13x8), then center-cropped: ADM's recipe.
    big = Image.fromarray(_pixels(40, 64, 1))
    small = center_crop_resize(big, 8)
    assert small.size == (8, 8)
    ref = big.resize((32, 20), resample=Image.BOX).resize((16, 10), resample=Image.BOX)
    ref = ref.resize((13, 8), resample=Image.BICUBIC).crop((2, 0, 10, 8))
    np.testing.assert_array_equal(np.asarray(small), np.asarray(ref))


def test_jpeg_and_webp_images_are_decoded(tmp_path):
    from PIL import features

    Image.fromarray(np.full((8, 8, 3), (200, 40, 90), np.uint8)).save(tmp_path / "a.jpg", quality=95)
    names = ["a.jpg"]
    if features.check("webp"):
        Image.fromarray(np.full((8, 8, 3), (200, 40, 90), np.uint8)).save(tmp_path / "b.webp", lossless=True)
        names.append("b.webp")
    src = open_source(str(tmp_path))
    assert [f.name for f in src.files] == names
    x = src.read(np.arange(len(names)))
    np.testing.assert_allclose(x[:, :, 4, 4], np.tile(np.array([200, 40, 90]) / 127.5 - 1, (len(names), 1)), atol=0.05)


def test_image_folder_gives_the_estimate_of_the_same_images_as_npy(tmp_path):
    (tmp_path / "imgs" / "b").mkdir(parents=True)
    imgs = np.stack([_pixels(4, 5, i) for i in range(N)])
    for i in range(N):  # sorted recursively by path: imgs/a_00..05.png, then imgs/b/...
        sub = "" if i < 6 else "b/"
        Image.fromarray(imgs[i]).save(tmp_path / "imgs" / f"{sub}a_{i:02d}.png")
    np.save(tmp_path / "ref.npy", (imgs.astype(np.float32) / np.float32(127.5) - 1).transpose(0, 3, 1, 2))
    a = tiny_estimate(tmp_path / "imgs", tmp_path / "a.safetensors")
    b = tiny_estimate(tmp_path / "ref.npy", tmp_path / "b.safetensors")
    assert_same_estimate(a, b)
    assert a[1]["data"]["format"] == "images" and a[1]["data"]["skipped"] == 0


def test_images_of_different_sizes_need_resolution(tmp_path):
    Image.fromarray(_pixels(4, 4, 0)).save(tmp_path / "0.png")
    Image.fromarray(_pixels(6, 5, 1)).save(tmp_path / "1.png")
    with pytest.raises(VRCurveError, match=r"images differ in size: .*0\.png is 4x4 but .*1\.png is 5x6; pass --resolution"):
        open_source(str(tmp_path)).read(np.array([0, 1]))
    assert open_source(str(tmp_path), resolution=3).read(np.array([0, 1])).shape == (2, 3, 3, 3)


def _image_folder_with_a_broken_file(tmp_path):
    for i in range(N):
        Image.fromarray(_pixels(4, 4, i)).save(tmp_path / f"{i:02d}.png")
    (tmp_path / "05.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not the rest of a png")
    return tmp_path


def test_undecodable_image_is_named(tmp_path):
    folder = _image_folder_with_a_broken_file(tmp_path)
    with pytest.raises(VRCurveError, match=r"cannot decode image .*05\.png .*--skip-bad"):
        load_samples(open_source(str(folder)), None, 0)


def test_skip_bad_skips_and_counts_undecodable_images(tmp_path):
    folder = _image_folder_with_a_broken_file(tmp_path)
    chosen = load_samples(open_source(str(folder), skip_bad=True), None, 0)
    assert chosen.skipped == (5,) and len(chosen.indices) == N - 1 and 5 not in chosen.indices
    assert "05.png" in chosen.skipped_names[0]


def test_missing_pillow_says_how_to_install_it(tmp_path, monkeypatch):
    Image.fromarray(_pixels(4, 4, 0)).save(tmp_path / "0.png")
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now raises ImportError
    with pytest.raises(VRCurveError, match=r"needs Pillow.*pip install 'vrcurve\[images\]'"):
        open_source(str(tmp_path))


def test_import_vrcurve_stays_light():
    code = "import sys, vrcurve; print(sorted(m for m in ('h5py', 'PIL', 'safetensors.torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", ["x.npy", "x.h5"])
def test_reading_numpy_backed_formats_loads_no_torch(tmp_path, name):
    # The readers of NumPy-backed formats need no torch: a script that only reads data should not pay its import.
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    if name.endswith(".npy"):
        np.save(tmp_path / name, x)
    else:
        with h5py.File(tmp_path / name, "w") as f:
            f["latents"] = x
    code = (f"import sys; from vrcurve.readers import open_source; open_source({str(tmp_path / name)!r}).read([0, 2, 3]); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---- keys ---------------------------------------------------------------------------------------------------

def test_hdf5_ambiguous_key_lists_the_candidates(X, tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["latents"] = X
        f["latents_flipped"] = X[:, :, ::-1]
        for i in range(N):
            f[f"cache/{i}"] = X[i]
    with pytest.raises(VRCurveError, match=r"holds 3 datasets that could be the samples \('cache/\*': 12 samples of "
                                           r"shape \(4, 3, 3\); 'latents': shape \(12, 4, 3, 3\); 'latents_flipped': "
                                           r"shape \(12, 4, 3, 3\)\); choose one with --key"):
        open_source(str(tmp_path / "x.h5"))
    assert open_source(str(tmp_path / "x.h5"), key="cache").n == N  # a group is read one sample per member
    assert open_source(str(tmp_path / "x.h5"), key="latents_flipped").name.endswith(":latents_flipped")


def test_hdf5_unknown_key_lists_the_candidates(X, tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["latents"] = X
    with pytest.raises(VRCurveError, match=r"has no dataset or group 'latent'; the candidates are: 'latents'"):
        open_source(str(tmp_path / "x.h5"), key="latent")


def test_hdf5_with_no_candidate_says_so(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["labels"] = np.arange(5)
    with pytest.raises(VRCurveError, match="holds 0 datasets that could be the samples"):
        open_source(str(tmp_path / "x.h5"))


def test_safetensors_ambiguous_and_unknown_keys(X, tmp_path):
    save_file({"mean": X, "logvar": X, "label": np.arange(N)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(VRCurveError, match=r"holds 2 tensors .*logvar \(12, 4, 3, 3\).*choose one with --key"):
        open_source(str(tmp_path / "x.safetensors"))
    with pytest.raises(VRCurveError, match=r"has no tensor 'latents'; its tensors are: label \(12,\), logvar"):
        open_source(str(tmp_path / "x.safetensors"), key="latents")


def test_npz_ambiguous_and_unknown_keys(X, tmp_path):
    np.savez(tmp_path / "x.npz", a=X, b=X)
    with pytest.raises(VRCurveError, match=r"holds 2 arrays \(a, b\); choose one with --key"):
        open_source(str(tmp_path / "x.npz"))
    with pytest.raises(VRCurveError, match=r"has no array 'c'; its arrays are: a, b"):
        open_source(str(tmp_path / "x.npz"), key="c")


def test_key_on_a_format_without_keys_is_refused(X, tmp_path):
    np.save(tmp_path / "x.npy", X)
    with pytest.raises(VRCurveError, match=r"--key 'latents' was given, but .*x\.npy is npy data.*drop --key"):
        open_source(str(tmp_path / "x.npy"), key="latents")
    with pytest.raises(VRCurveError, match=r"--resolution applies to image folders.*drop --resolution"):
        open_source(str(tmp_path / "x.npy"), resolution=64)


# ---- bad input ----------------------------------------------------------------------------------------------

def test_missing_path(tmp_path):
    with pytest.raises(VRCurveError, match=r"data path .*nope\.h5 does not exist"):
        open_source(str(tmp_path / "nope.h5"))


def test_empty_folder_and_glob_say_which_suffixes_were_looked_for(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no data here")
    with pytest.raises(VRCurveError, match=r"the folder .*empty found no data files \(looked for \.npy, \.npz, "
                                           r"\.safetensors, \.h5, .*\.png, \.jpg, \.jpeg, \.webp\)"):
        open_source(str(tmp_path / "empty"))
    with pytest.raises(VRCurveError, match=r"the glob .*\*\.npy found no data files \(looked for \.npy"):
        open_source(str(tmp_path / "*.npy"))


def test_unsupported_file_type(tmp_path):
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(VRCurveError, match=r"unsupported file type \.csv"):
        open_source(str(tmp_path / "x.csv"))


def test_folder_of_mixed_formats_asks_for_a_glob(X, tmp_path):
    np.save(tmp_path / "a.npy", X[0])
    np.save(tmp_path / "b.npy", X[1])
    Image.fromarray(_pixels(4, 4, 0)).save(tmp_path / "c.png")
    with pytest.raises(VRCurveError, match=r"several formats \(1 images, 2 npy\); pass a glob .*\*\*/\*\.png"):
        open_source(str(tmp_path))


@pytest.mark.parametrize("name, what", [("x.npy", "npy"), ("x.npz", "npz"), ("x.h5", "HDF5"),
                                        ("x.safetensors", "safetensors")])
def test_truncated_file_is_named(X, tmp_path, name, what):
    good = tmp_path / "good"
    good.mkdir()
    if name.endswith(".npy"):
        np.save(good / name, X)
    elif name.endswith(".npz"):
        np.savez_compressed(good / name, X)
    elif name.endswith(".h5"):
        with h5py.File(good / name, "w") as f:
            f["z"] = X
    else:
        save_file({"z": X}, str(good / name))
    raw = (good / name).read_bytes()
    (tmp_path / name).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(VRCurveError, match=rf"{name}.*(truncated|corrupt)"):
        load_samples(open_source(str(tmp_path / name)), None, 0)


def test_corrupt_per_sample_npy_is_named_or_skipped(X, tmp_path):
    for i in range(N):
        np.save(tmp_path / f"{i}.npy", X[i])
    (tmp_path / "3.npy").write_bytes((tmp_path / "3.npy").read_bytes()[:90])
    with pytest.raises(VRCurveError, match=r"cannot decode file .*3\.npy"):
        load_samples(open_source(str(tmp_path)), None, 0)
    chosen = load_samples(open_source(str(tmp_path), skip_bad=True), 8, 0)
    assert len(chosen.indices) == 8 and 3 not in chosen.indices


def test_per_sample_npy_files_of_different_shapes_are_named(X, tmp_path):
    for i in range(N):
        np.save(tmp_path / f"{i}.npy", X[i] if i != 7 else X[i, :2])
    with pytest.raises(VRCurveError, match=r"samples differ in shape: .*0\.npy is \(4, 3, 3\) but .*7\.npy is \(2, 3, 3\)"):
        load_samples(open_source(str(tmp_path)), None, 0)


def test_shards_of_different_shapes_are_named(X, tmp_path):
    save_file({"z": X[:6]}, str(tmp_path / "s0.safetensors"))
    save_file({"z": X[6:, :2]}, str(tmp_path / "s1.safetensors"))
    with pytest.raises(VRCurveError, match=r"shards differ in sample shape: .*s0\.safetensors .*\(6, 4, 3, 3\) but "
                                           r".*s1\.safetensors holds \(6, 2, 3, 3\)"):
        open_source(str(tmp_path))


def test_shard_without_the_key_is_named(X, tmp_path):
    save_file({"z": X[:6]}, str(tmp_path / "s0.safetensors"))
    save_file({"w": X[6:]}, str(tmp_path / "s1.safetensors"))
    with pytest.raises(VRCurveError, match=r"shard .*s1\.safetensors has no tensor 'z'"):
        open_source(str(tmp_path))


def test_hdf5_per_sample_members_of_different_shapes_are_named(X, tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        for i in range(N):
            f[f"s/{i}"] = X[i] if i != 6 else X[i, :1]
    with pytest.raises(VRCurveError, match=r"samples differ in shape: s/0 is \(4, 3, 3\) but s/6 is \(1, 3, 3\)"):
        load_samples(open_source(str(tmp_path / "x.h5")), None, 0)


def test_non_numeric_dtype_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(VRCurveError, match=r"x\.npy has dtype <U1, not a real numeric type"):
        open_source(str(tmp_path / "x.npy"))
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["names"] = np.array([[b"a", b"b"], [b"c", b"d"]])
    with pytest.raises(VRCurveError, match=r"x\.h5:names has dtype \|S1, not a real numeric type"):
        open_source(str(tmp_path / "x.h5"), key="names")
    for i in range(2):
        np.save(tmp_path / f"{i}.npy", np.array(["a", "b"]) if i else np.zeros(3))
    with pytest.raises(VRCurveError, match=r"1\.npy has dtype <U1, not a real numeric type"):
        load_samples(open_source(str(tmp_path / "[0-9].npy")), None, 0)


# ---- the command line ---------------------------------------------------------------------------------------

runner = CliRunner()


def _cli(*args):
    return runner.invoke(app, ["estimate", "-M", "8", "-K", "4", "-T", "20", "--table-size", "64", "-q", *args])


def test_cli_errors_exit_1_and_write_nothing(X, tmp_path):
    out = tmp_path / "vr.safetensors"
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["a"] = X
        f["b"] = X
    for args, message in (
        (["--data", str(tmp_path / "missing.npy")], "does not exist"),
        (["--data", str(tmp_path / "x.h5")], "choose one with --key"),
        (["--data", str(tmp_path / "x.h5"), "--key", "c"], "has no dataset or group 'c'"),
        (["--data", str(tmp_path / "*.png")], "found no data files"),
    ):
        result = _cli(*args, "-o", str(out))
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output.replace("\n", " ")
        assert "Traceback" not in result.output
        assert not out.exists()


def test_cli_reads_an_image_folder_with_resolution_and_skip_bad(tmp_path):
    (tmp_path / "imgs").mkdir()
    folder = _image_folder_with_a_broken_file(tmp_path / "imgs")
    out = tmp_path / "vr.safetensors"
    result = _cli("--data", str(folder), "--resolution", "2", "-M", "all", "-o", str(out))
    assert result.exit_code == 1 and "05.png" in result.output and not out.exists()
    result = _cli("--data", str(folder), "--resolution", "2", "--skip-bad", "-M", "all", "-o", str(out))
    assert result.exit_code == 0, result.output
    _, meta = read_artifact(out)
    assert meta["shape"] == [3, 2, 2] and meta["samples"] == N - 1
    assert meta["data"]["skipped"] == 1 and meta["data"]["resolution"] == 2 and meta["data"]["samples_total"] == N
