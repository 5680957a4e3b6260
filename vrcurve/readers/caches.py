"""What the readers of trainers' per-sample latent caches share: the checks that tell resolution buckets (same
channels, other height and width) from latents of different models (other channels)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ..errors import VRCurveError


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


def shape_mismatch(first: Path, first_shape: Tuple[int, ...], path: Path, shape: Tuple[int, ...]) -> VRCurveError:
    """The error for a chosen file whose sample has another shape than the first file's (before ``groups()``):
    another channel count is another model; another height and width is another resolution bucket."""
    if len(shape) != len(first_shape) or shape[0] != first_shape[0]:
        return VRCurveError(f"channel counts differ between files: {first} is {first_shape} but {path} is {shape}, "
                            "latents of different VAEs; pass a folder or glob that holds the latents of one model only.")
    return VRCurveError(f"samples differ in shape: {first} is {first_shape} but {path} is {shape}; files of several "
                        "latent sizes are resolution buckets, so read one size at a time (a glob that matches one).")
