"""A picture of an artifact: the separation S_t, the variance V(t) and the density pdf(t), t = 0 noise.

matplotlib is an optional extra (``pip install 'vrcurve[plot]'``) and is imported only when a plot is drawn;
the figure is built with ``matplotlib.figure.Figure`` (no pyplot, no global backend state) and rendered by
Agg. The file is written atomically: a temporary file in the same folder, then a rename.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from .artifact import atomic_path, bucket_tensor_name, check_destination, write_error
from .errors import VRCurveError
from .meta import ArtifactMeta

# Resolution buckets drawn in the pdf panel, the largest first; more would hide the pooled density.
MAX_DRAWN_BUCKETS = 6


def _matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
    except ImportError:
        raise VRCurveError(
            "vrcurve plot needs matplotlib, which is not installed; install it with `pip install 'vrcurve[plot]'`."
        ) from None
    return Figure


def logitnormal_pdf(t: np.ndarray, m: float, s: float = 1.0) -> np.ndarray:
    """Density of logit-normal(m, s) at t in (0, 1): phi((logit t - m) / s) / (s t (1 - t)); 0 at the ends."""
    t = np.asarray(t, dtype=np.float64)
    out = np.zeros_like(t)
    inside = (t > 0) & (t < 1)
    ti = t[inside]
    z = (np.log(ti) - np.log1p(-ti) - m) / s
    out[inside] = np.exp(-0.5 * z * z) / (s * math.sqrt(2 * math.pi) * ti * (1 - ti))
    return out


def caption(meta: ArtifactMeta) -> str:
    """One line: scheduler, M, K, d and the logit-normal fit."""
    sched = meta.scheduler
    if isinstance(sched, dict):
        params = ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}"
                           for k, v in sched.items() if k != "name")
        sched = f"{sched.get('name', '?')}" + (f" ({params})" if params else "")
    m, s = meta.logitnormal_m, meta.logitnormal_s
    fit = f"m = {m:+.4f}" if isinstance(m, (int, float)) else f"m = {m}"
    if s != 1.0:
        fit += f", s = {s:.4f}"
    return (f"scheduler {sched}  ·  M = {meta.samples}  ·  K = {meta.noise}  ·  d = {meta.dim}  ·  "
            f"logit-normal {fit}")


def _wrap(text: str, width_px: int, dpi: int, sep: str = "  ·  ") -> str:
    """Break the caption between its ``sep``-separated parts so that each line fits ``width_px`` pixels
    (a small font's character is about 0.6 of its 8.3 pt size wide)."""
    per_line = max(20, int(width_px / (0.6 * 8.3 * dpi / 72)))
    lines, line = [], ""
    for part in text.split(sep):
        if line and len(line) + len(sep) + len(part) > per_line:
            lines.append(line)
            line = part
        else:
            line = f"{line}{sep}{part}" if line else part
    return "\n".join(lines + [line])


# What matplotlib can draw: below these the fonts get no pixels (FreeType refuses a size of 0 ppem), above
# them Agg runs out of its coordinate range or of memory (10,000 x 10,000 RGBA is 400 MB).
SIZE_RANGE = (100, 10_000)
DPI_RANGE = (10, 1_000)


def check_size(width: int, height: int, dpi: int) -> None:
    """Refuse an image size (pixels) or dpi that matplotlib cannot draw, before anything is drawn."""
    (lo, hi), (dlo, dhi) = SIZE_RANGE, DPI_RANGE
    if not (lo <= width <= hi and lo <= height <= hi and dlo <= dpi <= dhi):
        raise VRCurveError(f"--width {width}, --height {height} and --dpi {dpi} cannot be drawn: width and height "
                           f"must be {lo} to {hi:,} pixels and dpi {dlo} to {dhi:,}.")


def plot_artifact(arrays: Mapping[str, np.ndarray], meta: ArtifactMeta, out: Path, *,
                  log_variance: bool = False, width: int = 900, height: int = 1000, dpi: int = 100,
                  title: Optional[str] = None) -> Path:
    """Draw S_t, V(t) and pdf(t) (with the fitted logit-normal) in one figure and write it to ``out``.

    Args:
        arrays, meta: the artifact, as ``read_artifact`` returns it.
        out: the image file; its suffix picks the format (png, pdf, svg, ...).
        log_variance: draw V(t) on a log scale (non-positive values are left out).
        width, height: the image size in pixels (for raster formats); dpi: pixels per inch.
        title: a title above the panels (e.g. the artifact's name).

    Shaded bands are +-2 standard errors over sources, where the artifact has them. An artifact of several
    resolution buckets also shows each bucket's density (the largest ``MAX_DRAWN_BUCKETS``) beside the pooled one.
    """
    out = Path(out)
    check_destination(out, overwrite=True)  # before the drawing, which takes a while; atomic_path checks again
    fig = draw(arrays, meta, log_variance=log_variance, width=width, height=height, dpi=dpi, title=title)
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=dpi, format=(out.suffix.lstrip(".").lower() or "png"))
    except ValueError as exc:  # matplotlib's word for an unknown format
        raise VRCurveError(f"cannot write {out}: {exc}; use a .png, .pdf or .svg name.") from None
    except OSError as exc:
        raise write_error(out, exc) from None
    return out


