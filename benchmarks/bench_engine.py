"""The Gram-form engine against a direct implementation, side by side in one run (not a test).

First the machine: its CPU model and its bf16 product rate for the engine's shape ((10000 x M) by (M x M)),
so that a reader can judge the figures on any CPU. Then, for each data dimension d (default 3072, 4096,
16384) with M = 200 samples and K = 500 noises per sample:

- direct:  a competent direct float32 implementation of the estimator (docs/estimator.md): per timestep, each chunk of queries is
           built in R^d (q = x_i + s_t eps), its squared distances to the samples come from one matrix
           product (||q||^2 + ||x||^2 - 2 q x^T, addmm), the posterior mean from a second (w @ X), and
           tr Cov = w . n - ||E[x1|q]||^2. The noise of a chunk is drawn once and reused for every timestep,
           and its drawing is not timed. It is timed on a few timesteps only (--direct-timesteps), and its
           cost per timestep is the mean over them.
- vrcurve: the engine (``vrcurve.engine``) with the same samples and, up to --check-max-dim (16384), the
           same noise (its ambient noise, ``source_noise`` in R^d; above it the span noise that
           ``estimate`` draws: the blocks cost the same), run as ``estimate`` runs it, on the kernel it
           chooses by timing at start (printed with its reason): its blocks of a few consecutive timesteps (4 at M = 200, K = 500), one
           starting at each of the direct one's timesteps, are timed, and the cost per timestep is over all
           the timesteps they cover; its one-time O(d) work (noise and projections) is reported apart.
           Each chunk's first block (the first on its fresh projections, 1 of 250 in a run of T = 1000,
           slower than the rest) runs untimed before them, at t = 0.
- check:   S_t and V(t) of both on the direct one's timesteps, from the same noise, and their largest
           relative difference (vrcurve runs its products in the precision ``--precision`` resolves to).
- load:    the share of the CPUs that other processes took meanwhile (the machine may be shared).
- full:    the whole estimate, T = 1000, in a fresh child process: wall time and peak RSS (the child's
           VmHWM, and its growth over the RSS after the imports and the data).
- cli:     with --cli, the whole ``vrcurve estimate`` command on a .npy file of the samples (end to end).
- float32: with --compare-float32, the full curve again with float32 products, its time, and the KS
           distance and logit-normal m difference of the two densities.
- other:   with --compare-pytorch, the engine's blocks again on the kernel the choice did not take (the
           fused C kernel of vrcurve/_fused.c or PyTorch operations), timed in the same way, right after.
- profile: with --profile, torch.profiler's time per operation over 60 of the engine's blocks on each
           kernel (the fused kernel's two passes appear as vrcurve::fused_front and vrcurve::fused_quad),
           and the rate of the products against the machine's bf16 product rate.

The samples are the embedded Fashion-MNIST demo images (for M > 2000 also their mirror images and copies
shifted by a pixel), resized to d (bilinear; 3072 = 3 x 32 x 32 with the
grey image in every channel, 4096 = 64 x 64, 16384 = 128 x 128) and normalised to mean 0 and std 1, or
Gaussian noise (--data gaussian).

    python benchmarks/bench_engine.py                                  # all three d, about 10 minutes
    python benchmarks/bench_engine.py --dims 4096 --cli                # the CPU target, end to end
    python benchmarks/bench_engine.py --dims 4096,262144 --direct-sources 10 --cli --compare-pytorch --profile
    python benchmarks/bench_engine.py --dims 1024 -M 64 -K 50 -T 100 --direct-timesteps 2   # quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vrcurve import estimator as est
from vrcurve.engine import backends
from vrcurve.engine.blocks import block_sums, make_chunk
from vrcurve.engine.noise import Projector
from vrcurve.engine.plan import plan
from vrcurve.engine.run import prepare
from vrcurve.options import Precision, choices
from vrcurve.schedulers import LinearScheduler


class OtherLoad:
    """CPU time that other processes took while this one measured (the machine may be shared): the busy
    time of /proc/stat minus this process's and its children's own CPU time, as a share of all CPUs."""

    def __enter__(self):
        self.busy, self.own, self.wall = self._busy(), self._own(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.wall
        others = (self._busy() - self.busy) - (self._own() - self.own)
        self.share = max(0.0, others) / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0

    @staticmethod
    def _busy() -> float:
        try:
            with open("/proc/stat") as f:
                v = [int(a) for a in f.readline().split()[1:]]
        except OSError:
            return 0.0
        return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), and how many cores this process may use."""
    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {len(os.sched_getaffinity(0))} cores"


