"""Wall time of `vrcurve estimate` on one process and on two torchrun processes (gloo), side by side.

    python benchmarks/bench_scaling.py                      # M=1000, K=50, d=4096, T=20 and T=2
    python benchmarks/bench_scaling.py --timesteps 1000     # the full grid (long on a small CPU)

Every configuration runs the same command on the same random .npy, in alternating order, `--repeats` times;
the best wall time of each is printed, with the ratios. On a machine with C cores the fair comparison is one
process with C threads against P processes with C / P threads each (OMP_NUM_THREADS), which is what this
runs. Two grid sizes separate the fixed cost (reading, G, the O(d) noise projections) from the cost per
timestep: fixed ~ t(T_small) - T_small * per_step, per_step = (t(T) - t(T_small)) / (T - T_small).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def run(config: str, data: Path, out: Path, M: int, K: int, T: int, cores: int) -> float:
    args = ["estimate", "-d", str(data), "-o", str(out), "-M", str(M), "-K", str(K), "-T", str(T),
            "--bootstrap", "0", "--overwrite", "--json"]
    env = dict(os.environ)
    if config == "1 process":
        env["OMP_NUM_THREADS"] = str(cores)
        cmd = [sys.executable, "-m", "vrcurve", *args]
    elif config == "1 process, 2 devices":  # --device cpu,cpu: two threads, each with its sources
        env["OMP_NUM_THREADS"] = str(cores)
        cmd = [sys.executable, "-m", "vrcurve", *args, "--device", "cpu,cpu"]
    else:
        procs = int(config.split()[0])
        env["OMP_NUM_THREADS"] = str(max(1, cores // procs))
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", "--standalone",
               "-m", "vrcurve", *args]
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{config} failed:\n{done.stderr}")
    json.loads(done.stdout.strip().splitlines()[-1])
    return wall


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", "-M", type=int, default=1000)
    p.add_argument("--noise", "-K", type=int, default=50)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--timesteps", "-T", type=int, default=20)
    p.add_argument("--small-timesteps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cores", type=int, default=os.cpu_count())
    p.add_argument("--configs", default="1 process;2 processes", help="'1 process', '1 process, 2 devices', "
                   "'N processes', separated by ';'")
    a = p.parse_args()
    configs = a.configs.split(";")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.npy"
        np.save(data, np.random.default_rng(0).standard_normal((a.samples, a.dim), dtype=np.float32))
        print(f"M={a.samples} K={a.noise} d={a.dim}, {a.cores} cores, load {os.getloadavg()[0]:.2f}", flush=True)
        best = {}
        for r in range(a.repeats):
            for T in (a.small_timesteps, a.timesteps):
                for config in configs if r % 2 == 0 else configs[::-1]:
                    wall = run(config, data, Path(tmp) / "vr.safetensors", a.samples, a.noise, T, a.cores)
                    best[config, T] = min(best.get((config, T), wall), wall)
                    print(f"  {config:>30}  T={T:<5} {wall:8.2f} s", flush=True)
    base = configs[0]
    print(f"best of {a.repeats} (load now {os.getloadavg()[0]:.2f}):")
    for config in configs:
        t_small, t_big = best[config, a.small_timesteps], best[config, a.timesteps]
        per_step = (t_big - t_small) / (a.timesteps - a.small_timesteps)
        fixed = t_small - a.small_timesteps * per_step
        print(f"  {config:>30}: T={a.timesteps} {t_big:7.2f} s ({best[base, a.timesteps] / t_big:.2f}x), "
              f"fixed {fixed:6.2f} s, per timestep {per_step:.3f} s "
              f"-> T=1000 about {fixed + 1000 * per_step:7.0f} s")


if __name__ == "__main__":
    main()
