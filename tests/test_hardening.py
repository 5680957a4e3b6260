"""Hostile inputs, faults and races: each case ends in one sentence and exit 1 (or a usage error, exit 2),
never a traceback, a clobbered file or a silently different result. Every fixture is written by its test."""

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from artifacts import valid_meta, valid_tensors
from typer.testing import CliRunner

from vrcurve.artifact import Terminated, read_artifact, write_artifact
from vrcurve.cli import app
from vrcurve.errors import VRCurveError
from vrcurve.meta import KEYS
from vrcurve.readers import open_source

SMALL = ["-M", "6", "-K", "3", "-T", "20", "--bootstrap", "0"]
ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_error_line(res, *needles):
    """exit 1, no traceback, exactly one line on stderr, starting 'error:' and containing every needle."""
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _tensors():
    return valid_tensors(T=5)


def _data(path, n=12, shape=(2, 3, 3), seed=0):
    np.save(path, np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32))
    return path


# ---------------------------------------------------------------------------------------------- writing


def test_an_output_that_is_not_a_regular_file_is_refused(tmp_path):
    """-o /dev/null --overwrite used to replace the device with a regular file (os.replace replaces any
    non-folder). A FIFO stands for it here: the test must not need root."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(VRCurveError, match="exists and is not a regular file"):
        write_artifact(fifo, _tensors(), valid_meta())
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    data = _data(tmp_path / "d.npy")
    res = run("estimate", "-d", data, "-o", fifo, "--overwrite", *SMALL)
    _one_error_line(res, f"cannot write {fifo}: it exists and is not a regular file")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["d.npy", "pipe"]
    folder = tmp_path / "out"
    folder.mkdir()
    _one_error_line(run("estimate", "-d", data, "-o", folder, "--overwrite", *SMALL), "it exists and is a folder")


def test_an_output_ending_in_a_slash_names_a_folder(tmp_path):
    data = _data(tmp_path / "d.npy")
    res = run("estimate", "-d", data, "-o", f"{tmp_path}/newdir/", *SMALL)
    _one_error_line(res, "names a folder, not a file")
    assert not (tmp_path / "newdir").exists()


def test_new_files_follow_the_umask_and_replaced_files_keep_their_mode(tmp_path):
    path = tmp_path / "a.safetensors"
    old = os.umask(0o022)
    try:
        write_artifact(path, _tensors(), valid_meta())
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.chmod(path, 0o640)
        write_artifact(path, _tensors(), valid_meta(samples=2))
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        os.umask(0o027)
        other = tmp_path / "b.safetensors"
        write_artifact(other, _tensors(), valid_meta())
        assert stat.S_IMODE(other.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_a_file_that_appears_during_the_write_is_not_replaced(tmp_path, monkeypatch):
    """Two runs to the same -o without --overwrite: the one that finishes second must fail, not replace."""
    import safetensors.numpy

    path = tmp_path / "a.safetensors"
    real_save = safetensors.numpy.save_file

    def save_while_another_run_finishes(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        path.write_bytes(b"the other run's artifact")

    monkeypatch.setattr(safetensors.numpy, "save_file", save_while_another_run_finishes)
    with pytest.raises(VRCurveError, match="appeared while this run was writing it"):
        write_artifact(path, _tensors(), valid_meta(), overwrite=False)
    assert path.read_bytes() == b"the other run's artifact"
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]
    write_artifact(path, _tensors(), valid_meta(), overwrite=True)  # --overwrite does replace it
    assert read_artifact(path)[1]["format"] == "vrcurve"


def test_sigterm_during_the_write_removes_the_temporary_file(tmp_path, monkeypatch):
    import safetensors.numpy

    before = signal.getsignal(signal.SIGTERM)

    def save_then_terminated(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(safetensors.numpy, "save_file", save_then_terminated)
    with pytest.raises(Terminated) as info:
        write_artifact(tmp_path / "a.safetensors", _tensors(), valid_meta())
    assert info.value.code == 143
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_during_the_write_from_the_command_line(tmp_path):
    """A real SIGTERM to a real process (what torchrun, Slurm and Kubernetes send): status 143, one line."""
    data = _data(tmp_path / "d.npy")
    out = tmp_path / "out"
    out.mkdir()
    script = textwrap.dedent(f"""
        import os, signal, sys
        import safetensors.numpy
        from pathlib import Path
        def save(tensors, filename, metadata=None):
            Path(filename).write_bytes(b"partial")
            os.kill(os.getpid(), signal.SIGTERM)
        safetensors.numpy.save_file = save
        from vrcurve.cli import main
        sys.argv = ["vrcurve", "estimate", "-d", {str(data)!r}, "-o", {str(out / "vr.safetensors")!r}, "-q",
                    *{SMALL!r}]
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr.strip() == "terminated; nothing was written."
    assert list(out.iterdir()) == []


