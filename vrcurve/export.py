"""Export an artifact's logit-normal fit to the flags and config lines of other trainers.

vrcurve's time runs from t = 0 (noise) to t = 1 (data). An artifact holds the KS-best logit-normal location m
and scale s (1 unless fitted) of its density, in the artifact's own time u: logit(u) ~ N(m, s^2). A linear
artifact estimated with ``--shift s_a`` runs on the shifted time u, whose noise level is

    sigma = s_a (1 - u) / (1 + (s_a - 1) (1 - u)),   so   logit(sigma) = logit(1 - u) + ln(s_a).

In the unshifted time of the same path, t_p = 1 - sigma, the location is therefore

    m_p = m - ln(s_a)        (m_p = m for an unshifted artifact)                              (1)

and every trainer below is told m_p (and s) in its own words. Each mapping is a pure function with the
trainer's definition in its docstring; tests/test_export.py re-implements each definition, samples from it
and checks the samples against logit-normal(m_p, s) in vrcurve time.

The flow trainers (diffusers, kohya, kohya-sd3, SimpleTuner, OneTrainer) train the linear (rectified-flow) path
x = (1 - sigma) x1 + sigma eps. The curve depends on the path, not only on the noise level, so the fit of
an artifact of another scheduler does not carry over to them: ``export_artifact`` refuses it. The discrete
DDPM schedules (``scaled_linear``, ``ddpm_linear``: SD 1.x/2.x/SDXL) are trained with integer timesteps; of
these trainers only OneTrainer takes a timestep density for them, and for the others the refusal says what to
use instead (``VRDistribution.sample_indices``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from .buckets import (
    FLUX_BASE_SEQ_LEN,
    FLUX_BASE_SHIFT,
    FLUX_MAX_SEQ_LEN,
    FLUX_MAX_SHIFT,
    ShiftLine,
    fit_shift_line,
    sequence_length,
)
from .errors import VRCurveError
from .meta import ArtifactMeta
from .options import ExportTarget, choices

FLOW_TARGETS = ("diffusers", "kohya", "kohya-sd3", "simpletuner", "onetrainer")
TARGETS = tuple(t for t in choices(ExportTarget) if t != "dynamic-shift")  # dynamic-shift: to_dynamic_shift
# Where the trainer's shift is part of the printed flags, the export sets it; diffusers takes it from the
# scheduler config, which the flags cannot change.
SHIFT_TARGETS = ("diffusers", "kohya-sd3")
DISCRETE_SCHEDULERS = ("scaled_linear", "ddpm_linear")

# OneTrainer migrates a config whose "__version" is below its current one (and one without it from version 0;
# migration 3 rewrites noising_weight/noising_bias). The keys below were checked against this version of
# modules/util/config/TrainConfig.py.
ONETRAINER_CONFIG_VERSION = 11

# SiT's path types (transport/path.py): ICPlan is a = t, m = 1 - t; GVPCPlan a = sin(pi t / 2),
# m = cos(pi t / 2); VPCPlan the VP diffusion with sigma_min = 0.1, sigma_max = 20 (its beta_min, beta_max).
SIT_PATH_TYPES = {"linear": "Linear", "cosine": "GVP", "diffusion": "VP"}
_SIT_VP_BETAS = (0.1, 20.0)


@dataclass(frozen=True)
class Export:
    """What ``vrcurve export`` prints for one target.

    Attributes:
        target: the target's name (one of ``TARGETS``).
        convention: one line naming the target's time convention.
        definition: one line with the target's sampling formula, in its own variables.
        lines: the flags or config lines, ready to paste.
        values: the numbers in ``lines``, by the target's own option names.
    """

    target: str
    convention: str
    definition: str
    lines: Tuple[str, ...]
    values: Dict[str, Any] = field(default_factory=dict)

    def text(self, source: Optional[str] = None, *, comments: bool = True) -> str:
        """The flags (or config lines) after ``#`` comment lines: convention, definition, then ``source``."""
        head = [f"# {self.target}: {self.convention}", f"# {self.definition}"]
        if source:
            head.append(f"# {source}")
        return "\n".join((head if comments else []) + list(self.lines))


def num(x: float) -> str:
    """A float for a command line: at most 6 decimals, no trailing zeros, never '-0'."""
    s = f"{float(x) + 0.0:.6f}".rstrip("0")
    s = s + "0" if s.endswith(".") else s
    return "0.0" if s in ("-0.0", "0.0") else s


