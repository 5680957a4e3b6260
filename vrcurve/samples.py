"""Choose the M samples, read them, check them, turn them into latents and normalise them (docs/data.md).

The order of the steps, for rows read from any source:

1. choose M distinct indices out of N, uniformly with the seed, sorted (``choose_indices``);
2. read only those rows; with ``skip_bad``, undecodable files are replaced by further seeded draws;
3. refuse NaN or Inf, naming the sample; fingerprint the indices and the values as stored;
4. VAE moments (``--moments``): keep the mean, or draw z = mean + std * eps with eps seeded by
   (seed, sample index) only;
5. the trainer's rescaling z -> (z - shift_factor) * scaling_factor;
6. normalise (``--normalize global|channel|none``) with statistics of the chosen samples.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .buckets import shape_text
from .errors import VRCurveError
from .options import Moments, MomentsKind, Normalize, choice
from .progress import Counter, Reporter
from .readers import Source
from .readers.base import Subset

# diffusers' DiagonalGaussianDistribution clamps the log-variance to this range before exp().
LOGVAR_CLAMP = (-30.0, 20.0)

# Tags that keep the seeded streams of this module apart from each other and from the estimator's noise,
# which is seeded by (seed, source) alone.
_MOMENTS_STREAM = 0x6D6F6D656E7473  # "moments"
_REPLACEMENT_STREAM = 0x736B6970  # "skip"

_NAMED_SKIPS = 5  # skipped files named in the metadata


@dataclass(frozen=True)
class LatentTransform:
    """How stored rows become the latents a trainer feeds its model (docs/data.md, "The trainer's rescaling").

    Attributes:
        moments: None (rows are latents), ``"mean"`` (rows are VAE moments: keep the mean) or ``"sample"``
            (draw z = mean + std * eps, as ``latent_dist.sample()`` does). Moments are the mean and the
            std or log-variance concatenated on the channel axis (axis 0 of a sample): (2C, ...) -> (C, ...).
        moments_kind: the second half of the channels: ``"std"``, ``"logvar"`` (diffusers'
            ``latent_dist.parameters``), or ``"auto"``: logvar when any chosen value there is negative
            (a std cannot be), std otherwise.
        scaling_factor, shift_factor: the trainer's z -> (z - shift_factor) * scaling_factor, with the names
            of diffusers' VAE configs (0.18215 and 0 for SD 1.x/2.x; 1.5305 and 0.0609 for SD3).
    """

    moments: Optional[str] = None
    moments_kind: str = "auto"
    scaling_factor: float = 1.0
    shift_factor: float = 0.0

    def __post_init__(self):
        if self.moments is not None:
            object.__setattr__(self, "moments", choice("--moments", self.moments, Moments))
        object.__setattr__(self, "moments_kind", choice("--moments-kind", self.moments_kind, MomentsKind))
        if not (math.isfinite(self.scaling_factor) and self.scaling_factor != 0):
            raise VRCurveError(f"--scaling-factor must be a finite non-zero number, got {self.scaling_factor}.")
        if not math.isfinite(self.shift_factor):
            raise VRCurveError(f"--shift-factor must be a finite number, got {self.shift_factor}.")


@dataclass(frozen=True)
class Samples:
    """The chosen samples, ready for the estimator, and how they were obtained.

    Attributes:
        x: float32 (M, *shape), after moments, rescaling and normalisation.
        indices: int64 (M,), sorted: the samples' indices in the source (for one bucket, a ``Subset``, their
            indices in the whole source).
        fingerprint: ``fingerprint(indices, rows as stored)``.
        normalization: the mode, its statistics, and the rescaling applied before it.
        moments: None, or {"mode": "mean"|"sample", "kind": "std"|"logvar"|None}.
        skipped: indices of chosen files that could not be decoded and were replaced (``skip_bad``).
        skipped_names: the first few of those, as the source names them.
    """

    x: np.ndarray
    indices: np.ndarray
    fingerprint: str
    normalization: Dict[str, Any]
    moments: Optional[Dict[str, Any]] = None
    skipped: Tuple[int, ...] = ()
    skipped_names: Tuple[str, ...] = ()


def _check_seed(seed: int) -> None:
    if seed < 0:
        raise VRCurveError(f"--seed must be 0 or more, got {seed}.")


def choose_indices(n: int, samples: Optional[int], seed: int) -> np.ndarray:
    """M distinct indices out of N, uniformly with ``seed``, sorted int64 (M,); all of them when ``samples`` is None."""
    _check_seed(seed)
    if samples is None:
        return np.arange(n, dtype=np.int64)
    if samples < 1:
        raise VRCurveError(f"--samples must be at least 1, got {samples}.")
    if samples > n:
        raise VRCurveError(f"the data holds {n} samples, fewer than --samples {samples}; pass --samples {n} or fewer "
                           "(or --samples all).")
    return np.sort(np.random.default_rng(seed).choice(n, size=samples, replace=False)).astype(np.int64)


def fingerprint(indices: np.ndarray, x: np.ndarray) -> str:
    """sha256 (first 16 hex digits) of the chosen indices and their values as stored, in float32.

    Two runs on the same data with the same seed and M give the same fingerprint, whatever the file
    format, the moments or the normalisation.
    """
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(indices, dtype="<i8").tobytes())
    # the array's own buffer: tobytes() would copy all the samples once more (x is float32 and contiguous here)
    h.update(np.ascontiguousarray(x, dtype="<f4"))
    return h.hexdigest()[:16]


def moments_noise(seed: int, index: int, shape: Tuple[int, ...]) -> np.ndarray:
    """eps ~ N(0, I) of shape ``shape`` (float64) for sample ``index``: a function of (seed, index) only.

    So the latent drawn for a sample does not depend on M, on which other samples were chosen, or on the
    order they were read in.
    """
    rng = np.random.default_rng(np.random.SeedSequence([_MOMENTS_STREAM, int(seed), int(index)]))
    return rng.standard_normal(shape)


def apply_moments(x: np.ndarray, indices: np.ndarray, seed: int, mode: str, kind: str,
                  source: Source) -> Tuple[np.ndarray, Optional[str]]:
    """VAE moments (M, 2C, ...) -> latents (M, C, ...), float32.

    Args:
        x: the moments, mean then std or log-variance on axis 1 (the channel axis of each sample).
        indices: (M,) the samples' indices, which seed their noise.
        mode: ``"mean"`` (z = mean) or ``"sample"`` (z = mean + std * eps).
        kind: ``"std"``, ``"logvar"`` or ``"auto"`` (see LatentTransform).
        source: for messages.

    Returns:
        (latents, the kind used: "std" or "logvar" for ``sample``, None for ``mean``).
    """
    if x.ndim < 2:
        raise VRCurveError(f"--moments needs samples with a channel axis holding mean and std/logvar, but "
                           f"{source.name} has samples of shape {x.shape[1:]}; drop --moments.")
    channels = x.shape[1]
    if channels % 2:
        raise VRCurveError(f"--moments needs an even number of channels (mean and std/logvar concatenated on axis 0 "
                           f"of each sample), but {source.name} has {channels} in samples of shape {x.shape[1:]}; "
                           "drop --moments if these are latents already.")
    half = channels // 2
    if mode == "mean":
        return x[:, :half].astype(np.float32), None  # a copy of the mean channels, as float32 they already are
    mean = x[:, :half].astype(np.float64)
    second = x[:, half:].astype(np.float64)
    negative = (second.reshape(len(x), -1) < 0).any(axis=1)
    if kind == "auto":
        kind = "logvar" if negative.any() else "std"
    if kind == "std":
        if negative.any():
            i = int(indices[np.flatnonzero(negative)[0]])
            raise VRCurveError(f"{source.sample_name(i)} has negative values in its std channels, which a standard "
                               "deviation cannot have; pass --moments-kind logvar if they are log-variances.")
        std = second
    else:
        std = np.clip(second, *LOGVAR_CLAMP, out=second)  # exp(0.5 logvar), in place in the float64 copy
        std *= 0.5
        np.exp(std, out=std)
    z = np.empty_like(mean)
    for row, i in enumerate(indices):
        z[row] = moments_noise(seed, int(i), mean.shape[1:])
    z *= std  # z = mean + std * eps, in place: one float64 array holds eps, then z
    z += mean
    return z.astype(np.float32), kind


def normalize(x: np.ndarray, mode: str, name: str = "the data") -> tuple:
    """Normalise a copy: ``global`` (one mean/std), ``channel`` (per sample axis 0) or ``none``.

    Args:
        x: float32 (M, *shape).
        mode: a ``Normalize`` value (global, channel or none).
        name: the source, for messages.

    Returns:
        (normalised x as float32, statistics recorded in the artifact).
    """
    return _normalize(x, choice("--normalize", mode, Normalize, "normalisation"), name)


def _normalize(x: np.ndarray, mode: str, name: str) -> tuple:
    """``normalize`` for a ``mode`` already checked (``load_samples`` checks it before reading)."""
    if mode == "none":
        return x, {"mode": "none"}
    _check_channel_axis(mode, x.shape[1:], name)
    x64 = x.astype(np.float64)
    axes = _stat_axes(mode, x.ndim)
    mean, std = x64.mean(axis=axes, keepdims=True), x64.std(axis=axes, keepdims=True)
    if not (std > 0).all():
        if mode == "global":
            raise VRCurveError(f"{name}: all {len(x)} chosen samples hold the one value {mean.item():g} (variance 0), "
                               "so --normalize cannot scale them; check the data, or pass --normalize none.")
        c = int(np.flatnonzero(~(std.ravel() > 0))[0])
        raise VRCurveError(f"{name}: channel {c} holds one value in all {len(x)} chosen samples (variance 0), so "
                           "--normalize channel cannot scale it; pass --normalize global or none.")
    return _standardized(x64, mean, std), _stats(mode, mean, std)


def _check_channel_axis(mode: str, shape: Tuple[int, ...], name: str) -> None:
    """Refuse ``--normalize channel`` for samples of ``shape`` that have no channel axis (one axis or none)."""
    if mode == "channel" and len(shape) < 2:
        raise VRCurveError(f"{name}: --normalize channel needs samples with a channel axis (shape C x ...), "
                           f"got sample shape {shape}; use --normalize global.")


def _stat_axes(mode: str, ndim: int) -> Optional[Tuple[int, ...]]:
    """The axes of (M, *shape) that the statistics of ``global`` (all) or ``channel`` (all but axis 1) reduce."""
    return None if mode == "global" else (0,) + tuple(range(2, ndim))


def _standardized(x64: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x64 - mean) / std as float32, computed in place in ``x64`` (a float64 copy the caller gives up), so that
    normalising holds one float64 copy of the samples rather than three."""
    x64 -= mean
    x64 /= std
    return x64.astype(np.float32)


