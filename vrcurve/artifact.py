"""The vrcurve artifact: one safetensors file (docs/integration.md, "The artifact").

Tensors are float32; metadata values are strings (nested values JSON-encoded). The ``checksum`` entry is a
sha256 that, from format version 2 on, covers the tensor payload (every tensor, by sorted name: name, dtype,
shape and little-endian bytes) and every other metadata entry (key and value), so that no byte of the file
that can change a result changes unnoticed; in version 1 files it covers the tensors only. On top of the
checksum, ``read_artifact`` validates what a crafted file could still get wrong: the tensors' dtypes, shapes
and values (finite, pdf >= 0, cdf rising from 0 to 1, icdf rising in [0, 1]) and, through ``ArtifactMeta``
(``vrcurve.meta``), the types and allowed values of the metadata, so that a bad file is refused when it is
loaded, not when it is used.

Version 2 also adds resolution buckets: an artifact estimated on data of several sample shapes holds, beside
the pooled curve in the version-1 tensors, each bucket's tensors ``bucket.<b>.<name>`` (``BUCKET_TENSORS``) and
its metadata in the list ``buckets`` (``BucketMeta``: shape, dim, samples_total, share, samples, the fit...).
Data of one shape gives no ``buckets`` entry.

Writes are atomic: a temporary file in the same folder, fsync, then a rename (or, when nothing may be
replaced, a hard link); an interrupted or terminated write leaves nothing at the destination.
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
from typing import Any, Dict, Iterator, Mapping, NamedTuple

import numpy as np

from ._version import __version__
from .errors import VRCurveError
from .meta import FORMAT, FORMAT_VERSION, ArtifactMeta, PathLike, buckets_in_version_1, stored_version

# Format versions and what their checksum covers: 1 the tensors; 2 the tensors and every other metadata entry.
_TENSORS_ONLY_CHECKSUM = 1
TENSORS = ("t", "S", "h2", "variance", "pdf", "cdf", "icdf", "ks_m", "ks", "S_stderr", "variance_stderr")
# Tensors of length T (the timestep bins); cdf has T + 1 values, icdf U + 1, ks_m and ks one per grid point.
_PER_TIMESTEP = ("t", "S", "h2", "variance", "pdf", "S_stderr", "variance_stderr")
# Round-off allowed between the float32 pdf, cdf and icdf of one density.
_DENSITY_TOL = 1e-4


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


def write_artifact(path: PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, Any], *,
                   overwrite: bool = True) -> Path:
    """Write ``tensors`` (cast to float32) and ``metadata`` atomically to ``path``; returns the path.

    ``metadata`` is an ``ArtifactMeta`` or a mapping of its decoded entries (``ArtifactMeta.coerce``), stored as
    ``ArtifactMeta.to_strings`` encodes it. ``format``, ``format_version``, ``vrcurve_version`` and ``checksum``
    are set here. With ``overwrite`` False an existing file at ``path`` is never replaced, not even one that
    appeared while writing.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    path = Path(path)
    missing = [n for n in TENSORS if n not in tensors]
    if missing:
        raise ValueError(f"artifact tensors missing: {missing}")
    arrays = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in tensors.items()}
    meta = ArtifactMeta.coerce(metadata).to_strings()
    meta.update(format=FORMAT, format_version=str(FORMAT_VERSION), vrcurve_version=__version__)
    meta.pop("checksum", None)
    meta["checksum"] = artifact_checksum(arrays, meta)
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


class Artifact(NamedTuple):
    """An artifact as ``read_artifact`` returns it; it unpacks as ``tensors, meta = read_artifact(path)``.

    Attributes:
        tensors: the tensors by name (float32 numpy arrays; ``TENSORS``, and ``bucket.<b>.<name>`` for buckets).
        meta: the metadata, typed and validated.
    """

    tensors: Dict[str, np.ndarray]
    meta: ArtifactMeta

    def bucket(self, b: int) -> "Artifact":
        """Resolution bucket ``b`` as an artifact of its own: its tensors by their plain names (``bucket_arrays``)
        and the artifact's metadata with the bucket's entries over it (``ArtifactMeta.bucket``)."""
        return Artifact(bucket_arrays(self.tensors, b), self.meta.bucket(b))


