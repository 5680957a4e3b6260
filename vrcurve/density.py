"""From a variance curve to a sampling density, its CDF and inverse-CDF table (docs/estimator.md, "From the curve to the artifact").

pi is piecewise constant on T equal bins of [0, 1] (t = 0 noise), proportional to max(V(t_k), 0) and
normalised to integrate to 1, then mixed with a uniform share lambda (the density floor, ``uniform_mix``):

    pi = (1 - lambda) V+ / integral(V+) + lambda,        so   pi >= lambda   and   1 / pi <= 1 / lambda.

With lambda > 0 every bin is reachable and the importance weights 1 / pi are bounded. The CDF is piecewise
linear, given by its T + 1 values on the bin edges, and the table ``icdf`` holds its exact inverse at
u_j = j / U, j = 0..U. Empty bins (pdf = 0, possible only with lambda = 0) are allowed: the inverse skips them.

Why lambda = 0.02 by default: a V that is exactly 0 in some bins (it happens, at the data end and on small
runs) would leave those timesteps untrained and make 1 / pi unbounded. A 2% share bounds the weights by 50
and changes the CDF by at most 0.02 in KS distance (|F_mix - F| = lambda |t - F(t)| <= lambda), the size of
the ``--check-convergence`` threshold, so it costs at most 2% of the training steps that VR-sampling would
otherwise place by the curve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import VRCurveError
from .options import DEFAULT_UNIFORM_MIX, check_uniform_mix


@dataclass(frozen=True)
class Density:
    """pdf (T,), cdf (T + 1,) on the edges k / T, icdf (U + 1,) at u = j / U; float64."""

    pdf: np.ndarray
    cdf: np.ndarray
    icdf: np.ndarray


def density_from_curve(variance: np.ndarray, table_size: int = 4096, *,
                       uniform_mix: float = DEFAULT_UNIFORM_MIX) -> Density:
    """Normalise max(V, 0) to a piecewise-constant density, mix in the uniform share, tabulate its inverse CDF.

    Args:
        variance: (T,) V(t_k) on the bin midpoints; negative and NaN values count as 0.
        table_size: U, the inverse-CDF table has U + 1 entries.
        uniform_mix: lambda in [0, 1): the density is (1 - lambda) V+ / integral(V+) + lambda.
    """
    lam = check_uniform_mix(uniform_mix)
    v, c = _clipped_cumsum(variance)
    T = v.shape[0]
    pdf = (1.0 - lam) * v * (T / c[-1]) + lam
    cdf = _mixed_cdf(c, lam)
    u = np.arange(table_size + 1, dtype=np.float64) / table_size
    return Density(pdf=pdf, cdf=cdf, icdf=invert_cdf(cdf, u))


def curve_cdf(variance: np.ndarray, *, uniform_mix: float = DEFAULT_UNIFORM_MIX) -> np.ndarray:
    """The CDF alone (T + 1,) of ``density_from_curve(variance, uniform_mix=...)``, without its inverse table."""
    _, c = _clipped_cumsum(variance)
    return _mixed_cdf(c, check_uniform_mix(uniform_mix))


def _mixed_cdf(c, lam):
    """(1 - lambda) C / C_T + lambda k / T on the edges k = 0..T; exactly 0 and 1 at the ends."""
    T = c.shape[0]
    cdf = np.concatenate([[0.0], (1.0 - lam) * (c / c[-1]) + lam * np.arange(1, T + 1) / T])
    cdf[-1] = 1.0
    return cdf


def _clipped_cumsum(variance):
    """max(V, 0) and its partial sums; the last one, the total, divides both (so that trailing empty bins get
    cdf = 1 exactly)."""
    v = np.maximum(np.nan_to_num(np.asarray(variance, dtype=np.float64), nan=0.0, posinf=0.0), 0.0)
    c = np.cumsum(v)
    if not c[-1] > 0:
        raise VRCurveError("the variance curve is zero everywhere, so it defines no density; check the data "
                           "(it may be constant) or the scheduler.")
    return v, c


def invert_cdf(cdf, u):
    """The exact inverse of the piecewise-linear CDF given on T + 1 equal-spaced edges of [0, 1].

    For u in (0, 1) the result is the unique t with cdf(t) = u inside a non-empty bin, so no t ever falls
    in an empty bin; u = 0 maps to the left edge of the first non-empty bin and u = 1 to the right edge of
    the last one. Works on numpy arrays (float64 result) and on torch tensors (on their device).
    """
    if isinstance(cdf, np.ndarray):
        return invert_cdf(torch.from_numpy(np.asarray(cdf, dtype=np.float64)),
                          torch.as_tensor(np.asarray(u, dtype=np.float64))).numpy()
    T = cdf.shape[0] - 1
    # largest edge k with cdf[k] <= u; a run of empty bins ends where mass starts again.
    k = (torch.searchsorted(cdf, u, right=True) - 1).clamp(0, T - 1)
    lo, width = cdf[k], cdf[k + 1] - cdf[k]
    frac = torch.where(width > 0, (u - lo) / torch.where(width > 0, width, torch.ones_like(width)), torch.zeros_like(u))
    t = (k + frac.clamp(0.0, 1.0)) / T
    # the right edge of the last non-empty bin: the first edge where the cdf reaches its end (found on the
    # device: no host sync on every sample() call)
    end = torch.searchsorted(cdf, cdf[-1]).to(t.dtype) / T
    return torch.where(u >= 1.0, end, t)


def ks_between_cdfs(cdf_a: np.ndarray, cdf_b: np.ndarray) -> float:
    """sup_t |F_A(t) - F_B(t)| of two piecewise-linear CDFs on equal bins of [0, 1], exactly.

    Args:
        cdf_a: (T_a + 1,) CDF values on the edges k / T_a.
        cdf_b: (T_b + 1,) CDF values on the edges k / T_b; T_b may differ from T_a.

    Both CDFs are linear between consecutive points of the union of their edges, so their difference is too,
    and the sup of its absolute value is reached at one of those points.
    """
    a = np.asarray(cdf_a, dtype=np.float64)
    b = np.asarray(cdf_b, dtype=np.float64)
    ea = np.linspace(0.0, 1.0, a.shape[0])
    eb = np.linspace(0.0, 1.0, b.shape[0])
    t = np.union1d(ea, eb)
    return float(np.max(np.abs(np.interp(t, ea, a) - np.interp(t, eb, b))))
