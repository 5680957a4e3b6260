"""From data on disk to an artifact: read, estimate, make the density, fit, write (docs/estimator.md; the artifact: docs/integration.md, "The artifact")."""

from __future__ import annotations

import datetime as _dt
import hashlib
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from .artifact import bucket_tensors, check_destination, write_artifact
from .buckets import allocate, shape_text, small_buckets
from .convergence import (
    BootstrapInterval,
    ConvergenceReport,
    bootstrap_m,
    bootstrap_m_pooled,
    check_convergence_pooled,
    pooled_variance,
    require_samples,
    subset_progress,
)
from .convergence import check_convergence as convergence_check
from .density import Density, density_from_curve
from .devices import DeviceSpec, local_device, resolve_devices
from .distributed import Ranks
from .errors import VRCurveError
from .estimator import Curve, check_memory, estimate_curve
from .fit import LogitNormalFit, fit_logitnormal
from .meta import T0_NOISE, ArtifactMeta, BucketMeta, DroppedBucket
from .options import DataOptions, EstimateOptions, OutputOptions, flags
from .progress import Reporter, within
from .readers import open_source
from .samples import Samples, load_buckets, load_samples


@dataclass(frozen=True)
class EstimateResult:
    """What ``run_estimate`` made: the artifact's path, the (pooled) curve, density and fit, the metadata
    written, and the bootstrap interval of m, the convergence check and the resolution buckets when there are
    any."""

    path: Path
    curve: Curve
    density: Density
    fit: LogitNormalFit
    metadata: ArtifactMeta
    interval: Optional[BootstrapInterval] = None
    convergence: Optional[ConvergenceReport] = None
    buckets: Tuple["BucketResult", ...] = ()

    @property
    def peak_t(self) -> float:
        return _peak_t(self.curve, self.density)

    def summary(self) -> Dict[str, Any]:
        """What ``vrcurve estimate --json`` prints."""
        m = self.metadata
        return {
            "artifact": str(self.path), "samples": m.samples, "noise": m.noise, "timesteps": m.timesteps,
            "dim": m.dim, "shape": list(m.shape), "scheduler": m.scheduler, "likelihood": m.likelihood,
            "form": m.form, "uniform_mix": m.uniform_mix, "logitnormal_m": m.logitnormal_m,
            "logitnormal_m_grid": m.logitnormal_m_grid, "logitnormal_s": m.logitnormal_s, "ks": m.ks,
            "peak_t": self.peak_t, "elapsed_s": m.elapsed_s, "device": m.device, "precision": m.precision,
            "kernel": m.kernel, "kernel_choice": m.kernel_choice, "data": self.data_read(),
            # the optional entries as stored (JSON values)
            **{k: m[k] for k in ("logitnormal_m_ci90", "convergence", "buckets", "buckets_dropped") if k in m},
        }

    def data_read(self) -> Dict[str, Any]:
        """What was read: the path, the key, how many samples the data holds and how many were used, and the
        files skipped as undecodable (``--skip-bad``)."""
        d = self.metadata.data or {}
        return {k: d[k] for k in ("path", "key", "format", "samples_total", "samples_chosen", "skipped",
                                  "skipped_files") if k in d}


def _peak_t(curve: Curve, density: Density) -> float:
    """The timestep where the density is highest (the midpoint of its first highest bin)."""
    return float(curve.t[int(np.argmax(density.pdf))])


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
              run: "_Run", *, shape, normalization: Dict[str, Any], data: Dict[str, Any], started: float,
              bootstrap_over: str, **buckets: Any) -> ArtifactMeta:
    """The artifact's metadata: how the curve was made, the fit and its interval, and how the run went;
    ``buckets``: the ``buckets``, ``min_bucket`` and ``buckets_dropped`` of data of several shapes."""
    return ArtifactMeta(
        time_convention=T0_NOISE,
        scheduler=run.options.curve.scheduler.describe(),
        likelihood=curve.likelihood,
        form=curve.form,
        uniform_mix=run.options.uniform_mix,
        samples=curve.samples,
        noise=curve.noise,
        timesteps=run.options.curve.timesteps,
        dim=curve.dim,
        shape=tuple(shape),
        seed=run.options.curve.seed,
        normalization=normalization,
        data=data,
        logitnormal_m=fit.m,
        logitnormal_m_grid=fit.m_grid,
        logitnormal_s=fit.s,
        ks=fit.ks,
        logitnormal_m_ci90=None if interval is None else (interval.low, interval.high),
        bootstrap=None if interval is None else {
            "replicates": interval.replicates, "level": interval.level, "m_std": interval.std, "over": bootstrap_over,
            "s": 1.0},
        convergence=None if convergence is None else convergence.as_metadata(),
        **buckets,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        elapsed_s=round(time.perf_counter() - started, 3),
        device=_describe(run.devices, run.ranks),
        precision=curve.precision,
        kernel=curve.kernel,
        kernel_choice=curve.kernel_choice,
        noise_space=curve.noise_space,
    )


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