def bf16_rate(M: int = 200, rows: int = 10_000) -> float:
    """This machine's bf16 product rate, GFLOP/s, for the engine's shape: (rows x M) by (M x M), best of 20."""
    a, b = torch.rand(rows, M).bfloat16(), torch.rand(M, M).bfloat16()
    return 2 * rows * M * M / min(_timed(lambda: a @ b) for _ in range(20)) / 1e9


def machine_speed() -> str:
    """Best-of-20 rates of a bf16 and a float32 product (10,000 x 200 x 200) and of exp2 and exp on 2M floats:
    the shape of the engine's work, to tell a slow moment of a shared machine from a slow engine."""
    a, b = torch.rand(10_000, 200), torch.rand(200, 200)
    ab, bb = a.bfloat16(), b.bfloat16()
    out = []
    for f, work, unit in ((lambda: ab @ bb, 2 * 10_000 * 200 * 200, "GFLOP/s bf16"),
                          (lambda: a @ b, 2 * 10_000 * 200 * 200, "GFLOP/s float32"),
                          (lambda: torch.exp2(a), a.numel(), "G exp2/s"),
                          (lambda: torch.exp(a), a.numel(), "G exp/s")):
        best = min(_timed(f) for _ in range(20))
        out.append(f"{work / best / 1e9:.0f} {unit}")
    return ", ".join(out)


def _timed(f) -> float:
    started = time.perf_counter()
    f()
    return time.perf_counter() - started


