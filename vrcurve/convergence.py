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
and its logit-normal m within ``M_SETTLED``, both compared as printed (KS to 4 decimals, m to 3), so that a
printed "KS 0.0200 <= 0.02" is never called unsettled. These thresholds are a judgement: a KS distance of 0.02
moves no more than 2% of the training timesteps, and 0.05 in m is a fifth of the published grid step of 0.25.

On high-dimensional data the estimate often does not settle at any affordable M: m keeps drifting by a few
hundredths per doubling of M (docs/validation.md). The check therefore also reports that drift, the slope of
m against log2 M over the nested subsets, so that a user can see what another doubling would do.

The number of noises K enters only through the Monte Carlo error at a given M, which the bootstrap interval
measures (it resamples sources with their queries): ``noise_advice`` turns its width into advice on K.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from .density import DEFAULT_UNIFORM_MIX, curve_cdf, density_from_curve, ks_between_cdfs
from .errors import VRCurveError
from .estimator import Curve
from .fit import ks_objective
from .progress import Counter, Reporter, within

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
                level: float = BOOTSTRAP_LEVEL, uniform_mix: float = DEFAULT_UNIFORM_MIX,
                progress: Optional[Reporter] = None) -> BootstrapInterval:
    """Bootstrap over sources for the logit-normal location m (percentile interval).

    Args:
        curve: the estimate, with its per-source averages.
        m_hat: the fit on the full data; each replicate's refit searches m_hat ± 1.
        replicates: number of bootstrap resamples.
        seed: seeds the resampling (a generator of its own; nothing global).
        uniform_mix: the density floor of the estimate (``density_from_curve``), applied to every replicate.
        progress: a reporter (``vrcurve.progress``), told of the ``bootstrap`` phase after each refit.
    """
    V = _resampled_variance(curve, _bootstrap_rng(seed), replicates)
    return _interval(V, m_hat, level, uniform_mix, progress)


def _bootstrap_rng(seed: int) -> np.random.Generator:
    """The resampling's generator: a stream of its own ("boot"), apart from the choice of the data."""
    return np.random.default_rng([int(seed), 0x626F6F74])


def _resampled_variance(curve: Curve, rng: np.random.Generator, replicates: int) -> np.ndarray:
    """V(t) of ``replicates`` resamplings of the curve's M sources with replacement: (T, replicates)."""
    M = curve.samples
    counts = np.stack([np.bincount(rng.integers(0, M, size=M), minlength=M) for _ in range(replicates)], 1)
    return variance_from_sources(curve.per_source_S, curve.per_source_trcov, curve.h2, curve.form, counts / M)


def _interval(V: np.ndarray, m_hat: float, level: float, uniform_mix: float,
              progress: Optional[Reporter]) -> BootstrapInterval:
    """Refit m (s = 1) on each replicate's curve, V (T, replicates), and take the central ``level`` interval."""
    # KS at the bin edges and 2,001 equally spaced points (not the 20,001 of the reported fit): the spread of
    # m over replicates is far wider than the difference this makes
    T, replicates = V.shape
    t = np.union1d(np.linspace(0.0, 1.0, 2001), np.arange(T + 1) / T)[1:-1]
    counter = Counter(progress, "bootstrap", replicates, "replicates")
    ms = np.empty(replicates)
    for b in range(replicates):
        ms[b] = _fit_m_near(ks_objective(curve_cdf(V[:, b], uniform_mix=uniform_mix), t), m_hat)
        counter.add()
    alpha = (1.0 - level) / 2
    low, high = np.quantile(ms, [alpha, 1.0 - alpha])
    return BootstrapInterval(low=float(low), high=float(high), std=float(ms.std(ddof=1)), level=level,
                             replicates=replicates)


@dataclass(frozen=True)
class ConvergenceRow:
    samples: int
    ks_to_full: float
    m: float


KS_DIGITS, M_DIGITS = 4, 3  # as printed; the verdict compares the printed values


def _within(value: float, threshold: float, digits: int) -> Tuple[bool, str]:
    """Whether ``value`` rounded to ``digits`` is at most ``threshold``, and the comparison as printed."""
    shown = round(float(value), digits)
    ok = shown <= threshold
    return ok, f"{shown:.{digits}f} {'<=' if ok else '>'} {threshold:g}"


