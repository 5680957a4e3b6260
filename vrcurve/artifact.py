"""The vrcurve artifact: one safetensors file, format version 1 (SPEC §3).

Tensors are float32; metadata values are strings (nested values JSON-encoded). The ``checksum`` entry is
the sha256 of the tensor payload (every tensor, by sorted name: name, dtype, shape and little-endian bytes),
so a file whose numbers were altered after writing is refused. Writes are atomic: a temporary file in the
same folder, fsync, then rename; an interrupted write leaves nothing at the destination.
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
FORMAT_VERSION = 1
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
            f"this vrcurve {__version__} reads version {FORMAT_VERSION}: upgrade vrcurve to read it."
        )
    if version < 1:
        raise VRCurveError(f"{path} has an invalid format_version {version}.")
    missing = [n for n in TENSORS if n not in tensors]
    if missing:
        raise VRCurveError(f"{path} lacks the tensors {', '.join(missing)}; re-create it with `vrcurve estimate`.")
    if payload_checksum(tensors) != raw_meta.get("checksum"):
        raise VRCurveError(f"{path} fails its checksum: its tensors were changed after writing; re-create it.")
    return tensors, {k: _decode(v) for k, v in raw_meta.items()}
