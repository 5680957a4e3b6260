import math

import numpy as np
import pytest
import torch
from scipy.stats import kstest

import vrcurve
from vrcurve.density import density_from_curve
from vrcurve.distribution import VRDistribution


def _dist(T=100, with_empty=False):
    t = (np.arange(T) + 0.5) / T
    v = np.exp(-((t - 0.3) ** 2) / 0.01) + 0.3 * np.exp(-((t - 0.8) ** 2) / 0.002) + 0.05
    if with_empty:
        v[:10] = 0
        v[50:60] = 0
    d = density_from_curve(v, 4096, uniform_mix=0.0)  # the empty bins stay empty
    return VRDistribution(d.pdf, d.cdf, d.icdf, meta={"logitnormal_m": 0.25, "logitnormal_s": 1.0})


def test_loaded_artifact_matches_its_tensors(tiny_artifact):
    dist = vrcurve.load(tiny_artifact)
    T = dist.timesteps
    assert T == 100
    t = torch.from_numpy(dist.arrays["t"]).double()
    torch.testing.assert_close(dist.pdf(t), torch.from_numpy(dist.arrays["pdf"]).double())
    edges = torch.arange(T + 1, dtype=torch.float64) / T
    torch.testing.assert_close(dist.cdf(edges), torch.from_numpy(dist.arrays["cdf"]).double())
    assert dist.logitnormal_m == pytest.approx(dist.meta["logitnormal_m"])


def test_icdf_and_its_table_invert_cdf():
    dist = _dist(with_empty=True)
    u = torch.arange(4097, dtype=torch.float64) / 4096
    torch.testing.assert_close(dist.cdf(dist.icdf_table), u, atol=1e-12, rtol=0)
    torch.testing.assert_close(dist.icdf(u), dist.icdf_table, atol=1e-12, rtol=0)
    r = torch.rand(10_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(dist.cdf(dist.icdf(r)), r, atol=1e-12, rtol=0)
    assert torch.all(dist.pdf(dist.icdf(r)) > 0)  # never inside an empty bin


@pytest.mark.parametrize("with_empty", [False, True])
def test_samples_pass_a_ks_test(with_empty):
    dist = _dist(with_empty=with_empty)
    g = torch.Generator().manual_seed(0)
    t = dist.sample(1_000_000, generator=g, dtype=torch.float64)
    assert t.shape == (1_000_000,) and t.dtype == torch.float64
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    stat = kstest(t.numpy(), lambda x: dist.cdf(torch.from_numpy(x)).numpy()).statistic
    assert stat < 1.95 / math.sqrt(1_000_000)  # the 0.1% critical value
    if with_empty:
        assert not ((t < 0.1) | ((t > 0.5) & (t < 0.6))).any()


def test_sample_dtype_device_and_generator():
    dist = _dist()
    a = dist.sample(1000, generator=torch.Generator().manual_seed(3))
    b = dist.sample(1000, generator=torch.Generator().manual_seed(3))
    assert a.dtype == torch.float32 and torch.equal(a, b)
    assert dist.sample(5, device="cpu", dtype=torch.bfloat16).dtype == torch.bfloat16


def test_flip_mirrors():
    dist = _dist(with_empty=True)
    flipped = dist.flip()
    t = torch.rand(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(flipped.cdf(t), 1 - dist.cdf(1 - t), atol=1e-12, rtol=0)
    off_edges = (torch.arange(100, dtype=torch.float64) + 0.5) / 100
    torch.testing.assert_close(flipped.pdf(off_edges), dist.pdf(1 - off_edges))
    u = torch.linspace(0, 1, 513, dtype=torch.float64)
    torch.testing.assert_close(flipped.icdf(u), 1 - dist.icdf(1 - u), atol=1e-12, rtol=0)
    assert flipped.convention == "t1_noise" and flipped.logitnormal_m == -dist.logitnormal_m
    back = flipped.flip()
    assert back.convention == "t0_noise"
    torch.testing.assert_close(back.cdf(t), dist.cdf(t), atol=1e-12, rtol=0)


def test_weights_integrate_to_one_against_pdf():
    dist = _dist()
    T = dist.timesteps
    mid = (torch.arange(T, dtype=torch.float64) + 0.5) / T
    assert float((dist.weights(mid) * dist.pdf(mid)).sum() / T) == pytest.approx(1.0, abs=1e-12)
    # importance weighting is unbiased: E_pi[w(t) f(t)] = integral of f over [0, 1]
    t = dist.sample(400_000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    est = float((dist.weights(t) * t**2).mean())
    assert est == pytest.approx(1 / 3, abs=0.01)


def test_sample_indices_follow_the_noise_level():
    dist = _dist()
    idx = dist.sample_indices(200_000, num_train_timesteps=1000, generator=torch.Generator().manual_seed(0))
    assert idx.dtype == torch.long and int(idx.min()) >= 0 and int(idx.max()) <= 999
    # index i covers noise level [i/N, (i+1)/N), i.e. vrcurve t in (1 - (i+1)/N, 1 - i/N]
    hist = torch.bincount(idx, minlength=1000).double() / 200_000
    N = 1000
    edges = torch.arange(N + 1, dtype=torch.float64) / N
    expected = dist.cdf(1 - edges[:-1]) - dist.cdf(1 - edges[1:])
    assert float((hist - expected).abs().sum()) < 0.05
    # the flipped distribution gives the same index distribution
    idx2 = dist.flip().sample_indices(200_000, generator=torch.Generator().manual_seed(0))
    assert abs(float(idx.double().mean() - idx2.double().mean())) < 2.0


def test_pdf_outside_unit_interval_is_zero():
    dist = _dist()
    assert torch.all(dist.pdf(torch.tensor([-0.1, 1.1])) == 0)
