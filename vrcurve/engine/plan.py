"""How the work is cut: sources over ranks and devices, queries into chunks, timesteps into blocks.

A chunk is the queries of a few sources (their projections P are made once); a block is a few consecutive
timesteps of one chunk, R = timesteps x queries rows of M entries, sized to stay in the last-level cache on
CPU and to fill a GPU. (What a run needs at least, checked before any work, is
``vrcurve.estimator.memory_need``; the blocks are sized here from the memory that is free.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

# Elements of one (timesteps x queries x samples) work block: large enough to amortise the Python overhead
# of its ~30 tensor operations, small enough to stay in the last-level cache on CPU (2^21 = 4 timesteps of
# 5 sources' 500 queries at M = 200 was the fastest on the development machine), and enough to fill a GPU.
CPU_BLOCK_ELEMENTS = 1 << 21
CUDA_BLOCK_ELEMENTS = 1 << 26


@dataclass(frozen=True)
class Plan:
    """Chunks and blocks of one device's share of the work.

    Attributes:
        sources: whole sources per chunk (1 when a source's queries are split).
        noise: queries of one source per chunk (K unless the chunk size is below K).
        block_rows: (timesteps x queries) rows per work block.
        buffer_rows: rows of the block buffers.
    """

    sources: int
    noise: int
    block_rows: int
    buffer_rows: int

    def timesteps(self, rows: int, T: int) -> int:
        """Timesteps per block for a chunk of ``rows`` queries: as many as the buffers hold (a short last
        chunk gets more of them, never more rows than the buffers have)."""
        return max(1, min(T, self.buffer_rows // rows))


def plan(M: int, K: int, chunk_size: Optional[int], device, work: torch.dtype, gemm: torch.dtype) -> Plan:
    """Chunks of queries and blocks of timesteps for M samples, K noises each, on ``device``.

    Args:
        chunk_size: queries per chunk; by default whole sources, chosen from the block size.
        work: the dtype of the logits and weights; gemm: that of the products' operands.
    """
    device = torch.device(device)
    wi = torch.empty((), dtype=work).element_size()
    per_element = _block_bytes_per_element(work, gemm)
    budget = min(free_memory(device) // 4, 16 << 30)
    target = CUDA_BLOCK_ELEMENTS if device.type == "cuda" else CPU_BLOCK_ELEMENTS
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
    return Plan(sources=sources, noise=noise, block_rows=block_rows, buffer_rows=buffer_rows)


def _block_bytes_per_element(work: torch.dtype, gemm: torch.dtype) -> int:
    """Bytes per (row x sample) element of the block buffers: the logits, the weights (aliasing the logits
    when they share a dtype) and the products."""
    wi = torch.empty((), dtype=work).element_size()
    gi = torch.empty((), dtype=gemm).element_size()
    return wi + (0 if gemm == work else gi) + gi


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: CUDA's free memory, or MemAvailable on the CPU (4 GiB if unknown)."""
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


def share(n: int, part: int, parts: int) -> Tuple[int, int]:
    """The contiguous block [lo, hi) of ``range(n)`` that part ``part`` of ``parts`` computes (sizes differ
    by at most one)."""
    return part * n // parts, (part + 1) * n // parts