def draw(arrays: Mapping[str, np.ndarray], meta: ArtifactMeta, *, log_variance: bool = False,
         width: int = 900, height: int = 1000, dpi: int = 100, title: Optional[str] = None):
    """The figure of ``plot_artifact`` (a matplotlib Figure, three panels: S_t, V(t), pdf(t)), not written."""
    Figure = _matplotlib()
    check_size(width, height, dpi)

    t = np.asarray(arrays["t"], dtype=np.float64)
    S = np.asarray(arrays["S"], dtype=np.float64)
    V = np.asarray(arrays["variance"], dtype=np.float64)
    pdf = np.asarray(arrays["pdf"], dtype=np.float64)
    T = pdf.shape[0]
    edges = np.arange(T + 1) / T
    S_se = arrays.get("S_stderr")
    V_se = arrays.get("variance_stderr")

    # constrained layout keeps the caption, labels and legends apart at every size
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, constrained_layout=True)
    ax_s, ax_v, ax_p = fig.subplots(3, 1, sharex=True)

    ax_s.plot(t, S, color="C0", lw=1.2, label="S_t")
    if S_se is not None:
        se = 2 * np.asarray(S_se, dtype=np.float64)
        # S_t lies in [0, 1] for normalised data: the band does not claim more than the curve's own range
        lo_s, hi_s = min(0.0, float(S.min())), max(1.0, float(S.max()))
        ax_s.fill_between(t, (S - se).clip(lo_s, hi_s), (S + se).clip(lo_s, hi_s), color="C0", alpha=0.25, lw=0,
                          label="±2 s.e.")
    ax_s.set_ylabel("separation S_t")
    ax_s.legend(loc="best", fontsize="small")

    if log_variance:
        ok = V > 0
        ax_v.plot(t[ok], V[ok], color="C1", lw=1.2, label="V(t)")
        ax_v.set_yscale("log")
        if ok.any():
            # V can fall to 1e-30 where the posterior collapses; six decades below the peak show the shape
            top = float(V[ok].max())
            ax_v.set_ylim(max(float(V[ok].min()), top * 1e-6) / 2, top * 2)
    else:
        ax_v.plot(t, V, color="C1", lw=1.2, label="V(t)")
    if V_se is not None:
        se = 2 * np.asarray(V_se, dtype=np.float64)
        lo, hi = V - se, V + se
        if log_variance:
            ok = hi > 0
            lo = np.where(lo > 0, lo, np.nan)
            ax_v.fill_between(t[ok], lo[ok], hi[ok], color="C1", alpha=0.25, lw=0, label="±2 s.e.")
        else:
            ax_v.fill_between(t, lo, hi, color="C1", alpha=0.25, lw=0, label="±2 s.e.")
    # the pooled curve of buckets is the share-weighted sum of each bucket's V divided by its mean
    buckets = meta.buckets or ()
    ax_v.set_ylabel(("V(t) / mean, pooled" if buckets else "variance V(t)") + (" (log)" if log_variance else ""))
    ax_v.legend(loc="best", fontsize="small")

    ax_p.stairs(pdf, edges, color="C2", lw=1.2, label="pdf(t), pooled" if buckets else "pdf(t)")
    for b, info in enumerate(buckets[:MAX_DRAWN_BUCKETS]):
        # each bucket's own density, what sample(shape=...) draws from; the pooled one is their mixture
        shape = "x".join(str(v) for v in info.shape)
        ax_p.stairs(np.asarray(arrays[bucket_tensor_name(b, "pdf")], dtype=np.float64), edges, color=f"C{3 + b}",
                    lw=0.8, alpha=0.8, label=f"bucket {shape} ({info.share:.0%}), m = {info.logitnormal_m:+.3f}")
    if V_se is not None:
        # pdf is proportional to V, so the relative standard error of V is that of pdf.
        Vp = np.maximum(V, 0)
        rel = np.divide(np.asarray(V_se, dtype=np.float64), Vp, out=np.zeros_like(Vp), where=Vp > 0)
        lo, hi = (pdf * (1 - 2 * rel)).clip(min=0), pdf * (1 + 2 * rel)
        # step="post" holds each value over its bin; the last value is repeated for the right edge.
        ax_p.fill_between(edges, np.append(lo, lo[-1]), np.append(hi, hi[-1]), step="post",
                          color="C2", alpha=0.25, lw=0, label="±2 s.e.")
    ax_p.axhline(1.0, color="0.5", lw=0.8, ls=":", label="uniform")
    m = meta.logitnormal_m
    if isinstance(m, (int, float)):
        s = float(meta.logitnormal_s)
        fine = np.linspace(0.0, 1.0, 2001)
        ax_p.plot(fine, logitnormal_pdf(fine, float(m), s), color="k", lw=1.0, ls="--",
                  label=f"logit-normal(m = {m:+.3f}, s = {s:.3g})")
    ax_p.set_ylabel("density pdf(t)")
    ax_p.set_xlabel("t   (0 = noise, 1 = data)")
    ax_p.set_xlim(0.0, 1.0)
    ax_p.legend(loc="best", fontsize="small")

    for ax in (ax_s, ax_v, ax_p):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.supxlabel(_wrap(caption(meta), width_px=width, dpi=dpi), fontsize="small")
    return fig
