"""The command line: a thin Typer layer over the library (README.md, "The command line").

Results go to stdout (a table, ``--json``, or a bare value with ``--quiet``); progress and errors go to
stderr. Exit status: 0 success, 1 a data or runtime error (one line, no traceback, no output file),
2 a usage error.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any, Dict, List, Optional, Sequence

try:
    import typer
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
except KeyboardInterrupt:  # Ctrl-C while the command line loads: no traceback, as after it has loaded
    sys.stderr.write("interrupted; nothing was written.\n")
    sys.exit(130)

from ._version import __version__
from .errors import VRCurveError
from .meta import BucketMeta, DroppedBucket
from .options import (
    DEFAULT_UNIFORM_MIX,
    MIN_BUCKET,
    Convention,
    ExportTarget,
    Form,
    Likelihood,
    Moments,
    MomentsKind,
    Normalize,
    OptionError,
    Precision,
    VAEDtype,
)


class _NoValueHelp:
    """``--help`` takes no value: no ``<bool>`` after it in the help pages (typer shows a flag's type unless its
    metavar is set, as every flag here sets it)."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class _Command(_NoValueHelp, typer.core.TyperCommand):
    pass


class _Group(_NoValueHelp, typer.core.TyperGroup):
    pass


app = typer.Typer(
    name="vrcurve",
    cls=_Group,
    help="Estimate a variance-reduction timestep density for flow-matching and diffusion training "
    "(t = 0 is noise, t = 1 is data), and read it back.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _user_errors(fn):
    """Turn VRCurveError into one line on stderr and exit status 1 (the only place that does)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        # Warnings (NumPy's RuntimeWarnings, torch's UserWarnings) are held back: after an error the one
        # line says what went wrong, and a warning about the same values before it would only confuse it.
        with warnings.catch_warnings(record=True) as held:
            try:
                result = fn(*args, **kwargs)
            except VRCurveError as exc:
                if getattr(exc, "show", True):  # a rank that failed under torchrun has printed it already
                    _print_error(exc)
                raise typer.Exit(1) from None
            except KeyboardInterrupt:
                err.print("interrupted; nothing was written.")
                raise typer.Exit(130) from None
            except SystemExit as exc:
                from .artifact import Terminated

                if isinstance(exc, Terminated):  # SIGTERM while writing: the temporary file is gone already
                    err.print("terminated; nothing was written.")
                raise
        for w in held:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        return result

    return wrapper


def _file_path(value: str, option: str) -> Path:
    """An output file name as typed: ``newdir/`` names a folder, which ``Path`` would silently turn into a
    file named ``newdir``."""
    if not value or value.endswith(("/", os.sep)):
        raise VRCurveError(f"{option} {value!r} names a folder, not a file; give a file name, e.g. "
                           f"{option} {value or './'}vr.safetensors.")
    return Path(value)


def _print_error(exc: Exception):
    # escape: a message may hold brackets (pip install 'vrcurve[plot]') that are not markup.
    err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False)
    err.file.flush()


def _version(value: bool):
    if value:
        out.print(f"vrcurve {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, metavar="", help="Print the version.")] = False,
):
    pass


def _parse_samples(value: str) -> Optional[int]:
    """-M: a whole number or ``all`` (None); anything else is a usage error (exit 2). ``DataOptions`` checks the
    number's range."""
    if value == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is neither a whole number nor 'all'.",
                                 param_hint="'--samples' / '-M'") from None


def _progress_description(update) -> str:
    """What the bar says it is doing (``vrcurve.progress.Update``): the phase, then which part of the run, e.g.
    ``estimating bucket 2/3 4x64x64`` or ``convergence 50 of 200 samples``."""
    return f"{update.phase} {update.where}" if update.where else update.phase


def _progress_reporter(enabled: bool):
    """A Rich progress bar on stderr, or (None, None) when quiet or stderr is not a terminal.

    The reporter (``vrcurve.progress``) shows one line per phase, started afresh when the phase (or the bucket
    or subset) changes: what it is doing (``_progress_description``), a bar, done/total in the phase's unit
    (timesteps come in fractions while a chunk of queries is in flight), the rate, the time elapsed in the
    phase and its ETA."""
    if not enabled or not sys.stderr.isatty():
        return None, None
    from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.text import Text

    class Count(ProgressColumn):
        def render(self, task):
            return Text("" if task.total is None else f"{task.completed:,.0f}/{task.total:,.0f} {task.fields['unit']}")

    class Rate(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:,.1f}/s" if task.speed else "")

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), Count(), Rate(), TimeElapsedColumn(), TextColumn("eta"),
        TimeRemainingColumn(), console=err, transient=True,
    )
    task = bar.add_task("starting", total=None, unit="")
    shown = [None]

    def report(update):
        key = (update.phase, update.where, update.unit)
        if key != shown[0]:  # a new phase: its own count, rate and ETA from its start
            shown[0] = key
            bar.reset(task, total=update.total, description=_progress_description(update), unit=update.unit)
        bar.update(task, completed=update.done, total=update.total)

    return bar, report


