"""Qwen3 text encoder (zimage.Qwen3Model, CPU) against transformers' fp32 Qwen3Model.

Fixtures: tests/fixtures/text_encoder/<case>/ made by tests/reference/make_text_encoder_fixtures.py
(transformers save_pretrained + its hidden_states), and the real Qwen3-4B manifest in
tests/fixtures/manifests/. A small NumPy reference (checked here against the fixtures) covers what
the fixtures do not: attention biases.
"""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

import zimage
from conftest import FIXTURES, rel_l2, write_safetensors
from zimage import _zimage

TE_DIR = Path(FIXTURES) / "text_encoder"
MANIFESTS = Path(FIXTURES) / "manifests"
CASES = sorted(p.parent.name for p in TE_DIR.glob("*/io.npz"))
TOL = 1e-4  # relative L2 against transformers fp32


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(case):
        if case not in cache:
            cache[case] = zimage.Qwen3Model.from_pretrained(TE_DIR / case, subfolder="text_encoder")
        return cache[case]

    return get


def load_io(case):
    with np.load(TE_DIR / case / "io.npz") as z:
        return {k: z[k] for k in z.files}


# ------------------------------------------------------------------------------------------
# parity with transformers


def test_fixture_cases_exist():
    assert len(CASES) >= 3


@pytest.mark.parametrize("case", CASES)
def test_hidden_states_m2(case, models):
    m, io = models(case), load_io(case)
    for k in range(int(io["nseq"])):
        out = m.encode(io[f"seq{k}_ids"])
        ref = io[f"seq{k}_hs_m2"]
        assert out.dtype == np.float32 and out.shape == ref.shape
        err = rel_l2(out, ref)
        print(f"text_encoder {case} seq{k} L={len(ref)} hidden_states[-2]: rel L2 {err:.2e}")
        assert err < TOL, f"{case} seq{k}: relative L2 error {err:.2e}"


@pytest.mark.parametrize("case", CASES)
def test_every_layer(case, models):
    m, io = models(case), load_io(case)
    full = int(io["full_seq"])
    ids, hs = io[f"seq{full}_ids"], io[f"seq{full}_hs_all"]
    n = m.config["num_hidden_layers"]
    assert hs.shape[0] == n + 1
    errs = []
    for j in range(-(n + 1), n + 1):
        errs.append(rel_l2(m.encode(ids, layer=j), hs[j]))
        assert errs[-1] < TOL, f"{case} hidden_states[{j}]: relative L2 error {errs[-1]:.2e}"
    print(f"text_encoder {case} hidden_states[0..{n}]: rel L2 " + " ".join(f"{e:.1e}" for e in errs[n + 1:]))
    # hidden_states[0] is the embedding gather: exact
    np.testing.assert_array_equal(m.encode(ids, layer=0), hs[0])


@pytest.mark.parametrize("case", CASES)
def test_padded_reference(case, models):
    """Our unpadded sequence equals the valid rows of transformers' right-padded batch call."""
    m, io = models(case), load_io(case)
    for k in range(int(io["nseq"])):
        L = int(io["pad_mask"][k].sum())
        np.testing.assert_array_equal(io["pad_ids"][k, :L], io[f"seq{k}_ids"])
        out = m.encode(io["pad_ids"][k, :L])
        ref = io["pad_hs_m2"][k, :L]
        err = rel_l2(out, ref)
        print(f"text_encoder {case} seq{k} vs padded batch: rel L2 {err:.2e}")
        assert err < TOL, f"{case} seq{k} vs padded: relative L2 error {err:.2e}"


def test_input_forms(models):
    case = CASES[0]
    m, io = models(case), load_io(case)
    ids = io["seq1_ids"]
    a = m.encode(ids)
    np.testing.assert_array_equal(m.encode(ids[None]), a)                 # (1, L)
    np.testing.assert_array_equal(m.encode(ids.tolist()), a)              # list
    np.testing.assert_array_equal(m.encode(ids.astype(np.int32)), a)      # int32
    np.testing.assert_array_equal(m.encode(ids, layer=np.int64(-2)), a)
    # a longer call in between (activations grow) changes nothing for the short one
    m.encode(np.concatenate([ids] * 9))
    np.testing.assert_array_equal(m.encode(ids), a)


