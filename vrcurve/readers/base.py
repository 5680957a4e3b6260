"""The reader interface, and the base of readers that keep one sample per file."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..buckets import shape_text
from ..errors import VRCurveError

# Paths and member names recorded in the artifact: a few shards are worth listing, a million files are not.
MAX_LISTED_SOURCES = 32
# Bytes of float32 samples read per call where the progress is counted (``Source.read_batch``).
READ_BATCH_BYTES = 64 << 20


class Source(ABC):
    """N samples of one shape, readable by index.

    Attributes:
        name: what to call the source in messages and metadata (a path, ``path:key``, or ``demo``).
        format: the reader's format name, recorded in the artifact (``npy``, ``hdf5``, ``images``, ...).
        n: number of samples N.
        shape: shape of one sample (everything after the sample axis), e.g. (C, H, W).
        notes: what the user should know about how PATH was read (e.g. the latent caches in a folder were read
            rather than the images beside them), one sentence each; the CLI prints them on stderr.
        read_phase, read_unit: how the progress of reading it is reported (``vrcurve.progress``): ``reading``
            samples, files or images, or ``encoding`` images through a VAE.
    """

    name: str
    format: str = "array"
    n: int
    shape: Tuple[int, ...]
    notes: Tuple[str, ...] = ()
    read_phase: str = "reading"
    read_unit: str = "samples"

    @property
    def read_batch(self) -> int:
        """How many samples ``vrcurve.samples`` asks ``read_good`` for at a time, counting each part read: rows
        of 64 MiB of float32 in all (a part, not a row, so that a large array is read in few calls)."""
        return max(1, READ_BATCH_BYTES // (4 * int(np.prod(self.shape, dtype=np.int64))))

    @abstractmethod
    def read(self, indices: np.ndarray) -> np.ndarray:
        """The samples at ``indices`` (sorted, distinct), as float32 of shape (len(indices), *shape).

        Raises:
            VRCurveError: a chosen sample cannot be read, or does not match the others.
        """

    def read_good(self, indices: np.ndarray) -> Tuple[np.ndarray, List[int]]:
        """Like ``read``, but a source opened with ``skip_bad`` leaves out samples it cannot decode.

        Returns:
            (rows of the samples that were read, float32 (len(indices) - len(skipped), *shape);
             positions in ``indices`` of the skipped samples). Only per-file sources ever skip.
        """
        return self.read(indices), []

    def sample_name(self, index: int) -> str:
        """How a message names sample ``index`` (a file for per-file sources, a row otherwise)."""
        return f"sample {index} of {self.name}"

    def groups(self) -> Dict[Tuple[int, ...], np.ndarray]:
        """The samples grouped by shape (resolution buckets): {sample shape: sorted int64 indices}, the largest
        group first (ties: the smaller shape first). A source whose samples share one shape has one group;
        only per-file sources can hold several shapes."""
        return {self.shape: np.arange(self.n, dtype=np.int64)}

    def subset(self, indices: np.ndarray) -> "Subset":
        """The samples at ``indices`` (sorted, distinct, of one shape, as ``groups`` gives them) as a Source."""
        return Subset(self, indices)

    def sources(self) -> List[str]:
        """The files (or file:key) the samples come from, in reading order."""
        return [self.name]

    def describe(self) -> Dict[str, Any]:
        """What the artifact's ``data`` metadata records about the source."""
        srcs = self.sources()
        return {"path": self.name, "format": self.format, "sources": srcs[:MAX_LISTED_SOURCES],
                "sources_total": len(srcs), "samples_total": self.n, "shape": list(self.shape)}


def is_real_numeric(dtype: np.dtype) -> bool:
    """Integers, floats and booleans; not complex, strings, objects, records, dates or durations
    (NumPy counts timedelta64 as an integer type)."""
    dtype = np.dtype(dtype)
    return (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)) and not np.issubdtype(
        dtype, np.complexfloating) and dtype.kind not in "mM"


def not_real_numeric(where: str, dtype: Any, what: str = "samples") -> VRCurveError:
    """The error for ``where`` holding ``dtype`` (a NumPy or torch dtype), which is not a real numeric type."""
    return VRCurveError(f"{where} has dtype {dtype}, not a real numeric type; vrcurve needs float or integer {what}.")


def check_real_numeric(where: str, dtype: np.dtype, what: str = "samples") -> None:
    """Refuse a NumPy dtype that ``is_real_numeric`` refuses; ``what`` (samples, latents) ends the message."""
    if not is_real_numeric(dtype):
        raise not_real_numeric(where, dtype, what)