def _beta_help(end: str, vp_default: str, linear_defaults: str) -> str:
    """The help of ``--beta-min``/``--beta-max``: one flag names a different beta in each scheduler family."""
    linear_name = "beta_start" if end == "min" else "beta_end"
    return (f"diffusion (VP): beta_{end}, default {vp_default}; scaled_linear/ddpm_linear: {linear_name}, default "
            f"{linear_defaults}.")


@app.command(cls=_Command)
@_user_errors
def estimate(
    data: Annotated[str, typer.Option(
        "--data", "-d", help="Samples: a .npy, .npz, HDF5 or safetensors file; a folder or glob of safetensors "
        "shards, per-sample .npy files, latent caches (kohya .npz, .pt) or images (png/jpg/webp); or 'demo'.")],
    out_path: Annotated[str, typer.Option("--out", "-o", help="Artifact to write.")] = "vr.safetensors",
    key: Annotated[Optional[str], typer.Option(
        "--key", help="Array, dataset or tensor name in .npz, HDF5, safetensors or .pt files (HDF5 per-sample "
        "layouts: 'group/*' or '*/name'); detected when unambiguous.")] = None,
    scheduler: Annotated[str, typer.Option(
        "--scheduler", "-s", help="linear, cosine, diffusion, scaled_linear (SD 1.x/2.x/SDXL), ddpm_linear, custom, "
        "or module:object (imports and runs that code).")] = "linear",
    shift: Annotated[Optional[float], typer.Option(
        "--shift", help="Timestep shift of the linear scheduler (SD3/Flux).")] = None,
    beta_min: Annotated[Optional[float], typer.Option(
        "--beta-min", help=_beta_help("min", "0.1", "0.00085/0.0001"))] = None,
    beta_max: Annotated[Optional[float], typer.Option(
        "--beta-max", help=_beta_help("max", "20", "0.012/0.02"))] = None,
    custom: Annotated[Optional[str], typer.Option(
        "--custom", help="module:object of a custom scheduler (imports and runs that module's code).")] = None,
    samples: Annotated[str, typer.Option(
        "--samples", "-M", help="M, samples drawn from the data (at least 1, or 'all').")] = "200",
    noise: Annotated[int, typer.Option("--noise", "-K", help="K, noises per sample (at least 1).")] = 500,
    timesteps: Annotated[int, typer.Option("--timesteps", "-T", help="T, timestep bins (at least 2).")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sample choice and of every noise (0 or more).")] = 0,
    likelihood: Annotated[Likelihood, typer.Option(
        "--likelihood", help="mean: tau = d (default); sum: exact posterior.")] = Likelihood.mean,
    form: Annotated[Form, typer.Option(
        "--form", help="covariance: h^2 trCov/d (default); paper: h^2 (1 - S).")] = Form.covariance,
    normalize: Annotated[Normalize, typer.Option("--normalize", help="global, channel or none.")] = Normalize.global_,
    moments: Annotated[Optional[Moments], typer.Option(
        "--moments", help="The data holds VAE moments (mean and std/logvar concatenated on the channel axis): use the "
        "mean, or sample z = mean + std * eps.")] = None,
    moments_kind: Annotated[MomentsKind, typer.Option(
        "--moments-kind", help="Second half of the moments: std, logvar, or auto (logvar if any value is "
        "negative).")] = MomentsKind.auto,
    scaling_factor: Annotated[Optional[float], typer.Option(
        "--scaling-factor", help="The trainer's latent rescaling (z - shift_factor) * scaling_factor, e.g. 0.18215 "
        "for SD 1.x/2.x. Default 1, or the VAE config's with --vae.")] = None,
    shift_factor: Annotated[Optional[float], typer.Option(
        "--shift-factor", help="The trainer's latent offset (diffusers' shift_factor; not the timestep --shift). "
        "Default 0, or the VAE config's with --vae.")] = None,
    vae: Annotated[Optional[str], typer.Option(
        "--vae", help="Encode the image folder with this diffusers AutoencoderKL: a folder (or pipeline folder with "
        "vae/), or a repo id in the local Hugging Face cache; never downloads. Needs the extra: pip install "
        "vrcurve\\[vae].")] = None,
    vae_sample: Annotated[Moments, typer.Option(
        "--vae-sample", help="With --vae: sample z = mean + std * eps (latent_dist.sample(), seeded per image; "
        "default) or the posterior mean.")] = Moments.sample,
    vae_dtype: Annotated[VAEDtype, typer.Option("--vae-dtype", help="With --vae: the VAE's dtype.")] = VAEDtype.float32,
    vae_batch_size: Annotated[int, typer.Option(
        "--vae-batch-size", help="With --vae: images per encoder call (at least 1).")] = 4,
    resolution: Annotated[Optional[int], typer.Option(
        "--resolution", help="Image folders: center-crop and resize to R x R (default: the images' own size, which "
        "must then be the same for all; at least 1).")] = None,
    skip_bad: Annotated[bool, typer.Option(
        "--skip-bad", metavar="", help="Skip chosen images, .npy files or latent caches that cannot be decoded, draw "
        "others instead, and record how many.")] = False,
    device: Annotated[str, typer.Option(
        "--device", help="cpu, cuda:N, a list (cuda:0,cuda:1) to split the work over, or cuda for every visible GPU "
        "(under torchrun: cuda:LOCAL_RANK).")] = "cpu",
    chunk_size: Annotated[Optional[int], typer.Option(
        "--chunk-size", help="Queries per chunk, at least 1 (default: from free memory).")] = None,
    precision: Annotated[Precision, typer.Option(
        "--precision", help="Of the heavy products: auto (bf16 on CPUs with bf16 dot products, TF32 on recent GPUs, "
        "else float32), float32, bf16, tf32 (CUDA).")] = Precision.auto,
    table_size: Annotated[int, typer.Option(
        "--table-size", help="U, entries of the inverse-CDF table minus one (at least 2).")] = 4096,
    uniform_mix: Annotated[float, typer.Option(
        "--uniform-mix", help="The density floor: the share of uniform timesteps mixed into the density, in [0, 1); "
        "keeps every timestep reachable and the weights 1/pdf below 1/share. 0: none.")] = DEFAULT_UNIFORM_MIX,
    fit_scale: Annotated[bool, typer.Option(
        "--fit-scale", metavar="", help="Also fit the logit-normal scale s.")] = False,
    bootstrap: Annotated[int, typer.Option(
        "--bootstrap", help="Bootstrap replicates over sources for the 90% interval of m (0: none).")] = 200,
    check_convergence: Annotated[bool, typer.Option(
        "--check-convergence", metavar="", help="Also estimate on nested subsets M/4 and M/2 (same noise) and say "
        "whether the density and m have settled.")] = False,
    min_bucket: Annotated[int, typer.Option(
        "--min-bucket", help="Data of several sample shapes (resolution buckets): the fewest samples a bucket's curve "
        "is estimated from (at least 2).")] = MIN_BUCKET,
    drop_small_buckets: Annotated[bool, typer.Option(
        "--drop-small-buckets", metavar="", help="Leave out buckets holding fewer than --min-bucket samples (recorded "
        "in the artifact) instead of stopping.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", metavar="", help="Replace an existing artifact.")] = False,
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="Print one JSON object.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", metavar="", help="Print nothing on success; no progress bar.")] = False,
):
    """Estimate the variance curve on a sample of DATA and write the artifact.

    Data of several sample shapes is estimated per resolution bucket, with M split over the buckets in
    proportion to their sizes; the artifact holds each bucket's density and their mixture."""
    from .options import CurveOptions, DataOptions, EstimateOptions, OutputOptions, VAEOptions

    with _usage_errors():  # every option is checked here, before torch loads or any data is read
        data_options = DataOptions(
            data, key=key, samples=_parse_samples(samples), resolution=resolution, skip_bad=skip_bad,
            normalization=normalize, moments=moments, moments_kind=moments_kind, scaling_factor=scaling_factor,
            shift_factor=shift_factor, min_bucket=min_bucket, drop_small_buckets=drop_small_buckets,
            vae=None if vae is None else VAEOptions(vae, sample=vae_sample, dtype=vae_dtype, batch_size=vae_batch_size),
        )
        curve = CurveOptions(_scheduler(scheduler, shift, beta_min, beta_max, custom), noise=noise, timesteps=timesteps,
                             seed=seed, likelihood=likelihood, form=form, precision=precision, chunk_size=chunk_size)
        options = EstimateOptions(curve, table_size=table_size, uniform_mix=uniform_mix, fit_scale=fit_scale,
                                  bootstrap=bootstrap, check_convergence=check_convergence)
    output = OutputOptions(_file_path(out_path, "--out"), overwrite=overwrite)
    from .distributed import launch
    from .pipeline import run_estimate

    with launch(device, report=_print_error) as ranks:  # None unless started by torchrun
        writer = ranks is None or ranks.rank == 0
        if writer and data_options.normalization != "none" and data_options.factors_given:
            # Warnings go to stderr even with -q: they are about the result, not progress.
            err.print(f"warning: --normalize {data_options.normalization} divides by the chosen samples' own mean "
                      "and std, which undoes --scaling-factor and --shift-factor exactly, so they cannot change the "
                      "result; pass --normalize none to estimate at the scale your trainer feeds the model "
                      "(docs/data.md).", markup=False)
        bar, report = _progress_reporter(writer and not quiet and not as_json)
        try:
            if bar is not None:
                bar.start()
            result = run_estimate(
                data_options, options, output, device=device, ranks=ranks, progress=report,
                notify=None if quiet else lambda note: err.print(f"note: {note}", markup=False),
            )
        finally:
            if bar is not None:
                bar.stop()
    if writer:  # under torchrun only rank 0 prints
        _print_estimate(result, quiet=quiet, as_json=as_json)


