"""Independent check of the fixtures: a float64 numpy re-implementation written from the specs
(dit_spec §3-4, text_spec §3.3-3.5, vae_spec §3-4, §9) that reads ONLY the fixture files
(raw safetensors parsing, config.json, *.npz) -- i.e. what the C port will do -- and compares
with the outputs diffusers/transformers produced.

Run:  /work/refenv/bin/python tests/reference/check_fixtures.py      (needs only numpy)
"""
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np

FIX = Path(__file__).resolve().parents[1] / "fixtures"
FAIL = []


# ------------------------------------------------------------------------------------ loading
def read_safetensors(path):
    out = {}
    raw = Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    base = 8 + n
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        buf = raw[base + b: base + e]
        if v["dtype"] == "F32":
            a = np.frombuffer(buf, "<f4")
        elif v["dtype"] == "BF16":
            a = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(v["dtype"])
        out[k] = a.reshape(v["shape"]).astype(np.float64)
    return out


def load_dir(d, stem):
    """stem = 'diffusion_pytorch_model' or 'model'; single file or sharded with index."""
    d = Path(d)
    idx = d / f"{stem}.safetensors.index.json"
    if idx.exists():
        wm = json.loads(idx.read_text())["weight_map"]
        w = {}
        for f in sorted(set(wm.values())):
            part = read_safetensors(d / f)
            assert all(wm[k] == f for k in part), f
            w.update(part)
        assert set(w) == set(wm)
        return w
    return read_safetensors(d / f"{stem}.safetensors")


def compare(tag, got, exp, tol=2e-4):
    exp = np.asarray(exp, np.float64)
    err = np.abs(got - exp).max()
    rel = err / max(1e-12, np.abs(exp).max())
    ok = rel < tol
    print(f"    {'ok ' if ok else 'BAD'} {tag}: max-abs {err:.2e} (rel to max {rel:.2e})")
    if not ok:
        FAIL.append(tag)


def silu(x):
    return x / (1 + np.exp(-x))


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * w


def softmax(s):
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


