"""The runtime side: load an artifact and draw training timesteps from it (docs/integration.md).

This module is what training code imports; it depends on torch, numpy and safetensors only.

    t = vrcurve.load("vr.safetensors").sample(batch_size, device=x.device)

t follows the artifact's convention, t = 0 noise and t = 1 data, unless ``.flip()`` was called.

An artifact estimated on several latent shapes (resolution buckets) holds a density per bucket beside the
pooled one; ``sample(n, shape=latents.shape[1:])`` draws from the bucket of that shape:

    t = vr.sample(latents.shape[0], shape=latents.shape[1:], device=latents.device)
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .artifact import PathLike, read_artifact
from .buckets import nearest_bucket
from .density import invert_cdf
from .errors import VRCurveError
from .meta import T0_NOISE, T1_NOISE, ArtifactMeta

Shape = Tuple[int, ...]


class VRDistribution:
    """A piecewise-constant density on [0, 1] with its CDF and inverse-CDF table.

    Args:
        pdf: (T,) density on T equal bins.
        cdf: (T + 1,) CDF on the bin edges.
        icdf: (U + 1,) inverse CDF at u = j / U, for tools without vrcurve (linear interpolation in it is
            accurate to 1/U in u); ``sample`` and ``icdf`` here invert the CDF exactly.
        convention: ``"t0_noise"`` (vrcurve, flow_matching, SiT) or ``"t1_noise"`` (kohya, OneTrainer, ...).
        meta: the artifact's metadata (an ``ArtifactMeta``, or a mapping of its entries).
        arrays: the artifact's tensors (float32 numpy arrays), for inspection.
        buckets: {sample shape: (share of the data, that bucket's VRDistribution)}, largest bucket first; None
            for an artifact of one shape (the one bucket is then this distribution itself).

    Every method that draws or evaluates takes ``shape=``: the sample shape (without the batch axis) whose
    bucket to use; None (the default) uses the pooled density.
    """

    def __init__(self, pdf, cdf, icdf, *, convention: str = T0_NOISE, meta: Optional[Mapping[str, Any]] = None,
                 arrays: Optional[Dict[str, np.ndarray]] = None,
                 buckets: Optional[Dict[Shape, Tuple[float, "VRDistribution"]]] = None):
        self._pdf = torch.as_tensor(np.asarray(pdf, dtype=np.float64))
        self._cdf = torch.as_tensor(np.asarray(cdf, dtype=np.float64))
        self._icdf = torch.as_tensor(np.asarray(icdf, dtype=np.float64))
        self.convention = convention
        self.meta: ArtifactMeta = ArtifactMeta.coerce(meta)
        self.arrays: Dict[str, np.ndarray] = dict(arrays or {})
        self._on: Dict[torch.device, tuple] = {}
        self._buckets = dict(buckets) if buckets else None

    @property
    def timesteps(self) -> int:
        return self._pdf.shape[0]

    @property
    def logitnormal_m(self) -> float:
        """The KS-best logit-normal location in this object's convention (negated by ``flip``)."""
        m = float(self.meta.logitnormal_m)
        return m if self.convention == T0_NOISE else -m

    @property
    def logitnormal_s(self) -> float:
        return float(self.meta.logitnormal_s)

    @property
    def icdf_table(self) -> torch.Tensor:
        """The (U + 1,) inverse-CDF table at u = j / U, as stored in the artifact."""
        return self._icdf

    @property
    def buckets(self) -> Dict[Shape, float]:
        """{sample shape: share of the data}, largest bucket first; one entry (share 1) for one shape."""
        if self._buckets is None:
            return {tuple(int(v) for v in self.meta.shape or ()): 1.0}
        return {shape: share for shape, (share, _) in self._buckets.items()}

    def bucket(self, shape: Sequence[int]) -> "VRDistribution":
        """The distribution of the bucket of samples of ``shape`` (e.g. ``latents.shape[1:]``).

        The bucket of that exact shape; for a shape the data did not have, the bucket whose samples have the
        nearest number of elements (ties: the larger bucket). An artifact of one shape returns itself.
        """
        if self._buckets is None:
            return self
        try:
            key = tuple(int(v) for v in shape)
        except (TypeError, ValueError):
            raise VRCurveError(f"shape= must be a sequence of whole numbers such as latents.shape[1:], "
                               f"got {shape!r}.") from None
        shapes = list(self._buckets)  # largest bucket first, as stored
        return self._buckets[shapes[nearest_bucket(shapes, key)]][1]

    def _tables(self, device: torch.device):
        if device not in self._on:
            self._on[device] = (self._pdf.to(device), self._cdf.to(device))
        return self._on[device]

    def icdf(self, u, *, shape: Optional[Sequence[int]] = None) -> torch.Tensor:
        """The exact inverse of the piecewise-linear CDF at u in [0, 1] (never inside an empty bin)."""
        if shape is not None:
            return self.bucket(shape).icdf(u)
        u = torch.as_tensor(u, dtype=torch.float64)
        _, cdf = self._tables(u.device)
        return invert_cdf(cdf, u.clamp(0.0, 1.0))

    def sample(self, n: int, *, shape: Optional[Sequence[int]] = None, generator: Optional[torch.Generator] = None,
               device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Draw n timesteps in [0, 1], shape (n,), on ``device`` (the generator's device by default).

        ``shape``: the samples' shape without the batch axis (``latents.shape[1:]``): draw from that resolution
        bucket's density (``bucket``); None draws from the pooled density.
        """
        if shape is not None:
            return self.bucket(shape).sample(n, generator=generator, device=device, dtype=dtype)
        gen_device = generator.device if generator is not None else torch.device(device or "cpu")
        u = torch.rand(n, generator=generator, device=gen_device, dtype=torch.float64)
        t = self.icdf(u)
        return t.to(device=device if device is not None else gen_device, dtype=dtype)

    def pdf(self, t, *, shape: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Density at t (0 outside [0, 1])."""
        if shape is not None:
            return self.bucket(shape).pdf(t)
        t = torch.as_tensor(t, dtype=torch.float64)
        pdf, _ = self._tables(t.device)
        T = pdf.shape[0]
        k = (t * T).floor().clamp(0, T - 1).long()
        inside = (t >= 0) & (t <= 1)
        return torch.where(inside, pdf[k], torch.zeros_like(t))

    def cdf(self, t, *, shape: Optional[Sequence[int]] = None) -> torch.Tensor:
        """CDF at t, linear inside each bin."""
        if shape is not None:
            return self.bucket(shape).cdf(t)
        t = torch.as_tensor(t, dtype=torch.float64)
        _, cdf = self._tables(t.device)
        T = cdf.shape[0] - 1
        pos = t.clamp(0.0, 1.0) * T
        k = pos.floor().clamp(max=T - 1).long()
        return cdf[k] + (pos - k) * (cdf[k + 1] - cdf[k])

    def weights(self, t, *, shape: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Importance weights 1 / pdf(t): multiply per-example losses by them for the uniform-t objective.
        With ``shape``, the density of the bucket the timesteps were drawn from.

        E_{t ~ pi}[weights(t)] = 1. With the artifact's density floor lambda (``meta.uniform_mix``; ``--uniform-mix``,
        0.02 by default) pdf >= lambda everywhere, so the weights are at most 1 / lambda; an artifact written with
        ``--uniform-mix 0`` may have empty bins, where the weight is infinite (such t are never drawn).
        """
        return 1.0 / self.pdf(t, shape=shape)

    def sample_indices(self, n: int, num_train_timesteps: int = 1000, *, shape: Optional[Sequence[int]] = None,
                       generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
        """Integer timesteps for discrete-time trainers (DDPM/DiT: index 0 is almost clean, N - 1 pure noise).

        The noise level (1 - t in vrcurve time) is drawn from this density and binned into N indices: index i
        covers the noise levels [i / N, (i + 1) / N), the bin whose midpoint t_i = 1 - (i + 0.5) / N is where the
        ``scaled_linear`` and ``ddpm_linear`` schedulers equal alphas_cumprod[i].
        """
        t = self.sample(n, shape=shape, generator=generator, device=device, dtype=torch.float64)
        noise_level = 1.0 - t if self.convention == T0_NOISE else t
        return (noise_level * num_train_timesteps).floor().clamp(0, num_train_timesteps - 1).long()

    def flip(self) -> "VRDistribution":
        """The same distribution for 1 - t: for trainers where t = 1 is noise (and back)."""
        other = T1_NOISE if self.convention == T0_NOISE else T0_NOISE
        buckets = None if self._buckets is None else {
            shape: (share, dist.flip()) for shape, (share, dist) in self._buckets.items()}
        return VRDistribution(
            self._pdf.flip(0).numpy(), (1.0 - self._cdf.flip(0)).numpy(), (1.0 - self._icdf.flip(0)).numpy(),
            convention=other, meta=self.meta, arrays=self.arrays, buckets=buckets,
        )

    def __repr__(self) -> str:
        buckets = "" if self._buckets is None else f", buckets={len(self._buckets)}"
        return (f"VRDistribution(T={self.timesteps}, convention={self.convention!r}, "
                f"scheduler={self.meta.scheduler}, logitnormal_m={self.meta.logitnormal_m}{buckets})")


def load(path: PathLike) -> VRDistribution:
    """Load and verify a vrcurve artifact (format, version, checksum) and return its distribution."""
    artifact = read_artifact(path)
    arrays, meta = artifact
    buckets = None
    if meta.buckets:
        buckets = {}
        for b, info in enumerate(meta.buckets):
            own = artifact.bucket(b)
            dist = VRDistribution(own.tensors["pdf"], own.tensors["cdf"], own.tensors["icdf"],
                                  convention=meta.time_convention, meta=own.meta, arrays=own.tensors)
            buckets[info.shape] = (float(info.share), dist)
    return VRDistribution(arrays["pdf"], arrays["cdf"], arrays["icdf"], convention=meta.time_convention, meta=meta,
                          arrays=arrays, buckets=buckets)
