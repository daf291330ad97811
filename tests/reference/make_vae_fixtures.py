"""Reference fixtures for the Flux-style VAE decoder (diffusers AutoencoderKL), made by diffusers itself.

Run:  /work/refenv/bin/python tests/reference/make_vae_fixtures.py
(CPU only, deterministic: all random numbers come from numpy.random.default_rng with fixed seeds.)

Writes
------
tests/fixtures/vae/<case>/
    vae/               written by diffusers `save_pretrained`: config.json + ONE file
                       diffusion_pytorch_model.safetensors (F32), holding encoder.* AND decoder.* tensors
                       (no quant_conv / post_quant_conv, as in the real Flux VAE)
    io.npz             decoder inputs and diffusers' fp32 outputs
    versions.json
tests/fixtures/vae/postprocess.npz   VaeImageProcessor.postprocess reference (uint8)
tests/fixtures/manifests/
    vae_manifest.json  names + shapes of the real Flux VAE decoder tensors (138) (+ encoder names, separately)
    vae_config.json    the real config (diffusers' own serialisation of the Flux VAE values)

io.npz keys
-----------
    ncalls         int64 scalar
    up_factor      int64 scalar = 2**(len(block_out_channels)-1): output H,W = up_factor * latent h,w
    call{k}_z      f32 (B, 16, h, w)   decoder input = latents ALREADY un-scaled (latents/scaling + shift
                                       is the pipeline's job and is not part of these fixtures); drawn as
                                       randn/0.3611 + 0.1159 so it has the statistics of a real decode input
    call{k}_out    f32 (B, 3, up*h, up*w)  vae.decode(z).sample, fp32 on CPU (no tiling, no slicing)

postprocess.npz keys (diffusers VaeImageProcessor(vae_scale_factor=16).postprocess, do_normalize=True)
-------------------------------------------------------------------------------------------------
    post_in         f32 (B,3,H,W)   a decoded image (= vae/c_4blocks_real_pattern/io.npz call0_out)
    post_np         f32 (B,H,W,3)   postprocess(post_in, output_type="np") = clamp(x*0.5+0.5, 0, 1), NHWC
    post_u8         uint8 (B,H,W,3) (post_np*255).round().astype(uint8) == np.array(postprocess(.., "pil")[b])
    edge_in         f32 (1,3,4,16)  synthetic values: clamping (|x| > 1), exact 0 (-> 127.5 -> 128, half-even),
                                    and x = 2*(k+0.5)/255 - 1 (ties / near-ties after *255)
    edge_np, edge_u8                 same processing of edge_in (fp32 tensor)
    edge_bf16_in    f32 (1,3,4,16)  edge_in rounded to bf16 (exactly representable values)
    edge_bf16_u8    uint8           postprocess of edge_bf16_in AS A bf16 TENSOR (what the real pipeline does:
                                    x*0.5+0.5 and the clamp are computed in bf16, then .float(), *255, round)
"""
import json
import math
import sys

import numpy as np

import _common as C

torch = C.setup_torch()
from diffusers import AutoencoderKL  # noqa: E402
from diffusers.image_processor import VaeImageProcessor  # noqa: E402

VAE_DIR = C.FIXTURES / "vae"

FLUX = dict(in_channels=3, out_channels=3, act_fn="silu", latent_channels=16, sample_size=1024,
            scaling_factor=0.3611, shift_factor=0.1159, latents_mean=None, latents_std=None,
            force_upcast=True, use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True)


def flux_like(block_out_channels, layers_per_block, norm_num_groups):
    n = len(block_out_channels)
    return dict(FLUX, block_out_channels=list(block_out_channels), layers_per_block=layers_per_block,
                norm_num_groups=norm_num_groups, down_block_types=["DownEncoderBlock2D"] * n,
                up_block_types=["UpDecoderBlock2D"] * n)


CASES = {
    # 2 up blocks (one upsampler, 2x), 2 resnets per up block, attention width 64, 8 groups
    "a_2blocks": dict(seed=3001, config=flux_like([32, 64], 1, 8)),
    # 3 up blocks (4x), 3 resnets per up block, 4 groups; channel change only at the last up block
    "b_3blocks_lpb2": dict(seed=3002, config=flux_like([16, 32, 32], 2, 4)),
    # 4 up blocks (8x) with the real channel pattern [c, 2c, 4c, 4c] -> shortcut convs in up_blocks 2 and 3
    "c_4blocks_real_pattern": dict(seed=3003, config=flux_like([8, 16, 32, 32], 1, 4)),
}

