import json
import os

import numpy as np
import pytest
from artifacts import valid_meta, valid_tensors
from safetensors.numpy import load_file, save_file

import vrcurve.artifact as artifact
from vrcurve.artifact import read_artifact, write_artifact
from vrcurve.errors import VRCurveError

_tensors, _meta = valid_tensors, valid_meta


def test_round_trip(tmp_path):
    path = tmp_path / "a.safetensors"
    tensors = _tensors()
    meta = _meta(scheduler={"name": "linear", "shift": 1.0}, samples=200, likelihood="mean", ks=0.0123)
    write_artifact(path, tensors, meta)
    back, m = read_artifact(path)
    for k, v in tensors.items():
        np.testing.assert_array_equal(back[k], v.astype(np.float32))
    assert m["scheduler"] == {"name": "linear", "shift": 1.0}
    assert m["samples"] == 200 and m["likelihood"] == "mean" and m["ks"] == 0.0123
    assert m["format"] == "vrcurve" and m["format_version"] == artifact.FORMAT_VERSION == 2
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        assert m["checksum"] == artifact.artifact_checksum(back, f.metadata())


def test_missing_file(tmp_path):
    with pytest.raises(VRCurveError, match="does not exist; run `vrcurve estimate"):
        read_artifact(tmp_path / "nope.safetensors")


def test_corrupted_payload_fails_checksum(tmp_path):
    path = tmp_path / "a.safetensors"
    write_artifact(path, _tensors(), _meta())
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # a byte of the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(VRCurveError, match="fails its checksum"):
        read_artifact(path)


@pytest.mark.parametrize("cut", [4, 20, -3])
def test_truncated_file(tmp_path, cut):
    path = tmp_path / "a.safetensors"
    write_artifact(path, _tensors(), _meta())
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(VRCurveError, match="not a readable safetensors file"):
        read_artifact(path)


def test_foreign_files(tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, this is not a tensor file")
    with pytest.raises(VRCurveError, match="is not a safetensors file, so not a vrcurve artifact"):
        read_artifact(text)
    other = tmp_path / "model.safetensors"
    save_file({"weight": np.zeros(3, dtype=np.float32)}, str(other), metadata={"format": "pt"})
    with pytest.raises(VRCurveError, match="not a vrcurve artifact"):
        read_artifact(other)


def _rewrite_meta(path, **changes):
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = dict(f.metadata())
    meta.update(changes)
    save_file(load_file(str(path)), str(path), metadata=meta)


def test_future_format_version(tmp_path):
    path = tmp_path / "a.safetensors"
    write_artifact(path, _tensors(), _meta())
    _rewrite_meta(path, format_version="3", vrcurve_version="9.0.0")
    with pytest.raises(VRCurveError, match=r"format version 3, written by vrcurve 9\.0\.0.*reads versions 1 to 2: upgrade"):
        read_artifact(path)


def test_missing_tensor(tmp_path):
    path = tmp_path / "a.safetensors"
    tensors = _tensors()
    write_artifact(path, tensors, _meta())
    arrays = load_file(str(path))
    del arrays["icdf"]
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = dict(f.metadata())
    save_file(arrays, str(path), metadata=meta)
    with pytest.raises(VRCurveError, match="lacks the tensors icdf"):
        read_artifact(path)


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "a.safetensors"

    def exploding_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    import safetensors.numpy

    monkeypatch.setattr(safetensors.numpy, "save_file", exploding_save)
    with pytest.raises(KeyboardInterrupt):
        write_artifact(path, _tensors(), _meta())
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.safetensors"
    write_artifact(path, _tensors(), _meta(samples=1))
    before = path.read_bytes()
    import safetensors.numpy

    monkeypatch.setattr(safetensors.numpy, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(VRCurveError, match="cannot write .*No space left"):
        write_artifact(path, _tensors(), _meta(samples=2))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_missing_output_folder(tmp_path):
    with pytest.raises(VRCurveError, match="folder .* does not exist"):
        write_artifact(tmp_path / "no" / "a.safetensors", _tensors(), _meta())


def test_metadata_strings_are_json_for_nested_values(tmp_path):
    path = tmp_path / "a.safetensors"
    write_artifact(path, _tensors(), _meta(data={"path": "x.npy", "samples_total": 3}, likelihood="sum"))
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        raw = f.metadata()
    assert json.loads(raw["data"]) == {"path": "x.npy", "samples_total": 3}
    assert raw["likelihood"] == "sum"
    assert all(isinstance(v, str) for v in raw.values())
    assert os.path.getsize(path) > 0
