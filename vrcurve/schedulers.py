"""Noise schedulers: the path x_t = a_t x1 + m_t eps (SPEC §2), with exact derivatives.

Time convention throughout vrcurve: t = 0 is pure noise, t = 1 is data. A scheduler gives the signal
coefficient a_t (``alpha``), the noise coefficient m_t (``sigma``) and their exact time derivatives; from
those follow

    h_t = a'_t - a_t m'_t / m_t        (the weight of x1 in the marginal velocity, SPEC §2)
    s_t = m_t / a_t                    (the noise scale of a query in data units, SPEC §2.1)

The definitions match facebookresearch/flow_matching (CondOT, Cosine, VP) and SiT (Linear, GVP, VP).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch

from .errors import VRCurveError

Tensor = torch.Tensor


class Scheduler:
    """Base class: subclasses implement ``alpha``, ``sigma``, ``d_alpha`` and ``d_sigma``.

    All methods take t of any shape (t = 0 noise, t = 1 data) and return a tensor of the same shape and
    dtype. Evaluate in float64 when the values feed a density.
    """

    name: str = "scheduler"

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def params(self) -> Dict[str, Any]:
        """The parameters that, with ``name``, rebuild this scheduler (recorded in the artifact)."""
        return {}

    def h(self, t: Tensor) -> Tensor:
        """h_t = a'_t - a_t m'_t / m_t; +inf where m_t = 0 (the data end, t = 1), never NaN there."""
        a, m, da, dm = self.alpha(t), self.sigma(t), self.d_alpha(t), self.d_sigma(t)
        safe_m = torch.where(m == 0, torch.ones_like(m), m)
        h = da - a * dm / safe_m
        return torch.where(m == 0, torch.full_like(h, math.inf), h)

    def s(self, t: Tensor) -> Tensor:
        """s_t = m_t / a_t, the query noise in data units; +inf where a_t = 0 (t = 0), 0 where m_t = 0."""
        a, m = self.alpha(t), self.sigma(t)
        safe_a = torch.where(a == 0, torch.ones_like(a), a)
        return torch.where(a == 0, torch.full_like(m, math.inf), m / safe_a)

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, **self.params()}


@dataclass(frozen=True)
class LinearScheduler(Scheduler):
    """Rectified flow / CondOT: a = t, m = 1 - t.

    With a timestep shift s (SD3/Flux), sigma = 1 - t is mapped to sigma' = s sigma / (1 + (s - 1) sigma)
    and a = 1 - sigma', m = sigma'. ``shift=1`` is the plain linear path.
    """

    shift: float = 1.0
    name = "linear"

    def __post_init__(self):
        if not (self.shift > 0 and math.isfinite(self.shift)):
            raise VRCurveError(f"--shift must be a positive number, got {self.shift}; use 1 for no shift.")

    def _sigma0(self, t):
        return 1.0 - t

    def sigma(self, t):
        s0 = self._sigma0(t)
        return self.shift * s0 / (1.0 + (self.shift - 1.0) * s0)

    def alpha(self, t):
        return 1.0 - self.sigma(t)

    def d_sigma(self, t):
        # d sigma'/d sigma = s / (1 + (s-1) sigma)^2 and d sigma / dt = -1.
        s0 = self._sigma0(t)
        return -self.shift / (1.0 + (self.shift - 1.0) * s0) ** 2

    def d_alpha(self, t):
        return -self.d_sigma(t)

    def params(self):
        return {"shift": float(self.shift)}


@dataclass(frozen=True)
class CosineScheduler(Scheduler):
    """Cosine path: a = sin(pi t / 2), m = cos(pi t / 2)."""

    name = "cosine"

    def alpha(self, t):
        return torch.sin(0.5 * math.pi * t)

    def sigma(self, t):
        # cos(pi/2) is 6e-17, not 0: pin the data end so that h and s see m = 0 exactly there.
        return torch.where(t == 1, torch.zeros_like(t), torch.cos(0.5 * math.pi * t))

    def d_alpha(self, t):
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)

    def d_sigma(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)


@dataclass(frozen=True)
class DiffusionScheduler(Scheduler):
    """Variance-preserving diffusion (DDPM-equivalent), in vrcurve time (t = 0 noise).

    B(t) = beta_min (1 - t) + (beta_max - beta_min) (1 - t)^2 / 2,  a = exp(-B/2),  m = sqrt(1 - exp(-B)).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    name = "diffusion"

    def __post_init__(self):
        if not (0 <= self.beta_min < self.beta_max and math.isfinite(self.beta_max)):
            raise VRCurveError(
                f"diffusion needs 0 <= beta_min < beta_max, got beta_min={self.beta_min}, "
                f"beta_max={self.beta_max}; the usual values are 0.1 and 20."
            )

    def _B(self, t):
        u = 1.0 - t
        return self.beta_min * u + 0.5 * (self.beta_max - self.beta_min) * u**2

    def _dB(self, t):
        return -self.beta_min - (self.beta_max - self.beta_min) * (1.0 - t)

    def alpha(self, t):
        return torch.exp(-0.5 * self._B(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(-self._B(t)))

    def d_alpha(self, t):
        return -0.5 * self._dB(t) * self.alpha(t)

    def d_sigma(self, t):
        # m' = exp(-B) B' / (2 m); infinite at t = 1 where m = 0 (m ~ sqrt(beta_min (1 - t))).
        m = self.sigma(t)
        num = torch.exp(-self._B(t)) * self._dB(t) * 0.5
        safe_m = torch.where(m == 0, torch.ones_like(m), m)
        return torch.where(m == 0, torch.full_like(m, -math.inf), num / safe_m)

    def h(self, t):
        # Closed form a'/m^2, finite everywhere but at t = 1, where it is +inf.
        m2 = -torch.expm1(-self._B(t))
        safe = torch.where(m2 == 0, torch.ones_like(m2), m2)
        return torch.where(m2 == 0, torch.full_like(m2, math.inf), self.d_alpha(t) / safe)

    def params(self):
        return {"beta_min": float(self.beta_min), "beta_max": float(self.beta_max)}


class CustomScheduler(Scheduler):
    """A user scheduler named ``module:object``.

    The object (or the class, which is instantiated without arguments) may be:
    - a vrcurve ``Scheduler``;
    - an object with methods ``alpha``, ``sigma``, ``d_alpha`` and ``d_sigma`` of t;
    - a callable ``obj(t)`` returning something with ``alpha_t``, ``sigma_t``, ``d_alpha_t`` and
      ``d_sigma_t`` (the facebookresearch/flow_matching ``Scheduler`` convention, where t = 0 is noise too).
    """

    name = "custom"

    def __init__(self, spec: str):
        self.spec = spec
        self._fns = _resolve_custom(spec)
        self._probe()

    def _probe(self) -> None:
        """Call the four functions once on a few timesteps, so that an object that is not a scheduler is
        refused now, in one sentence, rather than with a traceback deep inside the estimate."""
        t = torch.linspace(0.1, 0.9, 5, dtype=torch.float64)
        for name, fn in zip(("alpha", "sigma", "d_alpha", "d_sigma"), self._fns):
            try:
                value = fn(t.clone())
            except Exception as exc:  # the user's code: report it, do not crash
                raise VRCurveError(f"custom scheduler {self.spec} fails when asked for {name} of a tensor of "
                                   f"timesteps ({type(exc).__name__}: {exc}); it must map a tensor t of shape (T,) "
                                   "to a tensor of the same shape.") from None
            if not isinstance(value, Tensor) or value.shape != t.shape:
                got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
                raise VRCurveError(f"custom scheduler {self.spec} gives {got} for {name} of 5 timesteps; it must map "
                                   "a tensor t of shape (T,) to a tensor of the same shape.")

    def alpha(self, t):
        return self._fns[0](t)

    def sigma(self, t):
        return self._fns[1](t)

    def d_alpha(self, t):
        return self._fns[2](t)

    def d_sigma(self, t):
        return self._fns[3](t)

    def params(self):
        return {"object": self.spec}


def _resolve_custom(spec: str):
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise VRCurveError(
            f"custom scheduler {spec!r} is not of the form module:object; "
            "pass e.g. --scheduler custom --custom my_schedules:CondOT."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise VRCurveError(
            f"cannot import module {module_name!r} for the custom scheduler ({exc}); "
            "check that it is on PYTHONPATH."
        ) from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise VRCurveError(f"module {module_name!r} has no attribute {attr!r}; check the name after the colon.")
        obj = getattr(obj, part)
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:  # the user's constructor: report, do not crash
            raise VRCurveError(f"cannot instantiate {spec} without arguments ({exc}); name an instance instead.") from None
    names = ("alpha", "sigma", "d_alpha", "d_sigma")
    if all(callable(getattr(obj, n, None)) for n in names):
        return tuple(getattr(obj, n) for n in names)
    if callable(obj):
        return tuple(_field_of_call(obj, n + "_t") for n in names)
    raise VRCurveError(
        f"{spec} is neither a scheduler with alpha/sigma/d_alpha/d_sigma methods nor a callable returning "
        "alpha_t, sigma_t, d_alpha_t, d_sigma_t; see `vrcurve schedulers`."
    )


def _field_of_call(obj: Callable, field: str) -> Callable[[Tensor], Tensor]:
    def fn(t: Tensor) -> Tensor:
        return getattr(obj(t), field)

    return fn


SCHEDULERS = {
    "linear": "a = t, m = 1 - t; --shift s maps sigma = 1 - t to s*sigma / (1 + (s-1)*sigma)",
    "cosine": "a = sin(pi t / 2), m = cos(pi t / 2)",
    "diffusion": "VP: a = exp(-B/2), m = sqrt(1 - exp(-B)), B = bmin (1-t) + (bmax-bmin)(1-t)^2/2",
    "custom": "module:object giving alpha, sigma, d_alpha, d_sigma of t (t = 0 noise)",
}


def get_scheduler(
    name: str,
    *,
    shift: Optional[float] = None,
    beta_min: float = 0.1,
    beta_max: float = 20.0,
    custom: Optional[str] = None,
) -> Scheduler:
    """Build a scheduler by name (``linear``, ``cosine``, ``diffusion``, ``custom``).

    ``shift`` applies to ``linear`` only; ``beta_min``/``beta_max`` to ``diffusion``; ``custom`` is the
    ``module:object`` path for ``custom`` (``name`` may also be that path directly).
    """
    if name not in SCHEDULERS and ":" in name:
        custom, name = name, "custom"
    if name not in SCHEDULERS:
        raise VRCurveError(
            f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)} (see `vrcurve schedulers`)."
        )
    if shift is not None and name != "linear":
        raise VRCurveError(f"--shift applies to the linear scheduler only, not to {name!r}; drop --shift.")
    if name == "linear":
        return LinearScheduler(1.0 if shift is None else float(shift))
    if name == "cosine":
        return CosineScheduler()
    if name == "diffusion":
        return DiffusionScheduler(float(beta_min), float(beta_max))
    if not custom:
        raise VRCurveError("the custom scheduler needs --custom module:object naming it.")
    return CustomScheduler(custom)


def from_description(desc: Dict[str, Any]) -> Scheduler:
    """Rebuild a scheduler from ``Scheduler.describe()`` (as stored in an artifact)."""
    name = desc.get("name")
    if name == "linear":
        return LinearScheduler(float(desc.get("shift", 1.0)))
    if name == "cosine":
        return CosineScheduler()
    if name == "diffusion":
        return DiffusionScheduler(float(desc.get("beta_min", 0.1)), float(desc.get("beta_max", 20.0)))
    if name == "custom":
        return CustomScheduler(str(desc.get("object")))
    raise VRCurveError(f"unknown scheduler description {desc!r}.")