def path_location(m: float, shift: float = 1.0) -> float:
    """m_p = m - ln(s_a): the logit-normal location in the unshifted time of a linear path, eq. (1)."""
    return float(m) - math.log(float(shift))


def artifact_shift(meta: ArtifactMeta) -> float:
    """The artifact's linear ``--shift`` s_a (1 for an unshifted or non-linear artifact)."""
    sched = meta.scheduler or {}
    if sched.get("name") == "linear":
        return float(sched.get("shift", 1.0) or 1.0)
    return 1.0


def _check_scale(s: float) -> float:
    if not (s > 0 and math.isfinite(s)):
        raise VRCurveError(f"the logit-normal scale s must be a positive number, got {s}.")
    return float(s)


def _check_shift(shift: float) -> float:
    if not (shift > 0 and math.isfinite(shift)):
        raise VRCurveError(f"--shift must be a positive number, got {shift}; use the trainer's shift (1 for none).")
    return float(shift)


def to_diffusers(m_p: float, s: float, shift: float = 1.0) -> Export:
    """diffusers' SD3/Flux DreamBooth/LoRA scripts (``train_dreambooth*_sd3.py``, ``*_flux.py``).

    Checked against the scripts that index the scheduler's timesteps with u (``train_dreambooth_sd3.py``,
    ``train_dreambooth_lora_sd3.py``, ``train_dreambooth_flux.py``, ``train_dreambooth_lora_flux.py``, and the
    same code in ``*_flux2*.py``, ``*_flux_kontext.py``, ``*_sana.py``, ``*_hidream.py``, ``*_qwen_image.py``,
    ``*_z_image.py``); not ``train_dreambooth_lora_ideogram4.py``, which uses u as sigma (t = 1 noise) with a
    resolution-dependent mean, nor ``*_lumina2.py``, which reverses the interpolation.

    Definition (``compute_density_for_timestep_sampling`` with ``weighting_scheme="logit_normal"``):
    u = sigmoid(N(logit_mean, logit_std^2)); index i = floor(u N) into the scheduler's descending
    ``timesteps``, whose noise level is sigma = shift sigma0 / (1 + (shift - 1) sigma0) with sigma0 = 1 - i / N
    (FlowMatchEulerDiscreteScheduler, ``shift`` from its config; no shift when ``use_dynamic_shifting``);
    x = (1 - sigma) x1 + sigma eps. So u runs with t = 0 noise, and logit(1 - sigma) ~ N(logit_mean - ln shift,
    logit_std^2): logit_mean = m_p + ln(shift), logit_std = s.

    Args:
        m_p: location in the unshifted path time, eq. (1).
        s: logit-normal scale.
        shift: the ``shift`` that the trainer's scheduler applies at training time (SD3: 3.0; Flux, whose
            config sets ``use_dynamic_shifting``, and an unshifted scheduler: 1.0).
    """
    s = _check_scale(s)
    mean = float(m_p) + math.log(_check_shift(shift))
    flags = {"weighting_scheme": "logit_normal", "logit_mean": mean, "logit_std": s}
    return Export(
        target="diffusers",
        convention="u runs with t = 0 noise, like vrcurve (u = 1 - sigma before the scheduler's shift) in the SD3, "
        "Flux, Flux2, Sana, HiDream, Qwen-Image and Z-Image scripts (not ideogram4, lumina2); the timesteps it "
        "feeds the model run the other way (1000 = noise)",
        definition=f"u = sigmoid(N(logit_mean, logit_std^2)), sigma = shift*(1-u)/(1+(shift-1)*(1-u)) with the "
        f"trainer scheduler's shift = {num(shift)}",
        lines=(_flags(flags),),
        values={**flags, "shift": float(shift)},
    )


