import sys
from pathlib import Path

# tests/reference.py is a helper module, imported as `reference`.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import os  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from vrcurve import _kernel  # noqa: E402

# The engine chooses its kernel per run by timing a few blocks, and the two kernels agree to bf16 round-off,
# not bit for bit: tests that compare whole runs bit for bit need one kernel. They get the fused one where
# it runs (else PyTorch), in this process and in the CLI and torchrun processes it starts; the tests of the
# choice itself unset the variable.
os.environ.setdefault("VRCURVE_KERNEL", "fused" if _kernel.fused() is not None else "pytorch")


@pytest.fixture(scope="session")
def tiny_npy(tmp_path_factory):
    """A .npy file of 40 samples of shape 3 x 4 x 4 (float32), not normalised."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "tiny.npy"
    np.save(path, (rng.standard_normal((40, 3, 4, 4)) * 2 + 1).astype(np.float32))
    return path


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory, tiny_npy):
    """An artifact estimated from ``tiny_npy`` with small settings (M=16, K=8, T=100)."""
    from artifacts import estimate_with

    from vrcurve.schedulers import get_scheduler

    out = tmp_path_factory.mktemp("artifact") / "tiny.safetensors"
    estimate_with(str(tiny_npy), out, get_scheduler("linear"), samples=16, noise=8, timesteps=100, seed=1)
    return out
