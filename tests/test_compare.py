"""`vrcurve compare`: exact KS between piecewise-linear CDFs, the difference of m, and the exit statuses."""

import json

import numpy as np
import pytest
from scipy.special import ndtr
from typer.testing import CliRunner

from vrcurve.artifact import write_artifact
from vrcurve.cli import app
from vrcurve.compare import compare
from vrcurve.density import density_from_curve, ks_between_cdfs

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_logitnormal(path, m, T=1000, scheduler=None, normalization=None):
    """An artifact whose density is logit-normal(m, 1) on T bins, with m as its fit."""
    edges = np.arange(T + 1) / T
    inner = edges[1:-1]
    cdf = np.concatenate([[0.0], ndtr(np.log(inner) - np.log1p(-inner) - m), [1.0]])
    d = density_from_curve(np.diff(cdf), uniform_mix=0.0)
    tensors = {"t": (np.arange(T) + 0.5) / T, "S": np.zeros(T), "h2": np.ones(T), "variance": d.pdf, "pdf": d.pdf,
               "cdf": d.cdf, "icdf": d.icdf, "ks_m": np.zeros(25), "ks": np.zeros(25), "S_stderr": np.zeros(T),
               "variance_stderr": np.zeros(T)}
    meta = {"time_convention": "t0_noise", "scheduler": scheduler or {"name": "linear", "shift": 1.0},
            "logitnormal_m": m, "logitnormal_s": 1.0, "samples": 10, "noise": 2, "timesteps": T, "dim": 4,
            "normalization": normalization or {"mode": "global", "mean": 0.1, "std": 2.0, "scaling_factor": 1.0,
                                               "shift_factor": 0.0}}
    write_artifact(path, tensors, meta)
    return path


def test_closed_form_uniform_against_front_loaded():
    # F_A(t) = t; F_B(t) = min(2t, 1): the sup is 1/2 at t = 1/2, an edge of B only.
    assert ks_between_cdfs(np.array([0.0, 1.0]), np.array([0.0, 1.0, 1.0])) == pytest.approx(0.5)


def test_the_sup_can_sit_on_an_edge_of_the_other_grid():
    a = np.array([0.0, 1 / 3, 2 / 3, 1.0])  # uniform on 3 bins
    b = np.array([0.0, 0.9, 1.0])           # 0.9 of the mass in [0, 1/2]
    # On A's edges alone the largest gap is 0.2667; at t = 1/2 (B's edge) it is 0.9 - 0.5 = 0.4.
    assert ks_between_cdfs(a, b) == pytest.approx(0.4)
    assert ks_between_cdfs(b, a) == pytest.approx(0.4)


def test_equals_a_dense_evaluation_for_random_cdfs():
    rng = np.random.default_rng(0)
    for Ta, Tb in [(7, 5), (100, 64), (3, 1000)]:
        a = np.concatenate([[0], np.cumsum(rng.random(Ta))])
        b = np.concatenate([[0], np.cumsum(rng.random(Tb) * (rng.random(Tb) > 0.3))])
        a, b = a / a[-1], b / b[-1]
        t = np.linspace(0, 1, 1_000_001)
        dense = np.max(np.abs(np.interp(t, np.linspace(0, 1, Ta + 1), a) - np.interp(t, np.linspace(0, 1, Tb + 1), b)))
        exact = ks_between_cdfs(a, b)
        assert dense <= exact + 1e-12 and exact - dense < 1e-5


def test_two_logitnormals_match_the_closed_form(tmp_path):
    a = write_logitnormal(tmp_path / "a.safetensors", 0.2)
    b = write_logitnormal(tmp_path / "b.safetensors", 0.9, T=600)
    from vrcurve.artifact import read_artifact

    rows = compare([(str(p), *read_artifact(p)) for p in (a, b)])
    # KS between N(m1, 1) and N(m2, 1), hence between the logit-normals: 2 Phi(|m1 - m2| / 2) - 1.
    assert rows[1].ks == pytest.approx(2 * ndtr(0.35) - 1, abs=2e-3)
    assert rows[0].ks == 0.0 and rows[1].dm == pytest.approx(0.7) and rows[1].timesteps == 600


@pytest.fixture
def pair(tmp_path):
    return (write_logitnormal(tmp_path / "a.safetensors", 0.2), write_logitnormal(tmp_path / "b.safetensors", 0.9),
            write_logitnormal(tmp_path / "c.safetensors", 0.25))


