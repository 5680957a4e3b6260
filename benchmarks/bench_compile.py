"""Would torch.compile pay for the engine's PyTorch blocks? Side by side in one run (not a test).

The PyTorch backend runs a block as about ten operations, each a pass over the block's R x M numbers.
torch.compile (inductor) can fuse the element-wise ones. Measured here on blocks of the real problem
(M = 200, K = 500, d = 4096 by default, the engine's own block shape):

- eager:    ``vrcurve.engine.backends.pytorch.PyTorchBackend.block``, as ``estimate`` runs it;
- compiled: the opt-in backend ``vrcurve.engine.backends.compiled`` (``VRCURVE_KERNEL=compiled``): the block as
            one function under ``torch.compile`` (logits, exp2, row sums, the bf16 weights, one product with
            the triangle of 2 D, the quadratic forms and the per-source sums), its time per block after
            compiling, and the compile time itself (its first block); also that function uncompiled;
- fused:    the C kernel (vrcurve/_fused.c), where it runs;

with the per-source sums of each against the eager ones. A tier pays where (eager - compiled) per block
times the blocks of a run exceeds the compile time.

    python benchmarks/bench_compile.py                 # bf16 products, d = 4096
    python benchmarks/bench_compile.py --precision float32
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import OtherLoad, cpu_model, engine_for, make_data  # noqa: E402

from vrcurve.engine import backends  # noqa: E402
from vrcurve.engine.backends import compiled as compiled_module  # noqa: E402
from vrcurve.engine.blocks import make_chunk  # noqa: E402
from vrcurve.engine.noise import Projector  # noqa: E402
from vrcurve.schedulers import LinearScheduler  # noqa: E402


def best(f, repeats):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        f()
        times.append(time.perf_counter() - started)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-d", type=int, default=4096)
    ap.add_argument("-M", "--samples", type=int, default=200)
    ap.add_argument("-K", "--noise", type=int, default=500)
    ap.add_argument("-T", "--timesteps", type=int, default=1000)
    ap.add_argument("--precision", default="bf16", choices=("bf16", "float32"))
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    M, K, T, d = args.samples, args.noise, args.timesteps, args.d
    print(f"machine: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    x = make_data("demo", M, d)
    consts, plan, tb, prec, basis, span = engine_for(x, LinearScheduler(), T, K, float(d), args.precision)
    with Projector(basis, 0, np.arange(M), float(d), K, plan.sources, span) as project:
        P, bound = project(0, plan.sources)
    chunk = make_chunk(consts, P, 0, bound)
    kk, t0 = plan.noise, T // 3
    rows = chunk.P.shape[0] * kk * tb
    blocks_per_run = T * M * K // rows
    print(f"M = {M}, K = {K}, T = {T}, d = {d}, {prec} products: blocks of {tb} timesteps x "
          f"{chunk.P.shape[0] * kk} queries ({rows:,} rows), {blocks_per_run} blocks per run")

    results = {}
    with OtherLoad() as load:
        eager = backends.make("pytorch", consts)
        eager.allocate(plan.buffer_rows)
        ref = eager.block(chunk, 0, kk, t0, t0 + tb)
        results["eager"] = best(lambda: eager.block(chunk, 0, kk, t0, t0 + tb), args.repeats)

        tier = backends.make("compiled", consts)
        started = time.perf_counter()
        got = tier.block(chunk, 0, kk, t0, t0 + tb)
        compile_s = time.perf_counter() - started
        results["compiled"] = best(lambda: tier.block(chunk, 0, kk, t0, t0 + tb), args.repeats)
        # the same function without torch.compile: what the compiler's fusion is worth
        tier.fn = compiled_module._block
        results["uncompiled function"] = best(lambda: tier.block(chunk, 0, kk, t0, t0 + tb), args.repeats)
        try:
            fused = backends.make("fused", consts)
            fused.allocate(plan.buffer_rows)
            results["fused"] = best(lambda: fused.block(chunk, 0, kk, t0, t0 + tb), args.repeats)
        except Exception as exc:  # not this CPU, or not bf16
            print(f"fused: cannot run here ({exc})")
    diff = float(((got - ref).abs() / ref.abs().clamp_min(1e-30)).max())
    print(f"other processes took {load.share:.0%} of the CPUs meanwhile")
    for name, seconds in results.items():
        print(f"  {name:20s} {seconds * 1e3:8.2f} ms per block   {seconds * blocks_per_run:7.1f} s per run of T = {T}")
    print(f"  compile time        {compile_s:8.1f} s; compiled sums against eager: max relative difference {diff:.1e}")
    saved = (results["eager"] - results["compiled"]) * blocks_per_run
    print(f"a compiled tier would save {saved:.1f} s per run against eager, for {compile_s:.1f} s of compiling")


if __name__ == "__main__":
    main()
