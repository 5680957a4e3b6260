"""Hostile inputs, faults and races: each case ends in one sentence and exit 1 (or a usage error, exit 2),
never a traceback, a clobbered file or a silently different result. Every fixture is written by its test."""

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vrcurve.artifact import TENSORS, Terminated, read_artifact, write_artifact
from vrcurve.cli import app
from vrcurve.errors import VRCurveError
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
    return {name: np.linspace(0, 1, 5, dtype=np.float32) for name in TENSORS}


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
        write_artifact(fifo, _tensors(), {})
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
        write_artifact(path, _tensors(), {})
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.chmod(path, 0o640)
        write_artifact(path, _tensors(), {"samples": 2})
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        os.umask(0o027)
        other = tmp_path / "b.safetensors"
        write_artifact(other, _tensors(), {})
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
        write_artifact(path, _tensors(), {}, overwrite=False)
    assert path.read_bytes() == b"the other run's artifact"
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]
    write_artifact(path, _tensors(), {}, overwrite=True)  # --overwrite does replace it
    assert read_artifact(path)[1]["format"] == "vrcurve"


def test_sigterm_during_the_write_removes_the_temporary_file(tmp_path, monkeypatch):
    import safetensors.numpy

    before = signal.getsignal(signal.SIGTERM)

    def save_then_terminated(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(safetensors.numpy, "save_file", save_then_terminated)
    with pytest.raises(Terminated) as info:
        write_artifact(tmp_path / "a.safetensors", _tensors(), {})
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


def test_hdf5_null_dataspace(tmp_path):
    import h5py

    path = tmp_path / "null.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=h5py.Empty("f4"))
    with pytest.raises(VRCurveError, match="HDF5 null dataspace"):
        open_source(str(path), key="x")


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
