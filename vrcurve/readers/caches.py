"""What the readers of trainers' per-sample latent caches share: the checks that tell resolution buckets (same
channels, other height and width) from latents of different models (other channels)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ..errors import VRCurveError
from .base import PerFileSource, not_real_numeric

# <item>_<WWWW>x<HHHH>_<arch>.npz (kohya sd-scripts) or .safetensors (musubi-tuner): the item's own size padded
# to four digits; architecture names hold no underscore.
_CACHE_NAME = re.compile(r"^(?P<stem>.+)_(?P<w>\d{4,})x(?P<h>\d{4,})_(?P<arch>[A-Za-z0-9]+)\.(npz|safetensors)$")
# Text-encoder output caches (kohya: ``_te_outputs.npz``, ``_sd3_te.npz``, ``_flux_te.npz``, ...; musubi-tuner:
# ``<item>_<arch>_te.safetensors``) lie beside the latent caches and hold no latents.
_TEXT_ENCODER_NAME = re.compile(r"_te(_outputs)?\.(npz|safetensors)$")


def is_text_encoder_cache(path: Path) -> bool:
    """Whether ``path`` is named as kohya's trainers name their text-encoder output caches (no latents inside)."""
    return bool(_TEXT_ENCODER_NAME.search(path.name))


def cache_arch(path: Path) -> Optional[str]:
    """The ``<arch>`` of a ``<item>_<WWWW>x<HHHH>_<arch>.npz|.safetensors`` name, or None for any other name."""
    m = _CACHE_NAME.match(path.name)
    return m.group("arch") if m else None


def cache_stem(path: Path) -> Path:
    """The item (image) path without suffix that a cache belongs to: ``d/a_0512x0768_flux.npz`` -> ``d/a``;
    other names lose their suffix (``d/a.npz``, ``d/a.pt`` -> ``d/a``)."""
    m = _CACHE_NAME.match(path.name)
    return path.with_name(m.group("stem")) if m else path.with_suffix("")


def check_channels(name: str, named_shapes: Sequence[Tuple[str, Optional[Tuple[int, ...]]]]) -> None:
    """Refuse samples whose channel count (axis 0) or number of axes differ: latents of different VAEs (or a mix
    of image and video latents), which no resolution bucket can reconcile.

    Args:
        name: the source, for the message.
        named_shapes: (how a message names the sample, its shape or None when unknown), for each sample or for
            one sample of each shape.
    """
    known = [(n, s) for n, s in named_shapes if s is not None]
    if not known:
        return
    first_name, first = known[0]
    for other_name, shape in known[1:]:
        if len(shape) != len(first) or shape[0] != first[0]:
            raise VRCurveError(f"channel counts differ between files of {name}: {first_name} is {first} but "
                               f"{other_name} is {shape}, latents of different VAEs; pass a folder or glob that "
                               "holds the latents of one model only.")


def check_group_channels(name: str, groups: Dict[Tuple[int, ...], np.ndarray], sample_name) -> None:
    """``check_channels`` over the first sample of every group of ``Source.groups()``."""
    check_channels(name, [(sample_name(int(idx[0])), shape) for shape, idx in groups.items()])


def check_real_tensor(where: str, tensor) -> None:
    """Refuse a latent tensor (torch) of bool or complex dtype; ``where`` names it in the message."""
    import torch

    if tensor.dtype == torch.bool or tensor.is_complex():
        raise not_real_numeric(where, tensor.dtype, "latents")


def shape_mismatch(first: Path, first_shape: Tuple[int, ...], path: Path, shape: Tuple[int, ...]) -> VRCurveError:
    """The error for a chosen file whose sample has another shape than the first file's (before ``groups()``):
    another channel count is another model; another height and width is another resolution bucket."""
    if len(shape) != len(first_shape) or shape[0] != first_shape[0]:
        return VRCurveError(f"channel counts differ between files: {first} is {first_shape} but {path} is {shape}, "
                            "latents of different VAEs; pass a folder or glob that holds the latents of one model "
                            "only.")
    return VRCurveError(f"samples differ in shape: {first} is {first_shape} but {path} is {shape}; files of several "
                        "latent sizes are resolution buckets, so read one size at a time (a glob that matches one).")


class PerFileCacheSource(PerFileSource):
    """A folder of per-sample latent caches read by one key (``key``, detected from the first file when not
    given): every bucket must have the same channel count, and the artifact records the key."""

    key: Optional[str] = None

    def groups(self):
        groups = super().groups()
        check_group_channels(self.name, groups, self.sample_name)
        return groups

    def describe(self):
        return {**super().describe(), "key": self.key}