def to_kohya_sd3(m_p: float, s: float, training_shift: float = 1.0) -> Export:
    """kohya sd-scripts, SD3/SD3.5 (``sd3_train.py``, ``sd3_train_network.py``).

    Definition (``get_noisy_model_input_and_timesteps`` in ``library/sd3_train_utils.py``):
    u = sigmoid(N(logit_mean, logit_std^2)), then u = shift u / (1 + (shift - 1) u) with shift =
    ``training_shift``, timestep = floor(1000 u) (``--min_timestep``/``--max_timestep`` unset), sigma = timestep /
    1000, x = (1 - sigma) x1 + sigma eps. So u is the noise level (t = 1 noise) and logit(1 - sigma) ~
    N(-(logit_mean + ln shift), logit_std^2): logit_mean = -m_p - ln(training_shift), logit_std = s.

    Args:
        m_p: location in the unshifted path time, eq. (1).
        s: logit-normal scale.
        training_shift: the ``--training_shift`` printed with the flags (default: the artifact's shift).
    """
    s = _check_scale(s)
    _check_shift(training_shift)
    mean = -float(m_p) - math.log(training_shift)
    values = {"weighting_scheme": "logit_normal", "logit_mean": mean, "logit_std": s,
              "training_shift": float(training_shift)}
    return Export(
        target="kohya-sd3",
        convention="t = 1 is noise (u is the noise level sigma), the opposite of vrcurve: logit_mean = -m_p - ln(shift)",
        definition="u = sigmoid(N(logit_mean, logit_std^2)), sigma = shift*u/(1+(shift-1)*u) with shift = "
        "training_shift; leave --min_timestep/--max_timestep unset",
        lines=(_flags(values),),
        values=values,
    )


def to_kohya(m_p: float, s: float) -> Export:
    """kohya sd-scripts, FLUX.1 (``flux_train.py``, ``flux_train_network.py``), ``--timestep_sampling shift``.

    Definition (``library/flux_train_utils.py``): sigma = sigmoid(sigmoid_scale z), z ~ N(0, 1), then
    sigma = shift sigma / (1 + (shift - 1) sigma) with shift = ``discrete_flow_shift``;
    x = (1 - sigma) x1 + sigma eps. So t = 1 is noise, logit(sigma) ~ N(ln shift, sigmoid_scale^2), and in
    vrcurve time logit(1 - sigma) ~ N(-ln shift, sigmoid_scale^2): sigmoid_scale = s, shift = exp(-m_p).
    """
    return _sigmoid_then_shift(
        "kohya", {"timestep_sampling": "shift"}, "sigmoid_scale", "discrete_flow_shift", m_p, s,
        definition="sigma = sigmoid(sigmoid_scale*z), z ~ N(0,1), then sigma = shift*sigma/(1+(shift-1)*sigma), "
        "shift = discrete_flow_shift",
    )


def to_simpletuner(m_p: float, s: float) -> Export:
    """SimpleTuner, flow-matching models (SD3, Flux, ...), default sigmoid schedule.

    Definition: sigma = sigmoid(flow_sigmoid_scale z), z ~ N(0, 1), then ``apply_flow_schedule_shift``:
    sigma = shift sigma / (1 + (shift - 1) sigma) with shift = ``flow_schedule_shift`` when it is > 0 (it then
    overrides ``flow_schedule_auto_shift``); x = (1 - sigma) x1 + sigma eps. t = 1 is noise:
    flow_sigmoid_scale = s, flow_schedule_shift = exp(-m_p). The uniform, beta and fast schedules must be off.
    """
    return _sigmoid_then_shift(
        "simpletuner", {}, "flow_sigmoid_scale", "flow_schedule_shift", m_p, s,
        definition="sigma = sigmoid(flow_sigmoid_scale*z), z ~ N(0,1), then sigma = shift*sigma/(1+(shift-1)*sigma), "
        "shift = flow_schedule_shift; leave --flow_use_uniform_schedule, --flow_use_beta_schedule off",
    )


def _sigmoid_then_shift(target: str, flags: Mapping[str, str], scale: str, shift: str, m_p: float, s: float,
                        definition: str) -> Export:
    """Trainers that draw sigma = sigmoid(scale z) and then shift it (t = 1 is noise): the location -m_p
    becomes the shift exp(-m_p), the scale is s. ``flags`` come first on the command line."""
    values = {**flags, scale: _check_scale(s), shift: math.exp(-float(m_p))}
    return Export(
        target=target,
        convention="t = 1 is noise (sigma), the opposite of vrcurve: the location -m_p becomes the shift exp(-m_p)",
        definition=definition, lines=(_flags(values),), values=values,
    )


def _flags(values: Mapping[str, Any]) -> str:
    """``values`` as one command line of flags, ``--name value``, numbers as ``num`` writes them."""
    return " ".join(f"--{k} {v if isinstance(v, str) else num(v)}" for k, v in values.items())