def drift_per_doubling(rows: Sequence[ConvergenceRow]) -> float:
    """The least-squares slope of m against log2 M over the rows: the change of m per doubling of M."""
    x = np.log2([float(r.samples) for r in rows])
    y = np.array([r.m for r in rows], dtype=np.float64)
    x = x - x.mean()
    return float((x @ (y - y.mean())) / (x @ x))


@dataclass(frozen=True)
class ConvergenceReport:
    """The nested-subset table (smallest M first, the full M last), the verdict and the drift of m in M."""

    rows: Tuple[ConvergenceRow, ...]
    settled: bool
    ks_threshold: float = KS_SETTLED
    m_threshold: float = M_SETTLED
    m_drift_per_doubling: float = 0.0

    def message(self) -> str:
        half, full = self.rows[-2], self.rows[-1]
        _, ks_text = _within(half.ks_to_full, self.ks_threshold, KS_DIGITS)
        _, m_text = _within(abs(half.m - full.m), self.m_threshold, M_DIGITS)
        moved = (f"from M={half.samples} to M={full.samples} the density moves by KS {ks_text} and m by {m_text}; "
                 f"m moves by {self.m_drift_per_doubling:+.3f} per doubling of M")
        if self.settled:
            return f"settled: {moved}."
        return (f"NOT settled: {moved}. The estimate depends on M and often keeps drifting by this much per doubling "
                f"rather than settling (docs/validation.md): choose M once and keep it, compare densities only at the "
                f"same M, and expect a larger --samples (e.g. {2 * full.samples}) to move m by about "
                f"{self.m_drift_per_doubling:+.3f} more.")

    def as_metadata(self) -> dict:
        return {
            "settled": self.settled, "ks_threshold": self.ks_threshold, "m_threshold": self.m_threshold,
            "m_drift_per_doubling": self.m_drift_per_doubling,
            "rows": [{"samples": r.samples, "ks_to_full": r.ks_to_full, "m": r.m} for r in self.rows],
        }


def noise_advice(interval: BootstrapInterval, noise: int, m_threshold: float = M_SETTLED) -> str:
    """Advice on K from the bootstrap interval of m (the Monte Carlo error at this M and K).

    The squared standard error is (between-source + within-source / K) / M (docs/estimator.md): a larger K
    shrinks only the second part, so quadrupling K narrows the interval by at most half. An interval narrower
    than half the m threshold cannot move the fit by a threshold's worth: K is then enough.
    """
    half = (interval.high - interval.low) / 2
    if half <= m_threshold / 2:
        return (f"K={noise} is enough: the {interval.level:.0%} interval of m is ±{half:.3f}, within half the "
                f"{m_threshold:g} threshold; a larger --noise would not move m by that much.")
    return (f"the {interval.level:.0%} interval of m is ±{half:.3f}, wider than half the {m_threshold:g} threshold: "
            f"raise --noise (K) to {4 * noise} to narrow it by up to half, or raise --samples (M), which narrows it "
            f"too but also moves m (see --check-convergence).")


def nested_subsets(M: int, seed: int, fractions: Sequence[float] = (0.25, 0.5)) -> List[np.ndarray]:
    """Positions of nested random subsets of the M samples (each inside the next), sizes round(f M) >= 2."""
    order = np.random.default_rng([int(seed), 0x6E657374]).permutation(M)  # "nest"
    return [np.sort(order[: max(2, int(round(f * M)))]) for f in fractions]


def subset_progress(progress: Optional[Reporter], samples: int, total: int) -> Optional[Reporter]:
    """``progress`` for the re-estimate on a nested subset of ``samples`` of the ``total`` samples (summed over
    the buckets): the estimate's timesteps, reported as the ``convergence`` phase, saying which subset."""
    return within(progress, f"{samples} of {total} samples", phase="convergence")


def require_samples(M: int) -> None:
    """Refuse a convergence check on fewer than CONVERGENCE_MIN_SAMPLES samples (before any work is done)."""
    if M < CONVERGENCE_MIN_SAMPLES:
        raise VRCurveError(f"--check-convergence re-estimates on M/4 and M/2 of the samples, which needs M of at least "
                           f"{CONVERGENCE_MIN_SAMPLES}, got {M}; pass more --samples or drop --check-convergence.")