def read_artifact(path: PathLike) -> Artifact:
    """Read and verify an artifact: its tensors (float32 arrays) and its metadata (``ArtifactMeta``).

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
    version = stored_version(raw_meta, path)
    missing = [n for n in TENSORS if n not in tensors]
    if missing:
        raise VRCurveError(f"{path} lacks the tensors {', '.join(missing)}; re-create it with `vrcurve estimate`.")
    expected = (payload_checksum(tensors) if version == _TENSORS_ONLY_CHECKSUM
                else artifact_checksum(tensors, raw_meta))
    if raw_meta.get("checksum") != expected:
        covered = "tensors" if version == _TENSORS_ONLY_CHECKSUM else "tensors or metadata"
        raise VRCurveError(f"{path} fails its checksum: its {covered} were changed after writing; re-create it.")
    _check_tensors(path, tensors)
    meta = ArtifactMeta.from_strings(raw_meta, path)
    timesteps = tensors["pdf"].shape[0]
    if meta.timesteps is not None and meta.timesteps != timesteps:
        raise VRCurveError(f"{path} says timesteps={meta.timesteps} but holds {timesteps} bins; re-create it "
                           "with `vrcurve estimate`.")
    check_buckets(path, tensors, meta)
    return Artifact(tensors, meta)


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
        problem = _vector_problem(name, tensors[name])
        if problem:
            raise bad(f"tensor {name} {problem}")
    T = tensors["pdf"].shape[0]
    for name in _PER_TIMESTEP:
        if tensors[name].shape[0] != T:
            raise bad(f"tensor {name} has {tensors[name].shape[0]} values but pdf has {T}")
    if T < 1 or tensors["cdf"].shape[0] != T + 1:
        raise bad(f"cdf has {tensors['cdf'].shape[0]} values for {T} timestep bins (needs T + 1)")
    if tensors["ks_m"].shape != tensors["ks"].shape:
        raise bad(f"the KS grid has {tensors['ks_m'].shape[0]} locations but {tensors['ks'].shape[0]} distances")
    t = tensors["t"].astype(np.float64)
    if not ((t > 0) & (t < 1)).all() or (np.diff(t) <= 0).any():
        raise bad("the timesteps t are not increasing inside (0, 1)")
    problem = _density_problem(*(tensors[k] for k in ("pdf", "cdf", "icdf")))
    if problem:
        raise bad(problem)
    if (tensors["ks"] < 0).any() or (tensors["ks"] > 1).any():
        raise bad("a KS distance lies outside [0, 1]")


def _vector_problem(name: str, values: np.ndarray) -> str:
    """What is wrong with the stored tensor ``name`` (pooled or a bucket's) as a float32 vector of finite
    values, or "". A standard error over a single source is undefined (NaN); nothing else may be NaN."""
    if values.dtype != np.float32 or values.ndim != 1:
        return f"is {values.dtype} of shape {tuple(values.shape)}, not a float32 vector"
    finite = np.isfinite(values) | (np.isnan(values) if name.endswith("_stderr") else False)
    return "" if finite.all() else "holds NaN or infinite values"


def _density_problem(pdf: np.ndarray, cdf: np.ndarray, icdf: np.ndarray) -> str:
    """What is wrong with a density's finite pdf (T,), cdf (T + 1,) and inverse-CDF table, or "" (float32
    round-off allowed). ``sample()`` draws from these, so a crafted file must not get past them."""
    pdf, cdf, icdf = (np.asarray(a, dtype=np.float64) for a in (pdf, cdf, icdf))
    if icdf.shape[0] < 2:
        return "the inverse-CDF table has fewer than 2 entries"
    if (pdf < 0).any():
        return "the density pdf is negative somewhere"
    if cdf[0] != 0 or abs(cdf[-1] - 1) > _DENSITY_TOL or (np.diff(cdf) < 0).any():
        return "the cdf does not rise from 0 to 1"
    if np.abs(np.diff(cdf) - pdf / pdf.shape[0]).max() > _DENSITY_TOL:
        return "the cdf is not the integral of the pdf"
    if (np.diff(icdf) < 0).any() or icdf[0] < 0 or icdf[-1] > 1:
        return "the inverse-CDF table does not rise inside [0, 1]"
    return ""


# --- format version 2: resolution buckets -------------------------------------------------------------------

BUCKET_TENSORS = ("S", "variance", "S_stderr", "variance_stderr", "pdf", "cdf", "icdf")


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


def check_buckets(path: PathLike, tensors: Mapping[str, np.ndarray], meta: ArtifactMeta) -> None:
    """Refuse an artifact whose ``bucket.*`` tensors do not fit its ``buckets`` metadata (which
    ``ArtifactMeta.from_strings`` has checked), once ``_check_tensors`` has passed the pooled ones: for each
    bucket every tensor of ``BUCKET_TENSORS``, a float32 vector as the pooled ones are (``_vector_problem``),
    of the pooled tensor's length (the icdf table excepted), and a density; no bucket tensor without buckets
    metadata (a version-1 artifact has neither)."""
    names = [n for n in tensors if n.startswith("bucket.")]
    if meta.buckets is None:
        if names:
            raise (buckets_in_version_1(path) if meta.format_version == 1 else
                   VRCurveError(f"{path} holds bucket tensors ({names[0]}) but no buckets metadata; re-create it."))
        return
    bad = f"{path} has invalid resolution buckets"
    again = "re-create it with `vrcurve estimate`."
    for i in range(len(meta.buckets)):
        for name in BUCKET_TENSORS:
            key = bucket_tensor_name(i, name)
            if key not in tensors:
                raise VRCurveError(f"{bad}: bucket {i} lacks its tensor {key}; {again}")
            problem = _vector_problem(name, tensors[key])
            if problem:
                raise VRCurveError(f"{bad}: {key} {problem}; {again}")
            if name != "icdf" and tensors[key].shape != tensors[name].shape:
                raise VRCurveError(f"{bad}: {key} has shape {tuple(tensors[key].shape)}, not that of the pooled "
                                   f"{name}; {again}")
        problem = _density_problem(*(tensors[bucket_tensor_name(i, k)] for k in ("pdf", "cdf", "icdf")))
        if problem:
            raise VRCurveError(f"{bad}: bucket {i}: {problem}; {again}")
    extra = sorted(set(names) - {bucket_tensor_name(i, n) for i in range(len(meta.buckets)) for n in BUCKET_TENSORS})
    if extra:
        raise VRCurveError(f"{bad}: the tensor {extra[0]} belongs to no bucket; {again}")
