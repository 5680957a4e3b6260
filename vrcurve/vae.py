"""Images through the trainer's VAE: a diffusers ``AutoencoderKL`` encodes the chosen images (docs/data.md,
"Images through a VAE").

A folder of images read with ``--resolution R`` gives float32 (3, R, R) in [-1, 1]; ``EncodedSource`` turns
each batch of chosen images x (B, 3, H, W) into diffusers' ``vae.encode(x).latent_dist.parameters``: the
posterior mean and log-variance concatenated on the channel axis, float32 (B, 2C, H/f, W/f) with
f = 2 ** (len(block_out_channels) - 1). ``samples.apply_moments`` then keeps the mean (``latent_dist.mean``)
or draws mean + std * eps with eps seeded by (seed, sample index), and the rescaling
(z - shift_factor) * scaling_factor follows with the VAE config's factors, as diffusers' training scripts
apply them to ``latent_dist.sample()``.

The VAE is a local folder (``config.json`` and ``diffusion_pytorch_model.safetensors``, as
``save_pretrained`` writes it, or a pipeline folder holding them in ``vae/``) or a repo id already in the
local Hugging Face cache: nothing is ever downloaded. diffusers is optional (``pip install 'vrcurve[vae]'``)
and imported only when a VAE is loaded.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .errors import VRCurveError
from .options import VAEDtype, choice
from .readers.base import Source

CLASS_NAME = "AutoencoderKL"
# The torch dtype of each choice of --vae-dtype (``options.VAEDtype``).
VAE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

_CONFIG = "config.json"
_WEIGHTS = "diffusion_pytorch_model"
# org/name, as the Hub spells repo ids; anything else that is not a folder is a mistyped path.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_INSTALL = "pip install 'vrcurve[vae]'"


def import_diffusers():
    """The diffusers module, or a VRCurveError that says how to install it."""
    try:
        import diffusers
    except ImportError:
        raise VRCurveError(f"encoding images with --vae needs diffusers, which is not installed; run {_INSTALL} "
                           "(or pip install diffusers).") from None
    return diffusers


@dataclass(frozen=True)
class VAEFolder:
    """A diffusers AutoencoderKL on disk, checked without loading it.

    Attributes:
        spec: ``--vae`` as given (a path or a repo id).
        folder: the folder holding ``config.json`` and the weights.
        config: the parsed ``config.json``.
        weights: the weight files ``from_pretrained`` will read.
        variant: the weights' variant (``fp16`` for ``diffusion_pytorch_model.fp16.safetensors``), or None.
    """

    spec: str
    folder: Path
    config: Dict[str, Any]
    weights: Tuple[Path, ...]
    variant: Optional[str] = None

    @property
    def downsample(self) -> int:
        """f: image pixels per latent pixel along each axis (one halving per encoder block but the last)."""
        return 2 ** (len(self.config.get("block_out_channels", (64,))) - 1)

    @property
    def in_channels(self) -> int:
        return int(self.config.get("in_channels", 3))

    @property
    def latent_channels(self) -> int:
        return int(self.config.get("latent_channels", 4))

    @property
    def scaling_factor(self) -> float:
        # AutoencoderKL's own defaults: a config without the key is read as diffusers reads it.
        value = self.config.get("scaling_factor", 0.18215)
        return 0.18215 if value is None else float(value)

    @property
    def shift_factor(self) -> float:
        # SD 1.x/2.x and SDXL configs have no shift_factor (or null): the trainers then subtract nothing.
        value = self.config.get("shift_factor")
        return 0.0 if value is None else float(value)

    def config_hash(self) -> str:
        """sha256 (first 16 hex digits) of the config's model fields, sorted; diffusers' own ``_`` keys
        (version, name or path) are left out, so a copy of the same VAE hashes the same."""
        fields = {k: v for k, v in self.config.items() if not k.startswith("_")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def weights_hash(self) -> str:
        """sha256 (first 16 hex digits) of the weight files' bytes, in order: tells fine-tunes with the same
        config apart (SD's original VAE and sd-vae-ft-mse share one)."""
        h = hashlib.sha256()
        for path in self.weights:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
        return h.hexdigest()[:16]


def _hf_cache_folder(spec: str) -> Optional[Path]:
    """The snapshot folder of repo ``spec`` in the local Hugging Face cache that holds an AutoencoderKL config
    (the repo's root, or its ``vae/`` for a pipeline repo); None when the repo is not cached."""
    try:
        from huggingface_hub import try_to_load_from_cache  # installed with diffusers
    except ImportError:
        raise VRCurveError(f"--vae {spec} names a Hugging Face repo, and finding it in the local cache needs "
                           f"diffusers, which is not installed; run {_INSTALL} (or pip install diffusers).") from None

    for name in (_CONFIG, f"vae/{_CONFIG}"):
        # A cache lookup only: it reads refs/ and snapshots/ and never contacts the Hub.
        found = try_to_load_from_cache(spec, name)
        if isinstance(found, str):
            folder = Path(found).parent
            if name == _CONFIG and _class_name(folder / _CONFIG) != CLASS_NAME and (folder / "vae" / _CONFIG).is_file():
                continue
            return folder
    return None


def _class_name(config: Path) -> Optional[str]:
    try:
        return json.loads(config.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


def _weights(folder: Path) -> Tuple[Tuple[Path, ...], Optional[str]]:
    """The weight files of ``folder`` that ``from_pretrained`` reads, and their variant; ((), None) if none."""
    for suffix in (".safetensors", ".bin"):
        plain = folder / f"{_WEIGHTS}{suffix}"
        if plain.is_file():
            return (plain,), None
        index = folder / f"{_WEIGHTS}{suffix}.index.json"
        if index.is_file():
            return tuple(sorted(folder.glob(f"{_WEIGHTS}-*{suffix}"))), None
    # Only a variant (diffusion_pytorch_model.fp16.safetensors): from_pretrained needs its name.
    for suffix in (".safetensors", ".bin"):
        variants = sorted(folder.glob(f"{_WEIGHTS}.*{suffix}"))
        if variants:
            return (variants[0],), variants[0].name[len(_WEIGHTS) + 1:-len(suffix)]
    return (), None


def locate_vae(spec: str) -> VAEFolder:
    """Find and check the AutoencoderKL that ``--vae`` names, without importing diffusers for a local folder.

    Args:
        spec: a folder holding ``config.json`` and ``diffusion_pytorch_model.safetensors`` (or ``.bin``, a
            sharded index, or a single variant such as ``.fp16.safetensors``); a pipeline folder with them in
            ``vae/``; or a Hugging Face repo id (``org/name``) already in the local cache.

    Raises:
        VRCurveError: a single file; a path that does not exist and no cached repo of that name; no
            ``config.json``; a config of another class than AutoencoderKL; no weights.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        raise VRCurveError(f"--vae {spec} is a single file, but vrcurve loads a diffusers AutoencoderKL folder "
                           "(config.json and diffusion_pytorch_model.safetensors); convert it once with diffusers' "
                           "AutoencoderKL.from_single_file(...).save_pretrained(FOLDER) and pass FOLDER.")
    if path.is_dir():
        folder = path
        if not (path / _CONFIG).is_file() and (path / "vae" / _CONFIG).is_file():
            folder = path / "vae"  # a whole pipeline (model_index.json, unet/, vae/, ...)
        if not (folder / _CONFIG).is_file():
            raise VRCurveError(f"--vae {spec} holds no {_CONFIG} (nor vae/{_CONFIG}), so it is not a diffusers "
                               "AutoencoderKL folder; pass the folder that save_pretrained wrote.")
    elif _REPO_ID.fullmatch(spec):
        folder = _hf_cache_folder(spec)
        if folder is None:
            raise VRCurveError(f"--vae {spec} is not a folder, and no repo {spec} with an AutoencoderKL config is in "
                               "the local Hugging Face cache (vrcurve never downloads); pass a local folder, or "
                               "download the repo first where the Hub can be reached.")
    else:
        raise VRCurveError(f"--vae {spec} does not exist; pass the folder of a diffusers AutoencoderKL (or a repo id "
                           "org/name in the local Hugging Face cache).")
    try:
        config = json.loads((folder / _CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise VRCurveError(f"cannot read {folder / _CONFIG} as JSON ({exc}); the VAE folder may be damaged.") from None
    cls = config.get("_class_name") if isinstance(config, dict) else None
    if cls != CLASS_NAME:
        what = f"a {cls}" if isinstance(cls, str) else "no diffusers model (its config has no _class_name)"
        raise VRCurveError(f"--vae {spec} holds {what}, not an AutoencoderKL; vrcurve encodes with AutoencoderKL "
                           "VAEs (SD 1.x/2.x, SDXL, SD3, FLUX.1), so for another autoencoder write the latents "
                           "with your trainer and pass them with --data.")
    weights, variant = _weights(folder)
    if not weights:
        raise VRCurveError(f"--vae {spec} has a {_CONFIG} but no weights ({_WEIGHTS}.safetensors or .bin) in "
                           f"{folder}; copy the weights next to the config.")
    return VAEFolder(spec=spec, folder=folder, config=config, weights=weights, variant=variant)


def load_vae(located: VAEFolder, device: torch.device, dtype: str = "float32"):
    """The AutoencoderKL of ``located``, in eval mode on ``device`` in ``dtype``, read from disk only.

    Raises:
        VRCurveError: diffusers is missing, or the weights do not load into the configured model.
    """
    dtype = choice("--vae-dtype", dtype, VAEDtype)
    diffusers = import_diffusers()
    try:
        model, info = diffusers.AutoencoderKL.from_pretrained(
            str(located.folder), local_files_only=True, torch_dtype=VAE_DTYPES[dtype], variant=located.variant,
            output_loading_info=True,
            # Without accelerate diffusers would warn and fall back to this anyway; say it, and keep stderr quiet.
            low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None,
        )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise VRCurveError(f"cannot load the AutoencoderKL in {located.folder} ({reason[:300]}); check that its "
                           "weights are complete and belong to its config.json.") from None
    missing = sorted(info.get("missing_keys", []))
    if missing:
        # diffusers only warns and leaves those weights random: an estimate through them would be meaningless.
        raise VRCurveError(f"the weights in {located.folder} lack {len(missing)} of the AutoencoderKL's tensors (e.g. "
                           f"{missing[0]}); check that they belong to its config.json.")
    return model.to(device).eval()


def latent_shape(located: VAEFolder, image_shape: Tuple[int, ...], where: str) -> Tuple[int, ...]:
    """The moments' shape (2C, H/f, W/f) for images of shape (3, H, W); images whose sides f does not
    divide, or of another channel count than the VAE takes, are refused (``where`` names them)."""
    f, (c, h, w) = located.downsample, image_shape
    if c != located.in_channels:
        raise VRCurveError(f"--vae {located.spec} takes images of {located.in_channels} channels, but {where} gives "
                           f"{c}; pass a VAE for RGB images.")
    if h % f or w % f:
        raise VRCurveError(f"{where} has images of {w}x{h}, which the VAE's downsampling factor {f} does not "
                           f"divide; pass --resolution R with R a multiple of {f}, as trainers do.")
    return (2 * located.latent_channels, h // f, w // f)


class EncodedSource(Source):
    """The images of ``parent`` through a VAE: sample i is the VAE's moments of image i.

    A sample is float32 (2C, H/f, W/f): the posterior mean then the log-variance (diffusers'
    ``latent_dist.parameters``, unclamped). Images are read and encoded ``batch_size`` at a time, so memory
    holds one batch of images, not M of them; reading it is the ``encoding`` phase of the progress (counted
    in images, a batch at a time). Messages name the parent's image files.

    Attributes:
        located: the VAE on disk.
        dtype: the dtype it runs in (``float32``, ``float16``, ``bfloat16``).
    """

    read_phase = "encoding"
    read_unit = "images"

    def __init__(self, parent: Source, located: VAEFolder, model, device: torch.device, dtype: str,
                 batch_size: int):
        self.parent, self.located, self.model = parent, located, model
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self.name, self.format, self.n = parent.name, parent.format, parent.n
        self.shape = latent_shape(located, parent.shape, parent.name)

    @property
    def read_batch(self) -> int:
        return self.batch_size  # whole batches: parts of another size would change what the VAE is given

    def groups(self) -> Dict[Tuple[int, ...], np.ndarray]:
        return {latent_shape(self.located, shape, self.name): idx for shape, idx in self.parent.groups().items()}

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Images float32 (B, 3, H, W) in [-1, 1] -> moments float32 (B, 2C, H/f, W/f)."""
        with torch.inference_mode():
            pixels = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, VAE_DTYPES[self.dtype])
            moments = self.model.encode(pixels).latent_dist.parameters
        return moments.float().cpu().numpy()

    def _read(self, indices: np.ndarray, skip: bool) -> Tuple[np.ndarray, List[int]]:
        indices = np.asarray(indices, dtype=np.int64)
        rows, skipped = [], []
        for start in range(0, len(indices), self.batch_size):
            batch = indices[start:start + self.batch_size]
            if skip:
                x, bad = self.parent.read_good(batch)
            else:
                x, bad = self.parent.read(batch), []
            skipped += [start + b for b in bad]
            if len(x):
                moments = self.encode(x)
                finite = np.isfinite(moments.reshape(len(x), -1)).all(axis=1)
                if not finite.all():
                    i = int(np.delete(batch, bad)[np.flatnonzero(~finite)[0]])
                    hint = ("check its weights" if self.dtype == "float32" else
                            "pass --vae-dtype float32 (SDXL's VAE overflows in float16)")
                    raise VRCurveError(f"the VAE gives NaN or Inf for {self.parent.sample_name(i)} in {self.dtype}; "
                                       f"{hint}.")
                rows.append(moments)
        x = np.concatenate(rows) if rows else np.zeros((0, *self.shape), dtype=np.float32)
        return x, skipped

    def read(self, indices):
        return self._read(indices, skip=False)[0]

    def read_good(self, indices):
        return self._read(indices, skip=True)  # the parent skips only when it was opened with skip_bad

    def sample_name(self, index: int) -> str:
        return self.parent.sample_name(index)

    def sources(self) -> List[str]:
        return self.parent.sources()

    @functools.cached_property
    def _vae_metadata(self) -> Dict[str, Any]:
        # Once per source: hashing reads every weight byte, and a run describes its source more than once
        # (the artifact's metadata, the ranks' agreement).
        cfg = self.located
        return {
            "path": cfg.spec, "folder": str(cfg.folder), "class": CLASS_NAME, "config_sha256": cfg.config_hash(),
            "weights_sha256": cfg.weights_hash(), "latent_channels": cfg.latent_channels,
            "block_out_channels": list(cfg.config.get("block_out_channels", [])), "downsample": cfg.downsample,
            "scaling_factor": cfg.scaling_factor, "shift_factor": cfg.shift_factor, "dtype": self.dtype,
            "batch_size": self.batch_size,
        }

    def describe(self) -> Dict[str, Any]:
        return {**self.parent.describe(), "vae": dict(self._vae_metadata)}


def encode_source(source: Source, spec: str, device: torch.device, *, dtype: str = "float32",
                  batch_size: int = 4) -> EncodedSource:
    """Check that ``source`` holds images and ``spec`` names an AutoencoderKL that fits them, then load it.

    Args:
        source: an image folder (``format == "images"``), as ``open_source`` opens it.
        spec: ``--vae``: a folder or a cached repo id (``locate_vae``).
        device: where the VAE runs.
        dtype: ``float32`` (default), ``float16`` or ``bfloat16``.
        batch_size: images per ``encode`` call.

    Raises:
        VRCurveError: the data is not images; the VAE folder is not an AutoencoderKL or does not load; the
            images do not fit it; diffusers is missing (the message names ``pip install 'vrcurve[vae]'``).
    """
    if source.format == "demo":
        raise VRCurveError("--vae encodes RGB images, but the demo data are 1-channel 28x28 images that vrcurve "
                           "estimates on as they are; drop --vae.")
    if source.format != "images":
        raise VRCurveError(f"--vae encodes images, but {source.name} is {source.format} data, which vrcurve takes "
                           "as latents already; drop --vae.")
    if batch_size < 1:
        raise VRCurveError(f"--vae-batch-size must be at least 1, got {batch_size}.")
    dtype = choice("--vae-dtype", dtype, VAEDtype)
    located = locate_vae(spec)
    latent_shape(located, source.shape, source.name)  # before the slow load
    return EncodedSource(source, located, load_vae(located, device, dtype), device, dtype, batch_size)
