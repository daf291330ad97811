"""Reference fixtures for the Qwen3 text encoder (transformers Qwen3Model), made by transformers itself.

Run:  /work/refenv/bin/python tests/reference/make_text_encoder_fixtures.py
(CPU only, deterministic: all random numbers come from numpy.random.default_rng with fixed seeds.)

Writes
------
tests/fixtures/text_encoder/<case>/
    text_encoder/      written by transformers `save_pretrained`:
                         prefix "none":  Qwen3Model.save_pretrained -> keys "embed_tokens.weight", "layers.N...", "norm.weight"
                         prefix "model.": the same weights saved through Qwen3ForCausalLM (tied embeddings, so no
                                          lm_head.weight is written) -> keys "model.embed_tokens.weight", ... as in the
                                          real Z-Image-Turbo text_encoder/ checkpoint. For these cases config.json is
                                          rewritten in the transformers-4.x layout of the real file (top-level
                                          "rope_theta", "rope_scaling": null, "torch_dtype"; no "rope_parameters",
                                          no "layer_types"); transformers 5 reads it back identically (checked).
                       single file model.safetensors, or model-0000k-of-0000n.safetensors + model.safetensors.index.json
    io.npz             inputs and transformers' fp32 outputs
    versions.json
tests/fixtures/manifests/
    text_encoder_manifest.json   names + shapes of the real Qwen3-4B encoder, with the "model." prefix
    text_encoder_config.json     the real config.json (transformers-4.51 layout, as in the checkpoint)

io.npz keys
-----------
    nseq                  int64 scalar (3)
    seq{k}_ids            int64 (L_k,)              token ids (L = 1, 7, 40)
    seq{k}_hs_m2          f32 (L_k, hidden)         Qwen3Model(ids[None], output_hidden_states=True).hidden_states[-2][0]
                                                    = raw residual stream after decoder layer n_layers-2 (no final norm)
    full_seq              int64 scalar              index k of the sequence whose every hidden state is stored (the L=40 one)
    seq{full}_hs_all      f32 (n_layers+1, L, hidden) hidden_states[j] for j = 0..n_layers:
                                                    j = 0 embeddings, 1 <= j < n_layers raw output of layer j-1,
                                                    j = n_layers (= -1): final RMSNorm(output of the last layer)
    pad_len               int64 scalar (48)
    pad_id                int64 scalar              id used for right padding
    pad_ids               int64 (nseq, 48)          all sequences right-padded with pad_id
    pad_mask              int64 (nseq, 48)          1 = real token, 0 = pad (attention_mask)
    pad_hs_m2             f32 (nseq, 48, hidden)    hidden_states[-2] of the padded batch call
                                                    model(pad_ids, attention_mask=pad_mask.bool(), output_hidden_states=True);
                                                    only rows with mask 1 are meaningful; they equal seq{k}_hs_m2 up to
                                                    fp32 rounding (max diff printed by the script, asserted < 1e-4)
    (bf16 case only, informational, NOT a bit-exact target:)
    seq{k}_bf16cpu_hs_m2  f32 (L_k, hidden)         same call with the model loaded in bf16 on CPU, upcast to f32
"""
import json
import math
import sys

import numpy as np

import _common as C

torch = C.setup_torch()
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model  # noqa: E402

TE_DIR = C.FIXTURES / "text_encoder"

VOCAB = 512
PAD_ID = VOCAB - 1
SEQ_LENS = [1, 7, 40]
PAD_LEN = 48

CASES = {
    # 4 q heads / 2 kv heads (GQA group 2) / head_dim 16, hidden 64 = 4*16; no prefix; F32 one file
    "a_gqa2_noprefix_f32": dict(
        seed=2001, prefix="", storage="f32", shards=1,
        config=dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=1e6),
    ),
    # 4/4/32, hidden 96 (4*32 = 128 != 96); "model." prefix, BF16, sharded -- like the real checkpoint
    "b_mha_prefix_bf16_sharded": dict(
        seed=2002, prefix="model.", storage="bf16", shards=3,
        config=dict(vocab_size=VOCAB, hidden_size=96, intermediate_size=192, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=4, head_dim=32, rope_theta=1e6),
    ),
    # 8 q heads / 2 kv heads (GQA group 4, as Qwen3-4B) / head_dim 8, hidden 48 (8*8 = 64 != 48);
    # other rope_theta; "model." prefix, F32 one file
    "c_gqa4_prefix_theta1e4_f32": dict(
        seed=2003, prefix="model.", storage="f32", shards=1,
        config=dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=128, num_hidden_layers=3,
                    num_attention_heads=8, num_key_value_heads=2, head_dim=8, rope_theta=1e4),
    ),
}

COMMON = dict(rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu", attention_bias=False,
              attention_dropout=0.0, max_position_embeddings=512, use_sliding_window=False,
              sliding_window=None, bos_token_id=None, eos_token_id=None, pad_token_id=None)