@contextlib.contextmanager
def _usage_errors():
    """An option out of range (``OptionError``) is a usage error: exit status 2, with the flag named."""
    try:
        yield
    except OptionError as exc:
        raise typer.BadParameter(str(exc), param_hint=exc.option) from None


def _scheduler(name: str, shift, beta_min, beta_max, custom):
    """The scheduler of ``--scheduler NAME`` and its parameters; an unknown name is a usage error."""
    from .schedulers import SCHEDULERS, get_scheduler

    if name not in SCHEDULERS and ":" not in name:
        raise typer.BadParameter(f"{name!r} is not one of {', '.join(SCHEDULERS)} nor module:object.",
                                 param_hint="--scheduler")
    return get_scheduler(name, shift=shift, beta_min=beta_min, beta_max=beta_max, custom=custom)


def _print_estimate(result, *, quiet: bool, as_json: bool) -> None:
    """What ``estimate`` prints on success: one JSON object, or the table of what was read and found (with the
    buckets, the advice on K and the convergence check), or nothing with ``-q``; notes and warnings on stderr."""
    path = result.path
    if path.suffix.lower() != ".safetensors" and not quiet:
        err.print(f"note: {path} is a safetensors file (the artifact's format), whatever its name says; "
                  "name it .safetensors to avoid confusion.", markup=False)
    summary = result.summary()
    conv = result.convergence
    if conv is not None and not conv.settled:  # once, on stderr, with -q and --json too
        err.print(f"warning: {conv.message()}", markup=False)
    if as_json:
        print(json.dumps(summary))
        return
    if quiet:
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_row("data", _data_text(summary["data"]))
    for k in ("artifact", "scheduler", "samples", "noise", "timesteps", "dim", "likelihood", "form", "peak_t",
              "logitnormal_m", "logitnormal_m_ci90", "logitnormal_m_grid", "ks", "elapsed_s", "device", "precision",
              "kernel", "kernel_choice"):
        if k in summary:
            value = summary[k]
            table.add_row(k, _fmt(value))
    out.print(table, markup=False)
    if "buckets" in summary:
        out.print(bucket_table(result.metadata.buckets, result.metadata.buckets_dropped))
    if result.interval is not None:
        from .convergence import noise_advice

        out.print(noise_advice(result.interval, result.curve.noise), markup=False)
    if conv is not None:
        out.print(convergence_table(conv))
        out.print(f"m moves by {conv.m_drift_per_doubling:+.3f} per doubling of M; "
                  + ("settled." if conv.settled else "NOT settled (the warning on stderr says what to do)."),
                  markup=False)


