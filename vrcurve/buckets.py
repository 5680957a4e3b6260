"""Resolution buckets: how M is split over sample shapes, and the resolution-dependent shift line.

Pure numerics: no I/O. Real datasets mix latent shapes (resolution buckets); vrcurve estimates one curve per
shape and pools them (docs/data.md, "Resolution buckets").

**Allocation.** Bucket b holds n_b of the N samples (its share w_b = n_b / N). The M samples of the estimate
are split in proportion to the counts, M_b ~ M w_b, rounded by largest remainders so that they add up to M,
with two bounds: every bucket gets at least ``minimum`` samples (a curve from a handful of samples is mostly
Monte Carlo noise, and the runtime draws that bucket's timesteps from it), and no bucket more than it holds.
Buckets pinned at a bound leave the rest of M to be split in proportion over the others, until none is out
of bounds. A bucket holding fewer than ``minimum`` samples cannot be estimated to that standard: it is
refused (one sentence naming it, its count and the fixes), or left out when the caller asks for that.

**Shift line.** Flux-style dynamic shifting (diffusers' ``calculate_shift``, kohya's ``flux_shift``) draws
the noise level as sigma = sigmoid(s z), z ~ N(0, 1), then shifts it by exp(mu):
sigma' = e^mu sigma / (1 + (e^mu - 1) sigma), so logit(sigma') = logit(sigma) + mu, with mu linear in the
number of latent tokens L: mu(L) = base_shift + (max_shift - base_shift) (L - base_len) / (max_len - base_len).
In vrcurve time (t = 0 noise, t = 1 - sigma) that is logit-normal(-mu, s^2): a bucket whose KS-best
location in the unshifted path time is m_p asks for mu = -m_p. ``fit_shift_line`` fits mu(L) = a + b L to
the buckets' (L_b, -m_p,b) by least squares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .errors import VRCurveError
from .options import MIN_BUCKET

# diffusers' FlowMatchEulerDiscreteScheduler defaults, which kohya's flux_shift hard-codes: mu = 0.5 at 256
# tokens (a 512 x 512 image: 64 x 64 latent, 2 x 2 patches) and 1.15 at 4096 (1024 x 1024).
FLUX_BASE_SEQ_LEN, FLUX_MAX_SEQ_LEN = 256, 4096
FLUX_BASE_SHIFT, FLUX_MAX_SHIFT = 0.5, 1.15


def shape_text(shape: Sequence[int]) -> str:
    """``(4, 64, 96)`` -> ``'4x64x96'``: how messages and tables name a bucket."""
    return "x".join(str(int(s)) for s in shape)


def nearest_bucket(shapes: Sequence[Sequence[int]], shape: Sequence[int]) -> int:
    """The position in ``shapes`` of the bucket for samples of ``shape``: that exact shape, else the one whose
    samples have the nearest number of elements (ties: the first, i.e. the larger bucket, as artifacts list
    their buckets largest first).

    Args:
        shapes: (B,) the buckets' sample shapes, without the batch axis; at least one.
        shape: the samples' shape, without the batch axis (``latents.shape[1:]``).
    """
    shapes = [tuple(int(v) for v in s) for s in shapes]
    key = tuple(int(v) for v in shape)
    if key in shapes:
        return shapes.index(key)
    n = math.prod(key)
    return min(range(len(shapes)), key=lambda b: abs(math.prod(shapes[b]) - n))


def allocate(counts: Sequence[int], samples: Optional[int], minimum: int = MIN_BUCKET) -> List[int]:
    """Split M samples over buckets in proportion to their counts, each within [minimum, count].

    Args:
        counts: (B,) samples in each bucket, n_b >= ``minimum`` (``small_buckets`` finds the others).
        samples: M, or None for every sample of every bucket.
        minimum: the fewest samples any bucket gets (at least 2, what the estimator needs).

    Returns:
        (B,) samples per bucket, adding up to M.

    Raises:
        VRCurveError: M is less than ``minimum`` per bucket, or more than the buckets hold.
    """
    counts = [int(c) for c in counts]
    if samples is None:
        return counts
    B, N = len(counts), sum(counts)
    if samples > N:
        raise VRCurveError(f"the data holds {N} samples, fewer than --samples {samples}; pass --samples {N} or fewer "
                           "(or --samples all).")
    if samples < minimum * B:
        raise VRCurveError(f"--samples {samples} cannot give each of the {B} resolution buckets its minimum of "
                           f"{minimum} samples; pass --samples {minimum * B} or more, or a lower --min-bucket.")
    pinned: dict = {}  # bucket -> its bound
    while True:
        free = [b for b in range(B) if b not in pinned]
        rest = samples - sum(pinned.values())
        weight = sum(counts[b] for b in free)
        share = {b: rest * counts[b] / weight for b in free}
        low = [b for b in free if share[b] < minimum]
        high = [b for b in free if share[b] > counts[b]]
        if not low and not high:
            break
        for b in low:
            pinned[b] = minimum
        for b in high:
            pinned[b] = counts[b]
    out = [pinned.get(b, 0) for b in range(B)]
    floors = {b: int(math.floor(share[b])) for b in free}
    for b in free:
        out[b] = floors[b]
    left = samples - sum(out)
    # largest remainders first; ties to the larger bucket (earlier in the order groups() gives)
    for b in sorted(free, key=lambda b: (-(share[b] - floors[b]), b))[:left]:
        out[b] += 1
    return out


def small_buckets(counts: Sequence[int], minimum: int) -> List[int]:
    """Positions of the buckets holding fewer than ``minimum`` samples."""
    return [b for b, c in enumerate(counts) if int(c) < minimum]


def sequence_length(shape: Sequence[int], patch_size: int = 2) -> int:
    """Latent tokens of one sample: (H / p) (W / p), times any axes between the channels and (H, W).

    Args:
        shape: one sample's shape, (C, H, W) for images or (C, F, H, W) for video latents (frames are not
            patched, as in Flux/Wan/HunyuanVideo's 1 x p x p patches).
        patch_size: p, the transformer's patch side (2 for Flux and SD3).

    Raises:
        VRCurveError: a shape with no spatial axes, or H or W not divisible by p.
    """
    shape = tuple(int(s) for s in shape)
    if patch_size < 1:
        raise VRCurveError(f"--patch-size must be a positive whole number, got {patch_size}.")
    if len(shape) < 3:
        raise VRCurveError(f"a sample of shape {shape_text(shape)} has no (C, H, W) axes, so it has no latent sequence "
                           "length; the shift line needs image or video latents.")
    H, W = shape[-2:]
    if H % patch_size or W % patch_size:
        raise VRCurveError(f"the bucket {shape_text(shape)} is not divisible into {patch_size} x {patch_size} patches; "
                           "pass the model's --patch-size.")
    frames = int(np.prod(shape[1:-2])) if len(shape) > 3 else 1
    return frames * (H // patch_size) * (W // patch_size)


@dataclass(frozen=True)
class ShiftLine:
    """mu(L) = intercept + slope L: the Flux dynamic-shift location as a function of latent tokens L.

    mu is the logit shift of the noise level sigma (shift = exp(mu)); in vrcurve time (t = 0 noise) the
    timestep density of a bucket with L tokens is logit-normal(-mu(L), s^2) in the unshifted path time.

    Attributes:
        intercept, slope: the line.
        lengths: (B,) the buckets' L; mus: (B,) their mu = -m_p; residual: root-mean-square distance of the
            mus to the line.
    """

    intercept: float
    slope: float
    lengths: Tuple[int, ...]
    mus: Tuple[float, ...]
    residual: float

    def mu(self, seq_len) -> np.ndarray:
        """mu at ``seq_len`` tokens (a number or an array)."""
        return self.intercept + self.slope * np.asarray(seq_len, dtype=np.float64)

    def endpoints(self, base_len: int = FLUX_BASE_SEQ_LEN, max_len: int = FLUX_MAX_SEQ_LEN) -> Tuple[float, float]:
        """(base_shift, max_shift): mu at ``base_len`` and ``max_len`` tokens, the scheduler-config form."""
        return float(self.mu(base_len)), float(self.mu(max_len))


def fit_shift_line(lengths: Sequence[int], m_path: Sequence[float]) -> ShiftLine:
    """Least-squares line mu(L) = a + b L through the buckets' (L_b, -m_p,b), each bucket counted once.

    Args:
        lengths: (B,) latent tokens per bucket (``sequence_length``).
        m_path: (B,) each bucket's KS-best logit-normal location in the unshifted path time (t = 0 noise).

    Raises:
        VRCurveError: fewer than two distinct lengths (a line needs two).
    """
    L = np.asarray(lengths, dtype=np.float64)
    mu = -np.asarray(m_path, dtype=np.float64)
    if len(np.unique(L)) < 2:
        raise VRCurveError(f"the dynamic-shift line needs buckets of at least two latent sequence lengths, but this "
                           f"artifact has {len(np.unique(L))}; estimate on data of several resolutions.")
    slope, intercept = np.polyfit(L, mu, 1)
    residual = float(np.sqrt(np.mean((intercept + slope * L - mu) ** 2)))
    return ShiftLine(intercept=float(intercept), slope=float(slope), lengths=tuple(int(v) for v in L),
                     mus=tuple(float(v) for v in mu), residual=residual)
