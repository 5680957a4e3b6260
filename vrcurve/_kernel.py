"""The fused CPU kernel of the engine (vrcurve/_fused.c), loaded by ctypes where it runs.

``fused()`` returns the loaded library, or None where it cannot be used: not built (no C compiler at
install time), built without its AVX512-BF16 code, a CPU without AVX512-BF16, or ``VRCURVE_FUSED=0`` in the
environment. ``why_not()`` says which. ``Block`` is the one argument of both of its passes: the block's
shape and every buffer with its capacity in elements, which the C side checks before it writes.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
from functools import lru_cache
from typing import Optional, Tuple

import torch  # noqa: F401  (loaded first: the library then shares PyTorch's libgomp, where it has one)

# The layout of ``Block`` and the meaning of the library's functions; setup.py passes it to the C code as
# VR_ABI_VERSION. Raise it with any change to either.
ABI_VERSION = 5

_p, _i64, _i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32

ERRORS = {
    -1: "the library was built without its AVX512-BF16 code",
    -2: "the block description has another layout than the library's (a build from another vrcurve)",
    -3: "the block's shape or strides are not what the kernel takes",
    -4: "a buffer is smaller than the block needs",
}


class Block(ctypes.Structure):
    """``vr_block`` of vrcurve/_fused.c, field for field; lengths are in elements."""

    _fields_ = [
        ("size", _i64), ("nt", _i64), ("ns", _i64), ("kk", _i64), ("M", _i64),
        ("P", _p), ("p_source", _i64), ("p_query", _i64), ("p_len", _i64),
        ("table", _p), ("table_len", _i64),
        ("ca", _p), ("ca_len", _i64),
        ("dnvec", _p), ("dnvec_len", _i64),
        ("B", _p), ("B_len", _i64),
        ("w", _p), ("w_row", _i64), ("w_rows", _i64),
        ("z", _p), ("dn", _p), ("z_len", _i64),
        ("out", _p), ("out_len", _i64),
        ("shift", _i32), ("threads", _i32),
    ]

    def __init__(self, **fields):
        fields.setdefault("size", ctypes.sizeof(Block))
        super().__init__(**fields)


def _library_path() -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(here, "_fused" + suffix)
        if os.path.exists(path):
            return path
    return None


def switched_off() -> bool:
    """``VRCURVE_FUSED=0`` (or false, no, off) in the environment."""
    return os.environ.get("VRCURVE_FUSED", "1").strip().lower() in ("0", "false", "no", "off")


@lru_cache(maxsize=None)
def _load() -> Tuple[Optional[ctypes.CDLL], str]:
    if switched_off():
        return None, "switched off by VRCURVE_FUSED=0"
    path = _library_path()
    if path is None:
        return None, "not built (no C compiler when vrcurve was installed)"
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        return None, f"cannot be loaded ({e})"
    lib.vr_version.restype = ctypes.c_int
    if lib.vr_version() != ABI_VERSION:
        return None, f"{path} is from another version of vrcurve; reinstall vrcurve"
    lib.vr_supported.restype = ctypes.c_int
    supported = lib.vr_supported()
    if supported < 0:
        return None, "built without AVX512-BF16 code (not x86-64, or a compiler older than GCC 10)"
    if supported == 0:
        return None, "this CPU has no AVX512-BF16"
    lib.vr_pack_size.restype = _i64
    lib.vr_pack_size.argtypes = [_i64]
    for name in ("vr_front", "vr_quad"):
        getattr(lib, name).restype = ctypes.c_int
        getattr(lib, name).argtypes = [ctypes.POINTER(Block)]
    return lib, "available"


def fused() -> Optional[ctypes.CDLL]:
    return _load()[0]


def why_not() -> str:
    return _load()[1]
