"""The AutoencoderKL decoder on the CPU against diffusers' fp32 outputs (fixtures made by
tests/reference/make_vae_fixtures.py), a float64 NumPy reference of the decoder for shapes and
configs the fixtures lack, the uint8 postprocessing, the real checkpoint's manifest, and error paths."""
import glob
import json
import os

import numpy as np
import pytest

import zimage
from conftest import FIXTURES, rel_l2, write_safetensors
from zimage import _zimage

VAE = os.path.join(FIXTURES, "vae")
CASES = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(VAE, "*", "io.npz")))
ERR = {}  # (case, call) -> relative L2 error, printed by test_report_errors


def load_case(case):
    d = os.path.join(VAE, case)
    return zimage.AutoencoderKL.from_pretrained(d, subfolder="vae"), np.load(os.path.join(d, "io.npz"))


# ---------------------------------------------------------------------------------------------
# float64 NumPy reference of diffusers' Decoder (vae_spec.md section 4)

def np_conv(x, w, b):  # x [C, H, W], w [O, C, k, k], zero padding k // 2
    k = w.shape[2]
    p = k // 2
    H, W = x.shape[1:]
    xp = np.pad(x, ((0, 0), (p, p), (p, p)))
    out = np.broadcast_to(b[:, None, None], (w.shape[0], H, W)).copy()
    for i in range(k):
        for j in range(k):
            out += np.einsum("oc,chw->ohw", w[:, :, i, j], xp[:, i:i + H, j:j + W])
    return out


def np_gn(x, g, b, G, silu):
    C = x.shape[0]
    v = x.reshape(G, -1)
    v = (v - v.mean(1, keepdims=True)) / np.sqrt(v.var(1, keepdims=True) + 1e-6)
    y = v.reshape(x.shape) * g[:, None, None] + b[:, None, None]
    return y / (1 + np.exp(-y)) if silu else y


def np_resnet(x, sd, p, G):
    h = np_conv(np_gn(x, sd[p + "norm1.weight"], sd[p + "norm1.bias"], G, True), sd[p + "conv1.weight"], sd[p + "conv1.bias"])
    h = np_conv(np_gn(h, sd[p + "norm2.weight"], sd[p + "norm2.bias"], G, True), sd[p + "conv2.weight"], sd[p + "conv2.bias"])
    if p + "conv_shortcut.weight" in sd:
        x = np_conv(x, sd[p + "conv_shortcut.weight"], sd[p + "conv_shortcut.bias"])
    return x + h


def np_attention(x, sd, p, G):
    C, H, W = x.shape
    t = np_gn(x, sd[p + "group_norm.weight"], sd[p + "group_norm.bias"], G, False).reshape(C, -1).T
    q, k, v = (t @ sd[p + n + ".weight"].T + sd[p + n + ".bias"] for n in ("to_q", "to_k", "to_v"))
    s = q @ k.T / np.sqrt(C)
    a = np.exp(s - s.max(1, keepdims=True))
    o = (a / a.sum(1, keepdims=True)) @ v
    o = o @ sd[p + "to_out.0.weight"].T + sd[p + "to_out.0.bias"]
    return o.T.reshape(C, H, W) + x


def np_decode(sd, cfg, z):
    G, nb, nr = cfg["norm_num_groups"], len(cfg["block_out_channels"]), cfg["layers_per_block"] + 1
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    outs = []
    for zb in z.astype(np.float64):
        if "post_quant_conv.weight" in sd:
            zb = np_conv(zb, sd["post_quant_conv.weight"], sd["post_quant_conv.bias"])
        x = np_conv(zb, sd["decoder.conv_in.weight"], sd["decoder.conv_in.bias"])
        x = np_resnet(x, sd, "decoder.mid_block.resnets.0.", G)
        if cfg.get("mid_block_add_attention", True):
            x = np_attention(x, sd, "decoder.mid_block.attentions.0.", G)
        x = np_resnet(x, sd, "decoder.mid_block.resnets.1.", G)
        for i in range(nb):
            for j in range(nr):
                x = np_resnet(x, sd, f"decoder.up_blocks.{i}.resnets.{j}.", G)
            if i < nb - 1:
                x = x.repeat(2, axis=1).repeat(2, axis=2)
                x = np_conv(x, sd[f"decoder.up_blocks.{i}.upsamplers.0.conv.weight"],
                            sd[f"decoder.up_blocks.{i}.upsamplers.0.conv.bias"])
        x = np_gn(x, sd["decoder.conv_norm_out.weight"], sd["decoder.conv_norm_out.bias"], G, True)
        outs.append(np_conv(x, sd["decoder.conv_out.weight"], sd["decoder.conv_out.bias"]))
    return np.stack(outs)


