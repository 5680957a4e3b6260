import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import vrcurve
from vrcurve import _kernel
from vrcurve.artifact import payload_checksum, read_artifact
from vrcurve.cli import app, density_picture
from vrcurve.estimator import resolve_precision

runner = CliRunner()
SMALL = ["-M", "12", "-K", "4", "-T", "50"]
ARTIFACT_METADATA = {
    "format", "format_version", "vrcurve_version", "time_convention", "scheduler", "likelihood", "form", "samples",
    "noise", "timesteps", "dim", "shape", "seed", "normalization", "data", "logitnormal_m", "logitnormal_m_grid",
    "logitnormal_s", "ks", "created", "elapsed_s", "device", "checksum",
}


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_estimate_writes_a_complete_artifact(tiny_npy, tmp_path, monkeypatch):
    monkeypatch.delenv("VRCURVE_KERNEL")  # the kernel chosen as a user's run chooses it
    out = tmp_path / "vr.safetensors"
    res = run("estimate", "--data", tiny_npy, "-o", out, *SMALL, "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    for key in ("artifact", "samples", "noise", "timesteps", "dim", "logitnormal_m", "logitnormal_m_grid", "ks",
                "peak_t", "elapsed_s"):
        assert key in summary
    assert (summary["samples"], summary["noise"], summary["timesteps"], summary["dim"]) == (12, 4, 50, 48)
    arrays, meta = read_artifact(out)
    # the precision the products ran in: what auto resolved to on this machine
    assert summary["precision"] == meta["precision"] == resolve_precision("auto", "cpu")
    # the kernel that ran the blocks, and why: timed at start where both can run, else the only one
    fused = meta["precision"] == "bf16" and _kernel.fused() is not None
    assert summary["kernel"] == meta["kernel"] in (("fused", "pytorch") if fused else ("pytorch",))
    assert summary["kernel_choice"] == meta["kernel_choice"]
    assert meta["kernel_choice"].startswith("timed at start" if fused else "the only kernel")
    assert meta["noise_space"] == "span"
    assert ARTIFACT_METADATA <= set(meta)
    assert meta["time_convention"] == "t0_noise" and meta["shape"] == [3, 4, 4]
    assert meta["data"]["samples_total"] == 40 and meta["data"]["samples_chosen"] == 12
    assert arrays["t"].shape == (50,) and arrays["cdf"].shape == (51,) and arrays["icdf"].shape == (4097,)
    assert summary["logitnormal_m"] == pytest.approx(meta["logitnormal_m"])
    assert summary["peak_t"] == pytest.approx(float(arrays["t"][np.argmax(arrays["pdf"])]))