def run_estimate(
    data: DataOptions,
    options: EstimateOptions,
    output: OutputOptions,
    *,
    device: DeviceSpec = "cpu",
    ranks: Optional[Ranks] = None,
    progress: Optional[Reporter] = None,
    notify: Optional[Callable[[str], None]] = None,
) -> EstimateResult:
    """Run the whole estimate and write the artifact to ``output.path`` (atomically; nothing on failure).

    What to read and how it becomes latents is ``data``; how to estimate, ``options``; each group was checked
    when it was made (``vrcurve.options``). With a VAE (``data.vae``) the data must be images, encoded on the
    first of the devices, and the rescaling factors default to the VAE config's. ``options.bootstrap``
    replicates give a 90% interval for m; ``options.check_convergence`` also estimates the curve on nested
    subsets M/4 and M/2 of the samples with the same noise (``vrcurve.convergence``).

    Where it runs and who listens: ``device`` is what ``resolve_devices`` reads. With ``ranks`` (a torchrun
    process, ``vrcurve.distributed``) every rank reads the same sample and estimates its share of the sources;
    only rank 0 writes. ``progress`` (``vrcurve.progress``) is told of each phase with its counts: reading (or
    encoding), estimating (per bucket), bootstrap, convergence; under torchrun, give it to the rank that writes
    only. ``notify`` receives the source's notes (``Source.notes``, e.g. that latent caches were read rather
    than the images beside them) as soon as the data is opened, on the rank that writes.

    Data of several sample shapes (``Source.groups``) is estimated per resolution bucket (``_run_buckets``):
    M is split over the buckets (``vrcurve.buckets.allocate``, at least ``data.min_bucket`` each; a smaller
    bucket is refused, or left out with ``data.drop_small_buckets``), and the artifact's main density is
    their mixture. Data of one shape gives the same artifact as it always did.
    """
    started = time.perf_counter()
    writer = ranks is None or ranks.rank == 0
    # every rank reads the data, and all agree that it went well: a path missing on one node fails the whole run
    with nullcontext() if ranks is None else ranks.step():
        if writer:  # before the work: a path that cannot take the artifact fails now, not in an hour
            check_destination(output.path, overwrite=output.overwrite)
        # under torchrun, --device cuda is this rank's GPU
        devices = resolve_devices(device if ranks is None else local_device(device, ranks.local_rank))
        source, plan, chosen, pooled_stats = _read(data, options.curve.seed, devices[0], progress,
                                                   notify if writer else None)
        _check_work(chosen, options, devices)
    if ranks is not None:  # every rank must estimate the same thing from the same data
        ranks.same_everywhere(_agreement(data, options, source, chosen))
    run = _Run(options=options, devices=devices, ranks=ranks, writer=writer, progress=progress)
    vae_info = None if data.vae is None else {
        "sample": data.vae.sample,
        "scaling_factor_from": "config" if data.scaling_factor is None else "--scaling-factor",
        "shift_factor_from": "config" if data.shift_factor is None else "--shift-factor"}
    if plan is not None:
        return _run_buckets(source, plan, chosen, pooled_stats, output, run, vae_info, started=started)
    return _run_single(source, chosen[0], output, run, vae_info, started=started)


def _read(data: DataOptions, seed: int, encode_on: torch.device, progress: Optional[Reporter],
          notify: Optional[Callable[[str], None]]):
    """Open the data (encoding it with ``data.vae`` on ``encode_on``), plan its resolution buckets if it has
    several, and read the samples chosen with ``seed`` as latents; ``notify`` receives the source's notes.

    Returns:
        (the source; the ``BucketPlan``, or None for data of one shape; one ``Samples`` per bucket, or the one;
        the buckets' pooled normalisation statistics, or None).
    """
    source = open_source(data.path, key=data.key, resolution=data.resolution, skip_bad=data.skip_bad)
    for note in source.notes if notify is not None else ():
        notify(note)
    transform = data.transform()
    if data.vae is not None:
        from .vae import encode_source

        source = encode_source(source, data.vae.path, encode_on, dtype=data.vae.dtype, batch_size=data.vae.batch_size)
        transform = data.transform(source.located.scaling_factor, source.located.shift_factor)
    groups = source.groups()
    if len(groups) == 1:
        return source, None, [load_samples(source, data.samples, seed, data.normalization, transform,
                                           progress=progress)], None
    plan = _plan_buckets(source, groups, data)
    chosen, pooled_stats = load_buckets(source, plan.groups, plan.allocation, seed, data.normalization, transform,
                                        progress=progress)
    return source, plan, chosen, pooled_stats


