"""Monte Carlo estimate of the per-timestep variance curve, in the Gram form (SPEC §2.1, §2.2).

Time convention: t = 0 is pure noise, t = 1 is data. For M data samples x_1..x_M in R^d and K noises per
sample, the Q = M K queries are q = x_i + s_t eps_q (s_t = m_t / a_t). The posterior over the samples is

    w_j(q) ∝ exp(-||q - x_j||^2 / (2 s_t^2 tau))        tau = d ("mean") or 1 ("sum")

and, with G = X X^T, n_j = G_jj, D_ij = n_i + n_j - 2 G_ij and P_qj = <eps_q, x_j> (computed once),

    logits_qj = (2 s_t P_qj - D_ij) / (2 s_t^2 tau)               (up to terms constant in j)
    tr Cov(x1|q) = (1/2) w^T D w,   E[||x1||^2 | q] = w^T n,   ||E[x1|q]||^2 = w^T n - tr Cov(x1|q).

tr Cov is computed in the pairwise form: every term is non-negative, so it keeps its relative accuracy
where the posterior collapses onto one sample. Per timestep the work is O(Q M^2) and independent of d; the O(d) work (G and P) is done once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .errors import VRCurveError
from .schedulers import Scheduler

LIKELIHOODS = ("mean", "sum")
FORMS = ("covariance", "paper")

# Elements of one (timesteps x queries x samples) work block: large enough to amortise Python overhead,
# small enough that the block's arrays stay near the cache.
_BLOCK_ELEMENTS = 1 << 21


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


def timestep_grid(timesteps: int) -> np.ndarray:
    """Bin midpoints t_k = (k + 0.5) / T, k = 0..T-1 (SPEC §2.3), float64, shape (T,)."""
    return (np.arange(timesteps, dtype=np.float64) + 0.5) / timesteps


def source_seed(seed: int, source: int) -> int:
    """The generator seed for the noises of one source: a function of (seed, source) only."""
    return int(np.random.SeedSequence([int(seed), int(source)]).generate_state(1, np.uint64)[0] >> 1)


def source_noise(seed: int, source: int, noise: int, dim: int, *, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """The K noises eps of the queries of ``source``, shape (K, d).

    Query q = source * K + k gets row k. The values depend on (seed, source, K, d) and the device type
    only, so chunking, device count and rank count cannot change them.
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(source_seed(seed, source))
    return torch.randn((noise, dim), generator=gen, device=device, dtype=dtype)


