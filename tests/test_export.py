"""`vrcurve export`: each trainer's own sampling formula, fed the printed flags, samples logit-normal(m_p, s).

Each ``sample_*`` function below re-implements a trainer's documented definition (not vrcurve's code) and
returns the trainer's noise level converted to vrcurve time of the unshifted path, t = 1 - sigma (t = 0 noise).
"""

import json
import math

import numpy as np
import pytest
import torch
from scipy.special import ndtr
from typer.testing import CliRunner

from vrcurve.artifact import write_artifact
from vrcurve.cli import app
from vrcurve.density import invert_cdf
from vrcurve.export import TARGETS, export_artifact, num, path_location

runner = CliRunner()
N_SAMPLES = 200_000


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_logitnormal_artifact(path, m, s=1.0, scheduler=None, T=1000, fit_s=None):
    """An artifact whose density is logit-normal(m, s) in its own time, with that fit in its metadata."""
    edges = np.arange(T + 1) / T
    inner = edges[1:-1]
    cdf = np.concatenate([[0.0], ndtr((np.log(inner) - np.log1p(-inner) - m) / s), [1.0]])
    pdf = np.diff(cdf) * T
    tensors = {
        "t": (np.arange(T) + 0.5) / T, "S": np.zeros(T), "h2": np.ones(T), "variance": pdf, "pdf": pdf, "cdf": cdf,
        "icdf": invert_cdf(cdf, np.arange(4097) / 4096), "ks_m": np.zeros(25), "ks": np.zeros(25),
        "S_stderr": np.zeros(T), "variance_stderr": np.zeros(T),
    }
    meta = {
        "time_convention": "t0_noise", "scheduler": scheduler or {"name": "linear", "shift": 1.0},
        "logitnormal_m": m, "logitnormal_m_grid": round(m * 4) / 4, "logitnormal_s": s if fit_s is None else fit_s,
        "samples": 10, "noise": 2, "timesteps": T, "dim": 4, "ks": 0.0,
    }
    write_artifact(path, tensors, meta)
    return path


def ks_to_logitnormal(t, m, s):
    """One-sample KS distance of samples t in (0, 1) to logit-normal(m, s)."""
    t = np.sort(np.asarray(t, dtype=np.float64))
    t = np.clip(t, 1e-12, 1 - 1e-12)
    F = ndtr((np.log(t) - np.log1p(-t) - m) / s)
    n = t.shape[0]
    return float(max(np.max(np.arange(1, n + 1) / n - F), np.max(F - np.arange(n) / n)))


def flags(line):
    """'--a 1 --b x' -> {'a': '1', 'b': 'x'}."""
    tokens = line.split()
    assert all(tok.startswith("--") for tok in tokens[::2]) and len(tokens) % 2 == 0, line
    return {k[2:]: v for k, v in zip(tokens[::2], tokens[1::2])}


def shift_sigma(sigma, shift):
    return shift * sigma / (1 + (shift - 1) * sigma)


# --- the trainers' definitions -------------------------------------------------------------------------------

def sample_diffusers(f, scheduler_shift, gen, n=N_SAMPLES, num_train_timesteps=1000):
    """diffusers SD3/Flux scripts: u = sigmoid(N(logit_mean, logit_std)); indices = (u * N).long() into the
    FlowMatchEulerDiscreteScheduler's timesteps, linspace(1, N, N) reversed, whose sigmas are timesteps / N
    shifted by the config's shift; x = (1 - sigma) x1 + sigma eps."""
    assert f["weighting_scheme"] == "logit_normal"
    u = torch.sigmoid(float(f["logit_mean"]) + float(f["logit_std"]) * torch.randn(n, generator=gen, dtype=torch.float64))
    N = num_train_timesteps
    timesteps = torch.linspace(1, N, N, dtype=torch.float64).flip(0)
    sigmas = shift_sigma(timesteps / N, scheduler_shift)
    sigma = sigmas[(u * N).long()]
    return (1 - sigma).numpy()


def sample_kohya(f, gen, n=N_SAMPLES):
    """kohya flux_train_utils, --timestep_sampling shift: sigmoid(randn * sigmoid_scale), then the shift."""
    assert f["timestep_sampling"] == "shift"
    logits = torch.randn(n, generator=gen, dtype=torch.float64) * float(f["sigmoid_scale"])
    sigma = shift_sigma(logits.sigmoid(), float(f["discrete_flow_shift"]))
    return (1 - sigma).numpy()


