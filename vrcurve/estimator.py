"""Monte Carlo estimate of the per-timestep variance curve, in the Gram form (SPEC §2.1, §2.2).

Time convention: t = 0 is pure noise, t = 1 is data. For M data samples x_1..x_M in R^d and K noises per
sample, the Q = M K queries are q = x_i + s_t eps_q (s_t = m_t / a_t). The posterior over the samples is

    w_j(q) ∝ exp(-||q - x_j||^2 / (2 s_t^2 tau))        tau = d ("mean") or 1 ("sum")

and, with G = X X^T, n_j = G_jj, D_ij = n_i + n_j - 2 G_ij and P_qj = <eps_q, x_j> (computed once),

    logits_qj = (2 s_t (P_qj - P_qi) - D_ij) / (2 s_t^2 tau)     (up to terms constant in j; 0 at j = i)
    tr Cov(x1|q) = (1/2) w^T D w,   E[||x1||^2 | q] = w^T n,   ||E[x1|q]||^2 = w^T n - tr Cov(x1|q).

tr Cov is computed in the pairwise form: every term is non-negative, so it keeps its relative accuracy
where the posterior collapses onto one sample. Per timestep the work is O(Q M^2) and independent of d; the
O(d) work (G and P) is done once.

How the engine spends its time (measurements: docs/performance.md). The work is cut into blocks of a few
timesteps x the queries of a few sources (about 10,000 rows of M on CPU, so that a block stays in cache):
- The logit of a query's own sample is exactly 0 and no logit exceeds ||eps_q||^2 / (2 tau) (about 1/2
  for the "mean" likelihood), so the unnormalised weights 2^logit (logits in log2 units: exp2 is the
  cheaper exponential) need no max-subtraction pass; runs where that bound is large (the "sum"
  likelihood in many dimensions) subtract the row maximum.
- Queries of one source share a row of D: the logits of a timestep are one fused pass over P with a
  small (sources x M) table, never a gathered (Q, M) copy of D.
- In PyTorch operations (GPUs, and CPUs without the fused kernel below), e^T D e for symmetric D is summed
  by column blocks of D, each needing only the rows of D up to its own block, which saves a third of the
  products at M = 200 (half as the number of blocks grows).
- Where every other sample's weight is below 2^-126 of the own sample's (late timesteps), tr Cov = 0 and
  ||E[x1|q]||^2 = n_i exactly, and the block is not computed.
- The products can run in bfloat16 (CPU with native bf16 dot products) or TF32 (CUDA); logits, their
  exponentials, row sums and everything after stay in float32, and the sums over queries in float64.
  tests/test_engine_precision.py shows the density unchanged (KS < 1e-4, logit-normal m within 0.005).
- With bf16 products on a CPU with AVX512-BF16, a block is two passes of C (vrcurve/_fused.c) instead of
  about ten PyTorch operations: one from P and the table of -cb_t D_i to the bf16 weights, their row sums
  and w . (n - nbar); then a bf16 kernel of its own for the quadratic forms on the upper triangle of D
  (about M^2 / 2 products per query against 2/3 M^2 for the column blocks, at the CPU's bf16 rate, with
  e @ D kept in registers), which adds them up per source. tests/test_fused.py checks both passes.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np
import torch

from . import _kernel
from .errors import VRCurveError
from .schedulers import Scheduler

LIKELIHOODS = ("mean", "sum")
FORMS = ("covariance", "paper")
PRECISIONS = ("auto", "float32", "bf16", "tf32")

_LOG2E = 1.0 / math.log(2.0)
# Elements of one (timesteps x queries x samples) work block: large enough to amortise the Python overhead
# of its ~30 tensor operations, small enough to stay in the last-level cache on CPU (2^21 = 4 timesteps of
# 5 sources' 500 queries at M = 200 was the fastest on the development machine), and enough to fill a GPU.
_CPU_BLOCK_ELEMENTS = 1 << 21
_CUDA_BLOCK_ELEMENTS = 1 << 26
# Rows of the products buffer are padded to this many bytes per device type: with an odd leading
# dimension (M + 1 columns) cuBLAS cannot use its aligned kernels. On CPU padding made no difference.
_ROW_BYTES = {"cuda": 64}
# Without a max-subtraction the weights reach exp(||eps||^2 / (2 tau)); above this many nats that could
# overflow float32 in (sum_j w_j)^2 D, so such chunks subtract the row maximum instead.
_MAX_UNSHIFTED_LOGIT = 20.0
# exp2 of arguments below -126 gives subnormals, which the vectorised CPU exp2 handles on a slow path
# (twice the time per block); weights 2^-126 below the query's own weight 1 change nothing.
_MIN_LOG2_WEIGHT = -126.0


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
        kernel: what ran the blocks: "fused" (the C kernel of vrcurve/_fused.c) or "pytorch".
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
    per_source_S: Optional[np.ndarray] = None
    per_source_trcov: Optional[np.ndarray] = None


class Ranks(Protocol):
    """The processes of a distributed run, as ``estimate`` needs them (``vrcurve.distributed`` makes one)."""

    rank: int
    world_size: int

    def sum_sources(self, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """Run ``compute`` here, agree that every rank succeeded, and return the sum over ranks of its result."""


def share(n: int, part: int, parts: int) -> Tuple[int, int]:
    """The contiguous block [lo, hi) of ``range(n)`` that part ``part`` of ``parts`` computes (sizes differ
    by at most one)."""
    return part * n // parts, (part + 1) * n // parts


def device_list(device) -> List[torch.device]:
    """One device, a sequence of devices, or a comma-separated string ("cuda:0,cuda:1", "cpu,cpu")."""
    if isinstance(device, str):
        device = [d.strip() for d in device.split(",")]
    elif isinstance(device, torch.device) or not isinstance(device, Sequence):
        device = [device]
    devices = [torch.device(d) for d in device]
    if not devices:
        raise VRCurveError("no device given; use cpu, cuda, cuda:N or a comma-separated list of them.")
    if len({d.type for d in devices}) > 1:
        raise VRCurveError(f"the devices {', '.join(map(str, devices))} are of different types; "
                           "list devices of one type.")
    return devices


def timestep_grid(timesteps: int) -> np.ndarray:
    """Bin midpoints t_k = (k + 0.5) / T, k = 0..T-1 (SPEC §2.3), float64, shape (T,)."""
    return (np.arange(timesteps, dtype=np.float64) + 0.5) / timesteps


def source_seed(seed: int, source: int) -> int:
    """The generator seed for the noises of one source: a function of (seed, source) only."""
    return int(np.random.SeedSequence([int(seed), int(source)]).generate_state(1, np.uint64)[0] >> 1)


def source_noise(seed: int, source: int, noise: int, dim: int, *, device="cpu", dtype=torch.float32,
                 out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The K noises eps of the queries of ``source``, shape (K, d).

    Query q = source * K + k gets row k. The values depend on (seed, source, K, d) and the device type
    only, so chunking, device count and rank count cannot change them. ``out``, a (K, d) tensor on
    ``device``, receives the same values (its dtype then takes the place of ``dtype``).
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(source_seed(seed, source))
    if out is not None:
        return torch.randn((noise, dim), generator=gen, out=out)
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


def resolve_precision(precision: str = "auto", device="cpu", dtype: torch.dtype = torch.float32) -> str:
    """The precision the heavy products w @ D run in: "float64", "float32", "bf16" or "tf32".

    ``auto`` keeps float64 runs in float64 and otherwise picks the fastest precision that
    tests/test_engine_precision.py shows to leave the density unchanged: bf16 on CPUs with native bf16 dot
    products (AVX512-BF16 or AMX), TF32 on CUDA devices of compute capability 8.0 or newer, else float32.
    Logits, exponentials, row sums and everything after them stay in ``dtype`` whatever the choice.
    """
    if precision not in PRECISIONS:
        raise VRCurveError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
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
    if device.type == "cpu" and _cpu_has_native_bf16():
        return "bf16"
    return "float32"


@lru_cache(maxsize=None)
def _cpu_has_native_bf16() -> bool:
    """True where bf16 matrix products run on bf16 dot-product instructions (about 2.5x float32 here)."""
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except (OSError, RuntimeError, AttributeError):
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


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
    progress: Optional[Callable[[float, int], None]] = None,
    precision: str = "float32",
    ranks: Optional["Ranks"] = None,
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
        chunk_size: queries per chunk (per device); by default chosen from the memory of each device.
        device: where the products run: one device, or a sequence of devices of one type (or a string
            "cuda:0,cuda:1"), over which the sources are split and computed concurrently.
        dtype: working precision, float32 or float64 (accumulation over queries is float64 always).
        progress: called as progress(done, total) after each work block, with ``done`` the timesteps'
            worth of work finished (fractional while a chunk of queries is in flight) and ``total`` = T.
        precision: of the heavy products w @ D: "float32" (products in ``dtype``), "bf16", "tf32" (CUDA)
            or "auto" (see ``resolve_precision``; the command line's default).
        ranks: the processes of a distributed run (``vrcurve.distributed.Ranks``); this process then
            computes only its share of the sources, and every rank gets the whole curve.

    The sources are split into contiguous blocks (over ranks, then over this rank's devices); the noise of
    a source depends on (seed, source id) only, so the result is the same, to round-off, whatever the split.
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
    if chunk_size is not None and chunk_size < 1:
        raise VRCurveError(f"chunk size must be at least 1, got {chunk_size}.")
    devices = device_list(device)
    check_memory(M, d, noise, timesteps, devices)
    prec = resolve_precision(precision, devices[0], dtype)
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
    ids = np.arange(M) if source_ids is None else np.asarray(source_ids, dtype=np.int64)
    if ids.shape != (M,):
        raise ValueError(f"source_ids must have shape ({M},), got {ids.shape}")

    work = torch.float64 if prec == "float64" else torch.float32
    lo, hi = (0, M) if ranks is None else share(M, ranks.rank, ranks.world_size)
    job = _Job(x=x, s=s, tau=tau, prec=prec, form=form, noise=noise, timesteps=timesteps, seed=seed, ids=ids,
               chunk_size=chunk_size, work=work, progress=_Progress(progress, (hi - lo) * noise, timesteps))

    def local_sums() -> np.ndarray:
        sums = np.zeros((2, timesteps, M))
        parts = [share(hi - lo, j, len(devices)) for j in range(len(devices))]
        ranges = [(lo + a, lo + b) for a, b in parts]
        if len(devices) == 1:
            sums[:, :, lo:hi] = _device_sums(job, devices[0], lo, hi)
        else:  # one thread per device: torch releases the GIL inside its kernels
            with ThreadPoolExecutor(max_workers=len(devices)) as pool:
                futures = [pool.submit(_device_sums, job, dev, a, b) for dev, (a, b) in zip(devices, ranges)]
                for (a, b), f in zip(ranges, futures):
                    sums[:, :, a:b] = f.result()
        return sums

    # Sources of other ranks stay 0 here, so the reduction adds every entry to zeros: exact in any order.
    sums = local_sums() if ranks is None else ranks.sum_sources(local_sums)
    per_source_tr, per_source_sep = sums / (noise * d)  # (T, M) each
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
        samples=M, noise=noise, dim=d, likelihood=likelihood, form=form, precision=prec,
        kernel="fused" if _fused_applies(devices[0], prec) else "pytorch",
        per_source_S=per_source_sep, per_source_trcov=per_source_tr,
    )


@dataclass(frozen=True)
class _Job:
    """What every device of an estimate shares: the data (M, d) on the CPU and the settings."""

    x: torch.Tensor
    s: np.ndarray
    tau: float
    prec: str
    form: str
    noise: int
    timesteps: int
    seed: int
    ids: np.ndarray
    chunk_size: Optional[int]
    work: torch.dtype
    progress: "_Progress"


class _Progress:
    """Adds up the queries x timesteps done by the device threads and reports timesteps' worth of work."""

    def __init__(self, report: Optional[Callable[[float, int], None]], queries: int, timesteps: int):
        self.report, self.queries, self.timesteps = report, max(1, queries), timesteps
        self.done = 0
        self.lock = threading.Lock()

    def add(self, rows: int):
        if self.report is None:
            return
        with self.lock:
            self.done += rows
            self.report(self.done / self.queries, self.timesteps)