def check_convergence(full: Curve, full_cdf: np.ndarray, full_m: float,
                      estimate_subset: Callable[[np.ndarray], Curve], seed: int,
                      fractions: Sequence[float] = (0.25, 0.5),
                      uniform_mix: float = DEFAULT_UNIFORM_MIX) -> ConvergenceReport:
    """Compare the full estimate with estimates on nested subsets of its samples.

    Args:
        full: the estimate on all M samples; ``full_cdf`` and ``full_m`` its density's CDF and fitted m.
        estimate_subset: given positions into the M samples, estimates the curve on those samples only, with
            the same settings and the same noise per sample.
        seed: seeds the choice of the subsets.
        uniform_mix: the density floor of ``full_cdf``, applied to the subsets' densities too.
    """
    return check_convergence_pooled([full.samples], full_cdf, full_m, lambda pos: estimate_subset(pos[0]).variance,
                                    seed, fractions, uniform_mix=uniform_mix)


def pooled_variance(variances: Sequence[np.ndarray], shares: Sequence[float]) -> np.ndarray:
    """The pooled curve of resolution buckets: sum_b w_b max(V_b, 0) / mean(max(V_b, 0)), shape (T,) or (T, R).

    Each bucket's curve is normalised to mean 1 first, so the pooled curve's density is exactly the mixture
    of the buckets' densities weighted by their shares w_b of the data (``density_from_curve`` of it).
    """
    out = 0.0
    for V, w in zip(variances, shares):
        v = np.maximum(np.nan_to_num(np.asarray(V, dtype=np.float64), nan=0.0, posinf=0.0), 0.0)
        out = out + float(w) * v / v.mean(axis=0)
    return np.asarray(out)


def bootstrap_m_pooled(curves: Sequence[Curve], shares: Sequence[float], m_hat: float, *, replicates: int = 200,
                       seed: int = 0, level: float = BOOTSTRAP_LEVEL, uniform_mix: float = DEFAULT_UNIFORM_MIX,
                       progress: Optional[Reporter] = None) -> BootstrapInterval:
    """``bootstrap_m`` for the pooled density of resolution buckets: sources are resampled within each bucket
    (a stratified bootstrap: a bucket's share of the data is fixed, not drawn), the buckets' curves rebuilt and
    pooled (``pooled_variance``), mixed with the density floor ``uniform_mix``, and m refitted; ``progress``
    as for ``bootstrap_m``."""
    rng = _bootstrap_rng(seed)
    V = pooled_variance([_resampled_variance(curve, rng, replicates) for curve in curves], shares)
    return _interval(V, m_hat, level, uniform_mix, progress)


def check_convergence_pooled(sizes: Sequence[int], full_cdf: np.ndarray, full_m: float,
                             estimate_subsets: Callable[[List[np.ndarray]], np.ndarray], seed: int,
                             fractions: Sequence[float] = (0.25, 0.5),
                             uniform_mix: float = DEFAULT_UNIFORM_MIX) -> ConvergenceReport:
    """``check_convergence`` for resolution buckets: nested subsets of each bucket's M_b samples, the same
    fraction in every bucket (one bucket: ``check_convergence``).

    Args:
        sizes: (B,) the samples of each bucket.
        full_cdf, full_m: the pooled density's CDF and fitted m.
        estimate_subsets: given one array of positions per bucket, the pooled variance curve (T,) of those
            samples, with the same settings and noise.
        uniform_mix: the density floor of ``full_cdf``, applied to the subsets' densities too.
    """
    from .fit import fit_logitnormal

    for M in sizes:
        require_samples(M)
    nested = [nested_subsets(M, seed, fractions) for M in sizes]
    rows = []
    for j in range(len(fractions)):
        pos = [n[j] for n in nested]
        cdf = density_from_curve(estimate_subsets(pos), uniform_mix=uniform_mix).cdf
        rows.append(ConvergenceRow(samples=sum(len(p) for p in pos), ks_to_full=ks_between_cdfs(cdf, full_cdf),
                                   m=fit_logitnormal(cdf).m))
    rows.append(ConvergenceRow(samples=int(sum(sizes)), ks_to_full=0.0, m=full_m))
    half = rows[-2]
    settled = (_within(half.ks_to_full, KS_SETTLED, KS_DIGITS)[0]
               and _within(abs(half.m - full_m), M_SETTLED, M_DIGITS)[0])
    return ConvergenceReport(rows=tuple(rows), settled=settled, m_drift_per_doubling=drift_per_doubling(rows))
