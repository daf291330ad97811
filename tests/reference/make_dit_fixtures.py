"""Reference fixtures for the Z-Image DiT (diffusers ZImageTransformer2DModel), made by diffusers itself.

Run:  /work/refenv/bin/python tests/reference/make_dit_fixtures.py
(CPU only, deterministic: all random numbers come from numpy.random.default_rng with fixed seeds.)

Writes
------
tests/fixtures/dit/<case>/
    transformer/           written by diffusers `save_pretrained` (real key names, config.json,
                           diffusion_pytorch_model.safetensors or -0000k-of-0000n shards + .index.json)
    io.npz                 inputs and diffusers' fp32 outputs of several forward calls
    intermediates.npz      hooked intermediate tensors of call 0 (B = 1) for debugging
    versions.json          torch / diffusers / transformers / safetensors versions used
tests/fixtures/manifests/
    dit_manifest.json      every tensor name + shape of the full-size Z-Image-Turbo transformer
    dit_config.json        its config (diffusers' own serialisation of the real values)

io.npz keys (k = call index, i = sample index in the call)
---------------------------------------------------------
    ncalls                int64 scalar
    call{k}_B             int64 scalar, batch size of call k
    call{k}_t             float32 (B,)              timestep as given to the model (t_model, 0 = noise)
    call{k}_x{i}          float32 (16, 1, Hl, Wl)   latent of sample i
    call{k}_cap{i}        float32 (L_i, cap_feat_dim) caption features of sample i
    call{k}_out{i}        float32 (16, 1, Hl, Wl)   model(x_list, t, cap_list, return_dict=False)[0][i],
                                                    computed in fp32 on CPU from the weights in transformer/
    (case "c_bf16" only, informational, NOT a bit-exact target:)
    call{k}_bf16cpu_out{i} float32 (16,1,Hl,Wl)     the same call run by diffusers in bf16 on CPU
                                                    (model loaded with torch_dtype=bf16, x and cap in bf16,
                                                    t in f32), upcast to f32. Gives the scale of bf16 error.

intermediates.npz keys (call 0 of io.npz, B = 1; N = image tokens, Np = N rounded up to 32,
L = caption length, Lp = L rounded up to 32, S = Np + Lp, D = dim, A = min(D, 256))
---------------------------------------------------------------------------------------------
    call                       int64 scalar = 0
    img_pos_ids                int32 (Np, 3)   RoPE position ids of image tokens (pads are (0,0,0))
    cap_pos_ids                int32 (Lp, 3)   RoPE position ids of caption tokens (1+i, 0, 0), i < Lp
                                               (caption pad rows continue 1+L..Lp; image pad rows are 0,0,0;
                                               image rows are (Lp+1, h, w))
    img_pad_mask               uint8 (Np,)     1 for image pad rows
    cap_pad_mask               uint8 (Lp,)     1 for caption pad rows
    t_emb                      f32 (1, A)      t_embedder output = adaln_input (input was t*t_scale)
    x_embed                    f32 (Np, D)     all_x_embedder["2-1"] output (BEFORE pad rows are replaced
                                               by x_pad_token; pad rows are the embedded last patch)
    cap_embed                  f32 (Lp, D)     cap_embedder output (BEFORE cap_pad_token replacement)
    noise_refiner{j}_in        f32 (1, Np, D)  input of noise_refiner[j] (j=0: after pad-token replacement)
    noise_refiner{j}_out       f32 (1, Np, D)
    context_refiner{j}_in      f32 (1, Lp, D)
    context_refiner{j}_out     f32 (1, Lp, D)
    layers0_in                 f32 (1, S, D)   unified sequence [image tokens ; caption tokens]
    layers{j}_out              f32 (1, S, D)   for every main layer j
    final_out                  f32 (1, S, 64)  all_final_layer["2-1"] output (before unpatchify)
Only j = 0 is stored for the refiners/layers when the case is large (see INTERMEDIATE_ALL).
"""
import json
import math
import sys
from pathlib import Path

import numpy as np

import _common as C

torch = C.setup_torch()
from diffusers import ZImageTransformer2DModel  # noqa: E402

DIT_DIR = C.FIXTURES / "dit"

# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------
CASES = {
    # (a) small, 2 heads of 32, F32 in one file
    "a_small_f32": dict(
        seed=1001,
        config=dict(all_patch_size=[2], all_f_patch_size=[1], in_channels=16, dim=64, n_layers=2,
                    n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True,
                    cap_feat_dim=32, rope_theta=256.0, t_scale=1000.0,
                    axes_dims=[8, 12, 12], axes_lens=[128, 16, 16]),
        storage="f32", shards=1,
    ),
    # (b) real head geometry: head_dim 128, axes [32,48,48], real axes_lens; F32 sharded (>= 3 shards)
    "b_hd128_sharded_f32": dict(
        seed=1002,
        config=dict(all_patch_size=[2], all_f_patch_size=[1], in_channels=16, dim=256, n_layers=1,
                    n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True,
                    cap_feat_dim=64, rope_theta=256.0, t_scale=1000.0,
                    axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512]),
        storage="f32", shards=4,
    ),
    # (c) BF16 storage (model loaded in bf16 by diffusers and saved); reference in fp32 from the
    #     bf16 weights upcast. 4 heads of 16.
    "c_bf16": dict(
        seed=1003,
        config=dict(all_patch_size=[2], all_f_patch_size=[1], in_channels=16, dim=64, n_layers=2,
                    n_refiner_layers=1, n_heads=4, n_kv_heads=4, norm_eps=1e-5, qk_norm=True,
                    cap_feat_dim=48, rope_theta=256.0, t_scale=1000.0,
                    axes_dims=[4, 6, 6], axes_lens=[128, 16, 16]),
        storage="bf16", shards=1,
    ),
    # (d) odd config: dim 96, 3 heads of 32, FFN int(96/3*8) = 256, 3 main layers, other rope_theta
    "d_dim96_3heads": dict(
        seed=1004,
        config=dict(all_patch_size=[2], all_f_patch_size=[1], in_channels=16, dim=96, n_layers=3,
                    n_refiner_layers=1, n_heads=3, n_kv_heads=3, norm_eps=1e-5, qk_norm=True,
                    cap_feat_dim=40, rope_theta=10000.0, t_scale=1000.0,
                    axes_dims=[8, 12, 12], axes_lens=[256, 32, 32]),
        storage="f32", shards=1,
    ),
}

# t values from the scheduler tables of dit_spec §5.1 (t_model = (1000 - timestep)/1000, f32)
T_TABLE = {
    "0": 0.0, "0.04": 0.0399999395, "0.087": 0.0869564265, "0.294": 0.29411763,
    "0.5": 0.5, "0.727": 0.727272749,
}

# Calls: each is a list of samples (Hl, Wl, caption length, t key).
#  call 0: 12x10 latent -> 6x5 = 30 image tokens (2 pad), caption 33 (Lp 64, 31 pad)  [intermediates]
#  call 1: 8x8 -> 16 tokens (16 pad), caption 5, t = 0
#  call 2: B=2, same image 8x12 (Hl != Wl, 24 tokens), captions 40 / 5 -> Lp 64 / 32:
#          mask in context refiner and main layers, none in noise refiner
#  call 3: B=2, images 16x10 (40 -> Np 64) and 6x4 (6 -> Np 32), captions 33 / 40 (both Lp 64):
#          mask in noise refiner and main layers, none in context refiner
#  call 4: 16x16 -> 64 tokens (no image pad), caption 70 (Lp 96)
CALLS = [
    [(12, 10, 33, "0.727")],
    [(8, 8, 5, "0")],
    [(8, 12, 40, "0.087"), (8, 12, 5, "0.294")],
    [(16, 10, 33, "0.04"), (6, 4, 40, "0.727")],
    [(16, 16, 70, "0.5")],
]


def randomize_(model: torch.nn.Module, rng: np.random.Generator) -> None:
    """Overwrite EVERY parameter with random values (nothing zero/constant, activations O(1))."""
    for name, p in model.named_parameters():
        shape = tuple(p.shape)
        if name.endswith("pad_token"):
            v = rng.standard_normal(shape)
        elif name.endswith(".bias"):
            v = 0.1 * rng.standard_normal(shape)
        elif p.ndim == 1:  # RMSNorm gains (attention_norm*, ffn_norm*, norm_q/k, cap_embedder.0)
            v = 1.0 + 0.1 * rng.standard_normal(shape)
        else:  # Linear weights [out, in]
            fan_in = int(np.prod(shape[1:]))
            v = rng.standard_normal(shape) / math.sqrt(fan_in)
        p.data.copy_(torch.from_numpy(v.astype(np.float32)))


