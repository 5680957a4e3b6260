import math

import numpy as np
import pytest
import torch
from reference import antipodal_separation, direct_estimate

from vrcurve.errors import VRCurveError
from vrcurve.estimator import estimate, gram, source_noise, timestep_grid
from vrcurve.schedulers import CosineScheduler, DiffusionScheduler, LinearScheduler

SCHEDULERS = {"linear": LinearScheduler(), "linear-shift3": LinearScheduler(3.0), "cosine": CosineScheduler(),
              "diffusion": DiffusionScheduler()}


@pytest.fixture(scope="module")
def small_data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 5, generator=g, dtype=torch.float64) * 0.7 + 0.2


@pytest.mark.parametrize("likelihood", ["mean", "sum"])
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_gram_form_equals_direct(small_data, name, likelihood):
    sched = SCHEDULERS[name]
    K, T = 7, 24
    # chunk_size 5 splits sources across chunks, which must not matter either.
    curve = estimate(small_data, sched, noise=K, timesteps=T, seed=3, likelihood=likelihood, chunk_size=5,
                     dtype=torch.float64, noise_space="ambient")
    S, tr, S_src, tr_src = direct_estimate(small_data, sched, noise=K, timesteps=T, seed=3, likelihood=likelihood)
    np.testing.assert_allclose(curve.S, S, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(curve.trcov, tr, rtol=1e-6, atol=1e-12)
    h2 = sched.h(torch.from_numpy(curve.t)).numpy() ** 2
    np.testing.assert_allclose(curve.h2, h2, rtol=1e-12)
    np.testing.assert_allclose(curve.variance, h2 * tr, rtol=1e-6, atol=1e-12)
    M = small_data.shape[0]
    np.testing.assert_allclose(curve.S_stderr, S_src.std(1, ddof=1) / math.sqrt(M), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(curve.variance_stderr, h2 * tr_src.std(1, ddof=1) / math.sqrt(M), rtol=1e-5, atol=1e-12)


def test_paper_form_is_h2_one_minus_S(small_data):
    cov = estimate(small_data, LinearScheduler(), noise=4, timesteps=16, form="covariance", dtype=torch.float64)
    paper = estimate(small_data, LinearScheduler(), noise=4, timesteps=16, form="paper", dtype=torch.float64)
    np.testing.assert_allclose(paper.S, cov.S)
    np.testing.assert_allclose(paper.variance, paper.h2 * (1 - paper.S))
    np.testing.assert_allclose(paper.variance_stderr, paper.h2 * paper.S_stderr)


def test_float32_engine_matches_float64(small_data):
    a = estimate(small_data, CosineScheduler(), noise=16, timesteps=40, dtype=torch.float64)
    b = estimate(small_data.float(), CosineScheduler(), noise=16, timesteps=40)
    np.testing.assert_allclose(b.variance, a.variance, rtol=2e-4, atol=1e-7)


def test_antipodal_points_closed_form():
    d = 4
    v = torch.ones(d, dtype=torch.float64)  # ||v||^2 = d
    x = torch.stack([v, -v])
    sched = LinearScheduler()
    curve = estimate(x, sched, noise=20000, timesteps=30, likelihood="sum", seed=5)
    tt = torch.from_numpy(curve.t)
    r = (sched.alpha(tt) / sched.sigma(tt)).numpy()
    expected = antipodal_separation(r, d)
    # tanh^2 lies in [0, 1]: its standard deviation is at most 1/2, so 40,000 queries give a standard error
    # below 0.0025; the tolerance is four of them.
    assert np.max(np.abs(curve.S - expected)) < 0.01
    assert expected.min() < 0.1 and expected.max() > 0.9  # the grid covers the whole transition


def test_gaussian_data_closed_form():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1000, 1, generator=g, dtype=torch.float64)
    x = (x - x.mean()) / x.std(unbiased=False)
    sched = LinearScheduler()
    curve = estimate(x, sched, noise=4, timesteps=20, likelihood="sum", seed=2)
    a, m = sched.alpha(torch.from_numpy(curve.t)), sched.sigma(torch.from_numpy(curve.t))
    expected = (a**2 / (a**2 + m**2)).numpy()
    assert np.max(np.abs(curve.S - expected)) < 0.03
    # and tr Cov/d = 1 - S for zero-mean, unit-variance data: the two forms agree up to Monte Carlo error
    assert np.max(np.abs(curve.trcov - (1 - expected))) < 0.03


def test_chunk_size_and_threads_do_not_matter():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 30, generator=g)
    ref = estimate(x, LinearScheduler(), noise=9, timesteps=50, seed=4)
    threads = torch.get_num_threads()
    try:
        for chunk in (1, 7, 9, 40, 10_000):
            torch.set_num_threads(1 if chunk % 2 else max(2, threads))
            c = estimate(x, LinearScheduler(), noise=9, timesteps=50, seed=4, chunk_size=chunk)
            np.testing.assert_allclose(c.variance, ref.variance, rtol=1e-5, atol=1e-9)
            np.testing.assert_allclose(c.S, ref.S, rtol=1e-5, atol=1e-9)
    finally:
        torch.set_num_threads(threads)


