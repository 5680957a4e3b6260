"""docs/integration.md: the snippets run, and the no-vrcurve one samples the same distribution as `.sample()`."""

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vrcurve

DOC = Path(__file__).resolve().parents[1] / "docs" / "integration.md"


def snippet(name):
    """The python code block between <!-- snippet:NAME:begin --> and <!-- snippet:NAME:end -->."""
    text = DOC.read_text()
    m = re.search(rf"<!-- snippet:{name}:begin -->\s*```python\n(.*?)```\s*<!-- snippet:{name}:end -->", text, re.S)
    assert m, f"docs/integration.md has no snippet {name!r} between its markers"
    return m.group(1)


def ks_to_cdf(samples, cdf):
    x = np.sort(np.asarray(samples, dtype=np.float64))
    F = cdf(torch.from_numpy(x)).numpy()
    n = x.shape[0]
    return float(max(np.max(np.arange(1, n + 1) / n - F), np.max(F - np.arange(n) / n)))


def ks_two_sample(a, b):
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, grid, side="right") / a.size
                               - np.searchsorted(b, grid, side="right") / b.size)))


@pytest.fixture
def in_folder_with_artifact(tiny_artifact, tmp_path, monkeypatch):
    shutil.copy(tiny_artifact, tmp_path / "vr.safetensors")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "vr.safetensors"


def test_no_vrcurve_snippet_samples_the_artifacts_distribution(in_folder_with_artifact, monkeypatch):
    code = snippet("no-vrcurve")
    assert "vrcurve" not in code
    namespace = {}
    with monkeypatch.context() as mp:  # run it as a user without vrcurve would: any import of vrcurve fails
        for name in [m for m in sys.modules if m == "vrcurve" or m.startswith("vrcurve.")]:
            mp.setitem(sys.modules, name, None)
        exec(compile(code, "docs/integration.md:no-vrcurve", "exec"), namespace)

    torch.manual_seed(0)
    n = 200_000
    t = namespace["sample_t"](n)
    assert t.shape == (n,) and t.dtype == torch.float32 and float(t.min()) >= 0 and float(t.max()) <= 1
    dist = vrcurve.load(in_folder_with_artifact)
    # Interpolating in the float32 table is exact to 1/4096 in u; the rest is sampling noise (~0.003 at n = 200k).
    assert ks_to_cdf(t.double().numpy(), dist.cdf) < 0.005
    reference = dist.sample(n, generator=torch.Generator().manual_seed(1)).numpy()
    assert ks_two_sample(t.numpy(), reference) < 0.01
    # ... and it is not merely any distribution on [0, 1]: the artifact's density is far from uniform.
    assert ks_to_cdf(np.random.default_rng(0).random(n), dist.cdf) > 0.05


def test_plain_loop_snippet_runs(in_folder_with_artifact):
    seen = []

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(48, 48)

        def forward(self, x, t):
            seen.append(t.detach().clone())
            return self.lin(x.flatten(1)).view_as(x) * t.view(-1, 1, 1, 1)

    model = Model()
    namespace = {"loader": [torch.randn(8, 3, 4, 4) for _ in range(3)], "model": model,
                 "opt": torch.optim.SGD(model.parameters(), lr=1e-3)}
    before = model.lin.weight.detach().clone()
    exec(compile(snippet("plain-loop"), "docs/integration.md:plain-loop", "exec"), namespace)
    assert len(seen) == 3 and all(t.shape == (8,) and (t >= 0).all() and (t <= 1).all() for t in seen)
    assert not torch.equal(before, model.lin.weight)


def test_every_python_block_is_valid_python():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 6
    for i, code in enumerate(blocks):
        compile(code, f"docs/integration.md block {i}", "exec")


def test_the_doc_covers_every_export_target():
    from vrcurve.export import TARGETS

    text = DOC.read_text()
    for target in TARGETS:
        assert f"`{target}`" in text