def _check_work(chosen: List[Samples], options: EstimateOptions, devices: List[torch.device]) -> None:
    """Refuse, before any work, a convergence check on too few samples or an estimate that cannot fit in memory."""
    for ch in chosen:
        if options.check_convergence:
            require_samples(len(ch.indices))
        # the bootstrap's (T, replicates) tables come on top of the estimate's own
        check_memory(ch.x.shape[0], int(np.prod(ch.x.shape[1:])), options.curve.noise, options.curve.timesteps,
                     devices, per_timestep_extra=32 * options.bootstrap)


def _run_single(source, ch: Samples, output: OutputOptions, run: "_Run", vae_info: Optional[Dict[str, Any]], *,
                started: float) -> EstimateResult:
    """Estimate data of one sample shape: the curve, its density and fit, their uncertainty; write."""
    options, seed = run.options, run.options.curve.seed
    x = torch.from_numpy(ch.x)
    curve = run.estimate(x, ch.indices, run.progress)
    density, fit = run.density_and_fit(curve.variance)
    # the bootstrap is the same on every rank: only the one that writes computes it
    interval = (bootstrap_m(curve, fit.m_continuous, replicates=options.bootstrap, seed=seed,
                            uniform_mix=options.uniform_mix, progress=run.progress) if run.bootstraps else None)
    convergence = None
    if options.check_convergence:
        convergence = convergence_check(
            curve, density.cdf, fit.m_continuous,
            lambda pos: run.estimate(x[pos], ch.indices[pos], subset_progress(run.progress, len(pos), len(x))), seed,
            uniform_mix=options.uniform_mix,
        )
    metadata = _metadata(
        curve, fit, interval, convergence, run, shape=ch.x.shape[1:], normalization=ch.normalization,
        data=_data_metadata(source, [ch], vae_info), started=started, bootstrap_over="sources")
    if run.writer:
        write_artifact(output.path, _tensors(curve, density, fit), metadata, overwrite=output.overwrite)
    return EstimateResult(path=output.path, curve=curve, density=density, fit=fit, metadata=metadata,
                          interval=interval, convergence=convergence)


# Options that leave the result unchanged, which ranks may differ in: where the data is (nodes mount it in
# different places; the fingerprint of what was read is compared instead), the chunk size, the VAE's batch.
_RANKS_MAY_DIFFER = ("--data", "--chunk-size", "--vae-batch-size")


def _agreement(data: DataOptions, options: EstimateOptions, source, chosen: List[Samples]) -> Dict[str, Any]:
    """What every rank of a distributed run must have in common: the options that change the result, by flag,
    and the fingerprint of the samples read."""
    settings = {k: v for k, v in {**flags(data), **flags(options)}.items() if k not in _RANKS_MAY_DIFFER}
    if data.vae is not None:  # the VAE by its config and weights, not its path
        settings["--vae"] = {k: source.describe()["vae"][k] for k in ("config_sha256", "weights_sha256")}
    return {**settings, "data": _pooled_fingerprint(chosen)}


@dataclass(frozen=True)
class _Run:
    """One run's estimate settings and where it runs: what every curve of the run (a bucket's, a subset's) is
    estimated and turned into a density with."""

    options: EstimateOptions
    devices: List[torch.device]
    ranks: Optional[Ranks]
    writer: bool
    progress: Optional[Reporter]

    @property
    def bootstraps(self) -> bool:
        """Whether this process computes the bootstrap (the same on every rank: only the writer does)."""
        return bool(self.options.bootstrap) and self.writer

    def estimate(self, x: torch.Tensor, indices: np.ndarray, progress=None) -> Curve:
        return estimate_curve(x, self.options.curve, device=self.devices, source_ids=indices, progress=progress,
                              ranks=self.ranks)

    def density_and_fit(self, variance: np.ndarray) -> Tuple[Density, LogitNormalFit]:
        density = density_from_curve(variance, self.options.table_size, uniform_mix=self.options.uniform_mix)
        return density, fit_logitnormal(density.cdf, fit_scale=self.options.fit_scale)


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
    """One resolution bucket's estimate: its own curve, density and fit, and its entry in the artifact's
    ``buckets`` (which holds its shape, count and share of the data)."""

    curve: Curve
    density: Density
    fit: LogitNormalFit
    metadata: BucketMeta

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.metadata.shape)

    @property
    def count(self) -> int:
        return self.metadata.samples_total

    @property
    def share(self) -> float:
        return self.metadata.share