def _config_lines(values: Mapping[str, Any]) -> Tuple[str, ...]:
    """``values`` as lines to paste into a JSON config, ``"name": value,``, floats as ``num`` writes them."""
    return tuple(f'"{k}": {_json_value(v)},' for k, v in values.items())


def _json_value(v: Any) -> str:
    """A config value as JSON, floats as ``num`` writes them."""
    return num(v) if isinstance(v, float) else json.dumps(v)


def to_onetrainer(m_p: float, s: float, discrete: bool = False) -> Export:
    """OneTrainer, timestep distribution LOGIT_NORMAL (config JSON keys), flow-matching or DDPM models.

    Definition (``ModelSetupNoiseMixin._get_timestep_discrete``): v = sigmoid(N(noising_bias,
    (noising_weight + 1)^2)), timestep = floor(v N) (min/max noising strength 0 and 1, timestep_shift 1,
    no dynamic shifting); the flow-matching mixin uses sigma = (timestep + 1) / N and
    x = (1 - sigma) x1 + sigma eps; SD/SDXL (``discrete``) use timestep as the index into the model's DDPM
    alphas_cumprod (0 almost clean), whose noise-level bin is v in [i / N, (i + 1) / N), i.e. vrcurve's
    t = 1 - v. t = 1 is noise in both: noising_bias = -m_p, noising_weight = s - 1. ``"__version"`` is the
    config version these keys were checked against: without it OneTrainer migrates the config from version 0
    and rewrites noising_bias.
    """
    s = _check_scale(s)
    definition = ("timestep = 1000*sigmoid(N(noising_bias, (noising_weight+1)^2)), " +
                  ("the index into the model's DDPM alphas_cumprod (0 = almost clean)" if discrete else
                   "sigma = timestep/1000") +
                  f"; keys for a config saved by OneTrainer with \"__version\": {ONETRAINER_CONFIG_VERSION}")
    values = {"__version": ONETRAINER_CONFIG_VERSION, "timestep_distribution": "LOGIT_NORMAL", "noising_bias": -float(m_p),
              "noising_weight": s - 1.0, "timestep_shift": 1.0, "dynamic_timestep_shifting": False,
              "min_noising_strength": 0.0, "max_noising_strength": 1.0}
    return Export(
        target="onetrainer",
        convention="t = 1 is noise (timestep / 1000 is the noise level), the opposite of vrcurve: the location is -m_p",
        definition=definition, lines=_config_lines(values), values=values,
    )


def to_sit(m_p: float, s: float, path_type: str) -> Export:
    """A SiT-style transport (willisma/SiT and its descendants) with logit-normal time sampling.

    Definition: x_t = alpha_t x1 + sigma_t x0 with x0 noise, t = 0 noise like vrcurve, path ``Linear``, ``GVP``
    (cosine) or ``VP`` (diffusion); t = sigmoid(ln_mu + ln_sigma z), z ~ N(0, 1): ln_mu = m_p, ln_sigma = s.
    Upstream SiT draws t uniformly; ``--ln_mu``/``--ln_sigma`` are the flags of the patch in docs/integration.md.
    """
    s = _check_scale(s)
    if path_type not in SIT_PATH_TYPES.values():
        raise VRCurveError(f"SiT has no path type {path_type!r}; it has {', '.join(SIT_PATH_TYPES.values())}.")
    return Export(
        target="sit",
        convention="t = 0 is noise (x0 noise, x1 data), the same as vrcurve",
        definition="t = sigmoid(ln_mu + ln_sigma*z), z ~ N(0,1), in Transport.sample() (see docs/integration.md: "
        "upstream SiT draws t uniformly)",
        lines=(f"--path-type {path_type} --ln_mu {num(m_p)} --ln_sigma {num(s)}",),
        values={"path_type": path_type, "ln_mu": float(m_p), "ln_sigma": s},
    )


def scheduler_text(sched: Any) -> str:
    """A scheduler's metadata in a few words, e.g. ``linear(shift=3)``."""
    if isinstance(sched, dict):
        params = ",".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}"
                          for k, v in sched.items() if k != "name")
        return f"{sched.get('name', '?')}" + (f"({params})" if params else "")
    return str(sched)