def test_buckets_snippet_draws_each_batch_from_its_bucket(tmp_path, monkeypatch, capsys):
    from scipy.stats import kstest
    from test_buckets import _two_bucket_artifact

    _two_bucket_artifact(tmp_path / "vr.safetensors")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    # the last batch is of the (4, 16, 16) bucket, whose density is 2 (1 - t): cdf 1 - (1 - t)^2
    namespace = {"loader": [torch.zeros(5000, 4, 8, 8), torch.zeros(5000, 4, 16, 16)]}
    exec(compile(snippet("buckets"), "docs/integration.md:buckets", "exec"), namespace)
    assert "(4, 8, 8): 0.75" in capsys.readouterr().out
    t = namespace["t"].double().numpy()
    assert kstest(t, lambda x: 1 - (1 - x) ** 2).pvalue > 1e-3


def test_read_artifact_snippet_reads_the_typed_metadata_and_each_bucket(tmp_path, monkeypatch):
    from test_buckets import _two_bucket_artifact

    _two_bucket_artifact(tmp_path / "vr.safetensors")  # written with m = 0.5 and no s
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(snippet("read-artifact"), "docs/integration.md:read-artifact", "exec"), namespace)
    assert (namespace["m"], namespace["s"], namespace["stored"]) == (0.5, 1.0, 0.5)
    # the loop ends on the last bucket, (4, 16, 16)
    assert namespace["bucket"].shape == (4, 16, 16) and namespace["bucket"].share == 0.25
    np.testing.assert_array_equal(namespace["pdf_b"], namespace["tensors"]["bucket.1.pdf"])


def _run_vrcurve(argv, cwd, pythonpath):
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath)}
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True)


def test_custom_scheduler_snippet_and_where_the_module_is_looked_for(tmp_path, tiny_npy, monkeypatch):
    from vrcurve.artifact import read_artifact
    from vrcurve.schedulers import get_scheduler

    (tmp_path / "my_schedules.py").write_text(snippet("custom-scheduler"))
    root = str(Path(vrcurve.__file__).resolve().parents[1])
    small = ["--data", str(tiny_npy), "-M", "8", "-K", "2", "-T", "20", "--bootstrap", "0", "-q"]
    # python -m vrcurve, run in the module's folder, finds it
    res = _run_vrcurve(["-m", "vrcurve", "estimate", *small, "-s", "my_schedules:CondOTMin", "-o", "a.safetensors"],
                       tmp_path, [root])
    assert res.returncode == 0, res.stderr
    assert read_artifact(tmp_path / "a.safetensors")[1]["scheduler"] == {"name": "custom", "object": "my_schedules:CondOTMin"}
    # a console script (sys.path[0] is its own folder) does not, and says what to do; PYTHONPATH=. fixes it
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "vrcurve_cmd.py").write_text("import sys\nfrom vrcurve.cli import main\nsys.exit(main())\n")
    cmd = ["bin/vrcurve_cmd.py", "estimate", *small, "-s", "my_schedules:FLOOR_1E2", "-o", "b.safetensors"]
    res = _run_vrcurve(cmd, tmp_path, [root])
    assert res.returncode == 1 and "cannot import module 'my_schedules'" in res.stderr and "python -m vrcurve" in res.stderr
    assert not (tmp_path / "b.safetensors").exists()
    assert _run_vrcurve(cmd, tmp_path, [root, "."]).returncode == 0
    # the path it describes: h_t = a' - a m'/m = 1 / (1 - (1 - sigma_min) t); imported here under a name of its
    # own, so that this process's module cache does not hand it to other tests that write a my_schedules.py
    (tmp_path / "doc_custom_scheduler.py").write_text(snippet("custom-scheduler"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "doc_custom_scheduler", raising=False)
    sched = get_scheduler("doc_custom_scheduler:FLOOR_1E2")
    t = torch.linspace(0.0, 0.99, 50, dtype=torch.float64)
    torch.testing.assert_close(sched.h(t), 1 / (1 - 0.99 * t))