def _plan_buckets(source, groups, data: DataOptions) -> BucketPlan:
    """Check the buckets against ``data.min_bucket`` and split ``data.samples`` over them (docs/data.md,
    "Resolution buckets")."""
    samples, min_bucket = data.samples, data.min_bucket
    shapes = list(groups)
    counts = [len(idx) for idx in groups.values()]
    small = small_buckets(counts, min_bucket)
    if small and not data.drop_small_buckets:
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


def _run_buckets(source, plan: BucketPlan, chosen: List[Samples], pooled_stats: Dict[str, Any], output: OutputOptions,
                 run: _Run, vae_info: Optional[Dict[str, Any]], *, started: float) -> EstimateResult:
    """Estimate each bucket with the same estimator and settings, pool their densities, fit and write."""
    seed, uniform_mix, replicates = run.options.curve.seed, run.options.uniform_mix, run.options.bootstrap
    counts = np.array([len(idx) for idx in plan.groups.values()], dtype=np.float64)
    shares = counts / counts.sum()
    B = len(chosen)
    results: List[BucketResult] = []
    for b, ch in enumerate(chosen):
        shape = tuple(ch.x.shape[1:])  # the latents' shape (after --moments or --vae), as the trainer sees it
        report = _bucket_progress(run.progress, b, B, shape)
        curve = run.estimate(torch.from_numpy(ch.x), ch.indices, report)
        density, fit = run.density_and_fit(curve.variance)
        interval = (bootstrap_m(curve, fit.m_continuous, replicates=replicates, seed=seed, uniform_mix=uniform_mix,
                                progress=report)
                    if run.bootstraps else None)
        meta = BucketMeta(
            shape=shape, dim=curve.dim, samples_total=int(counts[b]), share=float(shares[b]), samples=curve.samples,
            fingerprint=ch.fingerprint, skipped=len(ch.skipped), logitnormal_m=fit.m, logitnormal_m_grid=fit.m_grid,
            logitnormal_s=fit.s, ks=fit.ks, peak_t=_peak_t(curve, density),
            logitnormal_m_ci90=None if interval is None else (interval.low, interval.high),
        )
        results.append(BucketResult(curve=curve, density=density, fit=fit, metadata=meta))
    curves = [r.curve for r in results]
    first = curves[0]
    pooled_V = pooled_variance([c.variance for c in curves], shares)
    # the floor of the mixture is the mixture of the buckets' floors: (1 - l) sum_b w_b p_b + l = sum_b w_b ((1 - l) p_b + l)
    density, fit = run.density_and_fit(pooled_V)
    # The pooled curve is a mixture of the buckets' curves, each divided by its mean Z_b: standard errors of
    # independent buckets add in quadrature with those weights.
    Z = [np.maximum(c.variance, 0).mean() for c in curves]
    S = sum(w * c.S for w, c in zip(shares, curves))
    S_se = np.sqrt(sum((w * c.S_stderr) ** 2 for w, c in zip(shares, curves)))
    V_se = np.sqrt(sum((w / z * c.variance_stderr) ** 2 for w, z, c in zip(shares, Z, curves)))
    interval = (bootstrap_m_pooled(curves, shares, fit.m_continuous, replicates=replicates, seed=seed,
                                   uniform_mix=uniform_mix, progress=within(run.progress, "all buckets"))
                if run.bootstraps else None)
    convergence = None
    if run.options.check_convergence:
        def estimate_subsets(positions):
            report = subset_progress(run.progress, sum(len(p) for p in positions), sum(len(ch.x) for ch in chosen))
            sub = [run.estimate(torch.from_numpy(ch.x[pos]), ch.indices[pos],
                                _bucket_progress(report, b, B, ch.x.shape[1:])).variance
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
        pooled_curve, fit, interval, convergence, run, shape=results[0].shape, normalization=pooled_stats,
        # the first file's shape would say nothing here: the largest bucket's, and every bucket's, as stored
        data={**_data_metadata(source, chosen, vae_info), "shape": list(next(iter(plan.groups))),
              "shapes": [list(s) for s in plan.groups]},
        started=started, bootstrap_over="sources within each bucket",
        buckets=tuple(r.metadata for r in results), min_bucket=plan.min_bucket,
        buckets_dropped=tuple(DroppedBucket(shape=s, samples_total=int(n)) for s, n in plan.dropped.items()) or None)
    tensors = _tensors(pooled_curve, density, fit)
    for b, r in enumerate(results):
        tensors.update(bucket_tensors(b, r.curve, r.density))
    if run.writer:
        write_artifact(output.path, tensors, metadata, overwrite=output.overwrite)
    return EstimateResult(path=output.path, curve=pooled_curve, density=density, fit=fit, metadata=metadata,
                          interval=interval, convergence=convergence, buckets=tuple(results))
