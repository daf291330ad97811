"""Reference fixtures for the whole ZImagePipeline: a tiny random-weight pipeline saved by diffusers itself
in the real Z-Image-Turbo folder layout, plus diffusers' own end-to-end outputs on it.

Run:  /work/refenv/bin/python tests/reference/make_pipeline_fixtures.py
(CPU only, deterministic: every random number comes from numpy.random.default_rng with fixed seeds;
the pipeline is always given explicit `latents=`, so torch's RNG is never used.)

Writes (see tests/fixtures/pipeline/README.md for every file and key)
------
tests/fixtures/pipeline/tiny/          ZImagePipeline.save_pretrained layout
    model_index.json                   written by ZImagePipeline.save_pretrained
    scheduler/scheduler_config.json    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0,
                                       use_dynamic_shifting=False), written by diffusers
    text_encoder/                      tiny Qwen3 (hidden 16, 3 layers, vocab 151936) saved BF16 through
                                       Qwen3ForCausalLM.save_pretrained -> keys "model.*" like the real checkpoint,
                                       3 shards + model.safetensors.index.json, config.json in the transformers-4.x
                                       layout of the real file
    tokenizer/                         the REAL Qwen3 tokenizer.json + tokenizer_config.json, verbatim (the files
                                       Z-Image-Turbo ships); diffusers loads them as Qwen2Tokenizer (checked)
    transformer/                       tiny ZImageTransformer2DModel, F32, 3 shards + index (diffusers save_pretrained)
    vae/                               tiny Flux-structure AutoencoderKL (4 blocks -> vae_scale_factor 8), F32
tests/fixtures/pipeline/reference.npz  inputs (latents, ids) and diffusers' fp32 outputs of each case
tests/fixtures/pipeline/cases.json     the arguments of every case + the npz keys it owns
tests/fixtures/pipeline/versions.json

Every reference is computed by `ZImagePipeline.from_pretrained(tiny, torch_dtype=torch.float32)` on CPU, i.e.
from the files on disk (text-encoder weights are therefore the BF16 values upcast to f32).
"""
import json
import math
import shutil
import sys

import numpy as np

import _common as C
from make_vae_fixtures import randomize_ as randomize_vae_  # the same VAE randomisation

torch = C.setup_torch()
from diffusers import (  # noqa: E402
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    ZImagePipeline,
    ZImageTransformer2DModel,
)
from transformers import AutoTokenizer, Qwen2Tokenizer, Qwen3Config, Qwen3ForCausalLM, Qwen3Model  # noqa: E402

PIPE_DIR = C.FIXTURES / "pipeline"
TINY = PIPE_DIR / "tiny"
TOKENIZER_SRC = C.Path("/work/shared/qwen3-tokenizer")
TOKENIZER_SHA256 = "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"

SEED = 4001

# ------------------------------------------------------------------------------------------------
# Components
# ------------------------------------------------------------------------------------------------
TE_THETA = 1e6
TE_CONFIG = dict(vocab_size=151936, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                 num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                 rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu", attention_bias=False,
                 attention_dropout=0.0, max_position_embeddings=40960, use_sliding_window=False,
                 sliding_window=None, max_window_layers=3, bos_token_id=151643, eos_token_id=151645,
                 pad_token_id=None, initializer_range=0.02, use_cache=True,
                 rope_parameters={"rope_type": "default", "rope_theta": TE_THETA})
TE_SHARDS = 3

DIT_CONFIG = dict(all_patch_size=[2], all_f_patch_size=[1], in_channels=16, dim=64, n_layers=2,
                  n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True,
                  cap_feat_dim=16, rope_theta=256.0, t_scale=1000.0,
                  axes_dims=[8, 12, 12], axes_lens=[600, 64, 64])
DIT_SHARDS = 3

VAE_BLOCKS = [8, 8, 16, 16]  # 4 blocks -> vae_scale_factor 2**3 = 8 (pipeline: H, W multiples of 16)
VAE_CONFIG = dict(in_channels=3, out_channels=3, act_fn="silu", latent_channels=16, sample_size=1024,
                  scaling_factor=0.3611, shift_factor=0.1159, latents_mean=None, latents_std=None,
                  force_upcast=True, use_quant_conv=False, use_post_quant_conv=False,
                  mid_block_add_attention=True, block_out_channels=VAE_BLOCKS, layers_per_block=1,
                  norm_num_groups=4, down_block_types=["DownEncoderBlock2D"] * len(VAE_BLOCKS),
                  up_block_types=["UpDecoderBlock2D"] * len(VAE_BLOCKS))