def test_disk_full_is_one_sentence(tmp_path, monkeypatch):
    """safetensors reports a full disk as a SafetensorError, not an OSError (it used to be a traceback)."""
    import safetensors.numpy
    from safetensors import SafetensorError

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"part")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    data = _data(tmp_path / "d.npy")
    out = tmp_path / "vr.safetensors"
    _one_error_line(run("estimate", "-d", data, "-o", out, *SMALL), "the disk is full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npy"]


# ---------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("case", ["zip_as_npy", "empty_samples", "timedelta", "datetime", "beyond_float32"])
def test_bad_npy_arrays_are_one_sentence(tmp_path, case):
    path = tmp_path / "x.npy"
    if case == "zip_as_npy":
        np.savez(tmp_path / "z.npz", a=np.ones((4, 3)))
        os.rename(tmp_path / "z.npz", path)
        expected = "is a .npz archive (zip), not a .npy array"
    elif case == "empty_samples":
        np.save(path, np.zeros((5, 0), dtype=np.float32))
        expected = "its samples hold no numbers"
    elif case == "timedelta":
        np.save(path, np.zeros((5, 4), dtype="m8[s]"))
        expected = "dtype timedelta64[s], not a real numeric type"
    elif case == "datetime":
        np.save(path, np.zeros((5, 4), dtype="M8[s]"))
        expected = "dtype datetime64[s], not a real numeric type"
    else:
        values = np.ones((5, 4))
        values[3, 1] = 1e300
        np.save(path, values)
        expected = "holds float64 values beyond the float32 range"
    res = run("estimate", "-d", path, "-o", tmp_path / "vr.safetensors", "-M", "5", "-K", "2", "-T", "8")
    _one_error_line(res, expected)
    assert "RuntimeWarning" not in res.output
    assert not (tmp_path / "vr.safetensors").exists()


def test_float64_beyond_float32_in_every_format(tmp_path):
    import h5py
    from safetensors.numpy import save_file

    values = np.ones((6, 4))
    values[2, 0] = -3e40
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["x"] = values
    save_file({"x": values}, str(tmp_path / "x.safetensors"))
    (tmp_path / "files").mkdir()
    for i, row in enumerate(values):
        np.save(tmp_path / "files" / f"{i}.npy", row)
    for data in ("x.h5", "x.safetensors", "files"):
        with pytest.raises(VRCurveError, match="float64 values beyond the float32 range"):
            open_source(str(tmp_path / data)).read(np.arange(6))


def test_hdf5_null_dataspace_and_empty_samples(tmp_path):
    import h5py

    path = tmp_path / "null.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=h5py.Empty("f4"))
        for i in range(3):
            f.create_dataset(f"members/{i}", data=h5py.Empty("f4"))
            f.create_dataset(f"zero/{i}", data=np.zeros((4, 0), dtype=np.float32))
    with pytest.raises(VRCurveError, match="HDF5 null dataspace"):
        open_source(str(path), key="x")
    with pytest.raises(VRCurveError, match="HDF5 null dataspace"):
        open_source(str(path), key="members/*")
    with pytest.raises(VRCurveError, match=r"shape \(4, 0\), which holds no numbers"):
        open_source(str(path), key="zero/*")
    res = run("estimate", "-d", path, "--key", "x", "-o", tmp_path / "vr.safetensors", *SMALL)
    _one_error_line(res, "null.h5:x is an empty dataset (HDF5 null dataspace)")


def test_complex_safetensors_are_refused_like_complex_npy(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"x": torch.ones(6, 4, dtype=torch.complex64)}, str(tmp_path / "c.safetensors"))
    with pytest.raises(VRCurveError, match="C64 .*not bool or complex"):
        open_source(str(tmp_path / "c.safetensors"))
    np.save(tmp_path / "c.npy", np.ones((6, 4), dtype=np.complex64))
    with pytest.raises(VRCurveError, match="not a real numeric type"):
        open_source(str(tmp_path / "c.npy"))