def test_same_seed_same_artifact_tensors(tiny_npy, tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert run("estimate", "--data", tiny_npy, "-o", a, *SMALL, "-q").exit_code == 0
    assert run("estimate", "--data", tiny_npy, "-o", b, *SMALL, "-q").exit_code == 0
    (ta, ma), (tb, mb) = read_artifact(a), read_artifact(b)
    # the checksum also covers the creation time; the tensors alone must be bit-identical
    assert payload_checksum(ta) == payload_checksum(tb) and ma["data"]["fingerprint"] == mb["data"]["fingerprint"]
    c = tmp_path / "c.safetensors"
    assert run("estimate", "--data", tiny_npy, "-o", c, *SMALL, "-q", "--seed", "5").exit_code == 0
    assert read_artifact(c)[1]["data"]["fingerprint"] != ma["data"]["fingerprint"]


def test_quiet_prints_nothing(tiny_npy, tmp_path):
    res = run("estimate", "--data", tiny_npy, "-o", tmp_path / "q.safetensors", *SMALL, "--quiet")
    assert res.exit_code == 0 and res.stdout == "" and res.stderr == ""


def test_human_output(tiny_npy, tmp_path):
    res = run("estimate", "--data", tiny_npy, "-o", tmp_path / "h.safetensors", *SMALL, "--scheduler", "cosine")
    assert res.exit_code == 0
    assert "logitnormal_m" in res.stdout and "name=cosine" in res.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "missing.npy"], "data path missing.npy does not exist"),
        (["--data", "{npy}", "-M", "400"], "holds 40 samples, fewer than --samples 400"),
        (["--data", "{npy}", "--scheduler", "custom"], "needs --custom"),
        (["--data", "{npy}", "--scheduler", "cosine", "--shift", "3"], "--shift applies to the linear scheduler only"),
        (["--data", "{npy}", "--scheduler", "nomod_xyz:Thing"], "cannot import module 'nomod_xyz'"),
        (["--data", "{npy}", "--device", "cuda:7"], "cuda"),
        (["--data", "{npy}", "-o", "{tmp}/no/such/dir/a.safetensors"], "does not exist"),
    ],
)
def test_user_errors_exit_1_with_one_line_and_no_file(tiny_npy, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    args = [a.format(npy=tiny_npy, tmp=tmp_path) for a in args]
    res = run("estimate", *SMALL, *args)
    assert res.exit_code == 1, res.output
    assert message in res.stderr
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1
    assert "Traceback" not in res.output
    assert not list(tmp_path.rglob("*.safetensors")) and not list(tmp_path.rglob("*.tmp"))


def test_existing_output_needs_overwrite(tiny_npy, tmp_path):
    out = tmp_path / "vr.safetensors"
    out.write_bytes(b"keep me")
    res = run("estimate", "--data", tiny_npy, "-o", out, *SMALL)
    assert res.exit_code == 1 and "--overwrite" in res.stderr
    assert out.read_bytes() == b"keep me"
    assert run("estimate", "--data", tiny_npy, "-o", out, *SMALL, "--overwrite", "-q").exit_code == 0
    read_artifact(out)


@pytest.mark.parametrize(
    "args",
    [["--likelihood", "max"], ["--form", "other"], ["--normalize", "minmax"], ["-K", "0"], ["-M", "many"],
     ["--scheduler", "lineer"], ["--no-such-option"]],
)
def test_usage_errors_exit_2(tiny_npy, tmp_path, args):
    res = run("estimate", "--data", tiny_npy, "-o", tmp_path / "u.safetensors", *args)
    assert res.exit_code == 2, res.output
    assert not (tmp_path / "u.safetensors").exists()


def test_fit_logitnormal(tiny_artifact):
    meta = read_artifact(tiny_artifact)[1]
    res = run("fit-logitnormal", tiny_artifact, "--quiet")
    assert res.exit_code == 0 and float(res.stdout) == pytest.approx(meta["logitnormal_m"], abs=6e-5)
    res = run("fit-logitnormal", tiny_artifact, "--quiet", "--convention", "t1-noise")
    assert float(res.stdout) == pytest.approx(-meta["logitnormal_m"], abs=6e-5)
    res = run("fit-logitnormal", tiny_artifact, "--json")
    data = json.loads(res.stdout)
    assert data["m_grid"] == meta["logitnormal_m_grid"] and len(data["grid"]) == 25
    assert min(g["ks"] for g in data["grid"]) == pytest.approx(data["ks_grid_best"])
    res = run("fit-logitnormal", tiny_artifact)
    assert "best m on the grid" in res.stdout and "<- best on grid" in res.stdout
    res = run("fit-logitnormal", tiny_artifact, "--fit-scale", "--json")
    assert json.loads(res.stdout)["ks"] <= data["ks"] + 1e-12


def test_fit_logitnormal_bad_artifact(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_text("nope")
    res = run("fit-logitnormal", bad)
    assert res.exit_code == 1 and "not a readable safetensors file" in res.stderr
    res = run("fit-logitnormal", tmp_path / "missing.safetensors")
    assert res.exit_code == 1 and "does not exist" in res.stderr


def test_show(tiny_artifact):
    res = run("show", tiny_artifact)
    assert res.exit_code == 0
    assert "logitnormal_m" in res.stdout and "t=0 (noise)" in res.stdout and "checksum" not in res.stdout
    assert "standard errors" in res.stdout
    meta = json.loads(run("show", tiny_artifact, "--json").stdout)
    assert meta["format"] == "vrcurve" and meta["samples"] == 16
    norm = meta["normalization"]
    assert f"global (mean {norm['mean']:.4g}, std {norm['std']:.4g})" in res.stdout
    assert next(line for line in res.stdout.splitlines() if line.startswith("uniform_mix")).split()[1] == "0.0200"


def test_density_picture_puts_the_peak_where_it_is():
    pdf = np.zeros(100)
    pdf[70:80] = 1.0
    lines = density_picture(pdf, width=10, height=4)
    top = lines[0][8:]
    assert top[7] == "█" and top.replace("█", "").strip() == ""


def test_density_picture_shades_the_error_band():
    pdf = np.full(64, 0.5)
    pdf[0] = 1.0  # sets the scale: 8 rows = 1.0, so 0.5 fills rows 0-3
    upper = pdf.copy()
    upper[1:32] = 0.75  # a band up to row 5 over columns 1-31 only
    body = density_picture(pdf, width=64, height=8, upper=upper)[:8]  # top row first
    for row_from_top, line in enumerate(body):
        row = 7 - row_from_top
        shaded = {i for i, ch in enumerate(line[8:]) if ch == "░"}
        assert shaded == (set(range(1, 32)) if row in (4, 5) else set()), row
    assert "░" not in "".join(density_picture(pdf, width=64, height=8))


def test_density_picture_of_a_short_curve():
    lines = density_picture(np.array([1.0, 2.0, 0.0]), width=64, height=2)
    assert lines[0][8:] == " █ " and lines[1][8:] == "██ "


def test_schedulers_lists_all():
    res = run("schedulers", "--json")
    assert set(json.loads(res.stdout)) == {"linear", "cosine", "diffusion", "scaled_linear", "ddpm_linear", "custom"}


def test_version():
    res = run("--version")
    assert res.exit_code == 0 and vrcurve.__version__ in res.stdout


def test_console_script_end_to_end(tiny_npy, tmp_path):
    exe = shutil.which("vrcurve", path=str(Path(sys.executable).parent)) or shutil.which("vrcurve")
    assert exe, "the vrcurve console script is not installed"
    out = tmp_path / "vr.safetensors"
    env = {**os.environ, "COLUMNS": "120"}
    p = subprocess.run([exe, "estimate", "--data", str(tiny_npy), "-o", str(out), *SMALL, "-q"], capture_output=True,
                       text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "" and p.stderr == ""
    p = subprocess.run([exe, "fit-logitnormal", str(out), "-q"], capture_output=True, text=True, env=env)
    assert p.returncode == 0 and float(p.stdout) == pytest.approx(read_artifact(out)[1]["logitnormal_m"], abs=6e-5)
    p = subprocess.run([sys.executable, "-m", "vrcurve", "show", str(tmp_path / "none.safetensors")],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 1 and p.stderr.startswith("error: ") and "Traceback" not in p.stderr
    p = subprocess.run([exe, "estimate", "--likelihood", "max", "--data", str(tiny_npy)], capture_output=True, text=True)
    assert p.returncode == 2


def test_import_and_sampling_stay_light(tiny_artifact):
    code = ("import sys, vrcurve; t = vrcurve.load(sys.argv[1]).sample(4); "
            "print([m for m in ['typer', 'rich', 'h5py', 'scipy', 'PIL', 'matplotlib'] if m in sys.modules])")
    p = subprocess.run([sys.executable, "-c", code, str(tiny_artifact)], capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "[]"


def test_bootstrap_interval_and_convergence_table_are_stored_and_printed(tiny_npy, tmp_path):
    out = tmp_path / "c.safetensors"
    res = run("estimate", "--data", tiny_npy, "-o", out, "-M", "16", "-K", "4", "-T", "50", "--check-convergence",
              "--bootstrap", "50", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    meta = read_artifact(out)[1]
    lo, hi = meta["logitnormal_m_ci90"]
    assert lo <= meta["logitnormal_m"] <= hi and meta["bootstrap"]["replicates"] == 50
    assert [r["samples"] for r in meta["convergence"]["rows"]] == [4, 8, 16]
    assert summary["convergence"] == meta["convergence"] and summary["logitnormal_m_ci90"] == [lo, hi]
    if not meta["convergence"]["settled"]:
        assert "NOT settled" in res.stderr
    human = run("estimate", "--data", tiny_npy, "-o", out, "-M", "16", "-K", "4", "-T", "50", "--check-convergence",
                "--overwrite")
    assert "convergence in M" in human.stdout and "logitnormal_m_ci90" in human.stdout
    run("estimate", "--data", tiny_npy, "-o", out, *SMALL, "--bootstrap", "0", "--overwrite", "-q")
    meta = read_artifact(out)[1]
    assert "logitnormal_m_ci90" not in meta and "convergence" not in meta


def test_progress_bar_only_on_a_terminal(monkeypatch):
    import io

    from rich.console import Console

    from vrcurve import cli
    from vrcurve.progress import Update

    class Stream(io.StringIO):
        tty = False

        def isatty(self):
            return self.tty

    stream = Stream()
    monkeypatch.setattr(sys, "stderr", stream)
    assert cli._progress_reporter(True) == (None, None)  # stderr is not a terminal
    stream.tty = True
    assert cli._progress_reporter(False) == (None, None)  # --quiet
    monkeypatch.setattr(cli, "err", Console(file=stream, force_terminal=True, width=120))
    bar, report = cli._progress_reporter(True)
    with bar:
        report(Update("estimating", 250.0, 1000, "timesteps"))
        bar.refresh()
    shown = stream.getvalue()
    assert "250/1,000 timesteps" in shown and "estimating" in shown and "eta" in shown


def test_help_and_version_do_not_import_torch():
    code = ("import sys; from vrcurve.cli import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, sys.argv[1:]); print(r.exit_code, 'torch' in sys.modules)")
    for args in (["--version"], ["--help"], ["estimate", "--help"]):
        p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
        assert p.stdout.split() == ["0", "False"], (args, p.stdout, p.stderr)


def test_uniform_mix_is_applied_and_recorded(tiny_npy, tmp_path):
    paths = {}
    for lam in ("0", "0.2"):
        paths[lam] = tmp_path / f"mix{lam}.safetensors"
        assert run("estimate", "--data", tiny_npy, "-o", paths[lam], *SMALL, "-q", "--uniform-mix", lam).exit_code == 0
    (a0, m0), (a2, m2) = read_artifact(paths["0"]), read_artifact(paths["0.2"])
    assert m0["uniform_mix"] == 0.0 and m2["uniform_mix"] == 0.2
    np.testing.assert_array_equal(a0["variance"], a2["variance"])  # the same curve, only the density differs
    np.testing.assert_allclose(a2["pdf"], 0.8 * a0["pdf"].astype(np.float64) + 0.2, rtol=1e-6)
    assert a2["pdf"].min() >= 0.2 - 1e-6
    # the fit is of the mixed density
    from vrcurve.fit import fit_logitnormal

    assert m2["logitnormal_m"] == pytest.approx(fit_logitnormal(a2["cdf"].astype(np.float64)).m, abs=1e-4)
    default = tmp_path / "default.safetensors"
    assert run("estimate", "--data", tiny_npy, "-o", default, *SMALL, "-q").exit_code == 0
    assert read_artifact(default)[1]["uniform_mix"] == 0.02


@pytest.mark.parametrize("lam", ["1", "-0.5"])
def test_uniform_mix_out_of_range_is_a_usage_error(tiny_npy, tmp_path, lam):
    res = run("estimate", "--data", tiny_npy, "-o", tmp_path / "x.safetensors", *SMALL, "--uniform-mix", lam)
    assert res.exit_code == 2 and "--uniform-mix" in res.output and not (tmp_path / "x.safetensors").exists()


@pytest.fixture
def undersampled_npy(tmp_path):
    """16 samples in 512 dimensions: with --likelihood sum the density moves with M (not settled)."""
    path = tmp_path / "wide.npy"
    np.save(path, np.random.default_rng(1).standard_normal((16, 512)).astype(np.float32))
    return path


@pytest.mark.parametrize("mode", [["-q"], ["--json"], []])
def test_not_settled_warning_once_on_stderr(undersampled_npy, tmp_path, mode):
    res = run("estimate", "--data", undersampled_npy, "-o", tmp_path / "u.safetensors", "-M", "16", "-K", "4", "-T", "50",
              "--likelihood", "sum", "--check-convergence", "--bootstrap", "0", *mode)
    assert res.exit_code == 0, res.output
    meta = read_artifact(tmp_path / "u.safetensors")[1]
    assert meta["convergence"]["settled"] is False
    drift = meta["convergence"]["m_drift_per_doubling"]
    assert res.stderr.count("warning: NOT settled") == 1 and res.stderr.count("\n") == 1
    assert f"{drift:+.3f} per doubling of M" in res.stderr
    assert "choose M once" not in res.stdout  # the advice is printed once, on stderr
    if mode == ["-q"]:
        assert res.stdout == ""
    elif mode == ["--json"]:
        assert json.loads(res.stdout)["convergence"]["m_drift_per_doubling"] == drift
    else:
        assert f"m moves by {drift:+.3f} per doubling of M; NOT settled" in res.stdout


def test_noise_advice_is_printed_with_the_interval(tiny_npy, tmp_path):
    res = run("estimate", "--data", tiny_npy, "-o", tmp_path / "k.safetensors", *SMALL, "--bootstrap", "20")
    assert res.exit_code == 0
    lo, hi = read_artifact(tmp_path / "k.safetensors")[1]["logitnormal_m_ci90"]
    assert f"±{(hi - lo) / 2:.3f}" in res.stdout and ("K=4 is enough" in res.stdout or "raise --noise (K) to 16" in res.stdout)


@pytest.mark.parametrize("normalize", ["global", "channel"])
def test_scaling_factor_warning_when_normalisation_undoes_it(tiny_npy, tmp_path, normalize):
    plain, scaled = tmp_path / "p.safetensors", tmp_path / "s.safetensors"
    assert run("estimate", "--data", tiny_npy, "-o", plain, *SMALL, "--normalize", normalize, "-q").stderr == ""
    res = run("estimate", "--data", tiny_npy, "-o", scaled, *SMALL, "--normalize", normalize, "-q",
              "--scaling-factor", "0.18215", "--shift-factor", "0.5")
    assert res.exit_code == 0 and res.stdout == ""
    assert res.stderr.startswith(f"warning: --normalize {normalize} divides by") and res.stderr.count("\n") == 1
    # what the warning says: the factors did not change the curve (beyond float round-off of the rescaling)
    np.testing.assert_allclose(read_artifact(scaled)[0]["variance"], read_artifact(plain)[0]["variance"], rtol=1e-4)


def test_no_scaling_warning_with_normalize_none(tiny_npy, tmp_path):
    res = run("estimate", "--data", tiny_npy, "-o", tmp_path / "n.safetensors", *SMALL, "--normalize", "none", "-q",
              "--scaling-factor", "0.18215")
    assert res.exit_code == 0 and res.stderr == ""


def test_the_table_says_what_was_read_and_a_json_name_gets_a_note(tiny_npy, tmp_path):
    out = tmp_path / "vr.json"
    res = run("estimate", "--data", tiny_npy, "-o", out, *SMALL)
    assert res.exit_code == 0, res.output
    assert res.stderr.startswith(f"note: {out} is a safetensors file") and res.stderr.count("\n") == 1
    assert f"{tiny_npy}: 12 of 40 samples used" in " ".join(res.stdout.split())
    assert vrcurve.load(out).meta["data"]["samples_chosen"] == 12
    quiet = run("estimate", "--data", tiny_npy, "-o", tmp_path / "q.json", *SMALL, "-q")
    assert quiet.exit_code == 0 and quiet.output == ""


@pytest.mark.parametrize("command", [[], ["estimate"], ["fit-logitnormal"], ["show"], ["schedulers"], ["export"],
                                     ["plot"], ["compare"]])
def test_help_shows_no_value_after_a_flag(command):
    """A flag (--overwrite, --json, --help, --version) takes no value, so the help shows none: `--overwrite true`
    is not accepted, and a `<bool>` after it would say it is."""
    res = run(*command, "--help")
    assert res.exit_code == 0 and "--help" in res.stdout
    assert "<bool>" not in res.stdout and "BOOLEAN" not in res.stdout


def test_show_prints_the_interval_of_m_to_four_decimals(tmp_path):
    out = tmp_path / "k.safetensors"
    assert run("estimate", "--data", "demo", "-M", "16", "-K", "4", "-T", "40", "--bootstrap", "20", "-o", out,
               "-q").exit_code == 0
    lo, hi = read_artifact(out).meta.logitnormal_m_ci90
    row = next(line for line in run("show", out).stdout.splitlines() if line.startswith("logitnormal_m_ci90"))
    assert row.split(None, 1)[1].strip() == f"[{lo:.4f}, {hi:.4f}]"