VAE_TARGET_STD = 0.4  # decoder output std after calibration (-> few pixels clamped by postprocess)

SCHED_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)

# ------------------------------------------------------------------------------------------------
# Cases (each one diffusers call, except c7 which is one call per prompt)
# ------------------------------------------------------------------------------------------------
LONG_PROMPT = ("A highly detailed oil painting of an old lighthouse keeper reading a leather-bound book by "
               "candlelight, rain streaking down the round window, warm amber tones, soft shadows, "
               "brushstrokes visible, museum quality")
CASES = [
    dict(name="c1", what="English prompt, guidance 0 (Turbo default path)",
         prompt="A photo of a red fox sitting in a snowy forest at sunrise, highly detailed",
         height=64, width=64, num_inference_steps=3, guidance_scale=0.0),
    dict(name="c2", what="Chinese prompt, guidance 0",
         prompt="一只可爱的赛博朋克猫，霓虹灯，8k高清",
         height=64, width=64, num_inference_steps=3, guidance_scale=0.0),
    dict(name="c3", what="non-square 48 (H) x 80 (W), guidance 0",
         prompt="A lighthouse on a cliff above a stormy sea",
         height=48, width=80, num_inference_steps=2, guidance_scale=0.0),
    dict(name="c4", what="CFG 4.0 with a negative prompt (pos/neg captions of different lengths)",
         prompt="A bowl of ramen with a soft-boiled egg, studio lighting",
         negative_prompt="blurry, low quality, watermark, text, jpeg artifacts, oversaturated colors",
         height=64, width=64, num_inference_steps=2, guidance_scale=4.0),
    dict(name="c5", what="CFG 3.0, cfg_normalization=True, cfg_truncation=0.25, default negative prompt '' "
                         "(t_norm per step = 0, 0.1428571, 0.4 -> step 2 runs without CFG)",
         prompt="Portrait of an astronaut in a sunflower field, golden hour",
         height=64, width=64, num_inference_steps=3, guidance_scale=3.0,
         cfg_normalization=True, cfg_truncation=0.25),
    dict(name="c6", what="num_images_per_prompt=2 with CFG 2.0 and a negative prompt (transformer batch 4)",
         prompt="A watercolor map of an imaginary island",
         negative_prompt="photo",
         height=64, width=64, num_inference_steps=2, guidance_scale=2.0, num_images_per_prompt=2),
    dict(name="c7", what="list of two prompts of unequal token length (caption pads 32 vs 64), guidance 0; "
                         "REFERENCE = each prompt run ALONE with its slice of the latents",
         prompt=["A cat", LONG_PROMPT],
         height=64, width=64, num_inference_steps=2, guidance_scale=0.0, per_prompt=True),
    dict(name="c8", what="empty prompt '', guidance 0 (caption = the 8 chat-template tokens)",
         prompt="",
         height=64, width=64, num_inference_steps=2, guidance_scale=0.0),
    dict(name="c9", what="custom sigmas [0.9, 0.3] (the scheduler still applies shift 3: -> 0.9642857, 0.5625)",
         prompt="A red fox in the snow",
         height=64, width=64, num_inference_steps=None, sigmas=[0.9, 0.3], guidance_scale=0.0),
]
# cases that reuse c1's latents, to measure how much the prompt changes the image
SAME_LATENTS_AS_C1 = {"c2", "c8", "c9"}


# ------------------------------------------------------------------------------------------------
def randomize_te_(model, rng):
    for name, p in model.named_parameters():
        shape = tuple(p.shape)
        if name.endswith("embed_tokens.weight"):
            v = rng.standard_normal(shape)
        elif p.ndim == 1:  # RMSNorm gains
            v = 1.0 + 0.1 * rng.standard_normal(shape)
        else:  # Linear [out, in], no biases
            v = rng.standard_normal(shape) / math.sqrt(shape[1])
        p.data.copy_(torch.from_numpy(v.astype(np.float32)))