def test_a_glob_through_a_link_cycle_counts_each_file_once(tmp_path):
    root = tmp_path / "data" / "a"
    root.mkdir(parents=True)
    for i in range(5):
        _data(root / f"s{i}.npy", n=1, seed=i)
    os.symlink("..", root / "up")  # a/up -> data: a cycle
    by_glob = open_source(str(tmp_path / "data" / "**" / "*.npy"))
    by_folder = open_source(str(tmp_path / "data"))
    assert by_glob.n == by_folder.n == 5
    assert [Path(f).name for f in by_glob.sources()] == [f"s{i}.npy" for i in range(5)]


def test_a_glob_through_two_link_cycles_ends(tmp_path):
    """Two links back up make Python's glob list 2^40 paths (it follows links at every depth): the glob is
    matched against one walk of the folder instead. In a subprocess, so that a regression fails, not hangs."""
    root = tmp_path / "data" / "a"
    root.mkdir(parents=True)
    for i in range(3):
        _data(root / f"s{i}.npy", n=1, seed=i)
    os.symlink("..", root / "up1")
    os.symlink("..", root / "up2")
    code = "import sys; from vrcurve.readers import open_source; print(open_source(sys.argv[1]).n)"
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "data" / "**" / "s*.npy")], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "3"


def test_empty_data_path_does_not_scan_the_current_folder(tmp_path, monkeypatch):
    _data(tmp_path / "d.npy")
    monkeypatch.chdir(tmp_path)
    _one_error_line(run("estimate", "-d", "", "-o", "vr.safetensors", *SMALL), "--data is empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npy"]


# ------------------------------------------------------------------------------------------ the options


@pytest.mark.parametrize("option", [["-M", "-5"], ["-K", "-3"], ["-M", "0"], ["--seed", "-1"]])
def test_negative_counts_are_usage_errors(tmp_path, option):
    data = _data(tmp_path / "d.npy")
    res = run("estimate", "-d", data, "-o", tmp_path / "vr.safetensors", *option)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and not (tmp_path / "vr.safetensors").exists()


def test_skip_bad_never_uses_fewer_than_m_samples(tmp_path):
    """30 files, 2 undecodable: -M 29 cannot be met (only 28 decode) and must fail; it used to give 28, exit 0."""
    folder = tmp_path / "files"
    folder.mkdir()
    for i in range(30):
        _data(folder / f"{i:02d}.npy", n=1, seed=i)
    for bad in ("03.npy", "17.npy"):
        (folder / bad).write_bytes(b"not a .npy file")
    out = tmp_path / "vr.safetensors"
    args = ("-K", "2", "-T", "8", "--bootstrap", "0", "--skip-bad")
    _one_error_line(run("estimate", "-d", folder, "-o", out, "-M", "29", *args),
                    "only 28 of the 30 samples", "fewer than --samples 29")
    assert not out.exists()
    res = run("estimate", "-d", folder, "-o", out, "-M", "28", *args, "--json")
    assert res.exit_code == 0, res.output
    meta = read_artifact(out)[1]
    assert meta["samples"] == 28 and meta["data"]["skipped"] == 2


def test_convergence_check_needs_subsets_smaller_than_m(tmp_path):
    """With M = 2 the 'M/2' subset was the whole sample: the run compared itself and said settled."""
    data = _data(tmp_path / "d.npy", n=20)
    out = tmp_path / "vr.safetensors"
    args = ("-d", data, "-o", out, "-K", "2", "-T", "8", "--bootstrap", "0", "--check-convergence")
    _one_error_line(run("estimate", *args, "-M", "2"), "needs M of at least 8, got 2")
    assert not out.exists()
    assert run("estimate", *args, "-M", "8", "-q").exit_code == 0
    rows = read_artifact(out)[1]["convergence"]["rows"]
    assert [r["samples"] for r in rows] == [2, 4, 8]


def test_sixteen_bit_png_uses_its_full_range(tmp_path):
    """convert('RGB') clipped 16-bit grey to 255, so almost every pixel read as white (1.0)."""
    Image = pytest.importorskip("PIL.Image")
    values = (np.arange(64, dtype=np.int64).reshape(8, 8) * 1000 + 535).astype(np.uint16)
    folder = tmp_path / "png16"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(values).save(folder / f"{i}.png")
    assert Image.open(folder / "0.png").mode.startswith("I")
    x = open_source(str(folder)).read(np.arange(3))
    expected = values.astype(np.float64) / 32767.5 - 1.0
    assert x.shape == (3, 3, 8, 8)
    np.testing.assert_allclose(x, np.broadcast_to(expected, x.shape), atol=1e-6)


