import numpy as np
import pytest
import torch

from vrcurve.convergence import KS_SETTLED, bootstrap_m, check_convergence, nested_subsets, variance_from_sources
from vrcurve.density import density_from_curve
from vrcurve.estimator import estimate
from vrcurve.fit import fit_logitnormal
from vrcurve.schedulers import LinearScheduler


def _data(M, d, seed):
    return torch.randn(M, d, generator=torch.Generator().manual_seed(seed))


def _median_stderr(M, K, seeds=5):
    runs = [estimate(_data(M, 2, s), LinearScheduler(), noise=K, timesteps=10, seed=s, precision="float32").S_stderr
            for s in range(seeds)]
    return float(np.median(np.mean(runs, axis=0)))


def test_stderr_shrinks_like_one_over_sqrt_mk():
    # Queries of one source are correlated, so stderr^2 = (between-source + within-source / K) / M: multiplying
    # M and K by 4 divides it by between 2 (between-source spread dominates) and 4 (1/sqrt(MK) exactly). The
    # documented tolerance is a factor 2 around 1/sqrt(MK): a ratio in [2, 8]. A median over 5 seeds: with 3,
    # the M-alone ratio (about 3.3-3.6 for either noise space) crossed 4 on one draw.
    small, large = _median_stderr(32, 4), _median_stderr(128, 16)
    assert 2.0 <= small / large <= 8.0
    # and more sources alone help: 1/sqrt(M) within the same factor
    assert 1.0 <= small / _median_stderr(128, 4) <= 4.0


def _check(x, likelihood, noise=8, timesteps=50):
    kw = dict(noise=noise, timesteps=timesteps, likelihood=likelihood, precision="float32")
    ids = np.arange(len(x))
    full = estimate(x, LinearScheduler(), source_ids=ids, **kw)
    cdf = density_from_curve(full.variance).cdf
    m = fit_logitnormal(cdf).m
    return check_convergence(full, cdf, m, lambda pos: estimate(x[pos], LinearScheduler(), source_ids=ids[pos], **kw),
                             seed=0)


def test_convergence_flags_an_undersampled_case():
    report = _check(_data(16, 512, 1), "sum")  # a handful of samples in 512 dimensions
    assert not report.settled
    assert [r.samples for r in report.rows] == [4, 8, 16]
    assert report.rows[-2].ks_to_full > KS_SETTLED
    assert "NOT settled" in report.message() and "--samples" in report.message()


def test_convergence_passes_a_well_sampled_case():
    report = _check(_data(400, 2, 1), "sum")  # many samples of a 2-D Gaussian
    assert report.settled, report.message()
    assert report.rows[-1].ks_to_full == 0.0 and report.rows[-2].ks_to_full <= KS_SETTLED
    meta = report.as_metadata()
    assert meta["settled"] is True and [r["samples"] for r in meta["rows"]] == [100, 200, 400]


def test_nested_subsets_are_nested_and_seeded():
    a, b = nested_subsets(40, seed=3)
    assert len(a) == 10 and len(b) == 20 and set(a) <= set(b)
    a2, _ = nested_subsets(40, seed=3)
    assert np.array_equal(a, a2) and not np.array_equal(a, nested_subsets(40, seed=4)[0])


def test_variance_from_sources_reproduces_the_curve():
    c = estimate(_data(12, 6, 0), LinearScheduler(), noise=4, timesteps=30)
    w = np.full(12, 1 / 12)
    np.testing.assert_allclose(variance_from_sources(c.per_source_S, c.per_source_trcov, c.h2, "covariance", w),
                               c.variance, rtol=1e-12)
    np.testing.assert_allclose(variance_from_sources(c.per_source_S, c.per_source_trcov, c.h2, "paper", w),
                               c.h2 * (1 - c.S), rtol=1e-12)


def test_bootstrap_interval_covers_the_fit_and_narrows_with_more_sources():
    def interval(M):
        c = estimate(_data(M, 16, 2), LinearScheduler(), noise=8, timesteps=100)
        m = fit_logitnormal(density_from_curve(c.variance).cdf).m
        return m, bootstrap_m(c, m, replicates=100, seed=0)

    m_small, small = interval(32)
    m_large, large = interval(256)
    for m, iv in ((m_small, small), (m_large, large)):
        assert iv.low <= m <= iv.high and iv.high > iv.low and iv.level == 0.9 and iv.replicates == 100
    assert large.high - large.low < small.high - small.low


def test_bootstrap_is_seeded():
    c = estimate(_data(20, 8, 0), LinearScheduler(), noise=4, timesteps=50)
    m = fit_logitnormal(density_from_curve(c.variance).cdf).m
    a, b = bootstrap_m(c, m, replicates=30, seed=1), bootstrap_m(c, m, replicates=30, seed=1)
    assert (a.low, a.high) == (b.low, b.high)
    assert bootstrap_m(c, m, replicates=30, seed=2).low != pytest.approx(a.low, abs=1e-9)


def test_drift_per_doubling_is_the_slope_in_log2_m():
    from vrcurve.convergence import ConvergenceRow, drift_per_doubling

    rows = [ConvergenceRow(samples=M, ks_to_full=0.0, m=0.2 + 0.05 * np.log2(M / 50)) for M in (50, 100, 200)]
    assert drift_per_doubling(rows) == pytest.approx(0.05, abs=1e-12)
    rows = [ConvergenceRow(50, 0.1, 0.0), ConvergenceRow(100, 0.05, 0.3), ConvergenceRow(200, 0.0, 0.3)]
    assert drift_per_doubling(rows) == pytest.approx(0.15, abs=1e-12)  # least squares through (0,0) (1,.3) (2,.3)


@pytest.mark.parametrize("ks, settled, shown", [(0.02004, True, "KS 0.0200 <= 0.02"), (0.02006, False, "KS 0.0201 > 0.02")])
def test_verdict_reads_like_the_printed_numbers(ks, settled, shown):
    from vrcurve import convergence

    full = estimate(_data(8, 2, 0), LinearScheduler(), noise=2, timesteps=10)
    fake = iter([0.1, ks])  # KS of the M/4 and M/2 densities to the full one

    def ks_between(a, b):
        return next(fake)

    cdf = density_from_curve(full.variance).cdf
    m = fit_logitnormal(cdf).m
    orig = convergence.ks_between_cdfs
    convergence.ks_between_cdfs = ks_between
    try:
        report = check_convergence(full, cdf, m, lambda pos: full, seed=0)  # every subset "estimates" the full curve
    finally:
        convergence.ks_between_cdfs = orig
    assert report.settled is settled
    assert shown in report.message() and "m by 0.000 <= 0.05" in report.message()
    assert report.message().startswith("settled: " if settled else "NOT settled: ")
    assert report.as_metadata()["m_drift_per_doubling"] == pytest.approx(0.0, abs=1e-12)


def test_not_settled_message_agrees_with_the_docs():
    report = _check(_data(16, 512, 1), "sum")
    text = report.message()
    assert "per doubling of M" in text and "compare densities only at the same M" in text
    assert "to see whether it settles" not in text  # the drift usually does not settle (docs/validation.md)
    assert f"{report.m_drift_per_doubling:+.3f}" in text


def test_noise_advice_follows_the_interval():
    from vrcurve.convergence import BootstrapInterval, noise_advice

    assert noise_advice(BootstrapInterval(0.24, 0.26, 0.006, 0.9, 200), 500).startswith("K=500 is enough")
    wide = noise_advice(BootstrapInterval(0.1, 0.2, 0.03, 0.9, 200), 50)
    assert "±0.050" in wide and "raise --noise (K) to 200" in wide