def make_config(cfg):
    cfg = dict(cfg)
    theta = cfg.pop("rope_theta")
    c = Qwen3Config(**cfg, **COMMON, max_window_layers=cfg["num_hidden_layers"],
                    rope_parameters={"rope_type": "default", "rope_theta": theta})
    assert c.rope_parameters["rope_theta"] == theta
    return c


def randomize_(model, rng):
    for name, p in model.named_parameters():
        shape = tuple(p.shape)
        if name.endswith("embed_tokens.weight"):
            v = rng.standard_normal(shape)
        elif p.ndim == 1:  # RMSNorm gains: input_layernorm, post_attention_layernorm, q_norm, k_norm, norm
            v = 1.0 + 0.1 * rng.standard_normal(shape)
        else:  # Linear [out, in], no biases in Qwen3
            v = rng.standard_normal(shape) / math.sqrt(shape[1])
        p.data.copy_(torch.from_numpy(v.astype(np.float32)))


def v4_layout_config(path, theta):
    """Rewrite a transformers-5 config.json in the transformers-4.x layout of the real checkpoint."""
    cfg = json.loads(path.read_text())
    rp = cfg.pop("rope_parameters")
    assert rp == {"rope_theta": theta, "rope_type": "default"}, rp
    cfg.pop("layer_types", None)
    dtype = cfg.pop("dtype", None)
    out = {}
    for k in sorted(list(cfg.keys()) + ["rope_theta", "rope_scaling", "torch_dtype"]):
        if k == "rope_theta":
            out[k] = theta
        elif k == "rope_scaling":
            out[k] = None
        elif k == "torch_dtype":
            out[k] = dtype
        else:
            out[k] = cfg[k]
    out["transformers_version"] = cfg["transformers_version"]
    path.write_text(json.dumps(out, indent=2) + "\n")


def hidden(model, ids, mask=None, dtype=torch.float32):
    ids_t = torch.from_numpy(np.ascontiguousarray(ids))
    kw = {}
    if mask is not None:
        kw["attention_mask"] = torch.from_numpy(mask).bool()
    out = model(input_ids=ids_t, output_hidden_states=True, **kw)
    return [h.float().numpy() for h in out.hidden_states]


def make_case(name, case):
    print(f"[text_encoder] case {name}")
    cdir = C.fresh_dir(TE_DIR / name)
    tdir = cdir / "text_encoder"
    rng = np.random.default_rng(case["seed"])
    config = make_config(case["config"])
    nl = config.num_hidden_layers

    base = Qwen3Model(config).eval()
    randomize_(base, rng)
    sd0 = {k: v.clone() for k, v in base.state_dict().items()}

    to_save = base
    if case["prefix"] == "model.":
        lm = Qwen3ForCausalLM(config).eval()
        lm.model.load_state_dict(sd0)
        assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr(), "not tied"
        to_save = lm
    if case["storage"] == "bf16":
        to_save = to_save.to(torch.bfloat16)
    kw = {}
    if case["shards"] > 1:
        nbytes = sum(p.numel() * p.element_size() for p in to_save.parameters())
        kw["max_shard_size"] = int(nbytes / (case["shards"] - 0.5))
    to_save.save_pretrained(tdir, **kw)
    gen = tdir / "generation_config.json"
    if gen.exists():
        gen.unlink()  # not part of a text_encoder/ folder; written by ForCausalLM only
    if case["prefix"] == "model.":
        v4_layout_config(tdir / "config.json", case["config"]["rope_theta"])

    # check keys on disk
    from safetensors import safe_open
    files = sorted(p.name for p in tdir.iterdir())
    keys, dtypes = [], set()
    for f in files:
        if f.endswith(".safetensors"):
            with safe_open(str(tdir / f), "pt") as s:
                for k in s.keys():
                    keys.append(k)
                    dtypes.add(str(s.get_slice(k).get_dtype()))
    exp_keys = sorted(case["prefix"] + k for k in sd0)
    assert sorted(keys) == exp_keys, (sorted(keys)[:5], exp_keys[:5])
    if case["shards"] > 1:
        idx = json.loads((tdir / "model.safetensors.index.json").read_text())
        assert len(set(idx["weight_map"].values())) >= 3
    print(f"  files {files}; {len(keys)} tensors, dtypes {dtypes}, prefix {case['prefix']!r}")

    # Reference = Qwen3Model.from_pretrained on the fixture, fp32 (as diffusers loads text_encoder)
    ref = Qwen3Model.from_pretrained(tdir, dtype=torch.float32).eval()
    assert ref.config.rope_parameters["rope_theta"] == case["config"]["rope_theta"]
    assert ref.config.num_key_value_heads == case["config"]["num_key_value_heads"]
    sdr = ref.state_dict()
    for k, v in sd0.items():
        exp = v.to(torch.bfloat16).float() if case["storage"] == "bf16" else v
        assert sdr[k].dtype == torch.float32 and torch.equal(sdr[k], exp), k
    assert ref.rotary_emb.inv_freq.dtype == torch.float32

    io = {"nseq": np.int64(len(SEQ_LENS))}
    seqs = [rng.integers(0, PAD_ID, size=L).astype(np.int64) for L in SEQ_LENS]
    full = SEQ_LENS.index(40)
    io["full_seq"] = np.int64(full)
    for k, ids in enumerate(seqs):
        hs = hidden(ref, ids[None])
        assert len(hs) == nl + 1
        io[f"seq{k}_ids"] = ids
        io[f"seq{k}_hs_m2"] = hs[-2][0]
        if k == full:
            io[f"seq{k}_hs_all"] = np.stack([h[0] for h in hs])
        print(f"  seq{k}: L={len(ids)} max|hs[-2]|={np.abs(hs[-2]).max():.3f} rms={np.sqrt((hs[-2]**2).mean()):.3f} "
              f"max|hs[-1]|={np.abs(hs[-1]).max():.3f} max|hs[1]|={np.abs(hs[1]).max():.3f}")

    # padded batch call
    pid = np.full((len(seqs), PAD_LEN), PAD_ID, dtype=np.int64)
    pm = np.zeros((len(seqs), PAD_LEN), dtype=np.int64)
    for k, ids in enumerate(seqs):
        pid[k, :len(ids)] = ids
        pm[k, :len(ids)] = 1
    hs = hidden(ref, pid, pm)
    io["pad_len"] = np.int64(PAD_LEN)
    io["pad_id"] = np.int64(PAD_ID)
    io["pad_ids"] = pid
    io["pad_mask"] = pm
    io["pad_hs_m2"] = hs[-2]
    for k, ids in enumerate(seqs):
        d = np.abs(hs[-2][k, :len(ids)] - io[f"seq{k}_hs_m2"]).max()
        print(f"  padded row {k}: max|padded - unpadded| over valid rows = {d:.3e}")
        assert d < 1e-4, d

    if case["storage"] == "bf16":
        mb = Qwen3Model.from_pretrained(tdir, dtype=torch.bfloat16).eval()
        for k, ids in enumerate(seqs):
            h = hidden(mb, ids[None])[-2][0]
            io[f"seq{k}_bf16cpu_hs_m2"] = h
            r = io[f"seq{k}_hs_m2"]
            print(f"  seq{k}: bf16-cpu vs fp32 rel-L2 {np.linalg.norm(h - r) / np.linalg.norm(r):.3e}")

    C.savez(cdir / "io.npz", io)
    C.write_versions(cdir)
    print(f"  case {name}: {C.dir_size(cdir)} B total")


