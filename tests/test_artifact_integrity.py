"""No byte of an artifact changes a result unnoticed: the checksum covers the metadata (format version 2), and
``read_artifact`` refuses crafted files whose checksum was recomputed (docs/integration.md, "The artifact")."""

import json
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

import vrcurve
from vrcurve.artifact import artifact_checksum, payload_checksum, read_artifact
from vrcurve.cli import app
from vrcurve.errors import VRCurveError

runner = CliRunner()


@pytest.fixture(scope="module")
def small_artifact(tmp_path_factory, tiny_npy):
    """A real artifact, small enough to flip every byte of its header (T = 16, U = 16)."""
    from artifacts import estimate_with

    from vrcurve.schedulers import get_scheduler

    out = tmp_path_factory.mktemp("integrity") / "small.safetensors"
    estimate_with(str(tiny_npy), out, get_scheduler("linear", shift=3.0), samples=8, noise=4, timesteps=16,
                 table_size=16, seed=3, bootstrap=20)
    return out


def _raw(path):
    with safe_open(str(path), framework="numpy") as f:
        return load_file(str(path)), dict(f.metadata())


def _rewrite(path, out, *, tensors=None, meta=None, recompute=True):
    """Write ``path`` again to ``out`` with changed tensors or metadata; with ``recompute`` the checksum is
    recomputed, as a crafted file would have it."""
    arrays, raw = _raw(path)
    arrays.update(tensors or {})
    raw.update(meta or {})
    if recompute:
        raw["checksum"] = artifact_checksum(arrays, raw)
    save_file(arrays, str(out), metadata=raw)
    return out


@pytest.mark.parametrize("key, value", [
    ("logitnormal_m", "-1.214"),
    ("time_convention", "t1_noise"),
    ("scheduler", json.dumps({"name": "linear", "shift": 1.0})),
    ("created", "2020-01-01T00:00:00+00:00"),
    ("not_there_before", "1"),
])
def test_changed_metadata_fails_the_checksum(small_artifact, tmp_path, key, value):
    out = _rewrite(small_artifact, tmp_path / "x.safetensors", meta={key: value}, recompute=False)
    with pytest.raises(VRCurveError, match="fails its checksum: its tensors or metadata were changed"):
        vrcurve.load(out)


@pytest.mark.parametrize("meta, message", [
    ({"time_convention": "t1_nois"}, "invalid metadata entry time_convention"),
    ({"logitnormal_m": "NaN"}, "invalid metadata entry logitnormal_m"),
    ({"logitnormal_m": '"0.5"'}, "invalid metadata entry logitnormal_m"),
    ({"logitnormal_s": "0"}, "invalid metadata entry logitnormal_s"),
    ({"likelihood": "median"}, "invalid metadata entry likelihood"),
    ({"scheduler": json.dumps({"name": "linear", "shift": -3})}, "invalid metadata entry scheduler"),
    ({"scheduler": "[1, 2]"}, "invalid metadata entry scheduler"),
    ({"samples": "true"}, "invalid metadata entry samples"),
    ({"timesteps": "17"}, "says timesteps=17 but holds 16 bins"),
    ({"normalization": json.dumps({"mode": "sometimes"})}, "invalid metadata entry normalization"),
    ({"logitnormal_m_ci90": "[0.3, 0.1]"}, "invalid metadata entry logitnormal_m_ci90"),
    ({"format_version": "2x"}, "invalid format_version '2x'"),
    ({"format_version": "0"}, "invalid format_version '0'"),
])
def test_crafted_metadata_is_refused_at_load(small_artifact, tmp_path, meta, message):
    out = _rewrite(small_artifact, tmp_path / "x.safetensors", meta=meta)
    with pytest.raises(VRCurveError, match=message):
        vrcurve.load(out)


def test_a_missing_required_entry_is_refused(small_artifact, tmp_path):
    arrays, raw = _raw(small_artifact)
    del raw["time_convention"]
    raw["checksum"] = artifact_checksum(arrays, raw)
    save_file(arrays, str(tmp_path / "x.safetensors"), metadata=raw)
    with pytest.raises(VRCurveError, match="lacks the metadata entry 'time_convention'"):
        read_artifact(tmp_path / "x.safetensors")


def _edited(small_artifact, name, edit):
    arrays, _ = _raw(small_artifact)
    value = arrays[name].copy()
    edit(value)
    return value


@pytest.mark.parametrize("name, edit, message", [
    ("pdf", lambda v: v.__setitem__(3, -v[3]), "pdf is negative"),
    ("cdf", lambda v: v.__setitem__(-1, 0.9), "cdf does not rise from 0 to 1"),
    ("cdf", lambda v: v.__setitem__(5, v[7]), "cdf"),
    ("icdf", lambda v: v.__setitem__(2, 0.99), "inverse-CDF table does not rise"),
    ("S", lambda v: v.__setitem__(0, np.inf), "tensor S holds NaN or infinite values"),
    ("variance", lambda v: v.__setitem__(0, np.nan), "tensor variance holds NaN"),
    ("t", lambda v: v.__setitem__(0, 0.9), "timesteps t are not increasing"),
    ("ks", lambda v: v.__setitem__(0, 2.0), "KS distance lies outside"),
])
def test_crafted_tensors_are_refused_at_load(small_artifact, tmp_path, name, edit, message):
    out = _rewrite(small_artifact, tmp_path / "x.safetensors", tensors={name: _edited(small_artifact, name, edit)})
    with pytest.raises(VRCurveError, match=message):
        vrcurve.load(out)


