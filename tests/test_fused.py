"""The fused C kernel of the CPU engine (vrcurve/_fused.c) and the choice between it and PyTorch.

They do the whole of a block's work (logits, exp2, row sums and bf16 weights; then the quadratic forms on
the upper triangle of D and the sums over each source's queries) where the products run in bf16 on a CPU
with AVX512-BF16. Checked here: each kernel against a float64 computation of what it stands for, the estimate
through them against the PyTorch path and the float64 reference, and that the library is built wherever
it can be (a silently missing build would only make vrcurve slow). Without the library or the CPU
instructions the kernel tests skip; the PyTorch path is tested everywhere.
"""

import shutil

import numpy as np
import pytest
import torch

from vrcurve import _kernel
from vrcurve.engine import plan as plan_module
from vrcurve.engine.backends.fused import pack_triangle
from vrcurve.engine.blocks import MAX_UNSHIFTED_LOGIT
from vrcurve.engine.noise import Projector, span_factor
from vrcurve.engine.plan import plan
from vrcurve.errors import VRCurveError
from vrcurve.estimator import estimate, gram
from vrcurve.schedulers import CosineScheduler, LinearScheduler

LIB = _kernel.fused()
needs_kernel = pytest.mark.skipif(LIB is None, reason=f"fused kernel: {_kernel.why_not()}")
BF16_ULP = 2.0**-8  # half the spacing of bf16 numbers in [1, 2): the relative bound of rounding to nearest


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@pytest.fixture
def pytorch_path(monkeypatch):
    """The engine without the fused kernel, as on a machine where it is not built."""
    monkeypatch.setattr(_kernel, "_load", lambda: (None, "switched off by the test"))


def _ptr(t):
    return t.data_ptr() if t is not None else None


def front(P, table, ca, M, shift, w, z, dnvec, dn, threads, **over):
    """vr_front on torch tensors, every capacity from the tensors themselves unless ``over`` says."""
    nt, ns = table.shape[0], table.shape[1]
    fields = dict(nt=nt, ns=ns, kk=P.shape[1], M=M, P=_ptr(P), p_source=P.stride(0), p_query=P.stride(1),
                  p_len=P.untyped_storage().nbytes() // 4 - P.storage_offset(), table=_ptr(table),
                  table_len=table.numel(), ca=_ptr(ca), ca_len=ca.numel(), dnvec=_ptr(dnvec), dnvec_len=dnvec.numel(),
                  w=_ptr(w), w_row=w.stride(0), w_rows=w.shape[0], z=_ptr(z), dn=_ptr(dn),
                  z_len=min(z.numel(), dn.numel()), shift=int(shift), threads=threads)
    fields.update(over)
    return LIB.vr_front(_kernel.Block(**fields))


def quad(w, row, triangle, z, dn, nt, ns, kk, M, out, threads, **over):
    """vr_quad on torch tensors (``row``: the weights' row stride), as ``front``."""
    fields = dict(nt=nt, ns=ns, kk=kk, M=M, B=_ptr(triangle), B_len=triangle.numel(), w=_ptr(w), w_row=row,
                  w_rows=w.numel() // row, z=_ptr(z), dn=_ptr(dn), z_len=min(z.numel(), dn.numel()),
                  out=_ptr(out), out_len=out.numel(), threads=threads)
    fields.update(over)
    return LIB.vr_quad(_kernel.Block(**fields))


@pytest.mark.skipif(not ({"avx512_bf16", "avx512f", "avx512bw", "avx512vl"} <= _cpu_flags()
                         and (shutil.which("cc") or shutil.which("gcc"))),
                    reason="needs a C compiler and a CPU with AVX512-BF16")
def test_built_and_used_where_it_can_be(monkeypatch):
    monkeypatch.delenv("VRCURVE_KERNEL")  # the choice by timing
    if _kernel.switched_off():
        pytest.skip("switched off by VRCURVE_FUSED")
    assert LIB is not None, f"the fused kernel is missing on a machine that can run it: {_kernel.why_not()}"
    x = torch.randn(20, 30, generator=torch.Generator().manual_seed(0))
    auto = estimate(x, LinearScheduler(), noise=4, timesteps=10, precision="bf16")
    assert auto.kernel in ("fused", "pytorch") and auto.kernel_choice.startswith("timed at start: fused ")
    plain = estimate(x, LinearScheduler(), noise=4, timesteps=10, precision="float32")
    assert plain.kernel == "pytorch" and "only kernel" in plain.kernel_choice