# ------------------------------------------------------------------------------------ DiT
class DiT:
    def __init__(self, d):
        self.cfg = json.loads((Path(d) / "config.json").read_text())
        self.w = load_dir(d, "diffusion_pytorch_model")
        c = self.cfg
        self.D, self.H = c["dim"], c["n_heads"]
        self.hd = self.D // self.H
        self.eps = c["norm_eps"]

    def lin(self, x, p, bias=True):
        y = x @ self.w[p + ".weight"].T
        return y + self.w[p + ".bias"] if bias else y

    def rope_table(self, pos):  # pos (S,3) -> cos, sin (S, hd/2)
        angs = []
        for a, d in enumerate(self.cfg["axes_dims"]):
            om = 1.0 / (self.cfg["rope_theta"] ** (np.arange(0, d, 2, dtype=np.float64) / d))
            angs.append(pos[:, a:a + 1].astype(np.float64) * om[None])
        ang = np.concatenate(angs, 1)
        return np.cos(ang), np.sin(ang)

    def attention(self, x, p, cs):
        S = x.shape[0]
        q = self.lin(x, p + ".to_q", False).reshape(S, self.H, self.hd)
        k = self.lin(x, p + ".to_k", False).reshape(S, self.H, self.hd)
        v = self.lin(x, p + ".to_v", False).reshape(S, self.H, self.hd)
        q = rmsnorm(q, self.w[p + ".norm_q.weight"], 1e-5)
        k = rmsnorm(k, self.w[p + ".norm_k.weight"], 1e-5)
        cos, sin = cs

        def rope(z):  # interleaved pairs (2j, 2j+1)
            a, b = z[..., 0::2], z[..., 1::2]
            c, s = cos[:, None], sin[:, None]
            out = np.empty_like(z)
            out[..., 0::2] = a * c - b * s
            out[..., 1::2] = a * s + b * c
            return out

        q, k = rope(q), rope(k)
        att = softmax(np.einsum("shd,thd->hst", q, k) / math.sqrt(self.hd))
        o = np.einsum("hst,thd->shd", att, v).reshape(S, self.D)
        return self.lin(o, p + ".to_out.0", False)

    def block(self, x, p, cs, c=None):
        nm = lambda z, n: rmsnorm(z, self.w[f"{p}.{n}.weight"], self.eps)
        ffn = lambda z: self.lin(silu(self.lin(z, p + ".feed_forward.w1", False)) *
                                 self.lin(z, p + ".feed_forward.w3", False), p + ".feed_forward.w2", False)
        if c is not None:
            m = self.lin(c, p + ".adaLN_modulation.0")
            sm, gm, sf, gf = np.split(m, 4)
            sm, sf, gm, gf = 1 + sm, 1 + sf, np.tanh(gm), np.tanh(gf)
            x = x + gm * nm(self.attention(nm(x, "attention_norm1") * sm, p + ".attention", cs), "attention_norm2")
            x = x + gf * nm(ffn(nm(x, "ffn_norm1") * sf), "ffn_norm2")
        else:
            x = x + nm(self.attention(nm(x, "attention_norm1"), p + ".attention", cs), "attention_norm2")
            x = x + nm(ffn(nm(x, "ffn_norm1")), "ffn_norm2")
        return x

    def forward1(self, x, t, cap, rec=None):
        cfg = self.cfg
        # t embedder
        tt = float(t) * cfg["t_scale"]
        fr = np.exp(-math.log(10000) * np.arange(128) / 128)
        emb = np.concatenate([np.cos(tt * fr), np.sin(tt * fr)])
        c = self.lin(silu(self.lin(emb, "t_embedder.mlp.0")), "t_embedder.mlp.2")
        # caption
        L = cap.shape[0]
        Lp = L + (-L) % 32
        capp = np.concatenate([cap, np.repeat(cap[-1:], Lp - L, 0)])
        T = self.lin(rmsnorm(capp, self.w["cap_embedder.0.weight"], self.eps), "cap_embedder.1")
        if rec is not None:
            rec["cap_embed"] = T.copy()
        T[L:] = self.w["cap_pad_token"][0]
        cap_pos = np.stack([np.arange(1, Lp + 1), np.zeros(Lp, int), np.zeros(Lp, int)], 1)
        # image
        C_, F_, Hl, Wl = x.shape
        Ht, Wt = Hl // 2, Wl // 2
        patches = x.reshape(C_, F_, 1, Ht, 2, Wt, 2).transpose(1, 3, 5, 2, 4, 6, 0).reshape(F_ * Ht * Wt, 4 * C_)
        N = patches.shape[0]
        Np = N + (-N) % 32
        patches = np.concatenate([patches, np.repeat(patches[-1:], Np - N, 0)])
        X = self.lin(patches, "all_x_embedder.2-1")
        if rec is not None:
            rec["x_embed"] = X.copy()
        X[N:] = self.w["x_pad_token"][0]
        hh, ww = np.meshgrid(np.arange(Ht), np.arange(Wt), indexing="ij")
        img_pos = np.zeros((Np, 3), int)
        img_pos[:N] = np.stack([np.full(N, Lp + 1), hh.ravel(), ww.ravel()], 1)
        if rec is not None:
            rec.update(t_emb=c, img_pos_ids=img_pos, cap_pos_ids=cap_pos, noise_refiner0_in=X.copy(),
                       context_refiner0_in=T.copy())
        ics, ccs = self.rope_table(img_pos), self.rope_table(cap_pos)
        for j in range(cfg["n_refiner_layers"]):
            X = self.block(X, f"noise_refiner.{j}", ics, c)
            if rec is not None:
                rec[f"noise_refiner{j}_out"] = X.copy()
        for j in range(cfg["n_refiner_layers"]):
            T = self.block(T, f"context_refiner.{j}", ccs)
            if rec is not None:
                rec[f"context_refiner{j}_out"] = T.copy()
        U = np.concatenate([X, T])
        if rec is not None:
            rec["layers0_in"] = U.copy()
        ucs = tuple(np.concatenate([a, b]) for a, b in zip(ics, ccs))
        for j in range(cfg["n_layers"]):
            U = self.block(U, f"layers.{j}", ucs, c)
            if rec is not None:
                rec[f"layers{j}_out"] = U.copy()
        scale = 1 + self.lin(silu(c), "all_final_layer.2-1.adaLN_modulation.1")
        mu = U.mean(-1, keepdims=True)
        var = ((U - mu) ** 2).mean(-1, keepdims=True)
        out = self.lin((U - mu) / np.sqrt(var + 1e-6) * scale, "all_final_layer.2-1.linear")
        if rec is not None:
            rec["final_out"] = out.copy()
        tok = out[:N]
        return tok.reshape(F_, Ht, Wt, 1, 2, 2, C_).transpose(6, 0, 3, 1, 4, 2, 5).reshape(C_, F_, Hl, Wl)


