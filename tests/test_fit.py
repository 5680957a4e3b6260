import numpy as np
import pytest
from scipy.stats import norm

from vrcurve.density import density_from_curve
from vrcurve.fit import GRID, fit_logitnormal, ks_distance


def logitnormal_cdf_on_edges(m, s, T=1000):
    """The CDF of a binned logit-normal(m, s): exact on the bin edges."""
    edges = np.arange(T + 1) / T
    with np.errstate(divide="ignore"):
        z = (np.log(edges) - np.log1p(-edges) - m) / s
    return norm.cdf(z)


@pytest.mark.parametrize("m0", [-1.3, 0.0, 0.42, 1.9])
def test_recovers_the_location_of_a_logitnormal(m0):
    fit = fit_logitnormal(logitnormal_cdf_on_edges(m0, 1.0))
    assert fit.m_continuous == pytest.approx(m0, abs=0.005)
    assert fit.m == fit.m_continuous and fit.s == 1.0
    assert fit.m_grid == GRID[np.argmin(np.abs(GRID - m0))]
    assert fit.ks < 2e-3  # the binned CDF is exact on edges and linear between them
    assert fit.ks_grid.shape == GRID.shape and fit.ks_grid.min() == fit.ks_grid_best


def test_fit_scale_recovers_m_and_s():
    fit = fit_logitnormal(logitnormal_cdf_on_edges(0.7, 1.6), fit_scale=True)
    assert fit.m == pytest.approx(0.7, abs=0.01)
    assert fit.s == pytest.approx(1.6, abs=0.01)
    assert fit.ks <= fit.ks_continuous


def test_ks_distance_of_a_uniform():
    # uniform t vs logit-normal(0, 1): both symmetric about 1/2, so they cross there; the sup is known
    T = 1000
    cdf = np.arange(T + 1) / T
    t = np.linspace(1e-6, 1 - 1e-6, 200001)
    expected = np.max(np.abs(t - norm.cdf(np.log(t / (1 - t)))))
    assert ks_distance(cdf, 0.0, 1.0) == pytest.approx(expected, abs=1e-5)


def test_fit_on_a_density_from_a_curve():
    T = 500
    t = (np.arange(T) + 0.5) / T
    m0 = -0.8
    pdf = norm.pdf((np.log(t / (1 - t)) - m0)) / (t * (1 - t))  # logit-normal density at midpoints
    fit = fit_logitnormal(density_from_curve(pdf, uniform_mix=0.0).cdf)
    assert fit.m == pytest.approx(m0, abs=0.01)
