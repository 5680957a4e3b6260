"""Several devices in one process, and torchrun across processes (docs/scaling.md): the result does not depend on
the split, only rank 0 writes and prints, and a failure on any rank fails the run with its message."""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from typer.testing import CliRunner

from vrcurve.cli import app
from vrcurve.devices import resolve_devices
from vrcurve.engine.precision import MatmulModes
from vrcurve.errors import VRCurveError
from vrcurve.estimator import estimate, share
from vrcurve.schedulers import CosineScheduler

SETTINGS = ["-M", "12", "-K", "6", "-T", "40", "--seed", "3", "--bootstrap", "20", "--check-convergence", "--json"]
RUN_TIMEOUT = 240  # seconds: a hung collective fails the test instead of blocking CI


def _tensors(path):
    return load_file(str(path))


def _assert_same_tensors(a, b):
    """Equal to float32 round-off. A standard error over sources is the spread of per-source values whose
    sums change with the thread count (torchrun gives each rank one thread) in their last bits: it is
    compared at the round-off of those values, not at its own (it can be 1000 times smaller than they are)."""
    assert set(a) == set(b)
    for key in a:
        values = key[: -len("_stderr")] if key.endswith("_stderr") else None
        atol = 1e-6 * float(np.abs(b[values]).max()) if values else 1e-9
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=atol, err_msg=key)


@pytest.fixture(scope="module")
def single(tiny_npy, tmp_path_factory):
    """The artifact of a one-process, one-device run."""
    out = tmp_path_factory.mktemp("single") / "vr.safetensors"
    result = CliRunner().invoke(app, ["estimate", "-d", str(tiny_npy), "-o", str(out), *SETTINGS])
    assert result.exit_code == 0, result.output
    return out


def _torchrun(args, cwd, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
           *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)


def test_share_covers_every_source_once():
    for n in (0, 1, 5, 12, 1000):
        for parts in (1, 2, 3, 7):
            blocks = [share(n, p, parts) for p in range(parts)]
            assert [i for lo, hi in blocks for i in range(lo, hi)] == list(range(n))
            assert max(hi - lo for lo, hi in blocks) - min(hi - lo for lo, hi in blocks) <= 1


