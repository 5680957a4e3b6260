"""The options of an estimate, defined and checked once (docs/estimator.md; the flags: README.md, "The command line").

Three groups, each a frozen dataclass that checks itself when it is made, before any data is read:

- ``DataOptions`` (with ``VAEOptions``): what to read, which samples, and how stored rows become the latents
  a trainer feeds its model;
- ``EstimateOptions`` (with ``CurveOptions``, what the estimator itself takes): how to estimate the curve and
  turn it into a density, its fit and their uncertainty;
- ``OutputOptions``: where to write the artifact.

Where a run happens (devices, torchrun ranks) and who listens (progress, notes) are not options of the
result: ``pipeline.run_estimate`` takes them as keywords. The choices of the string options are the enums
below; the command line offers exactly these, and the artifact's metadata records their values.

An option out of its range or choices raises ``OptionError``, a ``VRCurveError`` that names the flag: the
command line turns it into a usage error (exit status 2), library callers catch it like any other
``VRCurveError``. Options that contradict each other, or rescaling factors no trainer could use, raise a
plain ``VRCurveError`` (exit status 1), as errors about the data do.
This module imports nothing heavy, so the command line can read its choices before torch loads.
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple, Type, Union

from .errors import VRCurveError

if TYPE_CHECKING:  # pragma: no cover
    from .samples import LatentTransform
    from .schedulers import Scheduler


class OptionError(VRCurveError):
    """An option out of its range or choices; ``option`` is its flag (``--noise``)."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


def _string_enum(name: str, doc: str, *values: str) -> Type[Enum]:
    """A ``str`` enum whose members are ``values``, each named as itself with dashes as underscores (and
    ``global`` as ``global_``: a keyword cannot be an attribute), so that a member is its own plain string
    wherever a str is expected."""
    names = [value.replace("-", "_") for value in values]
    members = [(name + "_" if keyword.iskeyword(name) else name, value) for name, value in zip(names, values)]
    enum = Enum(name, members, type=str, module=__name__, qualname=name)
    enum.__doc__ = doc
    return enum


# The choices of the string options, one enum each: the command line offers exactly these values.
Likelihood = _string_enum(
    "Likelihood", "How sharp the posterior over sources is: tau = d (``mean``, the default) or tau = 1 (``sum``, "
    "exact).", "mean", "sum")
Form = _string_enum("Form", "V(t) = h^2 tr Cov / d (``covariance``, the default) or h^2 (1 - S) (``paper``).",
                    "covariance", "paper")
Precision = _string_enum("Precision", "Of the heavy products (``vrcurve.engine.precision``).",
                         "auto", "float32", "bf16", "tf32")
NoiseSpace = _string_enum(
    "NoiseSpace", "Where the queries' noise is drawn: the samples' span (default) or R^d (the direct reference's "
    "draw).", "span", "ambient")
Normalize = _string_enum("Normalize", "How the chosen latents are normalised before the estimate (docs/data.md).",
                         "global", "channel", "none")
Moments = _string_enum("Moments", "From VAE moments: keep the posterior mean, or draw z = mean + std * eps.",
                       "mean", "sample")
MomentsKind = _string_enum(
    "MomentsKind", "The second half of stored VAE moments: std, log-variance, or ``auto`` (logvar if any value is "
    "negative).", "auto", "std", "logvar")
VAEDtype = _string_enum("VAEDtype", "The dtype ``--vae`` encodes in.", "float32", "float16", "bfloat16")
# The other commands' choices.
Convention = _string_enum(
    "Convention", "The time convention a location is printed in: t = 0 is noise (vrcurve, SiT, flow_matching) or "
    "t = 1 is noise (kohya, OneTrainer, SimpleTuner).", "t0-noise", "t1-noise")
ExportTarget = _string_enum(
    "ExportTarget", "What ``vrcurve export`` writes for (``vrcurve.export``): a trainer's flags or config lines, "
    "the resolution-dependent shift, or everything as JSON.", "diffusers", "kohya", "kohya-sd3", "simpletuner",
    "onetrainer", "sit", "dynamic-shift", "json")


def choices(enum: Type[Enum]) -> Tuple[str, ...]:
    """The values of a string enum, in order: ``choices(Form) == ("covariance", "paper")``."""
    return tuple(member.value for member in enum)


def choice(option: str, value, enum: Type[Enum], what: Optional[str] = None) -> str:
    """``value`` (a string or a member of ``enum``) as its plain string, or an OptionError for ``option`` that
    lists the choices; ``what`` names the option in the message (default: the flag)."""
    value = value.value if isinstance(value, Enum) else value
    allowed = choices(enum)
    if value not in allowed:
        raise OptionError(option, f"unknown {what or option} {value!r}; choose one of {', '.join(allowed)}.")
    return value