def case_weights(case):
    d = os.path.join(VAE, case, "vae")
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    return cfg, _zimage.read_safetensors(os.path.join(d, "diffusion_pytorch_model.safetensors"))


def make_variant(tmp_path, case, edit_sd=None, edit_cfg=None):
    """A copy of a fixture's vae/ folder with its tensors and/or config edited."""
    cfg, sd = case_weights(case)
    sd = dict(sd)
    if edit_sd:
        edit_sd(sd)
    if edit_cfg:
        edit_cfg(cfg)
    d = tmp_path / "vae"
    d.mkdir(parents=True)
    with open(d / "config.json", "w") as f:
        json.dump(cfg, f)
    write_safetensors(str(d / "diffusion_pytorch_model.safetensors"), sd)
    return str(d), cfg, sd


# ---------------------------------------------------------------------------------------------
# against diffusers

def test_fixture_cases_exist():
    assert len(CASES) >= 3


@pytest.mark.parametrize("case", CASES)
def test_matches_diffusers_fp32(case):
    vae, io = load_case(case)
    up = int(io["up_factor"])
    for k in range(int(io["ncalls"])):
        z, ref = io[f"call{k}_z"], io[f"call{k}_out"]
        out = vae.decode(z).sample
        assert out.dtype == np.float32 and out.shape == ref.shape == (z.shape[0], 3, up * z.shape[2], up * z.shape[3])
        err = rel_l2(out, ref)
        ERR[(case, k, z.shape)] = err
        assert err < 1e-4, f"{case} call {k} z {z.shape}: relative L2 error {err:.2e}"


def test_numpy_reference_matches_diffusers():
    """The float64 reference below is trusted only because it reproduces diffusers here."""
    case = CASES[-1]
    cfg, sd = case_weights(case)
    io = np.load(os.path.join(VAE, case, "io.npz"))
    for k in range(int(io["ncalls"])):
        assert rel_l2(np_decode(sd, cfg, io[f"call{k}_z"]), io[f"call{k}_out"]) < 1e-5


@pytest.mark.parametrize("shape", [(1, 5, 3), (1, 2, 7), (2, 1, 3), (1, 7, 1)])
def test_odd_latent_sizes(shape):
    case = CASES[-1]
    vae, _ = load_case(case)
    cfg, sd = case_weights(case)
    z = (np.random.default_rng(sum(shape)).standard_normal((shape[0], 16) + shape[1:]) / 0.3611 + 0.1159)
    z = z.astype(np.float32)
    out = vae.decode(z).sample
    assert out.shape == (shape[0], 3, 8 * shape[1], 8 * shape[2])
    assert rel_l2(out, np_decode(sd, cfg, z)) < 1e-4


def test_batch_equals_one_at_a_time_and_buffers_regrow():
    vae, io = load_case(CASES[0])
    calls = [(io[f"call{k}_z"], io[f"call{k}_out"]) for k in range(int(io["ncalls"]))]
    # smallest first, so each larger input grows the activation block, then back down
    calls.sort(key=lambda c: c[0].size)
    for z, ref in calls + calls[::-1]:
        assert rel_l2(vae.decode(z).sample, ref) < 1e-4
    z2 = next(z for z, _ in calls if z.shape[0] == 2)
    batched = vae.decode(z2).sample
    for i in range(2):
        np.testing.assert_allclose(batched[i:i + 1], vae.decode(z2[i:i + 1]).sample, rtol=0, atol=1e-6)
    empty = vae.decode(np.zeros((0, 16, 2, 3), np.float32)).sample
    assert empty.shape == (0, 3, 2 * int(io["up_factor"]), 3 * int(io["up_factor"]))


