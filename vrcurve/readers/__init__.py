"""Data readers: one small interface, a reader per input format (SPEC §5).

A reader knows how many samples a source holds and their shape, and reads only the rows it is asked for.
``open_source`` resolves PATH (a file, a folder or a glob) and picks the reader. Optional or heavy
libraries (h5py, Pillow) are imported by the reader that needs them, never by ``import vrcurve``.
"""

from __future__ import annotations

from typing import Optional

from ..errors import VRCurveError
from .base import Source
from .discover import discover

# Formats whose files hold several named arrays, so that --key means something.
_KEYED = ("npz", "hdf5", "safetensors")


def open_source(path: str, *, key: Optional[str] = None, resolution: Optional[int] = None,
                skip_bad: bool = False) -> Source:
    """Open PATH as a Source.

    Args:
        path: ``demo``; a .npy, .npz, HDF5 or safetensors file; a folder or glob of safetensors shards,
            of per-sample .npy files, or of images (png, jpg, jpeg, webp; folders are searched recursively).
            One .npy file is an (N, ...) array; two or more are one sample each.
        key: the array (.npz), dataset or per-sample pattern (HDF5) or tensor (safetensors) to read;
            detected when unambiguous.
        resolution: image folders only: center-crop and resize every image to this square size.
        skip_bad: per-file sources (images, .npy files): leave out chosen files that cannot be decoded
            (``load_samples`` draws others and counts them) instead of stopping.

    Raises:
        VRCurveError: the path is missing or holds no data files, the format is not supported, the key is
            unknown or ambiguous, an option does not apply to the format, or a file cannot be opened.
    """
    if path == "demo":
        fmt, files, single = "demo", (), True
    else:
        found = discover(path)
        fmt, files, single = found.fmt, found.files, found.single
    if key is not None and fmt not in _KEYED:
        kind = "a folder of per-sample .npy files" if fmt == "npy" and len(files) > 1 else f"{fmt} data"
        raise VRCurveError(f"--key {key!r} was given, but {path} is {kind}, which has no keys; drop --key.")
    if resolution is not None and fmt != "images":
        raise VRCurveError(f"--resolution applies to image folders, but {path} is {fmt} data; drop --resolution.")
    if fmt == "demo":
        from .demo import DemoSource

        return DemoSource()
    if fmt == "npy":
        if len(files) > 1:
            from .npy_files import NpyFilesSource

            return NpyFilesSource(path, files, skip_bad=skip_bad)
        from .arrays import NpySource

        return NpySource(files[0])
    if fmt == "npz":
        from .arrays import NpzSource

        return NpzSource(files[0], key)
    if fmt == "hdf5":
        from .hdf5 import open_hdf5

        return open_hdf5(files[0], key)
    if fmt == "safetensors":
        from .safetensors import SafetensorsSource

        return SafetensorsSource(str(files[0]) if single else path, files, key)
    from .images import ImageFolderSource

    return ImageFolderSource(path, files, resolution=resolution, skip_bad=skip_bad)


__all__ = ["Source", "open_source"]
