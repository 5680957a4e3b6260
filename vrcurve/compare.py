"""Compare artifacts: KS distance between their densities and the difference of their logit-normal fits.

For pipelines that keep a cached curve: re-estimate on today's data, compare with the cache, and fail when
the densities moved by more than a threshold (``vrcurve compare cached.safetensors new.safetensors
--fail-above 0.02``). Time runs from t = 0 (noise) to t = 1 (data) in each artifact's own time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from .artifact import bucket_tensor_name
from .density import ks_between_cdfs
from .export import artifact_shift, path_location
from .meta import ArtifactMeta


@dataclass(frozen=True)
class Compared:
    """One artifact, against the first (the reference).

    Attributes:
        path: the artifact's path, as given.
        scheduler: its scheduler metadata.
        samples, noise, dim, timesteps: M, K, d and T.
        m, s: its logit-normal fit in its own time; m_path: the location in the path's unshifted time.
        ks: KS distance of its density to the reference's (0 for the reference).
        dm: m - m of the reference.
        normalization: its ``normalization`` metadata (mode, statistics, rescaling factors).
    """

    path: str
    scheduler: Any
    samples: Any
    noise: Any
    dim: Any
    timesteps: int
    m: float
    s: float
    m_path: float
    ks: float
    dm: float
    normalization: Any = None

    def as_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


Read = Tuple[str, Mapping[str, np.ndarray], ArtifactMeta]  # (path, tensors, metadata) of one artifact


def compare(artifacts: Sequence[Read]) -> List[Compared]:
    """Compare each (path, arrays, meta) with the first; returns one row per artifact, the first included."""
    ref_cdf = np.asarray(artifacts[0][1]["cdf"], dtype=np.float64)
    ref_m = float(artifacts[0][2].logitnormal_m)
    rows = []
    for path, arrays, meta in artifacts:
        m = float(meta.logitnormal_m)
        rows.append(Compared(
            path=str(path), scheduler=meta.scheduler, samples=meta.samples, noise=meta.noise, dim=meta.dim,
            timesteps=int(np.asarray(arrays["pdf"]).shape[0]), m=m, s=float(meta.logitnormal_s),
            m_path=path_location(m, artifact_shift(meta)), ks=ks_between_cdfs(ref_cdf, arrays["cdf"]), dm=m - ref_m,
            normalization=meta.normalization,
        ))
    return rows


def differing_schedulers(rows: Sequence[Compared]) -> List[str]:
    """Paths whose scheduler differs from the reference's: their times are different variables."""
    return [r.path for r in rows[1:] if r.scheduler != rows[0].scheduler]


@dataclass(frozen=True)
class BucketCompared:
    """One resolution bucket of one artifact, against the reference's bucket of the same shape.

    Attributes:
        path: the artifact's path; shape: the bucket's sample shape.
        share: the bucket's share of that artifact's data.
        m: the bucket's logit-normal location in its artifact's time; ks: KS distance of the bucket's density
            to the reference bucket's (0 for the reference); dm: m - the reference bucket's m.
    """

    path: str
    shape: Tuple[int, ...]
    share: float
    m: float
    ks: float
    dm: float

    def as_dict(self) -> Dict[str, Any]:
        return {**self.__dict__, "shape": list(self.shape)}


def compare_buckets(artifacts: Sequence[Read]) -> List[BucketCompared]:
    """For each resolution bucket of the reference (the first artifact), the same-shape bucket of every
    artifact that has one: the reference's row, then the others'. An artifact of one shape is its own bucket
    of that shape (share 1). Empty when the reference has no buckets."""

    def buckets(arrays, meta: ArtifactMeta, whole: bool = True):
        """{shape: (share, m, cdf)} of the artifact's buckets."""
        if meta.buckets:
            return {b.shape: (float(b.share), float(b.logitnormal_m), arrays[bucket_tensor_name(i, "cdf")])
                    for i, b in enumerate(meta.buckets)}
        if whole and meta.shape is not None:
            return {meta.shape: (1.0, float(meta.logitnormal_m), arrays["cdf"])}
        return {}

    ref = buckets(artifacts[0][1], artifacts[0][2], whole=False)
    others = [(str(path), buckets(arrays, meta)) for path, arrays, meta in artifacts]
    rows = []
    for shape, (_, ref_m, ref_cdf) in ref.items():
        for path, own in others:
            if shape in own:
                share, m, cdf = own[shape]
                rows.append(BucketCompared(path=path, shape=shape, share=share, m=m, ks=ks_between_cdfs(ref_cdf, cdf),
                                           dm=m - ref_m))
    return rows


def normalization_text(norm: Any, *, short: bool = False) -> str:
    """An artifact's ``normalization`` metadata in words: the mode, its statistics, and the trainer's rescaling
    (z - shift_factor) * scaling_factor when it is not the identity. ``short``: without the statistics."""
    if not isinstance(norm, Mapping):
        return "?" if norm is None else str(norm)
    mode = str(norm.get("mode", "?"))
    text = mode
    if not short and mode == "global" and "mean" in norm:
        text += f" (mean {float(norm['mean']):.4g}, std {float(norm['std']):.4g})"
    elif not short and mode == "channel" and isinstance(norm.get("mean"), list):
        text += f" ({len(norm['mean'])} channels)"
    scale, shift = float(norm.get("scaling_factor", 1.0)), float(norm.get("shift_factor", 0.0))
    if scale != 1.0 or shift != 0.0:
        text += f", (z - {shift:g}) * {scale:g}"
        if mode != "none" and not short:
            text += " (undone by the normalisation)"
    return text


def differing_normalizations(rows: Sequence[Compared]) -> List[str]:
    """Paths whose data were normalised or rescaled differently from the reference's (mode or factors)."""
    return [r.path for r in rows[1:] if normalization_text(r.normalization, short=True)
            != normalization_text(rows[0].normalization, short=True)]
