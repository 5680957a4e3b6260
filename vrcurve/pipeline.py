"""From data on disk to an artifact: read, estimate, make the density, fit, write (docs/estimator.md; the artifact: docs/integration.md, "The artifact")."""

from __future__ import annotations

import datetime as _dt
import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from .artifact import bucket_tensors, check_destination, write_artifact
from .buckets import MIN_BUCKET, allocate, shape_text, small_buckets
from .convergence import (
    ConvergenceReport,
    bootstrap_m,
    bootstrap_m_pooled,
    check_convergence_pooled,
    pooled_variance,
    require_samples,
    subset_progress,
)
from .convergence import check_convergence as convergence_check
from .density import DEFAULT_UNIFORM_MIX, Density, check_uniform_mix, density_from_curve
from .devices import resolve_devices
from .distributed import Ranks
from .errors import VRCurveError
from .estimator import Curve, check_memory, estimate
from .fit import LogitNormalFit, fit_logitnormal
from .progress import Reporter, within
from .readers import open_source
from .samples import MOMENTS, LatentTransform, Samples, load_buckets, load_samples
from .schedulers import Scheduler


@dataclass(frozen=True)
class EstimateResult:
    path: Path
    curve: Curve
    density: Density
    fit: LogitNormalFit
    metadata: Dict[str, Any]
    convergence: Optional[ConvergenceReport] = None
    buckets: Tuple["BucketResult", ...] = ()

    @property
    def peak_t(self) -> float:
        return float(self.curve.t[int(np.argmax(self.density.pdf))])

    def summary(self) -> Dict[str, Any]:
        """What ``vrcurve estimate --json`` prints."""
        m = self.metadata
        return {
            "artifact": str(self.path), "samples": m["samples"], "noise": m["noise"], "timesteps": m["timesteps"],
            "dim": m["dim"], "shape": m["shape"], "scheduler": m["scheduler"], "likelihood": m["likelihood"],
            "form": m["form"], "uniform_mix": m["uniform_mix"], "logitnormal_m": m["logitnormal_m"], "logitnormal_m_grid": m["logitnormal_m_grid"],
            "logitnormal_s": m["logitnormal_s"], "ks": m["ks"], "peak_t": self.peak_t, "elapsed_s": m["elapsed_s"],
            "device": m["device"], "precision": m.get("precision"), "kernel": m.get("kernel"),
            "kernel_choice": m.get("kernel_choice"), "data": self.data_read(),
            **{k: m[k] for k in ("logitnormal_m_ci90", "convergence", "buckets", "buckets_dropped") if k in m},
        }

    def data_read(self) -> Dict[str, Any]:
        """What was read: the path, the key, how many samples the data holds and how many were used, and the
        files skipped as undecodable (``--skip-bad``)."""
        d = self.metadata["data"]
        return {k: d[k] for k in ("path", "key", "format", "samples_total", "samples_chosen", "skipped",
                                  "skipped_files") if k in d}


def _describe(devices: List[torch.device], ranks: Optional[Ranks]) -> str:
    names = [str(d) if d.type == "cpu" else f"{d} ({torch.cuda.get_device_name(d)})" for d in devices]
    text = ", ".join(names)
    return text if ranks is None else f"{text} x {ranks.world_size} ranks"


