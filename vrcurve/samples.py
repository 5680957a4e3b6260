"""Choose the M samples, read them, check them and normalise them (SPEC §5)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np

from .errors import VRCurveError
from .readers import Source

NORMALIZATIONS = ("global", "channel", "none")


@dataclass(frozen=True)
class Samples:
    """The chosen samples, normalised, as float32 of shape (M, *shape), with how they were obtained."""

    x: np.ndarray
    indices: np.ndarray
    fingerprint: str
    normalization: Dict[str, Any]


def choose_indices(n: int, samples: Optional[int], seed: int) -> np.ndarray:
    """M distinct indices out of N, uniformly with ``seed``, sorted; all of them when ``samples`` is None."""
    if samples is None:
        return np.arange(n)
    if samples < 1:
        raise VRCurveError(f"--samples must be at least 1, got {samples}.")
    if samples > n:
        raise VRCurveError(f"the data holds {n} samples, fewer than --samples {samples}; pass --samples {n} or fewer.")
    return np.sort(np.random.default_rng(seed).choice(n, size=samples, replace=False))


def fingerprint(indices: np.ndarray, x: np.ndarray) -> str:
    """sha256 (first 16 hex digits) of the chosen indices and their raw float32 values."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(indices, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(x, dtype="<f4").tobytes())
    return h.hexdigest()[:16]


def normalize(x: np.ndarray, mode: str, name: str = "the data") -> tuple:
    """Normalise in place of a copy: ``global`` (one mean/std), ``channel`` (per sample axis 0) or ``none``.

    Returns (normalised x, statistics recorded in the artifact).
    """
    if mode not in NORMALIZATIONS:
        raise VRCurveError(f"unknown normalisation {mode!r}; choose one of {', '.join(NORMALIZATIONS)}.")
    x64 = x.astype(np.float64)
    if mode == "none":
        return x, {"mode": "none"}
    if mode == "global":
        mean, std = float(x64.mean()), float(x64.std())
        if not std > 0:
            raise VRCurveError(f"{name}: the chosen samples are constant (std 0), so they cannot be normalised; "
                               "check the data or pass --normalize none.")
        return ((x64 - mean) / std).astype(np.float32), {"mode": "global", "mean": mean, "std": std}
    if x.ndim < 3:
        raise VRCurveError(f"{name}: --normalize channel needs samples with a channel axis (shape C x ...), "
                           f"got sample shape {x.shape[1:]}; use --normalize global.")
    axes = (0,) + tuple(range(2, x.ndim))
    mean, std = x64.mean(axis=axes, keepdims=True), x64.std(axis=axes, keepdims=True)
    if not (std > 0).all():
        c = int(np.flatnonzero(~(std.ravel() > 0))[0])
        raise VRCurveError(f"{name}: channel {c} is constant over the chosen samples (std 0); pass --normalize global or none.")
    stats = {"mode": "channel", "mean": mean.ravel().tolist(), "std": std.ravel().tolist()}
    return ((x64 - mean) / std).astype(np.float32), stats


def load_samples(source: Source, samples: Optional[int], seed: int, normalization: str = "global") -> Samples:
    """Choose, read, check and normalise M samples of ``source``."""
    idx = choose_indices(source.n, samples, seed)
    x = source.read(idx)
    bad = ~np.isfinite(x.reshape(len(idx), -1)).all(axis=1)
    if bad.any():
        raise VRCurveError(f"{source.name}: sample {int(idx[np.flatnonzero(bad)[0]])} contains NaN or Inf; "
                           "clean the data or choose other samples with --seed.")
    fp = fingerprint(idx, x)
    x, stats = normalize(x, normalization, source.name)
    return Samples(x=x, indices=idx, fingerprint=fp, normalization=stats)
