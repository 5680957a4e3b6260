"""Images through a diffusers AutoencoderKL (--vae): the estimate equals the estimate of the same latents.

A tiny AutoencoderKL is randomly initialised with a seed and written with ``save_pretrained``, so the real
loading code (config, weights, local cache) runs; no pretrained weights are needed.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import vrcurve
from vrcurve.artifact import read_artifact
from vrcurve.cli import app
from vrcurve.readers import open_source
from vrcurve.samples import LOGVAR_CLAMP, moments_noise

diffusers = pytest.importorskip("diffusers")
Image = pytest.importorskip("PIL.Image")

runner = CliRunner()
N, R = 12, 8  # images, and the --resolution they are cropped and resized to
SCALE, SHIFT = 0.5, 0.25  # the tiny VAE's config factors
SMALL = ["-M", "8", "-K", "4", "-T", "20", "--seed", "3", "--bootstrap", "0", "--normalize", "none"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def tiny_autoencoder(seed=0, **config):
    """An AutoencoderKL with two encoder blocks (f = 2), 4 latent channels and few weights, seeded."""
    torch.manual_seed(seed)
    kw = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
              up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
              latent_channels=4, norm_num_groups=4, sample_size=R, scaling_factor=SCALE, shift_factor=SHIFT)
    return diffusers.AutoencoderKL(**{**kw, **config}).eval()


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae") / "tiny-vae"
    tiny_autoencoder().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """N RGB images of 12 x 10 pixels, as a dataset folder holds them (cropped and resized to R x R when read)."""
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(7)
    for i in range(N):
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def moments(images, vae_dir):
    """diffusers' latent_dist (mean, logvar as float32 (N, 4, 4, 4)) of every image, encoded here one at a time."""
    pixels = open_source(str(images), resolution=R).read(np.arange(N))
    model = diffusers.AutoencoderKL.from_pretrained(vae_dir).eval()
    with torch.no_grad():
        dists = [model.encode(torch.from_numpy(pixels[i:i + 1])).latent_dist for i in range(N)]
    return np.concatenate([d.mean.numpy() for d in dists]), np.concatenate([d.logvar.numpy() for d in dists])


def latents(moments, mode, seed=3, scale=SCALE, shift=SHIFT):
    """The trainer's model input (z - shift) * scale, z = latent_dist.mean or mean + std * eps (float64 math),
    eps drawn for each image from its index, as --moments sample does."""
    mean, logvar = (m.astype(np.float64) for m in moments)
    z = mean
    if mode == "sample":
        eps = np.stack([moments_noise(seed, i, mean.shape[1:]) for i in range(N)])
        z = mean + np.exp(0.5 * np.clip(logvar, *LOGVAR_CLAMP)) * eps
    return ((z.astype(np.float32).astype(np.float64) - shift) * scale).astype(np.float32)


def estimate(tmp_path, name, *args):
    out = tmp_path / f"{name}.safetensors"
    res = run("estimate", *SMALL, "-o", out, "-q", *args)
    assert res.exit_code == 0, res.output
    return read_artifact(out)


def assert_same_curve(a, b):
    # The same latents give the same curve; the encoder's float32 convolutions in batches of 4 (vrcurve) and
    # of 1 (here) may round differently in the last bit, hence a tolerance far below any real change.
    for k in ("S", "variance", "pdf", "cdf", "icdf"):
        np.testing.assert_allclose(a[0][k], b[0][k], rtol=1e-4, atol=1e-7, err_msg=k)


# ---- the estimate through the VAE is the estimate of its latents ----------------------------------------------