def sample_kohya_sd3(f, gen, n=N_SAMPLES):
    """kohya sd3_train_utils.get_noisy_model_input_and_timesteps: u = sigmoid(N(logit_mean, logit_std)), the
    training_shift on u, timesteps = (u * 1000).long() (min/max timestep unset), sigma = timesteps / 1000."""
    assert f["weighting_scheme"] == "logit_normal"
    u = torch.sigmoid(torch.normal(float(f["logit_mean"]), float(f["logit_std"]), (n,), generator=gen, dtype=torch.float64))
    u = shift_sigma(u, float(f["training_shift"]))
    sigma = (u * 1000).long().double() / 1000
    return (1 - sigma).numpy()


def sample_simpletuner(f, gen, n=N_SAMPLES):
    """SimpleTuner: sigmoid(flow_sigmoid_scale * randn), then apply_flow_schedule_shift with the static shift."""
    sigma = torch.sigmoid(float(f["flow_sigmoid_scale"]) * torch.randn(n, generator=gen, dtype=torch.float64))
    shift = float(f["flow_schedule_shift"])
    assert shift > 0  # otherwise SimpleTuner would fall back to the auto shift
    return (1 - shift_sigma(sigma, shift)).numpy()


def sample_onetrainer(cfg, gen, n=N_SAMPLES, num_train_timesteps=1000):
    """OneTrainer _get_timestep_discrete (LOGIT_NORMAL) and the flow-matching mixin's sigma = (timestep + 1) / N."""
    assert cfg["timestep_distribution"] == "LOGIT_NORMAL" and cfg["dynamic_timestep_shifting"] is False
    N = num_train_timesteps
    lo, hi = int(N * cfg["min_noising_strength"]), int(N * cfg["max_noising_strength"])
    normal = cfg["noising_bias"] + (cfg["noising_weight"] + 1.0) * torch.randn(n, generator=gen, dtype=torch.float64)
    timestep = normal.sigmoid() * (hi - lo) + lo
    shift = cfg["timestep_shift"]
    timestep = N * shift * timestep / ((shift - 1) * timestep + N)
    timestep = timestep.long().clamp(lo, hi - 1)
    sigma = (timestep + 1).double() / N
    return (1 - sigma).numpy()


def sample_sit(f, gen, n=N_SAMPLES):
    """SiT-style transport with logit-normal t (t = 0 is noise already)."""
    return torch.sigmoid(float(f["ln_mu"]) + float(f["ln_sigma"]) * torch.randn(n, generator=gen, dtype=torch.float64)).numpy()


CASES = [  # (m in the artifact's time, s, the artifact's --shift)
    (0.3, 1.0, 1.0),
    (1.2, 1.0, 3.0),
    (-0.6, 0.8, 3.0),
    (0.1, 1.5, 0.5),
]


@pytest.mark.parametrize("m, s, shift_a", CASES)
@pytest.mark.parametrize("target", ["kohya", "kohya-sd3", "simpletuner", "onetrainer", "sit"])
def test_each_trainer_samples_the_fit(tmp_path, m, s, shift_a, target):
    art = write_logitnormal_artifact(tmp_path / "a.safetensors", m, s, {"name": "linear", "shift": shift_a})
    res = run("export", art, "--to", target, "--quiet")
    assert res.exit_code == 0, res.output
    gen = torch.Generator().manual_seed(1)
    if target == "onetrainer":
        t = sample_onetrainer(json.loads("{" + res.stdout.strip().rstrip(",") + "}"), gen)
    else:
        assert res.stdout.count("\n") == 1
        t = {"kohya": sample_kohya, "kohya-sd3": sample_kohya_sd3, "simpletuner": sample_simpletuner,
             "sit": sample_sit}[target](flags(res.stdout), gen)
    m_p = m - math.log(shift_a)
    assert ks_to_logitnormal(t, m_p, s) < 0.01
    # the same samples are far from the unconverted m or the opposite sign: the test can tell a wrong mapping.
    assert ks_to_logitnormal(t, -m_p, s) > 0.05 or abs(m_p) < 0.1
    assert ks_to_logitnormal(t, m, s) > 0.05 or shift_a == 1.0


