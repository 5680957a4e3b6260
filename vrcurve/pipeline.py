"""From data on disk to an artifact: read, estimate, make the density, fit, write (SPEC §2-§3)."""

from __future__ import annotations

import datetime as _dt
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from .artifact import write_artifact
from .convergence import ConvergenceReport, bootstrap_m
from .convergence import check_convergence as convergence_check
from .distributed import Ranks
from .density import Density, density_from_curve
from .devices import resolve_devices
from .errors import VRCurveError
from .estimator import Curve, estimate
from .fit import LogitNormalFit, fit_logitnormal
from .readers import open_source
from .samples import LatentTransform, load_samples
from .schedulers import Scheduler


@dataclass(frozen=True)
class EstimateResult:
    path: Path
    curve: Curve
    density: Density
    fit: LogitNormalFit
    metadata: Dict[str, Any]
    convergence: Optional[ConvergenceReport] = None

    @property
    def peak_t(self) -> float:
        return float(self.curve.t[int(np.argmax(self.density.pdf))])

    def summary(self) -> Dict[str, Any]:
        """What ``vrcurve estimate --json`` prints."""
        m = self.metadata
        return {
            "artifact": str(self.path), "samples": m["samples"], "noise": m["noise"], "timesteps": m["timesteps"],
            "dim": m["dim"], "shape": m["shape"], "scheduler": m["scheduler"], "likelihood": m["likelihood"],
            "form": m["form"], "logitnormal_m": m["logitnormal_m"], "logitnormal_m_grid": m["logitnormal_m_grid"],
            "logitnormal_s": m["logitnormal_s"], "ks": m["ks"], "peak_t": self.peak_t, "elapsed_s": m["elapsed_s"],
            "device": m["device"], "precision": m.get("precision"), "kernel": m.get("kernel"),
            "kernel_choice": m.get("kernel_choice"),
            **{k: m[k] for k in ("logitnormal_m_ci90", "convergence") if k in m},
        }


def _describe(devices: List[torch.device], ranks: Optional[Ranks]) -> str:
    names = [str(d) if d.type == "cpu" else f"{d} ({torch.cuda.get_device_name(d)})" for d in devices]
    text = ", ".join(names)
    return text if ranks is None else f"{text} x {ranks.world_size} ranks"


@contextmanager
def _step(ranks: Optional[Ranks]):
    """Local work that every rank of a distributed run must agree succeeded (nothing to agree on alone)."""
    if ranks is None:
        yield
    else:
        with ranks.step():
            yield


