"""Reading M samples out of a large HDF5 file: peak memory and time (docs/performance.md, "Data reading"; not a test).

Writes an HDF5 file of N latents (default N = 250,000 of 4 x 32 x 32 float32: 4.1 GB, chunked per row,
with an (N,) labels dataset beside it as latent caches have), evicts it from the page cache, then in
fresh child processes measures, side by side:

- read:     ``open_source`` + ``load_samples`` of M = 200 samples (cold cache, then warm);
- estimate: the whole ``vrcurve estimate`` command on the file (small K and T: the estimator is not
            what is measured here), cold cache;
- baseline: a process that only imports what ``vrcurve estimate`` imports (torch, h5py, the CLI);
- naive:    ``f["latents"][:]``, what a script that loads the dataset whole would do (skip: --no-naive).

Peak resident memory is each child's own ``ru_maxrss`` (from ``os.wait4``). Targets: estimate peak RSS
below 1 GB, reading the 200 samples under 5 s.

    python benchmarks/bench_io.py                     # temp dir, file deleted afterwards
    python benchmarks/bench_io.py --path /data/b.h5 --keep
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (4, 32, 32)


def write_file(path: Path, n: int, chunk_rows: int, piece: int = 4096) -> float:
    """N float32 latents of SHAPE in pieces of ``piece`` rows (memory stays ~``piece`` rows); returns seconds."""
    import h5py

    started = time.perf_counter()
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("latents", shape=(n, *SHAPE), dtype="f4", chunks=(chunk_rows, *SHAPE))
        f.create_dataset("labels", data=np.arange(n) % 1000)
        for lo in range(0, n, piece):
            hi = min(n, lo + piece)
            ds[lo:hi] = rng.standard_normal((hi - lo, *SHAPE), dtype=np.float32)
    return time.perf_counter() - started


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache, so that the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run_measured(args) -> tuple:
    """(stdout, wall seconds, peak RSS of this child in MiB), from os.wait4 on the child alone."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}): {' '.join(map(str, args))}\n{stderr}")
    return stdout, wall, usage.ru_maxrss / 1024  # Linux reports KiB


def child_read(path: str, samples: int) -> None:
    """In a child: open the file and load M samples; print the times as JSON."""
    t0 = time.perf_counter()
    from vrcurve.readers import open_source
    from vrcurve.samples import load_samples

    t1 = time.perf_counter()
    source = open_source(path)
    t2 = time.perf_counter()
    chosen = load_samples(source, samples, seed=0)
    t3 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "read_s": t3 - t2, "key": source.name,
                      "n": source.n, "chosen": len(chosen.indices)}))