def test_file_names_with_brackets_are_printed_as_they_are(tmp_path):
    """Rich markup: 'm[/]x.npy' crashed show, 'brack[et].npy' showed as 'brack.npy'."""
    (tmp_path / "m[").mkdir()
    paths = {"m[/]x.npy": tmp_path / "m[" / "]x.safetensors", "brack[et].npy": tmp_path / "brack[et].safetensors"}
    for data, path in paths.items():
        write_artifact(path, _tensors(), valid_meta(data={"path": data}, logitnormal_m=0.1, samples=3))
        res = run("show", path)
        assert res.exit_code == 0, res.output
        assert f"path={data}" in res.stdout
    res = run("compare", *paths.values())
    assert res.exit_code == 0, res.output
    assert all(str(p) in res.stdout for p in paths.values())


def test_plot_sizes_matplotlib_cannot_draw_are_usage_errors(tiny_artifact, tmp_path):
    pytest.importorskip("matplotlib")
    from vrcurve.plot import plot_artifact

    out = tmp_path / "p.png"
    res = run("plot", tiny_artifact, "-o", out, "--width", "1", "--height", "1", "--dpi", "1")
    assert res.exit_code == 2 and "Traceback" not in res.output and not out.exists()
    arrays, meta = read_artifact(tiny_artifact)
    with pytest.raises(VRCurveError, match="cannot be drawn"):
        plot_artifact(arrays, meta, out, width=1, height=1, dpi=1)
    assert not out.exists()
    assert run("plot", tiny_artifact, "-o", out, "--width", "100", "--height", "100", "--dpi", "10", "-q").exit_code == 0


