"""The vrcurve artifact: one safetensors file (docs/integration.md, "The artifact").

Tensors are float32; metadata values are strings (nested values JSON-encoded). The ``checksum`` entry is a
sha256 that, from format version 2 on, covers the tensor payload (every tensor, by sorted name: name, dtype,
shape and little-endian bytes) and every other metadata entry (key and value), so that no byte of the file
that can change a result changes unnoticed; in version 1 files it covers the tensors only. On top of the
checksum, ``read_artifact`` validates what a crafted file could still get wrong: the tensors' dtypes, shapes
and values (finite, pdf >= 0, cdf rising from 0 to 1, icdf rising in [0, 1]) and the types and allowed
values of the metadata, so that a bad file is refused when it is loaded, not when it is used.

Writes are atomic: a temporary file in the same folder, fsync, then rename; an interrupted write leaves
nothing at the destination.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Tuple, Union

import numpy as np

from ._version import __version__
from .errors import VRCurveError

FORMAT = "vrcurve"
FORMAT_VERSION = 2
# Format versions and what their checksum covers: 1 the tensors; 2 the tensors and every other metadata entry.
_TENSORS_ONLY_CHECKSUM = 1
TENSORS = ("t", "S", "h2", "variance", "pdf", "cdf", "icdf", "ks_m", "ks", "S_stderr", "variance_stderr")
# Tensors of length T (the timestep bins); cdf has T + 1 values, icdf U + 1, ks_m and ks one per grid point.
_PER_TIMESTEP = ("t", "S", "h2", "variance", "pdf", "S_stderr", "variance_stderr")
# Round-off allowed between the float32 pdf, cdf and icdf of one density.
_DENSITY_TOL = 1e-4

PathLike = Union[str, "os.PathLike[str]"]


def payload_checksum(tensors: Mapping[str, np.ndarray]) -> str:
    """sha256 over the tensors in sorted-name order: name, dtype, shape, then the raw little-endian bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        h.update(f"{name}|{arr.dtype.str}|{list(arr.shape)}\n".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def artifact_checksum(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> str:
    """sha256 over the tensors (as ``payload_checksum``) and every metadata entry but ``checksum`` itself,
    each as its JSON-encoded [key, stored string], in sorted key order (format version 2 and later)."""
    h = hashlib.sha256(payload_checksum(tensors).encode())
    for key in sorted(metadata):
        if key != "checksum":
            h.update(json.dumps([key, metadata[key]]).encode() + b"\n")
    return h.hexdigest()


def _encode(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def write_artifact(path: PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> Path:
    """Write ``tensors`` (cast to float32) and ``metadata`` atomically to ``path``; returns the path.

    ``format``, ``format_version``, ``vrcurve_version`` and ``checksum`` are set here.
    """
    from safetensors.numpy import save_file

    path = Path(path)
    missing = [n for n in TENSORS if n not in tensors]
    if missing:
        raise ValueError(f"artifact tensors missing: {missing}")
    arrays = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in tensors.items()}
    meta = {k: _encode(v) for k, v in metadata.items()}
    meta.update(format=FORMAT, format_version=str(FORMAT_VERSION), vrcurve_version=__version__)
    meta.pop("checksum", None)
    meta["checksum"] = artifact_checksum(arrays, meta)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise VRCurveError(f"cannot write {path}: folder {folder} does not exist; create it or choose another --out.")
    try:
        with atomic_path(path) as tmp:
            save_file(arrays, tmp, metadata=meta)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
    except OSError as exc:
        raise VRCurveError(f"cannot write {path}: {exc.strerror or exc}; check the path and free space.") from None
    return path


@contextmanager
def atomic_path(path: Path) -> Iterator[str]:
    """A temporary file beside ``path`` for the block to write; it becomes ``path`` (one rename) when the
    block succeeds and is removed when it fails, so ``path`` is either the whole new file or untouched."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_artifact(path: PathLike) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """Read and verify an artifact: (tensors as float32 arrays, parsed metadata).

    Raises:
        VRCurveError: missing file, not a safetensors file, not a vrcurve artifact, a newer format version,
            missing tensors, a checksum that does not match, or tensors or metadata that no vrcurve writes.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise VRCurveError(f"artifact {path} {what}; run `vrcurve estimate -o {path}` first.")
    try:
        with safe_open(str(path), framework="numpy") as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:
        raise _unreadable(path) from None
    if raw_meta.get("format") != FORMAT:
        raise VRCurveError(f"{path} is a safetensors file but not a vrcurve artifact (no format=vrcurve metadata).")
    raw_version = raw_meta.get("format_version", "")
    if not (raw_version.isascii() and raw_version.isdigit() and int(raw_version) >= 1):
        raise VRCurveError(f"{path} has an invalid format_version {raw_version!r}; re-create it with `vrcurve estimate`.")
    version = int(raw_version)
    if version > FORMAT_VERSION:
        raise VRCurveError(
            f"{path} has format version {version}, written by vrcurve {raw_meta.get('vrcurve_version', '?')}; "
            f"this vrcurve {__version__} reads versions 1 to {FORMAT_VERSION}: upgrade vrcurve to read it."
        )
    missing = [n for n in TENSORS if n not in tensors]
    if missing:
        raise VRCurveError(f"{path} lacks the tensors {', '.join(missing)}; re-create it with `vrcurve estimate`.")
    expected = (payload_checksum(tensors) if version == _TENSORS_ONLY_CHECKSUM
                else artifact_checksum(tensors, raw_meta))
    if raw_meta.get("checksum") != expected:
        covered = "tensors" if version == _TENSORS_ONLY_CHECKSUM else "tensors or metadata"
        raise VRCurveError(f"{path} fails its checksum: its {covered} were changed after writing; re-create it.")
    _check_tensors(path, tensors)
    meta = {k: _decode(v) for k, v in raw_meta.items()}
    meta["format_version"] = version
    _check_metadata(path, meta, timesteps=tensors["pdf"].shape[0])
    return tensors, meta


_SIGNATURES = ((b"\x89HDF\r\n\x1a\n", "an HDF5 file"), (b"\x93NUMPY", "a .npy array"), (b"PK\x03\x04", "a zip archive (.npz?)"),
               (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"))


def _unreadable(path: Path) -> VRCurveError:
    """What to say of a file safetensors cannot open: another kind of file, or a damaged artifact."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError as exc:
        return VRCurveError(f"cannot read {path} ({exc.strerror or exc}); check its permissions.")
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return VRCurveError(f"{path} is {kind}, not a vrcurve artifact; pass the .safetensors file that "
                                "`vrcurve estimate` wrote.")
    if len(head) == 9 and head[8:9] != b"{":  # a safetensors file starts with its header length, then '{'
        return VRCurveError(f"{path} is not a safetensors file, so not a vrcurve artifact; pass the .safetensors "
                            "file that `vrcurve estimate` wrote.")
    return VRCurveError(f"{path} is not a readable safetensors file (truncated or corrupted?); re-create it with "
                        "`vrcurve estimate`.")


def _check_tensors(path: Path, tensors: Mapping[str, np.ndarray]) -> None:
    """Refuse tensors that no vrcurve writes: dtype, shapes, non-finite values, or a density that is not one."""

    def bad(what: str) -> VRCurveError:
        return VRCurveError(f"{path} is not a valid vrcurve artifact: {what}; re-create it with `vrcurve estimate`.")

    for name in TENSORS:
        arr = tensors[name]
        if arr.dtype != np.float32 or arr.ndim != 1:
            raise bad(f"tensor {name} is {arr.dtype} of shape {tuple(arr.shape)}, not a float32 vector")
    T = tensors["pdf"].shape[0]
    for name in _PER_TIMESTEP:
        if tensors[name].shape[0] != T:
            raise bad(f"tensor {name} has {tensors[name].shape[0]} values but pdf has {T}")
    if T < 1 or tensors["cdf"].shape[0] != T + 1:
        raise bad(f"cdf has {tensors['cdf'].shape[0]} values for {T} timestep bins (needs T + 1)")
    if tensors["icdf"].shape[0] < 2:
        raise bad("the inverse-CDF table has fewer than 2 entries")
    if tensors["ks_m"].shape != tensors["ks"].shape:
        raise bad(f"the KS grid has {tensors['ks_m'].shape[0]} locations but {tensors['ks'].shape[0]} distances")
    for name in TENSORS:
        values = tensors[name]
        # A standard error over a single source is undefined (NaN); nothing else may be NaN or infinite.
        finite = np.isfinite(values) | (np.isnan(values) if name.endswith("_stderr") else False)
        if not finite.all():
            raise bad(f"tensor {name} holds NaN or infinite values")
    pdf, cdf, icdf = (tensors[k].astype(np.float64) for k in ("pdf", "cdf", "icdf"))
    t = tensors["t"].astype(np.float64)
    if not ((t > 0) & (t < 1)).all() or (np.diff(t) <= 0).any():
        raise bad("the timesteps t are not increasing inside (0, 1)")
    if (pdf < 0).any():
        raise bad("the density pdf is negative somewhere")
    if cdf[0] != 0 or abs(cdf[-1] - 1) > _DENSITY_TOL or (np.diff(cdf) < 0).any():
        raise bad("the cdf does not rise from 0 to 1")
    if np.abs(np.diff(cdf) - pdf / T).max() > _DENSITY_TOL:
        raise bad("the cdf is not the integral of the pdf")
    if (np.diff(icdf) < 0).any() or icdf[0] < 0 or icdf[-1] > 1:
        raise bad("the inverse-CDF table does not rise inside [0, 1]")
    if (tensors["ks"] < 0).any() or (tensors["ks"] > 1).any():
        raise bad("a KS distance lies outside [0, 1]")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _one_of(*allowed: str):
    return lambda v: v in allowed


def _scheduler(value: Any) -> bool:
    if not (isinstance(value, dict) and isinstance(value.get("name"), str)):
        return False
    params = [v for k, v in value.items() if k != "name"]
    if not all(_number(v) or isinstance(v, str) for v in params):
        return False
    return all(_number(value[k]) and value[k] > 0 for k in ("shift", "beta_min", "beta_max") if k in value)


def _dict_with_mode(*modes: str):
    return lambda v: isinstance(v, dict) and v.get("mode") in modes


# Metadata that results depend on, or that is shown, and what each value must be. Entries not listed (and
# the optional ones when absent) are accepted as they are: the checksum covers every entry all the same.
_REQUIRED = ("time_convention", "logitnormal_m")
_METADATA_CHECKS = {
    "time_convention": _one_of("t0_noise", "t1_noise"),
    "logitnormal_m": _number,
    "logitnormal_m_grid": _number,
    "logitnormal_s": lambda v: _number(v) and v > 0,
    "logitnormal_m_ci90": lambda v: (isinstance(v, list) and len(v) == 2 and all(map(_number, v))
                                     and v[0] <= v[1]),
    "ks": lambda v: _number(v) and 0 <= v <= 1,
    "samples": _count, "noise": _count, "timesteps": _count, "dim": _count,
    "seed": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "shape": lambda v: isinstance(v, list) and all(map(_count, v)),
    "scheduler": _scheduler,
    "likelihood": _one_of("mean", "sum"),
    "form": _one_of("covariance", "paper"),
    "normalization": _dict_with_mode("global", "channel", "none"),
    "uniform_mix": lambda v: _number(v) and 0 <= v < 1,
    "data": lambda v: isinstance(v, dict),
    "elapsed_s": lambda v: _number(v) and v >= 0,
    "noise_space": _one_of("span", "ambient"),
    **{k: lambda v: isinstance(v, str) for k in ("created", "device", "precision", "kernel", "kernel_choice",
                                                  "vrcurve_version")},
}


def _check_metadata(path: Path, meta: Mapping[str, Any], timesteps: int) -> None:
    """Refuse metadata of the wrong type or outside its allowed values (``_METADATA_CHECKS``)."""
    for key in _REQUIRED:
        if key not in meta:
            raise VRCurveError(f"{path} lacks the metadata entry {key!r}; re-create it with `vrcurve estimate`.")
    for key, check in _METADATA_CHECKS.items():
        if key in meta and not check(meta[key]):
            raise VRCurveError(f"{path} has an invalid metadata entry {key}={json.dumps(meta[key])[:80]}; "
                               "re-create it with `vrcurve estimate`.")
    if "timesteps" in meta and meta["timesteps"] != timesteps:
        raise VRCurveError(f"{path} says timesteps={meta['timesteps']} but holds {timesteps} bins; re-create it "
                           "with `vrcurve estimate`.")
