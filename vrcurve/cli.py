"""The command line: a thin Typer layer over the library (SPEC §5).

Results go to stdout (a table, ``--json``, or a bare value with ``--quiet``); progress and errors go to
stderr. Exit status: 0 success, 1 a data or runtime error (one line, no traceback, no output file),
2 a usage error.
"""

from __future__ import annotations

import functools
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._version import __version__
from .errors import VRCurveError

app = typer.Typer(
    name="vrcurve",
    help="Estimate a variance-reduction timestep density for flow-matching and diffusion training "
    "(t = 0 is noise, t = 1 is data), and read it back.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class Likelihood(str, Enum):
    mean = "mean"
    sum = "sum"


class Form(str, Enum):
    covariance = "covariance"
    paper = "paper"


class Precision(str, Enum):
    auto = "auto"
    float32 = "float32"
    bf16 = "bf16"
    tf32 = "tf32"


class Normalize(str, Enum):
    global_ = "global"
    channel = "channel"
    none = "none"


class Moments(str, Enum):
    mean = "mean"
    sample = "sample"


class MomentsKind(str, Enum):
    auto = "auto"
    std = "std"
    logvar = "logvar"


class Convention(str, Enum):
    t0_noise = "t0-noise"
    t1_noise = "t1-noise"


def _user_errors(fn):
    """Turn VRCurveError into one line on stderr and exit status 1 (the only place that does)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VRCurveError as exc:
            _print_error(exc)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted; nothing was written.")
            raise typer.Exit(130) from None

    return wrapper


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
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    pass


def _parse_samples(value: str) -> Optional[int]:
    if value == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is neither a whole number nor 'all'.") from None


def _progress_reporter(enabled: bool):
    """A Rich progress bar on stderr (timesteps done / total, rate, elapsed, ETA), or None when quiet or
    stderr is not a terminal. The estimator reports fractional timesteps while a chunk of queries is in flight."""
    if not enabled or not sys.stderr.isatty():
        return None, None
    from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.text import Text

    class Timesteps(ProgressColumn):
        def render(self, task):
            return Text("" if task.total is None else f"{task.completed:,.0f}/{task.total:,.0f} timesteps")

    class Rate(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:,.1f}/s" if task.speed else "")

    bar = Progress(
        TextColumn("estimating"), BarColumn(), Timesteps(), Rate(), TimeElapsedColumn(), TextColumn("eta"),
        TimeRemainingColumn(), console=err, transient=True,
    )
    task = bar.add_task("estimate", total=None)

    def report(done: float, total: int):
        bar.update(task, completed=done, total=total)

    return bar, report


@app.command()
@_user_errors
def estimate(
    data: str = typer.Option(..., "--data", "-d", help="Samples: a .npy, .npz, HDF5 or safetensors file; a folder or glob of "
                             "safetensors shards, per-sample .npy files or images (png/jpg/webp); or 'demo'."),
    out_path: Path = typer.Option(Path("vr.safetensors"), "--out", "-o", help="Artifact to write."),
    key: Optional[str] = typer.Option(None, "--key", help="Array, dataset or tensor name in .npz, HDF5 or safetensors files "
                                      "(HDF5 per-sample layouts: 'group/*' or '*/name'); detected when unambiguous."),
    scheduler: str = typer.Option("linear", "--scheduler", "-s", help="linear, cosine, diffusion, custom, or module:object."),
    shift: Optional[float] = typer.Option(None, "--shift", help="Timestep shift of the linear scheduler (SD3/Flux)."),
    beta_min: float = typer.Option(0.1, "--beta-min", help="Diffusion (VP) beta_min."),
    beta_max: float = typer.Option(20.0, "--beta-max", help="Diffusion (VP) beta_max."),
    custom: Optional[str] = typer.Option(None, "--custom", help="module:object of a custom scheduler."),
    samples: str = typer.Option("200", "--samples", "-M", help="M, samples drawn from the data (or 'all')."),
    noise: int = typer.Option(500, "--noise", "-K", min=1, help="K, noises per sample."),
    timesteps: int = typer.Option(1000, "--timesteps", "-T", min=2, help="T, timestep bins."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample choice and of every noise."),
    likelihood: Likelihood = typer.Option(Likelihood.mean, "--likelihood", help="mean: tau = d (default); sum: exact posterior."),
    form: Form = typer.Option(Form.covariance, "--form", help="covariance: h^2 trCov/d (default); paper: h^2 (1 - S)."),
    normalize: Normalize = typer.Option(Normalize.global_, "--normalize", help="global, channel or none."),
    moments: Optional[Moments] = typer.Option(None, "--moments", help="The data holds VAE moments (mean and std/logvar "
                                              "concatenated on the channel axis): use the mean, or sample z = mean + std * eps."),
    moments_kind: MomentsKind = typer.Option(MomentsKind.auto, "--moments-kind", help="Second half of the moments: std, logvar, "
                                             "or auto (logvar if any value is negative)."),
    scaling_factor: float = typer.Option(1.0, "--scaling-factor", help="The trainer's latent rescaling (z - shift_factor) * "
                                         "scaling_factor, e.g. 0.18215 for SD 1.x/2.x."),
    shift_factor: float = typer.Option(0.0, "--shift-factor", help="The trainer's latent offset (diffusers' shift_factor; "
                                       "not the timestep --shift)."),
    resolution: Optional[int] = typer.Option(None, "--resolution", min=1, help="Image folders: center-crop and resize to R x R "
                                             "(default: the images' own size, which must then be the same for all)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip chosen images or .npy files that cannot be decoded, draw "
                                  "others instead, and record how many."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda:N, a list (cuda:0,cuda:1) to split the work over, or "
                               "cuda for every visible GPU (under torchrun: cuda:LOCAL_RANK)."),
    chunk_size: Optional[int] = typer.Option(None, "--chunk-size", min=1, help="Queries per chunk (default: from free memory)."),
    precision: Precision = typer.Option(Precision.auto, "--precision", help="Of the heavy products: auto (bf16 on CPUs with "
                                        "bf16 dot products, TF32 on recent GPUs, else float32), float32, bf16, tf32 (CUDA)."),
    table_size: int = typer.Option(4096, "--table-size", min=2, help="U, entries of the inverse-CDF table minus one."),
    fit_scale: bool = typer.Option(False, "--fit-scale", help="Also fit the logit-normal scale s."),
    bootstrap: int = typer.Option(200, "--bootstrap", min=0, help="Bootstrap replicates over sources for the 90% "
                                  "interval of m (0: none)."),
    check_convergence: bool = typer.Option(False, "--check-convergence", help="Also estimate on nested subsets M/4 "
                                           "and M/2 (same noise) and say whether the density and m have settled."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing artifact."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing on success; no progress bar."),
):
    """Estimate the variance curve on a sample of DATA and write the artifact."""
    from .pipeline import run_estimate
    from .schedulers import SCHEDULERS, get_scheduler

    if scheduler not in SCHEDULERS and ":" not in scheduler:
        raise typer.BadParameter(f"{scheduler!r} is not one of {', '.join(SCHEDULERS)} nor module:object.",
                                 param_hint="--scheduler")
    sched = get_scheduler(scheduler, shift=shift, beta_min=beta_min, beta_max=beta_max, custom=custom)
    from .devices import local_device
    from .distributed import RankFailed, launch

    with launch(device) as ranks:  # None unless started by torchrun
        if ranks is not None:
            device = local_device(device, ranks.local_rank)
        writer = ranks is None or ranks.rank == 0
        bar, report = _progress_reporter(writer and not quiet and not as_json)
        try:
            if bar is not None:
                bar.start()
            result = run_estimate(
                data, out_path, sched, key=key, samples=_parse_samples(samples), noise=noise, timesteps=timesteps,
                seed=seed, likelihood=likelihood.value, form=form.value, normalization=normalize.value, device=device,
                chunk_size=chunk_size, table_size=table_size, fit_scale=fit_scale, overwrite=overwrite,
                progress=report, moments=moments.value if moments is not None else None,
                moments_kind=moments_kind.value, scaling_factor=scaling_factor, shift_factor=shift_factor,
                resolution=resolution, skip_bad=skip_bad, precision=precision.value, bootstrap=bootstrap,
                check_convergence=check_convergence, ranks=ranks,
            )
        except RankFailed as exc:  # raised on every rank at once; the failing rank prints its message
            if exc.show:
                _print_error(exc)
            ranks.settle()  # before any rank exits: torchrun stops the others when the first one does
            raise typer.Exit(1) from None
        finally:
            if bar is not None:
                bar.stop()
    if not writer:
        return  # under torchrun only rank 0 prints
    summary = result.summary()
    conv = result.convergence
    if conv is not None and not conv.settled and not quiet:
        err.print(f"warning: {conv.message()}", markup=False)
    if as_json:
        print(json.dumps(summary))
    elif not quiet:
        table = Table(show_header=False, box=None, pad_edge=False)
        for k in ("artifact", "scheduler", "samples", "noise", "timesteps", "dim", "likelihood", "form", "peak_t",
                  "logitnormal_m", "logitnormal_m_ci90", "logitnormal_m_grid", "ks", "elapsed_s", "device", "precision",
                  "kernel", "kernel_choice"):
            if k in summary:
                value = summary[k]
                table.add_row(k, f"[{value[0]:.4f}, {value[1]:.4f}]" if k == "logitnormal_m_ci90" else _fmt(value))
        out.print(table, markup=False)
        if conv is not None:
            out.print(convergence_table(conv))
            out.print(conv.message(), markup=False)


def convergence_table(conv) -> Table:
    """The nested-subset table of ``--check-convergence``."""
    table = Table("M", "KS to full M", "logit-normal m", box=None, title="convergence in M (same noise)",
                  title_justify="left")
    for row in conv.rows:
        table.add_row(str(row.samples), f"{row.ks_to_full:.4f}", f"{row.m:+.4f}")
    return table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return " ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)


@app.command("fit-logitnormal")
@_user_errors
def fit_logitnormal_cmd(
    artifact: Path = typer.Argument(..., help="A vrcurve artifact."),
    convention: Convention = typer.Option(Convention.t0_noise, "--convention", help="t0-noise (vrcurve, SiT, flow_matching) or t1-noise (kohya, OneTrainer, SimpleTuner): m is negated."),
    fit_scale: bool = typer.Option(False, "--fit-scale", help="Also fit the scale s."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the best m."),
):
    """Fit a logit-normal to the artifact's density by KS distance and print its location m."""
    from .artifact import read_artifact
    from .fit import fit_logitnormal

    arrays, meta = read_artifact(artifact)
    fit = fit_logitnormal(arrays["cdf"].astype("float64"), fit_scale=fit_scale)
    sign = 1.0 if convention is Convention.t0_noise else -1.0
    m, m_grid, m_cont = sign * fit.m, sign * fit.m_grid, sign * fit.m_continuous
    if quiet:
        print(f"{m:.4f}")
        return
    if as_json:
        print(json.dumps({
            "artifact": str(artifact), "convention": convention.value, "m": m, "s": fit.s, "ks": fit.ks,
            "m_grid": m_grid, "ks_grid_best": fit.ks_grid_best, "m_continuous": m_cont, "ks_continuous": fit.ks_continuous,
            "grid": [{"m": sign * float(g), "ks": float(k)} for g, k in zip(fit.grid, fit.ks_grid)],
        }))
        return
    table = Table(title=f"KS distance to logit-normal(m, 1), {convention.value}", box=None, title_justify="left")
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


@app.command()
@_user_errors
def show(
    artifact: Path = typer.Argument(..., help="A vrcurve artifact."),
    as_json: bool = typer.Option(False, "--json", help="Print the metadata as one JSON object."),
):
    """Print an artifact's metadata and a terminal picture of its density pdf(t)."""
    import numpy as np

    from .distribution import load

    dist = load(artifact)
    if as_json:
        print(json.dumps(dist.meta))
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    first = [k for k in _SHOW_ORDER if k in dist.meta]
    for k in first + sorted(set(dist.meta) - set(first) - {"checksum"}):
        table.add_row(k, _fmt(dist.meta[k]))
    out.print(table)
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


_SHOW_ORDER = (
    "scheduler", "likelihood", "form", "samples", "noise", "timesteps", "dim", "shape", "seed", "normalization",
    "data", "logitnormal_m", "logitnormal_m_grid", "logitnormal_s", "ks", "time_convention", "device", "precision",
    "kernel", "kernel_choice", "noise_space", "elapsed_s", "created", "format", "format_version", "vrcurve_version",
)
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


@app.command()
@_user_errors
def schedulers(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")):
    """List the noise schedulers (t = 0 is noise)."""
    from .schedulers import SCHEDULERS

    if as_json:
        print(json.dumps(SCHEDULERS))
        return
    table = Table("name", "path x_t = a_t x1 + m_t eps", box=None)
    for name, desc in SCHEDULERS.items():
        table.add_row(name, desc)
    out.print(table)


class Target(str, Enum):
    diffusers = "diffusers"
    kohya = "kohya"
    simpletuner = "simpletuner"
    onetrainer = "onetrainer"
    sit = "sit"
    json = "json"


@app.command("export")
@_user_errors
def export_cmd(
    artifact: Path = typer.Argument(..., help="A vrcurve artifact."),
    to: Target = typer.Option(..., "--to", help="The trainer: diffusers, kohya, simpletuner, onetrainer, sit, or json "
                              "(everything, with the pdf and icdf tables)."),
    shift: Optional[float] = typer.Option(None, "--shift", help="diffusers only: the shift of the trainer's scheduler "
                                          "(SD3: 3; Flux, whose config sets use_dynamic_shifting: 1). Default 1."),
    fit_scale: bool = typer.Option(False, "--fit-scale", help="Refit the logit-normal with its scale s instead of using "
                                   "the artifact's fit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the flags or config lines, no comment lines."),
):
    """Print the flags or config lines that make a trainer sample the artifact's logit-normal fit."""
    import math

    from .artifact import read_artifact
    from .export import describe_fit, export_artifact, export_json

    if shift is not None and to is not Target.diffusers:
        raise typer.BadParameter("applies to --to diffusers only; the other trainers take the shift from the fit.",
                                 param_hint="--shift")
    if shift is not None and not (shift > 0 and math.isfinite(shift)):
        raise typer.BadParameter(f"must be a positive number, got {shift}; use 1 for no shift.", param_hint="--shift")
    arrays, meta = read_artifact(artifact)
    m, s = float(meta["logitnormal_m"]), float(meta.get("logitnormal_s", 1.0))
    if fit_scale:
        from .fit import fit_logitnormal

        fit = fit_logitnormal(arrays["cdf"].astype("float64"), fit_scale=True)
        m, s = fit.m, fit.s
    if to is Target.json:
        print(json.dumps(export_json(arrays, meta, m, s)))
        return
    result = export_artifact(arrays, meta, to.value, trainer_shift=1.0 if shift is None else shift, m=m, s=s,
                             where=str(artifact))
    print(result.text(describe_fit(meta, m, s), comments=not quiet))


@app.command("plot")
@_user_errors
def plot_cmd(
    artifact: Path = typer.Argument(..., help="A vrcurve artifact."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Image to write (.png, .pdf, .svg); default: "
                                            "the artifact's name with .png."),
    log: bool = typer.Option(False, "--log", help="Draw V(t) on a log scale."),
    width: int = typer.Option(900, "--width", min=1, help="Image width in pixels."),
    height: int = typer.Option(1000, "--height", min=1, help="Image height in pixels."),
    dpi: int = typer.Option(100, "--dpi", min=1, help="Pixels per inch (text size scales with it)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing on success."),
):
    """Draw S_t, V(t) and pdf(t) with its logit-normal fit in one figure (needs vrcurve[plot])."""
    from .artifact import read_artifact
    from .plot import plot_artifact

    arrays, meta = read_artifact(artifact)
    target = out_path if out_path is not None else artifact.with_suffix(".png")
    plot_artifact(arrays, meta, target, log_variance=log, width=width, height=height, dpi=dpi, title=artifact.name)
    if not quiet:
        print(target)


@app.command("compare")
@_user_errors
def compare_cmd(
    artifacts: List[Path] = typer.Argument(..., help="Two or more artifacts; each is compared with the first."),
    fail_above: Optional[float] = typer.Option(None, "--fail-above", min=0.0, help="Exit with status 1 when the KS "
                                               "distance of any artifact to the first exceeds this."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """KS distance between the artifacts' densities and the difference of their m, side by side."""
    from .artifact import read_artifact
    from .compare import compare, differing_schedulers
    from .export import scheduler_text

    if len(artifacts) < 2:
        raise typer.BadParameter("give at least two artifacts; each is compared with the first.",
                                 param_hint="ARTIFACTS")
    rows = compare([(str(p), *read_artifact(p)) for p in artifacts])
    worst = max(rows[1:], key=lambda r: r.ks)
    failed = fail_above is not None and worst.ks > fail_above
    if as_json:
        print(json.dumps({"reference": rows[0].path, "artifacts": [r.as_dict() for r in rows], "max_ks": worst.ks,
                          "fail_above": fail_above, "failed": failed}))
    else:
        table = Table(box=None, title=f"compared with {escape(rows[0].path)} (t = 0 noise)", title_justify="left")
        for col in ("artifact", "scheduler", "M", "K", "d", "T", "m", "s", "KS", "Δm"):
            table.add_column(col, justify="left" if col in ("artifact", "scheduler") else "right", no_wrap=True)
        for r in rows:
            table.add_row(escape(r.path), escape(scheduler_text(r.scheduler)), str(r.samples), str(r.noise),
                          str(r.dim), str(r.timesteps), f"{r.m:+.4f}", f"{r.s:.4f}", f"{r.ks:.4f}", f"{r.dm:+.4f}")
        # Piped output is not cut to 80 columns: paths are long, and a pipeline reads whole rows.
        (out if out.is_terminal else Console(highlight=False, width=1000)).print(table)
    differing = differing_schedulers(rows)
    if differing:
        err.print(f"note: {', '.join(differing)} used another scheduler than {rows[0].path}, so their times are "
                  "different variables.", markup=False)
    if failed:
        raise VRCurveError(f"{worst.path} differs from {rows[0].path} by KS {worst.ks:.4f} > --fail-above "
                           f"{fail_above:g}; re-estimate or refresh the cached curve.")


def main() -> None:
    app()
