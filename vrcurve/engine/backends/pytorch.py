"""The blocks as PyTorch operations: every device (CPU, CUDA) and every precision.

About ten operations per block, on views of buffers made once per block shape:
- the logits of a timestep are one fused pass over P with a small (sources x M) table -cb_t D_i (queries of
  one source share a row of D), never a gathered (Q, M) copy of D;
- e^T D e for symmetric D is summed by column blocks of D (``PairForms``), each needing only the rows of D
  up to its own block, which saves a third of the products at M = 200 (half as the blocks grow);
- the products run in the precision's dtype (bf16 on CPU, TF32 on CUDA); logits, exponentials and row sums
  stay in the working dtype, per-query results in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from ..blocks import MIN_LOG2_WEIGHT, Chunk, Constants

# Rows of the products buffer are padded to this many bytes per device type: with an odd leading
# dimension (M + 1 columns) cuBLAS cannot use its aligned kernels. On CPU padding made no difference.
ROW_BYTES: Dict[str, int] = {"cuda": 64}


def column_edges(M: int) -> List[int]:
    """Column-block edges of D: one block below M = 96, else up to 8 blocks, at multiples of 16."""
    nb = 1 if M < 96 else min(8, M // 64)
    inner = {min(M - 1, max(1, int(round(M * b / nb / 16.0)) * 16)) for b in range(1, nb)}
    return [0] + sorted(inner) + [M]


class PairForms:
    """Per-query e^T D e and e . (n - nbar) for a block of unnormalised weights e (R, M), by column blocks.

    For symmetric D, e^T D e = sum_b e_b . (sum_{a<b} 2 D_ab^T e_a + D_bb e_b): column block b of the
    product needs only the rows of D up to the end of block b, so with nb blocks the products cost
    (nb + 1) / (2 nb) of a full e @ D. n enters as the deviation (n - nbar) / nscale (hi + lo in bf16, which
    keeps it to 16 bits) in extra columns of the last block.
    """

    def __init__(self, c: Constants, with_n: bool = True):
        M = c.M
        self.dtype = c.gemm
        self.with_n = with_n
        Dn = c.D64 / c.dscale
        dn = c.dn64
        if self.dtype == torch.bfloat16:
            hi = dn.to(torch.bfloat16).to(torch.float64)
            ncols = torch.stack([hi, dn - hi], 1)
        else:
            ncols = dn[:, None]
        self.n_columns = ncols.shape[1] if with_n else 0
        self.width = M + self.n_columns
        per_line = max(1, ROW_BYTES.get(c.device.type, 0) // torch.empty((), dtype=self.dtype).element_size())
        self.stride = -(-self.width // per_line) * per_line  # the row stride of the products buffer
        self.blocks: List[Tuple[int, int, torch.Tensor]] = []
        edges = column_edges(M)
        for e0, e1 in zip(edges[:-1], edges[1:]):
            W = Dn[:e1, e0:e1].clone()
            W[:e0] *= 2.0
            if e1 == M:  # the n columns, then zero columns up to the padded row: aligned operands
                pad = torch.zeros((e1, self.stride - self.width), dtype=W.dtype, device=W.device)
                W = torch.cat([W, ncols, pad] if with_n else [W, pad], 1)
            self.blocks.append((e0, e1, W.to(self.dtype).contiguous()))


@dataclass
class _Views:
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


class PyTorchBackend:
    """``Backend`` in PyTorch operations."""

    name = "pytorch"

    def __init__(self, c: Constants):
        self.c = c
        # The paper form's V = h^2 (1 - S) subtracts S from 1 where S -> 1, so there w . n must not carry
        # the rounding of a bf16 product: it is then taken from the float32 weights.
        self.n_apart = c.precision == "bf16" and c.form == "paper"
        self.forms = PairForms(c, with_n=not self.n_apart)
        self._views: Dict[Tuple[int, int, int], _Views] = {}

    def allocate(self, rows: int) -> None:
        c, M = self.c, self.c.M
        self.logits = torch.empty(rows * M, dtype=c.work, device=c.device)
        self.weights = (self.logits if self.forms.dtype == c.work
                        else torch.empty(rows * M, dtype=self.forms.dtype, device=c.device))
        if self.forms.dtype == torch.bfloat16 and c.work == torch.float32 and self.forms.stride <= 2 * M:
            # the bf16 products live where the float32 logits were (dead once cast): a smaller working set
            self.products = self.logits.view(torch.bfloat16)
        else:
            self.products = torch.empty(rows * self.forms.stride, dtype=self.forms.dtype, device=c.device)
        self.z = torch.empty(rows, dtype=c.z_dtype, device=c.device)
        self.tail = torch.empty((3, rows), dtype=torch.float64, device=c.device)
        self._views = {}

    def block(self, chunk: Chunk, k0: int, k1: int, t0: int, t1: int) -> torch.Tensor:
        c = self.c
        P = chunk.P[:, k0:k1]
        ns, kk, M = P.shape
        v = self._views_for(t1 - t0, ns, kk)
        torch.mul(chunk.Drows4, c.cb_neg4[t0:t1], out=v.table)  # (nt, ns, 1, M): -cb_t D_i
        for j, (table, logits) in enumerate(zip(v.tables, v.logits_t)):
            # one fused pass per timestep: ca_t P' + (-cb_t D_i), D_i broadcast over the source's queries
            torch.add(table, P, alpha=c.ca[t0 + j], out=logits)
        logits = v.logits
        if chunk.shift:
            logits.sub_(logits.amax(-1, keepdim=True))
        if c.clamp and (chunk.shift or chunk.lowest[t0:t1].min() < MIN_LOG2_WEIGHT):
            logits.clamp_(min=MIN_LOG2_WEIGHT)
        logits.exp2_()  # unnormalised weights: the own sample (or the row maximum) weighs 1 ...
        torch.sum(logits, -1, out=v.z)  # ... so z >= 1
        dn = torch.mv(logits, c.dn) if self.n_apart else None  # before the products overwrite the logits
        if v.weights is not logits:
            v.weights.copy_(logits)
        for a, out, W in v.products:
            torch.mm(a, out=out, mat2=W)
        quad = torch.mul(v.y_dot, v.weights, out=v.y_dot).sum(-1)  # e^T D e / dscale (in place: no temporary)
        return self._tail(v, quad, dn, kk)

    def _tail(self, v: _Views, quad: torch.Tensor, dn: Optional[torch.Tensor], kk: int) -> torch.Tensor:
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
        return self.c.scale_sums(v.tail_sums.sum(-1), kk)

    def _views_for(self, nt: int, ns: int, kk: int) -> _Views:
        """Views of the buffers for blocks of (nt, ns, kk), made once per shape (a block has ~30 operations,
        and making their views anew would cost as much Python time as a few of them)."""
        key = (nt, ns, kk)
        if key not in self._views:
            c, f = self.c, self.forms
            M, R = c.M, nt * ns * kk
            logits4 = self.logits[: R * M].view(nt, ns, kk, M)
            logits = logits4.view(R, M)
            weights = logits if self.weights is self.logits else self.weights[: R * M].view(R, M)
            y = self.products[: R * f.stride].view(R, f.stride)
            table = torch.empty((nt, ns, 1, M), dtype=c.work, device=c.device)
            tail = self.tail[:, :R]
            self._views[key] = _Views(
                table=table, tables=list(table.unbind(0)), logits_t=list(logits4.unbind(0)), logits=logits,
                z=self.z[:R], weights=weights,
                products=[(weights[:, :e1], y[:, e0 : e0 + W.shape[1]], W) for e0, e1, W in f.blocks],
                y_dot=y[:, :M], n_cols=[y[:, col] for col in range(M, f.width)], tail=list(tail.unbind(0)),
                tail_sums=tail[1:].view(2, nt, ns, kk),
            )
        return self._views[key]