def bucket_table(buckets: Sequence[BucketMeta], dropped: Optional[Sequence[DroppedBucket]] = None,
                 title: str = "resolution buckets") -> Table:
    """One row per resolution bucket: shape, samples in the data, share, samples used and the fit.

    Args:
        buckets: the artifact's ``buckets``.
        dropped: its ``buckets_dropped``, or None.
        title: the table's title.
    """
    table = Table("shape", "samples", "share", "M", "m", "m 90%", "KS", box=None, title=title, title_justify="left")
    for b in buckets:
        ci = b.logitnormal_m_ci90
        table.add_row(_shape_text(b.shape), str(b.samples_total), f"{b.share:.3f}", str(b.samples),
                      f"{b.logitnormal_m:+.4f}", f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "", f"{b.ks:.4f}")
    for d in dropped or ():
        table.add_row(_shape_text(d.shape), str(d.samples_total), "", "dropped", "", "", "")
    return table


def _data_text(data: Dict[str, Any]) -> str:
    """One line of what ``estimate`` read: path (key), samples used of those found, files skipped."""
    where = data["path"] + (f" (key {data['key']})" if data.get("key") else "")
    text = f"{where}: {data['samples_chosen']:,} of {data['samples_total']:,} samples used"
    if data.get("skipped"):
        names = ", ".join(data.get("skipped_files") or [])
        text += f", {data['skipped']} undecodable skipped" + (f" ({names})" if names else "")
    return text


def convergence_table(conv) -> Table:
    """The nested-subset table of ``--check-convergence``."""
    table = Table("M", "KS to full M", "logit-normal m", box=None, title="convergence in M (same noise)",
                  title_justify="left")
    for row in conv.rows:
        table.add_row(str(row.samples), f"{row.ks_to_full:.4f}", f"{row.m:+.4f}")
    return table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        # small parameters (beta_start = 0.00085) keep their digits
        return f"{value:.4g}" if 0 < abs(value) < 0.01 else f"{value:.4f}"
    if isinstance(value, dict):
        return " ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(map(_fmt, value)) + "]"  # an interval: [0.2349, 0.2484]
    return str(value)


