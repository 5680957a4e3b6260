"""ArtifactMeta, the typed metadata of an artifact (vrcurve/meta.py; docs/integration.md, "The artifact"):
stored strings to typed fields and back, defaults of older files, unknown entries kept, bad entries refused."""

import json
import re
from dataclasses import fields

import numpy as np
import pytest
from artifacts import valid_meta, valid_tensors
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

import vrcurve
from vrcurve.artifact import (
    Artifact,
    artifact_checksum,
    bucket_tensor_name,
    payload_checksum,
    read_artifact,
    write_artifact,
)
from vrcurve.cli import app
from vrcurve.errors import VRCurveError
from vrcurve.meta import KEYS, ArtifactMeta, BucketMeta, DroppedBucket

runner = CliRunner()
SHAPES = {(2, 4, 4): 24, (2, 4, 6): 16, (2, 6, 6): 3}  # the last bucket is too small and is dropped


def _stored(path):
    """The metadata strings of the file at ``path``, as safetensors reads them."""
    with safe_open(str(path), framework="numpy") as f:
        return dict(f.metadata())


def _decoded(raw):
    """The stored strings as values, decoded here independently of vrcurve: JSON where they hold JSON."""
    out = {}
    for key, text in raw.items():
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def _with_entries(path, out, drop=(), **entries):
    """``path`` written again to ``out`` with the stored strings ``drop`` left out and ``entries`` replaced, and
    the checksum recomputed, as a crafted file would have it."""
    tensors, raw = load_file(str(path)), _stored(path)
    raw = {k: v for k, v in raw.items() if k not in drop}
    raw.update(entries)
    raw["checksum"] = artifact_checksum(tensors, raw)
    save_file(tensors, str(out), metadata=raw)
    return out


@pytest.fixture(scope="module")
def bucketed(tmp_path_factory):
    """An artifact estimated on per-sample .npy files of three shapes, the smallest bucket dropped."""
    folder = tmp_path_factory.mktemp("meta") / "latents"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = iter(range(100))
    for shape, count in SHAPES.items():
        for _ in range(count):
            np.save(folder / f"{next(names):03d}.npy", rng.standard_normal(shape).astype(np.float32))
    out = folder.parent / "bucketed.safetensors"
    r = runner.invoke(app, ["estimate", "--data", str(folder), "-o", str(out), "-M", "24", "-K", "2", "-T", "16",
                            "--bootstrap", "10", "--min-bucket", "8", "--drop-small-buckets", "--table-size", "64"])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(params=["one shape", "buckets"])
def artifact(request, tiny_artifact, bucketed):
    return tiny_artifact if request.param == "one shape" else bucketed


def test_from_strings_then_to_strings_gives_the_stored_strings(artifact):
    raw = _stored(artifact)
    meta = ArtifactMeta.from_strings(raw, artifact)
    assert meta.to_strings() == raw
    again = ArtifactMeta.from_strings(meta.to_strings(), artifact)
    assert again == meta and again.to_strings() == raw
    assert [getattr(again, k) for k in KEYS] == [getattr(meta, k) for k in KEYS]


def test_the_mapping_is_the_decoded_stored_strings(artifact):
    raw = _stored(artifact)
    meta = read_artifact(artifact).meta
    assert dict(meta) == {**_decoded(raw), "format_version": 2}
    assert len(meta) == len(raw) and set(meta) == set(raw)
    assert list(meta) == [k for k in KEYS if k in raw]  # the known entries, in the schema's order
    assert meta.get("not_there") is None and "not_there" not in meta


def test_the_fields_are_typed(bucketed):
    tensors, meta = read_artifact(bucketed)
    assert meta.shape == (2, 4, 4) and meta.samples == 24 and meta.timesteps == 16 and meta.format_version == 2
    assert isinstance(meta.logitnormal_m_ci90, tuple) and meta.logitnormal_m_ci90 == tuple(meta["logitnormal_m_ci90"])
    assert all(isinstance(b, BucketMeta) for b in meta.buckets)
    assert [b.shape for b in meta.buckets] == [(2, 4, 4), (2, 4, 6)]
    assert [b.samples_total for b in meta.buckets] == [24, 16]
    assert sum(b.share for b in meta.buckets) == pytest.approx(1.0)
    assert meta.buckets_dropped == (DroppedBucket(shape=(2, 6, 6), samples_total=3),)
    assert meta.min_bucket == 8 and meta.uniform_mix == 0.02 and meta.time_convention == "t0_noise"
    assert meta.extra == {}


def test_a_bucket_is_an_artifact_of_its_own(bucketed):
    art = read_artifact(bucketed)
    assert isinstance(art, Artifact) and art == (art.tensors, art.meta)
    vr = vrcurve.load(bucketed)
    for b, info in enumerate(art.meta.buckets):
        own = art.bucket(b)
        np.testing.assert_array_equal(own.tensors["pdf"], art.tensors[bucket_tensor_name(b, "pdf")])
        assert own.meta.shape == info.shape and own.meta.logitnormal_m == info.logitnormal_m
        assert own.meta.buckets is None and own.meta["share"] == info.share  # bucket entries that are not fields
        assert own.meta == vr.bucket(info.shape).meta
        assert own.meta.scheduler == art.meta.scheduler and own.meta.samples == info.samples