@pytest.mark.parametrize("mode", ["mean", "sample"])
def test_estimate_through_the_vae_equals_the_estimate_of_its_latents(tmp_path, images, vae_dir, moments, mode):
    np.save(tmp_path / "z.npy", latents(moments, mode))
    ref = estimate(tmp_path, "ref", "--data", tmp_path / "z.npy")
    got = estimate(tmp_path, "vae", "--data", images, "--resolution", R, "--vae", vae_dir, "--vae-sample", mode)
    assert_same_curve(got, ref)
    meta = got[1]
    assert meta["shape"] == [4, R // 2, R // 2] and meta["dim"] == 64 and meta["data"]["shape"] == [3, R, R]
    assert meta["normalization"] == {"mode": "none", "scaling_factor": SCALE, "shift_factor": SHIFT}
    assert meta["data"]["moments"] == {"mode": mode, "kind": "logvar" if mode == "sample" else None}
    vae = meta["data"]["vae"]
    assert (vae["class"], vae["path"], vae["dtype"], vae["sample"], vae["downsample"]) == (
        "AutoencoderKL", str(vae_dir), "float32", mode, 2)
    assert (vae["scaling_factor"], vae["shift_factor"]) == (SCALE, SHIFT)
    assert vae["scaling_factor_from"] == vae["shift_factor_from"] == "config"
    config = {k: v for k, v in json.loads((vae_dir / "config.json").read_text()).items() if not k.startswith("_")}
    import hashlib

    assert vae["config_sha256"] == hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    assert vae["weights_sha256"] == hashlib.sha256(
        (vae_dir / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()[:16]


def test_vae_sample_is_the_moments_files_sample(tmp_path, images, vae_dir, moments):
    # --vae-sample sample draws the noise --moments sample draws for the same image index and seed, so the
    # estimate equals that of the VAE's moments stored in a file (mean, then log-variance).
    np.save(tmp_path / "m.npy", np.concatenate(moments, axis=1))
    ref = estimate(tmp_path, "ref", "--data", tmp_path / "m.npy", "--moments", "sample", "--moments-kind", "logvar",
                   "--scaling-factor", SCALE, "--shift-factor", SHIFT)
    got = estimate(tmp_path, "vae", "--data", images, "--resolution", R, "--vae", vae_dir, "--vae-batch-size", 3)
    assert_same_curve(got, ref)
    assert got[1]["data"]["vae"]["batch_size"] == 3 and got[1]["data"]["vae"]["sample"] == "sample"


def test_flags_override_the_config_factors(tmp_path, images, vae_dir, moments):
    # An explicit --shift-factor 0 wins over the config's 0.25, like any other value.
    np.save(tmp_path / "z.npy", latents(moments, "mean", scale=2.0, shift=0.0))
    ref = estimate(tmp_path, "ref", "--data", tmp_path / "z.npy")
    got = estimate(tmp_path, "vae", "--data", images, "--resolution", R, "--vae", vae_dir, "--vae-sample", "mean",
                   "--scaling-factor", 2, "--shift-factor", 0)
    assert_same_curve(got, ref)
    meta = got[1]
    assert (meta["normalization"]["scaling_factor"], meta["normalization"]["shift_factor"]) == (2.0, 0.0)
    assert meta["data"]["vae"]["scaling_factor_from"] == "--scaling-factor"
    assert meta["data"]["vae"]["shift_factor_from"] == "--shift-factor"
    assert meta["data"]["vae"]["scaling_factor"] == SCALE  # the config's, recorded beside the one used


def test_a_config_without_shift_factor_shifts_by_zero(tmp_path, images):
    # SD 1.x/2.x and SDXL configs write shift_factor null (or none at all).
    folder = tmp_path / "sdxl-like"
    tiny_autoencoder(scaling_factor=0.13025, shift_factor=None).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["shift_factor"] is None
    meta = estimate(tmp_path, "a", "--data", images, "--resolution", R, "--vae", folder)[1]
    assert (meta["normalization"]["scaling_factor"], meta["normalization"]["shift_factor"]) == (0.13025, 0.0)
    del config["shift_factor"]
    (folder / "config.json").write_text(json.dumps(config))
    assert estimate(tmp_path, "b", "--data", images, "--resolution", R, "--vae", folder)[1]["normalization"][
        "shift_factor"] == 0.0


def test_a_pipeline_folder_and_the_local_hub_cache(tmp_path, images, vae_dir, monkeypatch):
    ref = estimate(tmp_path, "ref", "--data", images, "--resolution", R, "--vae", vae_dir)
    # A whole pipeline: model_index.json and the VAE in vae/.
    pipe = tmp_path / "pipeline"
    shutil.copytree(vae_dir, pipe / "vae")
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    got = estimate(tmp_path, "pipe", "--data", images, "--resolution", R, "--vae", pipe)
    np.testing.assert_array_equal(got[0]["pdf"], ref[0]["pdf"])
    assert got[1]["data"]["vae"]["folder"] == str(pipe / "vae")
    # The same pipeline as a repo in the Hugging Face cache (refs/main -> snapshots/<commit>/), found offline.
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny-pipeline"
    shutil.copytree(pipe, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    got = estimate(tmp_path, "hub", "--data", images, "--resolution", R, "--vae", "someone/tiny-pipeline")
    np.testing.assert_array_equal(got[0]["pdf"], ref[0]["pdf"])
    assert got[1]["data"]["vae"]["path"] == "someone/tiny-pipeline"
    assert got[1]["data"]["vae"]["config_sha256"] == ref[1]["data"]["vae"]["config_sha256"]
    res = run("estimate", *SMALL, "--data", images, "--resolution", R, "--vae", "someone/other-vae",
              "-o", tmp_path / "x.safetensors")
    assert res.exit_code == 1 and "no repo someone/other-vae with an AutoencoderKL config is in the local Hugging " \
                                  "Face cache (vrcurve never downloads)" in res.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_skip_bad_replaces_an_undecodable_image(tmp_path, images, vae_dir):
    folder = tmp_path / "imgs"
    shutil.copytree(images, folder)
    (folder / "005.png").write_bytes(b"not a png")
    meta = estimate(tmp_path, "a", "--data", folder, "--resolution", R, "--vae", vae_dir, "--skip-bad", "-M", N - 1)[1]
    assert meta["data"]["skipped"] == 1 and meta["samples"] == N - 1


def test_bfloat16_vae_is_recorded_and_close_to_float32(tmp_path, images, vae_dir):
    a = estimate(tmp_path, "f32", "--data", images, "--resolution", R, "--vae", vae_dir, "--vae-sample", "mean")
    b = estimate(tmp_path, "bf16", "--data", images, "--resolution", R, "--vae", vae_dir, "--vae-sample", "mean",
                 "--vae-dtype", "bfloat16")
    assert b[1]["data"]["vae"]["dtype"] == "bfloat16"
    assert b[1]["data"]["fingerprint"] != a[1]["data"]["fingerprint"]  # other moments, rounded to bf16
    # bf16 keeps 8 bits of mantissa: the curve moves by about that much, not more.
    np.testing.assert_allclose(b[0]["S"], a[0]["S"], rtol=0.05, atol=1e-3)


# ---- bad input: one sentence, exit 1, nothing written ---------------------------------------------------------

def _no_config(vae_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def _other_class(vae_dir, tmp_path):
    folder = tmp_path / "unet"
    shutil.copytree(vae_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DModel"}))
    return folder


def _no_weights(vae_dir, tmp_path):
    (tmp_path / "config-only").mkdir()
    shutil.copy(vae_dir / "config.json", tmp_path / "config-only")
    return tmp_path / "config-only"


def _truncated_weights(vae_dir, tmp_path):
    folder = tmp_path / "truncated"
    shutil.copytree(vae_dir, folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return folder


def _weights_of_another_config(vae_dir, tmp_path):
    # The config promises two resnets per block; the weights hold one: diffusers alone would only warn.
    folder = tmp_path / "mismatch"
    shutil.copytree(vae_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "layers_per_block": 2}))
    return folder


def _nan_weights(vae_dir, tmp_path):
    # What an SDXL VAE run in float16 gives: NaN moments.
    folder = tmp_path / "nan"
    model = tiny_autoencoder()
    with torch.no_grad():
        model.quant_conv.bias.fill_(float("nan"))
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("make, extra, message", [
    (_no_config, [], "holds no config.json (nor vae/config.json), so it is not a diffusers AutoencoderKL folder"),
    (_other_class, [], "holds a UNet2DModel, not an AutoencoderKL"),
    (_no_weights, [], "has a config.json but no weights (diffusion_pytorch_model.safetensors or .bin)"),
    (_truncated_weights, [], "cannot load the AutoencoderKL in"),
    (_weights_of_another_config, [], "lack"),
    (_nan_weights, [], "in float32; check its weights."),
    (lambda d, t: d / "diffusion_pytorch_model.safetensors", [], "is a single file, but vrcurve loads a diffusers "
     "AutoencoderKL folder"),
    (lambda d, t: t / "no" / "such" / "vae", [], "does not exist; pass the folder of a diffusers AutoencoderKL"),
    (lambda d, t: d, ["--moments", "mean"], "--moments reads VAE moments stored in the data, but --vae computes them "
     "from images; drop --moments"),
    (lambda d, t: d, ["--resolution", "9"], "has images of 9x9, which the VAE's downsampling factor 2 does not divide; "
     "pass --resolution R with R a multiple of 2"),
])
def test_bad_vae_input_is_one_sentence_and_writes_nothing(tmp_path, images, vae_dir, make, extra, message):
    out = tmp_path / "vr.safetensors"
    args = ["--data", images, "--vae", make(vae_dir, tmp_path)] + (extra or ["--resolution", R])
    res = run("estimate", *SMALL, "-o", out, *args)
    assert res.exit_code == 1, res.output
    assert message in res.stderr
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and "Traceback" not in res.output
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_vae_on_latents_is_refused(tmp_path, vae_dir, tiny_npy):
    out = tmp_path / "vr.safetensors"
    res = run("estimate", *SMALL, "--data", tiny_npy, "--vae", vae_dir, "-o", out)
    assert res.exit_code == 1
    assert f"--vae encodes images, but {tiny_npy} is npy data, which vrcurve takes as latents already; drop --vae." \
        in res.stderr and res.stderr.count("\n") == 1
    assert not out.exists()


def test_vae_on_the_demo_is_refused(tmp_path, vae_dir):
    res = run("estimate", *SMALL, "--data", "demo", "--vae", vae_dir, "-o", tmp_path / "vr.safetensors")
    assert res.exit_code == 1 and "--vae encodes RGB images, but the demo data are 1-channel 28x28 images" in res.stderr
    assert not (tmp_path / "vr.safetensors").exists()


def test_missing_diffusers_names_the_extra(tmp_path, images, vae_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    out = tmp_path / "vr.safetensors"
    res = run("estimate", *SMALL, "--data", images, "--resolution", R, "--vae", vae_dir, "-o", out)
    assert res.exit_code == 1 and res.stderr.count("\n") == 1
    assert "encoding images with --vae needs diffusers, which is not installed; run pip install 'vrcurve[vae]'" \
        in res.stderr
    assert not out.exists()


def test_diffusers_is_imported_only_for_vae(tiny_npy, tmp_path):
    code = ("import sys; from vrcurve.cli import main; sys.argv = ['vrcurve', 'estimate', '--data', sys.argv[1], "
            "'-o', sys.argv[2], '-M', '4', '-K', '2', '-T', '10', '-q', '--bootstrap', '0']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('diffusers' in sys.modules, 'huggingface_hub' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code, str(tiny_npy), str(tmp_path / "a.safetensors")],
                       capture_output=True, text=True, check=True)
    assert p.stdout.strip().splitlines()[-1] == "False False"
    assert (tmp_path / "a.safetensors").exists()


def test_images_of_two_sizes_become_two_latent_buckets(tmp_path, vae_dir):
    """Without --resolution, images of two sizes are encoded per bucket: latents at half the image size
    (f = 2), one curve per bucket, and the VAE recorded as for one bucket."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(11)
    for i in range(24):
        h, w = (8, 8) if i % 3 else (12, 8)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    out = tmp_path / "b.safetensors"
    res = run("estimate", "--data", folder, "--vae", vae_dir, "-o", out, "-M", "all", "-K", "4", "-T", "20",
              "--bootstrap", "0", "--min-bucket", "4", "-q")
    assert res.exit_code == 0, res.output
    dist = vrcurve.load(out)
    assert dist.buckets.keys() == {(4, 4, 4), (4, 6, 4)}
    assert dist.meta["data"]["vae"]["sample"] == "sample"
    assert sorted(b["samples"] for b in dist.meta["buckets"]) == [8, 16]
