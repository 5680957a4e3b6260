"""How sure is the curve? A bootstrap interval for m, and a convergence check in M.

Two different uncertainties, two different tools:

- Monte Carlo noise of the average over the M sources (finite K, finite M): the *bootstrap over sources*
  resamples the per-source averages with replacement, rebuilds the density and refits m. It gives a 90%
  interval for m. Sources, not queries, are resampled because the K queries of one source are correlated.
- The dependence of the estimator itself on M (the posterior is over the M chosen samples): the
  *convergence check* re-estimates the curve on nested subsets M/4 and M/2 of the same samples, with the
  same noise, and compares each density with the full one. If halving M still moves the density, a larger
  M would move it too.

The check is *settled* when the density from M/2 samples is within ``KS_SETTLED`` of the density from all M
and its logit-normal m within ``M_SETTLED``. These thresholds are a judgement: a KS distance of 0.02 moves
no more than 2% of the training timesteps, and 0.05 in m is a fifth of the published grid step of 0.25.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import numpy as np

from .density import curve_cdf, density_from_curve, ks_between_cdfs
from .errors import VRCurveError
from .estimator import Curve
from .fit import ks_objective

KS_SETTLED = 0.02
M_SETTLED = 0.05
BOOTSTRAP_LEVEL = 0.90
# The smallest M the convergence check can use: its subsets, M/4 and M/2, must hold 2 samples or more and
# both be smaller than M (with M = 2 the "M/2" subset was the whole sample, so the run compared itself).
CONVERGENCE_MIN_SAMPLES = 8


def variance_from_sources(per_source_S: np.ndarray, per_source_trcov: np.ndarray, h2: np.ndarray, form: str,
                          weights: np.ndarray) -> np.ndarray:
    """V(t) from per-source averages, (T, M) each, with per-source weights (M,) summing to 1: (T,).

    ``weights`` may also hold one such column per replicate, (M, B); V is then (T, B).
    """
    h2 = np.asarray(h2).reshape((-1,) + (1,) * (np.ndim(weights) - 1))
    if form == "covariance":
        return h2 * (per_source_trcov @ weights)
    return h2 * (1.0 - per_source_S @ weights)


def _fit_m_near(ks: Callable[[float], float], m0: float, width: float = 1.0) -> float:
    """The continuous KS-best m (s = 1) within m0 ± width: the bootstrap's fast refit."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(ks, bounds=(m0 - width, m0 + width), method="bounded", options={"xatol": 1e-4})
    return float(res.x)


@dataclass(frozen=True)
class BootstrapInterval:
    """A central interval for m at ``level`` from ``replicates`` bootstrap refits (s = 1)."""

    low: float
    high: float
    std: float
    level: float
    replicates: int


def bootstrap_m(curve: Curve, m_hat: float, *, replicates: int = 200, seed: int = 0,
                level: float = BOOTSTRAP_LEVEL) -> BootstrapInterval:
    """Bootstrap over sources for the logit-normal location m (percentile interval).

    Args:
        curve: the estimate, with its per-source averages.
        m_hat: the fit on the full data; each replicate's refit searches m_hat ± 1.
        replicates: number of bootstrap resamples.
        seed: seeds the resampling (a generator of its own; nothing global).
    """
    rng = np.random.default_rng([int(seed), 0x626F6F74])  # "boot": a stream apart from the data choice
    M = curve.samples
    counts = np.stack([np.bincount(rng.integers(0, M, size=M), minlength=M) for _ in range(replicates)], 1)
    V = variance_from_sources(curve.per_source_S, curve.per_source_trcov, curve.h2, curve.form, counts / M)
    # KS at the bin edges and 2,001 equally spaced points (not the 20,001 of the reported fit): the spread of
    # m over replicates is far wider than the difference this makes
    T = V.shape[0]
    t = np.union1d(np.linspace(0.0, 1.0, 2001), np.arange(T + 1) / T)[1:-1]
    ms = np.array([_fit_m_near(ks_objective(curve_cdf(V[:, b]), t), m_hat) for b in range(replicates)])
    alpha = (1.0 - level) / 2
    low, high = np.quantile(ms, [alpha, 1.0 - alpha])
    return BootstrapInterval(low=float(low), high=float(high), std=float(ms.std(ddof=1)), level=level,
                             replicates=replicates)


