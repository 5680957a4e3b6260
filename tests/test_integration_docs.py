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
