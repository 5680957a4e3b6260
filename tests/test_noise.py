"""The engine's noise in the span of the samples (vrcurve.engine.noise) against noise in R^d.

P = Z R with R^T R = G has rows N(0, G), exactly the law of eps X^T: the two noise spaces must give the
same curve in distribution, the span path must equal the direct float64 reference on the noise it stands
for (eps = Z R G^+ X), rank-deficient G included, and its logit bound must hold and be the tighter one.
"""

import math

import numpy as np
import pytest
import torch
from reference import direct_estimate

from vrcurve.engine.noise import Projector, ambient_basis, span_factor
from vrcurve.estimator import estimate, gram, source_noise
from vrcurve.schedulers import CosineScheduler, LinearScheduler


def _data(M, d, seed, dtype=torch.float64):
    return torch.randn(M, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("M, d", [(6, 40), (12, 3), (5, 5)])
def test_span_factor_is_a_square_root_of_G(M, d):
    x = _data(M, d, M + d)
    G = gram(x)[0]
    f = span_factor(G)
    assert f.rank == min(M, d)
    torch.testing.assert_close(f.root.T @ f.root, G, rtol=0, atol=1e-10 * float(G.diagonal().max()))
    if f.rank < M:  # the range of G, orthonormal, holds every row of the root
        assert f.span.shape == (M, f.rank)
        torch.testing.assert_close(f.span.T @ f.span, torch.eye(f.rank, dtype=torch.float64), rtol=0, atol=1e-12)
        torch.testing.assert_close(f.span @ (f.span.T @ f.root), f.root, rtol=0, atol=1e-10)
    else:
        assert f.span is None


def test_repeated_samples_are_rank_deficient():
    x = _data(4, 30, 1)
    x = torch.cat([x, x[:2]])  # 6 samples, rank 4
    f = span_factor(gram(x)[0])
    assert f.rank == 4
    torch.testing.assert_close(f.root.T @ f.root, gram(x)[0], rtol=0, atol=1e-9)


def test_span_factor_follows_the_ids_not_the_row_order():
    x, ids = _data(7, 20, 2), np.array([40, 3, 17, 8, 99, 1, 25])
    perm = np.array([3, 0, 6, 1, 5, 2, 4])
    a = span_factor(gram(x)[0], ids)
    b = span_factor(gram(x[perm])[0], ids[perm])
    # the same root, its columns (samples) in the new order: each source's draw is unchanged
    torch.testing.assert_close(b.root, a.root[:, perm], rtol=0, atol=1e-12)


@pytest.mark.parametrize("M, d, likelihood", [(6, 40, "mean"), (6, 40, "sum"), (10, 3, "sum"), (10, 3, "mean")])
def test_span_noise_equals_direct_on_the_noise_it_stands_for(M, d, likelihood):
    """eps_q = z_q R G^+ X has eps_q X^T = z_q R: the direct float64 reference in R^d on that noise gives the
    engine's span-noise curve (M > d: rank-deficient G)."""
    x = _data(M, d, 5) * 0.8 + 0.1
    ids, K, T, seed = np.arange(10, 10 + M), 5, 20, 4
    sched = CosineScheduler()
    G = gram(x)[0]
    root = span_factor(G, ids).root
    to_samples = root @ torch.linalg.pinv(G, hermitian=True) @ x  # (M, d): z -> eps
    noises = torch.stack([source_noise(seed, int(i), K, M).double() @ to_samples for i in ids])
    S, tr, _, _ = direct_estimate(x, sched, noise=K, timesteps=T, seed=seed, likelihood=likelihood, source_ids=ids,
                                  noises=noises)
    curve = estimate(x, sched, noise=K, timesteps=T, seed=seed, likelihood=likelihood, source_ids=ids,
                     dtype=torch.float64, chunk_size=3)
    assert curve.noise_space == "span"
    np.testing.assert_allclose(curve.S, S, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(curve.trcov, tr, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("M, d, likelihood", [(24, 60, "mean"), (16, 4, "sum")])
def test_span_and_ambient_noise_agree_in_distribution(seed, M, d, likelihood):
    """Independent draws of the two spaces: S_t and V(t) within Monte Carlo error (their standard errors
    over sources) at every timestep, for several seeds; the draws themselves do differ."""
    x = _data(M, d, 100 + seed, torch.float32)
    kw = dict(noise=24, timesteps=30, seed=seed, likelihood=likelihood)
    span = estimate(x, LinearScheduler(), **kw)
    amb = estimate(x, LinearScheduler(), noise_space="ambient", **kw)
    for field, se in (("S", "S_stderr"), ("variance", "variance_stderr")):
        a, b = getattr(span, field), getattr(amb, field)
        err = np.sqrt(getattr(span, se) ** 2 + getattr(amb, se) ** 2) + 1e-9 * np.abs(b).max()
        assert np.max(np.abs(a - b) / err) < 5.0, field
    assert np.max(np.abs(span.S - amb.S)) > 1e-6  # not the same draw


def test_the_span_bound_holds_and_is_tighter():
    """Every logit of a query, at any s, is at most (P_qj - P_qi)^2 / (2 tau D_ij) (its largest over s), and
    that is at most ||z_q U_r||^2 / (2 tau), the span bound; the ambient bound ||eps||^2 / (2 tau) is about
    d / M times larger for d >> M."""
    M, d, K, tau = 8, 400, 50, 1.0
    x = _data(M, d, 9, torch.float32)
    _, _, D = gram(x)
    f = span_factor(gram(x)[0])
    ids = np.arange(M)
    with Projector(f.root.float(), 0, ids, tau, K) as span, Projector(ambient_basis(x), 0, ids, tau, K) as ambient:
        for i in range(M):
            P, bound = span(i, i + 1)
            off = torch.ones(M, dtype=torch.bool)
            off[i] = False
            peak = (P[0].double()[:, off] ** 2 / (2 * tau * D[i, off])).max()  # max over s of each logit
            assert float(peak) <= bound * (1 + 1e-5)
            _, wide = ambient(i, i + 1)
            assert wide > bound * d / M / 4
    z = source_noise(0, M - 1, K, M)
    assert bound == pytest.approx(float((z**2).sum(-1).max()) / (2 * tau), rel=1e-5)  # r = M: ||z||^2 itself


def test_span_noise_does_not_depend_on_d_beyond_G():
    """Two data sets with the same Gram matrix (one a rotation of the other, in another d) give the same
    curve to round-off: after G nothing depends on d."""
    x = _data(10, 12, 3)
    Q, _ = torch.linalg.qr(torch.randn(40, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    y = x @ Q.T  # (10, 40): the same inner products
    kw = dict(noise=8, timesteps=25, seed=1, likelihood="sum", dtype=torch.float64)
    a, b = estimate(x, CosineScheduler(), **kw), estimate(y, CosineScheduler(), **kw)
    np.testing.assert_allclose(b.S * 40, a.S * 12, rtol=1e-6)
    np.testing.assert_allclose(b.trcov * 40, a.trcov * 12, rtol=1e-6, atol=1e-10)
    assert math.isclose(a.dim, 12) and math.isclose(b.dim, 40)
