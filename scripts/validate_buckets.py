#!/usr/bin/env python
"""Resolution buckets on real images: does the curve's logit-normal location move with the sequence length?

    python scripts/validate_buckets.py                      # M = 240, K = 100: a few minutes on 2 cores
    python scripts/validate_buckets.py --samples 600 --noise 200

The embedded demo data (2,000 Fashion-MNIST test images, 28 x 28, in [-1, 1]) is split at random into three
resolution buckets, half at 28 x 28, 30% upsampled to 56 x 56 and 20% to 112 x 112 (bilinear), and written as
per-sample .npy files (1, R, R), the layout of a bucketed latent cache. ``vrcurve estimate`` runs on the mixed
folder with both likelihoods; each bucket's m, its 90% interval and its latent sequence length
L = (R / 2)^2 (patch size 2) are printed as a Markdown table, with the dynamic-shift line fitted to them
(``vrcurve export --to dynamic-shift``). The numbers go to docs/validation/buckets.json.
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
FRACTIONS = (0.5, 0.3, 0.2)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def write_buckets(folder: Path, seed: int = 0) -> dict:
    """The demo images, each at one of RESOLUTIONS (chosen at random with FRACTIONS), one .npy per image."""
    from vrcurve.readers.demo import DemoSource

    demo = DemoSource()
    x = torch.from_numpy(demo.read(np.arange(demo.n)))  # (N, 1, 28, 28) in [-1, 1]
    rng = np.random.default_rng(seed)
    which = rng.choice(len(RESOLUTIONS), size=demo.n, p=FRACTIONS)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(demo.n):
        r = RESOLUTIONS[which[i]]
        img = x[i:i + 1] if r == 28 else torch.nn.functional.interpolate(x[i:i + 1], size=(r, r), mode="bilinear",
                                                                          align_corners=False)
        np.save(folder / f"{i:05d}.npy", img[0].numpy().astype(np.float32))
    return {f"{r}x{r}": int((which == k).sum()) for k, r in enumerate(RESOLUTIONS)}


def vrcurve_cli(*args) -> str:
    p = subprocess.run([sys.executable, "-m", "vrcurve", *map(str, args)], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"vrcurve {' '.join(map(str, args))} failed: {p.stderr.strip()}")
    return p.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=240)
    parser.add_argument("--noise", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "validation" / "buckets.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "mixed"
        counts = write_buckets(folder)
        print(f"buckets written: {counts}", file=sys.stderr)
        for likelihood in ("mean", "sum"):
            art = Path(tmp) / f"buckets-{likelihood}.safetensors"
            summary = json.loads(vrcurve_cli("estimate", "--data", folder, "-o", art, "--overwrite", "-M", args.samples,
                                             "-K", args.noise, "--likelihood", likelihood, "--json"))
            export = json.loads(vrcurve_cli("export", art, "--to", "json"))["dynamic_shift"]
            # a location that no fit range bounds: the logit of each bucket's median t
            vr = vrcurve.load(art)
            for b in summary["buckets"]:
                med = float(vr.bucket(b["shape"]).icdf(0.5))
                b["median_t"], b["logit_median_t"] = med, float(np.log(med / (1 - med)))
            rows.append({"likelihood": likelihood, "pooled_m": summary["logitnormal_m"],
                         "pooled_m_ci90": summary["logitnormal_m_ci90"], "buckets": summary["buckets"],
                         "elapsed_s": summary["elapsed_s"], "precision": summary["precision"],
                         "line": {k: export[k] for k in ("intercept", "slope", "residual", "lengths", "mus")}})
            print(f"{likelihood}: {summary['elapsed_s']:.1f} s", file=sys.stderr)
    result = {"cpu": cpu_model(), "samples": args.samples, "noise": args.noise, "bucket_counts": counts, "runs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"CPU: {result['cpu']}; M = {args.samples}, K = {args.noise}, T = 1000, linear scheduler\n")
    print("| likelihood | bucket | L = (R/2)^2 | images | M_b | m | 90% interval | logit median t | mu = -m | "
          "line a + b L |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in rows:
        line = run["line"]
        for b, L in zip(run["buckets"], line["lengths"]):
            lo, hi = b["logitnormal_m_ci90"]
            fit = line["intercept"] + line["slope"] * L
            print(f"| {run['likelihood']} | {'x'.join(map(str, b['shape']))} | {L} | {b['samples_total']} | "
                  f"{b['samples']} | {b['logitnormal_m']:+.3f} | [{lo:+.3f}, {hi:+.3f}] | {b['logit_median_t']:+.3f} | "
                  f"{-b['logitnormal_m']:+.3f} | "
                  f"{fit:+.3f} |")
        lo, hi = run["pooled_m_ci90"]
        print(f"| {run['likelihood']} | pooled | | 2000 | {args.samples} | {run['pooled_m']:+.3f} | [{lo:+.3f}, {hi:+.3f}] "
              f"| | | a = {line['intercept']:+.4f}, b = {line['slope']:.3g}/token, rms {line['residual']:.3f} |")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