def _device_sums(job: _Job, device: torch.device, lo: int, hi: int) -> np.ndarray:
    """Sums over the K queries of each source lo..hi-1, on ``device``: (2, T, hi - lo) float64, tr Cov first.

    The device holds all M samples (the posterior is over all of them) but draws and projects the noise
    of its own sources only.
    """
    T, K = job.timesteps, job.noise
    if hi <= lo:
        return np.zeros((2, T, 0))
    xd = job.x.to(device=device, dtype=job.work)
    M, d = xd.shape
    _, n64, D64 = gram(xd)
    engine = _Engine(D64, n64, job.s, job.tau, job.prec, job.form)
    plan = _plan(M, K, d, job.chunk_size, device, job.work, engine.forms.dtype)
    engine.allocate(plan.buffer_rows)
    sums = torch.zeros((2, T, hi - lo), dtype=torch.float64, device=device)  # tr Cov, ||E[x1|q]||^2
    xt = xd.T.contiguous()  # (d, M)
    fp32_products = "tf32" if job.prec == "tf32" else "ieee"
    with _noise_pool(device, plan.sources) as pool:
        for i0 in range(lo, hi, plan.sources):
            i1 = min(hi, i0 + plan.sources)
            P, max_logit = _projections(i0, i1, K, job.seed, job.ids, xt, job.tau, pool)
            chunk = engine.chunk(P, i0, max_logit)
            for k0 in range(0, K, plan.noise):
                k1 = min(K, k0 + plan.noise)
                rows = (i1 - i0) * (k1 - k0)
                tb = plan.timesteps(rows, T)
                for t0 in range(0, T, tb):
                    t1 = min(T, t0 + tb)
                    # the precision is process-wide state: held per block, so that another device's
                    # projections (always IEEE) can run between two blocks
                    with _matmul_precision(device, fp32_products):
                        sums[:, t0:t1, i0 - lo : i1 - lo] += engine.block(chunk, k0, k1, t0, t1)
                    job.progress.add((t1 - t0) * rows)
    return sums.cpu().numpy()


