"""Small valid artifacts for tests that write one by hand (``read_artifact`` refuses invalid ones)."""

import numpy as np

from vrcurve.artifact import TENSORS
from vrcurve.density import density_from_curve


def valid_tensors(T=10, U=16, seed=0):
    """An artifact's tensors: a density from a random positive curve, the rest random in [0, 1)."""
    rng = np.random.default_rng(seed)
    tensors = {name: rng.random(T) for name in TENSORS}
    density = density_from_curve(rng.random(T) + 0.1, U, uniform_mix=0.0)
    tensors.update(t=(np.arange(T) + 0.5) / T, pdf=density.pdf, cdf=density.cdf, icdf=density.icdf)
    return tensors


def valid_meta(**entries):
    """The metadata every artifact must have (the time convention and the fitted m), plus ``entries``."""
    return {"time_convention": "t0_noise", "logitnormal_m": 0.25, **entries}
