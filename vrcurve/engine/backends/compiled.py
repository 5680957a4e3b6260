"""The blocks as one ``torch.compile`` function: opt-in (``VRCURVE_KERNEL=compiled``), never chosen by timing.

docs/performance.md ("torch.compile") measured it on a quiet CPU: 1.4x faster than the eager PyTorch blocks,
2.7x slower than the fused C kernel, and a cold compile of about 30 s (4 s from inductor's cache). So it
can pay on a CPU without the fused kernel (no AVX512-BF16) in a long run, and nowhere else on the machines
measured. One product with [2 D / dscale above the diagonal] (the triangle: no column blocks), w . n from
the float32 weights, the per-source sums in float64; the same shortcuts as the other backends.
"""

from __future__ import annotations

import torch

from ..blocks import MIN_LOG2_WEIGHT, Chunk, Constants


def _block(P, table, ca, B, dn, shift: bool, clamp: bool, z_dtype: torch.dtype):
    """(2, nt, ns) sums of e^T D e / (dscale z^2) and e . (n - nbar) / (nscale z) over each source's queries."""
    nt, ns, kk, M = table.shape[0], P.shape[0], P.shape[1], P.shape[2]
    logits = table + ca[:, None, None, None] * P[None]  # (nt, ns, kk, M)
    if shift:
        logits = logits - logits.amax(-1, keepdim=True)
    if clamp:
        logits = logits.clamp(min=MIN_LOG2_WEIGHT)
    e = torch.exp2(logits).reshape(-1, M)
    z = e.sum(-1, dtype=z_dtype)
    quad = ((e.to(B.dtype) @ B).to(e.dtype) * e).sum(-1)
    inv = 1.0 / z.double()
    parts = torch.stack([quad.double() * inv * inv, (e @ dn).double() * inv])
    return parts.view(2, nt, ns, kk).sum(-1)


class CompiledBackend:
    """``Backend`` as one compiled function per block shape (shapes that change recompile, once each)."""

    name = "compiled"

    def __init__(self, c: Constants):
        self.c = c
        self.B = torch.triu(2.0 * c.D64 / c.dscale, 1).to(c.gemm)
        self.ca = torch.tensor(c.ca, dtype=c.work, device=c.device)
        self.fn = torch.compile(_block)

    def allocate(self, rows: int) -> None:
        """Nothing to allocate: the compiled function makes its own buffers."""

    def block(self, chunk: Chunk, k0: int, k1: int, t0: int, t1: int) -> torch.Tensor:
        c = self.c
        P = chunk.P[:, k0:k1]
        table = chunk.Drows4 * c.cb_neg4[t0:t1]  # (nt, ns, 1, M): -cb_t D_i
        sums = self.fn(P, table, self.ca[t0:t1], self.B, c.dn, chunk.shift, c.clamp, c.z_dtype)
        return c.scale_sums(sums, P.shape[1])
