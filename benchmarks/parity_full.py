"""Full-size numerical parity on the GPU: with the same prompt and latents, our CUDA (bf16)
outputs must be no further from diffusers/transformers fp32 than diffusers' own bf16 run is
(flash-attention's rule: error <= 2x the bf16 reference's error), for
  - the text-encoder hidden states (layer -2) of the prompt,
  - one transformer forward at 1024^2,
  - the VAE decode of a 1024^2 latent,
  - the final image of the whole pipeline (1024^2, 9 steps, guidance 0), from given latents and
    from torch.Generator("cuda").manual_seed(42) (so our initial noise must equal torch's).
Usage: python benchmarks/parity_full.py --ckpt /tmp/zi-ckpt [--json out.json]
"""
import argparse
import gc
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "A cute cyberpunk cat, neon lights, 8k high definition"


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def diffusers_outputs(ckpt, dtype, lat, t_model, z):
    from diffusers import ZImagePipeline
    pipe = ZImagePipeline.from_pretrained(ckpt, torch_dtype=dtype).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    out = {}
    with torch.no_grad():
        pe, _ = pipe.encode_prompt(PROMPT, device="cuda", do_classifier_free_guidance=False)
        out["te"] = pe[0].float().cpu().numpy()
        cap = [torch.from_numpy(CAP_REF).to("cuda", dtype)] if CAP_REF is not None else [pe[0]]
        x = torch.from_numpy(lat).to("cuda", dtype)
        tt = torch.tensor([t_model], device="cuda", dtype=torch.float32)
        o = pipe.transformer(list(x.unsqueeze(2).unbind(0)), tt, cap, return_dict=False)[0][0]
        out["dit"] = o.float().cpu().numpy()[:, 0]
        img = pipe.vae.decode(torch.from_numpy(z).to("cuda", dtype), return_dict=False)[0]
        out["vae"] = img.float().cpu().numpy()
        out["image"] = pipe(prompt=PROMPT, height=1024, width=1024, num_inference_steps=9, guidance_scale=0.0,
                            latents=torch.from_numpy(lat).to("cuda"), output_type="np").images
        out["image_seed42"] = pipe(prompt=PROMPT, height=1024, width=1024, num_inference_steps=9,
                                   guidance_scale=0.0, generator=torch.Generator("cuda").manual_seed(42),
                                   output_type="np").images
    del pipe
    gc.collect()
    torch.cuda.empty_cache()
    return out


def zimage_outputs(ckpt, lat, t_model, z):
    sys.path.insert(0, ROOT)
    import zimage
    t0 = time.perf_counter()
    pipe = zimage.ZImagePipeline.from_pretrained(ckpt, torch_dtype=zimage.bfloat16).to("cuda")
    load_s = time.perf_counter() - t0
    pipe.set_progress_bar_config(disable=True)
    out = {"load_s": load_s}
    pe, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)
    out["te"] = pe[0]
    out["dit"] = pipe.transformer([lat[0][:, None]], [t_model], [CAP_REF])[0][:, 0]
    out["vae"] = pipe.vae.decode(z).sample
    out["image"] = pipe(prompt=PROMPT, height=1024, width=1024, num_inference_steps=9, guidance_scale=0.0,
                        latents=lat, output_type="np").images
    # the user's call: a torch CUDA generator, no latents (our noise must equal torch's)
    out["image_seed42"] = pipe(prompt=PROMPT, height=1024, width=1024, num_inference_steps=9, guidance_scale=0.0,
                               generator=torch.Generator("cuda").manual_seed(42), output_type="np").images
    del pipe
    gc.collect()
    return out


CAP_REF = None


def main():
    global CAP_REF
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default="/tmp/zi-ckpt")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    lat = rng.standard_normal((1, 16, 128, 128)).astype(np.float32)
    z = rng.standard_normal((1, 16, 128, 128)).astype(np.float32)
    t_model = 0.142857179  # step 3 of the 9-step schedule
    ref = diffusers_outputs(a.ckpt, torch.float32, lat, t_model, z)
    CAP_REF = ref["te"]  # every framework's transformer gets the fp32 caption features
    bf = diffusers_outputs(a.ckpt, torch.bfloat16, lat, t_model, z)
    ours = zimage_outputs(a.ckpt, lat, t_model, z)
    res = {"gpu": torch.cuda.get_device_name(0), "date": time.strftime("%Y-%m-%d"), "zimage_load_s": ours["load_s"]}
    ok = True
    for k in ("te", "dit", "vae", "image", "image_seed42"):
        e_bf, e_ours = rel(bf[k], ref[k]), rel(ours[k], ref[k])
        res[k] = {"diffusers_bf16_vs_fp32": e_bf, "zimage_vs_fp32": e_ours, "ratio": e_ours / e_bf,
                  "max_abs_zimage": float(np.abs(ours[k] - ref[k]).max()),
                  "max_abs_diffusers_bf16": float(np.abs(bf[k] - ref[k]).max())}
        ok &= e_ours <= 2 * e_bf
        print(f"{k:6s} rel L2 vs fp32: diffusers bf16 {e_bf:.3e}  zimage {e_ours:.3e}  ratio {e_ours / e_bf:.2f}",
              flush=True)
    res["pass"] = bool(ok)
    print("PASS" if ok else "FAIL", flush=True)
    if a.json:
        json.dump(res, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