def check_dit():
    print("[dit]")
    for cdir in sorted(p for p in (FIX / "dit").iterdir() if p.is_dir()):
        print(f"  {cdir.name}")
        m = DiT(cdir / "transformer")
        io = np.load(cdir / "io.npz")
        for k in range(int(io["ncalls"])):
            B = int(io[f"call{k}_B"])
            for i in range(B):
                got = m.forward1(io[f"call{k}_x{i}"].astype(np.float64), io[f"call{k}_t"][i],
                                 io[f"call{k}_cap{i}"].astype(np.float64))
                compare(f"call{k} out{i}", got, io[f"call{k}_out{i}"])
        it = np.load(cdir / "intermediates.npz")
        rec = {}
        m.forward1(io["call0_x0"].astype(np.float64), io["call0_t"][0], io["call0_cap0"].astype(np.float64), rec)
        for key in sorted(it.files):
            if key not in rec and key not in ("call", "img_pad_mask", "cap_pad_mask"):
                print(f"    --- {key} not checked")
            if key in rec:
                if it[key].dtype.kind == "i":
                    ok = np.array_equal(rec[key], it[key])
                    print(f"    {'ok ' if ok else 'BAD'} intermediate {key} (exact)")
                    if not ok:
                        FAIL.append(f"{cdir.name}:{key}")
                else:
                    compare(f"intermediate {key}", rec[key], it[key].reshape(rec[key].shape))


