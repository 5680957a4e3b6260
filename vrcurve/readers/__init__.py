"""Data readers: one small interface, a reader per input format (SPEC §5).

A reader knows how many samples a source holds and their shape, and reads only the rows it is asked for.
``open_source`` picks the reader from the path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import VRCurveError
from .base import Source

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


def open_source(path: str, *, key: Optional[str] = None) -> Source:
    """Open ``path`` (a .npy, .npz or HDF5 file, or ``demo``) as a Source.

    Raises:
        VRCurveError: the path is missing, its format is not supported, or the key is unknown or ambiguous.
    """
    if path == "demo":
        from .demo import DemoSource

        return DemoSource()
    p = Path(path)
    if not p.exists():
        raise VRCurveError(f"data path {path} does not exist; check --data (or use --data demo).")
    if p.is_dir():
        raise VRCurveError(f"data path {path} is a folder; vrcurve reads .npy, .npz and HDF5 files, so pass a file.")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        from .arrays import NpySource

        return NpySource(p)
    if suffix == ".npz":
        from .arrays import NpzSource

        return NpzSource(p, key)
    if suffix in HDF5_SUFFIXES:
        from .hdf5 import HDF5Source

        return HDF5Source(p, key)
    raise VRCurveError(
        f"cannot read {path}: unsupported file type {suffix or '(none)'}; vrcurve reads .npy, .npz and "
        f"{', '.join(HDF5_SUFFIXES)} files."
    )


__all__ = ["Source", "open_source"]