def _stats(mode: str, mean: np.ndarray, std: np.ndarray) -> Dict[str, Any]:
    """The statistics recorded in the artifact: floats for ``global``, per-channel lists for ``channel``."""
    if mode == "global":
        return {"mode": "global", "mean": float(mean.item()), "std": float(std.item())}
    return {"mode": "channel", "mean": mean.ravel().tolist(), "std": std.ravel().tolist()}


def _read_counted(source: Source, idx: np.ndarray, counter: Counter) -> Tuple[np.ndarray, List[int]]:
    """``source.read_good(idx)``, in parts of ``source.read_batch`` samples, each counted once read.

    The parts are copied into one array as they come (not concatenated at the end), so that reading in parts
    does not hold the samples twice.
    """
    step = source.read_batch
    out, filled, bad = None, 0, []
    for start in range(0, max(len(idx), 1), step):
        part = idx[start:start + step]
        x, part_bad = source.read_good(part)
        counter.add(len(part))
        if len(part) == len(idx):
            return x, part_bad
        if out is None:
            out = np.empty((len(idx), *x.shape[1:]), dtype=np.float32)
        if len(x) and x.shape[1:] != out.shape[1:]:  # a source read whole, though its files form several buckets
            raise VRCurveError(f"samples differ in shape: {source.sample_name(int(np.delete(part, part_bad)[0]))} "
                               f"holds {x.shape[1:]}, not {out.shape[1:]} like the samples read before it; read the "
                               "samples of one shape at a time (Source.groups), or if the files changed while vrcurve "
                               "ran, run it again.")
        out[filled:filled + len(x)] = x
        filled += len(x)
        bad += [start + b for b in part_bad]
    return out[:filled], bad


