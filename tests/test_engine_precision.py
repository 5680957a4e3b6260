"""The engine's fast paths change nothing that matters.

Reduced-precision products (bf16 on CPU; TF32 and bf16 on CUDA) must leave the density unchanged: its CDF
within 1e-4 (KS distance) of a float64 run on the same noise, and the KS-best logit-normal m within 0.005,
on realistic data (the demo images). The exact shortcuts (no max-subtraction, the row-maximum fallback,
skipped collapsed timesteps, clamped subnormal weights) must equal the slow direct float64 reference.
"""

import numpy as np
import pytest
import torch
from reference import direct_estimate

from vrcurve import _kernel
from vrcurve.density import density_from_curve
from vrcurve.engine.backends.pytorch import ROW_BYTES, PairForms, PyTorchBackend
from vrcurve.engine.blocks import MAX_UNSHIFTED_LOGIT, Constants, make_chunk
from vrcurve.engine.noise import Projector, ambient_basis
from vrcurve.engine.precision import cpu_has_native_bf16
from vrcurve.errors import VRCurveError
from vrcurve.estimator import estimate, gram, resolve_precision
from vrcurve.fit import fit_logitnormal
from vrcurve.readers import open_source
from vrcurve.samples import load_samples
from vrcurve.schedulers import CosineScheduler, DiffusionScheduler, LinearScheduler

KS_TOL, M_TOL = 1e-4, 0.005
CUDA = torch.cuda.is_available()

# (scheduler, form, likelihood): the default, the paper form (which subtracts S from 1 where S -> 1), a
# shifted schedule whose density sits near the data end, and the exact posterior.
CASES = {
    "linear-covariance": (LinearScheduler(), "covariance", "mean"),
    "cosine-paper": (CosineScheduler(), "paper", "mean"),
    "shift3-paper": (LinearScheduler(3.0), "paper", "mean"),
    "diffusion-sum": (DiffusionScheduler(), "covariance", "sum"),
}


@pytest.fixture(scope="module")
def demo():
    """64 demo images (d = 784), normalised as the pipeline does, with their dataset indices."""
    chosen = load_samples(open_source("demo"), 64, 0, "global")
    return torch.from_numpy(chosen.x), chosen.indices


def density_change(x, ids, sched, form, likelihood, precision, device="cpu"):
    """(KS distance between the CDFs, |difference of the best m|) against float64 on the same noise."""
    kw = dict(noise=16, timesteps=200, seed=1, form=form, likelihood=likelihood, source_ids=ids, device=device)
    ref = estimate(x.double(), sched, dtype=torch.float64, **kw)
    got = estimate(x, sched, precision=precision, **kw)
    assert got.precision == precision and ref.precision == "float64"
    cdf_ref, cdf_got = density_from_curve(ref.variance).cdf, density_from_curve(got.variance).cdf
    dm = abs(fit_logitnormal(cdf_got).m - fit_logitnormal(cdf_ref).m)
    return float(np.max(np.abs(cdf_got - cdf_ref))), dm, got, ref


@pytest.mark.parametrize("kernel", ["default", "pytorch"])
@pytest.mark.parametrize("case", list(CASES))
def test_bf16_products_leave_the_density_unchanged(demo, case, kernel, monkeypatch):
    """On the fused C kernel where this machine has it (vrcurve/_fused.c), and on PyTorch operations."""
    monkeypatch.setenv("VRCURVE_KERNEL", "fused" if kernel == "default" and _kernel.fused() is not None else "pytorch")
    ks, dm, got, ref = density_change(*demo, *CASES[case], "bf16")
    assert got.kernel == ("fused" if kernel == "default" and _kernel.fused() is not None else "pytorch")
    assert got.kernel_choice == f"VRCURVE_KERNEL={got.kernel}"
    assert ks < KS_TOL, f"KS {ks:.2e}"
    assert dm < M_TOL, f"m moved by {dm:.2e}"
    # and the products really ran in bf16: the curve is not the float64 one to float32 round-off
    assert np.max(np.abs(got.variance - ref.variance) / np.abs(ref.variance).max()) > 1e-6


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("precision", ["tf32", "bf16", "float32"])
@pytest.mark.parametrize("case", list(CASES))
def test_cuda_products_leave_the_density_unchanged(demo, case, precision):
    ks, dm, _, _ = density_change(*demo, *CASES[case], precision, device="cuda")
    assert ks < KS_TOL, f"KS {ks:.2e}"
    assert dm < M_TOL, f"m moved by {dm:.2e}"


