"""Small valid artifacts for tests that write one by hand (``read_artifact`` refuses invalid ones)."""

import numpy as np

from vrcurve.artifact import TENSORS
from vrcurve.density import density_from_curve


def valid_tensors(T=10, U=16, seed=0):
    """An artifact's tensors: a density from a random positive curve, the rest random in [0, 1)."""
    rng = np.random.default_rng(seed)
    tensors = {name: rng.random(T) for name in TENSORS}
    density = density_from_curve(rng.random(T) + 0.1, U, uniform_mix=0.0)
    tensors.update(t=(np.arange(T) + 0.5) / T, pdf=density.pdf, cdf=density.cdf, icdf=density.icdf)
    return tensors


def valid_meta(**entries):
    """The metadata every artifact must have (the time convention and the fitted m), plus ``entries``."""
    return {"time_convention": "t0_noise", "logitnormal_m": 0.25, **entries}


def estimate_with(data, out, scheduler, *, overwrite=False, device="cpu", ranks=None, progress=None,
                  notify=None, vae=None, vae_sample="sample", vae_dtype="float32",
                  vae_batch_size=4, **options):
    """``pipeline.run_estimate`` with its option groups built from flat keywords, one per field of
    ``DataOptions``, ``CurveOptions`` and ``EstimateOptions`` (as the flags are), and the VAE's as ``vae_*``."""
    from dataclasses import fields

    from vrcurve.options import CurveOptions, DataOptions, EstimateOptions, OutputOptions, VAEOptions
    from vrcurve.pipeline import run_estimate

    def take(group):
        return {f.name: options.pop(f.name) for f in fields(group) if f.name in options}

    vae_options = None if vae is None else VAEOptions(vae, vae_sample, vae_dtype, vae_batch_size)
    data_options = DataOptions(str(data), vae=vae_options, **take(DataOptions))
    curve = CurveOptions(scheduler, **take(CurveOptions))
    estimate_options = EstimateOptions(curve, **take(EstimateOptions))
    if options:
        raise TypeError(f"no option named {sorted(options)}")
    return run_estimate(data_options, estimate_options, OutputOptions(out, overwrite), device=device, ranks=ranks,
                        progress=progress, notify=notify)