# What each trainer does with SD 1.x/2.x/SDXL (DDPM) models, where it has no density option to print.
_NO_DDPM_OPTION = {
    "diffusers": "diffusers' SD/SDXL scripts draw integer timesteps uniformly (torch.randint) and have no "
                 "logit-normal option",
    "kohya": "kohya's SD/SDXL scripts draw integer timesteps uniformly between --min_timestep and --max_timestep "
             "and have no timestep-density option",
    "kohya-sd3": "kohya's SD/SDXL scripts draw integer timesteps uniformly between --min_timestep and "
                 "--max_timestep and have no timestep-density option",
    "simpletuner": "the SimpleTuner flags vrcurve prints are those of its flow-matching models",
}


def scheduler_name(meta: ArtifactMeta) -> Optional[str]:
    """The name of the artifact's scheduler (None if it does not say)."""
    return (meta.scheduler or {}).get("name")


def _require_linear(meta: ArtifactMeta, target: str, where: str) -> None:
    name = scheduler_name(meta)
    if name in DISCRETE_SCHEDULERS:
        raise VRCurveError(
            f"{where} was estimated with the {name} (DDPM) schedule, and {_NO_DDPM_OPTION[target]}, so there are no "
            f"flags to print: draw integer timesteps in the training script with vrcurve.load(...).sample_indices("
            f"batch_size, 1000) (docs/integration.md), or use --to onetrainer or --to json."
        )
    if name != "linear":
        raise VRCurveError(
            f"{where} was estimated with the {name} scheduler, but {target} trains the linear (rectified-flow) "
            "path: the curve depends on the path, not only on the noise level, so its fit does not carry over; "
            "re-estimate with --scheduler linear (and the trainer's --shift)."
        )


def _sit_path_type(meta: ArtifactMeta, where: str) -> str:
    sched = meta.scheduler or {}
    name = sched.get("name")
    if name not in SIT_PATH_TYPES:
        raise VRCurveError(
            f"{where} was estimated with the {name} scheduler, which matches none of SiT's path types (Linear, "
            "GVP, VP); re-estimate with --scheduler linear, cosine or diffusion, or use --to json."
        )
    if name == "diffusion":
        betas = (float(sched.get("beta_min", 0.1)), float(sched.get("beta_max", 20.0)))
        if not np.allclose(betas, _SIT_VP_BETAS):
            raise VRCurveError(
                f"{where} was estimated with beta_min={betas[0]}, beta_max={betas[1]}, but SiT's VP path uses "
                "0.1 and 20; re-estimate with the default --beta-min/--beta-max, or use --to json."
            )
    return SIT_PATH_TYPES[name]


def export_json(arrays: Mapping[str, np.ndarray], meta: ArtifactMeta, m: float, s: float) -> Dict[str, Any]:
    """Everything, for tools with their own densities: the fit, every applicable target's values, the
    pdf/cdf/icdf tables (in the artifact's time u, t = 0 noise) and the artifact's metadata (its entries as
    stored, ``ArtifactMeta`` as a mapping)."""
    shift = artifact_shift(meta)
    m_p = path_location(m, shift)
    targets: Dict[str, Any] = {}
    name = scheduler_name(meta)
    if name == "linear":
        for t, ex in (("diffusers", to_diffusers(m_p, s, shift)), ("kohya", to_kohya(m_p, s)),
                      ("kohya-sd3", to_kohya_sd3(m_p, s, shift)), ("simpletuner", to_simpletuner(m_p, s)),
                      ("onetrainer", to_onetrainer(m_p, s))):
            targets[t] = ex.values
    if name in DISCRETE_SCHEDULERS:
        targets["onetrainer"] = to_onetrainer(m_p, s, discrete=True).values
    if name in SIT_PATH_TYPES:
        try:
            targets["sit"] = to_sit(m_p, s, _sit_path_type(meta, "artifact")).values
        except VRCurveError:
            pass
    dynamic = None
    if name == "linear" and len(meta.buckets or ()) > 1:
        try:
            line = bucket_shift_line(meta)
            dynamic = {"patch_size": 2, "intercept": line.intercept, "slope": line.slope,
                       "lengths": list(line.lengths), "mus": list(line.mus), "residual": line.residual,
                       "scheduler_config": {k: v for k, v in to_dynamic_shift(line).values.items() if k != "logit_std"}}
        except VRCurveError:  # buckets without (C, H, W) shapes, or of one sequence length
            pass
    T = int(np.asarray(arrays["pdf"]).shape[0])
    return {
        "time_convention": "t0_noise",
        "time": "the artifact's time u: t = 0 is noise, t = 1 is data; a linear artifact with shift s_a has noise "
                "level sigma = s_a*(1-u)/(1+(s_a-1)*(1-u))",
        "scheduler": meta.scheduler,
        "artifact_shift": shift,
        "logitnormal": {"m": float(m), "s": float(s), "m_path": m_p},
        "targets": targets,
        **({"dynamic_shift": dynamic} if dynamic else {}),
        "bins": T,
        "pdf": [float(v) for v in np.asarray(arrays["pdf"], dtype=np.float64)],
        "cdf": [float(v) for v in np.asarray(arrays["cdf"], dtype=np.float64)],
        "icdf": [float(v) for v in np.asarray(arrays["icdf"], dtype=np.float64)],
        "meta": dict(sorted(meta.items())),  # safetensors' metadata order changes from file to file
    }