# ------------------------------------------------------------------------------------ Qwen3
def qwen3_hidden(w, cfg, ids, pfx):
    g = lambda n: w[pfx + n]
    theta = cfg["rope_parameters"]["rope_theta"] if "rope_parameters" in cfg else cfg["rope_theta"]
    eps, hd = cfg["rms_norm_eps"], cfg["head_dim"]
    nq, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    L = len(ids)
    x = g("embed_tokens.weight")[ids]
    hs = [x]
    inv = 1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    ang = np.arange(L)[:, None] * inv[None]
    cos = np.concatenate([np.cos(ang)] * 2, 1)[:, None]
    sin = np.concatenate([np.sin(ang)] * 2, 1)[:, None]
    rot = lambda z: np.concatenate([-z[..., hd // 2:], z[..., :hd // 2]], -1)
    mask = np.tril(np.ones((L, L), bool))
    for l in range(cfg["num_hidden_layers"]):
        p = f"layers.{l}."
        h = rmsnorm(x, g(p + "input_layernorm.weight"), eps)
        q = (h @ g(p + "self_attn.q_proj.weight").T).reshape(L, nq, hd)
        k = (h @ g(p + "self_attn.k_proj.weight").T).reshape(L, nkv, hd)
        v = (h @ g(p + "self_attn.v_proj.weight").T).reshape(L, nkv, hd)
        q = rmsnorm(q, g(p + "self_attn.q_norm.weight"), eps)
        k = rmsnorm(k, g(p + "self_attn.k_norm.weight"), eps)
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        rep = nq // nkv
        k, v = np.repeat(k, rep, 1), np.repeat(v, rep, 1)
        s = np.einsum("shd,thd->hst", q, k) / math.sqrt(hd)
        s = np.where(mask[None], s, -np.inf)
        o = np.einsum("hst,thd->shd", softmax(s), v).reshape(L, nq * hd)
        x = x + o @ g(p + "self_attn.o_proj.weight").T
        h2 = rmsnorm(x, g(p + "post_attention_layernorm.weight"), eps)
        x = x + (silu(h2 @ g(p + "mlp.gate_proj.weight").T) * (h2 @ g(p + "mlp.up_proj.weight").T)) @ g(p + "mlp.down_proj.weight").T
        hs.append(x)
    hs[-1] = rmsnorm(x, g("norm.weight"), eps)
    return hs


def check_text_encoder():
    print("[text_encoder]")
    for cdir in sorted(p for p in (FIX / "text_encoder").iterdir() if p.is_dir()):
        print(f"  {cdir.name}")
        d = cdir / "text_encoder"
        cfg = json.loads((d / "config.json").read_text())
        w = load_dir(d, "model")
        pfx = "model." if "model.embed_tokens.weight" in w else ""
        print(f"    prefix {pfx!r}, {len(w)} tensors, config rope key "
              f"{'rope_parameters' if 'rope_parameters' in cfg else 'rope_theta'}")
        io = np.load(cdir / "io.npz")
        full = int(io["full_seq"])
        for k in range(int(io["nseq"])):
            hs = qwen3_hidden(w, cfg, io[f"seq{k}_ids"], pfx)
            compare(f"seq{k} hs[-2]", hs[-2], io[f"seq{k}_hs_m2"])
            if k == full:
                compare(f"seq{k} hs_all", np.stack(hs), io[f"seq{k}_hs_all"])
            n = len(io[f"seq{k}_ids"])
            assert io["pad_mask"][k].sum() == n and (io["pad_ids"][k, :n] == io[f"seq{k}_ids"]).all()
            assert (io["pad_ids"][k, n:] == io["pad_id"]).all()
            compare(f"seq{k} padded valid rows", hs[-2], io["pad_hs_m2"][k, :n])


# ------------------------------------------------------------------------------------ VAE
def conv2d(x, w, b, pad):  # x (C,H,W), w (O,C,kh,kw)
    C_, H, W = x.shape
    O, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = H + 2 * pad - kh + 1, W + 2 * pad - kw + 1
    cols = np.stack([xp[:, i:i + Ho, j:j + Wo] for i in range(kh) for j in range(kw)], 1)  # C, kh*kw, Ho, Wo
    return np.einsum("ock,ckhw->ohw", w.reshape(O, C_, kh * kw), cols) + b[:, None, None]


def groupnorm(x, g, b, groups, eps=1e-6):
    C_ = x.shape[0]
    xg = x.reshape(groups, -1)
    mu = xg.mean(1, keepdims=True)
    var = ((xg - mu) ** 2).mean(1, keepdims=True)
    return ((xg - mu) / np.sqrt(var + eps)).reshape(x.shape) * g[:, None, None] + b[:, None, None]


def vae_decode1(w, cfg, z):
    G = cfg["norm_num_groups"]
    cv = lambda x, p: conv2d(x, w[p + ".weight"], w[p + ".bias"], w[p + ".weight"].shape[-1] // 2)
    gn = lambda x, p: groupnorm(x, w[p + ".weight"], w[p + ".bias"], G)

    def resnet(x, p):
        h = cv(silu(gn(x, p + ".norm1")), p + ".conv1")
        h = cv(silu(gn(h, p + ".norm2")), p + ".conv2")
        s = cv(x, p + ".conv_shortcut") if p + ".conv_shortcut.weight" in w else x
        return s + h

    def attn(x, p):
        C_, H, W = x.shape
        t = gn(x, p + ".group_norm").reshape(C_, H * W).T
        l = lambda z, n: z @ w[f"{p}.{n}.weight"].T + w[f"{p}.{n}.bias"]
        q, k, v = l(t, "to_q"), l(t, "to_k"), l(t, "to_v")
        o = l(softmax(q @ k.T / math.sqrt(C_)) @ v, "to_out.0")
        return o.T.reshape(C_, H, W) + x

    x = cv(z, "decoder.conv_in")
    x = resnet(x, "decoder.mid_block.resnets.0")
    x = attn(x, "decoder.mid_block.attentions.0")
    x = resnet(x, "decoder.mid_block.resnets.1")
    nb = len(cfg["block_out_channels"])
    for i in range(nb):
        for j in range(cfg["layers_per_block"] + 1):
            x = resnet(x, f"decoder.up_blocks.{i}.resnets.{j}")
        if i < nb - 1:
            x = cv(x.repeat(2, 1).repeat(2, 2), f"decoder.up_blocks.{i}.upsamplers.0.conv")
    return cv(silu(gn(x, "decoder.conv_norm_out")), "decoder.conv_out")


def bf16_round(a):
    u = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16
    return u.astype(np.uint32).view(np.float32)


def check_vae():
    print("[vae]")
    for cdir in sorted(p for p in (FIX / "vae").iterdir() if p.is_dir()):
        print(f"  {cdir.name}")
        cfg = json.loads((cdir / "vae" / "config.json").read_text())
        w = read_safetensors(cdir / "vae" / "diffusion_pytorch_model.safetensors")
        io = np.load(cdir / "io.npz")
        for k in range(int(io["ncalls"])):
            z = io[f"call{k}_z"].astype(np.float64)
            got = np.stack([vae_decode1(w, cfg, zb) for zb in z])
            compare(f"call{k} out {got.shape}", got, io[f"call{k}_out"])
    print("  postprocess")
    pp = np.load(FIX / "vae" / "postprocess.npz")
    for a, n, u in [("post_in", "post_np", "post_u8"), ("edge_in", "edge_np", "edge_u8")]:
        x = pp[a].astype(np.float32)
        v = np.clip(x * np.float32(0.5) + np.float32(0.5), 0, 1).transpose(0, 2, 3, 1)
        ok = np.array_equal(v, pp[n]) and np.array_equal(np.rint(v * np.float32(255)).astype(np.uint8), pp[u])
        print(f"    {'ok ' if ok else 'BAD'} {u} (fp32 rule: rint(clamp(x*0.5+0.5,0,1)*255))")
        if not ok:
            FAIL.append(u)
    x = pp["edge_bf16_in"].astype(np.float32)
    v = np.clip(bf16_round(x * np.float32(0.5) + np.float32(0.5)), 0, 1).transpose(0, 2, 3, 1)
    ok = np.array_equal(np.rint(v * np.float32(255)).astype(np.uint8), pp["edge_bf16_u8"])
    print(f"    {'ok ' if ok else 'BAD'} edge_bf16_u8 (bf16 rule: rint(clamp(bf16(x*0.5+0.5),0,1)*255))")
    if not ok:
        FAIL.append("edge_bf16_u8")


def check_manifests():
    print("[manifests]")
    m = json.loads((FIX / "manifests" / "dit_manifest.json").read_text())
    t = {e["name"]: e["shape"] for e in m["tensors"]}
    assert len(t) == 521 and sum(math.prod(s) for s in t.values()) == 6_154_908_736
    assert t["all_x_embedder.2-1.weight"] == [3840, 64] and t["t_embedder.mlp.0.weight"] == [1024, 256]
    assert t["layers.29.adaLN_modulation.0.weight"] == [15360, 256] and "context_refiner.1.adaLN_modulation.0.weight" not in t
    assert t["layers.0.feed_forward.w1.weight"] == [10240, 3840] and t["cap_embedder.1.weight"] == [3840, 2560]
    m = json.loads((FIX / "manifests" / "text_encoder_manifest.json").read_text())
    t = {e["name"]: e["shape"] for e in m["tensors"]}
    assert len(t) == 398 and t["model.embed_tokens.weight"] == [151936, 2560]
    assert t["model.layers.35.self_attn.q_proj.weight"] == [4096, 2560] and t["model.layers.0.self_attn.k_norm.weight"] == [128]
    m = json.loads((FIX / "manifests" / "vae_manifest.json").read_text())
    t = {e["name"]: e["shape"] for e in m["tensors"]}
    assert len(t) == 138 and t["decoder.conv_in.weight"] == [512, 16, 3, 3]
    assert t["decoder.up_blocks.3.resnets.0.conv_shortcut.weight"] == [128, 256, 1, 1]
    assert t["decoder.mid_block.attentions.0.to_q.weight"] == [512, 512] and "decoder.up_blocks.3.upsamplers.0.conv.weight" not in t
    print("    ok manifests")


if __name__ == "__main__":
    check_manifests()
    check_dit()
    check_text_encoder()
    check_vae()
    print("FAILURES:", FAIL if FAIL else "none")
    sys.exit(1 if FAIL else 0)
