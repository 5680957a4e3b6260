import numpy as np
import pytest
import torch

from vrcurve.density import DEFAULT_UNIFORM_MIX, curve_cdf, density_from_curve, invert_cdf
from vrcurve.distribution import VRDistribution
from vrcurve.errors import VRCurveError


def _curve(T=200, seed=0):
    t = (np.arange(T) + 0.5) / T
    rng = np.random.default_rng(seed)
    return np.exp(-((t - 0.6) ** 2) / 0.02) + 0.05 * rng.random(T)


def test_pdf_integrates_to_one_and_cdf_is_its_integral():
    v = _curve()
    dens = density_from_curve(v, 1024, uniform_mix=0.0)
    T = len(v)
    assert dens.pdf.sum() / T == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(np.diff(dens.cdf) * T, dens.pdf, rtol=1e-9, atol=1e-12)
    assert dens.cdf[0] == 0.0 and dens.cdf[-1] == 1.0
    np.testing.assert_allclose(dens.pdf / dens.pdf.max(), v / v.max(), rtol=1e-12)


def test_icdf_table_inverts_cdf():
    v = _curve()
    dens = density_from_curve(v, 4096)
    T = len(v)
    u = np.arange(4097) / 4096
    cdf_at = np.interp(dens.icdf, np.arange(T + 1) / T, dens.cdf)
    np.testing.assert_allclose(cdf_at, u, atol=1e-12)
    assert np.all(np.diff(dens.icdf) >= 0)
    assert dens.icdf[0] == 0.0 and dens.icdf[-1] == 1.0


def test_negative_values_are_clipped_and_empty_bins_skipped():
    v = np.array([0.0, 0.0, 1.0, -3.0, 2.0, 0.0, 1.0, 0.0])  # T = 8: bins 0, 1, 3, 5, 7 are empty
    dens = density_from_curve(v, 64, uniform_mix=0.0)
    np.testing.assert_allclose(dens.pdf, [0, 0, 2, 0, 4, 0, 2, 0])
    assert dens.icdf[0] == 2 / 8  # first non-empty bin starts at t = 0.25
    assert dens.icdf[-1] == 7 / 8  # last non-empty bin ends at t = 0.875
    edges = np.arange(9) / 8
    for empty in (0, 1, 3, 5, 7):  # no table value falls strictly inside an empty bin
        inside = (dens.icdf > edges[empty]) & (dens.icdf < edges[empty + 1])
        assert not inside.any(), empty
    np.testing.assert_allclose(np.interp(dens.icdf, edges, dens.cdf), np.arange(65) / 64, atol=1e-12)


def test_invert_cdf_single_bin():
    cdf = np.array([0.0, 0.0, 1.0, 1.0])  # all mass in the middle bin of three
    np.testing.assert_allclose(invert_cdf(cdf, np.array([0.0, 0.5, 1.0])), [1 / 3, 0.5, 2 / 3])


def test_zero_curve_is_refused():
    with pytest.raises(VRCurveError, match="zero everywhere"):
        density_from_curve(np.zeros(10))
    with pytest.raises(VRCurveError, match="zero everywhere"):
        density_from_curve(-np.ones(10))


# --- the density floor (uniform mix) --------------------------------------------------------------------------

@pytest.mark.parametrize("lam", [0.0, 0.02, 0.3])
def test_floor_is_the_mixture_in_closed_form(lam):
    v = _curve()
    T = len(v)
    pure = density_from_curve(v, 512, uniform_mix=0.0)
    mixed = density_from_curve(v, 512, uniform_mix=lam)
    np.testing.assert_allclose(mixed.pdf, (1 - lam) * pure.pdf + lam, rtol=1e-12)
    np.testing.assert_allclose(mixed.cdf, (1 - lam) * pure.cdf + lam * np.arange(T + 1) / T, atol=1e-15)
    np.testing.assert_allclose(np.diff(mixed.cdf) * T, mixed.pdf, rtol=1e-9)
    np.testing.assert_array_equal(curve_cdf(v, uniform_mix=lam), mixed.cdf)
    # the icdf table is the inverse of the mixed CDF (the floor is applied before the inversion)
    np.testing.assert_allclose(np.interp(mixed.icdf, np.arange(T + 1) / T, mixed.cdf), np.arange(513) / 512, atol=1e-12)
    # KS distance to the unmixed CDF is lam * sup |t - F(t)| <= lam
    assert np.max(np.abs(mixed.cdf - pure.cdf)) <= lam + 1e-15