def test_environment_switch_and_pytorch_path(monkeypatch, pytorch_path):
    monkeypatch.delenv("VRCURVE_KERNEL")
    x = torch.randn(20, 30, generator=torch.Generator().manual_seed(0))
    curve = estimate(x, LinearScheduler(), noise=4, timesteps=10, precision="bf16")
    assert curve.kernel == "pytorch" and "switched off by the test" in curve.kernel_choice
    monkeypatch.setenv("VRCURVE_KERNEL", "fused")  # asked for where it cannot run: one clear sentence
    with pytest.raises(VRCurveError, match="VRCURVE_KERNEL=fused, but the fused kernel cannot run here"):
        estimate(x, LinearScheduler(), noise=4, timesteps=10, precision="bf16")
    # a run the fused kernel is not made for has PyTorch alone, whatever the variable says
    assert estimate(x, LinearScheduler(), noise=4, timesteps=10, precision="float32").kernel == "pytorch"
    monkeypatch.setenv("VRCURVE_KERNEL", "fastest")
    with pytest.raises(VRCurveError, match="VRCURVE_KERNEL='fastest' is not a kernel"):
        estimate(x, LinearScheduler(), noise=4, timesteps=10, precision="bf16")
    monkeypatch.undo()
    monkeypatch.setenv("VRCURVE_FUSED", "0")
    _kernel._load.cache_clear()
    try:
        assert _kernel.fused() is None and "VRCURVE_FUSED" in _kernel.why_not()
    finally:
        monkeypatch.undo()
        _kernel._load.cache_clear()
    assert (_kernel.fused() is None) == (LIB is None)


def _bf16_exact(t: torch.Tensor) -> np.ndarray:
    return t.float().double().numpy()


@needs_kernel
@pytest.mark.parametrize("M", [1, 15, 16, 32, 37, 200])
@pytest.mark.parametrize("shift", [False, True])
def test_front_is_exp2_of_the_logits(M, shift):
    g = torch.Generator().manual_seed(M + shift)
    nt, ns, K, kk = 3, 2, 9, 7  # a slice of kk of the K queries, as when a source's queries are split
    P = torch.randn(ns, K, M, generator=g)[:, 1 : 1 + kk]
    ca = torch.rand(nt, generator=g) * 30 + 0.5
    table = -torch.rand(nt, ns, M, generator=g) * 40  # -cb_t D_i: non-positive, reaching below -126 in places
    if shift:
        table += 60.0  # logits far above 0: the row maximum has to come off
    dnvec = torch.randn(M, generator=g)
    R = nt * ns * kk
    w = torch.zeros(R, M + 3, dtype=torch.bfloat16)  # a row stride other than M
    z, dn = torch.empty(R), torch.empty(R)
    assert front(P, table, ca, M, shift, w, z, dnvec, dn, 2) == 0
    # the logits as the kernel forms them: one fused multiply-add rounded to float32 (the rounding of a
    # float32 logit of size 60 alone moves 2^L by 3e-6), then the row maximum subtracted in float32
    L = (ca.double()[:, None, None, None] * P.double()[None] + table.double()[:, :, None, :]).float()
    if shift:
        L = L - L.amax(-1, keepdim=True)
    e = torch.exp2(L.double().clamp(min=-126.0)).reshape(R, M).numpy()
    np.testing.assert_allclose(z.double().numpy(), e.sum(-1), rtol=1e-6)
    got = _bf16_exact(w[:, :M])
    assert np.all(np.abs(got - e) <= BF16_ULP * e)  # bf16 of exp2: within one bf16 spacing
    assert np.all(got > 0) and np.all(_bf16_exact(w[:, M:]) == 0)  # no write past M; weights >= 2^-126
    np.testing.assert_allclose(dn.double().numpy(), e @ dnvec.double().numpy(),
                               rtol=1e-5, atol=1e-6 * np.abs(e).sum(-1).max())


