"""NumPy files: .npy (memory-mapped, only the chosen rows are read) and .npz (one array by key)."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import VRCurveError
from .base import Source, check_array_like


class NpySource(Source):
    """A .npy file of shape (N, ...), memory-mapped."""

    def __init__(self, path: Path):
        self.name = str(path)
        try:
            self._arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise VRCurveError(f"cannot read {path} as a .npy array ({exc}); the file may be truncated or corrupt.") from None
        check_array_like(self.name, self._arr.dtype, self._arr.shape)
        self.n = int(self._arr.shape[0])
        self.shape = tuple(int(s) for s in self._arr.shape[1:])

    def read(self, indices):
        return np.asarray(self._arr[np.asarray(indices)], dtype=np.float32)


class NpzSource(Source):
    """One array of a .npz archive; ``key`` may be omitted when the archive holds exactly one array.

    Members of a .npz are read whole when first touched (NumPy cannot memory-map inside a zip archive).
    """

    def __init__(self, path: Path, key: Optional[str]):
        try:
            archive = np.load(path, allow_pickle=False)
            keys = list(archive.files)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise VRCurveError(f"cannot read {path} as a .npz archive ({exc}); the file may be truncated or corrupt.") from None
        if key is None:
            if len(keys) != 1:
                raise VRCurveError(
                    f"{path} holds {len(keys)} arrays ({', '.join(keys) or 'none'}); choose one with --key."
                )
            key = keys[0]
        if key not in keys:
            raise VRCurveError(f"{path} has no array {key!r}; its arrays are: {', '.join(keys)}. Pass one with --key.")
        self.name = f"{path}:{key}"
        try:
            self._arr = archive[key]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise VRCurveError(f"cannot read array {key!r} of {path} ({exc}); the file may be corrupt.") from None
        check_array_like(self.name, self._arr.dtype, self._arr.shape)
        self.n = int(self._arr.shape[0])
        self.shape = tuple(int(s) for s in self._arr.shape[1:])

    def read(self, indices):
        return np.asarray(self._arr[np.asarray(indices)], dtype=np.float32)
