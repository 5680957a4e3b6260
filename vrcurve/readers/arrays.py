"""NumPy files holding all samples in one array: .npy (memory-mapped) and .npz (one array by key).

Only the chosen rows are read: a .npy is memory-mapped, and so is a .npz member stored uncompressed (what
``np.savez`` writes); a compressed member (``np.savez_compressed``) has to be inflated whole.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import VRCurveError
from .base import Source, check_array_like, natural_key, to_float32


class NpySource(Source):
    """A .npy file of shape (N, ...), memory-mapped."""

    format = "npy"

    def __init__(self, path: Path):
        self.name = str(path)
        try:
            self._arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise VRCurveError(f"cannot read {path} as a .npy array ({exc}); the file may be truncated or corrupt.") from None
        if not isinstance(self._arr, np.ndarray):  # np.load opens a zip archive whatever its name
            raise VRCurveError(f"{path} is a .npz archive (zip), not a .npy array; rename it to .npz.")
        check_array_like(self.name, self._arr.dtype, self._arr.shape)
        self.n = int(self._arr.shape[0])
        self.shape = tuple(int(s) for s in self._arr.shape[1:])

    def read(self, indices):
        return to_float32(self._arr[np.asarray(indices)], self.name)


def _stored_member_memmap(path: Path, member: str) -> Optional[np.ndarray]:
    """Memory-map ``member`` of a zip archive when it is stored uncompressed; None when it cannot be.

    A stored member's bytes lie in the archive as they are: its local header (30 bytes, then the name and
    the extra field, whose lengths are in that header) is followed by the .npy file itself.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:  # compressed or encrypted
            return None
        with open(path, "rb") as fh:
            fh.seek(info.header_offset)
            local = fh.read(30)
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                return None
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            fh.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                return None
            offset = fh.tell()
        if dtype.hasobject or len(shape) == 0 or 0 in shape:
            return None
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, struct.error):
        return None


class NpzSource(Source):
    """One array of a .npz archive; ``key`` may be omitted when the archive holds exactly one array."""

    format = "npz"

    def __init__(self, path: Path, key: Optional[str]):
        try:
            archive = np.load(path, allow_pickle=False)
            keys = sorted(archive.files, key=natural_key)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise VRCurveError(f"cannot read {path} as a .npz archive ({exc}); the file may be truncated or corrupt.") from None
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise VRCurveError(f"{path} is not a .npz archive (it holds a single array); rename it to .npy.")
        if key is None:
            if len(keys) != 1:
                raise VRCurveError(
                    f"{path} holds {len(keys)} arrays ({', '.join(keys) or 'none'}); choose one with --key."
                )
            key = keys[0]
        if key not in keys:
            raise VRCurveError(f"{path} has no array {key!r}; its arrays are: {', '.join(keys) or 'none'}. Pass one with --key.")
        self.name = f"{path}:{key}"
        arr = _stored_member_memmap(path, key + ".npy")
        if arr is None:
            try:
                arr = archive[key]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                raise VRCurveError(f"cannot read array {key!r} of {path} ({exc}); the file may be corrupt.") from None
        self._arr = arr
        check_array_like(self.name, self._arr.dtype, self._arr.shape)
        self.n = int(self._arr.shape[0])
        self.shape = tuple(int(s) for s in self._arr.shape[1:])

    def read(self, indices):
        return to_float32(self._arr[np.asarray(indices)], self.name)