def test_sample_order_does_not_matter():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 20, generator=g)
    ids = np.arange(100, 110)
    ref = estimate(x, CosineScheduler(), noise=5, timesteps=30, source_ids=ids)
    perm = torch.randperm(10, generator=g)
    c = estimate(x[perm], CosineScheduler(), noise=5, timesteps=30, source_ids=ids[perm.numpy()])
    np.testing.assert_allclose(c.variance, ref.variance, rtol=1e-5, atol=1e-9)
    # row j of the permuted run is source perm[j]: the same per-source values, to float32 round-off
    np.testing.assert_allclose(c.per_source_S, ref.per_source_S[:, perm.numpy()], rtol=1e-5, atol=1e-9)
    # the standard error is a spread of values near S: its round-off is that of S, not of itself
    np.testing.assert_allclose(c.S_stderr, ref.S_stderr, rtol=1e-4, atol=1e-6 * np.abs(ref.S).max())
    other = estimate(x, CosineScheduler(), noise=5, timesteps=30, source_ids=ids, seed=1)
    assert np.max(np.abs(other.variance - ref.variance)) > 1e-4  # the seed does change the draw


def test_noise_depends_only_on_seed_and_source():
    a = source_noise(3, 17, 5, 8)
    b = source_noise(3, 17, 5, 8)
    assert torch.equal(a, b)
    assert not torch.equal(a, source_noise(3, 18, 5, 8))
    assert not torch.equal(a, source_noise(4, 17, 5, 8))


def test_gram_quantities():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 9, generator=g)
    G, n, D = gram(x)
    x64 = x.double()
    torch.testing.assert_close(D, torch.cdist(x64, x64) ** 2, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(n, (x64**2).sum(1))
    assert torch.all(torch.diagonal(D) == 0)


def test_timestep_grid_is_bin_midpoints():
    t = timestep_grid(4)
    np.testing.assert_array_equal(t, [0.125, 0.375, 0.625, 0.875])


def test_bad_arguments():
    x = torch.randn(4, 3)
    with pytest.raises(VRCurveError, match="at least 2 samples"):
        estimate(x[:1], LinearScheduler(), noise=2, timesteps=4)
    with pytest.raises(VRCurveError, match="unknown likelihood"):
        estimate(x, LinearScheduler(), noise=2, timesteps=4, likelihood="max")
    with pytest.raises(VRCurveError, match="unknown form"):
        estimate(x, LinearScheduler(), noise=2, timesteps=4, form="other")
    with pytest.raises(VRCurveError, match="unknown noise space"):
        estimate(x, LinearScheduler(), noise=2, timesteps=4, noise_space="latent")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_statistically():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 64, generator=g)
    cpu = estimate(x, LinearScheduler(), noise=64, timesteps=50)
    gpu = estimate(x, LinearScheduler(), noise=64, timesteps=50, device="cuda")
    # different generators draw different noise: agreement within Monte Carlo error
    assert np.max(np.abs(gpu.S - cpu.S) / (cpu.S_stderr + gpu.S_stderr + 1e-9)) < 6