@pytest.mark.parametrize("m, s, shift_a", CASES)
@pytest.mark.parametrize("scheduler_shift", [1.0, 3.0])
def test_diffusers_with_the_trainer_schedulers_shift(tmp_path, m, s, shift_a, scheduler_shift):
    art = write_logitnormal_artifact(tmp_path / "a.safetensors", m, s, {"name": "linear", "shift": shift_a})
    res = run("export", art, "--to", "diffusers", "--shift", scheduler_shift, "-q")
    assert res.exit_code == 0, res.output
    t = sample_diffusers(flags(res.stdout), scheduler_shift, torch.Generator().manual_seed(2))
    assert ks_to_logitnormal(t, m - math.log(shift_a), s) < 0.01


def test_diffusers_shift_defaults_to_1_for_an_unshifted_artifact(tmp_path):
    art = write_logitnormal_artifact(tmp_path / "a.safetensors", 0.5, 1.0, {"name": "linear", "shift": 1.0})
    f = flags(run("export", art, "--to", "diffusers", "-q").stdout)
    assert float(f["logit_mean"]) == pytest.approx(0.5, abs=1e-6) and float(f["logit_std"]) == 1.0


def test_diffusers_refuses_a_shifted_artifact_without_the_trainer_shift(tmp_path):
    """The scheduler's shift is in the trainer's config, not in the flags: it must be stated."""
    art = write_logitnormal_artifact(tmp_path / "a.safetensors", 0.5, 1.0, {"name": "linear", "shift": 2.0})
    res = run("export", art, "--to", "diffusers", "-q")
    assert res.exit_code == 1 and res.stdout == "" and res.stderr.count("\n") == 1
    assert "was estimated with --shift 2.0; pass --shift" in res.stderr
    # told explicitly, either shift is honoured: the same noise levels in each trainer (eq. (1))
    same = flags(run("export", art, "--to", "diffusers", "--shift", "2", "-q").stdout)
    other = flags(run("export", art, "--to", "diffusers", "--shift", "1", "-q").stdout)
    assert float(same["logit_mean"]) == pytest.approx(0.5, abs=1e-6)
    assert float(other["logit_mean"]) == pytest.approx(0.5 - math.log(2.0), abs=1e-6)


def test_kohya_sd3_prints_the_artifacts_shift_unless_told(tmp_path):
    art = write_logitnormal_artifact(tmp_path / "a.safetensors", 0.5, 1.0, {"name": "linear", "shift": 3.0})
    f = flags(run("export", art, "--to", "kohya-sd3", "-q").stdout)
    assert float(f["training_shift"]) == 3.0 and float(f["logit_mean"]) == pytest.approx(-0.5, abs=1e-6)
    f = flags(run("export", art, "--to", "kohya-sd3", "--shift", "1", "-q").stdout)
    assert float(f["training_shift"]) == 1.0 and float(f["logit_mean"]) == pytest.approx(-(0.5 - math.log(3.0)), abs=1e-6)
    t = sample_kohya_sd3(f, torch.Generator().manual_seed(4))
    assert ks_to_logitnormal(t, 0.5 - math.log(3.0), 1.0) < 0.01


def _trainer_parsers():
    """The trainers' own argument definitions for the exported flags (names, types, choices), as read from their
    source: diffusers' SD3/Flux DreamBooth scripts, kohya's train_util/flux_train_utils/sd3_train_utils, SimpleTuner."""
    import argparse

    def parser(*args):
        p = argparse.ArgumentParser(exit_on_error=False)
        for name, kw in args:
            p.add_argument(name, **kw)
        return p

    logit = [("--logit_mean", {"type": float, "default": 0.0}), ("--logit_std", {"type": float, "default": 1.0}),
             ("--mode_scale", {"type": float, "default": 1.29})]
    return {
        # train_dreambooth(_lora)_sd3.py: no "none"; the Flux scripts add it (and default to it)
        "diffusers": parser(("--weighting_scheme", {"type": str, "default": "logit_normal",
                                                    "choices": ["sigma_sqrt", "logit_normal", "mode", "cosmap"]}), *logit),
        "kohya": parser(("--timestep_sampling", {"choices": ["sigma", "uniform", "sigmoid", "shift", "flux_shift"],
                                                 "default": "sigma"}),
                        ("--sigmoid_scale", {"type": float, "default": 1.0}),
                        ("--discrete_flow_shift", {"type": float, "default": 3.0})),
        "kohya-sd3": parser(("--weighting_scheme", {"type": str, "default": "uniform", "choices": [
            "sigma_sqrt", "logit_normal", "mode", "cosmap", "none", "uniform"]}), *logit,
            ("--training_shift", {"type": float, "default": 1.0})),
        "simpletuner": parser(("--flow_sigmoid_scale", {"type": float, "default": 1.0}),
                              ("--flow_schedule_shift", {"type": float, "default": 3.0})),
    }


