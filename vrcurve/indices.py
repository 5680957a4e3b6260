"""Index helpers shared by the readers and the engine (numpy only, so that a reader needs no torch)."""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np


def runs(indices: Sequence[int]) -> List[Tuple[int, int, int]]:
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