@dataclass(frozen=True)
class _Chunk:
    P: torch.Tensor  # (ns, K, M): <eps_q, x_j> - <eps_q, x_i> for the queries of sources i0 .. i0 + ns - 1
    Drows4: torch.Tensor  # (1, ns, 1, M): their rows of D, shared by all queries of a source
    shift: bool  # subtract each row's maximum logit (the bound on the logits is too large to skip it)
    lowest: Optional[np.ndarray]  # (T,) a lower bound on the logits of each timestep, where it is used
    collapsed: np.ndarray  # (T,) bool: every other sample's weight is below 2^-126 of the own sample's
    n_own: torch.Tensor  # (ns,) float64: ||x_i||^2 of the chunk's sources


class _Engine:
    """The per-timestep work of the Gram form: constants, block buffers, and one block of work.

    A block is (timesteps t0..t1) x (the queries of a chunk); its arrays have R = (t1 - t0) * queries rows
    of M entries, and it returns the per-source sums of tr Cov and of ||E[x1|q]||^2 over its queries.
    """

    def __init__(self, D64: torch.Tensor, n64: torch.Tensor, s: np.ndarray, tau: float, precision: str, form: str):
        self.work = torch.float64 if precision == "float64" else torch.float32
        self.device = D64.device
        # The paper form's V = h^2 (1 - S) subtracts S from 1 where S -> 1, so there w . n must not carry
        # the rounding of a bf16 product: it is then taken from the float32 weights.
        self.n_apart = precision == "bf16" and form == "paper"
        # With bf16 products on a CPU with AVX512-BF16 (and the library built), a block is two passes of C
        # (vrcurve/_fused.c): the logits to the bf16 weights, their row sums and w . (n - nbar), then the
        # quadratic forms on the packed upper triangle of 2 D / dscale. Otherwise PyTorch operations.
        self.fused = _kernel.fused() if _fused_applies(self.device, precision) else None
        self.forms = _PairForms(D64, n64, precision, with_n=not self.n_apart, blocks=self.fused is None)
        self.dn = self.forms.dn.to(self.work)
        self.D = D64.to(self.work)
        self.n = n64
        # Logits in log2 units (exp2 is the cheaper exponential): L = ca_t (P_qj - P_qi) - cb_t D_ij.
        self.ca = [float(v) for v in torch.tensor(_LOG2E / (s * tau), dtype=self.work)]
        self.cb = [float(v) for v in torch.tensor(_LOG2E / (2.0 * s * s * tau), dtype=self.work)]
        self.cb_neg4 = -torch.tensor(self.cb, dtype=self.work, device=self.device)[:, None, None, None]
        self._view_cache = {}
        self.clamp = self.device.type == "cpu" and self.work == torch.float32
        # Row sums of the float32 weights in float64 where the products are float32 too (the rounding of
        # a float32 sum would dominate that of tr Cov); next to bf16 or TF32 products a float32 sum is
        # enough (and on CUDA a float64 sum of float32 input first copies the whole block to float64).
        self.z_dtype = torch.float32 if precision in ("bf16", "tf32") else torch.float64
        f = self.forms
        self.scale = torch.tensor([[0.5 * f.dscale, 0.0], [-0.5 * f.dscale, f.nscale]], dtype=torch.float64,
                                  device=self.device)
        self.scale_bias = torch.tensor([[0.0], [f.nbar]], dtype=torch.float64, device=self.device)
        if self.fused is not None:
            self.ca_t = torch.tensor(self.ca, dtype=torch.float32)
            self.triangle = _pack_triangle(D64 / f.dscale)
            if self.triangle.numel() != self.fused.vr_pack_size(D64.shape[0]):
                raise RuntimeError("vrcurve's fused kernel and its Python side disagree; reinstall vrcurve")

    def allocate(self, rows: int):
        M = self.D.shape[0]
        if self.fused is not None:
            # rows of even length (the quadratic-form kernel reads the weights in pairs; a pad stays 0)
            self.w_row = M + M % 2
            self.weights = torch.zeros((rows, self.w_row), dtype=torch.bfloat16)
            self.z = torch.empty(rows, dtype=torch.float32)
            self.row_dn = torch.empty(rows, dtype=torch.float32)
            self.table = torch.empty(0, dtype=torch.float32)  # -cb_t D_i, (nt, ns, M): grown on first use
            return
        self.logits = torch.empty(rows * M, dtype=self.work, device=self.device)
        self.weights = (self.logits if self.forms.dtype == self.work
                        else torch.empty(rows * M, dtype=self.forms.dtype, device=self.device))
        if self.forms.dtype == torch.bfloat16 and self.work == torch.float32 and self.forms.stride <= 2 * M:
            # the bf16 products live where the float32 logits were (dead once cast): a smaller working set
            self.products = self.logits.view(torch.bfloat16)
        else:
            self.products = torch.empty(rows * self.forms.stride, dtype=self.forms.dtype, device=self.device)
        self.z = torch.empty(rows, dtype=self.z_dtype, device=self.device)
        self.tail = torch.empty((3, rows), dtype=torch.float64, device=self.device)
        self._view_cache = {}

    def chunk(self, P: torch.Tensor, i0: int, max_logit: float) -> _Chunk:
        Drows = self.D[i0 : i0 + P.shape[0]]
        shift = max_logit > _MAX_UNSHIFTED_LOGIT
        lowest = None
        if self.clamp and not shift:
            # the smallest logit of timestep t is at least ca_t min(P') - cb_t max(D): clamp only the
            # blocks that can reach the subnormal range.
            lowest = np.array(self.ca) * float(P.min()) - np.array(self.cb) * float(Drows.max())
        # and the largest logit of any other sample: below 2^-126 the posterior is the own sample alone.
        off = Drows.clone()
        rows = torch.arange(P.shape[0], device=off.device)
        off[rows, rows + i0] = math.inf
        highest = np.array(self.ca) * float(P.max()) - np.array(self.cb) * float(off.min())
        n_own = self.n[i0 : i0 + P.shape[0]]
        return _Chunk(P=P, Drows4=Drows[None, :, None, :], shift=shift, lowest=lowest,
                      collapsed=highest < _MIN_LOG2_WEIGHT, n_own=n_own)

    def block(self, c: _Chunk, k0: int, k1: int, t0: int, t1: int) -> torch.Tensor:
        """Sums over the queries k0..k1 of each source of tr Cov and of w . n - tr Cov: (2, t1 - t0, ns), float64."""
        P = c.P[:, k0:k1]
        ns, kk, M = P.shape
        active = [t for t in range(t0, t1) if not c.collapsed[t]]
        if len(active) < t1 - t0:
            # where w is the own sample alone: tr Cov = 0 and ||E[x1|q]||^2 = n_i, what the block would give
            sums = torch.zeros((2, t1 - t0, ns), dtype=torch.float64, device=self.device)
            sums[1] = c.n_own * kk
            for a, b in _runs(active):
                sums[:, a - t0 : b - t0] = self.block(c, k0, k1, a, b)
            return sums
        if self.fused is not None:
            return self._fused_block(c, P, t0, t1)
        v = self._views(t1 - t0, ns, kk)
        torch.mul(c.Drows4, self.cb_neg4[t0:t1], out=v.table)  # (nt, ns, 1, M): -cb_t D_i
        for j, (table, logits) in enumerate(zip(v.tables, v.logits_t)):
            # one fused pass per timestep: ca_t P' + (-cb_t D_i), D_i broadcast over the source's queries
            torch.add(table, P, alpha=self.ca[t0 + j], out=logits)
        logits = v.logits
        if c.shift:
            logits.sub_(logits.amax(-1, keepdim=True))
        if self.clamp and (c.shift or c.lowest[t0:t1].min() < _MIN_LOG2_WEIGHT):
            logits.clamp_(min=_MIN_LOG2_WEIGHT)
        logits.exp2_()  # unnormalised weights: the own sample (or the row maximum) weighs 1 ...
        torch.sum(logits, -1, out=v.z)  # ... so z >= 1
        dn = torch.mv(logits, self.dn) if self.n_apart else None  # before the products overwrite the logits
        if v.weights is not logits:
            v.weights.copy_(logits)
        for a, out, W in v.products:
            torch.mm(a, out=out, mat2=W)
        quad = torch.mul(v.y_dot, v.weights, out=v.y_dot).sum(-1)  # e^T D e / dscale (in place: no temporary)
        return self._tail(v, quad, dn, kk)

    def _fused_block(self, c: _Chunk, P: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
        """``block`` in two passes of C (vrcurve/_fused.c): the same values to float32 round-off, with the
        quadratic forms summed in float32 where the PyTorch path rounds e @ D to bf16."""
        lib, (ns, kk, M) = self.fused, P.shape
        nt = t1 - t0
        if self.table.numel() < nt * ns * M:
            self.table = torch.empty(nt * ns * M, dtype=torch.float32)
        if not (P.dtype == torch.float32 and P.stride(2) == 1 and P.device.type == "cpu"
                and nt * ns * kk <= self.z.numel()):
            raise RuntimeError(f"vrcurve's fused CPU kernel got a block it cannot take: {nt} x {ns} x {kk} rows "
                               f"for {self.z.numel()}, P {P.dtype} with strides {P.stride()}")
        table = self.table[: nt * ns * M].view(nt, ns, 1, M)
        torch.mul(c.Drows4, self.cb_neg4[t0:t1], out=table)  # -cb_t D_i
        sums = torch.empty((2, nt, ns), dtype=torch.float64)
        threads = torch.get_num_threads()
        err = lib.vr_front(P.data_ptr(), P.stride(0), P.stride(1), table.data_ptr(), self.ca_t[t0:].data_ptr(),
                           nt, ns, kk, M, int(c.shift), self.weights.data_ptr(), self.w_row, self.z.data_ptr(),
                           self.dn.data_ptr(), self.row_dn.data_ptr(), threads)
        err = err or lib.vr_quad(self.weights.data_ptr(), self.w_row, self.triangle.data_ptr(), self.z.data_ptr(),
                                 self.row_dn.data_ptr(), nt, ns, kk, M, sums.data_ptr(), threads)
        if err:
            raise RuntimeError(f"vrcurve's fused CPU kernel refused a block (error {err})")
        return self._scale(sums, kk)

    def _tail(self, v: "_BlockViews", quad: torch.Tensor, dn: Optional[torch.Tensor], kk: int) -> torch.Tensor:
        # Per query: e^T D e / z^2 and e . (n - nbar) / z, in float64, summed over each source's queries.
        inv, quad_z2, dn_z = v.tail
        torch.reciprocal(v.z, out=inv)
        torch.mul(quad, inv, out=quad_z2).mul_(inv)
        if dn is not None:
            torch.mul(dn, inv, out=dn_z)
        else:
            torch.mul(v.n_cols[0], inv, out=dn_z)
            for col in v.n_cols[1:]:  # the lo part of n - nbar in bf16
                dn_z.addcmul_(col, inv)
        return self._scale(v.tail_sums.sum(-1), kk)

    def _scale(self, sums: torch.Tensor, kk: int) -> torch.Tensor:
        """(2, nt, ns) sums of e^T D e / (dscale z^2) and e . (n - nbar) / (nscale z) -> of tr Cov and of
        ||E[x1|q]||^2 = w . n - tr Cov (a difference of two O(d) numbers, taken after the sums over
        queries), as one small product: tr Cov = dscale/2 a, ||E||^2 = nscale b + kk nbar - dscale/2 a."""
        out = torch.addmm(self.scale_bias, self.scale, sums.view(2, -1), beta=kk)
        return out.view(sums.shape)

    def _views(self, nt: int, ns: int, kk: int) -> "_BlockViews":
        """Views of the buffers for blocks of (nt, ns, kk), made once per shape (a block has ~30 operations,
        and making their views anew would cost as much Python time as a few of them)."""
        key = (nt, ns, kk)
        if key not in self._view_cache:
            M, R, f = self.D.shape[0], nt * ns * kk, self.forms
            logits4 = self.logits[: R * M].view(nt, ns, kk, M)
            logits = logits4.view(R, M)
            weights = logits if self.weights is self.logits else self.weights[: R * M].view(R, M)
            y = self.products[: R * f.stride].view(R, f.stride)
            table = torch.empty((nt, ns, 1, M), dtype=self.work, device=self.device)
            tail = self.tail[:, :R]
            self._view_cache[key] = _BlockViews(
                table=table, tables=list(table.unbind(0)), logits_t=list(logits4.unbind(0)), logits=logits,
                z=self.z[:R], weights=weights,
                products=[(weights[:, :e1], y[:, e0 : e0 + W.shape[1]], W) for e0, e1, W in f.blocks],
                y_dot=y[:, :M], n_cols=[y[:, col] for col in range(M, f.width)], tail=list(tail.unbind(0)),
                tail_sums=tail[1:].view(2, nt, ns, kk),
            )
        return self._view_cache[key]


@dataclass
class _BlockViews:
    table: torch.Tensor  # (nt, ns, 1, M): -cb_t D_i
    tables: List[torch.Tensor]  # its nt slices
    logits_t: List[torch.Tensor]  # (ns, kk, M) per timestep, views of ``logits``
    logits: torch.Tensor  # (R, M), the logits and then, in place, the unnormalised weights
    z: torch.Tensor  # (R,) their row sums
    weights: torch.Tensor  # (R, M) in the products' dtype (``logits`` itself when that is the work dtype)
    products: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (input, output, W) per column block
    y_dot: torch.Tensor  # (R, M) the products e @ D by column block, then their products with e
    n_cols: List[torch.Tensor]  # (R,) e . (n - nbar) / nscale (hi, lo in bf16)
    tail: List[torch.Tensor]  # 1 / z, e^T D e / (dscale z^2), e . (n - nbar) / (nscale z): (R,) float64
    tail_sums: torch.Tensor  # the last two as (2, nt, ns, kk)


class _PairForms:
    """Per-query e^T D e and e . (n - nbar) for a block of unnormalised weights e (R, M), by column blocks.

    For symmetric D, e^T D e = sum_b e_b . (sum_{a<b} 2 D_ab^T e_a + D_bb e_b): column block b of the
    product needs only the rows of D up to the end of block b, so with nb blocks the products cost
    (nb + 1) / (2 nb) of a full e @ D. D is divided by its mean off-diagonal entry and n by its mean, so
    that float32 never overflows; n enters as the deviation n - nbar (hi + lo in bf16, which keeps it to
    16 bits), so that w . n = nbar + w . (n - nbar) keeps its accuracy when the weights are nearly uniform.
    """

    def __init__(self, D64: torch.Tensor, n64: torch.Tensor, precision: str, with_n: bool = True,
                 blocks: bool = True):
        M = self.M = D64.shape[0]
        self.dtype = {"float64": torch.float64, "bf16": torch.bfloat16}.get(precision, torch.float32)
        off = float(D64.sum()) / (M * (M - 1))
        self.dscale = off if off > 0 else 1.0
        self.nbar = float(n64.mean())
        self.nscale = self.nbar if self.nbar > 0 else 1.0
        self.with_n = with_n
        Dn = D64 / self.dscale
        dn = (n64 - self.nbar) / self.nscale
        self.dn = dn
        if self.dtype == torch.bfloat16:
            hi = dn.to(torch.bfloat16).to(torch.float64)
            ncols = torch.stack([hi, dn - hi], 1)
        else:
            ncols = dn[:, None]
        self.n_columns = ncols.shape[1] if with_n else 0
        self.width = M + self.n_columns
        per_line = max(1, _ROW_BYTES.get(D64.device.type, 0) // torch.empty((), dtype=self.dtype).element_size())
        self.stride = -(-self.width // per_line) * per_line  # the row stride of the products buffer
        self.blocks: List[Tuple[int, int, torch.Tensor]] = []
        edges = _column_edges(M) if blocks else [0]  # the fused CPU kernel packs D its own way
        for e0, e1 in zip(edges[:-1], edges[1:]):
            W = Dn[:e1, e0:e1].clone()
            W[:e0] *= 2.0
            if e1 == M:  # the n columns, then zero columns up to the padded row: aligned operands
                pad = torch.zeros((e1, self.stride - self.width), dtype=W.dtype, device=W.device)
                W = torch.cat([W, ncols, pad] if with_n else [W, pad], 1)
            self.blocks.append((e0, e1, W.to(self.dtype).contiguous()))


def _fused_applies(device, precision: str) -> bool:
    """Whether the fused C kernel runs the blocks: bf16 products on a CPU (it exists for that case alone)
    where the library is built and the CPU has AVX512-BF16 (``vrcurve._kernel``)."""
    return torch.device(device).type == "cpu" and precision == "bf16" and _kernel.fused() is not None


def _pack_triangle(Dn: torch.Tensor) -> torch.Tensor:
    """B = 2 Dn above the diagonal, 0 elsewhere, in bf16, packed as vr_quad reads it (vrcurve/_fused.c):
    tile jt holds columns 16 jt .. 16 jt + 15 and rows i < min(16 jt + 16, M) in pairs, (pairs, 16, 2)."""
    M = Dn.shape[0]
    Dn = Dn.to(device="cpu", dtype=torch.float32)
    parts = []
    for j0 in range(0, M, 16):
        pairs = (min(j0 + 16, M) + 1) // 2
        rows, cols = min(2 * pairs, M), min(16, M - j0)
        tile = torch.zeros((2 * pairs, 16), dtype=torch.float32)
        tile[:rows, :cols] = 2.0 * Dn[:rows, j0 : j0 + cols]
        above = torch.arange(2 * pairs)[:, None] < torch.arange(j0, j0 + 16)[None, :]  # i < j
        parts.append((tile * above).reshape(pairs, 2, 16).transpose(1, 2).reshape(-1))
    return torch.cat(parts).to(torch.bfloat16).contiguous()


def _runs(steps: List[int]) -> List[Tuple[int, int]]:
    """Maximal runs [a, b) of consecutive integers in the sorted list ``steps``."""
    runs: List[Tuple[int, int]] = []
    for t in steps:
        if runs and runs[-1][1] == t:
            runs[-1] = (runs[-1][0], t + 1)
        else:
            runs.append((t, t + 1))
    return runs


def _column_edges(M: int) -> List[int]:
    """Column-block edges of D: one block below M = 96, else up to 8 blocks, at multiples of 16."""
    nb = 1 if M < 96 else min(8, M // 64)
    inner = {min(M - 1, max(1, int(round(M * b / nb / 16.0)) * 16)) for b in range(1, nb)}
    return [0] + sorted(inner) + [M]


class _MatmulModes:
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


_MODES = {"cpu": _MatmulModes("cpu"), "cuda": _MatmulModes("cuda")}


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
def _matmul_precision(device: torch.device, mode: str):
    """float32 matrix products on ``device`` in ``mode`` ("ieee" or "tf32") inside the block, whatever a
    caller set globally (torch.set_float32_matmul_precision would otherwise let them run in TF32 or bf16).
    Not re-entrant with a different mode in the same thread."""
    modes = _MODES.get(torch.device(device).type)
    if modes is None:
        yield
        return
    with modes.hold(mode):
        yield


@dataclass(frozen=True)
class _Plan:
    sources: int  # whole sources per chunk (1 when a source's queries are split)
    noise: int  # queries of one source per chunk (K unless chunk_size < K)
    block_rows: int  # (timesteps x queries) rows per work block
    buffer_rows: int  # rows of the block buffers

    def timesteps(self, rows: int, T: int) -> int:
        """Timesteps per block for a chunk of ``rows`` queries: as many as the buffers hold (a short last
        chunk gets more of them, never more rows than the buffers have)."""
        return max(1, min(T, self.buffer_rows // rows))


def _plan(M: int, K: int, d: int, chunk_size: Optional[int], device, work: torch.dtype, gemm: torch.dtype) -> _Plan:
    """Chunks of queries and blocks of timesteps, bounded by the memory of ``device``."""
    wi = torch.empty((), dtype=work).element_size()
    gi = torch.empty((), dtype=gemm).element_size()
    # logits, weights (aliasing the logits when they share a dtype) and one column block of products
    per_element = wi + (0 if gemm == work else gi) + gi
    budget = min(_free_memory(device) // 4, 16 << 30)
    target = _CUDA_BLOCK_ELEMENTS if device.type == "cuda" else _CPU_BLOCK_ELEMENTS
    block_rows = max(1, min(target, budget // per_element) // M)
    if chunk_size is None:
        # Whole sources per chunk where they fit. On CPU a chunk is a quarter of a block, so that a block
        # spans four timesteps of projections that stay in cache; a GPU takes one timestep of many queries.
        want = max(1, block_rows // (4 if device.type == "cpu" else 1))
        chunk_size = want if K >= want else (want // K) * K
        chunk_size = max(1, min(chunk_size, budget // (M * wi)))
    if chunk_size >= K:
        sources, noise = max(1, min(M, chunk_size // K)), K
    else:
        sources, noise = 1, chunk_size
    rows = sources * noise
    buffer_rows = max(rows, (block_rows // rows) * rows)
    return _Plan(sources=sources, noise=noise, block_rows=block_rows, buffer_rows=buffer_rows)


class _NoiseDraws:
    """Draws the noise of several sources at once, into buffers reused from chunk to chunk.

    torch.randn on CPU runs on one core, so on CPU up to ``workers`` threads draw at once. Each draws into
    a buffer allocated here: a worker thread that allocated its own tensors would grow a malloc arena of
    its own, which kept hundreds of MiB after the run (measured: peak RSS 825 MiB against 311 MiB without
    the threads, d = 4096).
    """

    def __init__(self, threads: Optional[ThreadPoolExecutor], workers: int):
        self.threads, self.workers = threads, workers
        self._buffers: List[torch.Tensor] = []

    def __call__(self, seed: int, ids: np.ndarray, sources: range, noise: int, dim: int, device) -> List[torch.Tensor]:
        """The (K, d) float32 noises of ``sources`` (at most ``workers`` of them), as views of the buffers."""
        if not self._buffers or self._buffers[0].shape != (noise, dim) or self._buffers[0].device != device:
            self._buffers = [torch.empty((noise, dim), device=device) for _ in range(self.workers)]

        def draw(job):
            i, out = job
            return source_noise(seed, int(ids[i]), noise, dim, device=device, out=out)

        jobs = list(zip(sources, self._buffers))
        return list(self.threads.map(draw, jobs)) if self.threads is not None else [draw(j) for j in jobs]


@contextmanager
def _noise_pool(device: torch.device, sources: int):
    """A ``_NoiseDraws`` with threads on CPU (one per core, at most 8 and at most ``sources``), none on GPUs."""
    workers = min(torch.get_num_threads(), sources, 8) if device.type == "cpu" else 1
    if workers < 2:
        yield _NoiseDraws(None, 1)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield _NoiseDraws(pool, workers)


def _projections(i0: int, i1: int, noise: int, seed: int, ids: np.ndarray, xt: torch.Tensor, tau: float,
                 draws: _NoiseDraws):
    """P - P_own for the queries of sources [i0, i1): (ns, K, M), and the largest logit bound in nats.

    Row k of source i holds <eps_k, x_j> - <eps_k, x_i>; max_k ||eps_k||^2 / (2 tau) bounds every logit.
    ``draws`` is what ``_noise_pool`` yields.
    """
    d, M = xt.shape
    P = torch.empty((i1 - i0, noise, M), dtype=xt.dtype, device=xt.device)
    bound = 0.0
    for g0 in range(i0, i1, draws.workers):
        group = range(g0, min(i1, g0 + draws.workers))
        noises = draws(seed, ids, group, noise, d, xt.device)
        with _matmul_precision(xt.device, "ieee"):  # P feeds the logits: never TF32 or bf16 inside
            for i, eps in zip(group, noises):
                Pi = torch.mm(eps.to(xt.dtype), xt, out=P[i - i0])
                Pi -= Pi[:, i].clone()[:, None]
                bound = max(bound, float(torch.linalg.vector_norm(eps, dim=-1).max()) ** 2 / (2.0 * tau))
    return P, bound


@dataclass(frozen=True)
class MemoryNeed:
    """Bytes an estimate needs at least, as fixed + per_timestep * T + per_noise * K, on one memory."""

    fixed: int
    per_timestep: int
    per_noise: int

    def total(self, T: int, K: int) -> int:
        return self.fixed + self.per_timestep * T + self.per_noise * K


def memory_need(M: int, d: int, devices: Sequence[torch.device], per_timestep_extra: int = 0) -> Dict[str, MemoryNeed]:
    """What an estimate of M samples of d numbers holds at once, at least, per memory ("cpu" or a CUDA device).

    The parts that grow with T are the (2, T, M) float64 per-source sums (a device's own, the host's copy, the
    per-source averages and their spreads: about eight of them) and a few (T,) tables; the parts that grow
    with K are a source's (K, M) projections and the (K, d) noise buffers (one per drawing thread). Work
    blocks are sized from the free memory, so they are not counted. ``per_timestep_extra`` is what the
    caller adds per timestep (the bootstrap's (T, replicates) tables).
    """
    def on_device(dev) -> MemoryNeed:
        workers = min(torch.get_num_threads(), 8) if dev.type == "cpu" else 1
        return MemoryNeed(fixed=8 * M * M + 4 * M * d, per_timestep=16 * M, per_noise=4 * (M + workers * d))

    host = MemoryNeed(fixed=0, per_timestep=64 * M + 80 + per_timestep_extra, per_noise=0)
    needs = {"cpu": host}
    for dev in devices:
        key = "cpu" if dev.type == "cpu" else str(dev)
        have, add = needs.get(key, MemoryNeed(0, 0, 0)), on_device(dev)
        needs[key] = MemoryNeed(have.fixed + add.fixed, have.per_timestep + add.per_timestep,
                                have.per_noise + add.per_noise)
    return needs


def check_memory(M: int, d: int, noise: int, timesteps: int, devices: Sequence[torch.device],
                 per_timestep_extra: int = 0) -> None:
    """Refuse, before any work, a T or K whose tables do not fit in the free memory, saying what would fit.

    Raises:
        VRCurveError: the estimate needs more than the free memory of the host or of a device.
    """
    for where, need in memory_need(M, d, devices, per_timestep_extra).items():
        total = need.total(timesteps, noise)
        free = _free_memory(torch.device(where))
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
