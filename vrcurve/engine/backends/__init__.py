"""What runs the blocks, chosen per run (docs/performance.md, "Which kernel runs").

Backends (``vrcurve.engine.blocks.Backend``): ``pytorch`` (every device and precision) and ``fused`` (the C
kernel of vrcurve/_fused.c: bf16 products on CPUs with AVX512-BF16). Where both can run, the engine times a
few real blocks of the first chunk on each at start (one untimed block each, then interleaved rounds, best
of five, three where blocks are slow: well under a second at M = 200) and keeps the fused kernel unless PyTorch's
blocks are at least ``MARGIN`` faster: the fused kernel's quadratic forms are summed in float32 where PyTorch rounds e @ D to
bf16, so it is the closer of the two to float64, and a margin keeps the choice from flipping between runs
on a machine where the two are alike. ``VRCURVE_KERNEL=fused|pytorch`` skips the timing;
``VRCURVE_KERNEL=compiled`` runs the blocks as one ``torch.compile`` function (opt-in only: see
``compiled.py`` for what the measurements say). The choice and its
reason are returned as a ``Choice`` and end up in the artifact's metadata and the ``estimate`` table. Runs
the fused kernel is not made for (other devices, other precisions) have PyTorch alone, whatever the
variable says.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from ...errors import VRCurveError
from ..blocks import Backend, Chunk, Constants, block_sums
from ..plan import Plan
from .compiled import CompiledBackend
from .fused import FusedBackend, applies, unavailable
from .pytorch import PyTorchBackend

KERNELS = ("fused", "pytorch")  # the ones timed at start
OPT_IN = ("compiled",)  # only where VRCURVE_KERNEL names them
ENV = "VRCURVE_KERNEL"
# The fused kernel is kept unless PyTorch's blocks take at most 1 / MARGIN of its time.
MARGIN = 1.10
# Timed rounds stop after this many seconds, once three have run.
TIMING_BUDGET_S = 0.3
_BACKENDS = {"fused": FusedBackend, "pytorch": PyTorchBackend, "compiled": CompiledBackend}


@dataclass(frozen=True)
class Choice:
    """The kernel that ran the blocks (``name``, one of ``KERNELS``) and why (one line)."""

    name: str
    why: str


def requested() -> str:
    """``VRCURVE_KERNEL`` from the environment: "auto" (unset or empty), "fused", "pytorch" or "compiled"."""
    value = os.environ.get(ENV, "").strip().lower() or "auto"
    if value not in ("auto",) + KERNELS + OPT_IN:
        raise VRCurveError(f"{ENV}={os.environ[ENV]!r} is not a kernel; set it to auto, fused, pytorch or compiled, "
                           "or unset it.")
    return value


def make(name: str, c: Constants) -> Backend:
    """The backend ``name`` for blocks of ``c`` (its buffers are not allocated yet)."""
    return _BACKENDS[name](c)


def choose(c: Constants, chunk: Chunk, plan: Plan) -> Tuple[Backend, Choice]:
    """The backend for blocks of ``c``, allocated for ``plan``, and why: ``VRCURVE_KERNEL`` where set, the
    only one that can run, or the faster of the two on blocks of ``chunk`` (the run's first chunk)."""
    want = requested()
    if want in OPT_IN:
        return _allocated(want, c, plan), Choice(want, f"{ENV}={want}")
    fused_why = unavailable(c)
    if fused_why is not None and not applies(c):  # not a run the fused kernel is made for
        return _allocated("pytorch", c, plan), Choice("pytorch", f"the only kernel for this run (fused: {fused_why})")
    if want == "fused" and fused_why is not None:
        raise VRCurveError(f"{ENV}=fused, but the fused kernel cannot run here ({fused_why}); "
                           f"unset {ENV} or set it to pytorch.")
    if want != "auto":
        return _allocated(want, c, plan), Choice(want, f"{ENV}={want}")
    if fused_why is not None:
        return _allocated("pytorch", c, plan), Choice("pytorch", f"the only kernel here (fused: {fused_why})")
    backends = {name: _allocated(name, c, plan) for name in KERNELS}
    times = time_blocks(backends, chunk, plan)
    if times is None:  # every timestep collapsed: nothing to time, and nothing much to run
        return backends["fused"], Choice("fused", "no block to time (every timestep collapsed)")
    name = "pytorch" if times["pytorch"] * MARGIN <= times["fused"] else "fused"
    rows = times.pop("rows")
    why = (f"timed at start: fused {times['fused'] * 1e3:.2f} ms, pytorch {times['pytorch'] * 1e3:.2f} ms "
           f"per block of {int(rows):,} rows")
    return backends[name], Choice(name, why)


def time_blocks(backends: Dict[str, Backend], chunk: Chunk, plan: Plan, repeats: int = 5) -> Optional[Dict[str, float]]:
    """Seconds per block of each backend, best of ``repeats`` (at least three rounds; more while within
    ``TIMING_BUDGET_S``) after one untimed block, interleaved (so that a slow moment of a shared machine hits
    both), on blocks of ``chunk`` from the middle of its timesteps
    where the posterior has not collapsed; "rows" holds the block's rows. None if every timestep collapsed."""
    active = np.flatnonzero(~chunk.collapsed)
    if active.size == 0:
        return None
    T = chunk.collapsed.shape[0]
    kk = min(plan.noise, chunk.P.shape[1])
    rows = chunk.P.shape[0] * kk
    tb = plan.timesteps(rows, T)
    t0 = int(min(active[active.size // 3], T - tb))
    best = {name: float("inf") for name in backends}
    for backend in backends.values():  # untimed: first calls set up kernels and touch the buffers
        block_sums(backend, chunk, 0, kk, t0, t0 + tb)
    deadline = time.perf_counter() + TIMING_BUDGET_S
    for round_ in range(repeats):
        for name, backend in backends.items():
            started = time.perf_counter()
            block_sums(backend, chunk, 0, kk, t0, t0 + tb)
            best[name] = min(best[name], time.perf_counter() - started)
        if round_ >= 2 and time.perf_counter() > deadline:  # large blocks: three rounds are enough
            break
    return {**best, "rows": float(rows * tb)}


class Selector:
    """One choice per estimate, shared by its device threads: the first to arrive chooses (and times), the
    others take its choice."""

    def __init__(self):
        self._lock = threading.Lock()
        self.choice: Optional[Choice] = None

    def backend(self, c: Constants, chunk: Chunk, plan: Plan) -> Backend:
        with self._lock:
            if self.choice is None:
                backend, self.choice = choose(c, chunk, plan)
                return backend
        return _allocated(self.choice.name, c, plan)


def _allocated(name: str, c: Constants, plan: Plan) -> Backend:
    backend = make(name, c)
    backend.allocate(plan.buffer_rows)
    return backend
