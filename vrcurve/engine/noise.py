"""The queries' noise, as the engine needs it: the projections P_qj = <eps_q, x_j>, and a bound on the logits.

Only P enters the estimator (docs/estimator.md, "Noise in the span of the samples"): ||eps||^2
cancels in the logits relative to the own sample. Each row of P = eps X^T is exactly N(0, G), G = X X^T, so
it can be drawn without ever forming eps in R^d: with R the symmetric square root of G (R^T R = G, from a
float64 eigendecomposition; rank r <= min(M, d)),

    P = Z R,   Z ~ N(0, I) of shape (K, M),

which is P for eps = Z G^{+1/2} X (+ anything orthogonal to the samples). After G (O(M^2 d), once) nothing
depends on d. The symmetric root is the one square root of G that does not depend on how an eigensolver
picks signs or bases of repeated eigenvalues (a tiny change of G changes it a little), and it is taken
with the samples in the order of their ids, so that the draw of a source does not depend on the order of
the rows of x. Two noise spaces:

- "span" (the default): P = Z R as above.
- "ambient": eps in R^d and P = eps X^T, O(K M d) per source: what the direct reference
  (tests/reference.py) draws, kept so that the tests can compare the engine with it on the same noise.

Both draw a source's noise from a generator seeded by (seed, source id) alone (``source_noise``), so chunking,
device count and rank count cannot change it. The logit of sample j for a query of source i is at most
||eps_par||^2 / (2 tau), eps_par the part of eps in the span of the samples (the logit is
(s^2 ||eps_par||^2 - ||s eps_par + x_i - x_j||^2) / (2 s^2 tau)): in the span space ||eps_par||^2 = ||Z U_r||^2
(U_r the range of G; ||Z||^2 where r = M), and in the ambient one the looser ||eps||^2 bounds it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch

from .precision import matmul_precision

# Sources whose noise is drawn at once on CPU threads (``Projector``), each into a (K, k) buffer of its own.
DRAW_THREADS = 8


def source_seed(seed: int, source: int) -> int:
    """The generator seed for the noises of one source: a function of (seed, source) only."""
    return int(np.random.SeedSequence([int(seed), int(source)]).generate_state(1, np.uint64)[0] >> 1)


def source_noise(seed: int, source: int, noise: int, dim: int, *, device="cpu", dtype=torch.float32,
                 out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The K standard normal noises of the queries of ``source``, shape (K, dim).

    ``dim`` is d for noise in R^d, or r, the rank of the samples' Gram matrix, for their coordinates in the
    span of the samples. Query q = source * K + k gets row k. The values depend on (seed, source, K, dim)
    and the device type only. ``out``, a (K, dim) tensor on ``device``, receives the same values (its dtype
    then takes the place of ``dtype``).
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(source_seed(seed, source))
    if out is not None:
        return torch.randn((noise, dim), generator=gen, out=out)
    return torch.randn((noise, dim), generator=gen, device=device, dtype=dtype)


@dataclass(frozen=True)
class SpanFactor:
    """How to draw P = eps X^T in the span of the samples (``span_factor``).

    Attributes:
        root: (M, M) float64, R with the rows in the samples' id order: P = Z @ root, Z ~ N(0, I_M), has rows
            N(0, G) (root^T root = G).
        span: (M, r) float64 orthonormal, the range of G in the same coordinates: Z @ span are the
            coordinates of eps in the span of the samples. None where r = M (then they are Z itself).
        rank: r, the numerical rank of G.
    """

    root: torch.Tensor
    span: Optional[torch.Tensor]
    rank: int


def span_factor(G: torch.Tensor, ids: Optional[np.ndarray] = None) -> SpanFactor:
    """The symmetric square root of G = X X^T with the samples in the order of ``ids`` (default 0..M-1).

    Eigenvalues below 4 M eps_64 lambda_max (the round-off of G and of its eigendecomposition) count as 0:
    a rank-deficient G (M > d, repeated samples) gives r < M.

    Args:
        G: (M, M), any float dtype (computed in float64).
        ids: (M,) the samples' identities (the pipeline's dataset indices).
    """
    M = G.shape[0]
    order = np.argsort(np.arange(M) if ids is None else np.asarray(ids), kind="stable")
    o = torch.from_numpy(order).to(G.device)
    Gs = G.to(torch.float64)[o][:, o]
    lam, U = torch.linalg.eigh(0.5 * (Gs + Gs.T))  # ascending
    top = max(float(lam[-1]), 0.0)
    keep = lam > top * M * torch.finfo(torch.float64).eps * 4.0
    Ur, lr = U[:, keep], lam[keep]
    rank = int(keep.sum())
    root_sorted = (Ur * lr.sqrt()[None, :]) @ Ur.T
    root = root_sorted[:, torch.argsort(o)]  # column j: sample j of G's order; rows: id order
    return SpanFactor(root=root, span=Ur if rank < M else None, rank=rank)


def ambient_basis(x: torch.Tensor) -> torch.Tensor:
    """X^T, (d, M): the projections of noise in R^d are P = eps @ ambient_basis(x)."""
    return x.T.contiguous()


class Projector:
    """P - P_own for chunks of sources, from noise in the coordinates of ``basis`` (k, M): P_q = z_q @ basis.

    ``basis`` is ``span_factor(G).root`` (k = M) or ``ambient_basis(x)`` (k = d); its dtype is that of P.
    ``span`` (k, r), where given, maps the noise to its coordinates in the span of the samples for the
    logit bound (``SpanFactor.span``); else the whole noise vector counts. On CPU the
    noise of up to ``workers`` sources is drawn at once on threads (torch.randn runs on one core), each into
    a buffer allocated here: a worker thread that allocated its own tensors would grow a malloc arena of its
    own, which kept hundreds of MiB after the run (measured: peak RSS 825 MiB against 311 MiB without the
    threads, d = 4096). Use it as a context manager; it holds the threads until the end.
    """

    def __init__(self, basis: torch.Tensor, seed: int, ids: np.ndarray, tau: float, noise: int, sources: int = 1,
                 span: Optional[torch.Tensor] = None):
        self.basis, self.seed, self.ids, self.tau, self.noise = basis, seed, ids, tau, noise
        self.span = None if span is None else span.to(device=basis.device, dtype=torch.float32)
        cpu = basis.device.type == "cpu"
        self.workers = max(1, min(torch.get_num_threads(), sources, DRAW_THREADS)) if cpu else 1
        self._threads: Optional[ThreadPoolExecutor] = None
        self._buffers: List[torch.Tensor] = []

    def __enter__(self) -> "Projector":
        if self.workers > 1:
            self._threads = ThreadPoolExecutor(max_workers=self.workers)
        return self

    def __exit__(self, *exc):
        if self._threads is not None:
            self._threads.shutdown()
            self._threads = None

    def draws(self, sources: range) -> List[torch.Tensor]:
        """The (K, k) float32 noises of ``sources`` (at most ``workers`` of them), as views of the buffers."""
        k, device = self.basis.shape[0], self.basis.device
        if not self._buffers:
            self._buffers = [torch.empty((self.noise, k), device=device) for _ in range(self.workers)]

        def draw(job):
            i, out = job
            return source_noise(self.seed, int(self.ids[i]), self.noise, k, device=device, out=out)

        jobs = list(zip(sources, self._buffers))
        return list(self._threads.map(draw, jobs)) if self._threads is not None else [draw(j) for j in jobs]

    def __call__(self, i0: int, i1: int) -> Tuple[torch.Tensor, float]:
        """P - P_own for the queries of sources [i0, i1): (ns, K, M) in the basis' dtype, and the largest
        logit bound in nats, max_q ||z_q||^2 / (2 tau) (z_q the noise's coordinates in the span, where known).

        Row k of source i holds P_kj - P_ki, 0 at j = i.
        """
        M = self.basis.shape[1]
        P = torch.empty((i1 - i0, self.noise, M), dtype=self.basis.dtype, device=self.basis.device)
        norms = []  # the largest ||z_q|| of each source, kept on the device: one transfer per chunk, not per source
        for g0 in range(i0, i1, self.workers):
            group = range(g0, min(i1, g0 + self.workers))
            noises = self.draws(group)
            with matmul_precision(self.basis.device, "ieee"):  # P feeds the logits: never TF32 or bf16 inside
                for i, z in zip(group, noises):
                    Pi = torch.mm(z.to(self.basis.dtype), self.basis, out=P[i - i0])
                    Pi -= Pi[:, i].clone()[:, None]
                    zs = z if self.span is None else z @ self.span
                    norms.append(torch.linalg.vector_norm(zs, dim=-1).max())
        return P, float(torch.stack(norms).max()) ** 2 / (2.0 * self.tau)

