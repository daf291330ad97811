"""Offloading and memory accounting (issue 8).

The offload code paths run on any backend: on the CPU the "device" is host memory and a queued
copy is a memcpy, so the streamed text encoder and the visiting VAE are checked here against the
resident paths bit for bit; on a GPU the same with the real copy stream, pinned memory and
events, through ZImagePipeline.enable_model_cpu_offload(). Plus the API surface (diffusers'
arguments and errors without a GPU), hidden_states[-2] needing no last layer, and zimage's
allocation counter (it returns to its start when a pipeline is moved to the CPU or deleted, and
stays flat over repeated calls)."""
import gc
import glob
import os
import warnings

import numpy as np
import pytest

import zimage
from zimage import _pipeline_support
from conftest import FIXTURES, pipeline_cases, requires_gpu

TE_CASES = sorted(os.path.basename(os.path.dirname(p))
                  for p in glob.glob(os.path.join(FIXTURES, "text_encoder", "*", "io.npz")))
VAE_CASES = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(FIXTURES, "vae", "*", "io.npz")))
REF = np.load(os.path.join(FIXTURES, "pipeline", "reference.npz"))
has_gpu = zimage.cuda_device_count() > 0


def te_ids(case):
    io = np.load(os.path.join(FIXTURES, "text_encoder", case, "io.npz"))
    k = 0
    while f"seq{k}_ids" in io.files:
        yield io[f"seq{k}_ids"]
        k += 1


def encode_all(model, case, layers):
    return [model.encode(ids, layer=layer) for ids in te_ids(case) for layer in layers]


def assert_same(a, b, what):
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.shape == y.shape and np.array_equal(x, y), f"{what}: output {i} differs"


# ---------------------------------------------------------------------------------------------
# the streamed text encoder and the visiting VAE on the CPU backend

@pytest.mark.parametrize("case", TE_CASES)
def test_text_encoder_streamed_equals_resident(case):
    d = os.path.join(FIXTURES, "text_encoder", case)
    model = zimage.Qwen3Model.from_pretrained(d, subfolder="text_encoder")
    n = model.config["num_hidden_layers"]
    layers = [-2, -1, 0, 1, n - 1]
    ref = encode_all(model, case, layers)
    model._core.enable_offload(-1)
    assert model.offloaded and model.device == "cpu"
    assert_same(encode_all(model, case, layers), ref, "offloaded")
    model.to("cpu")
    assert not model.offloaded
    assert_same(encode_all(model, case, layers), ref, "resident again")


@pytest.mark.parametrize("offload", [False, True])
def test_limit_layers(offload):
    """hidden_states[-2] needs neither the last layer nor the final norm; asking for them later loads them."""
    case = TE_CASES[0]
    d = os.path.join(FIXTURES, "text_encoder", case)
    full = zimage.Qwen3Model.from_pretrained(d, subfolder="text_encoder")
    ref = encode_all(full, case, [-2, -1])
    model = zimage.Qwen3Model.from_pretrained(d, subfolder="text_encoder")
    model._core.limit_layers(-2)
    if offload:
        model._core.enable_offload(-1)
    assert_same(encode_all(model, case, [-2]), ref[0::2], "limited to -2")
    assert_same(encode_all(model, case, [-1]), ref[1::2], "-1 after the limit (loads the rest)")
    assert model.offloaded == offload
    n = model.config["num_hidden_layers"]
    for bad in (n + 1, -(n + 2)):
        with pytest.raises(ValueError):
            model._core.limit_layers(bad)


@pytest.mark.parametrize("case", VAE_CASES)
def test_vae_visit_equals_resident(case):
    d = os.path.join(FIXTURES, "vae", case)
    io = np.load(os.path.join(d, "io.npz"))
    vae = zimage.AutoencoderKL.from_pretrained(d, subfolder="vae")
    zs = [io[k] for k in sorted(io.files) if k.startswith("call") and k.endswith("_z")]
    ref = [vae.decode(z).sample for z in zs]
    vae._core.enable_offload(-1)
    assert vae.offloaded
    assert_same([vae.decode(z).sample for z in zs], ref, "offloaded")
    assert_same([vae.decode(z).sample for z in zs], ref, "offloaded, second visit")
    vae.to("cpu")
    assert not vae.offloaded
    assert_same([vae.decode(z).sample for z in zs], ref, "resident again")