REAL_CONFIG_JSON = {  # Qwen/Qwen3-4B config.json (= Z-Image-Turbo text_encoder/config.json per text_spec §3.1)
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 2560,
    "initializer_range": 0.02,
    "intermediate_size": 9728,
    "max_position_embeddings": 40960,
    "max_window_layers": 36,
    "model_type": "qwen3",
    "num_attention_heads": 32,
    "num_hidden_layers": 36,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}


def make_manifest():
    print("[text_encoder] manifest")
    cfg = Qwen3Config.from_dict(dict(REAL_CONFIG_JSON))
    assert cfg.rope_parameters["rope_theta"] == 1e6 and cfg.head_dim == 128 and cfg.tie_word_embeddings
    with torch.device("meta"):
        m = Qwen3Model(cfg)
    sd = m.state_dict()
    tensors = [{"name": "model." + k, "shape": list(v.shape)} for k, v in sd.items()]
    nparams = sum(v.numel() for v in sd.values())
    assert len(tensors) == 398, len(tensors)
    assert nparams == 4_022_468_096, nparams
    # non-persistent buffers (rotary inv_freq) are not in the state dict / checkpoint
    C.write_json(C.MANIFESTS / "text_encoder_config.json", REAL_CONFIG_JSON)
    manifest = {
        "model": "Z-Image-Turbo text_encoder = Qwen/Qwen3-4B base model (transformers Qwen3Model)",
        "built_from": "transformers Qwen3Model(Qwen3Config(**text_encoder_config)) on the meta device; "
                      "names prefixed with 'model.' as in the checkpoint (saved from Qwen3ForCausalLM, tied "
                      "lm_head not stored)",
        "num_tensors": len(tensors),
        "num_params": nparams,
        "bf16_total_bytes": nparams * 2,
        "storage_dtype_per_spec": "BF16 (text_spec §3.2; read dtype from each header)",
        "needed_for_zimage": "model.embed_tokens.weight and model.layers.0..34.* (hidden_states[-2]); "
                             "model.layers.35.* and model.norm.weight are unused",
        "tensors": tensors,
    }
    C.write_json(C.MANIFESTS / "text_encoder_manifest.json", manifest)
    C.write_versions(C.MANIFESTS)
    print(f"  {len(tensors)} tensors, {nparams:,} params")


def main():
    only = sys.argv[1:]
    for name, case in CASES.items():
        if not only or name in only:
            make_case(name, case)
    make_manifest()
    C.write_versions(TE_DIR)
    print(f"[text_encoder] total {C.dir_size(TE_DIR)} B in {C.rel(TE_DIR)}")
    C.list_files(TE_DIR)


if __name__ == "__main__":
    main()