def test_config_device_to(models):
    m = models(CASES[0])
    cfg = json.loads((TE_DIR / CASES[0] / "text_encoder" / "config.json").read_text())
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "attention_bias", "rms_norm_eps"):
        assert m.config[key] == cfg[key], key
    assert m.device == "cpu"
    assert m.to("cpu") is m and m.device == "cpu"
    assert m.to(zimage.bfloat16) is m and m.dtype == zimage.bfloat16
    if not zimage.cuda_compiled():
        with pytest.raises(zimage.ZImageError):
            m.to("cuda")
        assert m.device == "cpu"


# ------------------------------------------------------------------------------------------
# the real checkpoint's names and shapes


def test_manifest_matches_real_checkpoint():
    manifest = json.loads((MANIFESTS / "text_encoder_manifest.json").read_text())
    want = [(t["name"], tuple(t["shape"])) for t in manifest["tensors"] if not t["name"].startswith("lm_head")]
    got = _zimage.text_encoder_weight_manifest(str(MANIFESTS / "text_encoder_config.json"))
    assert got == want                                   # same names, shapes and state-dict order
    assert len(got) == manifest["num_tensors"] == 398
    assert sum(math.prod(s) for _, s in got) == manifest["num_params"]
    bare = _zimage.text_encoder_weight_manifest(str(MANIFESTS / "text_encoder_config.json"), prefix="")
    assert [n for n, _ in bare] == [n[len("model."):] for n, _ in want]


def test_manifest_matches_fixture_checkpoints():
    for case in CASES:
        tdir = TE_DIR / case / "text_encoder"
        on_disk = {}
        for f in sorted(tdir.glob("*.safetensors")):
            on_disk.update({k: v.shape for k, v in _zimage.read_safetensors(str(f)).items()})
        prefix = "model." if any(k.startswith("model.") for k in on_disk) else ""
        got = _zimage.text_encoder_weight_manifest(str(tdir / "config.json"), prefix=prefix)
        assert dict(got) == on_disk, case


# ------------------------------------------------------------------------------------------
# a NumPy Qwen3Model (float64), checked against the fixtures, for what they do not cover


def read_weights(tdir):
    w = {}
    for f in sorted(Path(tdir).glob("*.safetensors")):
        w.update(_zimage.read_safetensors(str(f)))
    return {k[len("model."):] if k.startswith("model.") else k: v.astype(np.float64) for k, v in w.items()}