def _data_metadata(source, chosen: List[Samples], vae: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The artifact's ``data``: the source, the samples chosen (of every bucket), and with a VAE how its
    latents were made (``vae``: the sample mode and where each factor came from, merged into the source's)."""
    data = {
        **source.describe(), "samples_chosen": int(sum(len(ch.indices) for ch in chosen)),
        "fingerprint": chosen[0].fingerprint if len(chosen) == 1 else _pooled_fingerprint(chosen),
        "moments": chosen[0].moments, "skipped": int(sum(len(ch.skipped) for ch in chosen)),
        "skipped_files": [n for ch in chosen for n in ch.skipped_names][:5],
    }
    if vae is not None:
        # The factors applied are normalization.scaling_factor / shift_factor; this says where they came from.
        data["vae"] = {**data["vae"], **vae}
    return data


def _metadata(curve: Curve, fit: LogitNormalFit, interval, convergence: Optional[ConvergenceReport],
              settings: Dict[str, Any], *, shape, normalization: Dict[str, Any], data: Dict[str, Any],
              uniform_mix: float, started: float, bootstrap_over: str, **extra: Any) -> Dict[str, Any]:
    """The artifact's metadata: how the curve was made, the fit and its interval, and how the run went;
    ``extra`` (the buckets) goes in before the run's own entries."""
    return {
        "time_convention": "t0_noise",
        "scheduler": settings["scheduler"].describe(),
        "likelihood": curve.likelihood,
        "form": curve.form,
        "uniform_mix": float(uniform_mix),
        "samples": curve.samples,
        "noise": curve.noise,
        "timesteps": settings["timesteps"],
        "dim": curve.dim,
        "shape": list(shape),
        "seed": settings["seed"],
        "normalization": normalization,
        "data": data,
        "logitnormal_m": fit.m,
        "logitnormal_m_grid": fit.m_grid,
        "logitnormal_s": fit.s,
        "ks": fit.ks,
        **({} if interval is None else {
            "logitnormal_m_ci90": [interval.low, interval.high],
            "bootstrap": {"replicates": interval.replicates, "level": interval.level, "m_std": interval.std,
                          "over": bootstrap_over, "s": 1.0},
        }),
        **({} if convergence is None else {"convergence": convergence.as_metadata()}),
        **extra,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(time.perf_counter() - started, 3),
        "device": _describe(settings["device"], settings["ranks"]),
        "precision": curve.precision,
        "kernel": curve.kernel,
        "kernel_choice": curve.kernel_choice,
        "noise_space": curve.noise_space,
    }


def _tensors(curve: Curve, density: Density, fit: LogitNormalFit) -> Dict[str, np.ndarray]:
    """The artifact's tensors of one curve, its density and its fit (``artifact.TENSORS``)."""
    return {
        "t": curve.t, "S": curve.S, "h2": curve.h2, "variance": curve.variance, "pdf": density.pdf,
        "cdf": density.cdf, "icdf": density.icdf, "ks_m": fit.grid, "ks": fit.ks_grid,
        "S_stderr": curve.S_stderr, "variance_stderr": curve.variance_stderr,
    }


def _pooled_fingerprint(chosen: List[Samples]) -> str:
    """One fingerprint of the samples of every bucket, in bucket order."""
    return hashlib.sha256("".join(ch.fingerprint for ch in chosen).encode()).hexdigest()[:16]


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
    progress: Optional[Reporter] = None,
    moments: Optional[str] = None,
    moments_kind: str = "auto",
    scaling_factor: Optional[float] = None,
    shift_factor: Optional[float] = None,
    vae: Optional[str] = None,
    vae_sample: str = "sample",
    vae_dtype: str = "float32",
    vae_batch_size: int = 4,
    resolution: Optional[int] = None,
    skip_bad: bool = False,
    precision: str = "auto",
    bootstrap: int = 200,
    check_convergence: bool = False,
    ranks: Optional[Ranks] = None,
    min_bucket: int = MIN_BUCKET,
    drop_small_buckets: bool = False,
    uniform_mix: float = DEFAULT_UNIFORM_MIX,
    notify: Optional[Callable[[str], None]] = None,
) -> EstimateResult:
    """Run the whole estimate and write the artifact to ``out`` (atomically; nothing on failure).

    ``data``, ``key``, ``resolution`` and ``skip_bad`` go to ``open_source``; ``moments``, ``moments_kind``,
    ``scaling_factor`` and ``shift_factor`` say how stored rows become latents (``LatentTransform``; the
    factors default to 1 and 0). With ``vae`` (a diffusers AutoencoderKL folder or cached repo id) the data
    must be images, which are encoded on the first of the devices, ``vae_batch_size`` at a time in
    ``vae_dtype``; ``vae_sample`` takes the posterior mean or a seeded draw (``vrcurve.vae``), the factors
    default to the VAE config's.
    ``bootstrap`` replicates give a 90% interval for m (0: none); ``check_convergence`` also estimates the
    curve on nested subsets M/4 and M/2 of the samples with the same noise (``vrcurve.convergence``).
    ``device`` is what ``resolve_devices`` reads. With ``ranks`` (a torchrun process, ``vrcurve.distributed``)
    every rank reads the same sample and estimates its share of the sources; only rank 0 writes.

    Data of several sample shapes (``Source.groups``) is estimated per resolution bucket (``_run_buckets``):
    M is split over the buckets (``vrcurve.buckets.allocate``, at least ``min_bucket`` each; a smaller bucket
    is refused, or left out with ``drop_small_buckets``), and the artifact's main density is their mixture.
    Data of one shape gives the same artifact as it always did.
    ``uniform_mix`` is the density floor (``density_from_curve``), recorded in the metadata.
    ``progress`` (``vrcurve.progress``) is told of each phase with its counts: reading (or encoding), estimating
    (per bucket), bootstrap, convergence; under torchrun, give it to the rank that writes only.
    ``notify`` receives the source's notes (``Source.notes``, e.g. that latent caches were read rather than the
    images beside them) as soon as the data is opened, on the rank that writes.
    """
    started = time.perf_counter()
    out = Path(out)
    writer = ranks is None or ranks.rank == 0
    with _step(ranks):  # every rank reads the data: a path missing on one node fails the whole run
        if writer:  # before the work: a path that cannot take the artifact fails now, not in an hour
            check_destination(out, overwrite=overwrite)
        check_uniform_mix(uniform_mix)
        if bootstrap < 0:
            raise VRCurveError(f"--bootstrap must be 0 (off) or a positive number of replicates, got {bootstrap}.")
        if timesteps < 2 or table_size < 2:
            raise VRCurveError(f"--timesteps and the table size must be at least 2, got {timesteps} and {table_size}.")
        if min_bucket < 2:
            raise VRCurveError(f"--min-bucket must be at least 2 (the estimate of a bucket needs 2 samples), "
                               f"got {min_bucket}.")
        devices = resolve_devices(device)
        if vae is not None and moments is not None:
            raise VRCurveError("--moments reads VAE moments stored in the data, but --vae computes them from images; "
                               "drop --moments (--vae-sample mean|sample chooses the mean or a draw).")
        if vae is not None and vae_sample not in MOMENTS:
            raise VRCurveError(f"unknown --vae-sample {vae_sample!r}; choose {' or '.join(MOMENTS)}.")
        # Checks the flags before the data is read (and a VAE loaded); the VAE's factors replace the defaults.
        transform = LatentTransform(moments=moments if vae is None else vae_sample, moments_kind=moments_kind,
                                    scaling_factor=1.0 if scaling_factor is None else scaling_factor,
                                    shift_factor=0.0 if shift_factor is None else shift_factor)
        source = open_source(data, key=key, resolution=resolution, skip_bad=skip_bad)
        if notify is not None and writer:
            for note in source.notes:
                notify(note)
        if vae is not None:
            from .vae import encode_source

            source = encode_source(source, vae, devices[0], dtype=vae_dtype, batch_size=vae_batch_size)
            transform = replace(
                transform, moments_kind="logvar",  # latent_dist.parameters: mean, then log-variance
                scaling_factor=source.located.scaling_factor if scaling_factor is None else scaling_factor,
                shift_factor=source.located.shift_factor if shift_factor is None else shift_factor,
            )
        groups = source.groups()
        if len(groups) > 1:
            plan = _plan_buckets(source, groups, samples, min_bucket, drop_small_buckets)
            chosen_b, pooled_stats = load_buckets(source, plan.groups, plan.allocation, seed, normalization, transform,
                                                  progress=progress)
        else:
            chosen_b = [load_samples(source, samples, seed, normalization, transform, progress=progress)]
        for ch in chosen_b:
            if check_convergence:
                require_samples(len(ch.indices))
            # the bootstrap's (T, replicates) tables come on top of the estimate's own
            check_memory(ch.x.shape[0], int(np.prod(ch.x.shape[1:])), noise, timesteps, devices,
                         per_timestep_extra=32 * bootstrap)
    vae_info = None if vae is None else {
        "sample": vae_sample, "scaling_factor_from": "config" if scaling_factor is None else "--scaling-factor",
        "shift_factor_from": "config" if shift_factor is None else "--shift-factor"}
    if ranks is not None:  # every rank must estimate the same thing from the same data
        ranks.same_everywhere({
            "--samples": samples, "--noise": noise, "--timesteps": timesteps, "--seed": seed,
            "--likelihood": likelihood, "--form": form, "--normalize": normalization, "--scheduler": scheduler.describe(),
            "--precision": precision, "--table-size": table_size, "--fit-scale": fit_scale, "--bootstrap": bootstrap,
            "--check-convergence": check_convergence, "--moments": moments, "--moments-kind": moments_kind,
            "--scaling-factor": scaling_factor, "--shift-factor": shift_factor, "--key": key,
            "--resolution": resolution, "--skip-bad": skip_bad, "--uniform-mix": uniform_mix,
            "--min-bucket": min_bucket, "--drop-small-buckets": drop_small_buckets,
            # the VAE by its config and weights, not its path: nodes may mount it in different places
            "--vae": None if vae is None else {k: source.describe()["vae"][k] for k in ("config_sha256", "weights_sha256")},
            "--vae-sample": vae_sample if vae else None, "--vae-dtype": vae_dtype if vae else None,
            "data": _pooled_fingerprint(chosen_b),
        })
    settings = dict(scheduler=scheduler, noise=noise, timesteps=timesteps, seed=seed, likelihood=likelihood, form=form,
                    chunk_size=chunk_size, device=devices, precision=precision, ranks=ranks)
    if len(groups) > 1:
        return _run_buckets(
            source, plan, chosen_b, pooled_stats, out, settings, vae_info, started=started, writer=writer, progress=progress,
            table_size=table_size, uniform_mix=uniform_mix, fit_scale=fit_scale, overwrite=overwrite,
            bootstrap=bootstrap, check_convergence=check_convergence, devices=devices, ranks=ranks,
        )
    chosen = chosen_b[0]
    x = torch.from_numpy(chosen.x)
    curve = estimate(x, source_ids=chosen.indices, progress=progress, **settings)
    density = density_from_curve(curve.variance, table_size, uniform_mix=uniform_mix)
    fit = fit_logitnormal(density.cdf, fit_scale=fit_scale)
    # the bootstrap is the same on every rank: only the one that writes computes it
    interval = (bootstrap_m(curve, fit.m_continuous, replicates=bootstrap, seed=seed, uniform_mix=uniform_mix,
                            progress=progress)
                if bootstrap and writer else None)
    convergence = None
    if check_convergence:
        convergence = convergence_check(
            curve, density.cdf, fit.m_continuous,
            lambda pos: estimate(x[pos], source_ids=chosen.indices[pos], **settings,
                                 progress=subset_progress(progress, len(pos), len(x))),
            seed, uniform_mix=uniform_mix,
        )
    metadata = _metadata(
        curve, fit, interval, convergence, settings, shape=chosen.x.shape[1:], normalization=chosen.normalization,
        data=_data_metadata(source, [chosen], vae_info), uniform_mix=uniform_mix, started=started,
        bootstrap_over="sources")
    if writer:
        write_artifact(out, _tensors(curve, density, fit), metadata, overwrite=overwrite)
    return EstimateResult(path=out, curve=curve, density=density, fit=fit, metadata=metadata, convergence=convergence)


@dataclass(frozen=True)
class BucketPlan:
    """The resolution buckets to estimate, in ``groups`` order (largest first), and the samples of each.

    Attributes:
        groups: {shape: indices} of the buckets kept.
        allocation: (B,) M_b per bucket, or None each for --samples all.
        dropped: {shape: count} of the buckets left out (``drop_small_buckets``).
        min_bucket: the minimum per bucket that was applied.
    """

    groups: Dict[Tuple[int, ...], np.ndarray]
    allocation: List[Optional[int]]
    dropped: Dict[Tuple[int, ...], int]
    min_bucket: int


@dataclass(frozen=True)
class BucketResult:
    """One resolution bucket's estimate: its shape, count and share of the data, and its own curve and fit."""

    shape: Tuple[int, ...]
    count: int
    share: float
    curve: Curve
    density: Density
    fit: LogitNormalFit
    metadata: Dict[str, Any]


def _plan_buckets(source, groups, samples: Optional[int], min_bucket: int, drop_small: bool) -> BucketPlan:
    """Check the buckets against ``min_bucket`` and split M over them (docs/data.md, "Resolution buckets")."""
    shapes = list(groups)
    counts = [len(idx) for idx in groups.values()]
    small = small_buckets(counts, min_bucket)
    if small and not drop_small:
        b = small[0]
        more = f" (and {len(small) - 1} more bucket{'s' if len(small) > 2 else ''} that small)" if len(small) > 1 else ""
        raise VRCurveError(
            f"the resolution bucket {shape_text(shapes[b])} of {source.name} holds {counts[b]} samples{more}, fewer than "
            f"the minimum of {min_bucket} per bucket; pass --drop-small-buckets to leave such buckets out, "
            f"--min-bucket {max(2, counts[b])} to estimate it from that few, or remove those files"
            + (" (or --resolution R to bring every image to one size)." if source.format == "images" else ".")
        )
    dropped = {shapes[b]: counts[b] for b in small}
    kept = {s: idx for s, idx in groups.items() if s not in dropped}
    if not kept:
        raise VRCurveError(f"every resolution bucket of {source.name} holds fewer than --min-bucket {min_bucket} samples "
                           f"(the largest: {max(counts)}); lower --min-bucket.")
    allocation = allocate([len(i) for i in kept.values()], samples, min_bucket)
    return BucketPlan(groups=kept, allocation=[None] * len(kept) if samples is None else allocation, dropped=dropped,
                      min_bucket=min_bucket)


def _bucket_progress(progress: Optional[Reporter], b: int, B: int, shape: Tuple[int, ...]) -> Optional[Reporter]:
    """``progress`` for the work on bucket b of B (from 0), of latents of ``shape``: it names the bucket."""
    return within(progress, f"bucket {b + 1}/{B} {shape_text(shape)}")


def _run_buckets(source, plan: BucketPlan, chosen: List[Samples], pooled_stats: Dict[str, Any], out: Path,
                 settings: Dict[str, Any], vae_info: Optional[Dict[str, Any]], *, started: float, writer: bool,
                 progress, table_size: int, uniform_mix: float, fit_scale: bool, overwrite: bool, bootstrap: int, check_convergence: bool, devices, ranks) -> EstimateResult:
    """Estimate each bucket with the same estimator and settings, pool their densities, fit and write."""
    seed = settings["seed"]
    counts = np.array([len(idx) for idx in plan.groups.values()], dtype=np.float64)
    shares = counts / counts.sum()
    B = len(chosen)
    results: List[BucketResult] = []
    for b, ch in enumerate(chosen):
        shape = tuple(ch.x.shape[1:])  # the latents' shape (after --moments or --vae), as the trainer sees it
        report = _bucket_progress(progress, b, B, shape)
        curve = estimate(torch.from_numpy(ch.x), source_ids=ch.indices, progress=report, **settings)
        density = density_from_curve(curve.variance, table_size, uniform_mix=uniform_mix)
        fit = fit_logitnormal(density.cdf, fit_scale=fit_scale)
        interval = (bootstrap_m(curve, fit.m_continuous, replicates=bootstrap, seed=seed, uniform_mix=uniform_mix,
                                progress=report)
                    if bootstrap and writer else None)
        meta = {
            "shape": list(shape), "dim": curve.dim, "samples_total": int(counts[b]), "share": float(shares[b]),
            "samples": curve.samples, "fingerprint": ch.fingerprint, "skipped": len(ch.skipped),
            "logitnormal_m": fit.m, "logitnormal_m_grid": fit.m_grid, "logitnormal_s": fit.s, "ks": fit.ks,
            "peak_t": float(curve.t[int(np.argmax(density.pdf))]),
            **({} if interval is None else {"logitnormal_m_ci90": [interval.low, interval.high]}),
        }
        results.append(BucketResult(shape=tuple(shape), count=int(counts[b]), share=float(shares[b]), curve=curve,
                                    density=density, fit=fit, metadata=meta))
    curves = [r.curve for r in results]
    first = curves[0]
    pooled_V = pooled_variance([c.variance for c in curves], shares)
    # the floor of the mixture is the mixture of the buckets' floors: (1 - l) sum_b w_b p_b + l = sum_b w_b ((1 - l) p_b + l)
    density = density_from_curve(pooled_V, table_size, uniform_mix=uniform_mix)
    fit = fit_logitnormal(density.cdf, fit_scale=fit_scale)
    # The pooled curve is a mixture of the buckets' curves, each divided by its mean Z_b: standard errors of
    # independent buckets add in quadrature with those weights.
    Z = [np.maximum(c.variance, 0).mean() for c in curves]
    S = sum(w * c.S for w, c in zip(shares, curves))
    S_se = np.sqrt(sum((w * c.S_stderr) ** 2 for w, c in zip(shares, curves)))
    V_se = np.sqrt(sum((w / z * c.variance_stderr) ** 2 for w, z, c in zip(shares, Z, curves)))
    interval = (bootstrap_m_pooled(curves, shares, fit.m_continuous, replicates=bootstrap, seed=seed,
                                   uniform_mix=uniform_mix, progress=within(progress, "all buckets"))
                if bootstrap and writer else None)
    convergence = None
    if check_convergence:
        def estimate_subsets(positions):
            report = subset_progress(progress, sum(len(p) for p in positions), sum(len(ch.x) for ch in chosen))
            sub = [estimate(torch.from_numpy(ch.x[pos]), source_ids=ch.indices[pos], **settings,
                            progress=_bucket_progress(report, b, B, ch.x.shape[1:])).variance
                   for b, (ch, pos) in enumerate(zip(chosen, positions))]
            return pooled_variance(sub, shares)

        convergence = check_convergence_pooled([c.samples for c in curves], density.cdf, fit.m_continuous,
                                               estimate_subsets, seed, uniform_mix=uniform_mix)
    pooled_curve = Curve(
        t=first.t, S=S, trcov=sum(w * c.trcov for w, c in zip(shares, curves)), h2=first.h2, variance=pooled_V,
        S_stderr=S_se, variance_stderr=V_se, samples=int(sum(c.samples for c in curves)), noise=first.noise,
        dim=first.dim, likelihood=first.likelihood, form=first.form, precision=first.precision, kernel=first.kernel,
        kernel_choice=first.kernel_choice, noise_space=first.noise_space,
    )
    metadata = _metadata(
        pooled_curve, fit, interval, convergence, settings, shape=results[0].shape, normalization=pooled_stats,
        # the first file's shape would say nothing here: the largest bucket's, and every bucket's, as stored
        data={**_data_metadata(source, chosen, vae_info), "shape": list(next(iter(plan.groups))),
              "shapes": [list(s) for s in plan.groups]},
        uniform_mix=uniform_mix, started=started, bootstrap_over="sources within each bucket",
        buckets=[r.metadata for r in results], min_bucket=plan.min_bucket,
        **({"buckets_dropped": [{"shape": list(s), "samples_total": int(n)} for s, n in plan.dropped.items()]}
           if plan.dropped else {}))
    tensors = _tensors(pooled_curve, density, fit)
    for b, r in enumerate(results):
        tensors.update(bucket_tensors(b, r.curve, r.density))
    if writer:
        write_artifact(out, tensors, metadata, overwrite=overwrite)
    return EstimateResult(path=out, curve=pooled_curve, density=density, fit=fit, metadata=metadata,
                          convergence=convergence, buckets=tuple(results))