@app.command("fit-logitnormal", cls=_Command)
@_user_errors
def fit_logitnormal_cmd(
    artifact: Annotated[Path, typer.Argument(metavar="ARTIFACT", help="A vrcurve artifact.")],
    convention: Annotated[Convention, typer.Option(
        "--convention", help="t0-noise (vrcurve, SiT, flow_matching) or t1-noise (kohya, OneTrainer, SimpleTuner): m "
        "is negated.")] = Convention.t0_noise,
    fit_scale: Annotated[bool, typer.Option("--fit-scale", metavar="", help="Also fit the scale s.")] = False,
    bucket: Annotated[Optional[str], typer.Option(
        "--bucket", help="Fit one resolution bucket's density instead of the pooled one: its sample shape, e.g. "
        "16x64x64 (the nearest bucket by size if absent).")] = None,
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="Print one JSON object.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="Print only the best m.")] = False,
):
    """Fit a logit-normal to the artifact's density by KS distance and print its location m (and each
    resolution bucket's, for an artifact of several)."""
    from .artifact import bucket_arrays, read_artifact
    from .buckets import nearest_bucket
    from .fit import fit_logitnormal

    arrays, meta = read_artifact(artifact)
    buckets = meta.buckets or ()
    what = "pooled density" if buckets else "density"
    if bucket is not None and buckets:  # an artifact of one shape is its one bucket
        b = nearest_bucket([info.shape for info in buckets], _parse_shape(bucket, "--bucket"))
        arrays, what = bucket_arrays(arrays, b), f"bucket {_shape_text(buckets[b].shape)}"
        buckets = ()
    elif bucket is not None:
        _parse_shape(bucket, "--bucket")
    fit = fit_logitnormal(arrays["cdf"].astype("float64"), fit_scale=fit_scale)
    sign = 1.0 if convention is Convention.t0_noise else -1.0
    m, m_grid, m_cont = sign * fit.m, sign * fit.m_grid, sign * fit.m_continuous
    if quiet:
        print(f"{m:.4f}")
        return
    per_bucket = []
    for b, info in enumerate(buckets):
        bf = fit_logitnormal(bucket_arrays(arrays, b)["cdf"].astype("float64"), fit_scale=fit_scale)
        per_bucket.append({"shape": list(info.shape), "share": info.share, "samples": info.samples, "m": sign * bf.m,
                           "s": bf.s, "ks": bf.ks, "m_grid": sign * bf.m_grid})
    if as_json:
        print(json.dumps({
            "artifact": str(artifact), "convention": convention.value, "density": what, "m": m, "s": fit.s,
            "ks": fit.ks, "m_grid": m_grid, "ks_grid_best": fit.ks_grid_best, "m_continuous": m_cont,
            "ks_continuous": fit.ks_continuous,
            "grid": [{"m": sign * float(g), "ks": float(k)} for g, k in zip(fit.grid, fit.ks_grid)],
            **({"buckets": per_bucket} if per_bucket else {}),
        }))
        return
    table = Table(title=f"KS distance of the {what} to logit-normal(m, 1), {convention.value}", box=None,
                  title_justify="left")
    table.add_column("m", justify="right")
    table.add_column("KS", justify="right")
    table.add_column("")
    for g, k in sorted(zip(sign * fit.grid, fit.ks_grid)):
        table.add_row(f"{g:+.2f}", f"{k:.4f}", "<- best on grid" if abs(g - m_grid) < 1e-9 else "")
    out.print(table)
    out.print(f"best m on the grid: {m_grid:+.2f} (KS {fit.ks_grid_best:.4f})")
    out.print(f"continuous best m:  {m_cont:+.4f} (KS {fit.ks_continuous:.4f})")
    if fit_scale:
        out.print(f"best (m, s):        ({m:+.4f}, {fit.s:.4f}) (KS {fit.ks:.4f})")
    if per_bucket:
        bt = Table("shape", "share", "M", "m", "s", "KS", box=None, title=f"per resolution bucket, {convention.value}",
                   title_justify="left")
        for r in per_bucket:
            bt.add_row(_shape_text(r["shape"]), f"{r['share']:.3f}", str(r["samples"]), f"{r['m']:+.4f}",
                       f"{r['s']:.4f}", f"{r['ks']:.4f}")
        out.print()
        out.print(bt)


def _shape_text(shape) -> str:
    return "x".join(str(int(v)) for v in shape)


