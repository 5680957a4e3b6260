"""Noise schedulers: the path x_t = a_t x1 + m_t eps (docs/estimator.md, "What is being estimated"), with exact derivatives.

Time convention throughout vrcurve: t = 0 is pure noise, t = 1 is data. A scheduler gives the signal
coefficient a_t (``alpha``), the noise coefficient m_t (``sigma``) and their exact time derivatives; from
those follow

    h_t = a'_t - a_t m'_t / m_t        (the weight of x1 in the marginal velocity)
    s_t = m_t / a_t                    (the noise scale of a query in data units)

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


class VariancePreserving(Scheduler):
    """A variance-preserving path from its log abar(t): a = sqrt(abar), m = sqrt(1 - abar), so a^2 + m^2 = 1.

    Subclasses give ``log_alpha_bar`` (<= 0, increasing towards the data end) and its time derivative
    ``d_log_alpha_bar``; a, m, their derivatives and h follow here once. m may reach 0 (abar = 1) at t = 1:
    there m' = -inf and h = +inf, never NaN.
    """

    def log_alpha_bar(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_log_alpha_bar(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def alpha(self, t):
        return torch.exp(0.5 * self.log_alpha_bar(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(self.log_alpha_bar(t)))

    def d_alpha(self, t):
        return 0.5 * self.d_log_alpha_bar(t) * self.alpha(t)

    def d_sigma(self, t):
        # m m' = -a a' since a^2 + m^2 = 1: m' = -abar (log abar)' / (2 m), infinite where m = 0.
        m = self.sigma(t)
        num = -torch.exp(self.log_alpha_bar(t)) * self.d_log_alpha_bar(t) * 0.5
        safe_m = torch.where(m == 0, torch.ones_like(m), m)
        return torch.where(m == 0, torch.full_like(m, -math.inf), num / safe_m)

    def h(self, t):
        # Closed form a' / m^2, as for any variance-preserving path; +inf where m = 0.
        m2 = -torch.expm1(self.log_alpha_bar(t))
        safe = torch.where(m2 == 0, torch.ones_like(m2), m2)
        return torch.where(m2 == 0, torch.full_like(m2, math.inf), self.d_alpha(t) / safe)


@dataclass(frozen=True)
class DiffusionScheduler(VariancePreserving):
    """Variance-preserving diffusion (DDPM-equivalent), in vrcurve time (t = 0 noise).

    B(t) = beta_min (1 - t) + (beta_max - beta_min) (1 - t)^2 / 2,  a = exp(-B/2),  m = sqrt(1 - exp(-B)):
    log abar = -B. m = 0 at t = 1 (m ~ sqrt(beta_min (1 - t))).
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

    def log_alpha_bar(self, t):
        u = 1.0 - t
        return -(self.beta_min * u + 0.5 * (self.beta_max - self.beta_min) * u**2)

    def d_log_alpha_bar(self, t):
        return self.beta_min + (self.beta_max - self.beta_min) * (1.0 - t)

    def params(self):
        return {"beta_min": float(self.beta_min), "beta_max": float(self.beta_max)}


@dataclass(frozen=True)
class DiscreteBetaScheduler(VariancePreserving):
    """DDPM's discrete beta schedules (``scaled_linear``: SD 1.x/2.x/SDXL; ``ddpm_linear``: DDPM), in vrcurve time.

    A discrete DDPM trainer draws an index i = 0..N-1 (0 almost clean, N - 1 noise) and trains on
    x_i = sqrt(abar_i) x1 + sqrt(1 - abar_i) eps with abar_i = prod_{j<=i} (1 - beta_j), where

        scaled_linear:  beta_j = (sqrt(beta_start) + j e)^2,  e = (sqrt(beta_end) - sqrt(beta_start)) / (N - 1)
        ddpm_linear:    beta_j = beta_start + j d,            d = (beta_end - beta_start) / (N - 1)

    (diffusers ``DDPMScheduler(beta_schedule="scaled_linear" | "linear")``). Index i covers the noise levels
    [i / N, (i + 1) / N) of ``VRDistribution.sample_indices``, so its bin midpoint is t_i = 1 - (i + 0.5) / N and
    the continuous index is x(t) = N (1 - t) - 1/2. Each factor 1 - beta_j is a product of terms linear in j
    (A - j d, or (1 - c_j)(1 + c_j) with c_j = sqrt(beta_j)), and a product of linear terms is a ratio of Gamma
    functions:

        prod_{j=0..x} (A - j d) = d^(x+1) Gamma(A/d + 1) / Gamma(A/d - x)
        prod_{j=0..x} (B + j d) = d^(x+1) Gamma(B/d + x + 1) / Gamma(B/d)

    so log abar(x) is a sum of lgamma terms: smooth in t, with exact derivatives (digamma), and equal to the
    discrete abar_i at every t_i. Then a = sqrt(abar), m = sqrt(1 - abar) (``VariancePreserving``).
    m > 0 at t = 1 (abar = 1 only half an index beyond it): DDPM never trains on clean data.
    """

    kind: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = 1000

    DEFAULTS = {"scaled_linear": (0.00085, 0.012), "ddpm_linear": (0.0001, 0.02)}

    def __post_init__(self):
        if self.kind not in self.DEFAULTS:
            raise VRCurveError(f"unknown beta schedule {self.kind!r}; choose scaled_linear or ddpm_linear.")
        N, b0, b1 = self.num_train_timesteps, self.beta_start, self.beta_end
        if not (isinstance(N, int) and N >= 2):
            raise VRCurveError(f"num_train_timesteps must be a whole number >= 2, got {N}.")
        if not (0 < b0 < b1 < 1 and math.isfinite(b1)):
            raise VRCurveError(
                f"{self.kind} needs 0 < beta_start < beta_end < 1, got beta_start={b0}, beta_end={b1}; the usual "
                f"values are {self.DEFAULTS[self.kind][0]} and {self.DEFAULTS[self.kind][1]} (--beta-min, --beta-max)."
            )

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.kind

    def _factors(self):
        """(sign, offset, step) per linear factor: sign -1 is (A - j d) as (offset, step) = (A, d); +1 is (B + j d)."""
        N, b0, b1 = self.num_train_timesteps, self.beta_start, self.beta_end
        if self.kind == "ddpm_linear":
            return ((-1, 1.0 - b0, (b1 - b0) / (N - 1)),)
        c0, e = math.sqrt(b0), (math.sqrt(b1) - math.sqrt(b0)) / (N - 1)
        return ((-1, 1.0 - c0, e), (+1, 1.0 + c0, e))

    def _x(self, t):
        return self.num_train_timesteps * (1.0 - t) - 0.5

    def log_alpha_bar(self, t: Tensor) -> Tensor:
        """log abar at t: equals log alphas_cumprod[i] of the discrete schedule at t_i = 1 - (i + 0.5) / N."""
        x = self._x(t)
        out = torch.zeros_like(t)
        for sign, offset, step in self._factors():
            r = offset / step
            if sign < 0:
                out = out + (x + 1) * math.log(step) + math.lgamma(r + 1) - torch.lgamma(r - x)
            else:
                out = out + (x + 1) * math.log(step) + torch.lgamma(r + x + 1) - math.lgamma(r)
        return out

    def d_log_alpha_bar(self, t):
        """d log abar / dt (> 0: the signal grows towards the data end)."""
        x = self._x(t)
        dx = torch.zeros_like(t)
        for sign, offset, step in self._factors():
            r = offset / step
            dx = dx + math.log(step) + (torch.digamma(r - x) if sign < 0 else torch.digamma(r + x + 1))
        return -self.num_train_timesteps * dx

    def params(self):
        return {"beta_start": float(self.beta_start), "beta_end": float(self.beta_end),
                "num_train_timesteps": int(self.num_train_timesteps)}