def pipeline_kwargs(name):
    c = pipeline_cases()[name]
    return dict(prompt=c["prompt"], negative_prompt=c["negative_prompt"], height=c["height"], width=c["width"],
                num_inference_steps=c["num_inference_steps"], guidance_scale=c["guidance_scale"],
                cfg_normalization=c["cfg_normalization"], cfg_truncation=c["cfg_truncation"],
                num_images_per_prompt=c["num_images_per_prompt"], latents=REF[c["keys"]["latents"]])


def run_cases(pipe, names=("c1", "c4", "c6")):
    out = []
    for name in names:
        out.append(pipe(**pipeline_kwargs(name), output_type="np").images)
        out.append(np.stack(pipe(**pipeline_kwargs(name)).images))  # uint8, the default output
    return out


def test_pipeline_offload_paths_cpu(tiny_pipeline):
    """The pipeline with its text encoder streamed and its VAE visiting (CPU backend) gives the
    resident images exactly, and to() makes it resident again."""
    _, _, folder = tiny_pipeline
    pipe = zimage.ZImagePipeline.from_pretrained(folder, torch_dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    ref = run_cases(pipe)
    pipe.text_encoder._core.enable_offload(-1)
    pipe.vae._core.enable_offload(-1)
    assert pipe.text_encoder.offloaded and pipe.vae.offloaded
    assert_same(run_cases(pipe), ref, "offloaded on the CPU")
    pipe.to("cpu")
    assert not pipe.text_encoder.offloaded and not pipe.vae.offloaded
    assert_same(run_cases(pipe), ref, "resident again")


def test_pipeline_text_encoder_reads_all_layers_on_demand(tiny_pipeline):
    """The pipeline limits its text encoder to hidden_states[-2]; a direct encode of [-1] still works."""
    _, _, folder = tiny_pipeline
    pipe = zimage.ZImagePipeline.from_pretrained(folder, torch_dtype="float32")
    alone = zimage.Qwen3Model.from_pretrained(folder, subfolder="text_encoder")
    ids = np.asarray(pipe.tokenizer.encode_prompt("a red fox", 64))
    for layer in (-2, -1, -2):
        np.testing.assert_array_equal(pipe.text_encoder.encode(ids, layer=layer), alone.encode(ids, layer=layer))


# ---------------------------------------------------------------------------------------------
# API surface

def test_offload_device_arguments():
    od = _pipeline_support.offload_device
    assert od("enable_model_cpu_offload", None, "cuda:1", 0) == 1
    assert od("enable_model_cpu_offload", 2, "cuda", 0) == 2
    assert od("enable_model_cpu_offload", None, "cuda", 3) == 3  # the previous call's GPU
    assert od("enable_model_cpu_offload", None, 1, 0) == 1
    with pytest.raises(ValueError, match="Cannot pass both"):
        od("enable_model_cpu_offload", 0, "cuda:1", 0)
    with pytest.raises(ValueError, match="CUDA GPU"):
        od("enable_model_cpu_offload", None, "cpu", 0)
    with pytest.raises(ValueError, match="invalid device"):
        od("enable_model_cpu_offload", None, "mps", 0)
    with pytest.raises(ValueError, match="gpu_id"):
        od("enable_model_cpu_offload", -1, "cuda", 0)
    if has_gpu:
        assert od("enable_model_cpu_offload", None, None, 0) == 0
    else:
        with pytest.raises(RuntimeError, match="requires accelerator, but not found"):
            od("enable_model_cpu_offload", None, None, 0)


@pytest.mark.skipif(has_gpu, reason="checks the error without a GPU")
def test_offload_without_gpu_raises_like_diffusers(tiny_pipeline):
    _, _, folder = tiny_pipeline
    pipe = zimage.ZImagePipeline.from_pretrained(folder)
    with pytest.raises(zimage.ZImageError, match="`enable_model_cpu_offload` requires accelerator, but not found"):
        pipe.enable_model_cpu_offload()
    with pytest.warns(UserWarning, match="transformer"):
        with pytest.raises(RuntimeError, match="`enable_sequential_cpu_offload` requires accelerator"):
            pipe.enable_sequential_cpu_offload()
    with pytest.raises(ValueError, match="Cannot pass both"):
        pipe.enable_model_cpu_offload(gpu_id=0, device="cuda:0")
    assert not pipe.text_encoder.offloaded and not pipe.vae.offloaded  # nothing changed


def test_memory_functions_surface():
    stats = zimage.cuda_memory_stats()
    assert set(stats) == {"allocated", "peak", "pinned"} and all(v >= 0 for v in stats.values())
    assert zimage.cuda_memory_allocated("cuda:0") == zimage.cuda_memory_stats(0)["allocated"]
    with pytest.raises(ValueError):
        zimage.cuda_memory_allocated("cpu")
    if not has_gpu:
        assert stats == {"allocated": 0, "peak": 0, "pinned": 0}
        zimage.cuda_reset_peak_memory_stats()
        zimage.cuda_empty_cache()  # nothing to free: no error


# ---------------------------------------------------------------------------------------------
# on a GPU

def cuda_baseline():
    """zimage's allocation on cuda:0 with the backend created and its scratch cache emptied."""
    zimage.cuda_empty_cache()
    return zimage.cuda_memory_stats(0)


@pytest.fixture
def cuda_pipe(tiny_pipeline):
    _, _, folder = tiny_pipeline
    pipe = zimage.ZImagePipeline.from_pretrained(folder).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@requires_gpu
def test_offloaded_generation_equals_resident_cuda(cuda_pipe):
    pipe = cuda_pipe
    ref = run_cases(pipe)
    pipe.enable_model_cpu_offload()
    assert pipe.text_encoder.offloaded and pipe.vae.offloaded
    assert pipe.device == "cuda:0" and pipe.text_encoder.device == "cuda:0" and pipe.vae.device == "cuda:0"
    assert zimage.cuda_memory_stats()["pinned"] > 0
    out = run_cases(pipe)
    assert_same(out, ref, "offloaded on CUDA")
    assert_same(run_cases(pipe), ref, "offloaded on CUDA, again")
    pipe.to("cuda")
    assert not pipe.text_encoder.offloaded and not pipe.vae.offloaded
    assert_same(run_cases(pipe), ref, "resident again")


@requires_gpu
def test_sequential_offload_is_model_offload_cuda(cuda_pipe):
    ref = run_cases(cuda_pipe, ("c1",))
    with pytest.warns(UserWarning, match="transformer"):
        cuda_pipe.enable_sequential_cpu_offload()
    assert cuda_pipe.text_encoder.offloaded and cuda_pipe.vae.offloaded
    assert_same(run_cases(cuda_pipe, ("c1",)), ref, "sequential offload")


@requires_gpu
def test_allocation_counter_returns_after_delete_and_to_cpu(tiny_pipeline):
    _, _, folder = tiny_pipeline
    zimage.Qwen3Model.from_pretrained(folder, subfolder="text_encoder").to("cuda")  # the backend exists
    gc.collect()
    start = cuda_baseline()
    for offload in (False, True):
        pipe = zimage.ZImagePipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        if offload:
            pipe.enable_model_cpu_offload()
        else:
            pipe.to("cuda")
        run_cases(pipe, ("c1",))
        during = zimage.cuda_memory_stats()
        assert during["allocated"] > start["allocated"] and during["peak"] >= during["allocated"]
        assert (during["pinned"] > start["pinned"]) == offload
        zimage.cuda_reset_peak_memory_stats()
        assert zimage.cuda_max_memory_allocated() == zimage.cuda_memory_allocated()
        del pipe
        gc.collect()
        assert cuda_baseline() == {**start, "peak": zimage.cuda_max_memory_allocated()}, offload
    pipe = zimage.ZImagePipeline.from_pretrained(folder).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    run_cases(pipe, ("c1",))
    pipe.to("cpu")  # moving off the GPU also empties zimage's scratch cache there
    assert zimage.cuda_memory_allocated() == start["allocated"]


@requires_gpu
@pytest.mark.parametrize("offload", [False, True])
def test_repeated_calls_keep_memory_flat_cuda(cuda_pipe, offload):
    if offload:
        cuda_pipe.enable_model_cpu_offload()
    run_cases(cuda_pipe, ("c1",))
    zimage.cuda_reset_peak_memory_stats()
    after_one = zimage.cuda_memory_stats()
    run_cases(cuda_pipe, ("c1",))
    peak_one = zimage.cuda_max_memory_allocated()
    for _ in range(10):
        run_cases(cuda_pipe, ("c1",))
    now = zimage.cuda_memory_stats()
    assert now["allocated"] == after_one["allocated"] and now["peak"] == peak_one