def test_api_surface():
    vae, io = load_case(CASES[0])
    z = io["call1_z"]
    (sample,) = vae.decode(z, return_dict=False)
    res = vae.decode(z)
    np.testing.assert_array_equal(sample, res.sample)
    np.testing.assert_array_equal(res[0], res.sample)
    c = vae.config
    assert c["scaling_factor"] == pytest.approx(0.3611) and c.shift_factor == pytest.approx(0.1159)
    assert c.latent_channels == 16 and c.block_out_channels == [32, 64] and c.layers_per_block == 1
    assert c.use_post_quant_conv is False and c.mid_block_add_attention is True and c._class_name == "AutoencoderKL"
    assert vae.device == "cpu" and vae.to("cpu") is vae and vae.device == "cpu"
    vae2 = zimage.AutoencoderKL.from_pretrained(os.path.join(VAE, CASES[0], "vae"), torch_dtype="bfloat16")
    assert vae2.dtype == zimage.bfloat16
    np.testing.assert_array_equal(vae2.decode(z.astype(np.float64)).sample, sample)  # any float dtype in


def test_legacy_attention_names(tmp_path):
    ren = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

    def legacy(sd):
        p = "decoder.mid_block.attentions.0."
        for new, old in ren.items():
            for s in ("weight", "bias"):
                sd[f"{p}{old}.{s}"] = sd.pop(f"{p}{new}.{s}")

    case = CASES[1]
    d, _, _ = make_variant(tmp_path, case, edit_sd=legacy)
    io = np.load(os.path.join(VAE, case, "io.npz"))
    vae = zimage.AutoencoderKL.from_pretrained(d)
    assert rel_l2(vae.decode(io["call0_z"]).sample, io["call0_out"]) < 1e-4


def test_post_quant_conv_and_no_attention(tmp_path):
    rng = np.random.default_rng(7)

    def edit(sd):
        sd["post_quant_conv.weight"] = (rng.standard_normal((16, 16, 1, 1)) / 4).astype(np.float32)
        sd["post_quant_conv.bias"] = (0.1 * rng.standard_normal(16)).astype(np.float32)
        for k in [k for k in sd if k.startswith("decoder.mid_block.attentions.")]:
            del sd[k]

    def edit_cfg(cfg):
        cfg["use_post_quant_conv"] = True
        cfg["mid_block_add_attention"] = False

    d, cfg, sd = make_variant(tmp_path, CASES[1], edit, edit_cfg)
    vae = zimage.AutoencoderKL.from_pretrained(d)
    z = rng.standard_normal((2, 16, 3, 2)).astype(np.float32)
    assert rel_l2(vae.decode(z).sample, np_decode(sd, cfg, z)) < 1e-4
    names = [n for n, _ in _zimage.vae_weight_manifest(os.path.join(d, "config.json"))]
    assert "post_quant_conv.weight" in names and not any(".attentions." in n for n in names)


# ---------------------------------------------------------------------------------------------
# postprocessing