def numpy_qwen3(w, cfg, ids):
    """All hidden_states of transformers' Qwen3Model for one sequence, in float64."""
    nh, nkv, hd, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"], cfg["rms_norm_eps"]
    theta = cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"]
    S = len(ids)

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def lin(x, name):
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if name + ".bias" in w else y

    ang = np.arange(S)[:, None] * (1.0 / theta ** (np.arange(0, hd, 2) / hd))[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1))[:, None], np.sin(np.concatenate([ang, ang], -1))[:, None]

    def rope(x):  # [S, heads, hd], rotate-half
        return x * cos + np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1) * sin

    x = w["embed_tokens.weight"][ids]
    hs = [x]
    mask = np.triu(np.full((S, S), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = rope(rms(lin(h, p + "self_attn.q_proj").reshape(S, nh, hd), w[p + "self_attn.q_norm.weight"]))
        k = rope(rms(lin(h, p + "self_attn.k_proj").reshape(S, nkv, hd), w[p + "self_attn.k_norm.weight"]))
        v = lin(h, p + "self_attn.v_proj").reshape(S, nkv, hd)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        s = np.einsum("ihd,jhd->hij", q, k) / math.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        o = np.einsum("hij,jhd->ihd", s / s.sum(-1, keepdims=True), v).reshape(S, nh * hd)
        x = x + lin(o, p + "self_attn.o_proj")
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        g = lin(h, p + "mlp.gate_proj")
        x = x + lin(g / (1 + np.exp(-g)) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
        hs.append(x)
    hs[-1] = rms(x, w["norm.weight"])
    return np.stack(hs)


def test_numpy_reference_matches_fixtures():
    for case in CASES:
        io = load_io(case)
        tdir = TE_DIR / case / "text_encoder"
        cfg = json.loads((tdir / "config.json").read_text())
        full = int(io["full_seq"])
        hs = numpy_qwen3(read_weights(tdir), cfg, io[f"seq{full}_ids"])
        for j in range(hs.shape[0]):
            assert rel_l2(hs[j], io[f"seq{full}_hs_all"][j]) < TOL, (case, j)


def make_checkpoint(dst, cfg, weights, prefix="model."):
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.json").write_text(json.dumps(cfg))
    write_safetensors(dst / "model.safetensors", {prefix + k: v for k, v in weights.items()})
    return dst


def test_attention_bias(tmp_path):
    """attention_bias=True: q/k/v/o biases (Qwen3Attention), checked against the NumPy reference."""
    case = CASES[0]
    src = TE_DIR / case / "text_encoder"
    cfg = json.loads((src / "config.json").read_text())
    cfg["attention_bias"] = True
    w = read_weights(src)
    rng = np.random.default_rng(7)
    for i in range(cfg["num_hidden_layers"]):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            rows = w[f"layers.{i}.self_attn.{proj}.weight"].shape[0]
            w[f"layers.{i}.self_attn.{proj}.bias"] = 0.5 * rng.standard_normal(rows)
    w = {k: v.astype(np.float32) for k, v in w.items()}
    d = make_checkpoint(tmp_path / "bias", cfg, w)
    m = zimage.Qwen3Model.from_pretrained(d)
    assert m.config["attention_bias"] is True
    ids = rng.integers(0, cfg["vocab_size"], 29)
    ref = numpy_qwen3({k: v.astype(np.float64) for k, v in w.items()}, cfg, ids)
    for j in range(-1, -ref.shape[0] - 1, -1):
        assert rel_l2(m.encode(ids, layer=j), ref[j]) < TOL, j
    # the same config without the bias tensors is a missing-tensor error naming one of them
    shutil.rmtree(d)
    make_checkpoint(d, cfg, {k: v for k, v in w.items() if not k.endswith(".bias")})
    with pytest.raises(ValueError, match=r"layers\.0\.self_attn\.q_proj\.bias"):
        zimage.Qwen3Model.from_pretrained(d)


def test_real_head_geometry(tmp_path):
    """head_dim 128 and rope_theta 1e6 as Qwen3-4B (the hard-coded inv_freq table), GQA with one kv head,
    NH*HD != hidden, transformers-5 config layout (rope_parameters, head_dim null -> 128 given explicitly)."""
    rng = np.random.default_rng(11)
    cfg = dict(model_type="qwen3", vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=2, num_key_value_heads=1, head_dim=128, rms_norm_eps=1e-6,
               rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, attention_bias=False)
    D, F, HD = 64, 96, 128
    shapes = {"embed_tokens.weight": (64, D), "norm.weight": (D,)}
    for i in range(2):
        p = f"layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (2 * HD, D), p + "self_attn.k_proj.weight": (HD, D),
                       p + "self_attn.v_proj.weight": (HD, D), p + "self_attn.o_proj.weight": (D, 2 * HD),
                       p + "self_attn.q_norm.weight": (HD,), p + "self_attn.k_norm.weight": (HD,),
                       p + "mlp.gate_proj.weight": (F, D), p + "mlp.up_proj.weight": (F, D),
                       p + "mlp.down_proj.weight": (D, F), p + "input_layernorm.weight": (D,),
                       p + "post_attention_layernorm.weight": (D,)})
    w = {k: (1 + 0.1 * rng.standard_normal(s) if len(s) == 1 else rng.standard_normal(s) / math.sqrt(s[-1]))
         .astype(np.float32) for k, s in shapes.items()}
    w["embed_tokens.weight"] *= math.sqrt(D)
    m = zimage.Qwen3Model.from_pretrained(make_checkpoint(tmp_path / "hd128", cfg, w))
    assert m.config["head_dim"] == 128 and m.config["rope_theta"] == 1e6
    ids = rng.integers(0, 64, 300)  # long enough for the low-frequency RoPE pairs to matter
    ref = numpy_qwen3({k: v.astype(np.float64) for k, v in w.items()}, {**cfg, "rope_theta": 1e6}, ids)
    for j in range(3):
        assert rel_l2(m.encode(ids, layer=j), ref[j]) < TOL, j


def test_extra_lm_head_and_bare_names(tmp_path):
    case = CASES[0]
    src = TE_DIR / case / "text_encoder"
    cfg = json.loads((src / "config.json").read_text())
    w = {k: v.astype(np.float32) for k, v in read_weights(src).items()}
    io = load_io(case)
    ref = io["seq2_hs_m2"]
    d1 = make_checkpoint(tmp_path / "lm_head", cfg, w)
    write_safetensors(d1 / "model.safetensors",
                      {**{"model." + k: v for k, v in w.items()}, "lm_head.weight": w["embed_tokens.weight"]})
    d2 = make_checkpoint(tmp_path / "bare", cfg, w, prefix="")
    for d in (d1, d2):
        assert rel_l2(zimage.Qwen3Model.from_pretrained(d).encode(io["seq2_ids"]), ref) < TOL


# ------------------------------------------------------------------------------------------
# errors


def test_bad_ids(models):
    m = models(CASES[0])
    V = m.config["vocab_size"]
    for ids in ([1, -1, 2], [V], [0, V + 5], []):
        with pytest.raises(ValueError):
            m.encode(np.array(ids, dtype=np.int64))
    with pytest.raises(ValueError):
        m.encode([])
    with pytest.raises(ValueError):
        m.encode(np.array([1.5, 2.0]))
    with pytest.raises(ValueError):
        m.encode(np.zeros((2, 3), dtype=np.int64))
    # the C entry point checks on its own too
    with pytest.raises(ValueError, match="out of range"):
        m._core.encode(np.array([0, V], dtype=np.int64))
    with pytest.raises(ValueError, match="empty"):
        m._core.encode(np.zeros(0, dtype=np.int64))


def test_bad_layer(models):
    m = models(CASES[0])
    n = m.config["num_hidden_layers"]
    for layer in (n + 1, -(n + 2), 1000):
        with pytest.raises(ValueError, match="layer"):
            m.encode([1, 2, 3], layer=layer)
        with pytest.raises(ValueError, match="layer"):
            m._core.encode(np.array([1, 2, 3]), layer)


def test_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        zimage.Qwen3Model.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):
        zimage.Qwen3Model.from_pretrained(TE_DIR / CASES[0], subfolder="nope")
    with pytest.raises(FileNotFoundError):
        _zimage.TextEncoder(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((TE_DIR / CASES[0] / "text_encoder" / "config.json").read_text())
    with pytest.raises(FileNotFoundError):  # config but no weights
        zimage.Qwen3Model.from_pretrained(tmp_path / "empty")


def test_wrong_shape(tmp_path):
    src = TE_DIR / CASES[0] / "text_encoder"
    cfg = json.loads((src / "config.json").read_text())
    w = {k: v.astype(np.float32) for k, v in read_weights(src).items()}
    w["layers.1.self_attn.k_proj.weight"] = w["layers.1.self_attn.k_proj.weight"][:-1]
    d = make_checkpoint(tmp_path / "shape", cfg, w)
    with pytest.raises(ValueError, match=r"layers\.1\.self_attn\.k_proj\.weight"):
        zimage.Qwen3Model.from_pretrained(d)


def test_truncated_file(tmp_path):
    d = tmp_path / "trunc"
    shutil.copytree(TE_DIR / CASES[0] / "text_encoder", d)
    f = d / "model.safetensors"
    data = f.read_bytes()
    for n in (len(data) - 100, 200, 4):
        f.write_bytes(data[:n])
        with pytest.raises(ValueError):
            zimage.Qwen3Model.from_pretrained(d)


@pytest.mark.parametrize("patch, match", [
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type"),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e6, "factor": 2.0}}, "rope_type"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 1}, "sliding"),
    ({"num_key_value_heads": 3}, "inconsistent"),
    ({"model_type": "qwen2"}, "model_type"),
])
def test_unsupported_config(tmp_path, patch, match):
    d = tmp_path / "cfg"
    shutil.copytree(TE_DIR / CASES[0] / "text_encoder", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(patch)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=match):
        zimage.Qwen3Model.from_pretrained(d)