def test_tensor_shapes_and_dtypes_are_checked(small_artifact, tmp_path):
    arrays, _ = _raw(small_artifact)
    cases = {
        "float64 pdf": ({"pdf": arrays["pdf"].astype(np.float64)}, "tensor pdf is float64"),
        "short S": ({"S": arrays["S"][:-1]}, "tensor S has 15 values but pdf has 16"),
        "matrix icdf": ({"icdf": arrays["icdf"].reshape(1, -1)}, "tensor icdf is float32 of shape"),
        "short KS grid": ({"ks": arrays["ks"][:-1]}, "the KS grid has"),
    }
    for label, (tensors, message) in cases.items():
        out = _rewrite(small_artifact, tmp_path / f"{label}.safetensors", tensors=tensors)
        with pytest.raises(VRCurveError, match=message):
            read_artifact(out)


def test_a_version_1_file_loads_with_its_tensor_checksum(small_artifact, tmp_path):
    arrays, raw = _raw(small_artifact)
    raw.update(format_version="1", checksum=payload_checksum(arrays))
    save_file(arrays, str(tmp_path / "v1.safetensors"), metadata=raw)
    dist = vrcurve.load(tmp_path / "v1.safetensors")
    assert dist.meta["format_version"] == 1
    assert dist.logitnormal_m == vrcurve.load(small_artifact).logitnormal_m
    # a version 2 file relabelled as version 1 (one byte) fails the version 1 checksum
    _, raw2 = _raw(small_artifact)
    save_file(arrays, str(tmp_path / "relabelled.safetensors"), metadata={**raw2, "format_version": "1"})
    with pytest.raises(VRCurveError, match="fails its checksum: its tensors were changed"):
        vrcurve.load(tmp_path / "relabelled.safetensors")


@pytest.mark.parametrize("content, kind", [
    (b"\x89HDF\r\n\x1a\n" + bytes(64), "is an HDF5 file, not a vrcurve artifact"),
    (b"\x93NUMPY\x01\x00" + bytes(64), "is a .npy array, not a vrcurve artifact"),
    (b"PK\x03\x04" + bytes(64), "is a zip archive"),
])
def test_show_on_a_data_file_says_what_it_is(tmp_path, content, kind):
    path = tmp_path / "data.safetensors"
    path.write_bytes(content)
    result = runner.invoke(app, ["show", str(path)])
    assert result.exit_code == 1
    assert kind in " ".join(result.output.split())


def test_a_folder_is_not_an_artifact(tmp_path):
    with pytest.raises(VRCurveError, match="is not a file; run `vrcurve estimate"):
        read_artifact(tmp_path)


def _results(dist):
    """Everything a training script gets from a loaded artifact."""
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 1, 97, dtype=torch.float64)
    flipped = dist.flip()
    return [dist.sample(64, generator=g), dist.pdf(t), dist.cdf(t), dist.icdf(t), dist.weights(t[1:-1]),
            dist.sample_indices(64, generator=torch.Generator().manual_seed(1)), torch.tensor(dist.logitnormal_m),
            flipped.pdf(t), torch.tensor(flipped.logitnormal_m), dist.icdf_table]


def test_every_flipped_byte_is_refused_or_changes_nothing(small_artifact, tmp_path):
    """Flip each bit of every header byte, and of a sample of the data bytes: load refuses the file, or
    every result, the metadata and the tensors are bit-identical to the original's."""
    data = small_artifact.read_bytes()
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    original = vrcurve.load(small_artifact)
    expected = _results(original)
    rng = np.random.default_rng(0)
    positions = list(range(header_end)) + sorted(rng.choice(np.arange(header_end, len(data)), 64, replace=False))
    path = tmp_path / "flipped.safetensors"
    refused = unchanged = 0
    for pos in positions:
        for bit in range(8):
            damaged = bytearray(data)
            damaged[pos] ^= 1 << bit
            path.write_bytes(bytes(damaged))
            try:
                dist = vrcurve.load(path)
            except VRCurveError:
                refused += 1
                continue
            unchanged += 1
            assert dist.meta == original.meta, f"byte {pos} bit {bit}"
            assert all(np.array_equal(dist.arrays[k], original.arrays[k]) for k in original.arrays)
            for got, want in zip(_results(dist), expected):
                assert torch.equal(got, want), f"byte {pos} bit {bit}"
    print(f"flipped {refused + unchanged} bits in {len(positions)} bytes ({header_end} header bytes): "
          f"{refused} refused at load, {unchanged} loaded with every result unchanged")
    assert refused + unchanged == 8 * len(positions)
    assert refused > 0.95 * (refused + unchanged)


def test_a_bucket_inverse_cdf_table_of_fewer_than_2_entries_is_refused(tmp_path):
    """A bucket's icdf table may have any length but needs two entries, as the pooled one does."""
    from types import SimpleNamespace

    from artifacts import valid_meta, valid_tensors

    from vrcurve.artifact import bucket_tensors, write_artifact

    tensors = valid_tensors()
    curve = SimpleNamespace(**{k: tensors[k] for k in ("S", "variance", "S_stderr", "variance_stderr")})
    empty_icdf = SimpleNamespace(pdf=tensors["pdf"], cdf=tensors["cdf"], icdf=np.zeros(0))
    tensors.update(bucket_tensors(0, curve, empty_icdf))
    bucket = {"shape": [4, 8, 8], "dim": 256, "samples_total": 5, "share": 1.0, "samples": 5, "logitnormal_m": 0.1,
              "logitnormal_m_grid": 0.1, "logitnormal_s": 1.0, "ks": 0.1}
    out = write_artifact(tmp_path / "x.safetensors", tensors, valid_meta(buckets=[bucket]))
    with pytest.raises(VRCurveError, match="bucket 0: the inverse-CDF table has fewer than 2 entries"):
        read_artifact(out)