@pytest.mark.parametrize("target", ["diffusers", "kohya", "kohya-sd3", "simpletuner"])
def test_flags_parse_with_the_trainers_argument_definitions(tmp_path, target):
    art = write_logitnormal_artifact(tmp_path / "a.safetensors", 0.7, 1.3, {"name": "linear", "shift": 3.0})
    extra = ["--shift", "3"] if target == "diffusers" else []
    line = run("export", art, "--to", target, "-q", *extra).stdout.strip()
    ns = _trainer_parsers()[target].parse_args(line.split())
    for key, value in flags(line).items():
        assert getattr(ns, key) == (value if isinstance(getattr(ns, key), str) else float(value))


def _onetrainer_migrations_run(cfg, current=11):
    """OneTrainer's BaseConfig.from_dict: migrations run from cfg["__version"] (0 when absent) up to the current
    version; migration 3 pops noising_weight/noising_bias and rewrites the distribution (TrainConfig)."""
    version, cfg = cfg.get("__version", 0), dict(cfg)
    while version < current:
        if version == 3:
            weight, bias = cfg.pop("noising_weight", 0.0), cfg.pop("noising_bias", 0.5)
            cfg["timestep_distribution"] = "SIGMOID" if weight != 0 else "UNIFORM"
            cfg["noising_weight"], cfg["noising_bias"] = (weight, bias - 0.5) if weight != 0 else (0.0, 0.0)
        version += 1
    return cfg


def test_onetrainer_config_names_its_version(tmp_path):
    from vrcurve.export import ONETRAINER_CONFIG_VERSION

    art = write_logitnormal_artifact(tmp_path / "a.safetensors", 0.7, 1.3)
    cfg = json.loads("{" + run("export", art, "--to", "onetrainer", "-q").stdout.strip().rstrip(",") + "}")
    assert cfg["__version"] == ONETRAINER_CONFIG_VERSION == 11
    assert _onetrainer_migrations_run(cfg) == cfg  # nothing migrates: the location survives loading
    hand_made = {k: v for k, v in cfg.items() if k != "__version"}
    assert _onetrainer_migrations_run(hand_made)["timestep_distribution"] == "SIGMOID"  # why "__version" is needed


@pytest.mark.parametrize("m, s, shift_a", CASES)
def test_path_location_is_the_fit_seen_through_the_shift(m, s, shift_a):
    """Eq. (1) from the scheduler's definition: u ~ logit-normal(m, s) in the shifted time, sigma = shift(1 - u)."""
    gen = torch.Generator().manual_seed(3)
    u = torch.sigmoid(m + s * torch.randn(N_SAMPLES, generator=gen, dtype=torch.float64))
    sigma = shift_sigma(1 - u, shift_a)
    assert ks_to_logitnormal((1 - sigma).numpy(), path_location(m, shift_a), s) < 0.01


def test_comment_lines_name_the_convention(tmp_path):
    art = write_logitnormal_artifact(tmp_path / "a.safetensors", 0.4, 1.0, {"name": "linear", "shift": 3.0})
    expected = {"diffusers": "t = 0 noise", "kohya": "t = 1 is noise", "kohya-sd3": "t = 1 is noise",
                "simpletuner": "t = 1 is noise", "onetrainer": "t = 1 is noise", "sit": "t = 0 is noise"}
    for target, words in expected.items():
        extra = ["--shift", "3"] if target == "diffusers" else []
        res = run("export", art, "--to", target, *extra)
        assert res.exit_code == 0
        lines = res.stdout.splitlines()
        assert lines[0].startswith(f"# {target}: ") and words in lines[0]
        assert any("m_p = m - ln(shift) = " + num(0.4 - math.log(3.0)) in line for line in lines if line.startswith("#"))
        quiet = run("export", art, "--to", target, "-q", *extra).stdout.splitlines()
        assert quiet == [line for line in lines if not line.startswith("#")]


