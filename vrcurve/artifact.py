"""The vrcurve artifact: one safetensors file, format version 1 (SPEC §3).

Tensors are float32; metadata values are strings (nested values JSON-encoded). The ``checksum`` entry is
the sha256 of the tensor payload (every tensor, by sorted name: name, dtype, shape and little-endian bytes),
so a file whose numbers were altered after writing is refused. Writes are atomic: a temporary file in the
same folder, fsync, then a rename (or, when nothing may be replaced, a hard link); an interrupted or
terminated write leaves nothing at the destination.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import signal
import stat
import threading
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


def write_artifact(path: PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, Any], *,
                   overwrite: bool = True) -> Path:
    """Write ``tensors`` (cast to float32) and ``metadata`` atomically to ``path``; returns the path.

    ``format``, ``format_version``, ``vrcurve_version`` and ``checksum`` are set here. With ``overwrite``
    False an existing file at ``path`` is never replaced, not even one that appeared while writing.
    """
    from safetensors import SafetensorError
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
    try:
        with atomic_path(path, overwrite=overwrite) as tmp:
            save_file(arrays, tmp, metadata=meta)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
    except (OSError, SafetensorError) as exc:
        raise write_error(path, exc) from None
    return path


def write_error(path: Path, exc: BaseException) -> VRCurveError:
    """One sentence for a write that failed: a full disk is named as such (safetensors reports it as a
    SafetensorError whose text ends in ``os error 28``)."""
    errno_ = getattr(exc, "errno", None)
    if errno_ == errno.ENOSPC or "os error 28" in str(exc):
        return VRCurveError(f"cannot write {path}: the disk is full (No space left on device); free some space "
                            "or write to another disk with -o.")
    reason = getattr(exc, "strerror", None) or str(exc)
    return VRCurveError(f"cannot write {path}: {reason}; check the path and free space.")


def check_destination(path: Path, *, overwrite: bool) -> None:
    """Refuse an output path that cannot take a new regular file: a missing folder, an existing folder,
    device, pipe or socket (``/dev/null`` must stay a device), or an existing file without ``overwrite``."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise VRCurveError(f"cannot write {path}: folder {folder} does not exist; create it or choose another -o.")
    if path.exists() and not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise VRCurveError(f"cannot write {path}: it exists and is {kind}; give the name of a file to write with -o.")
    if path.exists() and not overwrite:
        raise VRCurveError(f"{path} already exists; pass --overwrite to replace it or choose another --out.")


@contextmanager
def atomic_path(path: Path, *, overwrite: bool = True) -> Iterator[str]:
    """A temporary file beside ``path`` for the block to write; it becomes ``path`` when the block succeeds
    and is removed when it fails, so ``path`` is either the whole new file or untouched.

    The new file gets the mode a plain ``open`` would give it (0666 less the umask), or, when it replaces a
    file, that file's mode. Without ``overwrite`` the last step is a hard link, which fails when ``path``
    appeared meanwhile (another run writing the same file), so nothing is ever replaced. SIGTERM while the
    block runs (what torchrun, Slurm and Kubernetes send) removes the temporary file as Ctrl-C does, then
    exits with status 143.
    """
    path = Path(path)
    check_destination(path, overwrite=overwrite)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    # os.open applies the umask to 0o666, as open() does; mkstemp would make it 0600 whatever the umask.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        with _sigterm_raises():
            mode = stat.S_IMODE(os.stat(path if path.is_file() else tmp).st_mode)
            yield str(tmp)
            # set after the block: a writer may create the file anew (safetensors makes it 0600)
            os.chmod(tmp, mode)
            if overwrite:
                check_destination(path, overwrite=True)  # it may have become a folder or a device meanwhile
                os.replace(tmp, path)
            else:
                _link_no_replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _link_no_replace(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path`` unless ``path`` exists (checked by the file system, not before)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise VRCurveError(f"{path} appeared while this run was writing it (another run with the same --out?); "
                           "pass --overwrite to replace it or choose another --out.") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        # A file system without hard links (some network and FAT mounts): check, then rename.
        check_destination(path, overwrite=False)
        os.replace(tmp, path)
        return
    os.unlink(tmp)


class Terminated(SystemExit):
    """SIGTERM during a write, turned into an exception so that the temporary file is removed on the way
    out; its code is 143 (128 + SIGTERM), the status a process killed by SIGTERM reports."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread can install a handler; the process default applies
        return

    def terminate(signum, frame):
        raise Terminated(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        # None: the handler was not set from Python (an embedding application); the default then applies
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


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
