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
