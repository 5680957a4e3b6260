"""`vrcurve plot`: a valid PNG of the requested size, and a clear message when matplotlib is missing."""

import shutil
import struct
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from vrcurve.cli import app

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, "not a PNG file"
    assert data[12:16] == b"IHDR", "the first chunk of a PNG is IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def artifact(tiny_artifact, tmp_path):
    dst = tmp_path / "tiny.safetensors"
    shutil.copy(tiny_artifact, dst)
    return dst


@pytest.mark.parametrize("width, height, dpi, extra", [(640, 480, 80, []), (333, 777, 72, ["--log"]),
                                                       (1000, 700, 150, [])])
def test_png_of_the_requested_size(artifact, tmp_path, width, height, dpi, extra):
    pytest.importorskip("matplotlib")
    out = tmp_path / "curve.png"
    res = run("plot", artifact, "-o", out, "--width", width, "--height", height, "--dpi", dpi, *extra)
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out)
    assert png_size(out) == (width, height)
    assert not list(tmp_path.glob("*.tmp"))


def test_default_name_and_quiet(artifact):
    pytest.importorskip("matplotlib")
    res = run("plot", artifact, "-q")
    assert res.exit_code == 0 and res.stdout == ""
    assert png_size(artifact.with_suffix(".png")) == (900, 1000)


def test_other_formats_by_suffix(artifact, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "curve.svg"
    assert run("plot", artifact, "-o", out, "-q").exit_code == 0
    assert b"<svg" in out.read_bytes()[:1000]


@pytest.mark.parametrize("name, message", [("curve.xyz", "use a .png, .pdf or .svg name"),
                                           ("no/such/folder/curve.png", "does not exist")])
def test_bad_output_is_one_line_and_no_file(artifact, tmp_path, name, message):
    pytest.importorskip("matplotlib")
    res = run("plot", artifact, "-o", tmp_path / name)
    assert res.exit_code == 1 and message in res.stderr
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1
    assert not list(tmp_path.rglob("*.xyz")) and not list(tmp_path.rglob("*.tmp"))


def test_missing_matplotlib_says_what_to_install(artifact, tmp_path, monkeypatch):
    # A None entry in sys.modules makes `import matplotlib` raise ImportError, as if it were not installed.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "curve.png"
    res = run("plot", artifact, "-o", out)
    assert res.exit_code == 1
    assert "pip install 'vrcurve[plot]'" in res.stderr and "matplotlib" in res.stderr
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and "Traceback" not in res.output
    assert not out.exists()


def test_logitnormal_pdf_is_the_derivative_of_its_cdf():
    from scipy.special import ndtr

    from vrcurve.plot import logitnormal_pdf

    t = np.linspace(0, 1, 20_001)
    mid = 0.5 * (t[1:] + t[:-1])
    for m, s in [(0.0, 1.0), (1.3, 0.7), (-2.0, 1.5)]:
        inner = t[1:-1]
        F = np.concatenate([[0.0], ndtr((np.log(inner) - np.log1p(-inner) - m) / s), [1.0]])
        assert np.allclose(logitnormal_pdf(mid, m, s), np.diff(F) / np.diff(t), rtol=1e-3, atol=1e-3)
        assert logitnormal_pdf(np.array([0.0, 1.0]), m, s).tolist() == [0.0, 0.0]


def test_caption_names_scheduler_m_k_d_and_m():
    from vrcurve.meta import ArtifactMeta
    from vrcurve.plot import caption

    text = caption(ArtifactMeta(scheduler={"name": "linear", "shift": 3.0}, samples=200, noise=500, dim=4096,
                                logitnormal_m=0.2418, logitnormal_s=1.0))
    assert text.startswith("scheduler linear (shift 3)")
    for part in ("M = 200", "K = 500", "d = 4096", "m = +0.2418"):
        assert part in text


def test_the_figure_bands_axes_reference_and_caption(artifact):
    """The S_t band stays inside [min(0, S), max(1, S)], the log axis shows at most about six decades below the
    peak of V, the pdf panel has the uniform density as a reference line, and a narrow figure's caption is
    broken into lines that fit."""
    from vrcurve.artifact import read_artifact
    from vrcurve.plot import caption, draw

    arrays, meta = read_artifact(artifact)
    arrays = dict(arrays, S_stderr=np.full_like(arrays["S_stderr"], 0.5))  # a band wider than [0, 1]
    fig = draw(arrays, meta, log_variance=True, width=400, height=450)
    ax_s, ax_v, ax_p = fig.axes
    S = arrays["S"].astype(np.float64)
    band = ax_s.collections[0].get_paths()[0].vertices[:, 1]
    assert band.max() <= max(1.0, S.max()) + 1e-12 and band.min() >= min(0.0, S.min()) - 1e-12
    V = arrays["variance"].astype(np.float64)
    low, high = ax_v.get_ylim()
    assert high >= V.max() and low >= V[V > 0].max() * 1e-6 / 2 * (1 - 1e-9)
    assert any(line.get_label() == "uniform" and set(line.get_ydata()) == {1.0} for line in ax_p.get_lines())
    text = fig.get_supxlabel() if hasattr(fig, "get_supxlabel") else fig._supxlabel.get_text()
    assert text.replace("\n", "  ·  ") == caption(meta) and "\n" in text
    assert max(len(line) for line in text.split("\n")) <= int(400 / (0.6 * 8.3 * 100 / 72))
