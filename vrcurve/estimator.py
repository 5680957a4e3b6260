"""Monte Carlo estimate of the per-timestep variance curve, in the Gram form (docs/estimator.md).

Time convention: t = 0 is pure noise, t = 1 is data. For M data samples x_1..x_M in R^d and K noises per
sample, the Q = M K queries are q = x_i + s_t eps_q (s_t = m_t / a_t). The posterior over the samples is

    w_j(q) ∝ exp(-||q - x_j||^2 / (2 s_t^2 tau))        tau = d ("mean") or 1 ("sum")

and, with G = X X^T, n_j = G_jj, D_ij = n_i + n_j - 2 G_ij and P_qj = <eps_q, x_j>,

    logits_qj = (2 s_t (P_qj - P_qi) - D_ij) / (2 s_t^2 tau)     (up to terms constant in j; 0 at j = i)
    tr Cov(x1|q) = (1/2) w^T D w,   E[||x1||^2 | q] = w^T n,   ||E[x1|q]||^2 = w^T n - tr Cov(x1|q).

tr Cov is computed in the pairwise form: every term is non-negative, so it keeps its relative accuracy
where the posterior collapses onto one sample. Each row of P is N(0, G), and the engine draws it as such
(``vrcurve.engine.noise``): after G, O(M^2 d) once, nothing depends on d. Per timestep the work is
O(Q M^2), cut into blocks that one of the engine's backends runs (``vrcurve.engine.backends``: the fused C
kernel or PyTorch operations, the faster on this machine, timed at start). Measurements:
docs/performance.md.

This module is the engine's public face: ``estimate`` and its ``Curve``; the parts live in
``vrcurve.engine``.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Optional, Sequence

import numpy as np
import torch

from .devices import DeviceSpec, resolve_devices
from .engine.backends import Choice
from .engine.backends import requested as requested_kernel
from .engine.blocks import gram
from .engine.noise import DRAW_THREADS, source_noise, source_seed
from .engine.plan import free_memory, share
from .engine.precision import resolve_precision, work_dtype
from .engine.run import Job, device_sums
from .errors import VRCurveError
from .options import CurveOptions
from .progress import Counter, Reporter
from .schedulers import Scheduler

if TYPE_CHECKING:
    from .distributed import Ranks

__all__ = ["Curve", "CurveOptions", "estimate", "estimate_curve", "timestep_grid", "gram", "source_noise", "source_seed",
           "share", "resolve_precision"]


@dataclass(frozen=True)
class Curve:
    """The estimated curve on the timestep grid; every array has shape (T,) and dtype float64.

    Attributes:
        t: bin midpoints (k + 0.5) / T, t = 0 noise.
        S: separation (1/d) E ||E[x1 | x_t]||^2.
        trcov: (1/d) E tr Cov(x1 | x_t).
        h2: h_t^2.
        variance: V(t) = h_t^2 trcov ("covariance" form) or h_t^2 (1 - S) ("paper" form).
        S_stderr, variance_stderr: standard errors over the M sources (queries of one source are correlated).
        precision: the precision the heavy products ran in ("float64", "float32", "bf16" or "tf32").
        kernel: what ran the blocks: "fused" (the C kernel of vrcurve/_fused.c) or "pytorch" ("none" in a
            process of a distributed run that had no sources of its own).
        kernel_choice: why that kernel (one line: timed at start, VRCURVE_KERNEL, or the only one).
        noise_space: "span" (noise drawn in the span of the samples) or "ambient" (in R^d).
        per_source_S, per_source_trcov: (T, M) the averages over each source's K queries (for the bootstrap).
    """

    t: np.ndarray
    S: np.ndarray
    trcov: np.ndarray
    h2: np.ndarray
    variance: np.ndarray
    S_stderr: np.ndarray
    variance_stderr: np.ndarray
    samples: int
    noise: int
    dim: int
    likelihood: str
    form: str
    precision: str = "float32"
    kernel: str = "pytorch"
    kernel_choice: str = ""
    noise_space: str = "span"
    per_source_S: Optional[np.ndarray] = None
    per_source_trcov: Optional[np.ndarray] = None


def timestep_grid(timesteps: int) -> np.ndarray:
    """Bin midpoints t_k = (k + 0.5) / T, k = 0..T-1 (docs/estimator.md, "From the curve to the artifact"), float64, shape (T,)."""
    return (np.arange(timesteps, dtype=np.float64) + 0.5) / timesteps


def estimate(
    x: torch.Tensor,
    scheduler: Scheduler,
    *,
    noise: int = 500,
    timesteps: int = 1000,
    seed: int = 0,
    likelihood: str = "mean",
    form: str = "covariance",
    chunk_size: Optional[int] = None,
    device: DeviceSpec = "cpu",
    dtype: torch.dtype = torch.float32,
    source_ids: Optional[Sequence[int]] = None,
    progress: Optional[Reporter] = None,
    precision: str = "float32",
    ranks: Optional["Ranks"] = None,
    noise_space: str = "span",
) -> Curve:
    """Estimate S_t, tr Cov and V(t) on the T-point grid (docs/estimator.md).

    Args:
        x: the M chosen (already normalised) samples, shape (M, ...) — flattened to (M, d).
        scheduler: the path's a_t, m_t.
        noise: K, noises per sample.
        timesteps: T, grid size.
        seed: the noise draw of query (source i, k) depends on (seed, source_ids[i], k) only.
        source_ids: an identity per sample (the pipeline passes its index in the dataset), so that the
            result does not depend on the order of the rows of x; default 0..M-1.
        likelihood: "mean" (tau = d) or "sum" (tau = 1, the exact posterior of the empirical distribution).
        form: "covariance" (V = h^2 tr Cov / d) or "paper" (V = h^2 (1 - S)).
        chunk_size: queries per chunk (per device); by default chosen from the memory of each device.
        device: where the products run: one device, or a sequence of devices of one type (or a string
            "cuda:0,cuda:1"; "cuda" alone is every GPU), over which the sources are split and computed
            concurrently (``vrcurve.devices.resolve_devices``).
        dtype: working precision, float32 or float64 (accumulation over queries is float64 always).
        progress: a reporter (``vrcurve.progress``), told of the ``estimating`` phase at 0 before the Gram
            matrix and after each work block: ``done`` is the timesteps' worth of this process's work
            finished (fractional while a chunk of queries is in flight), ``total`` = T.
        precision: of the heavy products w @ D: "float32" (products in ``dtype``), "bf16", "tf32" (CUDA)
            or "auto" (see ``resolve_precision``; the command line's default).
        ranks: the processes of a distributed run (``vrcurve.distributed.Ranks``); this process then
            computes only its share of the sources, and every rank gets the whole curve.
        noise_space: "span" (default: each query's projections drawn as N(0, G) in the r <= min(M, d)
            coordinates of the samples' span, nothing per source depends on d) or "ambient" (noise in R^d,
            O(K M d) per source: the direct reference's draw, ``source_noise(seed, id, K, d)``). The two
            give the same curve in distribution, not the same draw.

    The sources are split into contiguous blocks (over ranks, then over this rank's devices); the noise of
    a source depends on (seed, source id) only, so the result is the same, to round-off, whatever the split.
    The kernel that runs the blocks is chosen per run (``vrcurve.engine.backends``) and named in the result.
    """
    options = CurveOptions(scheduler, noise=noise, timesteps=timesteps, seed=seed, likelihood=likelihood, form=form,
                           precision=precision, chunk_size=chunk_size, noise_space=noise_space)
    return estimate_curve(x, options, device=device, dtype=dtype, source_ids=source_ids, progress=progress,
                          ranks=ranks)


def estimate_curve(
    x: torch.Tensor,
    options: CurveOptions,
    *,
    device: DeviceSpec = "cpu",
    dtype: torch.dtype = torch.float32,
    source_ids: Optional[Sequence[int]] = None,
    progress: Optional[Reporter] = None,
    ranks: Optional["Ranks"] = None,
) -> Curve:
    """``estimate`` with its settings in one checked ``CurveOptions`` (what the pipeline passes); the other
    arguments are ``estimate``'s."""
    scheduler, noise, timesteps = options.scheduler, options.noise, options.timesteps
    x = x.reshape(x.shape[0], -1)
    M, d = x.shape
    if M < 2:
        raise VRCurveError(f"the estimate needs at least 2 samples, got {M}; pass --samples 2 or more.")
    devices = resolve_devices(device)
    check_memory(M, d, noise, timesteps, devices, noise_space=options.noise_space)
    prec = resolve_precision(options.precision, devices[0], dtype)
    requested_kernel()  # a VRCURVE_KERNEL that names no kernel fails here, before any work
    t = timestep_grid(timesteps)
    tt = torch.from_numpy(t)
    a, m = scheduler.alpha(tt), scheduler.sigma(tt)
    if not (torch.isfinite(a).all() and torch.isfinite(m).all() and (a > 0).all() and (m > 0).all()):
        bad = int(torch.nonzero(~(torch.isfinite(a) & torch.isfinite(m) & (a > 0) & (m > 0)))[0])
        raise VRCurveError(
            f"scheduler {scheduler.describe()} gives a_t={float(a[bad])}, m_t={float(m[bad])} at t={t[bad]:.6g}; "
            "both must be positive and finite inside (0, 1)."
        )
    s = (m / a).numpy()
    h2 = scheduler.h(tt).numpy() ** 2
    tau = float(d) if options.likelihood == "mean" else 1.0
    ids = np.arange(M) if source_ids is None else np.asarray(source_ids, dtype=np.int64)
    if ids.shape != (M,):
        raise ValueError(f"source_ids must have shape ({M},), got {ids.shape}")

    lo, hi = (0, M) if ranks is None else share(M, ranks.rank, ranks.world_size)
    job = Job(x=x, s=s, tau=tau, precision=prec, options=options, ids=ids, work=work_dtype(prec),
              progress=Counter(progress, "estimating", timesteps, "timesteps", per=(hi - lo) * noise))

    def local_sums() -> np.ndarray:
        sums = np.zeros((2, timesteps, M))
        parts = [share(hi - lo, j, len(devices)) for j in range(len(devices))]
        ranges = [(lo + a, lo + b) for a, b in parts]
        if len(devices) == 1:
            sums[:, :, lo:hi] = device_sums(job, devices[0], lo, hi)
        else:  # one thread per device: torch releases the GIL inside its kernels
            with ThreadPoolExecutor(max_workers=len(devices)) as pool:
                futures = [pool.submit(device_sums, job, dev, a, b) for dev, (a, b) in zip(devices, ranges)]
                for (a, b), f in zip(ranges, futures):
                    sums[:, :, a:b] = f.result()
        return sums

    # Sources of other ranks stay 0 here, so the reduction adds every entry to zeros: exact in any order.
    sums = local_sums() if ranks is None else ranks.sum_sources(local_sums)
    choice = job.selector.choice
    if choice is None:  # this rank had no sources of its own: it ran no block
        choice = Choice("none", "this process computed no sources")
    per_source_tr, per_source_sep = sums / (noise * d)  # (T, M) each
    S = per_source_sep.mean(axis=1)
    trcov = per_source_tr.mean(axis=1)
    S_se = per_source_sep.std(axis=1, ddof=1) / math.sqrt(M)
    tr_se = per_source_tr.std(axis=1, ddof=1) / math.sqrt(M)
    if options.form == "covariance":
        variance, variance_se = h2 * trcov, h2 * tr_se
    else:
        variance, variance_se = h2 * (1.0 - S), h2 * S_se
    return Curve(
        t=t, S=S, trcov=trcov, h2=h2, variance=variance, S_stderr=S_se, variance_stderr=variance_se,
        samples=M, noise=noise, dim=d, likelihood=options.likelihood, form=options.form, precision=prec,
        kernel=choice.name, kernel_choice=choice.why, noise_space=options.noise_space,
        per_source_S=per_source_sep, per_source_trcov=per_source_tr,
    )


@dataclass(frozen=True)
class MemoryNeed:
    """Bytes an estimate needs at least, as fixed + per_timestep * T + per_noise * K, on one memory."""

    fixed: int
    per_timestep: int
    per_noise: int

    def total(self, T: int, K: int) -> int:
        return self.fixed + self.per_timestep * T + self.per_noise * K


def memory_need(M: int, d: int, devices: Sequence[torch.device], per_timestep_extra: int = 0,
                noise_space: str = "span") -> Dict[str, MemoryNeed]:
    """What an estimate of M samples of d numbers holds at once, at least, per memory ("cpu" or a CUDA device).

    The parts that grow with T are the (2, T, M) float64 per-source sums (a device's own, the host's copy, the
    per-source averages and their spreads: about eight of them) and a few (T,) tables; the parts that grow
    with K are a source's (K, M) projections and the noise buffers (one per drawing thread) of (K, M) span
    coordinates, or (K, d) with ``noise_space="ambient"``. Work blocks are sized from the free memory, so they
    are not counted. ``per_timestep_extra`` is what the caller adds per timestep (the bootstrap's
    (T, replicates) tables).
    """
    noise_dim = d if noise_space == "ambient" else M

    def on_device(dev) -> MemoryNeed:
        workers = min(torch.get_num_threads(), DRAW_THREADS) if dev.type == "cpu" else 1
        return MemoryNeed(fixed=8 * M * M + 4 * M * d, per_timestep=16 * M, per_noise=4 * (M + workers * noise_dim))

    host = MemoryNeed(fixed=0, per_timestep=64 * M + 80 + per_timestep_extra, per_noise=0)
    needs = {"cpu": host}
    for dev in devices:
        key = "cpu" if dev.type == "cpu" else str(dev)
        have, add = needs.get(key, MemoryNeed(0, 0, 0)), on_device(dev)
        needs[key] = MemoryNeed(have.fixed + add.fixed, have.per_timestep + add.per_timestep,
                                have.per_noise + add.per_noise)
    return needs


def check_memory(M: int, d: int, noise: int, timesteps: int, devices: Sequence[torch.device],
                 per_timestep_extra: int = 0, noise_space: str = "span") -> None:
    """Refuse, before any work, a T or K whose tables do not fit in the free memory, saying what would fit.

    Raises:
        VRCurveError: the estimate needs more than the free memory of the host or of a device.
    """
    for where, need in memory_need(M, d, devices, per_timestep_extra, noise_space).items():
        total = need.total(timesteps, noise)
        free = free_memory(torch.device(where))
        if total <= free:
            continue
        fits = []
        t_fit = (free - need.fixed - need.per_noise * noise) // max(1, need.per_timestep)
        if t_fit >= 2:
            fits.append(f"-T {t_fit:,}")
        k_fit = (free - need.fixed - need.per_timestep * timesteps) // max(1, need.per_noise) if need.per_noise else 0
        if k_fit >= 1:
            fits.append(f"-K {k_fit:,}")
        if fits:
            advice = " or ".join(fits) + " at most fits"
        elif need.fixed < free:
            advice = (f"lower -T and -K together (each timestep takes {need.per_timestep:,} bytes and each noise "
                      f"{need.per_noise:,})")
        else:
            advice = "lower --samples"
        if per_timestep_extra:
            advice += ", or fewer --bootstrap replicates"
        raise VRCurveError(f"-T {timesteps:,} and -K {noise:,} with {M} samples of {d} numbers need about "
                           f"{total / 2**30:,.1f} GiB of memory on {where}, which has {free / 2**30:,.1f} GiB free; "
                           f"{advice}.")
