"""vrcurve: variance-reduction timestep sampling for flow-matching and diffusion training.

Training code needs one line (t = 0 is noise, t = 1 is data):

    t = vrcurve.load("vr.safetensors").sample(batch_size, device=x.device)

Importing vrcurve loads torch, numpy and safetensors only; the command line lives in ``vrcurve.cli``.
"""

from ._version import __version__
from .distribution import VRDistribution, load
from .errors import VRCurveError

__all__ = ["__version__", "load", "VRDistribution", "VRCurveError"]
