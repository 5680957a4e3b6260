"""The blocks in the fused C kernel (vrcurve/_fused.c): bf16 products on a CPU with AVX512-BF16.

A block is two passes of C instead of about ten PyTorch operations: one from P and the table -cb_t D_i to
the bf16 weights, their row sums and w . (n - nbar) (from the float32 weights, always); then a bf16 kernel
of its own for the quadratic forms on the upper triangle of D (about M^2 / 2 products per query against
2/3 M^2 for the column blocks, with e @ D kept in registers), which adds them up per source. Both passes
take one ``vrcurve._kernel.Block``: the C side checks every buffer's capacity against the block's shape.
"""

from __future__ import annotations

from typing import Optional

import torch

from ... import _kernel
from ..blocks import Chunk, Constants


def applies(c: Constants) -> bool:
    """Whether blocks of ``c`` are what the kernel is made for: bf16 products on the CPU."""
    return c.device.type == "cpu" and c.precision == "bf16"


def unavailable(c: Constants) -> Optional[str]:
    """Why the fused kernel cannot run blocks of ``c`` (None where it can)."""
    if c.device.type != "cpu":
        return f"it runs on CPUs, not {c.device.type}"
    if c.precision != "bf16":
        return f"it runs bf16 products, not {c.precision}"
    return None if _kernel.fused() is not None else _kernel.why_not()


def pack_triangle(Dn: torch.Tensor) -> torch.Tensor:
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


class KernelError(RuntimeError):
    """The fused kernel refused a block: a bug in vrcurve, never the user's input."""


class FusedBackend:
    """``Backend`` in the fused C kernel; the quadratic forms are summed in float32 where the PyTorch path
    rounds e @ D to bf16, so it is at least as close to float64."""

    name = "fused"

    def __init__(self, c: Constants):
        why = unavailable(c)
        if why is not None:
            raise KernelError(f"the fused kernel cannot run here: {why}")
        self.c = c
        self.lib = _kernel.fused()
        self.ca = torch.tensor(c.ca, dtype=torch.float32)
        self.triangle = pack_triangle(c.D64 / c.dscale)
        self.dnvec = c.dn.to(torch.float32).contiguous()

    def allocate(self, rows: int) -> None:
        M = self.c.M
        # rows of even length (the quadratic-form kernel reads the weights in pairs; a pad stays 0)
        self.w_row = M + M % 2
        self.weights = torch.zeros((rows, self.w_row), dtype=torch.bfloat16)
        self.z = torch.empty(rows, dtype=torch.float32)
        self.row_dn = torch.empty(rows, dtype=torch.float32)
        self.table = torch.empty(0, dtype=torch.float32)  # -cb_t D_i, (nt, ns, M): grown on first use

    def block(self, chunk: Chunk, k0: int, k1: int, t0: int, t1: int) -> torch.Tensor:
        c = self.c
        P = chunk.P[:, k0:k1]
        ns, kk, M = P.shape
        nt = t1 - t0
        if self.table.numel() < nt * ns * M:
            self.table = torch.empty(nt * ns * M, dtype=torch.float32)
        if P.dtype != torch.float32 or P.stride(2) != 1 or P.device.type != "cpu":
            raise KernelError(f"the fused kernel takes float32 CPU projections with unit stride, got {P.dtype} "
                              f"on {P.device} with strides {P.stride()}")
        table = self.table[: nt * ns * M].view(nt, ns, 1, M)
        torch.mul(chunk.Drows4, c.cb_neg4[t0:t1], out=table)  # -cb_t D_i
        sums = torch.empty((2, nt, ns), dtype=torch.float64)
        block = _kernel.Block(
            nt=nt, ns=ns, kk=kk, M=M,
            P=P.data_ptr(), p_source=P.stride(0), p_query=P.stride(1),
            p_len=P.untyped_storage().nbytes() // P.element_size() - P.storage_offset(),  # readable from P on
            table=table.data_ptr(), table_len=table.numel(),
            ca=self.ca[t0:].data_ptr(), ca_len=len(c.ca) - t0,
            dnvec=self.dnvec.data_ptr(), dnvec_len=self.dnvec.numel(),
            B=self.triangle.data_ptr(), B_len=self.triangle.numel(),
            w=self.weights.data_ptr(), w_row=self.w_row, w_rows=self.weights.shape[0],
            z=self.z.data_ptr(), dn=self.row_dn.data_ptr(), z_len=min(self.z.numel(), self.row_dn.numel()),
            out=sums.data_ptr(), out_len=sums.numel(),
            shift=int(chunk.shift), threads=torch.get_num_threads(),
        )
        err = self.lib.vr_front(block) or self.lib.vr_quad(block)
        if err:
            raise KernelError(f"vrcurve's fused CPU kernel refused a block of {nt} x {ns} x {kk} rows of {M} "
                              f"(error {err}: {_kernel.ERRORS.get(err, 'unknown')})")
        return c.scale_sums(sums, kk)