def export_artifact(arrays: Mapping[str, np.ndarray], meta: ArtifactMeta, target: str, *,
                    trainer_shift: Optional[float] = None, m: Optional[float] = None, s: Optional[float] = None,
                    where: str = "the artifact") -> Export:
    """The export of an artifact to ``target`` (any of ``TARGETS`` but ``json``; see ``export_json``).

    Args:
        arrays, meta: the artifact, as ``read_artifact`` returns it.
        target: the trainer.
        trainer_shift: diffusers and kohya-sd3 only: the shift the trainer applies on top of the drawn time
            (diffusers: its scheduler config's ``shift``; kohya-sd3: ``--training_shift``, printed with the
            flags). None: kohya-sd3 uses the artifact's shift; diffusers uses 1 for an unshifted artifact and
            refuses a shifted one, since the scheduler's shift is not in the flags and must be stated.
        m, s: the logit-normal fit in the artifact's time (default: the artifact's ``logitnormal_m``/``_s``).
        where: the artifact's name, for messages.

    Raises:
        VRCurveError: a scheduler that the target does not train, or an unstated trainer shift (above).
    """
    m = float(meta.logitnormal_m if m is None else m)
    s = float(meta.logitnormal_s if s is None else s)
    shift_a = artifact_shift(meta)
    m_p = path_location(m, shift_a)
    if target == "onetrainer" and scheduler_name(meta) in DISCRETE_SCHEDULERS:
        return to_onetrainer(m_p, s, discrete=True)
    if target in FLOW_TARGETS:
        _require_linear(meta, target, where)
        if target == "diffusers":
            if trainer_shift is None and shift_a != 1.0:
                raise VRCurveError(
                    f"{where} was estimated with --shift {num(shift_a)}; pass --shift with the shift of the trainer's "
                    f"scheduler (its config's shift: 3 for SD3, 1 for Flux and other dynamically shifted ones), e.g. "
                    f"--shift {num(shift_a)} if you estimated with the trainer's own shift: the flags depend on it."
                )
            return to_diffusers(m_p, s, 1.0 if trainer_shift is None else trainer_shift)
        if target == "kohya-sd3":
            return to_kohya_sd3(m_p, s, shift_a if trainer_shift is None else trainer_shift)
        return {"kohya": to_kohya, "simpletuner": to_simpletuner, "onetrainer": to_onetrainer}[target](m_p, s)
    if target == "sit":
        return to_sit(m_p, s, _sit_path_type(meta, where))
    raise VRCurveError(f"unknown export target {target!r}; choose one of {', '.join(TARGETS)}.")


def describe_fit(meta: ArtifactMeta, m: float, s: float) -> str:
    """One line: the fit in the artifact's time and in the path's unshifted time."""
    shift = artifact_shift(meta)
    m_p = path_location(m, shift)
    where = f", shift {num(shift)}: m_p = m - ln(shift) = {num(m_p)}" if shift != 1.0 else ""
    return (f"logit-normal fit of the artifact (scheduler {scheduler_text(meta.scheduler)}): "
            f"m = {num(m)}, s = {num(s)} in vrcurve time (t = 0 noise){where}")


# --- resolution-dependent shift (artifacts of several resolution buckets) ---------------------------------


