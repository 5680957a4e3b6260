"""One device's share of an estimate: its sources, chunk by chunk, block by block."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Tuple

import numpy as np
import torch

from ..progress import Counter
from .backends import Selector
from .blocks import Constants, block_sums, gram, make_chunk
from .noise import Projector, ambient_basis, span_factor
from .plan import plan
from .precision import matmul_precision

if TYPE_CHECKING:  # pragma: no cover
    from ..options import CurveOptions


@dataclass(frozen=True)
class Job:
    """What every device of an estimate shares: the data (M, d) on the CPU and the settings."""

    x: torch.Tensor
    s: np.ndarray  # (T,) s_t = m_t / a_t
    tau: float
    precision: str  # resolved for the device: float64, float32, bf16 or tf32
    options: "CurveOptions"
    ids: np.ndarray
    work: torch.dtype
    progress: Counter  # timesteps: queries x timesteps, per = this process's queries
    selector: Selector = field(default_factory=Selector)


def prepare(x: torch.Tensor, s: np.ndarray, tau: float, precision: str, form: str, noise_space: str,
            ids: np.ndarray) -> Tuple[Constants, torch.Tensor, Optional[torch.Tensor]]:
    """What every chunk of one device shares, from the samples ``x`` (M, d), on the device in the working
    dtype: the blocks' ``Constants`` and the ``Projector``'s basis and span (``noise_space`` "span" or
    "ambient"). After it nothing needs the samples themselves, only the basis, D and n."""
    G64, n64, D64 = gram(x)
    consts = Constants(D64, n64, s, tau, precision, form)
    if noise_space == "span":
        factor = span_factor(G64, ids)
        return consts, factor.root.to(x.dtype).contiguous(), factor.span
    return consts, ambient_basis(x), None


def device_sums(job: Job, device: torch.device, lo: int, hi: int) -> np.ndarray:
    """Sums over the K queries of each source lo..hi-1, on ``device``: (2, T, hi - lo) float64, tr Cov first.

    The device holds all M samples (the posterior is over all of them) but draws and projects the noise
    of its own sources only.
    """
    T, K = job.options.timesteps, job.options.noise
    if hi <= lo:
        return np.zeros((2, T, 0))
    consts, basis, span = prepare(job.x.to(device=device, dtype=job.work), job.s, job.tau, job.precision,
                                  job.options.form, job.options.noise_space, job.ids)
    p = plan(consts.M, K, job.options.chunk_size, device, job.work, consts.gemm)
    sums = torch.zeros((2, T, hi - lo), dtype=torch.float64, device=device)  # tr Cov, ||E[x1|q]||^2
    fp32_products = "tf32" if job.precision == "tf32" else "ieee"
    backend = None
    with Projector(basis, job.options.seed, job.ids, job.tau, K, p.sources, span) as project:
        for i0 in range(lo, hi, p.sources):
            i1 = min(hi, i0 + p.sources)
            P, bound = project(i0, i1)
            chunk = make_chunk(consts, P, i0, bound)
            if backend is None:
                with matmul_precision(device, fp32_products):
                    backend = job.selector.backend(consts, chunk, p)
            for k0 in range(0, K, p.noise):
                k1 = min(K, k0 + p.noise)
                rows = (i1 - i0) * (k1 - k0)
                tb = p.timesteps(rows, T)
                for t0 in range(0, T, tb):
                    t1 = min(T, t0 + tb)
                    # the precision is process-wide state: held per block, so that another device's
                    # projections (always IEEE) can run between two blocks
                    with matmul_precision(device, fp32_products):
                        sums[:, t0:t1, i0 - lo : i1 - lo] += block_sums(backend, chunk, k0, k1, t0, t1)
                    job.progress.add((t1 - t0) * rows)
    return sums.cpu().numpy()
