"""Folders of per-sample .pt latent caches (SimpleTuner, OneTrainer and many custom trainers).

Each file holds one latent written by ``torch.save``: a bare tensor (SimpleTuner's VAE cache, (C, H, W) or
(C, F, H, W), in the VAE's dtype, often bfloat16; gzip-compressed with its ``compress_cache`` option) or a
dict whose latent sits beside other entries (OneTrainer's ``{'latent_image', 'original_resolution',
'crop_offset'}``, or ``{'latents', ...}``). Files are loaded with ``torch.load(map_location="cpu",
weights_only=True)`` only, memory-mapped where the file allows it, so loading runs no code from the file; a
file that needs pickle is refused.

In a dict the latent is the entry ``--key`` names, else the first of ``latents``, ``latent``,
``latent_image``, ``sample``, ``mean`` present, else the only tensor with two or more axes. The first file
fixes the entry; every file must hold it.
"""

from __future__ import annotations

import gzip
import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from ..errors import VRCurveError
from .base import BadSample, natural_key, sample_shape, tensor_to_float32
from .caches import PerFileCacheSource, check_real_tensor, shape_mismatch

LATENT_NAMES = ("latents", "latent", "latent_image", "sample", "mean")
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"


def load_pt(path: Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, memory-mapped for zip-format files and
    decompressed first for gzip files.

    Raises:
        VRCurveError: the file needs pickle (an object other than tensors, containers and plain values).
        BadSample: the file cannot be read (truncated, corrupt, not a torch file).
    """
    import torch

    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
            if magic[:2] == _GZIP_MAGIC:
                return torch.load(io.BytesIO(gzip.decompress(magic + fh.read())),
                                  map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=magic == _ZIP_MAGIC)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise BadSample(_first_line(exc)) from None
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"it calls {found.group(1)}" if found else "it holds objects other than tensors and plain values"
        raise VRCurveError(f"{path} needs pickle to load ({what}); vrcurve loads .pt files only with "
                           "torch.load(weights_only=True), which runs no code from the file, so save the latents "
                           "as tensors or dicts of tensors.") from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile, gzip.BadGzipFile) as exc:
        raise BadSample(_first_line(exc)) from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def find_latent(path: Path, obj: Any, key: Optional[str]) -> Tuple[Optional[str], Any]:
    """(the dict entry used, or None for a bare tensor; the latent tensor) of a loaded .pt file.

    Raises:
        VRCurveError: --key names no tensor of the dict, or the latent cannot be told apart from the other
            tensors, or the file holds neither a tensor nor a dict of tensors.
    """
    import torch

    if isinstance(obj, torch.Tensor):
        if key is not None:
            raise VRCurveError(f"--key {key!r} was given, but {path} holds a single tensor {tuple(obj.shape)}, not a "
                               "dict; drop --key.")
        return None, obj
    if not isinstance(obj, dict):
        raise VRCurveError(f"{path} holds a {type(obj).__name__}, not a tensor or a dict of tensors; vrcurve reads "
                           "one latent per .pt file.")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    listed = ", ".join(f"{k} {tuple(v.shape)}" for k, v in sorted(tensors.items(), key=lambda kv: natural_key(kv[0])))
    if key is not None:
        if key not in tensors:
            raise VRCurveError(f"{path} has no tensor {key!r}; its tensors are: {listed or 'none'}. Pass one with "
                               "--key.")
        return key, tensors[key]
    for name in LATENT_NAMES:
        if name in tensors:
            return name, tensors[name]
    candidates = [k for k, v in tensors.items() if v.dim() >= 2]
    if len(candidates) == 1:
        return candidates[0], tensors[candidates[0]]
    raise VRCurveError(f"{path} holds {len(candidates)} tensors that could be the latent ({listed or 'none'}); "
                       "choose one with --key.")


class PtFilesSource(PerFileCacheSource):
    """N .pt files in sorted order (digit runs by value: ``2.pt`` before ``10.pt``); file i is sample i.

    A latent of 4 or more axes whose first axis has length 1 is a batch of one and loses that axis, as for
    per-sample .npy files, so that axis 0 of a sample is its channel axis.
    """

    format = "pt-files"
    what = "file"

    def __init__(self, name: str, files: Sequence[Path], key: Optional[str] = None, skip_bad: bool = False):
        super().__init__(name, files, skip_bad)
        self.key = key
        self._first, (self.key, self.shape) = self._probe_first(self._probe)

    def _probe(self, path: Path) -> Tuple[Optional[str], Tuple[int, ...]]:
        key, tensor = find_latent(path, load_pt(path), self.key)
        return key, self._checked_shape(path, tensor)

    def _latent(self, path: Path):
        obj = load_pt(path)
        if self.key is None:
            key, tensor = find_latent(path, obj, None)
            if key is not None:
                raise VRCurveError(f"{path} holds a dict but {self._first} a single tensor; every file must hold its "
                                   "latent the same way.")
            return tensor
        if not isinstance(obj, dict) or self.key not in obj:
            held = "a single tensor" if not isinstance(obj, dict) else "no entry " + repr(self.key)
            raise VRCurveError(f"{path} holds {held}, but {self._first} holds its latent as {self.key!r}; every file "
                               "must hold its latent the same way.")
        return find_latent(path, obj, self.key)[1]

    @staticmethod
    def _checked_shape(path: Path, tensor) -> Tuple[int, ...]:
        check_real_tensor(f"the latent of {path}", tensor)
        shape = sample_shape(tuple(int(s) for s in tensor.shape))
        if not shape:
            raise VRCurveError(f"the latent of {path} is a scalar; name the tensor that holds the latent with --key.")
        return shape

    def _shape_of(self, path: Path) -> Tuple[int, ...]:
        return self._checked_shape(path, self._latent(path))

    def _decode(self, path: Path, shape: Tuple[int, ...]) -> np.ndarray:

        tensor = self._latent(path)
        own = self._checked_shape(path, tensor)
        if own != shape:
            raise shape_mismatch(self._first, self.shape, path, own)
        try:
            return tensor_to_float32(tensor.reshape(shape), str(path))
        except RuntimeError as exc:  # a memory-mapped file cut short shows up when its data is touched
            raise BadSample(_first_line(exc)) from None
