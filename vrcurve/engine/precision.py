"""The precision of the engine's heavy products, and the process-wide float32 product mode it pins.

The products e @ D (or the quadratic forms e^T D e) can run in bfloat16 (CPUs with native bf16 dot
products) or TF32 (CUDA); logits, their exponentials, row sums and everything after stay in the working
dtype, and the sums over queries in float64. tests/test_engine_precision.py shows the density unchanged.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from functools import lru_cache
from typing import Optional

import torch

from ..errors import VRCurveError
from ..options import Precision, choice


def resolve_precision(precision: str = "auto", device="cpu", dtype: torch.dtype = torch.float32) -> str:
    """The precision the heavy products w @ D run in: "float64", "float32", "bf16" or "tf32".

    ``auto`` keeps float64 runs in float64 and otherwise picks the fastest precision that
    tests/test_engine_precision.py shows to leave the density unchanged: bf16 on CPUs with native bf16 dot
    products (AVX512-BF16 or AMX), TF32 on CUDA devices of compute capability 8.0 or newer, else float32.
    Logits, exponentials, row sums and everything after them stay in ``dtype`` whatever the choice.
    """
    precision = choice("--precision", precision, Precision, "precision")
    if dtype not in (torch.float32, torch.float64):
        raise VRCurveError(f"the working dtype must be float32 or float64, got {dtype}; "
                           "choose reduced-precision products with precision='bf16' or 'tf32'.")
    device = torch.device(device)
    if dtype == torch.float64:
        if precision in ("bf16", "tf32"):
            raise VRCurveError(f"precision {precision!r} applies to float32 runs; pass dtype float32 or "
                               "precision 'auto' for a float64 run.")
        return "float64"
    if precision == "tf32" and device.type != "cuda":
        raise VRCurveError("precision 'tf32' is a CUDA tensor-core format; on this device use 'bf16' or 'float32'.")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "tf32" if torch.cuda.get_device_capability(device)[0] >= 8 else "float32"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "float32"


def product_dtype(precision: str) -> torch.dtype:
    """The dtype the heavy products' operands are stored in (TF32 is float32 storage)."""
    return {"float64": torch.float64, "bf16": torch.bfloat16}.get(precision, torch.float32)


def work_dtype(precision: str) -> torch.dtype:
    """The dtype of the logits, weights and row sums: float64 for a float64 run, else float32."""
    return torch.float64 if precision == "float64" else torch.float32


@lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """True where bf16 matrix products run on bf16 dot-product instructions (about 2.5x float32 here)."""
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except (OSError, RuntimeError, AttributeError):
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


class MatmulModes:
    """The float32 matrix-product precision of one device type, shared by the threads of this process.

    It is process-wide state, and the device threads of one estimate want different modes at once (TF32
    blocks on one GPU while another projects in IEEE). A mode is held while a section runs: sections of the
    same mode run concurrently, a different mode waits until none is held (and, once it waits, holds off new
    sections of the held mode). The caller's own setting is restored whenever no section is running.
    """

    def __init__(self, device_type: str):
        self.device_type = device_type
        self.cond = threading.Condition()
        self.mode: Optional[str] = None
        self.holders = 0
        self.waiting = {"ieee": 0, "tf32": 0}
        self.saved = None

    @contextmanager
    def hold(self, mode: str):
        with self.cond:
            self.waiting[mode] += 1
            self.cond.wait_for(lambda: self.holders == 0 or (
                self.mode == mode and not any(n for m, n in self.waiting.items() if m != mode)))
            self.waiting[mode] -= 1
            if self.holders == 0:
                self.saved = _set_matmul_mode(self.device_type, mode)
                self.mode = mode
            self.holders += 1
        try:
            yield
        finally:
            with self.cond:
                self.holders -= 1
                if self.holders == 0:
                    _set_matmul_mode(self.device_type, self.saved)
                    self.mode = None
                self.cond.notify_all()


_MODES = {"cpu": MatmulModes("cpu"), "cuda": MatmulModes("cuda")}


def _set_matmul_mode(device_type: str, mode):
    """Set the float32 matrix-product mode of ``device_type`` ("ieee", "tf32", or a value this returned
    before) and return the previous one."""
    m = getattr(getattr(torch.backends, "cuda" if device_type == "cuda" else "mkldnn", None), "matmul", None)
    if m is not None and hasattr(m, "fp32_precision"):
        old, m.fp32_precision = m.fp32_precision, mode
        return old
    if device_type == "cuda":  # torch < 2.9
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = mode if isinstance(mode, bool) else mode == "tf32"
        return old
    return None


@contextmanager
def matmul_precision(device, mode: str):
    """float32 matrix products on ``device`` in ``mode`` ("ieee" or "tf32") inside the block, whatever a
    caller set globally (torch.set_float32_matmul_precision would otherwise let them run in TF32 or bf16).
    Not re-entrant with a different mode in the same thread."""
    modes = _MODES.get(torch.device(device).type)
    if modes is None:
        yield
        return
    with modes.hold(mode):
        yield