def make_inputs(rng, cap_dim):
    calls = []
    for samples in CALLS:
        xs, caps, ts = [], [], []
        for (hl, wl, L, tk) in samples:
            xs.append(rng.standard_normal((16, 1, hl, wl)).astype(np.float32))
            caps.append(rng.standard_normal((L, cap_dim)).astype(np.float32))
            ts.append(np.float32(T_TABLE[tk]))
        calls.append((xs, np.array(ts, dtype=np.float32), caps))
    return calls


def run_call(model, xs, t, caps, dtype=torch.float32):
    xl = [torch.from_numpy(x).to(dtype) for x in xs]
    cl = [torch.from_numpy(c).to(dtype) for c in caps]
    out = model(xl, torch.from_numpy(t), cl, return_dict=False)[0]
    return [o.float().numpy() for o in out]


def capture_intermediates(model, xs, t, caps, store_all):
    """Run one B=1 call with forward hooks and return a dict of intermediates."""
    rec = {}
    hooks = []

    def out_hook(key):
        def fn(mod, args, out):
            rec[key] = out.detach().float().numpy().copy()
        return fn

    def in_hook(key):
        def fn(mod, args):
            rec[key] = args[0].detach().float().numpy().copy()
        return fn

    hooks.append(model.t_embedder.register_forward_hook(out_hook("t_emb")))
    hooks.append(model.all_x_embedder["2-1"].register_forward_hook(out_hook("x_embed")))
    hooks.append(model.cap_embedder.register_forward_hook(out_hook("cap_embed")))
    for name in ("noise_refiner", "context_refiner", "layers"):
        blocks = getattr(model, name)
        for j, blk in enumerate(blocks):
            if j == 0 or store_all:
                if name != "layers" or j == 0:
                    hooks.append(blk.register_forward_pre_hook(in_hook(f"{name}{j}_in")))
                hooks.append(blk.register_forward_hook(out_hook(f"{name}{j}_out")))
    hooks.append(model.all_final_layer["2-1"].register_forward_hook(out_hook("final_out")))
    try:
        out = run_call(model, xs, t, caps)
    finally:
        for h in hooks:
            h.remove()

    # position ids / pad masks, from diffusers' own patchify_and_embed
    xl = [torch.from_numpy(x) for x in xs]
    cl = [torch.from_numpy(c) for c in caps]
    (_, _, _, img_pos, cap_pos, img_pad, cap_pad) = model.patchify_and_embed(xl, cl, 2, 1)
    # NB: for captions diffusers builds a grid of Lp positions (1..Lp) and then APPENDS (Lp-L) extra
    # (0,0,0) rows, so cap_pos[0] has 2*Lp-L rows; _prepare_sequence truncates the RoPE table to the
    # first Lp rows. Store the rows that are actually used: caption (1+i,0,0) for i < Lp.
    np_, lp = len(img_pad[0]), len(cap_pad[0])
    rec["img_pos_ids"] = img_pos[0][:np_].numpy().astype(np.int32)
    rec["cap_pos_ids"] = cap_pos[0][:lp].numpy().astype(np.int32)
    rec["img_pad_mask"] = img_pad[0].numpy().astype(bool)
    rec["cap_pad_mask"] = cap_pad[0].numpy().astype(bool)
    assert (rec["cap_pos_ids"][:, 0] == np.arange(1, lp + 1)).all() and (rec["cap_pos_ids"][:, 1:] == 0).all()
    n_img = int((~rec["img_pad_mask"]).sum())
    assert (rec["img_pos_ids"][:n_img, 0] == lp + 1).all() and (rec["img_pos_ids"][n_img:] == 0).all()
    # pad-token replacement happened between x_embed / cap_embed and the refiner inputs
    xp = model.x_pad_token.detach().float().numpy()[0]
    cp = model.cap_pad_token.detach().float().numpy()[0]
    assert np.array_equal(rec["noise_refiner0_in"][0][rec["img_pad_mask"]], np.broadcast_to(xp, (np_ - n_img, xp.size)))
    assert np.array_equal(rec["noise_refiner0_in"][0][~rec["img_pad_mask"]], rec["x_embed"][~rec["img_pad_mask"]])
    n_cap = int((~rec["cap_pad_mask"]).sum())
    assert np.array_equal(rec["context_refiner0_in"][0][rec["cap_pad_mask"]], np.broadcast_to(cp, (lp - n_cap, cp.size)))
    assert np.array_equal(rec["context_refiner0_in"][0][~rec["cap_pad_mask"]], rec["cap_embed"][~rec["cap_pad_mask"]])
    rec["call"] = np.int64(0)
    rec["img_pad_mask"] = rec["img_pad_mask"].astype(np.uint8)  # plain uint8 0/1 in the file
    rec["cap_pad_mask"] = rec["cap_pad_mask"].astype(np.uint8)
    return rec, out