def check_array_like(name: str, dtype: np.dtype, shape: Optional[Tuple[int, ...]]) -> None:
    """Refuse arrays that are not numeric, have no sample axis, or whose samples hold no numbers.

    ``shape`` None is an HDF5 null dataspace (a dataset that holds nothing, not even a shape).
    """
    check_real_numeric(name, dtype)
    if shape is None:
        raise VRCurveError(f"{name} is an empty dataset (HDF5 null dataspace) with no shape; it must be (N, ...).")
    if len(shape) < 1 or shape[0] == 0:
        raise VRCurveError(f"{name} has shape {tuple(shape)}: no samples along the first axis; it must be (N, ...).")
    if 0 in shape[1:]:
        raise VRCurveError(f"{name} has shape {tuple(shape)}: its samples hold no numbers (an axis of length 0); "
                           "check that this is the array of samples.")


# The largest finite float32: float64 data beyond it would become Inf when cast.
_F32_MAX = float(np.finfo(np.float32).max)


def to_float32(values: Any, where: str) -> np.ndarray:
    """``values`` as float32, refusing finite values that float32 cannot hold (they would become Inf).

    Args:
        values: an array of any real numeric dtype (a NumPy array or a memory-mapped slice).
        where: the array or file, for the message.
    """
    arr = np.asarray(values)
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4 and arr.size:
        with np.errstate(invalid="ignore"):
            big = np.abs(arr[np.isfinite(arr)]).max(initial=0.0)
        if big > _F32_MAX:
            raise VRCurveError(f"{where} holds {arr.dtype} values beyond the float32 range (|x| up to {big:.3g}, "
                               f"float32 ends at {_F32_MAX:.3g}); rescale the data before estimating.")
    return arr.astype(np.float32, copy=False)


def tensor_to_float32(tensor: Any, where: str) -> np.ndarray:
    """A CPU torch tensor of a real dtype as a float32 NumPy array; float64 goes through ``to_float32``, so that
    values float32 cannot hold are named rather than left to become Inf. Other dtypes (bfloat16, float8, ...)
    NumPy cannot hold are cast by torch."""
    import torch  # only readers of torch files call this; vrcurve.readers loads no torch

    if tensor.dtype == torch.float64:
        return to_float32(tensor.numpy(), where)
    return tensor.to(torch.float32).numpy()


def natural_key(text: str) -> tuple:
    """Sort key that orders digit runs by value, so ``2.npy`` comes before ``10.npy``."""
    return tuple((0, int(part), part) if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text))


class Subset(Source):
    """The samples of ``parent`` at ``indices``, which share one shape: one resolution bucket as a Source.

    Sample i of the subset is sample ``indices[i]`` of the parent; messages name the parent's samples.
    """

    def __init__(self, parent: Source, indices: np.ndarray):
        self.parent = parent
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.size == 0 or np.any(np.diff(self.indices) <= 0):
            raise ValueError("a subset needs sorted, distinct indices")
        self.format = parent.format
        self.n = int(self.indices.size)
        shapes = [shape for shape, idx in parent.groups().items() if np.isin(self.indices, idx).all()]
        if not shapes:
            raise ValueError("a subset's samples must share one shape")
        self.shape = shapes[0]
        self.name = f"{parent.name} [{shape_text(self.shape)}]"

    @property
    def read_phase(self) -> str:
        return self.parent.read_phase

    @property
    def read_unit(self) -> str:
        return self.parent.read_unit

    @property
    def read_batch(self) -> int:
        return self.parent.read_batch

    def read(self, indices):
        return self.parent.read(self.indices[np.asarray(indices, dtype=np.int64)])

    def read_good(self, indices):
        return self.parent.read_good(self.indices[np.asarray(indices, dtype=np.int64)])

    def sample_name(self, index: int) -> str:
        return self.parent.sample_name(int(self.indices[index]))

    def sources(self) -> List[str]:
        return self.parent.sources()

    def describe(self) -> Dict[str, Any]:
        return {**self.parent.describe(), "shape": list(self.shape), "bucket_samples_total": self.n}