def _read(source: Source, idx: np.ndarray, samples: Optional[int], seed: int,
          counter: Counter) -> Tuple[np.ndarray, np.ndarray, List[int]]:
    """Read the rows at ``idx``; replace the ones a ``skip_bad`` source skips by further seeded draws.

    Returns:
        (indices, sorted; their rows; indices of skipped samples).
    """
    x, bad = _read_counted(source, idx, counter)
    if not bad:
        return idx, x, []
    skipped = [int(i) for i in idx[bad]]
    got_idx, got_x = [np.delete(idx, bad)], [x]
    need = len(bad)
    if samples is not None:
        # Replacements come, in a seeded order, from the samples not yet tried; the same data and seed
        # therefore always give the same M samples.
        pool = np.setdiff1d(np.arange(source.n, dtype=np.int64), idx)
        order = np.random.default_rng([_REPLACEMENT_STREAM, seed]).permutation(pool)
        pos = 0
        while need and pos < len(order):
            cand = np.sort(order[pos:pos + need])
            pos += len(cand)
            counter.add(0, more=len(cand))
            xc, badc = _read_counted(source, cand, counter)
            skipped += [int(i) for i in cand[badc]]
            got_idx.append(np.delete(cand, badc))
            got_x.append(xc)
            need -= len(cand) - len(badc)  # the pool may hold fewer candidates than were needed
    idx = np.concatenate(got_idx)
    # With --samples all every decodable sample is used; with M, fewer than M is an error.
    if (need and samples is not None) or len(idx) == 0:
        names = ", ".join(source.sample_name(i) for i in skipped[:2])
        raise VRCurveError(f"only {len(idx)} of the {source.n} samples of {source.name} could be decoded "
                           f"({len(skipped)} skipped, e.g. {names}), fewer than --samples {samples or 'all'}; "
                           f"fix the files or pass --samples {max(len(idx), 1)} or fewer.")
    order = np.argsort(idx)
    return idx[order], np.concatenate(got_x)[order], sorted(skipped)