def test_auto_precision():
    assert resolve_precision("auto", "cpu", torch.float64) == "float64"
    assert resolve_precision("float32", "cpu", torch.float64) == "float64"
    assert resolve_precision("auto", "cpu", torch.float32) == ("bf16" if cpu_has_native_bf16() else "float32")
    assert resolve_precision("bf16", "cpu") == "bf16"
    if CUDA:
        major = torch.cuda.get_device_capability()[0]
        assert resolve_precision("auto", "cuda") == ("tf32" if major >= 8 else "float32")


def test_precision_errors():
    with pytest.raises(VRCurveError, match="unknown precision"):
        resolve_precision("fp8")
    with pytest.raises(VRCurveError, match="CUDA"):
        resolve_precision("tf32", "cpu")
    with pytest.raises(VRCurveError, match="float32 runs"):
        resolve_precision("bf16", "cpu", torch.float64)
    with pytest.raises(VRCurveError, match="float32 or float64"):
        resolve_precision("auto", "cpu", torch.float16)
    with pytest.raises(VRCurveError, match="unknown precision"):
        estimate(torch.randn(4, 3), LinearScheduler(), noise=2, timesteps=4, precision="half")


def test_float32_products_ignore_the_global_matmul_precision():
    """torch.set_float32_matmul_precision("medium") lets float32 products run in bf16 or TF32; the engine
    pins its own, and gives the setting back."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 200, generator=g)
    plain = estimate(x, CosineScheduler(), noise=8, timesteps=40)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        mkldnn = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
        setting = getattr(mkldnn, "fp32_precision", None)
        medium = estimate(x, CosineScheduler(), noise=8, timesteps=40)
        assert getattr(mkldnn, "fp32_precision", None) == setting
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)
    np.testing.assert_array_equal(medium.variance, plain.variance)


def test_row_maximum_path_equals_direct():
    """With tau = 1 in 100 dimensions ||eps||^2 / 2 is about 50 nats, too large to skip the row maximum."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 100, generator=g, dtype=torch.float64) * 0.05
    with Projector(ambient_basis(x), 0, np.arange(5), 1.0, 6) as project:
        _, bound = project(0, 5)
    assert bound > MAX_UNSHIFTED_LOGIT  # this run takes the row-maximum path
    curve = estimate(x, CosineScheduler(), noise=6, timesteps=20, likelihood="sum", dtype=torch.float64,
                     noise_space="ambient")
    S, tr, _, _ = direct_estimate(x, CosineScheduler(), noise=6, timesteps=20, likelihood="sum")
    np.testing.assert_allclose(curve.S, S, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(curve.trcov, tr, rtol=1e-6, atol=1e-12)


def test_collapsed_timesteps_are_skipped_and_exact():
    """Where every other sample weighs less than 2^-126 of the own one, tr Cov = 0 and S = n_i / d."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 8, generator=g, dtype=torch.float64)
    sched, T = LinearScheduler(), 30
    t = torch.from_numpy((np.arange(T) + 0.5) / T)
    s = (sched.sigma(t) / sched.alpha(t)).numpy()
    _, n, D = gram(x)
    consts = Constants(D, n, s, 1.0, "float64", "covariance")
    with Projector(ambient_basis(x), 0, np.arange(6), 1.0, 5) as project:
        P, bound = project(0, 6)
    collapsed = make_chunk(consts, P, 0, bound).collapsed
    assert collapsed.any() and not collapsed.all()
    curve = estimate(x, sched, noise=5, timesteps=T, likelihood="sum", dtype=torch.float64, noise_space="ambient")
    S, tr, _, _ = direct_estimate(x, sched, noise=5, timesteps=T, likelihood="sum")
    np.testing.assert_allclose(curve.S, S, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(curve.trcov, tr, rtol=1e-6, atol=1e-12)
    assert np.all(curve.trcov[collapsed] == 0.0)
    np.testing.assert_allclose(curve.S[collapsed], float(n.mean()) / 8, rtol=1e-12)


def test_float32_with_subnormal_weights_matches_float64():
    """CPU float32 clamps logits at -126 (exp2 runs a slow path on subnormals): nothing visible changes."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(12, 40, generator=g)
    kw = dict(noise=10, timesteps=60, likelihood="sum", seed=2)
    a = estimate(x.double(), CosineScheduler(), dtype=torch.float64, **kw)
    b = estimate(x, CosineScheduler(), **kw)
    np.testing.assert_allclose(b.S, a.S, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(b.variance, a.variance, rtol=1e-4, atol=1e-7 * a.variance.max())


def test_bf16_does_not_depend_on_chunk_size(demo, monkeypatch):
    monkeypatch.setenv("VRCURVE_KERNEL", "pytorch")  # one kernel for every run (the choice is per run)
    x, ids = demo
    kw = dict(noise=9, timesteps=50, seed=5, precision="bf16", source_ids=ids)
    ref = estimate(x, CosineScheduler(), **kw)
    for chunk in (4, 9, 50, 10_000):
        c = estimate(x, CosineScheduler(), chunk_size=chunk, **kw)
        np.testing.assert_allclose(c.variance, ref.variance, rtol=1e-4, atol=1e-7 * ref.variance.max())


def test_progress_counts_timesteps():
    updates = []
    estimate(torch.randn(10, 6), LinearScheduler(), noise=7, timesteps=25, chunk_size=20, progress=updates.append)
    done = [u.done for u in updates]
    assert all(u.total == 25 and u.phase == "estimating" and u.unit == "timesteps" for u in updates)
    assert done[0] == 0 and done == sorted(done) and done[-1] == pytest.approx(25.0)
    assert len(updates) > 2


@pytest.mark.parametrize("M", [10, 40])
@pytest.mark.parametrize("precision, form", [("float32", "covariance"), ("bf16", "covariance"), ("bf16", "paper")])
def test_padded_product_rows_change_nothing(monkeypatch, M, precision, form):
    """Rows of the products buffer padded as on CUDA (to 64 bytes; at M = 10 the bf16 rows no longer fit in
    the logits' memory and get a buffer of their own) give the same curve, to the round-off of a matrix
    product whose kernel may change with the output's leading dimension."""
    # the buffers of the PyTorch backend (the CUDA one): the fused CPU kernel has no products buffer
    monkeypatch.setenv("VRCURVE_KERNEL", "pytorch")
    x = torch.randn(M, 30, generator=torch.Generator().manual_seed(3))
    kw = dict(noise=7, timesteps=40, seed=2, precision=precision, form=form)  # paper + bf16: no n columns
    plain = estimate(x, LinearScheduler(), **kw)
    monkeypatch.setitem(ROW_BYTES, "cpu", 64)
    consts = Constants(*gram(x)[1:][::-1], np.ones(3), 1.0, precision, form)
    forms = PairForms(consts, with_n=form == "covariance")
    assert forms.stride > forms.width and forms.stride % (64 // (2 if precision == "bf16" else 4)) == 0
    backend = PyTorchBackend(consts)
    backend.allocate(8)
    # bf16 products share the float32 logits' memory where their padded rows fit in it (M = 40), not at M = 10
    assert (backend.products.data_ptr() == backend.logits.data_ptr()) == (precision == "bf16" and M == 40)
    padded = estimate(x, LinearScheduler(), **kw)
    np.testing.assert_allclose(padded.variance, plain.variance, rtol=1e-6, atol=1e-6 * plain.variance.max())
    np.testing.assert_allclose(padded.S, plain.S, rtol=1e-6)