@needs_kernel
def test_front_keeps_a_nan_logit():
    """A NaN in the projections makes its row's sum NaN (as in PyTorch), not a weight of 2^-126."""
    P = torch.zeros(1, 2, 20)
    P[0, 1, 3] = float("nan")
    table, ca, dnvec = torch.zeros(1, 1, 20), torch.ones(1), torch.ones(20)
    w, z, dn = torch.zeros(2, 20, dtype=torch.bfloat16), torch.empty(2), torch.empty(2)
    assert front(P, table, ca, 20, False, w, z, dnvec, dn, 1) == 0
    assert z[0] == 20.0 and torch.isnan(z[1]) and torch.isnan(dn[1])


@needs_kernel
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("M", [1, 2, 15, 16, 17, 45, 200])
def test_quad_is_the_quadratic_form_per_source(M, threads):
    """vr_quad against float64 on the same bf16 numbers: e^T D e / dscale over z^2, and dn / z, summed over
    each (timestep, source)'s queries; M around the kernel's 16-column tiles, odd M with its pad column,
    row counts that leave every kind of row tile (12, 4, 1) in a thread's share, and (one thread, 138 rows)
    groups of 23 queries carried across the kernel's spans of 48 rows."""
    g = torch.Generator().manual_seed(M)
    nt, ns, kk = 3, 2, 23
    R = nt * ns * kk
    X = torch.randn(M, 5, generator=g, dtype=torch.float64)
    G = X @ X.T
    n = G.diagonal()
    D = n[:, None] + n[None, :] - 2 * G
    dscale = float(D.sum()) / max(1, M * (M - 1)) or 1.0
    triangle = pack_triangle(D / dscale)
    assert triangle.numel() == LIB.vr_pack_size(M)
    w_row = M + M % 2
    w = torch.zeros(R, w_row, dtype=torch.bfloat16)
    w[:, :M] = torch.rand(R, M, generator=g).to(torch.bfloat16)
    z = torch.rand(R, generator=g) + 1.0
    dn = torch.randn(R, generator=g)
    out = torch.full((2, nt, ns), np.nan, dtype=torch.float64)
    assert quad(w, w_row, triangle, z, dn, nt, ns, kk, M, out, threads) == 0
    e = _bf16_exact(w[:, :M])
    B = np.triu(2.0 * D.numpy() / dscale, 1).astype(np.float32)  # as packed: bf16 of 2 D / dscale
    B = torch.from_numpy(B).to(torch.bfloat16).double().numpy()
    forms = np.einsum("ri,ij,rj->r", e, B, e) / z.double().numpy() ** 2
    ndot = dn.double().numpy() / z.double().numpy()
    np.testing.assert_allclose(out[0].numpy(), forms.reshape(nt, ns, kk).sum(-1), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(out[1].numpy(), ndot.reshape(nt, ns, kk).sum(-1), rtol=1e-6, atol=1e-9)
    assert quad(w, w_row, triangle, z, dn, nt, ns, kk, M, out, 1, w_row=w_row + 1) != 0  # odd row stride refused


@needs_kernel
def test_every_capacity_is_checked_in_c():
    """A buffer one element short of the block, or a struct of another layout, is refused (error code, no
    write): the C side checks what the Python side says it gave."""
    nt, ns, kk, M = 2, 3, 5, 17
    g = torch.Generator().manual_seed(0)
    P, table = torch.randn(ns, kk, M, generator=g), -torch.rand(nt, ns, M, generator=g)
    ca, dnvec = torch.ones(nt), torch.randn(M, generator=g)
    R = nt * ns * kk
    w, z, dn = torch.zeros(R, M + 1, dtype=torch.bfloat16), torch.empty(R), torch.empty(R)
    triangle = pack_triangle(torch.rand(M, M, generator=g, dtype=torch.float64))
    out = torch.zeros(2, nt, ns, dtype=torch.float64)
    assert front(P, table, ca, M, False, w, z, dnvec, dn, 1) == 0
    assert quad(w, M + 1, triangle, z, dn, nt, ns, kk, M, out, 1) == 0
    for name, value in [("p_len", ns * kk * M - 1), ("table_len", nt * ns * M - 1), ("ca_len", nt - 1),
                        ("dnvec_len", M - 1), ("w_rows", R - 1), ("z_len", R - 1)]:
        assert front(P, table, ca, M, False, w, z, dnvec, dn, 1, **{name: value}) == -4, name
    for name, value in [("B_len", triangle.numel() - 1), ("out_len", 2 * nt * ns - 1), ("w_rows", R - 1)]:
        assert quad(w, M + 1, triangle, z, dn, nt, ns, kk, M, out, 1, **{name: value}) == -4, name
    assert front(P, table, ca, M, False, w, z, dnvec, dn, 1, size=8) == -2
    assert front(P, table, ca, M, False, w, z, dnvec, dn, 1, p_query=M - 1) == -3
    assert set(_kernel.ERRORS) == {-1, -2, -3, -4}


@needs_kernel
@pytest.mark.parametrize("nt, ns, kk", [(1, 1, 1), (2, 3, 1), (3, 2, 40)])
def test_each_pass_does_not_depend_on_threads(nt, ns, kk):
    """The same inputs with 1, 3 and 64 threads (more threads than rows included): the weights and row sums
    bit for bit, the per-source sums to the order of float64 additions."""
    g = torch.Generator().manual_seed(kk)
    M = 29
    P = torch.randn(ns, kk, M, generator=g)
    table = -torch.rand(nt, ns, M, generator=g) * 4
    ca = torch.rand(nt, generator=g) + 0.5
    dnvec = torch.randn(M, generator=g)
    X = torch.randn(M, 4, generator=g, dtype=torch.float64)
    D = (X[:, None] - X[None]).pow(2).sum(-1)
    triangle = pack_triangle(D / float(D.mean()))
    R = nt * ns * kk
    runs = []
    for threads in (1, 3, 64):
        w = torch.zeros(R, M + 1, dtype=torch.bfloat16)
        z, dn, out = torch.empty(R), torch.empty(R), torch.empty((2, nt, ns), dtype=torch.float64)
        assert front(P, table, ca, M, False, w, z, dnvec, dn, threads) == 0
        assert quad(w, M + 1, triangle, z, dn, nt, ns, kk, M, out, threads) == 0
        runs.append((w, z, dn, out))
    for w, z, dn, out in runs[1:]:
        assert torch.equal(w, runs[0][0]) and torch.equal(z, runs[0][1]) and torch.equal(dn, runs[0][2])
        np.testing.assert_allclose(out.numpy(), runs[0][3].numpy(), rtol=1e-14, atol=0)


def test_blocks_of_a_short_last_chunk_fit_the_buffers(monkeypatch):
    """A chunk shorter than the others (the last queries of a source, or the last sources) gets more
    timesteps per block, but never more rows than the block buffers hold (the fused kernel writes them
    without bounds of its own)."""
    for M, K, elements, chunk in [(20, 32, 2200, None), (200, 4718, 1 << 21, None), (7, 50, 700, 9),
                                  (30, 3, 3000, None), (64, 33, 64 * 130, 40)]:
        monkeypatch.setattr(plan_module, "CPU_BLOCK_ELEMENTS", elements)
        p = plan(M, K, chunk, torch.device("cpu"), torch.float32, torch.bfloat16)
        for sources in {p.sources, M % p.sources or p.sources}:
            for noise in {p.noise, K % p.noise or p.noise}:
                rows = sources * noise
                assert p.timesteps(rows, 1000) * rows <= p.buffer_rows, (M, K, elements, rows)


@needs_kernel
def test_a_short_last_chunk_gives_the_same_curve(monkeypatch):
    """M = 20, K = 32 with blocks of 110 rows: chunks of 27 queries and buffers of 108 rows; the last 5
    queries of each source would take 22 timesteps (110 rows) by the block size alone."""
    monkeypatch.setenv("VRCURVE_KERNEL", "fused")
    x = torch.randn(20, 24, generator=torch.Generator().manual_seed(5))
    kw = dict(noise=32, timesteps=40, seed=1, precision="bf16")
    ref = estimate(x, LinearScheduler(), **kw)
    monkeypatch.setattr(plan_module, "CPU_BLOCK_ELEMENTS", 20 * 110)
    p = plan(20, 32, None, torch.device("cpu"), torch.float32, torch.bfloat16)
    assert (p.noise, p.buffer_rows) == (27, 108)
    short = estimate(x, LinearScheduler(), **kw)
    assert short.kernel == "fused"
    np.testing.assert_allclose(short.variance, ref.variance, rtol=1e-6, atol=1e-9 * ref.variance.max())
    np.testing.assert_allclose(short.S, ref.S, rtol=1e-6)


@needs_kernel
def test_kernel_result_does_not_depend_on_threads(monkeypatch):
    monkeypatch.setenv("VRCURVE_KERNEL", "fused")
    x = torch.randn(30, 50, generator=torch.Generator().manual_seed(1))
    kw = dict(noise=11, timesteps=40, seed=3, precision="bf16", chunk_size=7)  # groups split between threads
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = estimate(x, CosineScheduler(), **kw)
        torch.set_num_threads(max(2, threads))
        many = estimate(x, CosineScheduler(), **kw)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(many.variance, one.variance, rtol=1e-6, atol=1e-9 * one.variance.max())
    np.testing.assert_allclose(many.S, one.S, rtol=1e-6)


@needs_kernel
@pytest.mark.parametrize("form, likelihood, scale", [("covariance", "mean", 1.0), ("paper", "mean", 1.0),
                                                     ("covariance", "sum", 0.05), ("paper", "sum", 0.05)])
def test_fused_and_pytorch_paths_agree(monkeypatch, form, likelihood, scale):
    """The same estimate through both paths, each against float64: the fused one is at least as close
    (its quadratic forms are summed in float32 where PyTorch rounds e @ D to bf16). At scale 0.05 with the
    "sum" likelihood the logits are large and the row-maximum path runs."""
    x = torch.randn(40, 100, generator=torch.Generator().manual_seed(7)) * scale
    kw = dict(noise=12, timesteps=60, seed=2, form=form, likelihood=likelihood)
    ref = estimate(x.double(), CosineScheduler(), dtype=torch.float64, **kw)
    monkeypatch.setenv("VRCURVE_KERNEL", "fused")
    fused = estimate(x, CosineScheduler(), precision="bf16", **kw)
    monkeypatch.setenv("VRCURVE_KERNEL", "pytorch")
    plain = estimate(x, CosineScheduler(), precision="bf16", **kw)
    assert (fused.kernel, plain.kernel) == ("fused", "pytorch")
    factor = span_factor(gram(x)[0])  # the estimate's own noise: in the span of the samples
    with Projector(factor.root.float(), 2, np.arange(40), 1.0 if likelihood == "sum" else 100.0, 12,
                   span=factor.span) as project:
        _, bound = project(0, 40)
    assert (bound > MAX_UNSHIFTED_LOGIT) == (likelihood == "sum")  # the row-maximum path, where it runs

    def error(c):
        scale_v = np.abs(ref.variance).max()
        return max(np.max(np.abs(c.variance - ref.variance)) / scale_v, np.max(np.abs(c.S - ref.S)))

    assert error(fused) < 3e-3
    assert error(fused) <= 1.5 * error(plain) + 1e-6


@pytest.mark.parametrize("likelihood, scale", [("mean", 1.0), ("sum", 0.05)])
def test_compiled_backend_equals_float64_within_bf16(monkeypatch, likelihood, scale):
    """The opt-in torch.compile backend (VRCURVE_KERNEL=compiled): recorded as such, and within the bf16
    tolerance of the other kernels against float64 (the row-maximum path included, with "sum")."""
    x = torch.randn(24, 60, generator=torch.Generator().manual_seed(3)) * scale
    kw = dict(noise=6, timesteps=30, seed=1, likelihood=likelihood)
    ref = estimate(x.double(), CosineScheduler(), dtype=torch.float64, **kw)
    monkeypatch.setenv("VRCURVE_KERNEL", "compiled")
    got = estimate(x, CosineScheduler(), precision="bf16", **kw)
    assert (got.kernel, got.kernel_choice) == ("compiled", "VRCURVE_KERNEL=compiled")
    scale_v = np.abs(ref.variance).max()
    assert np.max(np.abs(got.variance - ref.variance)) / scale_v < 3e-3
    assert np.max(np.abs(got.S - ref.S)) < 3e-3