@dataclass(frozen=True)
class ConvergenceRow:
    samples: int
    ks_to_full: float
    m: float


@dataclass(frozen=True)
class ConvergenceReport:
    """The nested-subset table (smallest M first, the full M last) and the verdict."""

    rows: Tuple[ConvergenceRow, ...]
    settled: bool
    ks_threshold: float = KS_SETTLED
    m_threshold: float = M_SETTLED

    def message(self) -> str:
        half, full = self.rows[-2], self.rows[-1]
        if self.settled:
            return (f"settled: the density from M={half.samples} is within KS {half.ks_to_full:.4f} of the one from "
                    f"M={full.samples}, and m within {abs(half.m - full.m):.3f}.")
        return (f"NOT settled: going from M={half.samples} to M={full.samples} still moves the density by KS "
                f"{half.ks_to_full:.4f} (threshold {self.ks_threshold}) and m by {abs(half.m - full.m):.3f} "
                f"(threshold {self.m_threshold}); compare densities only at the same M, or estimate again with a "
                f"larger --samples, e.g. {2 * full.samples}, to see whether it settles (docs/validation.md).")

    def as_metadata(self) -> dict:
        return {
            "settled": self.settled, "ks_threshold": self.ks_threshold, "m_threshold": self.m_threshold,
            "rows": [{"samples": r.samples, "ks_to_full": r.ks_to_full, "m": r.m} for r in self.rows],
        }


def nested_subsets(M: int, seed: int, fractions: Sequence[float] = (0.25, 0.5)) -> List[np.ndarray]:
    """Positions of nested random subsets of the M samples (each inside the next), sizes round(f M) >= 2."""
    order = np.random.default_rng([int(seed), 0x6E657374]).permutation(M)  # "nest"
    return [np.sort(order[: max(2, int(round(f * M)))]) for f in fractions]


def require_samples(M: int) -> None:
    """Refuse a convergence check on fewer than CONVERGENCE_MIN_SAMPLES samples (before any work is done)."""
    if M < CONVERGENCE_MIN_SAMPLES:
        raise VRCurveError(f"--check-convergence re-estimates on M/4 and M/2 of the samples, which needs M of at least "
                           f"{CONVERGENCE_MIN_SAMPLES}, got {M}; pass more --samples or drop --check-convergence.")


def check_convergence(full: Curve, full_cdf: np.ndarray, full_m: float,
                      estimate_subset: Callable[[np.ndarray], Curve], seed: int,
                      fractions: Sequence[float] = (0.25, 0.5)) -> ConvergenceReport:
    """Compare the full estimate with estimates on nested subsets of its samples.

    Args:
        full: the estimate on all M samples; ``full_cdf`` and ``full_m`` its density's CDF and fitted m.
        estimate_subset: given positions into the M samples, estimates the curve on those samples only, with
            the same settings and the same noise per sample.
        seed: seeds the choice of the subsets.
    """
    from .fit import fit_logitnormal

    require_samples(full.samples)
    rows = []
    for pos in nested_subsets(full.samples, seed, fractions):
        cdf = density_from_curve(estimate_subset(pos).variance).cdf
        rows.append(ConvergenceRow(samples=len(pos), ks_to_full=ks_between_cdfs(cdf, full_cdf),
                                   m=fit_logitnormal(cdf).m))
    rows.append(ConvergenceRow(samples=full.samples, ks_to_full=0.0, m=full_m))
    half = rows[-2]
    settled = half.ks_to_full <= KS_SETTLED and abs(half.m - full_m) <= M_SETTLED
    return ConvergenceReport(rows=tuple(rows), settled=settled)