def gram(x: torch.Tensor):
    """G = X X^T, n = diag G and D_ij = ||x_i - x_j||^2, all (M, M) / (M,), computed in float64.

    Args:
        x: data, shape (M, d).
    """
    x64 = x.to(torch.float64)
    G = x64 @ x64.T
    n = torch.diagonal(G).clone()
    D = (n[:, None] + n[None, :] - 2.0 * G).clamp_min_(0.0)
    D.fill_diagonal_(0.0)
    return G, n, D


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
    device="cpu",
    dtype: torch.dtype = torch.float32,
    source_ids: Optional[Sequence[int]] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> Curve:
    """Estimate S_t, tr Cov and V(t) on the T-point grid (SPEC §2.1-2.3).

    Args:
        x: the M chosen (already normalised) samples, shape (M, ...) — flattened to (M, d).
        scheduler: the path's a_t, m_t.
        noise: K, noises per sample.
        timesteps: T, grid size.
        seed: the noise of query (source i, k) depends on (seed, source_ids[i], k) only.
        source_ids: an identity per sample (the pipeline passes its index in the dataset), so that the
            result does not depend on the order of the rows of x; default 0..M-1.
        likelihood: "mean" (tau = d) or "sum" (tau = 1, the exact posterior of the empirical distribution).
        form: "covariance" (V = h^2 tr Cov / d) or "paper" (V = h^2 (1 - S)).
        chunk_size: queries per chunk; by default chosen from the memory of ``device``.
        device: where the products run.
        dtype: working precision of the products (accumulation over queries is float64 always).
        progress: called as progress(done, total) in work units as chunks complete.
    """
    if likelihood not in LIKELIHOODS:
        raise VRCurveError(f"unknown likelihood {likelihood!r}; choose one of {', '.join(LIKELIHOODS)}.")
    if form not in FORMS:
        raise VRCurveError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}.")
    if noise < 1 or timesteps < 1:
        raise VRCurveError(f"noise and timesteps must be at least 1, got K={noise}, T={timesteps}.")
    x = x.reshape(x.shape[0], -1)
    M, d = x.shape
    if M < 2:
        raise VRCurveError(f"the estimate needs at least 2 samples, got {M}; pass --samples 2 or more.")
    device = torch.device(device)
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
    tau = float(d) if likelihood == "mean" else 1.0

    # The data and the O(d) projections stay in at least float32 whatever the product dtype.
    xd = x.to(device=device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    _, n64, D64 = gram(xd)
    D = D64.to(dtype)
    n = n64.to(dtype)

    ids = np.arange(M) if source_ids is None else np.asarray(source_ids, dtype=np.int64)
    if ids.shape != (M,):
        raise ValueError(f"source_ids must have shape ({M},), got {ids.shape}")
    Q = M * noise
    qchunk, tblock = _plan(Q, M, d, timesteps, chunk_size, device, dtype)
    coef_p = torch.tensor(1.0 / (s * tau), dtype=dtype, device=device)  # multiplies P
    coef_d = torch.tensor(1.0 / (2.0 * s * s * tau), dtype=dtype, device=device)  # multiplies D

    sum_sep = torch.zeros((timesteps, M), dtype=torch.float64, device=device)
    sum_tr = torch.zeros((timesteps, M), dtype=torch.float64, device=device)
    n_chunks = math.ceil(Q / qchunk)
    total, done = n_chunks * timesteps, 0
    xt = xd.T.contiguous()  # (d, M)
    for q0 in range(0, Q, qchunk):
        q1 = min(Q, q0 + qchunk)
        P, src = _projections(q0, q1, noise, seed, ids, xt, device, dtype)
        Drow = D[src]  # (Qc, M): queries of one source share a row of D
        for t0 in range(0, timesteps, tblock):
            t1 = min(timesteps, t0 + tblock)
            logits = torch.addcmul(coef_p[t0:t1, None, None] * P, coef_d[t0:t1, None, None], Drow, value=-1.0)
            w = torch.softmax(logits, dim=-1)  # (Tb, Qc, M)
            wd = (w.reshape(-1, M) @ D).view_as(w)
            tr = 0.5 * (wd * w).sum(-1)  # (Tb, Qc)
            sep = w @ n - tr
            sum_sep[t0:t1].index_add_(1, src, sep.to(torch.float64))
            sum_tr[t0:t1].index_add_(1, src, tr.to(torch.float64))
            done += t1 - t0
            if progress is not None:
                progress(done, total)

    per_source_sep = (sum_sep / (noise * d)).cpu().numpy()  # (T, M)
    per_source_tr = (sum_tr / (noise * d)).cpu().numpy()
    S = per_source_sep.mean(axis=1)
    trcov = per_source_tr.mean(axis=1)
    S_se = per_source_sep.std(axis=1, ddof=1) / math.sqrt(M)
    tr_se = per_source_tr.std(axis=1, ddof=1) / math.sqrt(M)
    if form == "covariance":
        variance, variance_se = h2 * trcov, h2 * tr_se
    else:
        variance, variance_se = h2 * (1.0 - S), h2 * S_se
    return Curve(
        t=t, S=S, trcov=trcov, h2=h2, variance=variance, S_stderr=S_se, variance_stderr=variance_se,
        samples=M, noise=noise, dim=d, likelihood=likelihood, form=form,
    )


def _projections(q0: int, q1: int, noise: int, seed: int, ids: np.ndarray, xt: torch.Tensor, device, dtype):
    """P for queries [q0, q1): (Qc, M), and the source index of each query, (Qc,) int64."""
    d = xt.shape[0]
    rows = []
    for i in range(q0 // noise, (q1 - 1) // noise + 1):
        k0, k1 = max(q0 - i * noise, 0), min(q1 - i * noise, noise)
        eps = source_noise(seed, int(ids[i]), noise, d, device=device, dtype=torch.float32)[k0:k1]
        rows.append((eps.to(xt.dtype) @ xt).to(dtype))
    src = torch.arange(q0, q1, device=device) // noise
    return torch.cat(rows), src


def _plan(Q: int, M: int, d: int, timesteps: int, chunk_size: Optional[int], device, dtype):
    """Queries per chunk and timesteps per block, bounded by the memory of ``device``."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    if chunk_size is None:
        budget = min(_free_memory(device) // 8, 1 << 30)
        # noise (one source at a time) + P + Drow + block arrays (w, wb: 3 M) for one timestep.
        per_query = 4 * d + itemsize * M * 5
        chunk_size = max(1, min(Q, budget // per_query, max(1, _BLOCK_ELEMENTS // M)))
    if chunk_size < 1:
        raise VRCurveError(f"chunk size must be at least 1, got {chunk_size}.")
    chunk_size = min(chunk_size, Q)
    tblock = max(1, min(timesteps, _BLOCK_ELEMENTS // (chunk_size * M)))
    return chunk_size, tblock


def _free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30
