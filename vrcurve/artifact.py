"""The vrcurve artifact: one safetensors file, format version 2 (SPEC §3); version 1 files are read too.

Tensors are float32; metadata values are strings (nested values JSON-encoded). The ``checksum`` entry is
the sha256 of the tensor payload (every tensor, by sorted name: name, dtype, shape and little-endian bytes),
so a file whose numbers were altered after writing is refused. Writes are atomic: a temporary file in the
same folder, fsync, then rename; an interrupted write leaves nothing at the destination.

Version 2 adds resolution buckets: an artifact estimated on data of several sample shapes holds, beside the
pooled curve in the version-1 tensors, each bucket's tensors ``bucket.<b>.<name>`` (``BUCKET_TENSORS``) and
its metadata in the list ``buckets`` (shape, dim, samples_total, share, samples, the fit...). Data of one
shape gives no ``buckets`` entry, exactly the version-1 layout; version 1 files load as such.
"""

from __future__ import annotations

import hashlib
import json
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
READS_VERSIONS = (1, 2)
TENSORS = ("t", "S", "h2", "variance", "pdf", "cdf", "icdf", "ks_m", "ks", "S_stderr", "variance_stderr")

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
    meta.update(
        format=FORMAT, format_version=str(FORMAT_VERSION), vrcurve_version=__version__,
        checksum=payload_checksum(arrays),
    )
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
            missing tensors, or a checksum that does not match.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise VRCurveError(f"artifact {path} does not exist; run `vrcurve estimate -o {path}` first.")
    try:
        with safe_open(str(path), framework="numpy") as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:
        raise VRCurveError(
            f"{path} is not a readable safetensors file (truncated or corrupted?); re-create it with `vrcurve estimate`."
        ) from None
    if raw_meta.get("format") != FORMAT:
        raise VRCurveError(f"{path} is a safetensors file but not a vrcurve artifact (no format=vrcurve metadata).")
    try:
        version = int(raw_meta.get("format_version", ""))
    except ValueError:
        raise VRCurveError(f"{path} has an invalid format_version {raw_meta.get('format_version')!r}.") from None
    if version > FORMAT_VERSION:
        raise VRCurveError(
            f"{path} has format version {version}, written by vrcurve {raw_meta.get('vrcurve_version', '?')}; "
            f"this vrcurve {__version__} reads versions {READS_VERSIONS[0]} to {FORMAT_VERSION}: upgrade vrcurve to read it."
        )
    if version not in READS_VERSIONS:
        raise VRCurveError(f"{path} has an invalid format_version {version}.")
    missing = [n for n in TENSORS if n not in tensors]
    if missing:
        raise VRCurveError(f"{path} lacks the tensors {', '.join(missing)}; re-create it with `vrcurve estimate`.")
    if payload_checksum(tensors) != raw_meta.get("checksum"):
        raise VRCurveError(f"{path} fails its checksum: its tensors were changed after writing; re-create it.")
    meta = {k: _decode(v) for k, v in raw_meta.items()}
    check_buckets(path, version, tensors, meta)
    return tensors, meta


# --- format version 2: resolution buckets -------------------------------------------------------------------

BUCKET_TENSORS = ("S", "variance", "S_stderr", "variance_stderr", "pdf", "cdf", "icdf")
BUCKET_KEYS = ("shape", "dim", "samples_total", "share", "samples", "logitnormal_m", "logitnormal_m_grid",
               "logitnormal_s", "ks")


def bucket_tensor_name(bucket: int, name: str) -> str:
    """The name of bucket ``bucket``'s tensor ``name`` in the file, e.g. ``bucket.0.pdf``."""
    return f"bucket.{int(bucket)}.{name}"


def bucket_tensors(bucket: int, curve: Any, density: Any) -> Dict[str, np.ndarray]:
    """The tensors of one bucket: its curve (S, variance and their standard errors, (T,)) and its density
    (pdf (T,), cdf (T + 1,), icdf (U + 1,)), named by ``bucket_tensor_name``."""
    values = {"S": curve.S, "variance": curve.variance, "S_stderr": curve.S_stderr,
              "variance_stderr": curve.variance_stderr, "pdf": density.pdf, "cdf": density.cdf, "icdf": density.icdf}
    return {bucket_tensor_name(bucket, k): v for k, v in values.items()}


def bucket_arrays(tensors: Mapping[str, np.ndarray], bucket: int) -> Dict[str, np.ndarray]:
    """Bucket ``bucket``'s tensors by their plain names (``pdf``, ``cdf``, ...), plus the shared ``t``, ``h2``."""
    out = {k: tensors[bucket_tensor_name(bucket, k)] for k in BUCKET_TENSORS}
    return {"t": tensors["t"], "h2": tensors["h2"], **out}


