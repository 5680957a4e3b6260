"""The reader interface, and the base of readers that keep one sample per file."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ..errors import VRCurveError

# Paths and member names recorded in the artifact: a few shards are worth listing, a million files are not.
MAX_LISTED_SOURCES = 32


class Source(ABC):
    """N samples of one shape, readable by index.

    Attributes:
        name: what to call the source in messages and metadata (a path, ``path:key``, or ``demo``).
        format: the reader's format name, recorded in the artifact (``npy``, ``hdf5``, ``images``, ...).
        n: number of samples N.
        shape: shape of one sample (everything after the sample axis), e.g. (C, H, W).
    """

    name: str
    format: str = "array"
    n: int
    shape: Tuple[int, ...]

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

    def sources(self) -> List[str]:
        """The files (or file:key) the samples come from, in reading order."""
        return [self.name]

    def describe(self) -> Dict[str, Any]:
        """What the artifact's ``data`` metadata records about the source."""
        srcs = self.sources()
        return {"path": self.name, "format": self.format, "sources": srcs[:MAX_LISTED_SOURCES],
                "sources_total": len(srcs), "samples_total": self.n, "shape": list(self.shape)}


def is_real_numeric(dtype: np.dtype) -> bool:
    """Integers, floats and booleans; not complex, strings, objects or records."""
    dtype = np.dtype(dtype)
    return (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)) and not np.issubdtype(
        dtype, np.complexfloating)


def check_array_like(name: str, dtype: np.dtype, shape: Tuple[int, ...]) -> None:
    """Refuse arrays that are not numeric or have no sample axis."""
    if not is_real_numeric(dtype):
        raise VRCurveError(f"{name} has dtype {dtype}, not a real numeric type; vrcurve needs float or integer samples.")
    if len(shape) < 1 or shape[0] == 0:
        raise VRCurveError(f"{name} has shape {tuple(shape)}: no samples along the first axis; it must be (N, ...).")


def natural_key(text: str) -> tuple:
    """Sort key that orders digit runs by value, so ``2.npy`` comes before ``10.npy``."""
    return tuple((0, int(part), part) if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text))


def runs(indices: np.ndarray) -> List[Tuple[int, int, int]]:
    """Split sorted, distinct ``indices`` into runs of consecutive values.

    Returns:
        (start position in ``indices``, first value, one past the last value) for each run.
    """
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [idx.size]])
    return [(int(s), int(idx[s]), int(idx[e - 1]) + 1) for s, e in zip(starts, ends)]


class BadSample(Exception):
    """Internal: one file could not be decoded (the reason is the message). Never reaches the user as is."""


class PerFileSource(Source):
    """Samples kept one per file (a folder of .npy files or of images), read only for the chosen indices.

    Subclasses implement ``_decode(path) -> float32 array`` (raising ``BadSample`` when the file cannot be
    decoded) and set ``shape`` from the first decodable file with ``_probe_first``.
    """

    files: Sequence[Path]
    skip_bad: bool = False
    what: str = "file"  # "image", "file": how messages call one sample

    def sample_name(self, index: int) -> str:
        return f"{self.files[index]} (sample {index})"

    def sources(self) -> List[str]:
        return [str(f) for f in self.files]

    def describe(self) -> Dict[str, Any]:
        # One entry per file would bloat the artifact; the folder or glob and the first file say enough.
        return {"path": self.name, "format": self.format, "sources": [self.name], "first_file": str(self.files[0]),
                "sources_total": len(self.files), "samples_total": self.n, "shape": list(self.shape)}

    @abstractmethod
    def _decode(self, path: Path) -> np.ndarray:
        """One sample as float32 of shape ``self.shape`` (raises BadSample or VRCurveError)."""

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
        for pos, i in enumerate(np.asarray(indices)):
            path = self.files[int(i)]
            try:
                rows.append(self._decode(path))
            except BadSample as exc:
                if not skip:
                    raise self._undecodable(path, str(exc)) from None
                skipped.append(pos)
        x = np.stack(rows) if rows else np.zeros((0, *self.shape), dtype=np.float32)
        return x.astype(np.float32, copy=False), skipped

    def read(self, indices):
        return self._read(indices, skip=False)[0]

    def read_good(self, indices):
        return self._read(indices, skip=self.skip_bad)
