"""The Z-Image transformer on the CPU against diffusers' fp32 outputs (fixtures made by
tests/reference/make_dit_fixtures.py), the real checkpoint's manifest, and error paths."""
import glob
import json
import os
import shutil

import numpy as np
import pytest

import zimage
from conftest import FIXTURES, rel_l2, write_safetensors
from zimage import _zimage

CASES = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(FIXTURES, "dit", "*", "io.npz")))


def load_case(case):
    d = os.path.join(FIXTURES, "dit", case)
    model = zimage.ZImageTransformer2DModel.from_pretrained(d, subfolder="transformer")
    return model, np.load(os.path.join(d, "io.npz"))


def calls(io):
    for k in range(int(io["ncalls"])):
        B = int(io[f"call{k}_B"])
        yield (k, [io[f"call{k}_x{i}"] for i in range(B)], io[f"call{k}_t"],
               [io[f"call{k}_cap{i}"] for i in range(B)], [io[f"call{k}_out{i}"] for i in range(B)])


def test_fixture_cases_exist():
    assert len(CASES) >= 4


@pytest.mark.parametrize("case", CASES)
def test_matches_diffusers_fp32(case):
    model, io = load_case(case)
    n = 0
    for k, xs, t, caps, refs in calls(io):
        outs = model(xs, t, caps)
        assert isinstance(outs, list) and len(outs) == len(refs)
        for out, ref in zip(outs, refs):
            assert out.shape == ref.shape and out.dtype == np.float32
            err = rel_l2(out, ref)
            assert err < 1e-4, f"{case} call {k}: relative L2 error {err:.2e}"
            n += 1
    assert n >= 5


def test_batch_equals_one_at_a_time():
    model, io = load_case(CASES[0])
    for k, xs, t, caps, refs in calls(io):
        if len(xs) < 2:
            continue
        batched = model(xs, t, caps)
        for i in range(len(xs)):
            single = model([xs[i]], t[i:i + 1], [caps[i]])[0]
            np.testing.assert_array_equal(batched[i], single)
        return
    pytest.fail("no batched call in the fixture")


def test_input_layouts():
    """(C, 1, H, W) list, (C, H, W) list and one (B, C, H, W) array give the same numbers."""
    model, io = load_case(CASES[0])
    _, xs, t, caps, refs = next(calls(io))
    x = xs[0]
    ref = model([x], t, caps)[0]
    three = model([x[:, 0]], t, caps)[0]
    assert three.shape == x[:, 0].shape
    np.testing.assert_array_equal(three, ref[:, 0])
    arr = model(x[None, :, 0], float(t[0]), np.stack(caps))
    assert arr.shape == (1,) + x[:, 0].shape
    np.testing.assert_array_equal(arr[0], ref[:, 0])


def test_config_and_repr():
    model, _ = load_case(CASES[0])
    with open(os.path.join(FIXTURES, "dit", CASES[0], "transformer", "config.json")) as f:
        cfg = json.load(f)
    for key in ("dim", "n_layers", "n_heads", "cap_feat_dim", "in_channels", "axes_dims", "axes_lens"):
        assert model.config[key] == cfg[key]
    assert model.config["head_dim"] == cfg["dim"] // cfg["n_heads"]
    assert model.device == "cpu"
    assert "ZImageTransformer2DModel" in repr(model)


def test_manifest_of_the_real_checkpoint(tmp_path):
    """The loader's name table for the real config is exactly the real checkpoint's tensors."""
    with open(os.path.join(FIXTURES, "manifests", "dit_manifest.json")) as f:
        manifest = json.load(f)
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps(manifest["config"]))
    ours = {name: tuple(shape) for name, shape in _zimage.dit_weight_manifest(str(cfg_path))}
    theirs = {t["name"]: tuple(t["shape"]) for t in manifest["tensors"]}
    assert len(theirs) == 521
    assert ours == theirs
    assert sum(int(np.prod(s)) for s in ours.values()) == manifest["num_params"] == 6_154_908_736


# ------------------------------------------------------------------------------------------
# error paths


