import numpy as np
import pytest

from vrcurve.density import density_from_curve, invert_cdf
from vrcurve.errors import VRCurveError


def _curve(T=200, seed=0):
    t = (np.arange(T) + 0.5) / T
    rng = np.random.default_rng(seed)
    return np.exp(-((t - 0.6) ** 2) / 0.02) + 0.05 * rng.random(T)


def test_pdf_integrates_to_one_and_cdf_is_its_integral():
    v = _curve()
    dens = density_from_curve(v, 1024)
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
    dens = density_from_curve(v, 64)
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