# (B, h, w) of the decoder inputs
CALLS = [(1, 3, 5), (1, 1, 1), (1, 4, 4), (2, 3, 4)]


def randomize_(model, rng):
    for name, p in model.named_parameters():
        shape = tuple(p.shape)
        if name.endswith(".bias"):
            v = 0.1 * rng.standard_normal(shape)
        elif p.ndim == 1:  # GroupNorm gains
            v = 1.0 + 0.1 * rng.standard_normal(shape)
        else:  # conv [Cout, Cin, kh, kw] or linear [out, in]
            v = rng.standard_normal(shape) / math.sqrt(int(np.prod(shape[1:])))
        p.data.copy_(torch.from_numpy(v.astype(np.float32)))


def make_case(name, case):
    print(f"[vae] case {name}")
    cdir = C.fresh_dir(VAE_DIR / name)
    vdir = cdir / "vae"
    rng = np.random.default_rng(case["seed"])
    model = AutoencoderKL(**case["config"]).eval()
    randomize_(model, rng)
    model.save_pretrained(vdir)
    files = sorted(p.name for p in vdir.iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors"], files

    ref = AutoencoderKL.from_pretrained(vdir, torch_dtype=torch.float32).eval()
    sdr = ref.state_dict()
    sd0 = model.state_dict()
    assert sorted(sdr) == sorted(sd0)
    for k, v in sd0.items():
        assert torch.equal(sdr[k], v), k
    ndec = sum(1 for k in sdr if k.startswith("decoder."))
    nenc = sum(1 for k in sdr if k.startswith("encoder."))
    assert ndec + nenc == len(sdr), [k for k in sdr if not k.startswith(("encoder.", "decoder."))]
    print(f"  files {files}; {len(sdr)} tensors ({ndec} decoder, {nenc} encoder)")

    up = 2 ** (len(case["config"]["block_out_channels"]) - 1)
    io = {"ncalls": np.int64(len(CALLS)), "up_factor": np.int64(up)}
    for k, (b, h, w) in enumerate(CALLS):
        z = (rng.standard_normal((b, 16, h, w)) / 0.3611 + 0.1159).astype(np.float32)
        out = ref.decode(torch.from_numpy(z)).sample.numpy()
        assert out.shape == (b, 3, up * h, up * w), out.shape
        io[f"call{k}_z"] = z
        io[f"call{k}_out"] = out
        print(f"  call{k}: z {z.shape} -> out {out.shape} max|out|={np.abs(out).max():.3f} "
              f"rms={np.sqrt((out**2).mean()):.3f} frac(|out|<=1)={np.mean(np.abs(out) <= 1):.2f}")
        if b > 1:
            for i in range(b):
                solo = ref.decode(torch.from_numpy(z[i:i + 1])).sample.numpy()
                d = np.abs(solo - out[i:i + 1]).max()
                assert d < 1e-4, d
    C.savez(cdir / "io.npz", io)
    C.write_versions(cdir)
    print(f"  case {name}: {C.dir_size(cdir)} B total")
    return io


def postprocess_ref(pp, x: torch.Tensor):
    np_img = pp.postprocess(x, output_type="np")
    u8 = (np_img * 255).round().astype(np.uint8)
    pil = pp.postprocess(x, output_type="pil")
    pil_u8 = np.stack([np.array(im) for im in pil])
    assert pil_u8.dtype == np.uint8 and np.array_equal(pil_u8, u8)
    return np_img, u8


def make_postprocess(source_case, io):
    print("[vae] postprocess")
    pp = VaeImageProcessor(vae_scale_factor=16)  # as ZImagePipeline builds it (do_normalize=True default)
    assert pp.config.do_normalize
    post_in = io["call0_out"]
    post_np, post_u8 = postprocess_ref(pp, torch.from_numpy(post_in))
    assert post_np.shape == (post_in.shape[0], post_in.shape[2], post_in.shape[3], 3)

    ks = np.arange(0, 255, 8)
    ties = (2 * (ks + 0.5) / 255 - 1).astype(np.float32)                      # 32 values
    special = np.array([-2.0, -1.5, -1.0000001, -1.0, -0.999, -0.5, -1e-8, 0.0, 1e-8, 0.25,
                        0.5, 0.999, 1.0, 1.0000001, 1.5, 2.0], dtype=np.float32)  # 16 values
    lin = np.linspace(-1.1, 1.1, 3 * 4 * 16 - ties.size - special.size, dtype=np.float32)
    edge = np.concatenate([special, ties, lin]).astype(np.float32).reshape(1, 3, 4, 16)
    edge_np, edge_u8 = postprocess_ref(pp, torch.from_numpy(edge))
    eb = torch.from_numpy(edge).to(torch.bfloat16)
    edge_bf16_in = eb.float().numpy()
    _, edge_bf16_u8 = postprocess_ref(pp, eb)
    # the bf16 path really differs from the fp32 path of the same (bf16-representable) values somewhere
    _, edge_bf16_as_f32_u8 = postprocess_ref(pp, torch.from_numpy(edge_bf16_in))
    ndiff = int((edge_bf16_u8 != edge_bf16_as_f32_u8).sum())
    print(f"  bf16 vs fp32 postprocess of the same values: {ndiff} of {edge_bf16_u8.size} uint8 differ")
    out = dict(post_in=post_in, post_np=post_np, post_u8=post_u8,
               edge_in=edge, edge_np=edge_np, edge_u8=edge_u8,
               edge_bf16_in=edge_bf16_in, edge_bf16_u8=edge_bf16_u8)
    C.savez(VAE_DIR / "postprocess.npz", out)
    print(f"  post_u8 {post_u8.shape}: min {post_u8.min()} max {post_u8.max()}, "
          f"frac clamped {np.mean((post_u8 == 0) | (post_u8 == 255)):.2f}")


def make_manifest():
    print("[vae] manifest")
    cfg = flux_like([128, 256, 512, 512], 2, 32)
    with torch.device("meta"):
        m = AutoencoderKL(**cfg)
    sd = m.state_dict()
    dec = [{"name": k, "shape": list(v.shape)} for k, v in sd.items() if k.startswith("decoder.")]
    enc = [{"name": k, "shape": list(v.shape)} for k, v in sd.items() if k.startswith("encoder.")]
    assert len(dec) + len(enc) == len(sd)
    ndec = sum(v.numel() for k, v in sd.items() if k.startswith("decoder."))
    nenc = sum(v.numel() for k, v in sd.items() if k.startswith("encoder."))
    assert len(dec) == 138 and len(enc) == 106 and len(sd) == 244, (len(dec), len(enc))
    assert ndec == 49_545_475 and nenc == 34_274_208, (ndec, nenc)
    cfg_json = json.loads(m.to_json_string())
    C.write_json(C.MANIFESTS / "vae_config.json", cfg_json)
    manifest = {
        "model": "Z-Image-Turbo vae = FLUX.1 VAE (diffusers AutoencoderKL)",
        "built_from": "diffusers AutoencoderKL(**vae_config) on the meta device",
        "num_decoder_tensors": len(dec),
        "num_decoder_params": ndec,
        "num_encoder_tensors": len(enc),
        "num_encoder_params": nenc,
        "num_tensors_in_file": len(sd),
        "num_params_in_file": ndec + nenc,
        "storage_dtype_per_spec": "BF16 (vae_spec §5.1, third-party reports; read dtype from the header)",
        "config": {k: v for k, v in cfg_json.items() if not k.startswith("_")},
        "tensors": dec,
        "encoder_tensors": enc,
    }
    C.write_json(C.MANIFESTS / "vae_manifest.json", manifest)
    C.write_versions(C.MANIFESTS)
    print(f"  decoder {len(dec)} tensors / {ndec:,} params; encoder {len(enc)} / {nenc:,}")


def main():
    only = sys.argv[1:]
    ios = {}
    for name, case in CASES.items():
        if not only or name in only:
            ios[name] = make_case(name, case)
    src = "c_4blocks_real_pattern"
    if src in ios:
        make_postprocess(src, ios[src])
    make_manifest()
    C.write_versions(VAE_DIR)
    print(f"[vae] total {C.dir_size(VAE_DIR)} B in {C.rel(VAE_DIR)}")
    C.list_files(VAE_DIR)


if __name__ == "__main__":
    main()
