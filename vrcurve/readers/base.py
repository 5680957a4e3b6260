"""The reader interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Tuple

import numpy as np

from ..errors import VRCurveError


class Source(ABC):
    """N samples of one shape, readable by index.

    Attributes:
        name: what to call the source in messages and metadata (a path, or ``demo``).
        n: number of samples N.
        shape: shape of one sample (everything after the sample axis).
    """

    name: str
    n: int
    shape: Tuple[int, ...]

    @abstractmethod
    def read(self, indices: np.ndarray) -> np.ndarray:
        """The samples at ``indices`` (sorted, distinct), as float32 of shape (len(indices), *shape)."""

    def describe(self) -> dict:
        return {"path": self.name, "samples_total": self.n, "shape": list(self.shape)}


def check_array_like(name: str, dtype: np.dtype, shape: Tuple[int, ...]) -> None:
    """Refuse arrays that are not numeric or have no sample axis."""
    if not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)) or np.issubdtype(dtype, np.complexfloating):
        raise VRCurveError(f"{name} has dtype {dtype}, not a real numeric type; vrcurve needs float or integer samples.")
    if len(shape) < 1 or shape[0] == 0:
        raise VRCurveError(f"{name} has shape {tuple(shape)}: no samples along the first axis; it must be (N, ...).")