def run_estimate(
    data: str,
    out: Path,
    scheduler: Scheduler,
    *,
    key: Optional[str] = None,
    samples: Optional[int] = 200,
    noise: int = 500,
    timesteps: int = 1000,
    seed: int = 0,
    likelihood: str = "mean",
    form: str = "covariance",
    normalization: str = "global",
    device: str = "cpu",
    chunk_size: Optional[int] = None,
    table_size: int = 4096,
    fit_scale: bool = False,
    overwrite: bool = False,
    progress: Optional[Callable[[int, int], None]] = None,
    moments: Optional[str] = None,
    moments_kind: str = "auto",
    scaling_factor: float = 1.0,
    shift_factor: float = 0.0,
    resolution: Optional[int] = None,
    skip_bad: bool = False,
    precision: str = "auto",
    bootstrap: int = 200,
    check_convergence: bool = False,
    ranks: Optional[Ranks] = None,
) -> EstimateResult:
    """Run the whole estimate and write the artifact to ``out`` (atomically; nothing on failure).

    ``data``, ``key``, ``resolution`` and ``skip_bad`` go to ``open_source``; ``moments``, ``moments_kind``,
    ``scaling_factor`` and ``shift_factor`` say how stored rows become latents (``LatentTransform``).
    ``bootstrap`` replicates give a 90% interval for m (0: none); ``check_convergence`` also estimates the
    curve on nested subsets M/4 and M/2 of the samples with the same noise (``vrcurve.convergence``).
    ``device`` is what ``resolve_devices`` reads. With ``ranks`` (a torchrun process, ``vrcurve.distributed``)
    every rank reads the same sample and estimates its share of the sources; only rank 0 writes.
    """
    started = time.perf_counter()
    out = Path(out)
    writer = ranks is None or ranks.rank == 0
    with _step(ranks):  # every rank reads the data: a path missing on one node fails the whole run
        if writer and out.exists() and not overwrite:
            raise VRCurveError(f"{out} already exists; pass --overwrite to replace it or choose another --out.")
        if bootstrap < 0:
            raise VRCurveError(f"--bootstrap must be 0 (off) or a positive number of replicates, got {bootstrap}.")
        if timesteps < 2 or table_size < 2:
            raise VRCurveError(f"--timesteps and the table size must be at least 2, got {timesteps} and {table_size}.")
        devices = resolve_devices(device)
        transform = LatentTransform(moments=moments, moments_kind=moments_kind, scaling_factor=scaling_factor,
                                    shift_factor=shift_factor)
        source = open_source(data, key=key, resolution=resolution, skip_bad=skip_bad)
        chosen = load_samples(source, samples, seed, normalization, transform)
        x = torch.from_numpy(chosen.x)
    settings = dict(scheduler=scheduler, noise=noise, timesteps=timesteps, seed=seed, likelihood=likelihood, form=form,
                    chunk_size=chunk_size, device=devices, precision=precision, ranks=ranks)
    curve = estimate(x, source_ids=chosen.indices, progress=progress, **settings)
    density = density_from_curve(curve.variance, table_size)
    fit = fit_logitnormal(density.cdf, fit_scale=fit_scale)
    # the bootstrap is the same on every rank: only the one that writes computes it
    interval = bootstrap_m(curve, fit.m_continuous, replicates=bootstrap, seed=seed) if bootstrap and writer else None
    convergence = None
    if check_convergence:
        convergence = convergence_check(
            curve, density.cdf, fit.m_continuous,
            lambda pos: estimate(x[pos], source_ids=chosen.indices[pos], **settings), seed,
        )
    elapsed = time.perf_counter() - started
    metadata = {
        "time_convention": "t0_noise",
        "scheduler": scheduler.describe(),
        "likelihood": likelihood,
        "form": form,
        "samples": curve.samples,
        "noise": noise,
        "timesteps": timesteps,
        "dim": curve.dim,
        "shape": list(chosen.x.shape[1:]),
        "seed": seed,
        "normalization": chosen.normalization,
        "data": {
            **source.describe(), "samples_chosen": int(len(chosen.indices)), "fingerprint": chosen.fingerprint,
            "moments": chosen.moments, "skipped": len(chosen.skipped), "skipped_files": list(chosen.skipped_names),
        },
        "logitnormal_m": fit.m,
        "logitnormal_m_grid": fit.m_grid,
        "logitnormal_s": fit.s,
        "ks": fit.ks,
        **({} if interval is None else {
            "logitnormal_m_ci90": [interval.low, interval.high],
            "bootstrap": {"replicates": interval.replicates, "level": interval.level, "m_std": interval.std,
                          "over": "sources", "s": 1.0},
        }),
        **({} if convergence is None else {"convergence": convergence.as_metadata()}),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 3),
        "device": _describe(devices, ranks),
        "precision": curve.precision,
        "kernel": curve.kernel,
        "kernel_choice": curve.kernel_choice,
        "noise_space": curve.noise_space,
    }
    tensors = {
        "t": curve.t, "S": curve.S, "h2": curve.h2, "variance": curve.variance, "pdf": density.pdf,
        "cdf": density.cdf, "icdf": density.icdf, "ks_m": fit.grid, "ks": fit.ks_grid,
        "S_stderr": curve.S_stderr, "variance_stderr": curve.variance_stderr,
    }
    if writer:
        write_artifact(out, tensors, metadata)
    return EstimateResult(path=out, curve=curve, density=density, fit=fit, metadata=metadata, convergence=convergence)
