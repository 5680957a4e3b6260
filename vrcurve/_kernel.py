"""The fused CPU kernel of the engine (vrcurve/_fused.c), loaded by ctypes where it runs.

``fused()`` returns the loaded library, or None where it cannot be used: not built (no C compiler at
install time), built without its AVX512-BF16 code, a CPU without AVX512-BF16, or ``VRCURVE_FUSED=0`` in the
environment. The engine then runs the same work as PyTorch operations. ``why_not()`` says which.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
from functools import lru_cache
from typing import Optional, Tuple

import torch  # noqa: F401  (loaded first: the library then shares PyTorch's libgomp, where it has one)

_VERSION = 4
_p, _i64, _int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


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
    lib.vr_version.restype = _int
    if lib.vr_version() != _VERSION:
        return None, f"{path} is from another version of vrcurve; reinstall vrcurve"
    lib.vr_supported.restype = _int
    supported = lib.vr_supported()
    if supported < 0:
        return None, "built without AVX512-BF16 code (not x86-64, or a compiler older than GCC 10)"
    if supported == 0:
        return None, "this CPU has no AVX512-BF16"
    lib.vr_pack_size.restype = _i64
    lib.vr_pack_size.argtypes = [_i64]
    lib.vr_front.restype = _int
    lib.vr_front.argtypes = [_p, _i64, _i64, _p, _p, _i64, _i64, _i64, _i64, _int, _p, _i64, _p, _p, _p, _int]
    lib.vr_quad.restype = _int
    lib.vr_quad.argtypes = [_p, _i64, _p, _p, _p, _i64, _i64, _i64, _i64, _p, _int]
    return lib, "available"


def fused() -> Optional[ctypes.CDLL]:
    return _load()[0]


def why_not() -> str:
    return _load()[1]