@pytest.mark.parametrize("body, expected", [
    ("def sched(t):\n    return t\n", "fails when asked for alpha of a tensor of timesteps (AttributeError"),
    ("class Sched:\n    def alpha(self, t): return t\n    def sigma(self, t): return 1 - t\n"
     "    def d_alpha(self, t): return 1.0\n    def d_sigma(self, t): return -1.0\n", "gives float for d_alpha"),
])
def test_a_custom_scheduler_that_is_not_one_is_refused_at_the_start(tmp_path, monkeypatch, body, expected):
    from vrcurve.schedulers import get_scheduler

    module = "not_a_scheduler_" + ("fn" if body.startswith("def") else "cls")  # a module per case: imports are cached
    (tmp_path / f"{module}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"{module}:" + ("sched" if body.startswith("def") else "Sched")
    with pytest.raises(VRCurveError, match=expected.replace("(", r"\(")):
        get_scheduler(name)
    data = _data(tmp_path / "d.npy")
    _one_error_line(run("estimate", "-d", data, "-o", tmp_path / "vr.safetensors", "-s", name, *SMALL), name)


def test_huge_t_or_k_is_refused_up_front_saying_what_fits(tmp_path, monkeypatch):
    import torch

    from vrcurve import estimator

    free = 2 << 30
    monkeypatch.setattr(estimator, "free_memory", lambda device: free)
    data = _data(tmp_path / "d.npy")
    res = run("estimate", "-d", data, "-o", tmp_path / "vr.safetensors", "-M", "6", "-K", "3", "-T", "10000000000")
    line = _one_error_line(res, "need about", "GiB of memory on cpu", "at most fits")
    fits = int(line.split("-T ")[2].split(" ")[0].replace(",", ""))
    need = estimator.memory_need(6, 18, [torch.device("cpu")], per_timestep_extra=32 * 200)["cpu"]
    assert need.total(fits, 3) <= free < need.total(fits + 1, 3)
    res = run("estimate", "-d", data, "-o", tmp_path / "vr.safetensors", "-M", "6", "-K", "100000000000", "-T", "8")
    line = _one_error_line(res, "-K ")
    fits = int(line.split("; -K ")[1].split(" ")[0].replace(",", ""))
    need = estimator.memory_need(6, 18, [torch.device("cpu")], per_timestep_extra=32 * 200)["cpu"]
    assert need.total(8, fits) <= free < need.total(8, fits + 1)
    assert not (tmp_path / "vr.safetensors").exists()


@pytest.mark.parametrize("module, command", [("typer", ["schedulers"]), ("torch", ["estimate", "-d", "{data}"])])
def test_ctrl_c_while_importing_is_one_line(tmp_path, module, command):
    """A KeyboardInterrupt raised by an import (a stand-in module that raises it) is what Ctrl-C while
    typer or torch loads gives: status 130 and one line, no traceback."""
    (tmp_path / "shim" / module).mkdir(parents=True)
    (tmp_path / "shim" / module / "__init__.py").write_text("raise KeyboardInterrupt\n")
    data = _data(tmp_path / "d.npy")
    args = [a.replace("{data}", str(data)) for a in command]
    proc = subprocess.run([sys.executable, "-m", "vrcurve", *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": f"{tmp_path / 'shim'}{os.pathsep}{ROOT}"})
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "interrupted; nothing was written."


def test_warnings_before_an_error_are_not_printed(tmp_path):
    """One line on stderr per error: a warning raised on the way to it (here by the user's scheduler) is dropped."""
    (tmp_path / "warn_sched.py").write_text(textwrap.dedent("""
        import warnings
        def sched(t):
            warnings.warn("overflow encountered", RuntimeWarning)
            return t
    """))
    data = _data(tmp_path / "d.npy")
    proc = subprocess.run([sys.executable, "-m", "vrcurve", "estimate", "-d", str(data), "-s", "warn_sched:sched",
                           "-o", str(tmp_path / "vr.safetensors"), *SMALL], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: custom scheduler warn_sched:sched"), proc.stderr


def test_show_json_keys_come_in_one_order(tmp_path):
    """safetensors keeps metadata in a hash map: the order of `show --json` changed from file to file."""
    meta = {f"key{i}": i for i in range(20)}
    meta.update(samples=3, likelihood="mean", scheduler={"name": "linear", "shift": 1.0})
    orders = []
    for i, items in enumerate((list(meta.items()), list(reversed(meta.items())))):
        path = tmp_path / f"{i}.safetensors"
        write_artifact(path, _tensors(), valid_meta(**dict(items)))
        res = run("show", path, "--json")
        assert res.exit_code == 0, res.output
        orders.append(list(json.loads(res.stdout)))
    assert orders[0] == orders[1]
    first = [k for k in KEYS if k in orders[0]]  # the table's order: the known entries, then the rest sorted
    assert first[:3] == ["scheduler", "likelihood", "samples"]
    assert orders[0] == first + sorted(set(orders[0]) - set(first))


# ----------------------------------------------------------------------------------------------- torchrun

PER_RANK = """
import os, sys
from vrcurve.cli import main
sys.argv = ["vrcurve"] + [a.replace("{rank}", os.environ["RANK"]) for a in sys.argv[1:]]
main()
"""


def _torchrun_per_rank(tmp_path, args):
    """torchrun with two CPU ranks, each with its own argv ('{rank}' replaced): a stand-in for nodes whose
    command lines or files differ. Returns the finished process and the (empty, if all went well) out folder."""
    import socket

    launcher = tmp_path / "per_rank.py"
    launcher.write_text(PER_RANK)
    out = tmp_path / "out"
    out.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", str(launcher), "estimate", "-o", str(out / "vr.safetensors"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240), out


def _vrcurve_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize("case", ["timesteps", "data"])
def test_torchrun_ranks_must_agree(tmp_path, case):
    """A rank with another -T used to abort inside gloo with no message; another --data or --seed gave exit 0
    and a mixed artifact labelled with rank 0's inputs."""
    for rank in (0, 1):
        _data(tmp_path / f"d{rank}.npy", seed=0 if case == "timesteps" else rank)
    if case == "timesteps":
        args, expected = ["-d", str(tmp_path / "d0.npy"), "-T", "2{rank}"], "runs with --timesteps 21, rank 0 with --timesteps 20"
    else:
        args, expected = ["-d", str(tmp_path / "d{rank}.npy"), "-T", "20"], "rank 1 of 2 read other data than rank 0"
    proc, out = _torchrun_per_rank(tmp_path, [*args, "-M", "6", "-K", "3", "--bootstrap", "0", "-q"])
    assert proc.returncode == 1, proc.stderr
    lines = _vrcurve_lines(proc.stderr)
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert list(out.iterdir()) == []


def test_torchrun_failure_on_every_rank_prints_one_line(tmp_path):
    proc, out = _torchrun_per_rank(tmp_path, ["-d", str(tmp_path / "missing{rank}.npy"), *SMALL])
    assert proc.returncode == 1
    lines = _vrcurve_lines(proc.stderr)
    assert lines == [f"error: rank 0 of 2: data path {tmp_path / 'missing0.npy'} does not exist; check --data "
                     "(or use --data demo)."], proc.stderr
    assert list(out.iterdir()) == []
