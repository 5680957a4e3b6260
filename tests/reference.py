"""A slow, direct implementation of the Monte Carlo estimator (docs/estimator.md), for checking the Gram-form engine.

Every query q = x_i + s_t eps is built in R^d and its squared distances to the samples are computed
directly; the posterior mean and covariance come from their definitions. float64 throughout, and the same
noise draws as the engine's ambient noise (``vrcurve.estimator.source_noise`` in R^d), or any noise given.
"""

import math

import numpy as np
import torch

from vrcurve.estimator import source_noise, timestep_grid


def direct_estimate(x, scheduler, *, noise, timesteps, seed=0, likelihood="mean", source_ids=None, noises=None):
    """Per-timestep (S, trcov, S per source, trcov per source), each divided by d; arrays of shape (T,) / (T, M).

    ``noises``: (M, K, d) noise of each source's queries; by default ``source_noise(seed, id, K, d)``, the
    engine's draw in R^d (its ``noise_space="ambient"``).
    """
    x = torch.as_tensor(x, dtype=torch.float64).reshape(len(x), -1)
    M, d = x.shape
    ids = range(M) if source_ids is None else source_ids
    tau = float(d) if likelihood == "mean" else 1.0
    if noises is None:
        noises = torch.stack([source_noise(seed, int(i), noise, d) for i in ids])
    eps = torch.as_tensor(noises).to(torch.float64)  # (M, K, d)
    t = torch.from_numpy(timestep_grid(timesteps))
    s = (scheduler.sigma(t) / scheduler.alpha(t)).tolist()
    sep = np.zeros((timesteps, M))
    tr = np.zeros((timesteps, M))
    for k, st in enumerate(s):
        q = x[:, None, :] + st * eps  # (M, K, d): the queries in R^d
        dist = ((q[:, :, None, :] - x[None, None, :, :]) ** 2).sum(-1)  # (M, K, M)
        w = torch.softmax(-dist / (2 * st * st * tau), dim=-1)
        mean = w @ x  # (M, K, d) posterior means
        cov_tr = (w * ((x[None, None, :, :] - mean[:, :, None, :]) ** 2).sum(-1)).sum(-1)  # sum_j w_j ||x_j - E||^2
        sep[k] = ((mean**2).sum(-1)).mean(1).numpy() / d
        tr[k] = cov_tr.mean(1).numpy() / d
    return sep.mean(1), tr.mean(1), sep, tr


def antipodal_separation(r, d, nodes=200):
    """E_z[tanh^2(r^2 d + r sqrt(d) z)], z ~ N(0, 1), by Gauss-Hermite quadrature."""
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / math.sqrt(2 * math.pi)
    return np.array([np.sum(w * np.tanh(ri * ri * d + ri * math.sqrt(d) * z) ** 2) for ri in np.atleast_1d(r)])
