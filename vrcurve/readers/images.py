"""Image folders (png, jpg, jpeg, webp; recursive, sorted), decoded as training code does.

Each image becomes RGB, float32 of shape (3, H, W), scaled from [0, 255] to [-1, 1] (x / 127.5 - 1); a 16-bit
grey PNG is scaled from its full range [0, 65535] and repeated on the three channels. With a
resolution R it is first center-cropped and resized to R x R the way ADM, DiT and SiT prepare ImageNet
(``center_crop_arr``: halve with a box filter while the short side is at least 2R, resize bicubically so
the short side is R, crop the center). Without a resolution images are used at their own size, which must
then be the same for all of them. Pillow is optional (``pip install 'vrcurve[images]'``) and imported only
here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from ..errors import VRCurveError
from .base import BadSample, PerFileSource


def import_pillow():
    """The PIL.Image module, or a VRCurveError that says how to install it."""
    try:
        from PIL import Image
    except ImportError:
        raise VRCurveError("reading images needs Pillow, which is not installed; run pip install 'vrcurve[images]' "
                           "(or pip install Pillow).") from None
    return Image


def center_crop_resize(img, resolution: int):
    """ADM's ``center_crop_arr``: a PIL image -> a ``resolution`` x ``resolution`` PIL image."""
    Image = import_pillow()
    while min(img.size) >= 2 * resolution:
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.BOX)
    scale = resolution / min(img.size)
    img = img.resize(tuple(max(resolution, round(s * scale)) for s in img.size), resample=Image.BICUBIC)
    left, top = (img.size[0] - resolution) // 2, (img.size[1] - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


# Pillow's modes of 16-bit grey images (PNG bit depth 16); scaled from [0, 65535] to [-1, 1].
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _errors(Image) -> tuple:
    # What a damaged or unsupported file raises while decoding: UnidentifiedImageError is an OSError,
    # a truncated stream gives OSError or SyntaxError, a huge one DecompressionBombError.
    return (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class ImageFolderSource(PerFileSource):
    """N image files in sorted order; image i is sample i, float32 (3, H, W) in [-1, 1]."""

    format = "images"
    what = "image"

    def __init__(self, name: str, files: Sequence[Path], resolution: Optional[int] = None, skip_bad: bool = False):
        self._Image = import_pillow()
        if resolution is not None and resolution < 1:
            raise VRCurveError(f"--resolution must be a positive number of pixels, got {resolution}.")
        super().__init__(name, files, skip_bad)
        self.resolution = resolution
        if resolution is not None:
            self.shape = (3, resolution, resolution)
        else:
            # The first image's size, from its header; every chosen image must match it.
            self._first, (w, h) = self._probe_first(self._size)
            self.shape = (3, h, w)

    def _size(self, path: Path) -> Tuple[int, int]:
        try:
            with self._Image.open(path) as img:
                return img.size
        except _errors(self._Image) as exc:
            raise BadSample(str(exc) or type(exc).__name__) from None

    def describe(self):
        return {**super().describe(), "resolution": self.resolution}

    def _shape_of(self, path: Path) -> Tuple[int, ...]:
        if self.resolution is not None:
            return self.shape
        w, h = self._size(path)
        return (3, h, w)

    def _decode(self, path: Path, shape: Tuple[int, ...]) -> np.ndarray:
        Image = self._Image
        try:
            with Image.open(path) as img:
                # convert() forces the full decode, inside this try. 16-bit grey PNGs open as I;16 (or I) and
                # would be clipped to 255, i.e. white, by convert("RGB"): they go through 32-bit floats.
                wide = img.mode in _SIXTEEN_BIT_MODES
                img = img.convert("F" if wide else "RGB")
        except _errors(Image) as exc:
            raise BadSample(str(exc) or type(exc).__name__) from None
        if self.resolution is not None:
            img = center_crop_resize(img, self.resolution)
        elif (3, img.size[1], img.size[0]) != shape:
            raise VRCurveError(
                f"images differ in size: {self._first} is {self.shape[2]}x{self.shape[1]} but {path} is "
                f"{img.size[0]}x{img.size[1]}; pass --resolution R to center-crop and resize all of them to R x R."
            )
        if wide:  # one grey channel of 0 .. 65535 -> three equal channels, as convert("RGB") gives 8-bit grey
            x = np.repeat(np.asarray(img, dtype=np.float32)[None], 3, axis=0)
            return x / np.float32(65535 / 2) - np.float32(1.0)
        x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)
        return x / np.float32(127.5) - np.float32(1.0)
