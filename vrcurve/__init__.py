"""vrcurve: variance-reduction timestep sampling for flow-matching and diffusion training.

Training code needs one line (t = 0 is noise, t = 1 is data):

    t = vrcurve.load("vr.safetensors").sample(batch_size, device=x.device)

``load`` and ``VRDistribution`` are imported on first use (PEP 562), and bring torch, numpy and safetensors
only; the command line lives in ``vrcurve.cli``. Importing the package itself imports nothing heavy, so that
the command line can start, and be interrupted while it loads torch, without a traceback.
"""

from ._version import __version__
from .errors import VRCurveError

__all__ = ["__version__", "load", "VRDistribution", "VRCurveError"]


def __getattr__(name):
    if name in ("load", "VRDistribution"):
        from . import distribution

        return getattr(distribution, name)
    raise AttributeError(f"module 'vrcurve' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