def randomize_dit_(model, rng):
    for name, p in model.named_parameters():
        shape = tuple(p.shape)
        if name.endswith("pad_token"):
            v = rng.standard_normal(shape)
        elif name.endswith(".bias"):
            v = 0.1 * rng.standard_normal(shape)
        elif p.ndim == 1:  # RMSNorm gains
            v = 1.0 + 0.1 * rng.standard_normal(shape)
        else:  # Linear [out, in]
            v = rng.standard_normal(shape) / math.sqrt(int(np.prod(shape[1:])))
        p.data.copy_(torch.from_numpy(v.astype(np.float32)))


def v4_layout_config(path):
    """Rewrite transformers-5 config.json in the transformers-4.x layout of the real text_encoder/config.json
    (top-level rope_theta, rope_scaling null, torch_dtype; no rope_parameters / layer_types / dtype)."""
    cfg = json.loads(path.read_text())
    rp = cfg.pop("rope_parameters")
    assert rp == {"rope_theta": TE_THETA, "rope_type": "default"}, rp
    cfg.pop("layer_types", None)
    dtype = cfg.pop("dtype", None)
    assert dtype == "bfloat16", dtype
    cfg.update(rope_theta=TE_THETA, rope_scaling=None, torch_dtype=dtype)
    tv = cfg.pop("transformers_version")
    out = {k: cfg[k] for k in sorted(cfg)}
    out["transformers_version"] = tv
    path.write_text(json.dumps(out, indent=2) + "\n")


def shard_size(module, nshards, skip=None):
    """max_shard_size (bytes) giving `nshards` files: tensors larger than the limit get a file of their own."""
    sizes = [p.numel() * p.element_size() for n, p in module.state_dict().items() if n != skip]
    return int(math.ceil(sum(sizes) / (nshards - 0.5)))


def safetensors_keys(folder):
    from safetensors import safe_open
    keys, dtypes, files = [], set(), []
    for f in sorted(folder.glob("*.safetensors")):
        files.append(f.name)
        with safe_open(str(f), "pt") as s:
            for k in s.keys():
                keys.append(k)
                dtypes.add(str(s.get_slice(k).get_dtype()))
    return keys, dtypes, files


def tokenizer_ids(tok, text):
    """The unpadded ids _encode_prompt feeds the text encoder for one prompt."""
    templ = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                    add_generation_prompt=True, enable_thinking=True)
    enc = tok([templ], padding="max_length", max_length=512, truncation=True, return_tensors="np")
    ids, mask = enc.input_ids[0], enc.attention_mask[0].astype(bool)
    assert mask[: mask.sum()].all() and not mask[mask.sum():].any(), "expected right padding"
    return templ, ids[mask].astype(np.int64)


