"""Reference fixtures for `AutoencoderKL.enable_tiling()` (diffusers' tiled_decode), made by diffusers itself.

Run:  /work/refenv/bin/python tests/reference/make_vae_tiling_fixtures.py
(CPU only, deterministic: all random numbers come from numpy.random.default_rng with a fixed seed.)

A tiny random VAE with the FLUX structure (block_out_channels [8, 16, 16, 16], 1 layer per block,
4 groups, 16 latent channels, no quant convs) and sample_size 32, so that
tile_latent_min_size = 32 / 2**3 = 4 and latents larger than 4 in either dimension are tiled:
tiles of 4 latents (32 px) every int(4 * 0.75) = 3 latents, blended over int(32 * 0.25) = 8 px,
each cropped to its top-left 24 x 24 px.

Writes
------
tests/fixtures/vae_tiling/
    vae/           save_pretrained: config.json + diffusion_pytorch_model.safetensors (F32)
    io.npz         ncalls; call{k}_z f32 (B, 16, h, w) and call{k}_out = vae.decode(z).sample with
                   vae.enable_tiling(); untiled_z / untiled_out: the same model with tiling off
    versions.json
"""
import numpy as np

import _common as C
from make_vae_fixtures import flux_like, randomize_

torch = C.setup_torch()
from diffusers import AutoencoderKL  # noqa: E402

OUT = C.FIXTURES / "vae_tiling"
CONFIG = dict(flux_like([8, 16, 16, 16], 1, 4), sample_size=32)
# (B, h, w): several tile rows and columns, ragged last tiles, one tiled dimension forced by the other,
# a batch, and a latent at the threshold (4 x 4: not tiled even with tiling on)
CALLS = [(1, 9, 7), (1, 5, 12), (2, 8, 8), (1, 4, 10), (1, 4, 4)]


def main():
    print("[vae_tiling]")
    d = C.fresh_dir(OUT)
    rng = np.random.default_rng(4001)
    model = AutoencoderKL(**CONFIG).eval()
    randomize_(model, rng)
    model.save_pretrained(d / "vae")
    vae = AutoencoderKL.from_pretrained(d / "vae", torch_dtype=torch.float32).eval()
    assert vae.tile_latent_min_size == 4 and vae.tile_sample_min_size == 32 and not vae.use_tiling
    io = {"ncalls": np.int64(len(CALLS))}
    with torch.no_grad():
        vae.enable_tiling()
        for k, (b, h, w) in enumerate(CALLS):
            z = (rng.standard_normal((b, 16, h, w)) / 0.3611 + 0.1159).astype(np.float32)
            out = vae.decode(torch.from_numpy(z)).sample.numpy()
            assert out.shape == (b, 3, 8 * h, 8 * w), out.shape
            io[f"call{k}_z"], io[f"call{k}_out"] = z, out
            print(f"  call{k}: z {z.shape} -> tiled out {out.shape}")
        vae.disable_tiling()
        z = io["call0_z"]
        io["untiled_z"] = z
        io["untiled_out"] = vae.decode(torch.from_numpy(z)).sample.numpy()
        diff = np.linalg.norm(io["untiled_out"] - io["call0_out"]) / np.linalg.norm(io["untiled_out"])
        print(f"  tiled vs untiled on call0: relative L2 {diff:.3g} (tiling changes the result)")
        assert diff > 1e-3
    C.savez(d / "io.npz", io)
    C.write_versions(d)
    print(f"  {C.dir_size(d)} B total")
    C.list_files(d)


if __name__ == "__main__":
    main()
