"""Write a random-weight Z-Image-Turbo checkpoint at the real sizes in the exact real layout,
with diffusers' / transformers' own save_pretrained (run on the GPU machine; needs torch,
diffusers, transformers):

    model_index.json, scheduler/scheduler_config.json,
    transformer/  F32, 3 shards + diffusion_pytorch_model.safetensors.index.json
    text_encoder/ BF16, 3 shards + model.safetensors.index.json, keys "model.*" (Qwen3ForCausalLM
                  layout of the real file, tied embeddings so no lm_head)
    vae/          F32, one file (encoder and decoder)
    tokenizer/    the real Qwen3 tokenizer files (vendored in tests/fixtures/qwen3-tokenizer)

Usage: python benchmarks/make_random_checkpoint.py OUT_DIR
Weights: normal(0, 0.02) as in the baseline scripts (../shared/baseline), norm gains 1, pad
tokens 1; parameters are created on the GPU to keep this fast.
"""
import json
import lzma
import os
import shutil
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFESTS = os.path.join(ROOT, "tests", "fixtures", "manifests")
TOKENIZER = os.path.join(ROOT, "tests", "fixtures", "qwen3-tokenizer")


def randomise(module, std=0.02):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and ("norm" in name or name.endswith("embedder.0.weight")):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.normal_(0, std)
            else:
                p.normal_(0, std)


def main(out):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    t0 = time.perf_counter()
    if os.path.exists(os.path.join(out, "model_index.json")):
        print(f"{out} exists, keeping it", flush=True)
        return
    os.makedirs(out, exist_ok=True)
    dit_cfg = {k: v for k, v in json.load(open(os.path.join(MANIFESTS, "dit_config.json"))).items() if not k.startswith("_")}
    te_cfg = json.load(open(os.path.join(MANIFESTS, "text_encoder_config.json")))
    vae_cfg = {k: v for k, v in json.load(open(os.path.join(MANIFESTS, "vae_config.json"))).items() if not k.startswith("_")}
    with torch.device("cuda"):
        tr = ZImageTransformer2DModel(**dit_cfg)
        randomise(tr)
        tr.x_pad_token.data.fill_(1.0)
        tr.cap_pad_token.data.fill_(1.0)
        tr.save_pretrained(os.path.join(out, "transformer"), max_shard_size="10GB")  # F32, 3 shards
        del tr
        torch.cuda.empty_cache()
        print(f"transformer written {time.perf_counter() - t0:.1f} s", flush=True)
        cfg = Qwen3Config(**{k: v for k, v in te_cfg.items() if k not in ("architectures", "transformers_version")})
        lm = Qwen3ForCausalLM(cfg).to(torch.bfloat16)
        randomise(lm)
        lm.save_pretrained(os.path.join(out, "text_encoder"), max_shard_size="3GB")  # "model.*", tied: no lm_head
        del lm
        torch.cuda.empty_cache()
        print(f"text encoder written {time.perf_counter() - t0:.1f} s", flush=True)
        vae = AutoencoderKL(**vae_cfg)
        randomise(vae)
        vae.save_pretrained(os.path.join(out, "vae"))
        del vae
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False).save_pretrained(
        os.path.join(out, "scheduler"))
    tdir = os.path.join(out, "tokenizer")
    os.makedirs(tdir, exist_ok=True)
    with lzma.open(os.path.join(TOKENIZER, "tokenizer.json.xz")) as f:
        open(os.path.join(tdir, "tokenizer.json"), "wb").write(f.read())
    shutil.copy(os.path.join(TOKENIZER, "tokenizer_config.json"), tdir)
    # model_index.json as ZImagePipeline.save_pretrained writes it (real repo: Qwen3Model text encoder)
    import diffusers
    json.dump({"_class_name": "ZImagePipeline", "_diffusers_version": diffusers.__version__,
               "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
               "text_encoder": ["transformers", "Qwen3Model"], "tokenizer": ["transformers", "Qwen2Tokenizer"],
               "transformer": ["diffusers", "ZImageTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]},
              open(os.path.join(out, "model_index.json"), "w"), indent=2)
    print(f"checkpoint written to {out} in {time.perf_counter() - t0:.1f} s", flush=True)
    for sub in sorted(os.listdir(out)):
        p = os.path.join(out, sub)
        if os.path.isdir(p):
            print(f"  {sub}: {sorted(os.listdir(p))}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/zi-ckpt")
