"""Data readers: one small interface, a reader per input format (docs/data.md, "Formats").

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
_KEYED = ("npz", "hdf5", "safetensors", "pt")


def open_source(path: str, *, key: Optional[str] = None, resolution: Optional[int] = None,
                skip_bad: bool = False) -> Source:
    """Open PATH as a Source.

    Args:
        path: ``demo``; a .npy, .npz, HDF5 or safetensors file; a folder or glob of safetensors shards,
            of per-sample .npy files, of per-sample latent caches (kohya .npz, musubi-tuner .safetensors, .pt),
            or of images (png, jpg, jpeg, webp; folders are searched recursively). One .npy file is an (N, ...)
            array; two or more are one sample each. Images beside their latent caches: the caches are read
            (``Source.notes`` says so).
        key: the array (.npz), dataset or per-sample pattern (HDF5), tensor (safetensors) or dict entry (.pt)
            to read; detected when unambiguous.
        resolution: image folders only: center-crop and resize every image to this square size.
        skip_bad: per-file sources (images, .npy files, latent caches): leave out files that cannot be decoded
            (``load_samples`` draws others and counts them) instead of stopping.

    Raises:
        VRCurveError: the path is missing or holds no data files, the format is not supported, the key is
            unknown or ambiguous, an option does not apply to the format, or a file cannot be opened.
    """
    notes: tuple = ()
    if path == "demo":
        fmt, files, single = "demo", (), True
    else:
        found = discover(path)
        fmt, files, single, notes = found.fmt, found.files, found.single, found.notes
    source = _open(path, fmt, files, single, key, resolution, skip_bad)
    source.notes = notes
    return source


def _open(path: str, fmt: str, files, single: bool, key: Optional[str], resolution: Optional[int],
          skip_bad: bool) -> Source:
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
        from .npz_caches import NpzCacheSource, is_latent_cache, single_cache_error

        if single:
            error = single_cache_error(files[0])
            if error is not None:
                raise error
        elif len(files) > 1 or is_latent_cache(files[0]):
            return NpzCacheSource(path, files, key, skip_bad=skip_bad)
        from .arrays import NpzSource

        return NpzSource(files[0], key)
    if fmt == "pt":
        if single:
            raise VRCurveError(f"{path} is one .pt file, and vrcurve reads .pt latent caches as one sample per file; "
                               "pass the folder that holds them, or save an (N, ...) array as .npy or safetensors.")
        from .pt_files import PtFilesSource

        return PtFilesSource(path, files, key, skip_bad=skip_bad)
    if fmt == "hdf5":
        from .hdf5 import open_hdf5

        return open_hdf5(files[0], key)
    if fmt == "safetensors":
        from . import safetensors_caches as caches

        if single:
            error = caches.single_cache_error(files[0])
            if error is not None:
                raise error
        elif caches.is_latent_cache(files[0]):
            return caches.SafetensorsCacheSource(path, files, key, skip_bad=skip_bad)
        from .safetensors import SafetensorsSource

        return SafetensorsSource(str(files[0]) if single else path, files, key)
    from .images import ImageFolderSource

    return ImageFolderSource(path, files, resolution=resolution, skip_bad=skip_bad)


__all__ = ["Source", "open_source"]
