"""The engine on one CUDA GPU, side by side with a direct implementation on the same card (docs/performance.md, "On a GPU"; not a test).

Needs a CUDA device; run it where one is. In one run, on the card ``--device`` names:

- direct:  ``bench_engine.direct`` (queries built in R^d, distances and posterior means by float32 matrix
           products, IEEE float32 throughout, chunks of --direct-chunk queries), timed on --direct-timesteps
           timesteps with the noise drawn outside the timing; its cost per timestep is the mean over them.
- vrcurve: ``estimate`` for the whole curve (T timesteps) in each precision of --precisions, after a warm-up:
           wall time from the samples on the CPU to the curve back on the CPU (the transfer, the Gram matrix,
           the noise and its projections included), the median of --repeats runs, and the peak GPU memory.
           Its cost per timestep is that whole time over T; the ratio is the direct one's over it.
- check:   S_t and V(t) of vrcurve in float32 against the direct one at the direct one's timesteps (same
           noise: both draw it on the card with ``source_noise``), and the KS distance and logit-normal m
           difference of each precision's density against float64 on the card.
- large:   --large M,K,d (default 4096,64,16384) in each precision of --large-precisions, once each.
- profile: with --profile, torch.profiler's kernel time per block of the large setting, per precision.
- cli:     with --cli, the whole ``vrcurve estimate --device cuda`` command, end to end, on a .npy of the
           samples of each setting of --cli-settings (M,K,d;...).

    python benchmarks/bench_gpu.py                           # the issue-4 GPU targets, a few minutes on an H200
    python benchmarks/bench_gpu.py --dims 1024 -M 64 -K 50 -T 100 --large 256,16,4096 --repeats 1   # quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import density_difference, direct, engine_for, grid_indices, make_data  # noqa: E402

from vrcurve import estimator as est  # noqa: E402
from vrcurve.engine.backends.pytorch import PyTorchBackend  # noqa: E402
from vrcurve.engine.blocks import block_sums, make_chunk  # noqa: E402
from vrcurve.engine.noise import Projector  # noqa: E402
from vrcurve.engine.precision import matmul_precision  # noqa: E402
from vrcurve.schedulers import LinearScheduler  # noqa: E402


def whole_curve(x, K, T, precision, device, repeats=1):
    """The median wall time of ``repeats`` whole estimates, the last curve and the peak GPU memory in MiB."""
    dtype = torch.float64 if precision == "float64" else torch.float32
    prec = "auto" if precision == "float64" else precision
    cuda = device.type == "cuda"
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        curve = est.estimate(x, LinearScheduler(), noise=K, timesteps=T, seed=0, device=device, dtype=dtype,
                             precision=prec)
        times.append(time.perf_counter() - started)  # the curve is on the CPU: the device is done
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else float("nan")
    return statistics.median(times), curve, peak


def setting(args, device, d):
    M, K, T = args.samples, args.noise, args.timesteps
    print(f"d = {d}, M = {M}, K = {K}, T = {T} ({args.data} data)", flush=True)
    x = make_data(args.data, M, d)
    sched = LinearScheduler()
    ks = grid_indices(T, args.direct_timesteps)
    direct(x[:8].to(device), sched, ks[:1], T, 4, 0, float(d), args.direct_chunk)  # warm-up
    sep, tr, work = direct(x.to(device), sched, ks, T, K, 0, float(d), args.direct_chunk)
    per_direct = float(np.mean(work))
    print(f"  direct   float32 {1e3 * per_direct:8.2f} ms per timestep (mean of {len(ks)} timesteps, chunks of "
          f"{args.direct_chunk} queries); {per_direct * T:.1f} s for {T} timesteps", flush=True)
    curves = {}
    for prec in args.precisions.split(","):
        wall, curve, peak = whole_curve(x, K, T, prec, device, args.repeats)
        curves[prec] = curve
        ratio = per_direct / (wall / T)
        print(f"  vrcurve  {curve.precision:7s} {1e3 * wall / T:8.3f} ms per timestep; whole curve {wall:6.2f} s "
              f"(median of {args.repeats}); {ratio:6.1f}x the direct one; peak GPU memory {peak:7.0f} MiB",
              flush=True)
    if "float32" in curves:
        c = curves["float32"]
        S_direct = sep.numpy() / (K * d)
        tr_direct = tr.numpy() / (K * d)
        dS = np.max(np.abs(c.per_source_S[ks] - S_direct) / np.maximum(np.abs(S_direct), 1e-30))
        dV = np.max(np.abs(c.per_source_trcov[ks] - tr_direct).sum(1) / np.abs(tr_direct).sum(1))
        print(f"  check    float32 against direct at its timesteps: S_t per source max rel. diff {dS:.2e}, "
              f"tr Cov (summed over sources) max rel. diff {dV:.2e}")
    if "float64" in curves:
        ref = curves["float64"].variance
        for prec, c in curves.items():
            if prec != "float64":
                ks_dist, dm = density_difference(c.variance, ref)
                print(f"  check    {prec:7s} against float64: KS {ks_dist:.2e}, |dm| {dm:.2e}")


def large(args, device):
    M, K, d = (int(v) for v in args.large.split(","))
    T = args.timesteps
    print(f"large: M = {M}, K = {K}, d = {d}, T = {T} ({args.data} data)", flush=True)
    x = make_data(args.data, M, d)
    curves = {}
    for prec in args.large_precisions.split(","):
        wall, curve, peak = whole_curve(x, K, T, prec, device)
        curves[prec] = curve
        print(f"  vrcurve  {curve.precision:7s} whole curve {wall:6.2f} s; peak GPU memory {peak:7.0f} MiB", flush=True)
    names = list(curves)
    for a, b in zip(names, names[1:]):
        ks_dist, dm = density_difference(curves[a].variance, curves[b].variance)
        print(f"  check    {a} against {b}: KS {ks_dist:.2e}, |dm| {dm:.2e}")


def profile(args, device):
    """Where the time of the large setting's blocks goes on the card: torch.profiler over 20 blocks of one
    chunk (timesteps in (0, 0.9), where no query's posterior has collapsed), in ms per block."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cpu = device.type == "cpu"  # a dry run of the script: operators' CPU time instead of kernels
    activity = ProfilerActivity.CPU if cpu else ProfilerActivity.CUDA
    sync = (lambda _: None) if cpu else torch.cuda.synchronize

    def time_of(e):
        return e.self_cpu_time_total if cpu else e.self_device_time_total

    M, K, d = (int(v) for v in args.large.split(","))
    T = args.timesteps
    x = make_data(args.data, M, d).to(device)
    for prec in args.large_precisions.split(","):
        consts, plan, tb, prec, basis, span = engine_for(x, LinearScheduler(), T, K, float(d), prec)
        with Projector(basis, 0, np.arange(M), float(d), K, plan.sources, span) as project:
            P, bound = project(0, plan.sources)
        chunk = make_chunk(consts, P, 0, bound)
        engine = PyTorchBackend(consts)  # the GPU's backend (the fused kernel is for CPUs)
        engine.allocate(plan.buffer_rows)
        starts = [int(v) for v in np.linspace(0, max(0, min(0.9 * T, T - tb)), 20)]
        with matmul_precision(device, "tf32" if prec == "tf32" else "ieee"):
            for t0 in starts[:5]:
                block_sums(engine, chunk, 0, plan.noise, t0, t0 + tb)
            sync(device)
            with torch_profile(activities=[activity]) as prof:
                for t0 in starts:
                    block_sums(engine, chunk, 0, plan.noise, t0, t0 + tb)
                sync(device)
        # on CUDA the kernels alone (the operators that launch them carry the same device time)
        events = [e for e in prof.key_averages() if time_of(e) > 0 and (cpu or not e.key.startswith("aten::"))]
        events.sort(key=lambda e: -time_of(e))
        total = sum(time_of(e) for e in events) / 1e3 / len(starts)
        print(f"profile {prec}: {total:.3f} ms of {'operators' if cpu else 'kernels'} per block ({tb} timestep(s) x "
              f"{plan.sources * plan.noise} queries x {M} samples; the whole curve has "
              f"{T * M * K // (tb * plan.sources * plan.noise)} blocks)")
        for e in events[:10]:
            print(f"  {time_of(e) / 1e3 / len(starts):7.3f} ms  {e.count / len(starts):4.1f}x  {e.key[:90]}")
        del engine, P, chunk


def cli(args):
    with tempfile.TemporaryDirectory(prefix="vrcurve-bench-gpu-") as tmp:
        for item in args.cli_settings.split(";"):
            M, K, d = (int(v) for v in item.split(","))
            data, out = Path(tmp) / f"x{M}_{d}.npy", Path(tmp) / "vr.safetensors"
            np.save(data, make_data(args.data, M, d).numpy())
            cmd = [sys.executable, "-m", "vrcurve", "estimate", "--data", str(data), "-o", str(out), "--overwrite",
                   "--json", "-M", str(M), "-K", str(K), "-T", str(args.timesteps), "--device", args.device]
            started = time.perf_counter()
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                print(f"cli: vrcurve estimate failed (M={M}, K={K}, d={d})")
                continue
            s = json.loads(proc.stdout)
            print(f"cli: vrcurve estimate --device {args.device}, M = {M}, K = {K}, T = {args.timesteps}, d = {d}: "
                  f"{wall:.2f} s end to end (the process, imports and CUDA start included), elapsed_s "
                  f"{s['elapsed_s']:.2f} s; m = {s['logitnormal_m']:+.4f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dims", default="4096", help="comma-separated data dimensions d")
    ap.add_argument("-M", "--samples", type=int, default=200)
    ap.add_argument("-K", "--noise", type=int, default=500)
    ap.add_argument("-T", "--timesteps", type=int, default=1000)
    ap.add_argument("--precisions", default="float64,float32,tf32,bf16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--direct-timesteps", type=int, default=5)
    ap.add_argument("--direct-chunk", type=int, default=20000, help="queries per chunk of the direct one")
    ap.add_argument("--large", default="4096,64,16384", help="M,K,d of the large setting ('' to skip)")
    ap.add_argument("--large-precisions", default="tf32,bf16")
    ap.add_argument("--data", default="demo", choices=("demo", "gaussian"))
    ap.add_argument("--cli", action="store_true", help="also time the whole vrcurve estimate command")
    ap.add_argument("--profile", action="store_true", help="the large setting's kernels, per block (CUDA only)")
    ap.add_argument("--cli-settings", default="200,500,4096;1000,50,4096", help="M,K,d;... for --cli")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("bench_gpu needs a CUDA device; none is visible.")
        props = torch.cuda.get_device_properties(device)
        print(f"device: {props.name}, compute capability {props.major}.{props.minor}, "
              f"{props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs; torch {torch.__version__}")
    else:  # a dry run of the script itself; TF32 is a CUDA format
        print(f"device: {device} (not a GPU: a dry run of this script, without tf32); torch {torch.__version__}")
        args.precisions, args.large_precisions = (",".join(p for p in v.split(",") if p != "tf32")
                                                  for v in (args.precisions, args.large_precisions))
    est.estimate(make_data("gaussian", 16, 64), LinearScheduler(), noise=4, timesteps=8, device=device)  # CUDA start
    for d in (int(v) for v in args.dims.split(",") if v):
        setting(args, device, d)
    if args.cli:
        cli(args)
    if args.large:
        large(args, device)
    if args.profile and args.large:
        profile(args, device)


if __name__ == "__main__":
    main()