def _parse_shape(text: str, option: str):
    """``16x64x64`` (or ``16,64,64``) -> (16, 64, 64); a usage error otherwise."""
    parts = text.replace(",", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a sample shape such as 16x64x64.", param_hint=option) from None
    if not shape or min(shape) < 1:
        raise typer.BadParameter(f"{text!r} is not a sample shape such as 16x64x64.", param_hint=option)
    return shape


@app.command(cls=_Command)
@_user_errors
def show(
    artifact: Annotated[Path, typer.Argument(metavar="ARTIFACT", help="A vrcurve artifact.")],
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="Print the metadata as one JSON object.")] = False,
):
    """Print an artifact's metadata and a terminal picture of its density pdf(t)."""
    import numpy as np

    from .distribution import load

    dist = load(artifact)
    meta = dist.meta  # its entries in one order (ArtifactMeta's fields, then the others sorted), whatever the file's
    if as_json:
        print(json.dumps(dict(meta)))
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    from .compare import normalization_text

    for k, v in meta.items():
        if k not in ("checksum", "buckets", "buckets_dropped"):
            value = normalization_text(v) if k == "normalization" else _fmt(v)
            table.add_row(escape(k), escape(value))  # paths may hold brackets: m[/]x.npy
    out.print(table)
    out.print()
    if meta.buckets:
        out.print(bucket_table(meta.buckets, meta.buckets_dropped,
                               title="resolution buckets (the density below is their mixture, by share)"))
        out.print()
    arrays = dist.arrays
    upper = None
    if "variance_stderr" in arrays:
        # pdf is proportional to V, so 2 standard errors of V scale to 2 standard errors of pdf.
        var = np.maximum(arrays["variance"].astype(np.float64), 0)
        rel = np.divide(arrays["variance_stderr"], var, out=np.zeros_like(var), where=var > 0)
        upper = arrays["pdf"] * (1 + 2 * rel)
    for line in density_picture(arrays["pdf"], upper=upper):
        out.print(line)
    if upper is not None:
        out.print("        ░ = pdf + 2 standard errors (over sources)")
    for b, info in enumerate((meta.buckets or ())[:_SHOWN_BUCKETS]):
        out.print()
        out.print(f"bucket {_shape_text(info.shape)} ({info.share:.0%} of the data, m = {info.logitnormal_m:+.4f})")
        for line in density_picture(arrays[f"bucket.{b}.pdf"], height=4):
            out.print(line)


_SHOWN_BUCKETS = 6  # pictures of the largest buckets; the table lists them all
_BLOCKS = " ▁▂▃▄▅▆▇█"


def density_picture(pdf, width: int = 64, height: int = 8, upper=None) -> List[str]:
    """A bar chart of pdf(t) in Unicode blocks: ``width`` columns of equal t-width, ``height`` rows.

    ``upper`` (same shape as pdf), when given, is the top of an error band, drawn in light shade above the bars.
    """
    import numpy as np

    width = min(width, len(pdf))  # never an empty column

    def columns(values):
        return np.array([c.mean() for c in np.array_split(np.asarray(values, dtype=np.float64), width)])

    cols = columns(pdf)
    top = cols.max() if cols.max() > 0 else 1.0
    levels = cols / top * height * 8
    band = None if upper is None else columns(upper) / top * height * 8
    lines = []
    for row in range(height - 1, -1, -1):
        cells = np.clip(levels - row * 8, 0, 8).round().astype(int)
        chars = [_BLOCKS[c] for c in cells]
        if band is not None:
            shaded = (cells == 0) & (band - row * 8 >= 4)
            chars = ["░" if sh else ch for ch, sh in zip(chars, shaded)]
        label = f"{top * (row + 1) / height:6.2f} |" if row in (height - 1, 0) else "       |"
        lines.append(label + "".join(chars))
    lines.append("       +" + "-" * width)
    lines.append("        t=0 (noise)" + " " * max(1, width - 24) + "t=1 (data)")
    return lines


@app.command(cls=_Command)
@_user_errors
def schedulers(as_json: Annotated[bool, typer.Option("--json", metavar="", help="Print one JSON object.")] = False):
    """List the noise schedulers (t = 0 is noise)."""
    from .schedulers import SCHEDULERS

    if as_json:
        print(json.dumps(SCHEDULERS))
        return
    table = Table("name", "path x_t = a_t x1 + m_t eps", box=None)
    for name, desc in SCHEDULERS.items():
        table.add_row(name, desc)
    out.print(table)


