"""The tiny models on CUDA (bf16 storage, fp32 accumulation) against the same fp32 references
the CPU path meets at 1e-4. Where the fixture holds diffusers/transformers' own bf16 run, the
flash-attention rule applies: our error vs fp32 <= 2x the bf16 reference's error. Elsewhere a
bf16-level bound. Skipped without a GPU."""
import glob
import os
import subprocess
import sys

import numpy as np
import pytest

import zimage
from conftest import FIXTURES, pipeline_cases, rel_l2, requires_gpu

pytestmark = [requires_gpu, pytest.mark.gpu]

BF16_BOUND = 3e-2  # relative L2 for a few bf16 layers on O(1) random weights


def dit_calls(io):
    for k in range(int(io["ncalls"])):
        B = int(io[f"call{k}_B"])
        yield k, [io[f"call{k}_x{i}"] for i in range(B)], io[f"call{k}_t"], [io[f"call{k}_cap{i}"] for i in range(B)], \
            [io[f"call{k}_out{i}"] for i in range(B)]


@pytest.mark.parametrize("case", sorted(os.path.basename(os.path.dirname(p))
                                        for p in glob.glob(os.path.join(FIXTURES, "dit", "*", "io.npz"))))
def test_dit_cuda(case):
    d = os.path.join(FIXTURES, "dit", case)
    io = np.load(os.path.join(d, "io.npz"))
    model = zimage.ZImageTransformer2DModel.from_pretrained(d, subfolder="transformer").to("cuda")
    assert model.device == "cuda:0"
    for k, xs, t, caps, refs in dit_calls(io):
        outs = model(xs, t, caps)
        for i, (out, ref) in enumerate(zip(outs, refs)):
            assert np.isfinite(out).all()
            err = rel_l2(out, ref)
            key = f"call{k}_bf16cpu_out{i}"
            if key in io.files:
                bound = 2 * rel_l2(io[key], ref)
                assert err <= bound, f"{case} call {k}: {err:.3e} > 2x diffusers bf16 ({bound / 2:.3e})"
            else:
                assert err < BF16_BOUND, f"{case} call {k}: {err:.3e}"
    model.to("cpu")  # and back: the CPU path still matches fp32
    _, xs, t, caps, refs = next(dit_calls(io))
    assert rel_l2(model(xs, t, caps)[0], refs[0]) < 1e-4


@pytest.mark.parametrize("case", sorted(os.path.basename(os.path.dirname(p))
                                        for p in glob.glob(os.path.join(FIXTURES, "text_encoder", "*", "io.npz"))))
def test_text_encoder_cuda(case):
    d = os.path.join(FIXTURES, "text_encoder", case)
    io = np.load(os.path.join(d, "io.npz"))
    model = zimage.Qwen3Model.from_pretrained(d, subfolder="text_encoder").to("cuda")
    k = 0
    while f"seq{k}_ids" in io.files:
        out = model.encode(io[f"seq{k}_ids"], layer=-2)
        ref = io[f"seq{k}_hs_m2"]
        err = rel_l2(out, ref)
        key = f"seq{k}_bf16cpu_hs_m2"
        bound = 2 * rel_l2(io[key], ref) if key in io.files else BF16_BOUND
        assert err <= max(bound, 1e-3), f"{case} seq {k}: {err:.3e} (bound {bound:.3e})"
        k += 1
    assert k >= 3


@pytest.mark.parametrize("case", sorted(os.path.basename(os.path.dirname(p))
                                        for p in glob.glob(os.path.join(FIXTURES, "vae", "*", "io.npz"))))
def test_vae_cuda(case):
    d = os.path.join(FIXTURES, "vae", case)
    io = np.load(os.path.join(d, "io.npz"))
    vae = zimage.AutoencoderKL.from_pretrained(d, subfolder="vae").to("cuda")
    k = 0
    while f"call{k}_z" in io.files:
        out = vae.decode(io[f"call{k}_z"]).sample
        assert rel_l2(out, io[f"call{k}_out"]) < BF16_BOUND
        k += 1
    assert k >= 3


def test_vae_tiling_cuda():
    """enable_tiling() on CUDA against diffusers' fp32 tiled decode (tests/fixtures/vae_tiling)."""
    d = os.path.join(FIXTURES, "vae_tiling")
    io = np.load(os.path.join(d, "io.npz"))
    vae = zimage.AutoencoderKL.from_pretrained(d, subfolder="vae").to("cuda")
    vae.enable_tiling()
    for k in range(int(io["ncalls"])):
        assert rel_l2(vae.decode(io[f"call{k}_z"]).sample, io[f"call{k}_out"]) < BF16_BOUND, k
    vae.disable_tiling()
    assert rel_l2(vae.decode(io["untiled_z"]).sample, io["untiled_out"]) < BF16_BOUND