def sample_shape(file_shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """The shape of the one sample a per-sample file holds: an array of 4 or more dimensions whose first axis
    has length 1, such as (1, 4, 32, 32), is a batch of one and loses that axis, so that axis 0 of a sample is
    its channel axis."""
    return tuple(file_shape[1:]) if len(file_shape) >= 4 and file_shape[0] == 1 else tuple(file_shape)


class BadSample(Exception):
    """Internal: one file could not be decoded (the reason is the message). Never reaches the user as is."""


class PerFileSource(Source):
    """Samples kept one per file (a folder of .npy files or of images), read only for the chosen indices.

    Subclasses implement ``_decode(path) -> float32 array`` (raising ``BadSample`` when the file cannot be
    decoded), set ``shape`` from the first decodable file with ``_probe_first``, and, so that files of several
    shapes form resolution buckets, ``_shape_of(path)``: the shape of the file's sample from its header alone.

    Until ``groups()`` is called every chosen file must have the first file's shape (``_decode`` checks it
    against ``shape``); after it, each file is checked against the shape its header gave (``_expected``).
    """

    files: Sequence[Path]
    skip_bad: bool = False
    what: str = "file"  # "image", "file": how messages call one sample
    read_batch = 1  # decoding a file takes far longer than a call: each file read is counted
    _file_shapes: Optional[List[Optional[Tuple[int, ...]]]] = None  # per file, after groups(); None: unreadable

    def __init__(self, name: str, files: Sequence[Path], skip_bad: bool = False):
        self.name = name
        self.files = list(files)
        self.skip_bad = skip_bad
        self.n = len(self.files)

    @property
    def read_unit(self) -> str:
        return f"{self.what}s"

    def _shape_of(self, path: Path) -> Tuple[int, ...]:
        """The shape of the sample in ``path`` from its header alone (raises BadSample when unreadable)."""
        raise NotImplementedError(f"{type(self).__name__} cannot tell a file's shape from its header")

    def _expected(self, index: int) -> Tuple[int, ...]:
        """The shape sample ``index`` must have: its header's after ``groups()``, else the first file's."""
        if self._file_shapes is not None and self._file_shapes[index] is not None:
            return self._file_shapes[index]
        return self.shape

    def groups(self) -> Dict[Tuple[int, ...], np.ndarray]:
        """Reads every file's header once (not its data). Unreadable headers stop it, or, with ``skip_bad``,
        leave the file out of every group."""
        if self._file_shapes is None:
            shapes: List[Optional[Tuple[int, ...]]] = []
            for path in self.files:
                try:
                    shapes.append(tuple(int(s) for s in self._shape_of(path)))
                except BadSample as exc:
                    if not self.skip_bad:
                        raise self._undecodable(path, str(exc)) from None
                    shapes.append(None)
            self._file_shapes = shapes
        by_shape: Dict[Tuple[int, ...], List[int]] = {}
        for i, shape in enumerate(self._file_shapes):
            if shape is not None:
                by_shape.setdefault(shape, []).append(i)
        order = sorted(by_shape, key=lambda s: (-len(by_shape[s]), int(np.prod(s)), s))
        return {s: np.asarray(by_shape[s], dtype=np.int64) for s in order}

    def sample_name(self, index: int) -> str:
        return f"{self.files[index]} (sample {index})"

    def sources(self) -> List[str]:
        return [str(f) for f in self.files]

    def describe(self) -> Dict[str, Any]:
        # One entry per file would bloat the artifact; the folder or glob and the first file say enough.
        return {"path": self.name, "format": self.format, "sources": [self.name], "first_file": str(self.files[0]),
                "sources_total": len(self.files), "samples_total": self.n, "shape": list(self.shape)}

    @abstractmethod
    def _decode(self, path: Path, shape: Tuple[int, ...]) -> np.ndarray:
        """One sample as float32 of shape ``shape`` (raises BadSample, or VRCurveError when it has another shape)."""

    def _undecodable(self, path: Path, reason: str) -> VRCurveError:
        return VRCurveError(f"cannot decode {self.what} {path} ({reason}); fix or remove it, or pass --skip-bad "
                            f"to skip undecodable {self.what}s.")

    def _probe_first(self, probe) -> Tuple[Path, Any]:
        """``probe(path)`` on the first file that it succeeds on (only the first one unless ``skip_bad``)."""
        for path in self.files:
            try:
                return path, probe(path)
            except BadSample as exc:
                if not self.skip_bad:
                    raise self._undecodable(path, str(exc)) from None
        raise VRCurveError(f"none of the {len(self.files)} {self.what}s of {self.name} can be decoded; "
                           "check that the files are complete.")

    def _read(self, indices: np.ndarray, skip: bool) -> Tuple[np.ndarray, List[int]]:
        rows, skipped = [], []
        indices = np.asarray(indices)
        expected = self._expected(int(indices[0])) if indices.size else self.shape
        for pos, i in enumerate(indices):
            path = self.files[int(i)]
            try:
                row = self._decode(path, self._expected(int(i)))
            except BadSample as exc:
                if not skip:
                    raise self._undecodable(path, str(exc)) from None
                skipped.append(pos)
                continue
            if row.shape != expected:
                raise VRCurveError(f"samples differ in shape: {path} holds {row.shape}, not {expected} like the "
                                   "samples read with it; if the file changed while vrcurve ran, run it again.")
            rows.append(row)
        x = np.stack(rows) if rows else np.zeros((0, *expected), dtype=np.float32)
        return x.astype(np.float32, copy=False), skipped

    def read(self, indices):
        return self._read(indices, skip=False)[0]

    def read_good(self, indices):
        return self._read(indices, skip=self.skip_bad)