@app.command("export", cls=_Command)
@_user_errors
def export_cmd(
    artifact: Annotated[Path, typer.Argument(metavar="ARTIFACT", help="A vrcurve artifact.")],
    to: Annotated[ExportTarget, typer.Option(
        "--to", help="The trainer: diffusers (SD3/Flux scripts), kohya (FLUX.1 scripts), kohya-sd3 (SD3 scripts), "
        "simpletuner, onetrainer, sit, or json (everything, with the pdf and icdf tables).")],
    shift: Annotated[Optional[float], typer.Option(
        "--shift", help="diffusers: the shift of the trainer's scheduler (SD3: 3; Flux, whose config sets "
        "use_dynamic_shifting: 1), required for an artifact estimated with --shift; kohya-sd3: the --training_shift "
        "to print (default: the artifact's).")] = None,
    fit_scale: Annotated[bool, typer.Option(
        "--fit-scale", metavar="", help="Refit the logit-normal with its scale s instead of using the artifact's "
        "fit.")] = False,
    patch_size: Annotated[int, typer.Option(
        "--patch-size", min=1, help="dynamic-shift: the transformer's patch side p; a latent of H x W has (H/p)(W/p) "
        "tokens (2 for Flux and SD3).")] = 2,
    base_seq_len: Annotated[Optional[int], typer.Option(
        "--base-seq-len", min=1, help="dynamic-shift: base_image_seq_len (default: the shortest bucket's "
        "tokens).")] = None,
    max_seq_len: Annotated[Optional[int], typer.Option(
        "--max-seq-len", min=1, help="dynamic-shift: max_image_seq_len (default: the longest bucket's "
        "tokens).")] = None,
    bucket: Annotated[Optional[str], typer.Option(
        "--bucket", help="Export one resolution bucket's fit instead of the pooled one: its sample shape, e.g. "
        "16x128x128 (the nearest bucket by size).")] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", metavar="", help="Print only the flags or config lines, no comment lines.")] = False,
):
    """Print the flags or config lines that make a trainer sample the artifact's logit-normal fit.

    --to dynamic-shift (artifacts of several resolution buckets): the diffusers scheduler config of the data's
    resolution-dependent shift, mu linear in the latent sequence length."""
    import math

    from .artifact import read_artifact
    from .buckets import nearest_bucket
    from .export import (
        SHIFT_TARGETS,
        bucket_shift_line,
        describe_fit,
        export_artifact,
        export_json,
        shift_line_comments,
        to_dynamic_shift,
    )

    if shift is not None and to.value not in SHIFT_TARGETS:
        raise typer.BadParameter("applies to --to diffusers and kohya-sd3 only; the other trainers take the shift "
                                 "from the fit.", param_hint="--shift")
    if shift is not None and not (shift > 0 and math.isfinite(shift)):
        raise typer.BadParameter(f"must be a positive number, got {shift}; use 1 for no shift.", param_hint="--shift")
    read = read_artifact(artifact)
    chosen = None
    if bucket is not None:
        if to in (ExportTarget.dynamic_shift, ExportTarget.json):
            raise typer.BadParameter("applies to one trainer's flags; dynamic-shift and json cover every bucket.",
                                     param_hint="--bucket")
        shape = _parse_shape(bucket, "--bucket")
        if read.meta.buckets:
            b = nearest_bucket([info.shape for info in read.meta.buckets], shape)
            chosen = read.meta.buckets[b]
            # the bucket's own fit and density, under the artifact's scheduler and settings
            read = read.bucket(b)
    arrays, meta = read
    m, s = float(meta.logitnormal_m), float(meta.logitnormal_s)
    if fit_scale:
        from .fit import fit_logitnormal

        fit = fit_logitnormal(arrays["cdf"].astype("float64"), fit_scale=True)
        m, s = fit.m, fit.s
    if to is ExportTarget.json:
        print(json.dumps(export_json(arrays, meta, m, s)))
        return
    buckets = meta.buckets or ()
    if to is ExportTarget.dynamic_shift:
        line = bucket_shift_line(meta, patch_size, where=str(artifact))
        result = to_dynamic_shift(line, base_seq_len, max_seq_len, s=s)
        notes = shift_line_comments(line, patch_size, [b.shape for b in buckets])
        text = result.text("\n# ".join(notes), comments=not quiet)
        print(text)
        return
    result = export_artifact(arrays, meta, to.value, trainer_shift=shift, m=m, s=s, where=str(artifact))
    source = describe_fit(meta, m, s)
    if chosen is not None:
        source += f" (its resolution bucket {_shape_text(chosen.shape)}, {chosen.share:.0%} of the data)"
    elif buckets:
        source += (" (the pooled density of its resolution buckets; vrcurve fit-logitnormal lists each bucket's m, "
                   "--bucket exports one)")
    if to is ExportTarget.kohya and len(buckets) > 1:
        try:
            line = bucket_shift_line(meta, patch_size, where=str(artifact))
            source += "\n# " + "\n# ".join(shift_line_comments(line, patch_size, [b.shape for b in buckets]))
        except VRCurveError:
            pass  # buckets of one sequence length, or without (C, H, W) axes: nothing to say about flux_shift
    print(result.text(source, comments=not quiet))