def load_samples(source: Source, samples: Optional[int], seed: int, normalization: str = "global",
                 transform: Optional[LatentTransform] = None, progress: Optional[Reporter] = None) -> Samples:
    """Choose, read, check, transform and normalise M samples of ``source`` (the steps in the module docstring).

    Args:
        source: an open Source.
        samples: M, or None for all N.
        seed: the sample choice, replacements of skipped files and the moments' noise all derive from it.
        normalization: a ``Normalize`` value (global, channel or none).
        transform: moments and rescaling; None for neither.
        progress: a reporter (``vrcurve.progress``), told of the source's ``read_phase`` (``reading``, or
            ``encoding`` through a VAE) as the samples are read: N of M, replacements of skipped files added.

    Raises:
        VRCurveError: fewer than M samples; a chosen sample unreadable, of another shape, or holding NaN or
            Inf (named); moments that do not fit; data that cannot be normalised.
    """
    normalization = choice("--normalize", normalization, Normalize, "normalisation")  # before any sample is read
    counter = Counter(progress, source.read_phase, source.n if samples is None else samples, source.read_unit)
    return _load(source, samples, seed, normalization, transform, counter)


def _load(source: Source, samples: Optional[int], seed: int, normalization: str,
          transform: Optional[LatentTransform], counter: Counter) -> Samples:
    """``load_samples``, counting the samples read on ``counter`` (which buckets share); ``normalization`` is
    checked by the caller."""
    transform = transform or LatentTransform()
    idx = choose_indices(source.n, samples, seed)
    idx, x, skipped = _read(source, idx, samples, seed, counter)
    bad = ~np.isfinite(x.reshape(len(idx), -1)).all(axis=1)
    if bad.any():
        raise VRCurveError(f"{source.sample_name(int(idx[np.flatnonzero(bad)[0]]))} contains NaN or Inf; clean the "
                           "data or choose other samples with --seed.")
    names = tuple(source.sample_name(i) for i in skipped[:_NAMED_SKIPS])
    if isinstance(source, Subset):
        # One bucket of a larger source: the moments' noise, the fingerprint and the estimator's noise are
        # keyed by the index in the whole data, as for any other sample of it.
        idx, skipped = source.indices[idx], [int(source.indices[i]) for i in skipped]
    fp = fingerprint(idx, x)
    moments = None
    if transform.moments is not None:
        x, kind = apply_moments(x, idx, seed, transform.moments, transform.moments_kind, source)
        moments = {"mode": transform.moments, "kind": kind}
    if transform.scaling_factor != 1.0 or transform.shift_factor != 0.0:
        x64 = x.astype(np.float64)  # one float64 copy, rescaled in place
        x64 -= transform.shift_factor
        x64 *= transform.scaling_factor
        x = x64.astype(np.float32)
        del x64
        if not np.isfinite(x).all():
            raise VRCurveError(f"--scaling-factor {transform.scaling_factor} makes values of {source.name} overflow "
                               "float32; check the factor.")
    x, stats = _normalize(x, normalization, source.name)
    stats = {**stats, "scaling_factor": transform.scaling_factor, "shift_factor": transform.shift_factor}
    return Samples(x=x, indices=idx, fingerprint=fp, normalization=stats, moments=moments, skipped=tuple(skipped),
                   skipped_names=names)