def test_postprocess_uint8_matches_diffusers():
    pp = np.load(os.path.join(VAE, "postprocess.npz"))
    for src, ref in (("post_in", "post_u8"), ("edge_in", "edge_u8")):
        out = _zimage.postprocess_uint8(pp[src])
        assert out.dtype == np.uint8 and out.shape == ref_shape(pp[src])
        np.testing.assert_array_equal(out, pp[ref])
    np.testing.assert_array_equal(zimage.vae.postprocess_uint8(pp["edge_bf16_in"], bf16=True), pp["edge_bf16_u8"])
    # the bf16 path is really different from the fp32 one on these values
    assert (_zimage.postprocess_uint8(pp["edge_bf16_in"]) != pp["edge_bf16_u8"]).any()
    # a decoded image end to end: decode, then postprocess
    vae, io = load_case("c_4blocks_real_pattern")
    np.testing.assert_array_equal(_zimage.postprocess_uint8(vae.decode(io["call0_z"]).sample), pp["post_u8"])
    with pytest.raises(ValueError):
        _zimage.postprocess_uint8(np.zeros((3, 4, 4), np.float32))


def ref_shape(x):
    return (x.shape[0], x.shape[2], x.shape[3], x.shape[1])


# ---------------------------------------------------------------------------------------------
# the real checkpoint's names and shapes

def test_manifest_matches_real_vae_decoder():
    man = os.path.join(FIXTURES, "manifests")
    with open(os.path.join(man, "vae_manifest.json")) as f:
        ref = json.load(f)
    got = _zimage.vae_weight_manifest(os.path.join(man, "vae_config.json"))
    assert [(n, list(s)) for n, s in got] == [(t["name"], t["shape"]) for t in ref["tensors"]]
    assert len(got) == ref["num_decoder_tensors"] == 138
    assert sum(int(np.prod(s)) for _, s in got) == ref["num_decoder_params"] == 49_545_475


# ---------------------------------------------------------------------------------------------
# errors

def test_bad_inputs():
    vae, io = load_case(CASES[0])
    z = io["call0_z"]
    with pytest.raises(ValueError, match="channels"):
        vae.decode(z[:, :8])
    with pytest.raises(ValueError, match="dimensions"):
        vae.decode(z[0])
    with pytest.raises(ValueError):
        vae.decode(z[:, :, :0])
    with pytest.raises(FileNotFoundError):
        zimage.AutoencoderKL.from_pretrained(os.path.join(VAE, "no_such_case"), subfolder="vae")
    with pytest.raises(FileNotFoundError):
        zimage.AutoencoderKL.from_pretrained(os.path.join(VAE, CASES[0]))  # no config.json there
    with pytest.raises(FileNotFoundError):
        _zimage.Vae(os.path.join(VAE, "no_such_case"))


def test_bad_checkpoints(tmp_path):
    name = "decoder.up_blocks.0.resnets.0.conv1.weight"

    def wrong_shape(sd):
        sd[name] = sd[name][:, :, :1]

    d, _, _ = make_variant(tmp_path / "a", CASES[0], wrong_shape)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        zimage.AutoencoderKL.from_pretrained(d)

    def missing(sd):
        del sd["decoder.conv_out.bias"]

    d, _, _ = make_variant(tmp_path / "b", CASES[0], missing)
    with pytest.raises(ValueError, match=r"decoder\.conv_out\.bias"):
        zimage.AutoencoderKL.from_pretrained(d)

    for key, value, msg in (("act_fn", "relu", "act_fn"), ("norm_num_groups", 7, "norm_num_groups"),
                            ("up_block_types", ["UpDecoderBlock2D"], "up_block_types")):
        d, _, _ = make_variant(tmp_path / key, CASES[0], edit_cfg=lambda c: c.__setitem__(key, value))
        with pytest.raises(ValueError, match=msg):
            zimage.AutoencoderKL.from_pretrained(d)

    # encoder tensors are not needed
    d, _, _ = make_variant(tmp_path / "c", CASES[0], lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("encoder.")])
    io = np.load(os.path.join(VAE, CASES[0], "io.npz"))
    assert rel_l2(zimage.AutoencoderKL.from_pretrained(d).decode(io["call0_z"]).sample, io["call0_out"]) < 1e-4


def test_report_errors():
    """Prints the per-call errors (visible with pytest -s or -rP)."""
    for (case, k, shape), err in sorted(ERR.items()):
        print(f"vae {case} call{k} z{shape}: rel L2 {err:.2e}")