@app.command("plot", cls=_Command)
@_user_errors
def plot_cmd(
    artifact: Annotated[Path, typer.Argument(metavar="ARTIFACT", help="A vrcurve artifact.")],
    out_path: Annotated[Optional[str], typer.Option(
        "--out", "-o", help="Image to write (.png, .pdf, .svg); default: the artifact's name with .png.")] = None,
    log: Annotated[bool, typer.Option("--log", metavar="", help="Draw V(t) on a log scale.")] = False,
    width: Annotated[int, typer.Option("--width", min=100, max=10_000, help="Image width in pixels.")] = 900,
    height: Annotated[int, typer.Option("--height", min=100, max=10_000, help="Image height in pixels.")] = 1000,
    dpi: Annotated[int, typer.Option(
        "--dpi", min=10, max=1_000, help="Pixels per inch (text size scales with it).")] = 100,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="Print nothing on success.")] = False,
):
    """Draw S_t, V(t) and pdf(t) with its logit-normal fit in one figure (needs matplotlib: pip install
    'vrcurve\\[plot]')."""
    from .artifact import read_artifact
    from .plot import plot_artifact

    arrays, meta = read_artifact(artifact)
    target = _file_path(out_path, "--out") if out_path is not None else artifact.with_suffix(".png")
    plot_artifact(arrays, meta, target, log_variance=log, width=width, height=height, dpi=dpi, title=artifact.name)
    if not quiet:
        print(target)


@app.command("compare", cls=_Command)
@_user_errors
def compare_cmd(
    artifacts: Annotated[List[Path], typer.Argument(
        metavar="ARTIFACT", help="Two or more artifacts; each is compared with the first.")],
    fail_above: Annotated[Optional[float], typer.Option(
        "--fail-above", min=0.0, help="Exit with status 1 when the KS distance of any artifact to the first exceeds "
        "this.")] = None,
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="Print one JSON object.")] = False,
):
    """KS distance between the artifacts' densities and the difference of their m, side by side."""
    from .artifact import read_artifact
    from .compare import compare, compare_buckets, differing_normalizations, differing_schedulers, normalization_text
    from .export import scheduler_text

    if len(artifacts) < 2:
        raise typer.BadParameter("give at least two artifacts; each is compared with the first.",
                                 param_hint="ARTIFACTS")
    read = [(str(p), *read_artifact(p)) for p in artifacts]
    rows = compare(read)
    bucket_rows = compare_buckets(read)
    # a bucket's curve is what sample(shape=...) draws from: its moving counts as much as the pooled one's
    candidates = [(r.ks, r.path, "") for r in rows[1:]] + [
        (r.ks, r.path, f" in the bucket {_shape_text(r.shape)}") for r in bucket_rows if r.path != rows[0].path]
    worst = max(candidates, key=lambda c: c[0])
    failed = fail_above is not None and worst[0] > fail_above
    if as_json:
        print(json.dumps({"reference": rows[0].path, "artifacts": [r.as_dict() for r in rows], "max_ks": worst[0],
                          **({"buckets": [r.as_dict() for r in bucket_rows]} if bucket_rows else {}),
                          "fail_above": fail_above, "failed": failed}))
    else:
        table = Table(box=None, title=f"compared with {escape(rows[0].path)} (t = 0 noise)", title_justify="left")
        for col in ("artifact", "scheduler", "normalization", "M", "K", "d", "T", "m", "s", "KS", "Δm"):
            table.add_column(col, justify="left" if col in ("artifact", "scheduler", "normalization") else "right",
                             no_wrap=True)
        for r in rows:
            table.add_row(escape(r.path), escape(scheduler_text(r.scheduler)),
                          escape(normalization_text(r.normalization, short=True)), str(r.samples), str(r.noise),
                          str(r.dim), str(r.timesteps), f"{r.m:+.4f}", f"{r.s:.4f}", f"{r.ks:.4f}", f"{r.dm:+.4f}")
        # Piped output is not cut to 80 columns: paths are long, and a pipeline reads whole rows.
        wide = out if out.is_terminal else Console(highlight=False, width=1000)
        wide.print(table)
        if bucket_rows:
            bt = Table(box=None, title="per resolution bucket",
                       title_justify="left")
            for col in ("bucket", "artifact", "share", "m", "KS", "Δm"):
                bt.add_column(col, justify="left" if col in ("bucket", "artifact") else "right", no_wrap=True)
            for r in bucket_rows:
                bt.add_row(_shape_text(r.shape), escape(r.path), f"{r.share:.3f}", f"{r.m:+.4f}", f"{r.ks:.4f}",
                           f"{r.dm:+.4f}")
            wide.print(bt)
    differing = differing_schedulers(rows)
    if differing:
        err.print(f"note: {', '.join(differing)} used another scheduler than {rows[0].path}, so their times are "
                  "different variables.", markup=False)
    renormed = differing_normalizations(rows)
    if renormed:
        err.print(f"note: {', '.join(renormed)} normalised or rescaled the data differently from {rows[0].path} "
                  f"({normalization_text(rows[0].normalization, short=True)}), so the curves are of data at different "
                  "scales (docs/data.md).", markup=False)
    if failed:
        raise VRCurveError(f"{worst[1]} differs from {rows[0].path}{worst[2]} by KS {worst[0]:.4f} > --fail-above "
                           f"{fail_above:g}; re-estimate or refresh the cached curve.")


def main() -> None:
    app()