def check_buckets(path: PathLike, version: int, tensors: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Refuse a version-2 artifact whose ``buckets`` metadata and ``bucket.*`` tensors do not fit together.

    A version-1 artifact has neither. Checked: ``buckets`` is a non-empty list of objects with every key of
    ``BUCKET_KEYS``, distinct shapes, shares in (0, 1] adding up to 1, and for each bucket every tensor of
    ``BUCKET_TENSORS`` with the pooled tensor's length.
    """
    names = [n for n in tensors if n.startswith("bucket.")]
    buckets = meta.get("buckets")
    if version < 2:
        if buckets is not None or names:
            raise VRCurveError(f"{path} is format version 1 but holds resolution buckets, which version 1 has not; "
                               "re-create it with `vrcurve estimate`.")
        return
    if buckets is None:
        if names:
            raise VRCurveError(f"{path} holds bucket tensors ({names[0]}) but no buckets metadata; re-create it.")
        return
    bad = f"{path} has invalid resolution buckets"
    if not isinstance(buckets, list) or not buckets or not all(isinstance(b, dict) for b in buckets):
        raise VRCurveError(f"{bad}: the buckets metadata is not a list of objects; re-create it with `vrcurve estimate`.")
    for i, b in enumerate(buckets):
        lacking = [k for k in BUCKET_KEYS if k not in b]
        if lacking:
            raise VRCurveError(f"{bad}: bucket {i} lacks {', '.join(lacking)}; re-create it with `vrcurve estimate`.")
        shape = b["shape"]
        if not (isinstance(shape, list) and shape and all(isinstance(s, int) and s > 0 for s in shape)):
            raise VRCurveError(f"{bad}: bucket {i} has the shape {shape!r}, not a list of positive whole numbers.")
    if len({tuple(b["shape"]) for b in buckets}) < len(buckets):
        raise VRCurveError(f"{bad}: two buckets have the same shape; re-create it with `vrcurve estimate`.")
    for i, b in enumerate(buckets):
        wrong = [k for k in ("dim", "samples_total", "samples") if not _positive_int(b[k])]
        wrong += [k for k in ("logitnormal_m", "logitnormal_m_grid", "logitnormal_s", "ks") if not _finite_number(b[k])]
        if wrong:
            raise VRCurveError(f"{bad}: bucket {i} has an invalid {wrong[0]} {b[wrong[0]]!r}; re-create it with "
                               "`vrcurve estimate`.")
    shares = [b["share"] for b in buckets]
    if not all(isinstance(w, (int, float)) and 0 < w <= 1 for w in shares) or abs(sum(shares) - 1) > 1e-6:
        raise VRCurveError(f"{bad}: the bucket shares {shares} do not add up to 1; re-create it with `vrcurve estimate`.")
    T = tensors["pdf"].shape
    expected = {"S": T, "variance": T, "S_stderr": T, "variance_stderr": T, "pdf": T, "cdf": tensors["cdf"].shape,
                "icdf": None}
    for i in range(len(buckets)):
        for name in BUCKET_TENSORS:
            key = bucket_tensor_name(i, name)
            if key not in tensors:
                raise VRCurveError(f"{bad}: bucket {i} lacks its tensor {key}; re-create it with `vrcurve estimate`.")
            if tensors[key].ndim != 1 or (expected[name] is not None and tensors[key].shape != expected[name]):
                raise VRCurveError(f"{bad}: {key} has shape {tuple(tensors[key].shape)}, not that of the pooled "
                                   f"{name}; re-create it with `vrcurve estimate`.")
    extra = sorted(set(names) - {bucket_tensor_name(i, n) for i in range(len(buckets)) for n in BUCKET_TENSORS})
    if extra:
        raise VRCurveError(f"{bad}: the tensor {extra[0]} belongs to no bucket; re-create it with `vrcurve estimate`.")
    for i in range(len(buckets)):
        # sample(shape=...) draws from these: the same rules as a density anywhere (rounding of float32 allowed)
        pdf, cdf, icdf = (tensors[bucket_tensor_name(i, k)].astype(np.float64) for k in ("pdf", "cdf", "icdf"))
        if not (np.isfinite(pdf).all() and np.isfinite(cdf).all() and np.isfinite(icdf).all()) or (pdf < 0).any():
            raise VRCurveError(f"{bad}: bucket {i}'s density is negative or not finite; re-create it.")
        if cdf[0] != 0 or abs(cdf[-1] - 1) > 1e-4 or (np.diff(cdf) < 0).any() or (np.diff(icdf) < 0).any() \
                or icdf[0] < 0 or icdf[-1] > 1:
            raise VRCurveError(f"{bad}: bucket {i}'s cdf or inverse-CDF table does not rise from 0 to 1; re-create it.")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))
