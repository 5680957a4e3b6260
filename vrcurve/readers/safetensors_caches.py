"""Folders of per-item safetensors latent caches, as kohya's musubi-tuner writes them (``cache_latents.py``).

One file per image or video, ``<item>_<WWWW>x<HHHH>_<arch>.safetensors`` (``_hv``, ``_wan``, ``_fp``, ``_fk``,
``_qi``, ``_f2d``, ...; WWWW x HHHH is the item's own size), beside ``<item>_<arch>_te.safetensors`` (text
encoder outputs, no latents). The latent is the tensor named ``latents_<F>x<H>x<W>_<dtype>`` (or
``latents_<H>x<W>_<dtype>``), stored in the VAE's dtype (often bfloat16): (C, F, H, W) for video models,
(C, H, W) for image ones. Other entries (``latents_image_*``, ``latents_control_*``, ``latents_clean_*``,
``clip_*``, indices) are conditions, not samples. File i is sample i; only the chosen files' tensors are read
(through torch, so bfloat16 and float8 are read too), and ``groups()`` reads each file's header alone.

A folder of other safetensors files is shards of one (N, ...) tensor (vrcurve.readers.safetensors).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from ..errors import VRCurveError
from .base import BadSample, natural_key, tensor_to_float32
from .caches import PerFileCacheSource, check_real_tensor, shape_mismatch

_LATENT_KEY = re.compile(r"^latents_(\d+x)?\d+x\d+_[A-Za-z0-9]+$")


def cache_header(path: Path) -> dict:
    """{tensor name: shape} from the file's header (no tensor data read). Raises BadSample when unreadable."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return _shapes(f)
    except (SafetensorError, OSError, ValueError) as exc:
        raise BadSample(str(exc) or type(exc).__name__) from None


def _shapes(f) -> dict:
    """{tensor name: shape} of an open ``safe_open`` handle."""
    return {k: tuple(int(s) for s in f.get_slice(k).get_shape()) for k in f.keys()}


def latent_key(path: Path, header: dict, key: Optional[str]) -> Optional[str]:
    """The latent's tensor: ``key`` if given, else the one ``latents_<F>x<H>x<W>_<dtype>``; None when there is
    none. Raises VRCurveError when --key names no tensor or a file holds several latents."""
    if key is not None:
        if key not in header:
            listed = ", ".join(f"{k} {s}" for k, s in sorted(header.items(), key=lambda kv: natural_key(kv[0])))
            raise VRCurveError(f"{path} has no tensor {key!r}; its tensors are: {listed or 'none'}. Pass one with "
                               "--key.")
        return key
    found = sorted((k for k in header if _LATENT_KEY.match(k)), key=natural_key)
    if len(found) > 1:
        raise VRCurveError(f"{path} holds {len(found)} latents ({', '.join(found)}); choose one with --key.")
    return found[0] if found else None


def is_latent_cache(path: Path) -> bool:
    """Whether ``path`` holds a musubi-tuner latent (a ``latents_<F>x<H>x<W>_<dtype>`` tensor)."""
    try:
        return latent_key(path, cache_header(path), None) is not None
    except (BadSample, VRCurveError):
        return False


def single_cache_error(path: Path) -> Optional[VRCurveError]:
    """The error for one musubi-tuner cache file given as --data (it is one sample), or None."""
    try:
        header = cache_header(path)
        key = latent_key(path, header, None)
    except (BadSample, VRCurveError):
        return None
    if key is None:
        return None
    return VRCurveError(f"{path} is a latent cache of one item ({key} {header[key]}), not an (N, ...) tensor of "
                        f"samples; pass the folder that holds the caches, e.g. --data {path.parent}, to read one "
                        "sample per file.")


class SafetensorsCacheSource(PerFileCacheSource):
    """N musubi-tuner cache files in sorted order; file i is sample i, its latent tensor as float32."""

    format = "safetensors-caches"
    what = "file"

    def __init__(self, name: str, files: Sequence[Path], key: Optional[str] = None, skip_bad: bool = False):
        super().__init__(name, files, skip_bad)
        self.key = key
        self._first, self.shape = self._probe_first(self._shape_of)

    def _latent_key(self, path: Path, header: dict) -> str:
        key = latent_key(path, header, self.key)
        if key is None:  # a stray file among the caches: skipped with skip_bad, like a damaged one
            raise BadSample(f"it holds no latents_<F>x<H>x<W>_<dtype> tensor, only "
                            f"{', '.join(sorted(header, key=natural_key)) or 'none'}")
        return key

    def _shape_of(self, path: Path) -> Tuple[int, ...]:
        header = cache_header(path)
        return header[self._latent_key(path, header)]

    def _decode(self, path: Path, shape: Tuple[int, ...]) -> np.ndarray:
        from safetensors import SafetensorError, safe_open

        # One open for the header and the tensor: cache_header would open the file a second time.
        try:
            with safe_open(str(path), framework="pt") as f:
                header = _shapes(f)
                key = self._latent_key(path, header)
                if header[key] != shape:
                    raise shape_mismatch(self._first, self.shape, path, header[key])
                tensor = f.get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise BadSample(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        check_real_tensor(f"tensor {key!r} of {path}", tensor)
        return tensor_to_float32(tensor, f"tensor {key!r} of {path}")