@pytest.mark.parametrize("name, params, path_type", [
    ("linear", {"shift": 3.0}, "Linear"), ("cosine", {}, "GVP"), ("diffusion", {"beta_min": 0.1, "beta_max": 20.0}, "VP"),
])
def test_sit_path_type_follows_the_scheduler(tmp_path, name, params, path_type):
    art = write_logitnormal_artifact(tmp_path / "a.safetensors", 0.2, 1.0, {"name": name, **params})
    res = run("export", art, "--to", "sit", "-q")
    assert res.exit_code == 0 and flags(res.stdout)["path-type"] == path_type


@pytest.mark.parametrize("scheduler, target, message", [
    ({"name": "cosine"}, "kohya", "linear (rectified-flow) path"),
    ({"name": "diffusion", "beta_min": 0.1, "beta_max": 20.0}, "diffusers", "linear (rectified-flow) path"),
    ({"name": "cosine"}, "simpletuner", "the curve depends on the path"),
    ({"name": "custom", "object": "m:X"}, "onetrainer", "custom scheduler"),
    ({"name": "custom", "object": "m:X"}, "sit", "matches none of SiT's path types"),
    ({"name": "diffusion", "beta_min": 0.5, "beta_max": 10.0}, "sit", "SiT's VP path uses 0.1 and 20"),
])
def test_other_paths_are_refused_with_the_reason(tmp_path, scheduler, target, message):
    art = write_logitnormal_artifact(tmp_path / "a.safetensors", 0.2, 1.0, scheduler)
    res = run("export", art, "--to", target)
    assert res.exit_code == 1 and res.stdout == ""
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and message in res.stderr


@pytest.mark.parametrize("args", [
    ["--to", "comfy"], [], ["--to", "kohya", "--shift", "3"], ["--to", "onetrainer", "--shift", "3"],
    ["--to", "kohya-sd3", "--shift", "0"], ["--to", "diffusers", "--shift", "0"],
    ["--to", "diffusers", "--shift", "-1"],
])
def test_usage_errors_exit_2(tmp_path, args):
    art = write_logitnormal_artifact(tmp_path / "a.safetensors", 0.2)
    assert run("export", art, *args).exit_code == 2


def test_missing_artifact_is_one_line(tmp_path):
    res = run("export", tmp_path / "none.safetensors", "--to", "kohya")
    assert res.exit_code == 1 and "does not exist" in res.stderr and res.stderr.count("\n") == 1


def test_json_has_everything(tmp_path):
    art = write_logitnormal_artifact(tmp_path / "a.safetensors", 0.7, 1.0, {"name": "linear", "shift": 3.0})
    res = run("export", art, "--to", "json")
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    from vrcurve.artifact import read_artifact

    arrays, meta = read_artifact(art)
    assert data["time_convention"] == "t0_noise"
    assert np.allclose(data["pdf"], arrays["pdf"]) and len(data["pdf"]) == 1000
    assert np.allclose(data["cdf"], arrays["cdf"]) and np.allclose(data["icdf"], arrays["icdf"])
    assert data["logitnormal"]["m_path"] == pytest.approx(0.7 - math.log(3.0))
    assert set(data["targets"]) == {"diffusers", "kohya", "kohya-sd3", "simpletuner", "onetrainer", "sit"}
    assert data["targets"]["diffusers"]["shift"] == 3.0 and data["targets"]["kohya-sd3"]["training_shift"] == 3.0
    assert data["targets"]["kohya"]["discrete_flow_shift"] == pytest.approx(math.exp(-(0.7 - math.log(3.0))))
    assert data["meta"]["checksum"] == meta["checksum"]
    cos = write_logitnormal_artifact(tmp_path / "c.safetensors", 0.7, 1.0, {"name": "cosine"})
    assert set(json.loads(run("export", cos, "--to", "json").stdout)["targets"]) == {"sit"}