# ------------------------------------------------------------------------------------------------
def build_and_save(rng):
    print("[pipeline] building tiny components")
    # text encoder (Qwen3Model; saved through Qwen3ForCausalLM for the "model." prefix)
    te_cfg = Qwen3Config(**TE_CONFIG)
    te = Qwen3Model(te_cfg).eval()
    randomize_te_(te, rng)
    # transformer
    dit = ZImageTransformer2DModel(**DIT_CONFIG).eval()
    randomize_dit_(dit, rng)
    # vae
    vae = AutoencoderKL(**VAE_CONFIG).eval()
    randomize_vae_(vae, rng)
    # scheduler + tokenizer
    sched = FlowMatchEulerDiscreteScheduler(**SCHED_CONFIG)
    tok = AutoTokenizer.from_pretrained(str(TOKENIZER_SRC))
    assert isinstance(tok, Qwen2Tokenizer), type(tok)

    # Calibrate the VAE's last conv so decoded images are mostly inside [-1, 1] (postprocess clamps):
    # decode the final latents of a representative pipeline run and rescale decoder.conv_out.
    te_bf16 = Qwen3Model(te_cfg).eval()
    te_bf16.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in te.state_dict().items()})
    probe = ZImagePipeline(scheduler=sched, vae=vae, text_encoder=te_bf16, tokenizer=tok, transformer=dit)
    probe.set_progress_bar_config(disable=True)
    prng = np.random.default_rng(SEED + 1)
    zs = []
    for prompt in ["calibration prompt one", "a second, somewhat longer calibration prompt for the vae"]:
        lat = torch.from_numpy(prng.standard_normal((1, 16, 8, 8)).astype(np.float32))
        out = probe(prompt, height=64, width=64, num_inference_steps=3, guidance_scale=0.0, latents=lat,
                    output_type="latent").images
        zs.append(out / VAE_CONFIG["scaling_factor"] + VAE_CONFIG["shift_factor"])
    img = vae.decode(torch.cat(zs)).sample
    f = VAE_TARGET_STD / float(img.std())
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(f)
        vae.decoder.conv_out.bias.mul_(f)
    img2 = vae.decode(torch.cat(zs)).sample
    print(f"  vae calibration: decoded std {float(img.std()):.3f} -> conv_out x {f:.4f} -> std "
          f"{float(img2.std()):.3f}, mean {float(img2.mean()):+.3f}, |x|>1: {float((img2.abs() > 1).float().mean()):.4f}")
    del probe, te_bf16

    # ---- save with diffusers' own ZImagePipeline.save_pretrained (text encoder stored BF16)
    C.fresh_dir(TINY)
    for fn in ["reference.npz", "cases.json", "versions.json"]:
        (PIPE_DIR / fn).unlink(missing_ok=True)
    te_save = te.to(torch.bfloat16)
    pipe = ZImagePipeline(scheduler=sched, vae=vae, text_encoder=te_save, tokenizer=tok, transformer=dit)
    pipe.save_pretrained(TINY)
    te.float()
    print("  ZImagePipeline.save_pretrained wrote:", sorted(p.name for p in TINY.iterdir()))

    # transformer/: re-saved by diffusers in shards, like the real (3-shard F32) checkpoint
    shutil.rmtree(TINY / "transformer")
    dit.save_pretrained(TINY / "transformer", max_shard_size=shard_size(dit, DIT_SHARDS))

    # text_encoder/: "model." prefix (saved via Qwen3ForCausalLM, tied lm_head not stored), BF16, sharded,
    # config.json in the transformers-4.x layout of the real file
    shutil.rmtree(TINY / "text_encoder")
    lm = Qwen3ForCausalLM(te_cfg).eval()
    lm.model.load_state_dict(te.state_dict())
    assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr(), "not tied"
    lm = lm.to(torch.bfloat16)
    lm.save_pretrained(TINY / "text_encoder",
                       max_shard_size=shard_size(lm.model, TE_SHARDS - 1, skip="embed_tokens.weight"))
    gen = TINY / "text_encoder" / "generation_config.json"
    if gen.exists():
        gen.unlink()
    v4_layout_config(TINY / "text_encoder" / "config.json")

    # tokenizer/: tokenizer.save_pretrained (transformers 5) writes tokenizer_config.json in a new layout,
    # a separate chat_template.jinja and a re-serialised tokenizer.json (different pre_tokenizer/decoder
    # flags). Replace them with the verbatim upstream files, which is what Z-Image-Turbo's tokenizer/ holds.
    written = sorted(p.name for p in (TINY / "tokenizer").iterdir())
    shutil.rmtree(TINY / "tokenizer")
    (TINY / "tokenizer").mkdir()
    for fn in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copyfile(TOKENIZER_SRC / fn, TINY / "tokenizer" / fn)
    import hashlib
    sha = hashlib.sha256((TINY / "tokenizer" / "tokenizer.json").read_bytes()).hexdigest()
    assert sha == TOKENIZER_SHA256, sha
    print(f"  tokenizer: save_pretrained wrote {written}; replaced by verbatim tokenizer.json + tokenizer_config.json")

    # ---- checks on disk
    keys, dtypes, files = safetensors_keys(TINY / "text_encoder")
    exp = sorted("model." + k for k in te.state_dict())
    assert sorted(keys) == exp, (sorted(keys)[:4], exp[:4])
    assert dtypes == {"BF16"} and len(files) == TE_SHARDS, (dtypes, files)
    print(f"  text_encoder: {files}, {len(keys)} tensors {dtypes}")
    keys, dtypes, files = safetensors_keys(TINY / "transformer")
    assert sorted(keys) == sorted(dit.state_dict()) and dtypes == {"F32"} and len(files) == DIT_SHARDS
    print(f"  transformer: {files}, {len(keys)} tensors {dtypes}")
    keys, dtypes, files = safetensors_keys(TINY / "vae")
    assert sorted(keys) == sorted(vae.state_dict()) and dtypes == {"F32"} and len(files) == 1
    print(f"  vae: {files}, {len(keys)} tensors {dtypes}")
    mi = json.loads((TINY / "model_index.json").read_text())
    assert mi["_class_name"] == "ZImagePipeline"
    assert mi["text_encoder"] == ["transformers", "Qwen3Model"], mi
    assert mi["tokenizer"] == ["transformers", "Qwen2Tokenizer"], mi
    assert mi["transformer"] == ["diffusers", "ZImageTransformer2DModel"], mi
    assert mi["vae"] == ["diffusers", "AutoencoderKL"], mi
    assert mi["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"], mi
    return te, dit, vae, tok


