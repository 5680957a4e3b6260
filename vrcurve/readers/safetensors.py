"""safetensors files: one tensor of shape (N, ...) in one file, or split along axis 0 over several shards.

Shards are concatenated in sorted path order (digit runs compared by value). Only the chosen rows are read,
as ``safe_open(...).get_slice(key)[lo:hi]`` over runs of consecutive rows. Tensors go through torch so that
bfloat16 and float8 latents are read too.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import VRCurveError
from ..indices import runs
from .base import Source, natural_key, tensor_to_float32


def _open(path: Path):
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as exc:
        raise VRCurveError(f"cannot read {path} as safetensors ({exc}); the file may be truncated or corrupt.") from None


def _header(path: Path) -> dict:
    """{tensor name: (shape, dtype string)} from the file's header; no tensor data is read."""
    with _open(path) as f:
        return {k: (tuple(int(s) for s in f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}


def choose_key(where: str, tensors: dict, key: Optional[str]) -> str:
    """The tensor to read: ``key``, or the only one with a sample axis and at least one more axis.

    A (N,) tensor (labels, ids) is not taken for samples unless it is the only tensor or named by --key.
    """
    listed = ", ".join(f"{k} {tuple(s)}" for k, (s, _) in sorted(tensors.items(), key=lambda kv: natural_key(kv[0])))
    if key is not None:
        if key not in tensors:
            raise VRCurveError(f"{where} has no tensor {key!r}; its tensors are: {listed or 'none'}. Pass one with --key.")
        return key
    candidates = [k for k, (s, _) in tensors.items() if len(s) >= 2 and s[0] > 0]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates and len(tensors) == 1:
        return next(iter(tensors))
    raise VRCurveError(f"{where} holds {len(candidates) or len(tensors)} tensors that could be the samples "
                       f"({listed or 'none'}); choose one with --key.")


class SafetensorsSource(Source):
    """Tensor ``key`` of one or more safetensors files, concatenated along axis 0."""

    format = "safetensors"

    def __init__(self, name: str, files: Sequence[Path], key: Optional[str]):
        self.files = list(files)
        first = _header(self.files[0])
        self.key = choose_key(str(self.files[0]), first, key)
        shapes: List[Tuple[int, ...]] = []
        for path in self.files:
            tensors = first if path == self.files[0] else _header(path)
            if self.key not in tensors:
                raise VRCurveError(f"shard {path} has no tensor {self.key!r} (the first shard {self.files[0]} has); "
                                   "every shard must hold the same tensor.")
            shape, dtype = tensors[self.key]
            # complex (C64, C128) would lose its imaginary part in the cast to float32 with only a warning
            if dtype == "BOOL" or dtype.startswith("C") or len(shape) < 1 or 0 in shape[1:]:
                raise VRCurveError(f"tensor {self.key!r} of {path} is {dtype} of shape {shape}; vrcurve needs real "
                                   "numeric samples (not bool or complex) stacked along the first axis, (N, ...).")
            if shapes and shape[1:] != shapes[0][1:]:
                raise VRCurveError(f"shards differ in sample shape: {self.files[0]} holds {self.key!r} of shape "
                                   f"{shapes[0]} but {path} holds {shape}; all shards must stack the same samples.")
            shapes.append(shape)
        self.name = f"{name}:{self.key}"
        self.shape = shapes[0][1:]
        self._offsets = np.concatenate([[0], np.cumsum([s[0] for s in shapes])]).astype(np.int64)
        self.n = int(self._offsets[-1])
        if self.n == 0:
            raise VRCurveError(f"tensor {self.key!r} of {name} has no samples along the first axis; it must be (N, ...).")

    def sources(self) -> List[str]:
        return [str(f) for f in self.files]

    def describe(self):
        return {**super().describe(), "key": self.key}

    def _locate(self, index: int) -> Tuple[int, int]:
        shard = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return shard, index - int(self._offsets[shard])

    def sample_name(self, index: int) -> str:
        shard, row = self._locate(index)
        return f"row {row} of {self.files[shard]}:{self.key} (sample {index})"

    def read(self, indices):

        idx = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(idx), *self.shape), dtype=np.float32)
        shard_of = np.searchsorted(self._offsets, idx, side="right") - 1
        for shard in np.unique(shard_of):
            pos = np.flatnonzero(shard_of == shard)
            local = idx[pos] - self._offsets[shard]
            path = self.files[int(shard)]
            with _open(path) as f:
                sl = f.get_slice(self.key)
                for start, lo, hi in runs(local):
                    try:
                        rows = sl[lo:hi]
                    except Exception as exc:  # the Rust reader raises its own error types on a damaged file
                        raise VRCurveError(f"cannot read rows {lo}..{hi - 1} of {path}:{self.key} ({exc}); the file "
                                           "may be truncated or corrupt.") from None
                    out[pos[start:start + hi - lo]] = tensor_to_float32(rows, f"{path}:{self.key}")
        return out