def save_model(model, tdir, case):
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if case["shards"] > 1:
        # small max_shard_size so that save_pretrained writes >= 3 shards + index json
        max_shard = int(nbytes / (case["shards"] - 0.5))
        model.save_pretrained(tdir, max_shard_size=max_shard)
    else:
        model.save_pretrained(tdir)


def make_case(name, case):
    print(f"[dit] case {name}")
    cdir = C.fresh_dir(DIT_DIR / name)
    tdir = cdir / "transformer"
    rng = np.random.default_rng(case["seed"])
    cfg = case["config"]

    model = ZImageTransformer2DModel(**cfg).eval()
    randomize_(model, rng)
    nparams = sum(p.numel() for p in model.parameters())

    if case["storage"] == "bf16":
        # "a model loaded in bf16 and saved": save f32, let diffusers load it with torch_dtype=bf16, save that.
        tmp = cdir / "_tmp_f32"
        model.save_pretrained(tmp)
        mb = ZImageTransformer2DModel.from_pretrained(tmp, torch_dtype=torch.bfloat16)
        assert all(p.dtype == torch.bfloat16 for p in mb.parameters())
        save_model(mb, tdir, case)
        # from_pretrained recorded the temporary load path as "_name_or_path"; drop it (not portable)
        cfg_path = tdir / "config.json"
        cj = json.loads(cfg_path.read_text())
        cj.pop("_name_or_path", None)
        cfg_path.write_text(json.dumps(cj, indent=2, sort_keys=True) + "\n")
        import shutil
        shutil.rmtree(tmp)
        del mb
    else:
        save_model(model, tdir, case)

    # Reference model = what diffusers loads back from the fixture, in fp32.
    ref = ZImageTransformer2DModel.from_pretrained(tdir, torch_dtype=torch.float32).eval()
    assert all(p.dtype == torch.float32 for p in ref.parameters())
    sd_ref = ref.state_dict()
    for k, v in model.state_dict().items():
        exp = v.to(torch.bfloat16).float() if case["storage"] == "bf16" else v
        assert torch.equal(sd_ref[k], exp), k

    # check the on-disk layout
    files = sorted(p.name for p in tdir.iterdir())
    if case["shards"] > 1:
        idx = json.loads((tdir / "diffusion_pytorch_model.safetensors.index.json").read_text())
        nshard = len(set(idx["weight_map"].values()))
        assert nshard >= 3, nshard
        assert len(idx["weight_map"]) == len(sd_ref)
    else:
        assert "diffusion_pytorch_model.safetensors" in files, files
    print(f"  {nparams} params, {len(sd_ref)} tensors, files: {files}")

    calls = make_inputs(rng, cfg["cap_feat_dim"])
    io = {"ncalls": np.int64(len(calls))}
    for k, (xs, t, caps) in enumerate(calls):
        outs = run_call(ref, xs, t, caps)
        io[f"call{k}_B"] = np.int64(len(xs))
        io[f"call{k}_t"] = t
        for i, (x, c, o) in enumerate(zip(xs, caps, outs)):
            assert o.shape == x.shape
            io[f"call{k}_x{i}"] = x
            io[f"call{k}_cap{i}"] = c
            io[f"call{k}_out{i}"] = o
        print(f"  call{k}: B={len(xs)} x={[x.shape[2:] for x in xs]} L={[c.shape[0] for c in caps]} "
              f"t={t.tolist()} max|out|={max(np.abs(o).max() for o in outs):.4f} "
              f"rms(out)={np.sqrt(np.mean(np.concatenate([o.ravel() for o in outs])**2)):.4f}")

    # batch consistency: each sample of a B=2 call equals the same sample run alone (fp32, CPU)
    for k, (xs, t, caps) in enumerate(calls):
        if len(xs) > 1:
            for i in range(len(xs)):
                solo = run_call(ref, [xs[i]], t[i:i + 1], [caps[i]])[0]
                d = np.abs(solo - io[f"call{k}_out{i}"]).max()
                print(f"  call{k} sample {i}: max|batched - alone| = {d:.3e}")
                assert d < 1e-4, d

    # pad tokens matter: perturbing them changes the output of call 0
    with torch.no_grad():
        saved = ref.x_pad_token.data.clone()
        ref.x_pad_token.data.add_(1.0)
        o2 = run_call(ref, *calls[0])[0]
        ref.x_pad_token.data.copy_(saved)
        saved = ref.cap_pad_token.data.clone()
        ref.cap_pad_token.data.add_(1.0)
        o3 = run_call(ref, *calls[0])[0]
        ref.cap_pad_token.data.copy_(saved)
    print(f"  sensitivity of call0 to x_pad_token: {np.abs(o2 - io['call0_out0']).max():.3e}, "
          f"to cap_pad_token: {np.abs(o3 - io['call0_out0']).max():.3e}")
    assert np.abs(o2 - io["call0_out0"]).max() > 1e-3 and np.abs(o3 - io["call0_out0"]).max() > 1e-3

    if case["storage"] == "bf16":
        mb = ZImageTransformer2DModel.from_pretrained(tdir, torch_dtype=torch.bfloat16).eval()
        for k, (xs, t, caps) in enumerate(calls):
            outs = run_call(mb, xs, t, caps, dtype=torch.bfloat16)
            for i, o in enumerate(outs):
                io[f"call{k}_bf16cpu_out{i}"] = o
                ref_o = io[f"call{k}_out{i}"]
                rel = np.linalg.norm(o - ref_o) / np.linalg.norm(ref_o)
                print(f"  call{k} sample {i}: bf16-cpu vs fp32 rel-L2 {rel:.3e}, max-abs {np.abs(o-ref_o).max():.3e}")
        del mb

    C.savez(cdir / "io.npz", io)

    store_all = nparams < 2_000_000
    inter, out0 = capture_intermediates(ref, *calls[0], store_all=store_all)
    assert np.array_equal(out0[0], io["call0_out0"])
    C.savez(cdir / "intermediates.npz", inter)
    for k in sorted(inter):
        if k != "call":
            print(f"    {k}: {inter[k].shape} {inter[k].dtype}")
    C.write_versions(cdir)
    print(f"  case {name}: {C.dir_size(cdir)} B total")