def copy_case(tmp_path, case="a_small_f32"):
    d = tmp_path / "transformer"
    shutil.copytree(os.path.join(FIXTURES, "dit", case, "transformer"), d)
    return d


def test_missing_folder_and_config(tmp_path):
    with pytest.raises(FileNotFoundError):
        zimage.ZImageTransformer2DModel.from_pretrained(str(tmp_path / "nope"))
    d = copy_case(tmp_path)
    os.remove(d / "config.json")
    with pytest.raises(FileNotFoundError):
        zimage.ZImageTransformer2DModel.from_pretrained(str(d))


def test_missing_weights_file(tmp_path):
    d = copy_case(tmp_path)
    os.remove(d / "diffusion_pytorch_model.safetensors")
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model"):
        zimage.ZImageTransformer2DModel.from_pretrained(str(d))


def test_missing_and_misshapen_tensors(tmp_path):
    d = copy_case(tmp_path)
    st = d / "diffusion_pytorch_model.safetensors"
    tensors = _zimage.read_safetensors(str(st))
    missing = dict(tensors)
    del missing["layers.1.feed_forward.w2.weight"]
    write_safetensors(st, missing)
    with pytest.raises(ValueError, match=r"missing tensor 'layers\.1\.feed_forward\.w2\.weight'"):
        zimage.ZImageTransformer2DModel.from_pretrained(str(d))
    bad = dict(tensors)
    bad["cap_embedder.1.weight"] = bad["cap_embedder.1.weight"][:, :-1].copy()
    write_safetensors(st, bad)
    with pytest.raises(ValueError, match=r"cap_embedder\.1\.weight.*shape"):
        zimage.ZImageTransformer2DModel.from_pretrained(str(d))


def test_truncated_weights(tmp_path):
    d = copy_case(tmp_path)
    st = d / "diffusion_pytorch_model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated|outside"):
        zimage.ZImageTransformer2DModel.from_pretrained(str(d))


def test_bad_config(tmp_path):
    d = copy_case(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    for change, pattern in [({"axes_dims": [8, 8, 8]}, "axes_dims"), ({"n_heads": 5}, "n_heads|sizes"),
                            ({"dim": "big"}, "dim"), ({"all_patch_size": [4]}, "patch")]:
        (d / "config.json").write_text(json.dumps(dict(cfg, **change)))
        with pytest.raises(ValueError, match=pattern):
            zimage.ZImageTransformer2DModel.from_pretrained(str(d))
    (d / "config.json").write_text("{\"dim\": ")
    with pytest.raises(ValueError, match="invalid JSON"):
        zimage.ZImageTransformer2DModel.from_pretrained(str(d))


def test_bad_inputs():
    model, io = load_case("a_small_f32")
    _, xs, t, caps, _ = next(calls(io))
    x, cap = xs[0], caps[0]
    with pytest.raises(ValueError, match="channels"):
        model([x[:8]], t, caps)
    with pytest.raises(ValueError, match="divisible"):
        model([x[:, :, :7]], t, caps)
    with pytest.raises(ValueError, match="cap_feat_dim"):
        model([x], t, [cap[:, :-1]])
    with pytest.raises(ValueError, match="at least one row"):
        model([x], t, [cap[:0]])
    with pytest.raises(ValueError, match="timesteps"):
        model([x, x], np.zeros(3, np.float32), [cap, cap])
    with pytest.raises(ValueError, match="caption"):
        model([x, x], t, [cap])
    lens = model.config["axes_lens"]
    with pytest.raises(ValueError, match="RoPE"):
        model([np.zeros((16, 1, 2 * lens[1] + 2, 4), np.float32)], t, [cap])
    with pytest.raises(ValueError, match="RoPE"):
        model([x], t, [np.zeros((lens[0] + 1, cap.shape[1]), np.float32)])


def test_device_errors():
    model, _ = load_case("a_small_f32")
    with pytest.raises(ValueError):
        model.to("tpu")
    if zimage.cuda_device_count() == 0:
        with pytest.raises(zimage.ZImageError, match="CUDA"):
            model.to("cuda")
        assert model.device == "cpu"  # still usable on the CPU