def test_table_side_by_side(pair):
    a, b, c = pair
    res = run("compare", a, b, c)
    assert res.exit_code == 0 and res.stderr == ""
    lines = res.stdout.splitlines()
    for path, m in ((a, "+0.2000"), (b, "+0.9000"), (c, "+0.2500")):
        row = next(line.split() for line in lines if line.split()[:1] == [str(path)])
        assert row[7] == m  # after the path, scheduler, normalization, M, K, d, T
    assert next(line.split() for line in lines if line.split()[:1] == [str(b)])[-1] == "+0.7000"  # difference of m


def test_json(pair):
    a, b, c = pair
    data = json.loads(run("compare", a, b, c, "--json").stdout)
    assert [r["path"] for r in data["artifacts"]] == [str(a), str(b), str(c)]
    assert data["max_ks"] == pytest.approx(max(r["ks"] for r in data["artifacts"]))
    assert data["artifacts"][2]["ks"] < data["artifacts"][1]["ks"] and data["failed"] is False


def test_fail_above_exits_1_with_one_line(pair):
    a, b, c = pair
    ks_b = json.loads(run("compare", a, b, "--json").stdout)["max_ks"]
    res = run("compare", a, c, b, "--fail-above", ks_b / 2)
    assert res.exit_code == 1
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1
    assert str(b) in res.stderr and "--fail-above" in res.stderr
    assert str(b) in res.stdout  # the table is still printed
    assert run("compare", a, c, b, "--fail-above", ks_b * 1.01).exit_code == 0
    assert run("compare", a, c, "--fail-above", ks_b / 2).exit_code == 0
    res = run("compare", a, b, "--fail-above", ks_b / 2, "--json")
    assert res.exit_code == 1 and json.loads(res.stdout)["failed"] is True


def test_identical_artifacts_pass_at_zero(pair):
    a = pair[0]
    assert run("compare", a, a, "--fail-above", 0).exit_code == 0


@pytest.mark.parametrize("extra", [[], ["--fail-above", "-0.1"], ["--fail-above", "x"]])
def test_usage_errors_exit_2(pair, extra):
    args = [pair[0], pair[1]] if extra else [pair[0]]
    assert run("compare", *args, *extra).exit_code == 2


def test_missing_or_bad_artifact_exits_1(pair, tmp_path):
    res = run("compare", pair[0], tmp_path / "none.safetensors")
    assert res.exit_code == 1 and "does not exist" in res.stderr and res.stderr.count("\n") == 1
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    assert run("compare", bad, pair[0]).exit_code == 1


def test_different_schedulers_get_a_note(tmp_path):
    a = write_logitnormal(tmp_path / "a.safetensors", 0.2)
    b = write_logitnormal(tmp_path / "b.safetensors", 0.2, scheduler={"name": "cosine"})
    res = run("compare", a, b)
    assert res.exit_code == 0 and "different variables" in res.stderr


def test_normalisation_is_shown_and_a_difference_noted(tmp_path):
    a = write_logitnormal(tmp_path / "a.safetensors", 0.2)
    b = write_logitnormal(tmp_path / "b.safetensors", 0.5, normalization={
        "mode": "none", "scaling_factor": 0.18215, "shift_factor": 0.0})
    res = run("compare", a, b)
    assert res.exit_code == 0
    assert "normalization" in res.stdout and "global" in res.stdout and "none, (z - 0) * 0.18215" in res.stdout
    assert res.stderr.startswith(f"note: {b} normalised or rescaled the data differently") and res.stderr.count("\n") == 1
    rows = json.loads(run("compare", a, b, "--json").stdout)["artifacts"]
    assert rows[1]["normalization"]["scaling_factor"] == 0.18215
    assert run("compare", a, a).stderr == ""


def test_normalization_text():
    from vrcurve.compare import normalization_text

    assert normalization_text({"mode": "global", "mean": -0.43654, "std": 0.70222, "scaling_factor": 1.0,
                               "shift_factor": 0.0}) == "global (mean -0.4365, std 0.7022)"
    assert normalization_text({"mode": "channel", "mean": [0, 0, 0, 0], "std": [1, 1, 1, 1], "scaling_factor": 1.5305,
                               "shift_factor": 0.0609}) == "channel (4 channels), (z - 0.0609) * 1.5305 (undone by the normalisation)"
    assert normalization_text({"mode": "none"}) == "none" and normalization_text(None) == "?"