def test_fit_scale_refits_s(tmp_path):
    # The density is logit-normal(0.4, 1.7), but the stored fit says s = 1 (as when estimated without --fit-scale).
    art = write_logitnormal_artifact(tmp_path / "a.safetensors", 0.4, 1.7, fit_s=1.0)
    assert float(flags(run("export", art, "--to", "sit", "-q").stdout)["ln_sigma"]) == 1.0
    f = flags(run("export", art, "--to", "sit", "-q", "--fit-scale").stdout)
    assert float(f["ln_sigma"]) == pytest.approx(1.7, abs=0.01) and float(f["ln_mu"]) == pytest.approx(0.4, abs=0.01)


def test_export_artifact_is_the_cli(tmp_path):
    from vrcurve.artifact import read_artifact

    art = write_logitnormal_artifact(tmp_path / "a.safetensors", -0.3, 1.2, {"name": "linear", "shift": 2.0})
    arrays, meta = read_artifact(art)
    for target in TARGETS[:-1]:
        ex = export_artifact(arrays, meta, target, trainer_shift=2.0 if target == "diffusers" else None)
        extra = ["--shift", "2"] if target == "diffusers" else []
        assert run("export", art, "--to", target, "-q", *extra).stdout.strip() == "\n".join(ex.lines)


def test_num():
    assert num(-0.0) == "0.0" and num(1) == "1.0" and num(0.1234567) == "0.123457" and num(-2.5) == "-2.5"
    assert num(-1e-9) == "0.0" and float(num(22026.4657948)) == pytest.approx(22026.465795)


# --- DDPM (SD 1.x/2.x/SDXL) artifacts --------------------------------------------------------------------------

DDPM = {"name": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}


def sample_onetrainer_ddpm_index(cfg, gen, n=N_SAMPLES, N=1000):
    """OneTrainer's SD/SDXL setups: timestep = int(sigmoid(N(bias, (weight + 1)^2)) * N), the DDPM index."""
    normal = cfg["noising_bias"] + (cfg["noising_weight"] + 1.0) * torch.randn(n, generator=gen, dtype=torch.float64)
    return (normal.sigmoid() * N).long().clamp(0, N - 1)


@pytest.mark.parametrize("m, s", [(1.2, 1.0), (0.4, 0.7)])
def test_onetrainer_takes_a_ddpm_artifact_in_index_terms(tmp_path, m, s):
    art = write_logitnormal_artifact(tmp_path / "a.safetensors", m, s, DDPM)
    res = run("export", art, "--to", "onetrainer")
    assert res.exit_code == 0, res.output
    assert "DDPM alphas_cumprod" in res.stdout
    cfg = json.loads("{" + run("export", art, "--to", "onetrainer", "-q").stdout.strip().rstrip(",") + "}")
    idx = sample_onetrainer_ddpm_index(cfg, torch.Generator().manual_seed(5))
    # vrcurve's own sample_indices draws the same indices: index i is the noise-level bin [i/N, (i+1)/N)
    t = (1 - (idx.double() + 0.5) / 1000).numpy()
    assert ks_to_logitnormal(t, m, s) < 0.01


@pytest.mark.parametrize("target, words", [
    ("diffusers", "diffusers' SD/SDXL scripts draw integer timesteps uniformly"),
    ("kohya", "kohya's SD/SDXL scripts draw integer timesteps uniformly between --min_timestep"),
    ("kohya-sd3", "kohya's SD/SDXL scripts"),
    ("simpletuner", "flow-matching models"),
])
def test_ddpm_artifacts_say_what_to_use_instead(tmp_path, target, words):
    art = write_logitnormal_artifact(tmp_path / "a.safetensors", 1.2, 1.0, DDPM)
    res = run("export", art, "--to", target)
    assert res.exit_code == 1 and res.stdout == "" and res.stderr.count("\n") == 1
    assert words in res.stderr and "sample_indices(batch_size, 1000)" in res.stderr
    assert "re-estimate with --scheduler linear" not in res.stderr  # the old, wrong advice for SD/SDXL users


def test_ddpm_artifact_json_has_the_onetrainer_values_only(tmp_path):
    art = write_logitnormal_artifact(tmp_path / "a.safetensors", 1.2, 1.0, {**DDPM, "name": "ddpm_linear"})
    data = json.loads(run("export", art, "--to", "json").stdout)
    assert set(data["targets"]) == {"onetrainer"} and data["targets"]["onetrainer"]["noising_bias"] == -1.2