def test_default_floor():
    v = _curve()
    assert DEFAULT_UNIFORM_MIX == 0.02
    np.testing.assert_array_equal(density_from_curve(v).pdf, density_from_curve(v, uniform_mix=0.02).pdf)


def test_floor_makes_every_bin_reachable_and_weights_bounded():
    # a curve with exactly empty bins and bins a thousand times below the peak (as on a small run)
    v = np.array([0.0, 0.0, 1.0, -3.0, 2.0, 0.0, 1e-3, 0.0, 5.0, 0.0])
    T, lam = len(v), 0.05
    dens = density_from_curve(v, 4096, uniform_mix=lam)
    assert dens.pdf.min() == pytest.approx(lam) and np.all(np.diff(dens.cdf) > 0)
    dist = VRDistribution(dens.pdf, dens.cdf, dens.icdf)
    gen = torch.Generator().manual_seed(0)
    n = 400_000
    t = dist.sample(n, generator=gen, dtype=torch.float64)
    counts = np.bincount((t.numpy() * T).astype(int).clip(0, T - 1), minlength=T)
    assert np.all(counts > 0)  # every bin, the empty ones included, is drawn
    # each bin is drawn with its probability pdf / T, within 5 binomial standard errors
    p = dens.pdf / T
    assert np.all(np.abs(counts / n - p) <= 5 * np.sqrt(p * (1 - p) / n))
    w = dist.weights(t)
    assert float(w.max()) <= 1 / lam + 1e-9
    # unbiased: E_pi[1 / pi] = 1, within 5 Monte Carlo standard errors
    assert abs(float(w.mean()) - 1.0) <= 5 * float(w.std()) / np.sqrt(n)
    # and weighting undoes the density: E_pi[w(t) g(t)] = integral of g over [0, 1]
    g = torch.cos(3 * t)
    assert abs(float((w * g).mean()) - np.sin(3) / 3) <= 5 * float((w * g).std()) / np.sqrt(n)


def test_without_floor_empty_bins_have_infinite_weight_and_are_never_drawn():
    v = np.array([0.0, 1.0, 0.0, 1.0])
    dens = density_from_curve(v, 64, uniform_mix=0.0)
    dist = VRDistribution(dens.pdf, dens.cdf, dens.icdf)
    t = dist.sample(10_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert not ((t < 0.25) | ((t > 0.5) & (t < 0.75))).any()
    assert float(dist.weights(torch.tensor([0.1]))) == float("inf")


@pytest.mark.parametrize("lam", [-0.1, 1.0, float("nan")])
def test_floor_out_of_range_is_refused(lam):
    with pytest.raises(VRCurveError, match="--uniform-mix must be a share in"):
        density_from_curve(_curve(), uniform_mix=lam)


def test_u_of_one_maps_to_the_end_of_the_last_non_empty_bin_in_any_shape():
    """Trailing empty bins are never drawn: u = 1 gives the right edge of the last bin with mass, for a scalar u
    (shape kept) and a vector alike."""
    cdf = torch.tensor([0.0, 0.25, 0.5, 1.0, 1.0, 1.0], dtype=torch.float64)  # bins 3 and 4 are empty
    one = invert_cdf(cdf, torch.tensor(1.0, dtype=torch.float64))
    assert one.shape == () and float(one) == 3 / 5
    np.testing.assert_allclose(invert_cdf(cdf, torch.tensor([1.0, 0.5], dtype=torch.float64)).numpy(), [3 / 5, 2 / 5])