def bucket_shift_line(meta: ArtifactMeta, patch_size: int = 2, where: str = "the artifact") -> ShiftLine:
    """The data's dynamic-shift line mu(L) = a + b L from the per-bucket fits of a linear artifact.

    Each bucket's location in the unshifted path time, m_p = m - ln(s_a) (eq. (1)), asks for the Flux shift
    mu = -m_p at its latent sequence length L = (H / p)(W / p) (``vrcurve.buckets``); the line is their
    least-squares fit.

    Raises:
        VRCurveError: no buckets, a non-linear scheduler, or fewer than two sequence lengths.
    """
    _require_linear(meta, "Flux-style dynamic shifting", where)
    buckets = meta.buckets or ()
    if len(buckets) < 2:
        raise VRCurveError(f"{where} was estimated on samples of one shape, so it says nothing about how the shift "
                           "depends on resolution; estimate on data of several resolutions (resolution buckets).")
    shift = artifact_shift(meta)
    lengths = [sequence_length(b.shape, patch_size) for b in buckets]
    return fit_shift_line(lengths, [path_location(float(b.logitnormal_m), shift) for b in buckets])


def to_dynamic_shift(line: ShiftLine, base_len: Optional[int] = None, max_len: Optional[int] = None,
                     s: float = 1.0) -> Export:
    """The line as a diffusers ``FlowMatchEulerDiscreteScheduler`` config (``scheduler_config.json``).

    Definition (diffusers' ``calculate_shift`` and ``time_shift_type="exponential"``): mu = base_shift +
    (max_shift - base_shift) (L - base_image_seq_len) / (max_image_seq_len - base_image_seq_len), then
    sigma' = e^mu sigma / (e^mu sigma + 1 - sigma): logit(sigma') = logit(sigma) + mu, t = 1 is noise. So
    base_shift and max_shift are the data line's mu at the two lengths, whatever lengths are chosen: the line
    is the same. By default the lengths are the shortest and the longest bucket's, so that the two numbers are
    measured, not extrapolated. The sampler the shift applies to must draw sigma = sigmoid(s z) (location 0,
    scale s).
    """
    base_len = min(line.lengths) if base_len is None else int(base_len)
    max_len = max(line.lengths) if max_len is None else int(max_len)
    if not (0 < base_len < max_len):
        raise VRCurveError(f"--base-seq-len must be positive and below --max-seq-len, got {base_len} and {max_len}.")
    base_shift, max_shift = line.endpoints(base_len, max_len)
    values = {"use_dynamic_shifting": True, "time_shift_type": "exponential", "base_shift": base_shift,
              "max_shift": max_shift, "base_image_seq_len": int(base_len), "max_image_seq_len": int(max_len)}
    return Export(
        target="dynamic-shift",
        convention="t = 1 is noise (sigma): the shift mu moves logit(sigma) by +mu, i.e. vrcurve's location by -mu",
        definition=f"mu(L) = base_shift + (max_shift - base_shift)*(L - base_image_seq_len)/(max_image_seq_len - "
        f"base_image_seq_len), sigma' = exp(mu)*sigma/(exp(mu)*sigma + 1 - sigma), sigma = sigmoid({num(s)}*z)",
        lines=_config_lines(values), values={**values, "logit_std": float(s)},
    )


def shift_line_comments(line: ShiftLine, patch_size: int, shapes) -> Tuple[str, ...]:
    """What the data's line is against kohya's ``flux_shift`` (and diffusers' default config): fixed constants
    mu = 0.5 at 256 tokens and 1.15 at 4096, at each bucket's length."""
    kohya = fit_shift_line([FLUX_BASE_SEQ_LEN, FLUX_MAX_SEQ_LEN], [-FLUX_BASE_SHIFT, -FLUX_MAX_SHIFT])
    out = [f"data line: mu(L) = {num(line.intercept)} + {line.slope:.6g} * L over the buckets' latent tokens L "
           f"(patch {patch_size}), rms residual {num(line.residual)}; kohya's --timestep_sampling flux_shift (and "
           f"diffusers' default Flux config) fix mu(L) = {num(kohya.intercept)} + {kohya.slope:.6g} * L"]
    for shape, L, mu in zip(shapes, line.lengths, line.mus):
        fixed = float(kohya.mu(L))
        out.append(f"bucket {'x'.join(map(str, shape))}: L = {L}, data mu = {num(mu)} (fit {num(float(line.mu(L)))}), "
                   f"flux_shift mu = {num(fixed)}, difference {num(mu - fixed)} (shift exp(mu): {num(math.exp(mu))} "
                   f"vs {num(math.exp(fixed))})")
    out.append("kohya has no flag for flux_shift's constants: give the data's line to a trainer that reads the "
               "scheduler config (vrcurve export --to dynamic-shift), or use --timestep_sampling shift "
               "--discrete_flow_shift exp(mu) of the resolution you train most")
    return tuple(out)
