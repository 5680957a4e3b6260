"""HDF5 files: one dataset of shape (N, ...), or one small dataset per sample.

Two layouts, told apart by ``--key`` or detected when only one reading is possible:

- stacked: a dataset of shape (N, ...), ``--key latents``. Only the chosen rows are read, chunk by chunk.
- per sample: a group whose members are the samples, in sorted name order (digit runs by value), either
  datasets (``--key 'latents/*'``, or ``--key latents`` naming the group) or groups that each hold one
  dataset of the same name (``--key '*/latent'``: sample i is ``<member i>/latent``), as some latent caches
  write. Only the chosen members are read.

Detection looks for numeric datasets whose samples hold more than one number (a (N,) labels array is not
taken for samples) and for groups of at least ``PER_SAMPLE_MIN`` members that look alike; with exactly one
such candidate it is used, otherwise the error lists them all as values for --key.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ..errors import VRCurveError
from ..indices import runs
from .base import Source, check_array_like, check_real_numeric, is_real_numeric, natural_key, to_float32

# A group is read as one sample per member only with at least this many look-alike members; two or three
# same-shaped datasets side by side (latents, latents_flipped) are more likely alternatives than samples.
PER_SAMPLE_MIN = 9

# Row spans read in one piece from one chunk are capped, so that a dataset with huge chunks cannot make
# a read of a few rows allocate a whole chunk's worth of floats.
_MAX_SPAN_BYTES = 64 << 20


def _open_file(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise VRCurveError(f"cannot open {path} as HDF5 ({exc}); the file may be truncated or not HDF5.") from None


def _is_sample(ds, stacked: bool) -> bool:
    """Could ``ds`` hold samples: numeric, and one sample more than one number (so not labels or ids)?"""
    if ds.shape is None or not is_real_numeric(ds.dtype):  # shape None: an empty (null) dataspace
        return False
    if stacked and (len(ds.shape) < 1 or ds.shape[0] == 0):
        return False
    shape = ds.shape[1:] if stacked else ds.shape
    return len(shape) >= 1 and int(np.prod(shape)) > 1


def _probe(names: List[str]) -> List[str]:
    """A few members (first three and last) used to judge whether a group's members look alike.

    Looking at all of them would cost a metadata read per sample; a member that differs is still caught,
    naming it, when it is chosen and read.
    """
    return list(dict.fromkeys(names[:3] + names[-1:]))


def find_candidates(f) -> List[Tuple[str, str]]:
    """Keys that could name the samples, each with a description for messages.

    Stacked datasets (N, ...) give their path; groups of look-alike members give ``G/*`` (member datasets)
    or ``G/*/name`` (member groups that each hold a dataset ``name``).
    """
    import h5py

    found: List[Tuple[str, str]] = []

    def walk(group, prefix: str) -> None:
        names = sorted(group.keys(), key=natural_key)
        if len(names) >= PER_SAMPLE_MIN:
            probe = [group.get(n) for n in _probe(names)]
            if all(isinstance(o, h5py.Dataset) for o in probe):
                if len({(o.shape, o.dtype) for o in probe}) == 1 and _is_sample(probe[0], stacked=False):
                    found.append((prefix + "*", f"{len(names)} samples of shape {probe[0].shape}"))
                    return
            elif all(isinstance(o, h5py.Group) for o in probe):
                inner = [n for n, o in probe[0].items() if isinstance(o, h5py.Dataset) and _is_sample(o, stacked=False)]
                common = [n for n in inner if all(isinstance(o.get(n), h5py.Dataset) for o in probe[1:])]
                if common:
                    found.extend((f"{prefix}*/{n}", f"{len(names)} samples of shape {probe[0][n].shape}") for n in common)
                    return
        for n in names:
            obj = group.get(n)
            if isinstance(obj, h5py.Dataset):
                if _is_sample(obj, stacked=True):
                    found.append((prefix + n, f"shape {obj.shape}"))
            elif isinstance(obj, h5py.Group):
                walk(obj, prefix + n + "/")

    walk(f, "")
    return found


def open_hdf5(path: Path, key: Optional[str]) -> Source:
    """The source that ``key`` names in the HDF5 file ``path``, or the only candidate when ``key`` is None.

    Raises:
        VRCurveError: the file cannot be opened; the key does not exist; no key was given and there is not
            exactly one candidate (the message lists them).
    """
    import h5py

    f = _open_file(path)
    if key is None:
        candidates = find_candidates(f)
        if len(candidates) != 1:
            listed = "; ".join(f"'{k}': {desc}" for k, desc in candidates)
            raise VRCurveError(f"{path} holds {len(candidates)} datasets that could be the samples "
                               f"({listed or 'none of at least 2 numbers per sample'}); choose one with --key.")
        key = candidates[0][0]
    key = key.strip("/") if key not in ("", "/") else ""
    if "*" in key:
        parts = key.split("/")
        star = parts.index("*") if parts.count("*") == 1 else -1
        if star < 0 or star < len(parts) - 2:
            raise VRCurveError(f"--key {key!r}: a per-sample key has one '*' standing for the sample, last or "
                               "next to last ('latents/*' or '*/latent').")
        group_path = "/".join(parts[:star])
        inner = parts[star + 1] if star == len(parts) - 2 else None
        return HDF5SamplesSource(path, f, group_path, inner)
    obj = f.get(key) if key else f
    if isinstance(obj, h5py.Dataset):
        return HDF5Source(path, f, key)
    if isinstance(obj, h5py.Group):
        return HDF5SamplesSource(path, f, key, None)
    listed = ", ".join(f"'{k}'" for k, _ in find_candidates(f)) or "none"
    raise VRCurveError(f"{path} has no dataset or group {key!r}; the candidates are: {listed}. Pass one with --key.")


class HDF5Source(Source):
    """Dataset ``key`` of shape (N, ...)."""

    format = "hdf5"

    def __init__(self, path: Path, f, key: str):
        self._file = f
        self._ds = f[key]
        self.key = key
        self.name = f"{path}:{key}"
        check_array_like(self.name, self._ds.dtype, self._ds.shape)
        self.n = int(self._ds.shape[0])
        self.shape = tuple(int(s) for s in self._ds.shape[1:])

    def describe(self):
        return {**super().describe(), "key": self.key, "layout": "stacked"}

    def sample_name(self, index: int) -> str:
        return f"row {index} of {self.name}"

    def read(self, indices):
        """The chosen rows, reading each chunk that holds any of them once (rows in one chunk in one span)."""

        idx = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(idx), *self.shape), dtype=np.float32)
        rows_per_chunk = self._ds.chunks[0] if self._ds.chunks else 1
        row_bytes = max(1, int(np.prod(self.shape, dtype=np.int64)) * self._ds.dtype.itemsize)
        try:
            # Indices grouped by the chunk (or, unchunked, the row) they fall in.
            block = idx // rows_per_chunk
            bounds = np.flatnonzero(np.diff(block)) + 1
            for group in np.split(np.arange(len(idx)), bounds):
                rows = idx[group]
                lo, hi = int(rows[0]), int(rows[-1]) + 1
                if len(rows) > 1 and (hi - lo) * row_bytes <= _MAX_SPAN_BYTES:
                    out[group] = to_float32(self._ds[lo:hi][rows - lo], self.name)
                else:
                    for start, a, b in runs(rows):
                        out[group[start:start + b - a]] = to_float32(self._ds[a:b], self.name)
        except OSError as exc:
            raise VRCurveError(f"cannot read rows of {self.name} ({exc}); the file may be corrupt.") from None
        return out


class HDF5SamplesSource(Source):
    """One sample per member of a group: member datasets, or dataset ``inner`` of each member group."""

    format = "hdf5"

    def __init__(self, path: Path, f, group_path: str, inner: Optional[str]):
        import h5py

        self._file = f
        self.path = path
        group = f.get(group_path) if group_path else f
        shown = group_path or "/"
        if not isinstance(group, h5py.Group):
            raise VRCurveError(f"{path} has no group {shown!r}; pass a dataset or group that exists with --key.")
        self._group = group
        self._inner = inner
        self.key = (group_path + "/" if group_path else "") + "*" + (f"/{inner}" if inner else "")
        self.name = f"{path}:{self.key}"
        self._members = sorted(group.keys(), key=natural_key)
        self.n = len(self._members)
        if self.n == 0:
            raise VRCurveError(f"group {shown!r} of {path} is empty; it has no samples.")
        first = self._dataset(0)
        if first.shape is None:
            raise VRCurveError(f"{self.sample_name(0)} is an empty dataset (HDF5 null dataspace) with no shape; "
                               "check the key.")
        self._first_shape = tuple(int(s) for s in first.shape)
        if 0 in self._first_shape:
            raise VRCurveError(f"{self.sample_name(0)} has shape {self._first_shape}, which holds no numbers; check "
                               "the key.")
        self._check_dtype(0, first)
        self.shape = self._first_shape

    def describe(self):
        return {**super().describe(), "key": self.key, "layout": "per-sample"}

    def _member_path(self, index: int) -> str:
        base = (self._group.name.rstrip("/") + "/" + self._members[index]).lstrip("/")
        return base + (f"/{self._inner}" if self._inner else "")

    def sample_name(self, index: int) -> str:
        return f"{self.path}:{self._member_path(index)} (sample {index})"

    def _dataset(self, index: int):
        import h5py

        obj = self._group.get(self._members[index])
        if self._inner is not None:
            obj = obj.get(self._inner) if isinstance(obj, h5py.Group) else None
        if not isinstance(obj, h5py.Dataset):
            raise VRCurveError(f"{self.path} has no dataset {self._member_path(index)!r}, so sample {index} of "
                               f"--key {self.key!r} is missing; check the key.")
        return obj

    def _check_dtype(self, index: int, ds) -> None:
        check_real_numeric(self.sample_name(index), ds.dtype)

    def read(self, indices):
        out = np.empty((len(indices), *self.shape), dtype=np.float32)
        for pos, i in enumerate(np.asarray(indices)):
            ds = self._dataset(int(i))
            self._check_dtype(int(i), ds)
            if ds.shape is None or tuple(ds.shape) != self._first_shape:
                raise VRCurveError(f"samples differ in shape: {self._member_path(0)} is {self._first_shape} but "
                                   f"{self._member_path(int(i))} is {ds.shape} in {self.path}; every sample must "
                                   "have the same shape.")
            try:
                out[pos] = to_float32(ds[()], self.sample_name(int(i)))
            except OSError as exc:
                raise VRCurveError(f"cannot read {self.sample_name(int(i))} ({exc}); the file may be corrupt.") from None
        return out
