#!/usr/bin/env python
"""Resolution buckets on real images: does the curve's logit-normal location move with the sequence length?

    python scripts/validate_buckets.py                      # M = 150, K = 100: about 5 minutes on 2 cores
    python scripts/validate_buckets.py --samples 600 --noise 200

The embedded demo data (2,000 Fashion-MNIST test images, 28 x 28, in [-1, 1]) at three resolutions, 28 x 28
and upsampled (bilinear) to 56 x 56 and 112 x 112, written as per-sample .npy files (1, R, R), the layout of a
bucketed latent cache, in three ways:

- ``uneven``: each image at one resolution, drawn at random with probabilities 0.5, 0.3, 0.2 (the
  proportional allocation gives the buckets different M_b);
- ``even``: the same with 1/3 each (equal M_b, so that bucket differences are not differences of M);
- ``paired``: every image at every resolution; each bucket chooses the same positions with the seed, so the
  three buckets hold the same images and differ only in resolution.

``vrcurve estimate`` runs on each folder with both likelihoods; each bucket's m, its 90% interval, the logit of
its median t (a location that no fit range bounds) and its latent sequence length L = (R / 2)^2 (patch size 2)
are printed as a Markdown table, with the dynamic-shift line (``vrcurve export --to dynamic-shift``). The
numbers go to docs/validation/buckets.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import vrcurve

ROOT = Path(__file__).resolve().parent.parent
RESOLUTIONS = (28, 56, 112)
# Two splits of the images over the resolutions: the uneven one exercises the proportional allocation; the even
# one gives every bucket the same M_b, so that differences between buckets are not differences of M (m moves
# with M: docs/validation.md, "How sure the numbers are, and what M does").
SPLITS = {"uneven": (0.5, 0.3, 0.2), "even": (1 / 3, 1 / 3, 1 / 3), "paired": None}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def resize(x: torch.Tensor, r: int) -> np.ndarray:
    """(1, 1, 28, 28) -> (1, r, r) float32, bilinear."""
    y = x if r == x.shape[-1] else torch.nn.functional.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)
    return y[0].numpy().astype(np.float32)


def write_buckets(folder: Path, fractions, seed: int = 0) -> dict:
    """The demo images as one .npy per sample: each at one of RESOLUTIONS (drawn with ``fractions``), or with
    ``fractions`` None every image at every resolution, named so that image i is sample i of each bucket."""
    from vrcurve.readers.demo import DemoSource

    demo = DemoSource()
    x = torch.from_numpy(demo.read(np.arange(demo.n)))  # (N, 1, 28, 28) in [-1, 1]
    folder.mkdir(parents=True, exist_ok=True)
    if fractions is None:
        for r in RESOLUTIONS:
            for i in range(demo.n):
                np.save(folder / f"{r}_{i:05d}.npy", resize(x[i:i + 1], r))
        return {f"{r}x{r}": demo.n for r in RESOLUTIONS}
    which = np.random.default_rng(seed).choice(len(RESOLUTIONS), size=demo.n, p=fractions)
    for i in range(demo.n):
        np.save(folder / f"{i:05d}.npy", resize(x[i:i + 1], RESOLUTIONS[which[i]]))
    return {f"{r}x{r}": int((which == k).sum()) for k, r in enumerate(RESOLUTIONS)}


def vrcurve_cli(*args) -> str:
    p = subprocess.run([sys.executable, "-m", "vrcurve", *map(str, args)], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"vrcurve {' '.join(map(str, args))} failed: {p.stderr.strip()}")
    return p.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=150)
    parser.add_argument("--noise", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "validation" / "buckets.json")
    args = parser.parse_args()
    rows = []
    counts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for split, fractions in SPLITS.items():
            folder = Path(tmp) / split
            counts[split] = write_buckets(folder, fractions)
            print(f"{split}: buckets written: {counts[split]}", file=sys.stderr)
            for likelihood in ("mean", "sum"):
                art = Path(tmp) / f"{split}-{likelihood}.safetensors"
                summary = json.loads(vrcurve_cli("estimate", "--data", folder, "-o", art, "--overwrite", "-M",
                                                 args.samples, "-K", args.noise, "--likelihood", likelihood, "--json"))
                export = json.loads(vrcurve_cli("export", art, "--to", "json"))["dynamic_shift"]
                # a location that no fit range bounds: the logit of each bucket's median t
                vr = vrcurve.load(art)
                for b in summary["buckets"]:
                    med = float(vr.bucket(b["shape"]).icdf(0.5))
                    b["median_t"], b["logit_median_t"] = med, float(np.log(med / (1 - med)))
                rows.append({"split": split, "likelihood": likelihood, "pooled_m": summary["logitnormal_m"],
                             "pooled_m_ci90": summary["logitnormal_m_ci90"], "buckets": summary["buckets"],
                             "elapsed_s": summary["elapsed_s"], "precision": summary["precision"],
                             "line": {k: export[k] for k in ("intercept", "slope", "residual", "lengths", "mus")}})
                print(f"{split} {likelihood}: {summary['elapsed_s']:.1f} s", file=sys.stderr)
    result = {"cpu": cpu_model(), "samples": args.samples, "noise": args.noise, "bucket_counts": counts, "runs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"CPU: {result['cpu']}; M = {args.samples}, K = {args.noise}, T = 1000, linear scheduler\n")
    print("| split | likelihood | bucket | L = (R/2)^2 | images | M_b | m | 90% interval | logit median t | mu = -m | "
          "line a + b L |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run in rows:
        line = run["line"]
        for b, L in zip(run["buckets"], line["lengths"]):
            lo, hi = b["logitnormal_m_ci90"]
            fit = line["intercept"] + line["slope"] * L
            shape = "x".join(map(str, b["shape"]))
            print(f"| {run['split']} | {run['likelihood']} | {shape} | {L} | {b['samples_total']} | {b['samples']} | "
                  f"{b['logitnormal_m']:+.3f} | [{lo:+.3f}, {hi:+.3f}] | {b['logit_median_t']:+.3f} | "
                  f"{-b['logitnormal_m']:+.3f} | {fit:+.3f} |")
        lo, hi = run["pooled_m_ci90"]
        total = sum(b["samples_total"] for b in run["buckets"])
        print(f"| {run['split']} | {run['likelihood']} | pooled | | {total} | {args.samples} | {run['pooled_m']:+.3f} | "
              f"[{lo:+.3f}, {hi:+.3f}] | | | a = {line['intercept']:+.4f}, b = {line['slope']:.3g}/token, "
              f"rms {line['residual']:.3f} |")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
