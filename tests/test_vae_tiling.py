"""`AutoencoderKL.enable_tiling()` against diffusers' tiled_decode (fixtures made by
tests/reference/make_vae_tiling_fixtures.py: a tiny FLUX-structured VAE with sample_size 32, so
tiles of 4 latents / 32 px, stride 3, 8 px blends), the tiling state, and tiling inside the pipeline."""
import os

import numpy as np
import pytest

import zimage
from conftest import FIXTURES, pipeline_cases, rel_l2

D = os.path.join(FIXTURES, "vae_tiling")
IO = np.load(os.path.join(D, "io.npz"))


@pytest.fixture
def vae():
    return zimage.AutoencoderKL.from_pretrained(D, subfolder="vae")


def test_off_by_default_with_diffusers_sizes(vae):
    assert vae.use_tiling is False
    assert (vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor) == (32, 4, 0.25)


@pytest.mark.parametrize("k", range(int(IO["ncalls"])))
def test_tiled_decode_matches_diffusers(vae, k):
    vae.enable_tiling()
    assert vae.use_tiling is True
    out = vae.decode(IO[f"call{k}_z"]).sample
    ref = IO[f"call{k}_out"]
    assert out.shape == ref.shape
    assert rel_l2(out, ref) < 1e-4


def test_disable_tiling_gives_the_untiled_decode(vae):
    z, ref = IO["untiled_z"], IO["untiled_out"]
    assert rel_l2(vae.decode(z).sample, ref) < 1e-4         # default: untiled
    vae.enable_tiling()
    tiled = vae.decode(z).sample
    assert rel_l2(tiled, ref) > 1e-2                         # tiling really changes the result
    vae.disable_tiling()
    assert vae.use_tiling is False
    assert rel_l2(vae.decode(z).sample, ref) < 1e-4
    vae.use_tiling = True                                    # diffusers-style attribute
    assert vae.use_tiling is True and rel_l2(vae.decode(z).sample, tiled) < 1e-6


def test_tile_settings_and_activation_size(vae):
    core = vae._core
    untiled, small = core.activation_bytes(64, 64, 4), core.activation_bytes(4, 4, 4)
    vae.enable_tiling()
    assert core.activation_bytes(4, 4, 4) == small           # at the threshold: not tiled
    assert core.activation_bytes(64, 64, 4) < untiled / 50   # one 4x4 tile's worth (+ full latent and seams)
    vae.enable_tiling(tile_sample_min_size=64)               # the latent size follows: 64 / 8
    assert (vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor) == (64, 8, 0.25)
    out = vae.decode(IO["call2_z"]).sample                   # 8x8: not above 8, so untiled
    assert rel_l2(out, vae.decode(IO["call2_z"]).sample) == 0
    vae.disable_tiling()
    assert rel_l2(out, vae.decode(IO["call2_z"]).sample) == 0
    with pytest.raises(ValueError):
        vae.enable_tiling(tile_overlap_factor=0.3)           # crops would not tile the image exactly
    with pytest.raises(ValueError):
        vae.enable_tiling(tile_latent_min_size=0)
    with pytest.raises(ValueError):
        vae.enable_tiling(tile_overlap_factor=1.0)
    assert vae.use_tiling is False and vae.tile_latent_min_size == 8  # failed calls change nothing


def test_pipeline_decodes_in_tiles(tiny_pipeline):
    """pipe.vae.enable_tiling() applies to pipe(...): its image equals a tiled decode of its latents,
    and disable_tiling restores the diffusers reference image."""
    _, _, folder = tiny_pipeline
    c = pipeline_cases()["c1"]
    ref = np.load(os.path.join(FIXTURES, "pipeline", "reference.npz"))
    pipe = zimage.ZImagePipeline.from_pretrained(folder, torch_dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt=c["prompt"], height=c["height"], width=c["width"], num_inference_steps=c["num_inference_steps"],
              guidance_scale=c["guidance_scale"], latents=ref[c["keys"]["latents"]], output_type="np")
    untiled = pipe(**kw).images
    assert float(np.abs(untiled - ref[c["keys"]["images"]]).max()) < 2e-3
    pipe.vae.enable_tiling(tile_sample_min_size=32)          # 4-latent tiles on the 8x8 latent
    tiled = pipe(**kw).images
    lat = pipe(**dict(kw, output_type="latent")).images
    cfg = pipe.vae.config
    z = lat / cfg.scaling_factor + cfg.shift_factor
    img = np.clip(pipe.vae.decode(z).sample * 0.5 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    assert float(np.abs(tiled - img).max()) < 1e-5
    assert float(np.abs(tiled - untiled).max()) > 1e-3
    pipe.vae.disable_tiling()
    assert float(np.abs(pipe(**kw).images - untiled).max()) == 0