def load_reference(te, dit, vae, tok_mem):
    pipe = ZImagePipeline.from_pretrained(str(TINY), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.tokenizer).__name__ == "Qwen2Tokenizer", type(pipe.tokenizer)
    assert type(pipe.text_encoder).__name__ == "Qwen3Model", type(pipe.text_encoder)
    assert pipe.vae_scale_factor == 8, pipe.vae_scale_factor
    assert pipe.text_encoder.config.rope_parameters["rope_theta"] == TE_THETA
    for m in (pipe.text_encoder, pipe.transformer, pipe.vae):
        assert all(p.dtype == torch.float32 for p in m.parameters())
    sd = pipe.text_encoder.state_dict()
    for k, v in te.state_dict().items():
        assert torch.equal(sd[k], v.to(torch.bfloat16).float()), k
    for mine, theirs in ((dit, pipe.transformer), (vae, pipe.vae)):
        sd = theirs.state_dict()
        for k, v in mine.state_dict().items():
            assert torch.equal(sd[k], v), k
    sc = pipe.scheduler.config
    assert (sc.shift, sc.use_dynamic_shifting, sc.num_train_timesteps) == (3.0, False, 1000)
    print("  from_pretrained(tiny, fp32): all weights equal what was saved (text encoder = bf16-rounded)")
    return pipe


