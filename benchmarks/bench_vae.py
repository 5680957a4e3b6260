"""Time of encoding M images through vrcurve's --vae path (read, crop/resize, encode), for two AutoencoderKLs.

Randomly initialised VAEs (no weights can be downloaded here; the time of a convolution does not depend on the
values of its weights): ``sd``, SD 1.x/2.x's architecture (block_out_channels 128-256-512-512, two resnets per
block, f = 8), and ``small``, a narrow one of the same depth (32-64-128-128, one resnet per block, f = 8).
Each is written with ``save_pretrained`` and loaded back by ``vrcurve.vae``, as ``--vae FOLDER`` does.

Prints, per VAE: the time to load it, to read the M images alone (decode, center-crop, resize), and to read and
encode them (``load_samples`` on the encoded source, which is what ``vrcurve estimate --vae`` runs before the
estimate), with images per second; the CPU model and torch's thread count first.

    python benchmarks/bench_vae.py --images 200 --size 512 --vae small sd
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_engine import cpu_model  # the CPU's model and cores, as the other benchmarks print it

SD = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)
SMALL = dict(block_out_channels=(32, 64, 128, 128), layers_per_block=1, norm_num_groups=32)


def write_images(folder: Path, count: int, size: int, seed: int = 0) -> None:
    """Photograph-like JPEGs (smooth colour fields plus fine noise), a little larger than ``size`` so that the
    reader's center crop and resize run as they do on real data."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        coarse = rng.uniform(0, 255, (9, 12, 3)).astype(np.uint8)
        img = Image.fromarray(coarse).resize((size * 4 // 3, size), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (size, size * 4 // 3, 3))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def build_vae(folder: Path, arch: dict, size: int) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    blocks = len(arch["block_out_channels"])
    AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
                  latent_channels=4, sample_size=size, scaling_factor=0.18215, **arch).save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200, help="M, images encoded")
    parser.add_argument("--size", type=int, default=512, help="--resolution")
    parser.add_argument("--vae", nargs="+", choices=("small", "sd"), default=["small", "sd"])
    parser.add_argument("--batch-size", type=int, default=4, help="--vae-batch-size")
    parser.add_argument("--dtype", default="float32", help="--vae-dtype")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from vrcurve.readers import open_source
    from vrcurve.samples import LatentTransform, load_samples
    from vrcurve.vae import encode_source

    device = torch.device(args.device)
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads; device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"M = {args.images} images of {args.size}x{args.size}, batch {args.batch_size}, {args.dtype}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "imgs").mkdir()
        write_images(tmp / "imgs", args.images, args.size)
        source = open_source(str(tmp / "imgs"), resolution=args.size)
        started = time.perf_counter()
        load_samples(source, None, 0, "none")
        read_s = time.perf_counter() - started
        print(f"read alone (decode, crop, resize): {read_s:.1f} s")
        for name in args.vae:
            arch = SD if name == "sd" else SMALL
            build_vae(tmp / name, arch, args.size)
            started = time.perf_counter()
            encoded = encode_source(source, str(tmp / name), device, dtype=args.dtype, batch_size=args.batch_size)
            load_s = time.perf_counter() - started
            params = sum(p.numel() for p in encoded.model.encoder.parameters())
            started = time.perf_counter()
            chosen = load_samples(encoded, None, 0, "none", LatentTransform(moments="sample", moments_kind="logvar",
                                                                           scaling_factor=0.18215))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            encode_s = time.perf_counter() - started
            print(f"{name:5s} VAE (blocks {list(arch['block_out_channels'])}, encoder {params / 1e6:.1f} M params): "
                  f"load {load_s:.1f} s; read + encode {args.images} images {encode_s:.1f} s = "
                  f"{args.images / encode_s:.2f} images/s -> latents {tuple(chosen.x.shape)}")


if __name__ == "__main__":
    main()