def test_cuda_errors_are_exceptions():
    d = os.path.join(FIXTURES, "dit", "a_small_f32")
    model = zimage.ZImageTransformer2DModel.from_pretrained(d, subfolder="transformer")
    with pytest.raises((zimage.ZImageError, ValueError)):
        model.to(f"cuda:{zimage.cuda_device_count()}")  # one past the last GPU
    assert model.device == "cpu"


def test_tiny_pipeline_cuda(tiny_pipeline):
    """The tiny pipeline on CUDA against diffusers' fp32 images (bf16-level bound) and against
    our own CPU run."""
    _, _, folder = tiny_pipeline
    cases = pipeline_cases()
    ref = np.load(os.path.join(FIXTURES, "pipeline", "reference.npz"))
    pipe = zimage.ZImagePipeline.from_pretrained(folder).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.device == "cuda:0"
    for name in ("c1", "c2", "c4", "c5", "c6"):
        c = cases[name]
        kw = dict(prompt=c["prompt"], negative_prompt=c["negative_prompt"], height=c["height"], width=c["width"],
                  num_inference_steps=c["num_inference_steps"], guidance_scale=c["guidance_scale"],
                  cfg_normalization=c["cfg_normalization"], cfg_truncation=c["cfg_truncation"],
                  num_images_per_prompt=c["num_images_per_prompt"], latents=ref[c["keys"]["latents"]],
                  output_type="np")
        out = pipe(**kw).images
        assert rel_l2(out, ref[c["keys"]["images"]]) < BF16_BOUND, name
    pipe.to("cpu")
    out = pipe(**kw).images
    assert float(np.abs(out - ref[cases["c6"]["keys"]["images"]]).max()) < 2e-3


GRAPH_SCRIPT = r"""
import ctypes, sys
import numpy as np
import zimage
pipe = zimage.ZImagePipeline.from_pretrained(sys.argv[1]).to("cuda")
pipe.set_progress_bar_config(disable=True)
replays = ctypes.CDLL(zimage._zimage.__file__).zi_cuda_graph_replays
replays.restype = ctypes.c_ulong
imgs = []
for seed in (1, 2):  # the second call replays from its first step
    imgs.append(pipe(prompt="a red fox in the snow", height=64, width=64, num_inference_steps=5, guidance_scale=0.0,
                     generator=zimage.Generator().manual_seed(seed), output_type="np").images)
plain = replays()
# CFG: the negative caption has another length, so positive and negative forwards alternate two graphs
cfg = pipe(prompt="a red fox in the snow", negative_prompt="blurry, low quality, watermark, text, ugly", height=64,
           width=64, num_inference_steps=5, guidance_scale=3.0, generator=zimage.Generator().manual_seed(3),
           output_type="np").images
np.savez(sys.argv[2], images=np.stack(imgs), cfg=cfg, replays=plain, cfg_replays=replays() - plain)
"""


def test_recorded_transformer_equals_eager_cuda(tiny_pipeline, tmp_path):
    """From the second step on, the transformer runs as a recorded CUDA graph (the first run with a set of
    sizes is eager, the second is recorded; CFG keeps one graph for each caption length): its images equal
    those of a process with graphs off (ZIMAGE_GRAPHS=0, read when the backend starts), bit for bit, and
    graphs were really replayed."""
    _, _, folder = tiny_pipeline
    out = {}
    for graphs in ("1", "0"):
        env = dict(os.environ, ZIMAGE_GRAPHS=graphs)
        env.pop("ZIMAGE_PROFILE", None), env.pop("ZIMAGE_SYNC", None)
        path = tmp_path / f"graphs{graphs}.npz"
        subprocess.run([sys.executable, "-c", GRAPH_SCRIPT, str(folder), str(path)], env=env, check=True, timeout=300)
        out[graphs] = np.load(path)
    assert int(out["1"]["replays"]) == 5 + 5 - 1, "steps 2-5 of the first call and all 5 of the second replay"
    # the positive forwards replay the graph recorded above; the negative ones from their second step on
    assert int(out["1"]["cfg_replays"]) >= 5 + 4 - 1, int(out["1"]["cfg_replays"])
    assert int(out["0"]["replays"]) == 0 and int(out["0"]["cfg_replays"]) == 0
    for k in ("images", "cfg"):
        assert np.array_equal(out["1"][k], out["0"][k]), k
        assert np.isfinite(out["1"][k]).all() and out["1"][k].std() > 0
