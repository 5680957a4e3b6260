"""HDF5 files holding one dataset of shape (N, ...); only the chosen rows are read."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np

from ..errors import VRCurveError
from .base import Source, check_array_like


def _datasets(f) -> List[str]:
    import h5py

    names: List[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


class HDF5Source(Source):
    """One dataset of an HDF5 file, chosen by ``key`` or auto-detected when only one has a sample axis."""

    def __init__(self, path: Path, key: Optional[str]):
        import h5py

        try:
            self._file = h5py.File(path, "r")
        except OSError as exc:
            raise VRCurveError(f"cannot open {path} as HDF5 ({exc}); the file may be truncated or not HDF5.") from None
        names = _datasets(self._file)
        if key is None:
            candidates = [n for n in names if self._file[n].ndim >= 1 and self._file[n].shape[0] > 0
                          and np.issubdtype(self._file[n].dtype, np.number)]
            if len(candidates) != 1:
                listed = ", ".join(f"{n} {self._file[n].shape}" for n in names) or "none"
                raise VRCurveError(
                    f"{path} holds {len(candidates)} numeric datasets with a sample axis ({listed}); choose one with --key."
                )
            key = candidates[0]
        if key not in self._file or not isinstance(self._file[key], h5py.Dataset):
            raise VRCurveError(f"{path} has no dataset {key!r}; its datasets are: {', '.join(names) or 'none'}. Pass one with --key.")
        self._ds = self._file[key]
        self.name = f"{path}:{key}"
        check_array_like(self.name, self._ds.dtype, self._ds.shape)
        self.n = int(self._ds.shape[0])
        self.shape = tuple(int(s) for s in self._ds.shape[1:])

    def read(self, indices):
        idx = np.asarray(indices)
        try:
            # h5py reads an increasing index list in one selection, touching only those rows' chunks.
            return np.asarray(self._ds[idx.tolist()], dtype=np.float32)
        except OSError as exc:
            raise VRCurveError(f"cannot read rows of {self.name} ({exc}); the file may be corrupt.") from None