def _at_least(option: str, value, low: int, what: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise OptionError(option, f"{option} must be a whole number of at least {low}{what}, got {value!r}.")


def _set(obj, name: str, value) -> None:
    object.__setattr__(obj, name, value)  # a frozen dataclass normalising its own field in __post_init__


# The fewest samples a bucket's own curve is estimated from, unless --min-bucket says otherwise. A judgement:
# the estimator needs 2; with 16 (and K = 20) a bucket of the validation data had a 90% bootstrap interval for
# m about 0.05 wide under --likelihood mean (docs/validation.md, "Resolution buckets"): enough to draw a
# bucket's timesteps from its own curve, not to resolve small differences between buckets.
MIN_BUCKET = 16
# The share of uniform timesteps mixed into the density by default (docs/estimator.md, "The density floor").
DEFAULT_UNIFORM_MIX = 0.02


def check_uniform_mix(uniform_mix: float) -> float:
    """``uniform_mix`` as a float if it is a share in [0, 1), else an OptionError."""
    if not (isinstance(uniform_mix, (int, float)) and not isinstance(uniform_mix, bool) and 0.0 <= uniform_mix < 1.0):
        raise OptionError("--uniform-mix", f"--uniform-mix must be a share in [0, 1), got {uniform_mix}; 0 turns the "
                          f"floor off, the default is {DEFAULT_UNIFORM_MIX}.")
    return float(uniform_mix)


@dataclass(frozen=True)
class VAEOptions:
    """Encode images with a diffusers AutoencoderKL (``vrcurve.vae``).

    Attributes:
        path: a folder holding the VAE (or a pipeline folder with ``vae/``), or a repo id in the local Hugging
            Face cache; never downloaded.
        sample: ``sample`` (z = mean + std * eps, seeded per image, as ``latent_dist.sample()``) or ``mean``.
        dtype: the VAE's dtype while encoding.
        batch_size: images per encoder call.
    """

    path: str = field(metadata={"flag": "--vae"})
    sample: str = field(default=Moments.sample.value, metadata={"flag": "--vae-sample"})
    dtype: str = field(default=VAEDtype.float32.value, metadata={"flag": "--vae-dtype"})
    batch_size: int = field(default=4, metadata={"flag": "--vae-batch-size"})

    def __post_init__(self):
        _set(self, "sample", choice("--vae-sample", self.sample, Moments))
        _set(self, "dtype", choice("--vae-dtype", self.dtype, VAEDtype))
        _at_least("--vae-batch-size", self.batch_size, 1)


@dataclass(frozen=True)
class DataOptions:
    """What to read, which samples, and how stored rows become latents (docs/data.md).

    Attributes:
        path: what ``readers.open_source`` opens (a file, folder, glob, or ``demo``).
        key: the array, dataset or tensor name; detected when unambiguous.
        samples: M, the samples drawn (with the estimate's seed); None: every sample.
        resolution: image folders: center-crop and resize to R x R.
        skip_bad: draw other files in place of chosen files that cannot be decoded, and count them.
        normalization: ``global``, ``channel`` or ``none``, with statistics of the chosen samples.
        moments, moments_kind: the data holds VAE moments (``samples.LatentTransform``).
        scaling_factor, shift_factor: the trainer's z -> (z - shift_factor) * scaling_factor; None: 1 and 0,
            or with ``vae`` the VAE config's.
        vae: encode the images with this VAE first; then ``moments`` must be None.
        min_bucket: data of several sample shapes: the fewest samples a bucket is estimated from.
        drop_small_buckets: leave out smaller buckets (recorded in the artifact) instead of refusing them.
    """

    path: str = field(metadata={"flag": "--data"})
    key: Optional[str] = None
    samples: Optional[int] = 200
    resolution: Optional[int] = None
    skip_bad: bool = False
    normalization: str = field(default=Normalize.global_.value, metadata={"flag": "--normalize"})
    moments: Optional[str] = None
    moments_kind: str = MomentsKind.auto.value
    scaling_factor: Optional[float] = None
    shift_factor: Optional[float] = None
    vae: Optional[VAEOptions] = None
    min_bucket: int = MIN_BUCKET
    drop_small_buckets: bool = False

    def __post_init__(self):
        _set(self, "path", str(self.path))
        if self.samples is not None:
            _at_least("--samples", self.samples, 1, " (or all)")
        if self.resolution is not None:
            _at_least("--resolution", self.resolution, 1)
        _set(self, "normalization", choice("--normalize", self.normalization, Normalize))
        if self.moments is not None:
            _set(self, "moments", choice("--moments", self.moments, Moments))
        _set(self, "moments_kind", choice("--moments-kind", self.moments_kind, MomentsKind))
        _at_least("--min-bucket", self.min_bucket, 2, " (the estimate of a bucket needs 2 samples)")
        if self.vae is not None and self.moments is not None:
            raise VRCurveError("--moments reads VAE moments stored in the data, but --vae computes them from "
                               "images; drop --moments (--vae-sample mean|sample chooses the mean or a draw).")
        self.transform()  # the factors' checks live with the transform

    def transform(self, scaling_factor: Optional[float] = None,
                  shift_factor: Optional[float] = None) -> "LatentTransform":
        """How stored rows become latents; ``scaling_factor``/``shift_factor`` are the defaults of the factors
        not given (the VAE config's with ``vae``; else 1 and 0)."""
        from .samples import LatentTransform

        return LatentTransform(
            moments=self.moments if self.vae is None else self.vae.sample,
            # --vae: latent_dist.parameters are the mean, then the log-variance
            moments_kind=self.moments_kind if self.vae is None else MomentsKind.logvar.value,
            scaling_factor=_given(self.scaling_factor, scaling_factor, 1.0),
            shift_factor=_given(self.shift_factor, shift_factor, 0.0),
        )

    @property
    def factors_given(self) -> bool:
        """Whether a rescaling other than the identity was asked for (``--normalize`` other than none undoes it)."""
        return self.scaling_factor not in (None, 1.0) or self.shift_factor not in (None, 0.0)


def _given(value: Optional[float], default: Optional[float], fallback: float) -> float:
    return value if value is not None else default if default is not None else fallback


@dataclass(frozen=True)
class CurveOptions:
    """What the estimator takes: the path and the Monte Carlo settings of the curve (docs/estimator.md).

    Attributes:
        scheduler: the path's a_t, m_t (``vrcurve.schedulers``).
        noise: K, noises per sample.
        timesteps: T, timestep bins.
        seed: the sample choice and the noise of query (source i, k) depend on (seed, i, k) only.
        likelihood, form: see ``Likelihood`` and ``Form``.
        precision: of the heavy products (``vrcurve.engine.precision.resolve_precision``).
        chunk_size: queries per chunk per device; None: from free memory.
        noise_space: see ``NoiseSpace``; the two give the same curve in distribution, not the same draw.
    """

    scheduler: "Scheduler"
    noise: int = 500
    timesteps: int = 1000
    seed: int = 0
    likelihood: str = Likelihood.mean.value
    form: str = Form.covariance.value
    precision: str = Precision.auto.value
    chunk_size: Optional[int] = None
    noise_space: str = NoiseSpace.span.value

    def __post_init__(self):
        _at_least("--noise", self.noise, 1)
        _at_least("--timesteps", self.timesteps, 2)
        _at_least("--seed", self.seed, 0)
        _set(self, "likelihood", choice("--likelihood", self.likelihood, Likelihood, "likelihood"))
        _set(self, "form", choice("--form", self.form, Form, "form"))
        _set(self, "precision", choice("--precision", self.precision, Precision, "precision"))
        _set(self, "noise_space", choice("noise_space", self.noise_space, NoiseSpace, "noise space"))
        if self.chunk_size is not None:
            _at_least("--chunk-size", self.chunk_size, 1)


@dataclass(frozen=True)
class EstimateOptions:
    """How to estimate: the curve, then its density, fit and uncertainty (docs/estimator.md).

    Attributes:
        curve: the estimator's settings.
        table_size: U, entries of the inverse-CDF table minus one.
        uniform_mix: the density floor, a share in [0, 1) of uniform timesteps mixed into the density.
        fit_scale: also fit the logit-normal scale s.
        bootstrap: replicates over sources for the 90% interval of m; 0: none.
        check_convergence: also estimate on nested subsets M/4 and M/2 with the same noise.
    """

    curve: CurveOptions
    table_size: int = 4096
    uniform_mix: float = DEFAULT_UNIFORM_MIX
    fit_scale: bool = False
    bootstrap: int = 200
    check_convergence: bool = False

    def __post_init__(self):
        _at_least("--table-size", self.table_size, 2)
        _at_least("--bootstrap", self.bootstrap, 0, " (0: off)")
        _set(self, "uniform_mix", check_uniform_mix(self.uniform_mix))


@dataclass(frozen=True)
class OutputOptions:
    """Where the artifact goes: ``path``, written atomically; an existing file is replaced only with ``overwrite``."""

    path: Union[str, Path] = "vr.safetensors"
    overwrite: bool = False

    def __post_init__(self):
        _set(self, "path", Path(self.path))


def flags(options: Any) -> Dict[str, Any]:
    """An option group's values by flag, nested groups included: ``{"--noise": 500, ...}``; a scheduler by
    its ``describe()``. The flag of a field is ``--`` and its name with dashes unless its metadata says."""
    values: Dict[str, Any] = {}
    for f in fields(options):
        value = getattr(options, f.name)
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        if hasattr(value, "describe"):  # a scheduler
            values[flag] = value.describe()
        elif is_dataclass(value):
            values.update(flags(value))
        else:
            values[flag] = value
    return values


__all__ = ["OptionError", "Likelihood", "Form", "Precision", "NoiseSpace", "Normalize", "Moments", "MomentsKind",
           "VAEDtype", "Convention", "ExportTarget", "choices", "choice", "check_uniform_mix", "MIN_BUCKET",
           "DEFAULT_UNIFORM_MIX", "VAEOptions", "DataOptions", "CurveOptions", "EstimateOptions", "OutputOptions",
           "flags"]