def test_a_version_1_file_loads_with_the_documented_defaults(tmp_path):
    """A file as vrcurve 0.1 wrote it: no uniform_mix (no density floor then), no logitnormal_s, no buckets."""
    tensors = {k: np.asarray(v, dtype=np.float32) for k, v in valid_tensors().items()}
    raw = {"format": "vrcurve", "format_version": "1", "vrcurve_version": "0.1.0", "time_convention": "t1_noise",
           "logitnormal_m": "0.5", "shape": "[4, 8, 8]", "checksum": payload_checksum(tensors)}
    save_file(tensors, str(tmp_path / "v1.safetensors"), metadata=raw)
    meta = read_artifact(tmp_path / "v1.safetensors").meta
    assert (meta.format_version, meta.uniform_mix, meta.logitnormal_s) == (1, 0.0, 1.0)
    assert meta.time_convention == "t1_noise" and meta.buckets is None and meta.scheduler is None
    assert "uniform_mix" not in meta and "logitnormal_s" not in meta  # defaults, not stored entries
    assert dict(meta) == {**_decoded(raw), "format_version": 1}
    assert meta.to_strings() == raw
    assert vrcurve.load(tmp_path / "v1.safetensors").logitnormal_s == 1.0


def test_metadata_built_in_code_takes_the_same_defaults():
    meta = ArtifactMeta.coerce({"logitnormal_m": 0.25})
    assert (meta.time_convention, meta.logitnormal_s, meta.uniform_mix) == ("t0_noise", 1.0, 0.0)
    assert dict(meta) == {"logitnormal_m": 0.25} and ArtifactMeta.coerce(meta) is meta
    assert ArtifactMeta(logitnormal_m=0.25, logitnormal_s=1.0) != meta  # s is set there, absent here


def test_an_unknown_entry_survives_a_read_and_is_shown(tmp_path):
    future = {"from_the_future": {"b": [1, 2.5]}, "note": "written by a newer vrcurve"}
    path = tmp_path / "a.safetensors"
    write_artifact(path, valid_tensors(), valid_meta(**future))
    meta = read_artifact(path).meta
    assert meta.extra == future and meta["from_the_future"] == {"b": [1, 2.5]}
    # written back, the file holds the same strings (and so the same checksum)
    write_artifact(tmp_path / "b.safetensors", valid_tensors(), meta)
    assert _stored(tmp_path / "b.safetensors") == _stored(path)
    shown = runner.invoke(app, ["show", str(path), "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout) == dict(meta)
    assert list(json.loads(shown.stdout))[-2:] == ["from_the_future", "note"]  # after the known ones, sorted
    table = runner.invoke(app, ["show", str(path)])
    assert table.exit_code == 0 and "from_the_future" in table.output and "b=[1, 2.5]" in table.output


# Every entry that a file may hold is checked, but these: format and format_version (stored_version), the
# checksum (read_artifact) and buckets (below).
CHECKED = [k for k in KEYS if k not in ("format", "format_version", "checksum", "buckets")]


@pytest.mark.parametrize("key", CHECKED)
def test_an_invalid_entry_is_refused_with_the_path(tiny_artifact, tmp_path, key):
    out = _with_entries(tiny_artifact, tmp_path / "x.safetensors", **{key: "[[]]"})  # valid for no entry
    with pytest.raises(VRCurveError) as caught:
        read_artifact(out)
    assert str(caught.value) == (f"{out} has an invalid metadata entry {key}=[[]]; re-create it with "
                                 "`vrcurve estimate`.")


BUCKET_FIELDS = [f.name for f in fields(BucketMeta) if f.name != "extra"]


@pytest.mark.parametrize("key", BUCKET_FIELDS)
def test_an_invalid_bucket_entry_is_refused_with_the_path(bucketed, tmp_path, key):
    buckets = json.loads(_stored(bucketed)["buckets"])
    buckets[1][key] = [[]]
    out = _with_entries(bucketed, tmp_path / "x.safetensors", buckets=json.dumps(buckets))
    message = {"shape": "bucket 1 has the shape [[]], not a list of positive whole numbers",
               "share": "the bucket shares"}.get(key, f"bucket 1 has an invalid {key} [[]];")
    with pytest.raises(VRCurveError, match=re.escape(f"{out} has invalid resolution buckets: ")) as caught:
        read_artifact(out)
    assert message in str(caught.value)


@pytest.mark.parametrize("value, message", [
    ("[[]]", "the buckets metadata is not a list of objects"),
    ("[]", "the buckets metadata is not a list of objects"),
])
def test_a_buckets_entry_that_is_not_a_list_of_buckets_is_refused(bucketed, tmp_path, value, message):
    out = _with_entries(bucketed, tmp_path / "x.safetensors", buckets=value)
    with pytest.raises(VRCurveError, match=re.escape(f"{out} has invalid resolution buckets: {message}")):
        read_artifact(out)


@pytest.mark.parametrize("key", ["time_convention", "logitnormal_m"])
def test_a_missing_required_entry_is_refused_with_the_path(tiny_artifact, tmp_path, key):
    out = _with_entries(tiny_artifact, tmp_path / "x.safetensors", drop=(key,))
    with pytest.raises(VRCurveError, match=re.escape(f"{out} lacks the metadata entry '{key}'")):
        read_artifact(out)
