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
@pytest.mark.parametrize("target", ["kohya", "simpletuner", "onetrainer", "sit"])
def test_each_trainer_samples_the_fit(tmp_path, m, s, shift_a, target):
    art = write_logitnormal_artifact(tmp_path / "a.safetensors", m, s, {"name": "linear", "shift": shift_a})
    res = run("export", art, "--to", target, "--quiet")
    assert res.exit_code == 0, res.output
    gen = torch.Generator().manual_seed(1)
    if target == "onetrainer":
        t = sample_onetrainer(json.loads("{" + res.stdout.strip().rstrip(",") + "}"), gen)
    else:
        assert res.stdout.count("\n") == 1
        t = {"kohya": sample_kohya, "simpletuner": sample_simpletuner, "sit": sample_sit}[target](flags(res.stdout), gen)
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


def test_diffusers_shift_defaults_to_1(tmp_path):
    art = write_logitnormal_artifact(tmp_path / "a.safetensors", 0.5, 1.0, {"name": "linear", "shift": 2.0})
    f = flags(run("export", art, "--to", "diffusers", "-q").stdout)
    assert float(f["logit_mean"]) == pytest.approx(0.5 - math.log(2.0), abs=1e-6)
    assert float(f["logit_std"]) == 1.0


@pytest.mark.parametrize("m, s, shift_a", CASES)
def test_path_location_is_the_fit_seen_through_the_shift(m, s, shift_a):
    """Eq. (1) from the scheduler's definition: u ~ logit-normal(m, s) in the shifted time, sigma = shift(1 - u)."""
    gen = torch.Generator().manual_seed(3)
    u = torch.sigmoid(m + s * torch.randn(N_SAMPLES, generator=gen, dtype=torch.float64))
    sigma = shift_sigma(1 - u, shift_a)
    assert ks_to_logitnormal((1 - sigma).numpy(), path_location(m, shift_a), s) < 0.01


def test_comment_lines_name_the_convention(tmp_path):
    art = write_logitnormal_artifact(tmp_path / "a.safetensors", 0.4, 1.0, {"name": "linear", "shift": 3.0})
    expected = {"diffusers": "t = 0 noise", "kohya": "t = 1 is noise", "simpletuner": "t = 1 is noise",
                "onetrainer": "t = 1 is noise", "sit": "t = 0 is noise"}
    for target, words in expected.items():
        res = run("export", art, "--to", target)
        assert res.exit_code == 0
        lines = res.stdout.splitlines()
        assert lines[0].startswith(f"# {target}: ") and words in lines[0]
        assert any("m_p = m - ln(shift) = " + num(0.4 - math.log(3.0)) in line for line in lines if line.startswith("#"))
        quiet = run("export", art, "--to", target, "-q").stdout.splitlines()
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
    ["--to", "comfy"], [], ["--to", "kohya", "--shift", "3"], ["--to", "diffusers", "--shift", "0"],
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
    assert set(data["targets"]) == {"diffusers", "kohya", "simpletuner", "onetrainer", "sit"}
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
        ex = export_artifact(arrays, meta, target)
        assert run("export", art, "--to", target, "-q").stdout.strip() == "\n".join(ex.lines)


def test_num():
    assert num(-0.0) == "0.0" and num(1) == "1.0" and num(0.1234567) == "0.123457" and num(-2.5) == "-2.5"
    assert num(-1e-9) == "0.0" and float(num(22026.4657948)) == pytest.approx(22026.465795)