# ---------------------------------------------------------------------------------------------
# Manifest of the full-size model (meta device, no memory)
# ---------------------------------------------------------------------------------------------
REAL_CONFIG = dict(all_patch_size=[2], all_f_patch_size=[1], in_channels=16, dim=3840, n_layers=30,
                   n_refiner_layers=2, n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True,
                   cap_feat_dim=2560, rope_theta=256.0, t_scale=1000.0,
                   axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512])


def make_manifest():
    print("[dit] manifest")
    with torch.device("meta"):
        m = ZImageTransformer2DModel(**REAL_CONFIG)
    sd = m.state_dict()
    tensors = [{"name": k, "shape": list(v.shape)} for k, v in sd.items()]
    nparams = sum(v.numel() for v in sd.values())
    assert len(tensors) == 521, len(tensors)
    assert nparams == 6_154_908_736, nparams
    assert not list(m.buffers()), "unexpected buffers"
    # diffusers' own serialisation of the config (what save_pretrained writes as config.json)
    cfg_json = json.loads(m.to_json_string())
    C.write_json(C.MANIFESTS / "dit_config.json", cfg_json)
    manifest = {
        "model": "Tongyi-MAI/Z-Image-Turbo transformer (diffusers ZImageTransformer2DModel)",
        "built_from": "diffusers ZImageTransformer2DModel(**dit_config) on the meta device",
        "num_tensors": len(tensors),
        "num_params": nparams,
        "f32_total_bytes": nparams * 4,
        "storage_dtype_per_spec": "F32 (dit_spec §2.1, third-party reports; read dtype from each header)",
        "config": {k: v for k, v in cfg_json.items() if not k.startswith("_")},
        "tensors": tensors,
    }
    C.write_json(C.MANIFESTS / "dit_manifest.json", manifest)
    C.write_versions(C.MANIFESTS)
    print(f"  {len(tensors)} tensors, {nparams:,} params")


def main():
    only = sys.argv[1:]
    for name, case in CASES.items():
        if not only or name in only:
            make_case(name, case)
    make_manifest()
    C.write_versions(DIT_DIR)  # also one at the top of dit/
    print(f"[dit] total {C.dir_size(DIT_DIR)} B in {C.rel(DIT_DIR)}")
    C.list_files(DIT_DIR)


if __name__ == "__main__":
    main()