def check_tokenizer(pipe, tok_mem, prompts):
    """The verbatim upstream tokenizer files and transformers' own save_pretrained output tokenize alike."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        tok_mem.save_pretrained(d)
        tok_saved = AutoTokenizer.from_pretrained(d)
    for p in prompts:
        t1, a = tokenizer_ids(pipe.tokenizer, p)
        t2, b = tokenizer_ids(tok_saved, p)
        assert t1 == t2 and np.array_equal(a, b), p
        assert t1 == "<|im_start|>user\n" + p + "<|im_end|>\n<|im_start|>assistant\n", repr(t1)
        assert list(a[:3]) == [151644, 872, 198] and list(a[-5:]) == [151645, 198, 151644, 77091, 198], a
    print(f"  tokenizer: {len(prompts)} prompts give identical template text + ids with the verbatim files and "
          f"with transformers' re-saved tokenizer; template matches dit_spec §6.2")


def as_list(p):
    return [p] if isinstance(p, str) else list(p)


def main():
    rng = np.random.default_rng(SEED)
    te, dit, vae, tok_mem = build_and_save(rng)
    pipe = load_reference(te, dit, vae, tok_mem)

    all_prompts = []
    for c in CASES:
        all_prompts += as_list(c["prompt"])
        if c.get("negative_prompt"):
            all_prompts += as_list(c["negative_prompt"])
    check_tokenizer(pipe, tok_mem, all_prompts + [""])

    lrng = np.random.default_rng(SEED + 2)
    ref = {}
    cases_json = []
    images = {}
    for c in CASES:
        name = c["name"]
        prompts = as_list(c["prompt"])
        nipp = c.get("num_images_per_prompt", 1)
        B = len(prompts) * nipp
        H, W = c["height"], c["width"]
        lat_shape = (B, 16, 2 * (H // 16), 2 * (W // 16))
        if name in SAME_LATENTS_AS_C1:
            lat = ref["c1_latents"].copy()
        else:
            lat = lrng.standard_normal(lat_shape).astype(np.float32)
        assert lat.shape == lat_shape
        g = c["guidance_scale"]
        cfg_on = g > 0
        kw = dict(height=H, width=W, guidance_scale=g,
                  cfg_normalization=c.get("cfg_normalization", False),
                  cfg_truncation=c.get("cfg_truncation", 1.0),
                  num_images_per_prompt=nipp)
        if c.get("negative_prompt") is not None:
            kw["negative_prompt"] = c["negative_prompt"]
        if c.get("sigmas") is not None:
            kw["sigmas"] = c["sigmas"]
        else:
            kw["num_inference_steps"] = c["num_inference_steps"]

        keys = {}
        ref[f"{name}_latents"] = lat
        keys["latents"] = f"{name}_latents"

        # token ids + prompt embeddings (pipe.encode_prompt, exactly what __call__ computes)
        pe, ne = pipe.encode_prompt(prompt=list(prompts), do_classifier_free_guidance=cfg_on,
                                    negative_prompt=c.get("negative_prompt"), device=torch.device("cpu"))
        negs = ([""] * len(prompts) if c.get("negative_prompt") is None else as_list(c["negative_prompt"])) \
            if cfg_on else []
        keys["prompt_ids"], keys["prompt_embeds"] = [], []
        for i, p in enumerate(prompts):
            _, ids = tokenizer_ids(pipe.tokenizer, p)
            assert pe[i].shape == (len(ids), 16), (pe[i].shape, len(ids))
            ref[f"{name}_prompt_ids{i}"] = ids
            ref[f"{name}_prompt_embeds{i}"] = pe[i].numpy()
            keys["prompt_ids"].append(f"{name}_prompt_ids{i}")
            keys["prompt_embeds"].append(f"{name}_prompt_embeds{i}")
        if cfg_on:
            keys["negative_ids"], keys["negative_embeds"] = [], []
            for i, p in enumerate(negs):
                _, ids = tokenizer_ids(pipe.tokenizer, p)
                assert ne[i].shape == (len(ids), 16)
                ref[f"{name}_negative_ids{i}"] = ids
                ref[f"{name}_negative_embeds{i}"] = ne[i].numpy()
                keys["negative_ids"].append(f"{name}_negative_ids{i}")
                keys["negative_embeds"].append(f"{name}_negative_embeds{i}")

        # the images
        if c.get("per_prompt"):
            outs = []
            for i, p in enumerate(prompts):
                o = pipe(p, latents=torch.from_numpy(lat[i:i + 1].copy()), output_type="np", **kw).images
                outs.append(o)
            img = np.concatenate(outs, axis=0)
            # informational only: diffusers' own batched call (not stored)
            ob = pipe(list(prompts), latents=torch.from_numpy(lat.copy()), output_type="np", **kw).images
            ob2 = pipe(list(prompts), latents=torch.from_numpy(lat.copy()), output_type="np", **kw).images
            c["_batched_vs_alone_maxabs"] = float(np.abs(ob - img).max())
            c["_batched_rerun_maxabs"] = float(np.abs(ob - ob2).max())
            print(f"  {name}: batched call vs per-prompt calls max|diff| {c['_batched_vs_alone_maxabs']:.3e}; "
                  f"batched call run twice max|diff| {c['_batched_rerun_maxabs']:.3e}")
        else:
            prompt_arg = c["prompt"]
            img = pipe(prompt_arg, latents=torch.from_numpy(lat.copy()), output_type="np", **kw).images
        assert img.shape == (B, H, W, 3) and img.dtype == np.float32, (img.shape, img.dtype)
        ref[f"{name}_images"] = img
        keys["images"] = f"{name}_images"
        images[name] = img

        # scheduler tables actually used (state left by the last call)
        ref[f"{name}_sigmas"] = pipe.scheduler.sigmas.numpy().astype(np.float32)
        ref[f"{name}_timesteps"] = pipe.scheduler.timesteps.numpy().astype(np.float32)
        keys["sigmas_used"] = f"{name}_sigmas"
        keys["timesteps_used"] = f"{name}_timesteps"

        # extras for c1: final latents, per-step latents, uint8 image of the default ("pil") output
        if name == "c1":
            steps = []

            def cb(_pipe, i, t, kwargs):
                steps.append(kwargs["latents"].clone().numpy())
                return {}

            fin = pipe(c["prompt"], latents=torch.from_numpy(lat.copy()), output_type="latent",
                       callback_on_step_end=cb, **kw).images
            ref["c1_final_latents"] = fin.numpy()
            ref["c1_step_latents"] = np.stack(steps)
            assert np.array_equal(ref["c1_step_latents"][-1], ref["c1_final_latents"])
            pil = pipe(c["prompt"], latents=torch.from_numpy(lat.copy()), **kw).images
            assert isinstance(pil, list) and len(pil) == 1 and pil[0].mode == "RGB" and pil[0].size == (W, H)
            u8 = np.stack([np.asarray(im) for im in pil])
            assert u8.dtype == np.uint8 and u8.shape == (1, H, W, 3)
            assert np.array_equal(u8, (img * 255).round().astype(np.uint8))
            ref["c1_images_u8"] = u8
            keys["final_latents"] = "c1_final_latents"
            keys["step_latents"] = "c1_step_latents"
            keys["images_u8"] = "c1_images_u8"

        clamped = float(((img <= 0.0) | (img >= 1.0)).mean())
        print(f"  {name}: B={B} {H}x{W} steps={len(ref[f'{name}_timesteps'])} g={g} "
              f"L={[len(ref[k]) for k in keys['prompt_ids']]} img mean {img.mean():.3f} std {img.std():.3f} "
              f"clamped {clamped:.4f}  sigmas {np.round(ref[f'{name}_sigmas'], 7).tolist()}")
        assert clamped < 0.05, clamped
        c["_clamped_fraction"] = clamped

        entry = dict(name=name, what=c["what"], prompt=c["prompt"],
                     negative_prompt=c.get("negative_prompt"),
                     height=H, width=W,
                     num_inference_steps=c.get("num_inference_steps"),
                     sigmas=c.get("sigmas"),
                     guidance_scale=g,
                     cfg_normalization=c.get("cfg_normalization", False),
                     cfg_truncation=c.get("cfg_truncation", 1.0),
                     num_images_per_prompt=nipp,
                     max_sequence_length=512,
                     output_type="np",
                     batch=B, latents_shape=list(lat_shape),
                     latents_from="c1_latents (same array)" if name in SAME_LATENTS_AS_C1 else "own draw",
                     reference_mode=("one diffusers call PER PROMPT with latents[i:i+1] (diffusers' batched "
                                     "call with unequal prompts is not used as reference); images stacked"
                                     if c.get("per_prompt") else "one diffusers call"),
                     keys=keys,
                     clamped_fraction=round(clamped, 6))
        if c.get("per_prompt"):
            entry["info_batched_vs_alone_maxabs"] = c["_batched_vs_alone_maxabs"]
            entry["info_batched_rerun_maxabs"] = c["_batched_rerun_maxabs"]
        cases_json.append(entry)

    # sensitivity checks: every path must matter
    def rel(a, b):
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))
    sens = {}
    for n in ["c2", "c8"]:
        sens[f"{n}_vs_c1_images_relL2"] = rel(images[n], images["c1"])  # same latents, other prompt
    c5 = next(c for c in CASES if c["name"] == "c5")
    kw5 = dict(height=64, width=64, num_inference_steps=3, guidance_scale=3.0)
    lat5 = torch.from_numpy(ref["c5_latents"].copy())
    for label, extra in [("no_norm", dict(cfg_normalization=False, cfg_truncation=0.25)),
                         ("no_trunc", dict(cfg_normalization=True, cfg_truncation=1.0)),
                         ("no_cfg", dict(guidance_scale=0.0))]:
        k = dict(kw5, **extra)
        o = pipe(c5["prompt"], latents=lat5.clone(), output_type="np", **k).images
        sens[f"c5_vs_{label}_images_relL2"] = rel(o, images["c5"])
    for k, v in sens.items():
        print(f"  sensitivity {k} = {v:.4f}")
        assert v > 1e-3, (k, v)

    # prompt embeds scale
    pe = ref["c1_prompt_embeds0"]
    print(f"  c1 prompt_embeds {pe.shape} rms {np.sqrt((pe ** 2).mean()):.3f} max|.| {np.abs(pe).max():.3f}")

    C.savez(PIPE_DIR / "reference.npz", ref)
    C.write_json(PIPE_DIR / "cases.json", dict(
        note="Cases run by diffusers ZImagePipeline (fp32, CPU) on tiny/ loaded with from_pretrained. "
             "All calls pass explicit latents (stored) and output_type='np' unless stated. Keys refer to "
             "reference.npz. Lists under 'keys' are per prompt (index i) in prompt order.",
        scheduler=SCHED_CONFIG,
        sensitivity_relL2=sens,
        cases=cases_json))
    C.write_versions(PIPE_DIR)
    # tokenizer.json (11 MB) is the file vendored as tests/fixtures/qwen3-tokenizer/tokenizer.json.xz
    # (same sha256): keep one copy in the repo; tests unpack it into a copy of tiny/
    (TINY / "tokenizer" / "tokenizer.json").unlink()
    print(f"[pipeline] total {C.dir_size(PIPE_DIR)} B in {C.rel(PIPE_DIR)}")
    C.list_files(PIPE_DIR)


if __name__ == "__main__":
    main()