class CustomScheduler(Scheduler):
    """A user scheduler named ``module:object``. Building one imports that module, which runs its code.

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
            f"cannot import module {module_name!r} for the custom scheduler ({exc}); check that it is on PYTHONPATH "
            "(the vrcurve command does not look in the current folder: run python -m vrcurve there, or set "
            "PYTHONPATH=.)."
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
    "scaled_linear": "DDPM, SD 1.x/2.x/SDXL: betas (sqrt(b0) .. sqrt(b1))^2 over N = 1000 indices, b0 = 0.00085, "
                     "b1 = 0.012 (--beta-min, --beta-max); a^2 = alphas_cumprod at t = 1 - (i + 0.5)/N",
    "ddpm_linear": "DDPM: betas b0 .. b1 linear over N = 1000 indices, b0 = 0.0001, b1 = 0.02; a^2 = alphas_cumprod "
                   "at t = 1 - (i + 0.5)/N",
    "custom": "module:object giving alpha, sigma, d_alpha, d_sigma of t (t = 0 noise); imports and runs that code",
}

DISCRETE = ("scaled_linear", "ddpm_linear")


def get_scheduler(
    name: str,
    *,
    shift: Optional[float] = None,
    beta_min: Optional[float] = None,
    beta_max: Optional[float] = None,
    custom: Optional[str] = None,
) -> Scheduler:
    """Build a scheduler by name (``linear``, ``cosine``, ``diffusion``, ``scaled_linear``, ``ddpm_linear``,
    ``custom``).

    ``shift`` applies to ``linear`` only; ``beta_min``/``beta_max`` to ``diffusion`` (default 0.1 and 20) and,
    as beta_start/beta_end, to the discrete DDPM schedules (their diffusers defaults when None); ``custom`` is
    the ``module:object`` path for ``custom`` (``name`` may also be that path directly).
    """
    if name not in SCHEDULERS and ":" in name:
        custom, name = name, "custom"
    if name not in SCHEDULERS:
        raise VRCurveError(
            f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)} (see `vrcurve schedulers`)."
        )
    if shift is not None and name != "linear":
        raise VRCurveError(f"--shift applies to the linear scheduler only, not to {name!r}; drop --shift.")
    if (beta_min is not None or beta_max is not None) and name not in ("diffusion",) + DISCRETE:
        raise VRCurveError(f"--beta-min/--beta-max apply to diffusion, scaled_linear and ddpm_linear, not to "
                           f"{name!r}; drop them.")
    if name == "linear":
        return LinearScheduler(1.0 if shift is None else float(shift))
    if name == "cosine":
        return CosineScheduler()
    if name == "diffusion":
        return DiffusionScheduler(0.1 if beta_min is None else float(beta_min),
                                  20.0 if beta_max is None else float(beta_max))
    if name in DISCRETE:
        b0, b1 = DiscreteBetaScheduler.DEFAULTS[name]
        return DiscreteBetaScheduler(name, b0 if beta_min is None else float(beta_min),
                                     b1 if beta_max is None else float(beta_max))
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
    if name in DISCRETE:
        b0, b1 = DiscreteBetaScheduler.DEFAULTS[name]
        return DiscreteBetaScheduler(name, float(desc.get("beta_start", b0)), float(desc.get("beta_end", b1)),
                                     int(desc.get("num_train_timesteps", 1000)))
    if name == "custom":
        return CustomScheduler(str(desc.get("object")))
    raise VRCurveError(f"unknown scheduler description {desc!r}.")
