"""`vrcurve estimate` on a 10,000-file trainer latent cache folder: wall time and peak RSS (not a test).

Writes, under /tmp by default, N per-image latent caches of 16 x 128 x 128 (a 1024 x 1024 image through a
16-channel VAE, as for SD3 / Flux), in two variants:

- float32: kohya sd-scripts' layout, ``img<i>_1024x1024_flux.npz`` holding float32 ``latents`` beside
  ``original_size`` and ``crop_ltrb`` (np.savez, uncompressed; kohya always stores float32), 1 MiB a file;
- bf16:    SimpleTuner's VAE cache layout, ``img<i>.pt`` holding a bare bfloat16 tensor (torch.save), 0.5 MiB
           a file (a .npz cannot hold bfloat16).

Then, for each variant, with the files evicted from the page cache before each step, it measures in fresh
child processes:

- discovery + reading: ``open_source`` (listing the folder and, for .npz, every file's headers) and
  ``load_samples`` of the M chosen files;
- the whole ``vrcurve estimate`` command with its defaults (M = 200, K = 500, T = 1000 unless given),
  wall time and peak RSS (``ru_maxrss`` of that child, from ``os.wait4``);
- a baseline process that only imports what the command imports.

"the rest" is the command's wall time minus the discovery + reading of the first child and the baseline's
import time: the estimate itself, the fit, the bootstrap and writing the artifact.

    python benchmarks/bench_caches.py                       # both variants, 10,000 files, deleted afterwards
    python benchmarks/bench_caches.py --files 2000 --variants float32 -K 50 -T 100 --keep
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_io import run_measured  # one measured child, as bench_io.py runs them

SHAPE = (16, 128, 128)


def write_kohya(folder: Path, n: int) -> float:
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    for i in range(n):
        z = rng.standard_normal(SHAPE, dtype=np.float32)
        np.savez(folder / f"img{i:05d}_1024x1024_flux.npz", latents=z, original_size=np.array([1024, 1024]),
                 crop_ltrb=np.array([0, 0, 1024, 1024]))
    return time.perf_counter() - started


def write_simpletuner(folder: Path, n: int) -> float:
    import torch

    started = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        torch.save(torch.randn(SHAPE, generator=gen).to(torch.bfloat16), folder / f"img{i:05d}.pt")
    return time.perf_counter() - started


VARIANTS = {"float32": write_kohya, "bf16": write_simpletuner}


def evict(folder: Path) -> None:
    """Drop every file's pages from the page cache, so that the next read comes from the disk."""
    for entry in os.scandir(folder):
        fd = os.open(entry.path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def child_read(path: str, samples: int) -> None:
    """In a child: open the folder and load M samples; print the times as JSON."""
    from vrcurve.readers import open_source
    from vrcurve.samples import load_samples

    t0 = time.perf_counter()
    source = open_source(path)
    t1 = time.perf_counter()
    chosen = load_samples(source, samples, seed=0)
    t2 = time.perf_counter()
    print(json.dumps({"open_s": t1 - t0, "read_s": t2 - t1, "n": source.n, "format": source.format,
                      "chosen": len(chosen.indices)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/vrcurve-bench-caches"), help="where the folders go")
    ap.add_argument("--files", type=int, default=10_000, help="N, cache files per variant")
    ap.add_argument("--variants", default="float32,bf16", help="comma-separated: float32 (kohya .npz), bf16 (.pt)")
    ap.add_argument("--samples", "-M", type=int, default=200, help="M of the estimate (its default)")
    ap.add_argument("--noise", "-K", type=int, default=500, help="K of the estimate (its default)")
    ap.add_argument("--timesteps", "-T", type=int, default=1000, help="T of the estimate (its default)")
    ap.add_argument("--keep", action="store_true", help="keep the folders afterwards (and reuse complete ones)")
    ap.add_argument("--child-read", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child_read:
        return child_read(a.child_read, a.samples)

    variants = [v.strip() for v in a.variants.split(",")]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {sorted(VARIANTS)}")
    me = [sys.executable, __file__]
    rows = []
    try:
        for variant in variants:
            folder = a.dir / variant
            if a.keep and folder.is_dir() and len(os.listdir(folder)) == a.files:
                print(f"reusing {folder}")
            else:
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                need = a.files * int(np.prod(SHAPE)) * (4 if variant == "float32" else 2)
                if shutil.disk_usage(folder).free < need * 1.1:
                    raise SystemExit(f"{folder} needs {need / 2**30:.1f} GiB free.")
                print(f"writing {a.files:,} {variant} caches of {SHAPE} to {folder} ...", flush=True)
                print(f"  written in {VARIANTS[variant](folder, a.files):.1f} s", flush=True)
            size = sum(e.stat().st_size for e in os.scandir(folder))

            evict(folder)
            out, read_wall, read_rss = run_measured(me + ["--child-read", str(folder), "--samples", str(a.samples)])
            read = json.loads(out)
            _, base_wall, base_rss = run_measured([sys.executable, "-c", "import torch, vrcurve.cli, vrcurve.pipeline"])
            evict(folder)
            with tempfile.TemporaryDirectory() as outdir:
                out, wall, rss = run_measured([
                    sys.executable, "-m", "vrcurve", "estimate", "--data", str(folder), "-M", str(a.samples),
                    "-K", str(a.noise), "-T", str(a.timesteps), "-o", str(Path(outdir) / "vr.safetensors"), "--json"])
            summary = json.loads(out)
            rows.append((variant, size, read, read_rss, base_wall, base_rss, wall, rss, summary))
    finally:
        if not a.keep:
            for variant in variants:
                shutil.rmtree(a.dir / variant, ignore_errors=True)

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"\nCPU: {cpu}, {os.cpu_count()} cores; M = {a.samples}, K = {a.noise}, T = {a.timesteps}; "
          f"page cache evicted before each step")
    for variant, size, read, read_rss, base_wall, base_rss, wall, rss, s in rows:
        rest = wall - read["open_s"] - read["read_s"] - base_wall
        print(f"\n{variant}: {read['n']:,} files ({read['format']}), {size / 2**30:.2f} GiB, d = {s['dim']:,}, "
              f"precision {s['precision']}, kernel {s['kernel']}")
        print(f"  {'open (discovery, headers)':<40}{read['open_s']:>9.2f} s")
        print(f"  {'read the M chosen files':<40}{read['read_s']:>9.2f} s   (that child's peak RSS {read_rss:.0f} MiB)")
        print(f"  {'imports (baseline process)':<40}{base_wall:>9.2f} s   (peak RSS {base_rss:.0f} MiB)")
        print(f"  {'the rest (estimate, fit, bootstrap, write)':<40}{rest:>9.2f} s")
        print(f"  {'vrcurve estimate, whole command':<40}{wall:>9.2f} s   peak RSS {rss:.0f} MiB; elapsed_s "
              f"{s['elapsed_s']:.2f}, logit-normal m {s['logitnormal_m']:.4f}")


if __name__ == "__main__":
    main()