def test_device_lists():
    assert resolve_devices("cpu") == [torch.device("cpu")]
    assert resolve_devices("cpu, cpu") == [torch.device("cpu")] * 2
    with pytest.raises(VRCurveError, match="unknown device"):
        resolve_devices("cpu,tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(VRCurveError, match="no CUDA device"):
            resolve_devices("cuda")


def test_device_threads_take_turns_with_the_matmul_precision():
    """The float32 product precision is process-wide: a thread that wants another mode waits until the held
    one is released, each section sees its own mode, and the caller's setting comes back."""
    modes = MatmulModes("cpu")
    flag = torch.backends.mkldnn.matmul
    before = flag.fp32_precision
    seen, entered = [], threading.Event()

    def section(mode, hold_s):
        with modes.hold(mode):
            entered.set()
            seen.append((mode, flag.fp32_precision))
            time.sleep(hold_s)
            seen.append((mode, flag.fp32_precision))

    first = threading.Thread(target=section, args=("tf32", 0.2))
    first.start()
    entered.wait()
    second = threading.Thread(target=section, args=("ieee", 0.0))
    second.start()
    first.join()
    second.join()
    assert seen == [("tf32", "tf32"), ("tf32", "tf32"), ("ieee", "ieee"), ("ieee", "ieee")]
    assert flag.fp32_precision == before


def test_sources_split_over_devices_and_ranks_give_the_same_sums():
    """Three simulated ranks (each computes its block of sources, zeros elsewhere) on two devices each: the
    sum over ranks equals the one-device estimate; chunks of one source at a time change nothing either."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(11, 40, generator=g)
    kw = dict(noise=5, timesteps=30, seed=4, source_ids=np.arange(100, 111))
    whole = estimate(x, CosineScheduler(), **kw)

    class Rank:
        def __init__(self, rank, world_size):
            self.rank, self.world_size = rank, world_size

        def sum_sources(self, compute):
            return compute()  # this rank's share alone

    parts = [estimate(x, CosineScheduler(), device="cpu,cpu", ranks=Rank(r, 3), **kw) for r in range(3)]
    for field in ("per_source_S", "per_source_trcov"):
        total = sum(getattr(p, field) for p in parts)
        np.testing.assert_allclose(total, getattr(whole, field), rtol=1e-6, atol=1e-12)
        assert all(np.count_nonzero(getattr(p, field).any(axis=0)) in (3, 4) for p in parts)
    chunked = estimate(x, CosineScheduler(), device=["cpu"] * 3, chunk_size=5, **kw)
    np.testing.assert_allclose(chunked.variance, whole.variance, rtol=1e-6, atol=1e-12)


def test_two_cpu_devices_equal_one(tiny_npy, tmp_path, single):
    out = tmp_path / "two.safetensors"
    result = CliRunner().invoke(app, ["estimate", "-d", str(tiny_npy), "-o", str(out), "--device", "cpu,cpu", *SETTINGS])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["device"] == "cpu, cpu"
    _assert_same_tensors(_tensors(out), _tensors(single))


def test_torchrun_two_processes_equal_one(tiny_npy, tmp_path, single):
    out = tmp_path / "out" / "vr.safetensors"
    out.parent.mkdir()
    run = _torchrun(["-m", "vrcurve", "estimate", "-d", str(tiny_npy), "-o", str(out), *SETTINGS], tmp_path)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, run.stdout  # rank 1 prints nothing
    summary = json.loads(lines[0])
    assert summary["device"] == "cpu x 2 ranks"
    assert sorted(p.name for p in out.parent.iterdir()) == ["vr.safetensors"]  # one file, by rank 0
    _assert_same_tensors(_tensors(out), _tensors(single))
    meta_single = json.loads(CliRunner().invoke(app, ["show", str(single), "--json"]).stdout)
    meta_run = json.loads(CliRunner().invoke(app, ["show", str(out), "--json"]).stdout)
    for key in ("logitnormal_m", "logitnormal_m_ci90"):  # to a minimiser's tolerance
        assert meta_run[key] == pytest.approx(meta_single[key], abs=1e-6)
    # the nested-subset estimates of --check-convergence are split over the ranks too
    for a, b in zip(meta_run["convergence"]["rows"], meta_single["convergence"]["rows"]):
        assert a["samples"] == b["samples"]
        assert a["ks_to_full"] == pytest.approx(b["ks_to_full"], abs=1e-6)
        assert a["m"] == pytest.approx(b["m"], abs=1e-6)


def test_failure_on_one_rank_fails_the_run(tiny_npy, tmp_path):
    """Rank 1 is given a data path that does not exist (a node without the data): the whole run exits 1,
    prints rank 1's message once, and leaves no artifact. The launcher below gives each rank its own argv;
    it is a stand-in for a cluster whose nodes differ, not a feature of vrcurve."""
    launcher = tmp_path / "per_rank.py"
    launcher.write_text(textwrap.dedent("""
        import os, sys
        from vrcurve.cli import main
        sys.argv = ["vrcurve"] + [a.replace("{rank}", os.environ["RANK"]) for a in sys.argv[1:]]
        main()
    """))
    (tmp_path / "data0.npy").write_bytes(tiny_npy.read_bytes())
    out = tmp_path / "out" / "vr.safetensors"
    out.parent.mkdir()
    run = _torchrun([str(launcher), "estimate", "-d", str(tmp_path / "data{rank}.npy"), "-o", str(out), *SETTINGS],
                    tmp_path)
    assert run.returncode == 1
    missing = str(tmp_path / "data1.npy")
    assert run.stderr.count(f"error: rank 1 of 2: data path {missing} does not exist") == 1, run.stderr
    assert run.stdout.strip() == ""
    assert list(out.parent.iterdir()) == []