def child_naive(path: str) -> None:
    """In a child: load the whole dataset, after the same imports as ``child_read``."""
    import h5py

    import vrcurve.readers  # noqa: F401  (same baseline memory as the read child)

    t0 = time.perf_counter()
    with h5py.File(path, "r") as f:
        x = f["latents"][:]
    print(json.dumps({"read_s": time.perf_counter() - t0, "gb": x.nbytes / 1e9}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", type=Path, help="HDF5 file to write (default: in a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the file afterwards (and reuse it if it exists)")
    ap.add_argument("--n", type=int, default=250_000, help="N, latents in the file")
    ap.add_argument("--samples", type=int, default=200, help="M, samples read")
    ap.add_argument("--noise", type=int, default=8, help="K of the estimate run")
    ap.add_argument("--timesteps", type=int, default=50, help="T of the estimate run")
    ap.add_argument("--chunk-rows", type=int, default=1, help="rows per HDF5 chunk")
    ap.add_argument("--no-naive", action="store_true", help="skip loading the dataset whole for comparison")
    ap.add_argument("--child-read", help=argparse.SUPPRESS)
    ap.add_argument("--child-naive", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child_read:
        return child_read(a.child_read, a.samples)
    if a.child_naive:
        return child_naive(a.child_naive)

    tmpdir = None
    if a.path is None:
        tmpdir = Path(tempfile.mkdtemp(prefix="vrcurve-bench-io-"))
        path = tmpdir / "latents.h5"
    else:
        path = a.path
    need = a.n * int(np.prod(SHAPE)) * 4
    try:
        if path.exists() and a.keep:
            print(f"reusing {path}")
        else:
            free = shutil.disk_usage(path.parent).free
            if free < need * 1.1:
                raise SystemExit(f"{path.parent} has {free / 1e9:.1f} GB free; the file needs {need / 1e9:.1f} GB.")
            print(f"writing {path}: N = {a.n:,} latents of {SHAPE} float32, chunks of {a.chunk_rows} row(s) ...", flush=True)
            print(f"  written in {write_file(path, a.n, a.chunk_rows):.1f} s")
        size = path.stat().st_size
        me = [sys.executable, __file__]

        evict(path)
        out, wall, rss = run_measured(me + ["--child-read", str(path), "--samples", str(a.samples)])
        cold = json.loads(out)
        out, _, rss_warm = run_measured(me + ["--child-read", str(path), "--samples", str(a.samples)])
        warm = json.loads(out)

        _, base_wall, base_rss = run_measured([sys.executable, "-c", "import torch, h5py, vrcurve.cli, vrcurve.pipeline"])

        evict(path)
        with tempfile.TemporaryDirectory() as outdir:
            art = Path(outdir) / "vr.safetensors"
            out, est_wall, est_rss = run_measured([
                sys.executable, "-m", "vrcurve", "estimate", "--data", str(path), "-M", str(a.samples),
                "-K", str(a.noise), "-T", str(a.timesteps), "-o", str(art), "--json"])
            summary = json.loads(out)

        naive = None
        if not a.no_naive:
            evict(path)
            out, naive_wall, naive_rss = run_measured(me + ["--child-naive", str(path)])
            naive = (json.loads(out), naive_wall, naive_rss)

        print(f"\nfile: {size / 1e9:.2f} GB ({size / 2**30:.2f} GiB), N = {cold['n']:,}, key detected: {cold['key']}")
        print(f"M = {a.samples} samples (chosen {cold['chosen']}), estimate with K = {a.noise}, T = {a.timesteps}\n")
        print(f"{'what':<44}{'time':>12}{'peak RSS':>14}")
        print(f"{'read 200 samples, cold cache (load_samples)':<44}{cold['read_s']:>11.3f}s{rss:>10.0f} MiB")
        print(f"{'read 200 samples, warm cache':<44}{warm['read_s']:>11.3f}s{rss_warm:>10.0f} MiB")
        print(f"{'  open the file + detect the key (cold)':<44}{cold['open_s']:>11.3f}s")
        print(f"{'vrcurve estimate, whole command, cold cache':<44}{est_wall:>11.2f}s{est_rss:>10.0f} MiB")
        print(f"{'  baseline: import torch, h5py, vrcurve.cli':<44}{base_wall:>11.2f}s{base_rss:>10.0f} MiB")
        if naive is not None:
            info, naive_wall, naive_rss = naive
            label = 'naive f["latents"][:], cold cache'
            print(f"{label:<44}{info['read_s']:>11.2f}s{naive_rss:>10.0f} MiB")
            print(f"\nnaive / vrcurve, both cold: read time x{info['read_s'] / cold['read_s']:.0f}, "
                  f"peak RSS x{naive_rss / rss:.1f} (same imports in both children)")
        ok_rss, ok_read = est_rss < 1024, cold["read_s"] < 5.0
        print(f"\ntargets: peak RSS < 1 GB: {'yes' if ok_rss else 'NO'} ({est_rss:.0f} MiB); "
              f"reading 200 samples < 5 s: {'yes' if ok_read else 'NO'} ({cold['read_s']:.3f} s)")
        print(f"estimate elapsed_s (artifact) {summary['elapsed_s']:.2f}, logit-normal m {summary['logitnormal_m']:.3f}")
    finally:
        if not a.keep:
            path.unlink(missing_ok=True)
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)


if __name__ == "__main__":
    main()
