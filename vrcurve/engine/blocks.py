"""A block of the Gram form's per-timestep work: its constants, its chunk of queries, and the shortcuts
every backend shares (docs/estimator.md, "The Gram form").

Time convention: t = 0 is pure noise. With G = X X^T, n_j = G_jj, D_ij = n_i + n_j - 2 G_ij and P_qj - P_qi
(``vrcurve.engine.noise``), the logits of a query q of source i at timestep t, in log2 units (exp2 is the
cheaper exponential), are

    L_qj = ca_t (P_qj - P_qi) - cb_t D_ij,   ca_t = log2(e) / (s_t tau),   cb_t = log2(e) / (2 s_t^2 tau),

0 at j = i (s_t = m_t / a_t). With the unnormalised weights e = 2^L and z = sum e,
tr Cov(x1|q) = e^T D e / (2 z^2) and E[||x1||^2 | q] = e . n / z. A block is (timesteps t0..t1) x (the
queries of a chunk); a backend (``vrcurve.engine.backends``) turns it into the per-source sums of tr Cov
and of ||E[x1|q]||^2 = w . n - tr Cov over its queries.

Shared shortcuts, exact:
- No logit exceeds the chunk's bound (``Projector``), so where the bound is at most 20 nats the weights
  need no max-subtraction; above it (the "sum" likelihood in many dimensions) the row maximum comes off.
- Where every other sample's weight is below 2^-126 of the own sample's (late timesteps), tr Cov = 0 and
  ||E[x1|q]||^2 = n_i exactly, and the block is not computed (``block_sums``).
- On CPU in float32, logits below -126 are clamped (exp2 of them would be subnormal, a slow path).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np
import torch

from ..indices import runs
from .precision import product_dtype, work_dtype

LOG2E = 1.0 / math.log(2.0)
# Without a max-subtraction the weights reach exp(bound); above this many nats that could overflow float32
# in (sum_j w_j)^2 D, so such chunks subtract the row maximum instead.
MAX_UNSHIFTED_LOGIT = 20.0
# exp2 of arguments below -126 gives subnormals, which the vectorised CPU exp2 handles on a slow path
# (twice the time per block); weights 2^-126 below the query's own weight 1 change nothing.
MIN_LOG2_WEIGHT = -126.0


def gram(x: torch.Tensor, columns: int = 1 << 14):
    """G = X X^T, n = diag G and D_ij = ||x_i - x_j||^2, all (M, M) / (M,), computed in float64.

    G is summed over slices of ``columns`` of the d coordinates, so that no float64 copy of the whole data
    is made (at M = 200, d = 262,144 that copy alone would be 400 MiB).

    Args:
        x: data, shape (M, d).
    """
    M, d = x.shape
    G = torch.zeros((M, M), dtype=torch.float64, device=x.device)
    for c0 in range(0, d, columns):
        part = x[:, c0 : c0 + columns].to(torch.float64)
        G.addmm_(part, part.T)
    n = torch.diagonal(G).clone()
    D = (n[:, None] + n[None, :] - 2.0 * G).clamp_min_(0.0)
    D.fill_diagonal_(0.0)
    return G, n, D


class Constants:
    """What every block of one estimate on one device shares.

    D is divided by its mean off-diagonal entry (``dscale``) and n enters as (n - nbar) / nscale, so that
    float32 never overflows and w . n = nbar + w . (n - nbar) keeps its accuracy when the weights are nearly
    uniform.

    Args:
        D64, n64: D (M, M) and n (M,) in float64 on the device.
        s: s_t = m_t / a_t on the grid, (T,).
        tau: d ("mean" likelihood) or 1 ("sum").
        precision: "float64", "float32", "bf16" or "tf32" (``resolve_precision``).
        form: "covariance" or "paper".
    """

    def __init__(self, D64: torch.Tensor, n64: torch.Tensor, s: np.ndarray, tau: float, precision: str, form: str):
        M = self.M = D64.shape[0]
        self.precision, self.form = precision, form
        self.work, self.gemm = work_dtype(precision), product_dtype(precision)
        self.device = D64.device
        off = float(D64.sum()) / (M * (M - 1))
        self.dscale = off if off > 0 else 1.0
        self.nbar = float(n64.mean())
        self.nscale = self.nbar if self.nbar > 0 else 1.0
        self.D64, self.n64 = D64, n64
        self.D = D64.to(self.work)
        self.n = n64
        self.dn64 = (n64 - self.nbar) / self.nscale
        self.dn = self.dn64.to(self.work)
        self.ca = [float(v) for v in torch.tensor(LOG2E / (s * tau), dtype=self.work)]
        self.cb = [float(v) for v in torch.tensor(LOG2E / (2.0 * s * s * tau), dtype=self.work)]
        self.cb_neg4 = -torch.tensor(self.cb, dtype=self.work, device=self.device)[:, None, None, None]
        self.clamp = self.device.type == "cpu" and self.work == torch.float32
        # Row sums of the weights: in float64 where the products are float32 too (the rounding of a float32
        # sum would dominate that of tr Cov); next to bf16 or TF32 products a float32 sum is enough (and on
        # CUDA a float64 sum of float32 input first copies the whole block to float64).
        self.z_dtype = torch.float32 if precision in ("bf16", "tf32") else torch.float64
        self.scale = torch.tensor([[0.5 * self.dscale, 0.0], [-0.5 * self.dscale, self.nscale]], dtype=torch.float64,
                                  device=self.device)
        self.scale_bias = torch.tensor([[0.0], [self.nbar]], dtype=torch.float64, device=self.device)

    def scale_sums(self, sums: torch.Tensor, kk: int) -> torch.Tensor:
        """(2, nt, ns) sums of e^T D e / (dscale z^2) and e . (n - nbar) / (nscale z) -> of tr Cov and of
        ||E[x1|q]||^2 = w . n - tr Cov (a difference of two O(d) numbers, taken after the sums over
        queries), as one small product: tr Cov = dscale/2 a, ||E||^2 = nscale b + kk nbar - dscale/2 a."""
        out = torch.addmm(self.scale_bias, self.scale, sums.view(2, -1), beta=kk)
        return out.view(sums.shape)


@dataclass(frozen=True)
class Chunk:
    """The queries of sources i0 .. i0 + ns - 1, ready for blocks.

    Attributes:
        P: (ns, K, M) P_qj - P_qi.
        i0: the first source.
        Drows4: (1, ns, 1, M) their rows of D, shared by all queries of a source.
        shift: subtract each row's maximum logit (the bound on the logits is too large to skip it).
        lowest: (T,) a lower bound on the logits of each timestep, where the backend clamps (else None).
        collapsed: (T,) bool: every other sample's weight is below 2^-126 of the own sample's.
        n_own: (ns,) float64 ||x_i||^2 of the chunk's sources.
    """

    P: torch.Tensor
    i0: int
    Drows4: torch.Tensor
    shift: bool
    lowest: Optional[np.ndarray]
    collapsed: np.ndarray
    n_own: torch.Tensor


def make_chunk(c: Constants, P: torch.Tensor, i0: int, bound: float) -> Chunk:
    """The chunk of projections ``P`` (ns, K, M) of sources i0.., whose logits are at most ``bound`` nats."""
    Drows = c.D[i0 : i0 + P.shape[0]]
    shift = bound > MAX_UNSHIFTED_LOGIT
    ca, cb = np.array(c.ca), np.array(c.cb)
    lowest = None
    if c.clamp and not shift:
        # the smallest logit of timestep t is at least ca_t min(P') - cb_t max(D): clamp only the blocks
        # that can reach the subnormal range.
        lowest = ca * float(P.min()) - cb * float(Drows.max())
    # and the largest logit of any other sample: below 2^-126 the posterior is the own sample alone.
    off = Drows.clone()
    rows = torch.arange(P.shape[0], device=off.device)
    off[rows, rows + i0] = math.inf
    highest = ca * float(P.max()) - cb * float(off.min())
    return Chunk(P=P, i0=i0, Drows4=Drows[None, :, None, :], shift=shift, lowest=lowest,
                 collapsed=highest < MIN_LOG2_WEIGHT, n_own=c.n[i0 : i0 + P.shape[0]])


class Backend(Protocol):
    """What runs the blocks (``vrcurve.engine.backends``): buffers for up to ``rows`` rows, then blocks."""

    name: str

    def allocate(self, rows: int) -> None:
        """Make the buffers of blocks of up to ``rows`` rows (timesteps x queries)."""

    def block(self, chunk: Chunk, k0: int, k1: int, t0: int, t1: int) -> torch.Tensor:
        """Sums over the queries k0..k1 of each source of ``chunk`` of tr Cov and of ||E[x1|q]||^2 at
        timesteps t0..t1: (2, t1 - t0, ns) float64 on the device. No collapsed timestep is passed."""


def block_sums(backend: Backend, chunk: Chunk, k0: int, k1: int, t0: int, t1: int) -> torch.Tensor:
    """``backend.block`` over timesteps t0..t1 with the collapsed ones filled in exactly: there w is the own
    sample alone, tr Cov = 0 and ||E[x1|q]||^2 = n_i. (2, t1 - t0, ns) float64."""
    active = [t for t in range(t0, t1) if not chunk.collapsed[t]]
    if len(active) == t1 - t0:
        return backend.block(chunk, k0, k1, t0, t1)
    ns = chunk.P.shape[0]
    sums = torch.zeros((2, t1 - t0, ns), dtype=torch.float64, device=chunk.P.device)
    sums[1] = chunk.n_own * (k1 - k0)
    for _, a, b in runs(active):
        sums[:, a - t0 : b - t0] = backend.block(chunk, k0, k1, a, b)
    return sums
