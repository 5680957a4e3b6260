"""A folder or glob of per-sample .npy files (one latent per file, as DiT feature extractors write)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple

import numpy as np

from ..errors import VRCurveError
from .base import BadSample, PerFileSource, check_real_numeric, sample_shape, to_float32


def _header(path: Path) -> Tuple[Tuple[int, ...], np.dtype]:
    """Shape and dtype from the .npy header alone (the data is not read)."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BadSample(str(exc) or type(exc).__name__) from None
    if not isinstance(arr, np.ndarray):  # np.load opens a zip archive whatever its name
        raise BadSample("a .npz archive (zip), not a .npy array")
    return tuple(int(s) for s in arr.shape), arr.dtype


class NpyFilesSource(PerFileSource):
    """N .npy files in sorted order; file i is sample i.

    A file of 4 or more dimensions whose first axis has length 1, such as (1, 4, 32, 32), is a batch of one
    (fast-DiT's extract_features.py writes these) and is read as (4, 32, 32), so that axis 0 of a sample is
    its channel axis for --normalize channel and --moments. Only the chosen files are opened; each must have
    the shape and a numeric dtype like the first file.
    """

    format = "npy-files"
    what = "file"

    def __init__(self, name: str, files: Sequence[Path], skip_bad: bool = False):
        super().__init__(name, files, skip_bad)
        self._first, (shape, dtype) = self._probe_first(_header)
        check_real_numeric(str(self._first), dtype)
        self.shape = sample_shape(shape)
        if 0 in self.shape:
            raise VRCurveError(f"{self._first} holds an array of shape {shape}, which has no numbers; every file must "
                               "hold one sample.")

    def _shape_of(self, path: Path) -> Tuple[int, ...]:
        return sample_shape(_header(path)[0])

    def _decode(self, path: Path, shape: Tuple[int, ...]) -> np.ndarray:
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise BadSample(str(exc) or type(exc).__name__) from None
        if not isinstance(arr, np.ndarray):
            arr.close()
            raise BadSample("a .npz archive (zip), not a .npy array")
        check_real_numeric(str(path), arr.dtype)
        if sample_shape(arr.shape) != shape:
            raise VRCurveError(f"samples differ in shape: {self._first} is {self.shape} but {path} is "
                               f"{sample_shape(arr.shape)}; every file must hold one sample of the same shape.")
        if len(arr.shape) != len(shape):
            arr = arr[0]
        return to_float32(arr, str(path))