def load_buckets(source: Source, groups: Dict[Tuple[int, ...], np.ndarray], allocation: List[Optional[int]],
                 seed: int, normalization: str = "global", transform: Optional[LatentTransform] = None,
                 progress: Optional[Reporter] = None) -> Tuple[List[Samples], Dict[str, Any]]:
    """Choose, read, check and transform each bucket's samples, and normalise them with pooled statistics.

    Each bucket is a ``Subset`` of ``source``; its M_b samples are chosen with ``seed`` among its own
    samples (``load_samples``), so a bucket's draw does not depend on the other buckets.

    Statistics are pooled, not per bucket: a trainer rescales latents of every resolution with the same
    factors, so a bucket whose values spread less (an upsampled image holds less detail) is fed to the model
    at that smaller scale, and its curve should show it. The pooled statistics are those of the mixture of
    the buckets, each weighted by its share of the data n_b / N (as the pooled density is): mean =
    sum_b w_b mean_b and var = sum_b w_b (var_b + (mean_b - mean)^2), per channel for ``channel``.

    Args:
        source: the whole source.
        groups: {shape: sorted indices} of the buckets to estimate (``Source.groups``, small ones left out).
        allocation: (B,) samples per bucket, in the order of ``groups`` (``vrcurve.buckets.allocate``), or
            None for every sample of the bucket (--samples all).
        seed, normalization, transform: as for ``load_samples``.
        progress: as for ``load_samples``: one count over the samples of all the buckets.

    Returns:
        (one Samples per bucket, normalised; the pooled normalisation statistics recorded in the artifact).
    """
    normalization = choice("--normalize", normalization, Normalize, "normalisation")
    shapes = list(groups)
    first = shapes[0]
    # buckets differ in their spatial (or temporal) size only; axis 0 is the channel axis
    other = [s for s in shapes[1:] if len(s) != len(first) or (len(first) >= 2 and s[0] != first[0])]
    if other:
        raise VRCurveError(f"{source.name} mixes samples of shape {shape_text(first)} and "
                           f"{shape_text(other[0])}, whose channel counts (or number of axes) differ; one model "
                           "cannot train on both: read the latents of one model at a time.")
    counter = Counter(progress, source.read_phase,
                      sum(len(idx) if m is None else m for idx, m in zip(groups.values(), allocation)), source.read_unit)
    loaded = [_load(source.subset(idx), m, seed, "none", transform, counter) for idx, m in zip(groups.values(), allocation)]
    counts = np.array([len(idx) for idx in groups.values()], dtype=np.float64)
    w = counts / counts.sum()
    transform = transform or LatentTransform()
    rescale = {"scaling_factor": transform.scaling_factor, "shift_factor": transform.shift_factor}
    if normalization == "none":
        return loaded, {"mode": "none", "pooled": True, **rescale}
    _check_channel_axis(normalization, first, source.name)
    # per bucket: mean and second central moment over its samples (and spatial axes), per channel or global;
    # the buckets' samples have the same number of axes, so the statistics have one shape
    axes = _stat_axes(normalization, len(first) + 1)
    means, variances = [], []
    for s in loaded:
        x64 = s.x.astype(np.float64)
        means.append(x64.mean(axis=axes, keepdims=True))
        variances.append(x64.var(axis=axes, keepdims=True))
        del x64  # one bucket's float64 copy at a time
    mean = sum(wb * mb for wb, mb in zip(w, means))
    var = sum(wb * (vb + (mb - mean) ** 2) for wb, vb, mb in zip(w, variances, means))
    std = np.sqrt(var)
    if not np.all(std > 0):
        raise VRCurveError(f"{source.name}: the chosen samples of all buckets hold one value (variance 0), so "
                           f"--normalize {normalization} cannot scale them; check the data, or pass --normalize none.")
    for b, s in enumerate(loaded):  # in place, so that a bucket's rows are let go once normalised
        loaded[b] = replace(s, x=_standardized(s.x.astype(np.float64), mean, std))
    return loaded, {**_stats(normalization, mean, std), "pooled": True, **rescale}