def make_data(kind: str, M: int, d: int, seed: int = 0) -> torch.Tensor:
    """M samples of dimension d, float32, normalised to mean 0 and std 1 over all their entries."""
    if kind == "gaussian":
        x = torch.randn(M, d, generator=torch.Generator().manual_seed(seed))
    else:
        from vrcurve.readers import open_source

        src = open_source("demo")
        img = torch.from_numpy(src.read(np.arange(src.n))).float()  # (n, 1, 28, 28) in [-1, 1]
        # beyond the n demo images: their mirror images, then both shifted by a pixel (distinct images)
        img = torch.cat([img, img.flip(-1)])
        img = torch.cat([img, img.roll(1, -1), img.roll(1, -2), img.roll((1, 1), (-2, -1))])
        if M > img.shape[0]:
            raise SystemExit(f"--data demo has {img.shape[0]} images with their variants; use --data gaussian.")
        idx = np.sort(np.random.default_rng(seed).choice(img.shape[0] if M > src.n else src.n, size=M, replace=False))
        img = img[torch.from_numpy(idx)]
        channels = 3 if d % 3 == 0 and math.isqrt(d // 3) ** 2 == d // 3 else 1
        side = math.isqrt(d // channels)
        if channels * side * side != d:
            raise SystemExit(f"--data demo needs d = side^2 or 3 side^2, got {d}; use --data gaussian.")
        img = torch.nn.functional.interpolate(img, size=(side, side), mode="bilinear", align_corners=False)
        x = img.expand(M, channels, side, side).reshape(M, d)
    x = x.double()
    return ((x - x.mean()) / x.std(unbiased=False)).float()


def grid_indices(T: int, n: int) -> list:
    """n timesteps spread over t in (0, 0.9), where the posterior has not collapsed and both do full work."""
    return [int(round(T * (0.9 * (j + 0.5) / n))) for j in range(n)]


def direct(x, sched, ks, T, K, seed, tau, chunk_queries, sources=None):
    """Per-timestep sums over each source's queries of ||E[x1|q]||^2 and tr Cov at timesteps ``ks``.

    Returns (sep, tr) of shape (len(ks), M) and the seconds of work of each timestep (noise drawing
    excluded). With ``sources``, only the first that many sources are computed and the seconds are scaled
    to all M (the work is the same for every source).
    """
    M, d = x.shape
    sync = (lambda: torch.cuda.synchronize(x.device)) if x.is_cuda else (lambda: None)
    t = torch.from_numpy(est.timestep_grid(T))
    s = (sched.sigma(t) / sched.alpha(t)).tolist()
    xt = x.T.contiguous()
    n = (x * x).sum(1)
    per = max(1, chunk_queries // K)  # whole sources per chunk
    sep = torch.zeros(len(ks), M, dtype=torch.float64)
    tr = torch.zeros(len(ks), M, dtype=torch.float64)
    work = [0.0] * len(ks)
    upto = M if sources is None else min(M, sources)
    for i0 in range(0, upto, per):
        i1 = min(upto, i0 + per)
        eps = torch.stack([est.source_noise(seed, i, K, d, device=x.device) for i in range(i0, i1)])  # not timed
        q = torch.empty_like(eps)
        for j, k in enumerate(ks):
            sync()
            started = time.perf_counter()
            st = s[k]
            torch.add(x[i0:i1, None, :], eps, alpha=st, out=q)  # the queries in R^d
            qf = q.view(-1, d)
            qn = torch.linalg.vecdot(qf, qf)
            dist = torch.addmm(qn[:, None] + n[None, :], qf, xt, alpha=-2.0)  # ||q - x_j||^2
            w = torch.softmax(dist.mul_(-1.0 / (2.0 * st * st * tau)), dim=-1)
            mean = w @ x  # E[x1 | q], (Q, d)
            sq = torch.linalg.vecdot(mean, mean)
            trq = w @ n - sq
            sq_sum, tr_sum = (v.view(i1 - i0, K).sum(1, dtype=torch.float64) for v in (sq, trq))
            sync()
            work[j] += time.perf_counter() - started
            sep[j, i0:i1] += sq_sum.cpu()
            tr[j, i0:i1] += tr_sum.cpu()
    return sep, tr, [w * M / upto for w in work]


class _ProfiledKernels:
    """The fused library with each call recorded by torch.profiler under a name of its own."""

    def __init__(self, lib):
        self.lib = lib

    def __getattr__(self, name):
        call = getattr(self.lib, name)

        def recorded(*args):
            with torch.profiler.record_function(f"vrcurve::fused_{name[3:]}"):
                return call(*args)

        return recorded


def engine_for(x, sched, T, K, tau, precision, noise_space="span"):
    """The engine set up as ``estimate`` sets it up on the device of ``x``: (constants, plan, timesteps per
    block, the precision ``precision`` resolves to, the projector's basis and span)."""
    M = x.shape[0]
    t = torch.from_numpy(est.timestep_grid(T))
    s = (sched.sigma(t) / sched.alpha(t)).numpy()
    prec = est.resolve_precision(precision, x.device, torch.float32)
    consts, basis, span = prepare(x, s, tau, prec, "covariance", noise_space, np.arange(M))
    p = plan(M, K, None, x.device, torch.float32, consts.gemm)
    return consts, p, p.timesteps(p.sources * p.noise, T), prec, basis, span


def vrcurve_timesteps(x, sched, ks, T, K, seed, tau, precision, kernel=None, noise_space="span"):
    """The engine's per-source sums at timesteps ``ks``: (sep, tr) of shape (len(ks), M), the seconds of work
    per timestep from each of ``ks`` on, of the one-time work (noise and projections), the precision, the
    number of timesteps of a block and the kernel's ``Choice`` (``kernel``: force one, else chosen as in
    ``estimate``, by timing at start).

    The engine runs as ``estimate`` runs it (its default chunks and blocks): each timed block covers the
    block's usual number of consecutive timesteps from k on, and the cost per timestep is over all of them.
    """
    M, d = x.shape
    started = time.perf_counter()
    consts, p, tb, prec, basis, span = engine_for(x, sched, T, K, tau, precision, noise_space)
    once = time.perf_counter() - started
    ids = np.arange(M)
    sums = torch.zeros(2, len(ks), M, dtype=torch.float64)
    work = [0.0] * len(ks)
    backend, choice = None, None
    with Projector(basis, seed, ids, tau, K, p.sources, span) as project:
        for i0 in range(0, M, p.sources):
            i1 = min(M, i0 + p.sources)
            started = time.perf_counter()
            P, bound = project(i0, i1)
            chunk = make_chunk(consts, P, i0, bound)
            once += time.perf_counter() - started
            if backend is None:
                saved = os.environ.get(backends.ENV)
                if kernel is not None:
                    os.environ[backends.ENV] = kernel
                try:
                    started = time.perf_counter()
                    backend, choice = backends.choose(consts, chunk, p)
                    once += time.perf_counter() - started
                finally:
                    if kernel is not None:
                        os.environ.pop(backends.ENV) if saved is None else os.environ.update({backends.ENV: saved})
            for k0 in range(0, K, p.noise):
                # untimed: the chunk's first block, on its freshly projected queries, runs slower (its
                # products ~25% in this machine's measurements). In a run it is one of the chunk's T / tb
                # blocks (250 at T = 1000), and the full curve below includes it; timing only 3 blocks per
                # chunk, it would weigh a third.
                block_sums(backend, chunk, k0, min(K, k0 + p.noise), 0, min(T, tb))
                for j, k in enumerate(ks):
                    started = time.perf_counter()
                    sums[:, j, i0:i1] += block_sums(backend, chunk, k0, min(K, k0 + p.noise), k, min(T, k + tb))[:, 0]
                    work[j] += time.perf_counter() - started
    per_timestep = [w / (min(T, k + tb) - k) for w, k in zip(work, ks)]
    return sums[1], sums[0], per_timestep, once, prec, tb, choice


def profile_blocks(x, sched, T, K, tau, precision, kernel, rate, blocks=60):
    """Where the engine's time goes: torch.profiler over ``blocks`` blocks of one chunk on ``kernel``, in ms
    per timestep of the whole problem (all M sources), and the rate of its products against ``rate``, the
    machine's bf16 product rate (GFLOP/s) for the same shape."""
    from torch.profiler import profile

    M, d = x.shape
    consts, p, tb, prec, basis, span = engine_for(x, sched, T, K, tau, precision)
    backend = backends.make(kernel, consts)
    backend.allocate(p.buffer_rows)
    if kernel == "fused":
        backend.lib = _ProfiledKernels(backend.lib)
    with Projector(basis, 0, np.arange(M), tau, K, p.sources, span) as project:
        P, bound = project(0, p.sources)
    chunk = make_chunk(consts, P, 0, bound)
    starts = [int(v) for v in np.linspace(0, max(0, min(0.9 * T, T - tb)), blocks)]
    for t0 in starts[:5]:
        block_sums(backend, chunk, 0, p.noise, t0, t0 + tb)
    with profile() as prof:
        for t0 in starts:
            block_sums(backend, chunk, 0, p.noise, t0, t0 + tb)
    scale = 1e-3 * (M / p.sources) * (K / p.noise) / (blocks * tb)  # us of one chunk -> ms per timestep
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) * scale
    print(f"  profile  {kernel}: {total:.1f} ms per timestep in torch operations and the fused kernel ({prec} "
          f"products, blocks of {tb} timesteps x {p.sources * p.noise} queries):")
    for e in events[:8]:
        print(f"             {e.key:22s} {e.self_cpu_time_total * scale:6.2f} ms  ({e.count / blocks:.0f} per block)")
    # the products: the triangle's M (M - 1) / 2 products per query in the fused kernel, the column blocks'
    # in PyTorch (each a product of (rows x e1) by (e1 x width)); 2 flops per product
    queries = M * K  # per timestep
    if kernel == "fused":
        name, flops = "vrcurve::fused_quad", queries * M * (M - 1)
    else:
        name = "aten::mm"
        flops = queries * 2 * sum(e1 * W.shape[1] for _, e1, W in backend.forms.blocks)
    ms = sum(e.self_cpu_time_total for e in events if e.key == name) * scale
    if ms > 0:
        got = flops / (ms * 1e-3) / 1e9
        print(f"  products {name}: {ms:.2f} ms per timestep, {got:.0f} GFLOP/s = {got / rate:.0%} of this machine's "
              f"bf16 product rate ({rate:.0f} GFLOP/s for ({10_000} x {M}) by ({M} x {M}))")


def child(args) -> None:
    """The full estimate in this (fresh) process; prints one JSON line."""
    x = make_data(args.data, args.samples, args.child_dim)

    def rss_mib():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    before = rss_mib()
    marks = []
    started = time.perf_counter()
    curve = est.estimate(x, LinearScheduler(), noise=args.noise, timesteps=args.timesteps, seed=0,
                         precision=args.precision,
                         progress=lambda u: marks.append((time.perf_counter(), u.done / u.total)))
    wall = time.perf_counter() - started
    # seconds per fortieth of the work, from the progress reports: how steady the machine was
    edges = [started] + [next(tm for tm, f in marks if f >= (j + 1) / 40 - 1e-9) for j in range(40)]
    fortieths = np.diff(edges)
    peak = peak_rss_mib()
    if args.child_out:
        np.save(args.child_out, curve.variance)
    print(json.dumps({"wall": wall, "peak_mib": peak, "before_mib": before, "precision": curve.precision,
                      "kernel": curve.kernel, "kernel_choice": curve.kernel_choice,
                      "variance_sum": float(curve.variance.sum()), "fortieth_min": float(fortieths.min()),
                      "fortieth_max": float(fortieths.max())}))


def full_curve(args, d, precision=None, keep=None):
    cmd = [sys.executable, __file__, "--child-dim", str(d), "--data", args.data, "-M", str(args.samples),
           "-K", str(args.noise), "-T", str(args.timesteps), "--precision", precision or args.precision]
    if keep:
        cmd += ["--child-out", str(keep)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def density_difference(v_a, v_b):
    """KS distance between the CDFs of two variance curves and the difference of their KS-best m."""
    from vrcurve.density import density_from_curve
    from vrcurve.fit import fit_logitnormal

    a, b = density_from_curve(v_a).cdf, density_from_curve(v_b).cdf
    return float(np.max(np.abs(a - b))), abs(fit_logitnormal(a).m - fit_logitnormal(b).m)


def peak_rss_mib() -> float:
    """This process's peak RSS since it started its program: VmHWM. (ru_maxrss would not do in a child:
    Linux carries the parent's RSS at the fork over the exec into it, and the parent holds the direct
    implementation's arrays.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# The command line in a child that writes its own peak RSS (VmHWM) to argv[1] when it exits.
CLI_CHILD = """import atexit, sys
path = sys.argv[1]
def peak():
    with open("/proc/self/status") as f:
        hwm = [line.split()[1] for line in f if line.startswith("VmHWM:")]
    open(path, "w").write(hwm[0])
atexit.register(peak)
sys.argv = ["vrcurve"] + sys.argv[2:]
from vrcurve.cli import main
main()
"""


def cli_end_to_end(args, d):
    x = make_data(args.data, args.samples, d).numpy()
    with tempfile.TemporaryDirectory(prefix="vrcurve-bench-engine-") as tmp:
        data, out, hwm = Path(tmp) / "x.npy", Path(tmp) / "vr.safetensors", Path(tmp) / "hwm"
        np.save(data, x)
        cmd = [sys.executable, "-c", CLI_CHILD, str(hwm), "estimate", "--data", str(data), "-o", str(out), "--json",
               "-M", str(args.samples), "-K", str(args.noise), "-T", str(args.timesteps),
               "--precision", args.precision]
        started = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit("vrcurve estimate failed")
        summary = json.loads(proc.stdout)
        peak = int(hwm.read_text()) / 1024
    return wall, peak, summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dims", default="3072,4096,16384", help="comma-separated data dimensions d")
    ap.add_argument("-M", "--samples", type=int, default=200)
    ap.add_argument("-K", "--noise", type=int, default=500)
    ap.add_argument("-T", "--timesteps", type=int, default=1000)
    ap.add_argument("--direct-timesteps", type=int, default=3, help="timesteps the direct one is timed on")
    ap.add_argument("--direct-chunk", type=int, default=2000, help="queries per chunk of the direct one")
    ap.add_argument("--precision", default="auto", choices=choices(Precision))
    ap.add_argument("--data", default="demo", choices=("demo", "gaussian"))
    ap.add_argument("--no-full", action="store_true", help="skip the full-curve child process")
    ap.add_argument("--cli", action="store_true", help="also time the whole vrcurve estimate command")
    ap.add_argument("--compare-float32", action="store_true",
                    help="also run the full curve with float32 products and compare the densities")
    ap.add_argument("--compare-pytorch", action="store_true",
                    help="also time the engine's blocks on the kernel the choice did not take")
    ap.add_argument("--direct-sources", type=int, default=None,
                    help="above --check-max-dim, time the direct one on this many sources and scale to M")
    ap.add_argument("--check-max-dim", type=int, default=16384,
                    help="above this d the engine runs its span noise and the same-noise check is skipped "
                         "(the ambient noise it needs costs O(M K d))")
    ap.add_argument("--profile", action="store_true", help="print where the engine's time goes, per operation")
    ap.add_argument("--child-dim", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_dim:
        return child(args)

    sched = LinearScheduler()
    M, K, T = args.samples, args.noise, args.timesteps
    ks = grid_indices(T, args.direct_timesteps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; M = {M}, K = {K} (Q = {M * K:,} queries), "
          f"T = {T}, linear scheduler, likelihood mean, data: {args.data}")
    rate = bf16_rate(M)
    print(f"machine: {cpu_model()}; bf16 product rate {rate:.0f} GFLOP/s for (10000 x {M}) by ({M} x {M})")
    print(f"machine now: {machine_speed()}")
    print(f"timed timesteps: t = {', '.join(f'{est.timestep_grid(T)[k]:.4f}' for k in ks)} "
          f"(direct timed on these {len(ks)} only, per-timestep cost = their mean)")
    rows = []
    for d in [int(v) for v in args.dims.split(",")]:
        x = make_data(args.data, M, d)
        tau = float(d)
        space = "ambient" if d <= args.check_max_dim else "span"
        with OtherLoad() as side_by_side:
            sep_v, tr_v, per_v, once_v, prec, tb, choice = vrcurve_timesteps(x, sched, ks, T, K, 0, tau, args.precision,
                                                                             noise_space=space)
            subset = args.direct_sources if space == "span" else None
            sep_d, tr_d, work_d = direct(x, sched, ks, T, K, 0, tau, args.direct_chunk, subset)
        per_d, per_v, best_d, best_v = np.mean(work_d), np.mean(per_v), min(work_d), min(per_v)
        t = torch.from_numpy(est.timestep_grid(T)[ks])
        h2 = sched.h(t).double() ** 2
        V_v, V_d = h2 * tr_v.sum(1), h2 * tr_d.sum(1)
        S_v, S_d = sep_v.sum(1), sep_d.sum(1)
        dV = float(((V_v - V_d).abs() / V_d.abs()).max())
        dS = float(((S_v - S_d).abs() / S_d.abs()).max())
        print(f"\nd = {d}: vrcurve products in {prec}; kernel {choice.name} ({choice.why})")
        scaled = "" if subset is None else f" (timed on {min(M, subset)} sources, scaled to {M})"
        print(f"  direct   {per_d:9.3f} s per timestep{scaled}")
        print(f"  vrcurve  {per_v * 1e3:9.2f} ms per timestep (its blocks of {tb} timesteps from each of those on); "
              f"one-time work ({space} noise + projections, and the kernel's choice) {once_v:.2f} s")
        print(f"  ratio    {per_d / per_v:9.0f}x per timestep (means); {best_d / best_v:.0f}x with the fastest "
              f"timestep of each ({best_d:.3f} s, {best_v * 1e3:.2f} ms)")
        if space == "ambient":
            print(f"  check    same noise, same timesteps: max relative difference V {dV:.1e}, S {dS:.1e}")
        else:
            dV = float("nan")
            print("  check    skipped: not the same noise (tests/test_noise.py compares the span noise with the direct "
                  "reference)")
        print(f"  load     other processes took {side_by_side.share:.0%} of the CPUs meanwhile")
        other = "pytorch" if choice.name == "fused" else "fused"
        if args.compare_pytorch and choice.name in ("fused", "pytorch") and (other == "pytorch" or prec == "bf16"):
            try:
                with OtherLoad() as load_pt:
                    _, tr_p, per_p, _, _, _, _ = vrcurve_timesteps(x, sched, ks, T, K, 0, tau, args.precision,
                                                                   kernel=other, noise_space=space)
            except Exception as exc:  # the other kernel cannot run here
                print(f"  {other:8s} cannot run here: {exc}")
            else:
                print(f"  {other:8s} {np.mean(per_p) * 1e3:9.2f} ms per timestep on the other kernel: the chosen one "
                      f"is {np.mean(per_p) / per_v:.2f}x faster; other processes took {load_pt.share:.0%} of the "
                      f"CPUs meanwhile")
        if args.profile:
            for kernel in ("fused", "pytorch") if prec == "bf16" else ("pytorch",):
                try:
                    profile_blocks(x, sched, T, K, tau, args.precision, kernel, rate)
                except Exception as exc:
                    print(f"  profile  {kernel}: cannot run here ({exc})")
        row = {"d": d, "direct": per_d, "vrcurve": per_v, "ratio": per_d / per_v, "best": best_d / best_v,
               "once": once_v, "dV": dV}
        tmp = tempfile.TemporaryDirectory(prefix="vrcurve-bench-engine-")
        if not args.no_full:
            with OtherLoad() as load:
                full = full_curve(args, d, keep=Path(tmp.name) / "v.npy")
            print(f"  full     T = {T}: {full['wall']:.1f} s ({full['precision']}, kernel {full['kernel']}: "
                  f"{full['kernel_choice']}), "
                  f"peak RSS {full['peak_mib']:.0f} MiB "
                  f"({full['peak_mib'] - full['before_mib']:+.0f} MiB over the {full['before_mib']:.0f} MiB "
                  f"after imports and data); other processes took {load.share:.0%} of the CPUs meanwhile")
            print(f"           each fortieth of its work took {full['fortieth_min']:.2f} to "
                  f"{full['fortieth_max']:.2f} s")
            row.update(full=full["wall"], peak=full["peak_mib"], grow=full["peak_mib"] - full["before_mib"])
            if args.compare_float32:
                with OtherLoad() as load32:
                    f32 = full_curve(args, d, precision="float32", keep=Path(tmp.name) / "v32.npy")
                ksd, dm = density_difference(np.load(Path(tmp.name) / "v.npy"), np.load(Path(tmp.name) / "v32.npy"))
                print(f"  float32  the same full curve with float32 products: {f32['wall']:.1f} s (other processes "
                      f"took {load32.share:.0%}); {full['precision']} against it: KS {ksd:.1e}, m differs by {dm:.1e}")
        if args.cli:
            with OtherLoad() as load:
                wall, peak, summary = cli_end_to_end(args, d)
            print(f"  cli      vrcurve estimate --data x.npy (whole command, T = {T}): {wall:.1f} s, "
                  f"peak RSS {peak:.0f} MiB, logit-normal m = {summary['logitnormal_m']:.3f}; "
                  f"other processes took {load.share:.0%} of the CPUs meanwhile")
            row.update(cli=wall, cli_peak=peak)
        tmp.cleanup()
        rows.append(row)
    print(f"\nmachine now: {machine_speed()}; bf16 product rate {bf16_rate(M):.0f} GFLOP/s")
    print("summary")
    print(f"{'d':>6} {'direct s/t':>11} {'vrcurve ms/t':>13} {'ratio':>7} {'best':>6} {'full curve s':>13} "
          f"{'peak RSS MiB':>13}")
    for r in rows:
        full = f"{r['full']:13.1f}" if "full" in r else f"{'-':>13}"
        peak = f"{r['peak']:13.0f}" if "peak" in r else f"{'-':>13}"
        print(f"{r['d']:>6} {r['direct']:11.3f} {r['vrcurve'] * 1e3:13.2f} {r['ratio']:7.0f} {r['best']:6.0f} "
              f"{full} {peak}")


if __name__ == "__main__":
    main()
