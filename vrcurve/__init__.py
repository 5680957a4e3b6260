"""vrcurve: variance-reduction timestep sampling for flow-matching and diffusion training.

Training code needs one line (t = 0 is noise, t = 1 is data):

    t = vrcurve.load("vr.safetensors").sample(batch_size, device=x.device)

Importing vrcurve loads torch, numpy and safetensors only, and only when ``load`` or ``VRDistribution`` is
first used (PEP 562), so that ``vrcurve --help`` and ``--version`` start without torch. The command line
lives in ``vrcurve.cli``.
"""

from typing import Any

from ._version import __version__
from .errors import VRCurveError

__all__ = ["__version__", "load", "VRDistribution", "VRCurveError"]


def __getattr__(name: str) -> Any:
    if name in ("load", "VRDistribution"):
        from . import distribution

        return getattr(distribution, name)
    raise AttributeError(f"module 'vrcurve' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
