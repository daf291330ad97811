"""ZImagePipeline end to end on a tiny pipeline saved by diffusers (random weights, the real
tokenizer) against diffusers' fp32 outputs for the same latents
(tests/reference/make_pipeline_fixtures.py), plus the API around it: outputs, seeds,
callbacks, Ctrl-C, threads, repeated calls, and bad arguments."""
import gc
import os
import threading
import _thread

import numpy as np
import pytest

import zimage
from conftest import FIXTURES, pipeline_cases

CASES = list(pipeline_cases().values())
REF = np.load(os.path.join(FIXTURES, "pipeline", "reference.npz"))
TOL = 2e-3  # max abs on images in [0, 1]


@pytest.fixture(scope="module")
def pipe(tiny_pipeline):
    _, _, folder = tiny_pipeline
    p = zimage.ZImagePipeline.from_pretrained(folder, torch_dtype="float32")
    p.set_progress_bar_config(disable=True)
    return p


def call_args(case, **over):
    kw = dict(prompt=case["prompt"], negative_prompt=case["negative_prompt"], height=case["height"],
              width=case["width"], num_inference_steps=case["num_inference_steps"], sigmas=case["sigmas"],
              guidance_scale=case["guidance_scale"], cfg_normalization=case["cfg_normalization"],
              cfg_truncation=case["cfg_truncation"], num_images_per_prompt=case["num_images_per_prompt"],
              max_sequence_length=case["max_sequence_length"], output_type="np",
              latents=REF[case["keys"]["latents"]])
    kw.update(over)
    return kw


def case(name):
    return next(c for c in CASES if c["name"] == name)


@pytest.mark.parametrize("name", [c["name"] for c in CASES])
def test_matches_diffusers(pipe, name):
    c = case(name)
    out = pipe(**call_args(c))
    images = out.images
    ref = REF[c["keys"]["images"]]
    assert isinstance(images, np.ndarray) and images.dtype == np.float32 and images.shape == ref.shape
    err = float(np.abs(images - ref).max())
    assert err < TOL, f"{name}: max abs {err:.2e}"


def test_prompt_ids_and_embeds_match(pipe):
    for c in CASES:
        prompts = c["prompt"] if isinstance(c["prompt"], list) else [c["prompt"]]
        for i, p in enumerate(prompts):
            ids = pipe.tokenizer.encode_prompt(p, c["max_sequence_length"])
            np.testing.assert_array_equal(np.asarray(ids), REF[c["keys"]["prompt_ids"][i]].reshape(-1))
    pos, neg = pipe.encode_prompt(case("c4")["prompt"], do_classifier_free_guidance=True,
                                  negative_prompt=case("c4")["negative_prompt"])
    np.testing.assert_allclose(pos[0], REF["c4_prompt_embeds0"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(neg[0], REF["c4_negative_embeds0"], rtol=0, atol=1e-4)


def test_list_of_prompts_equals_one_at_a_time(pipe):
    c = case("c7")
    lat = REF[c["keys"]["latents"]]
    both = pipe(**call_args(c)).images
    for i, p in enumerate(c["prompt"]):
        one = pipe(**call_args(c, prompt=p, latents=lat[i:i + 1])).images
        np.testing.assert_array_equal(both[i], one[0])


def test_latent_output_and_steps(pipe):
    c = case("c1")
    seen = []

    def cb(p, i, t, kw):
        seen.append((i, float(t), kw["latents"].copy()))
        return {}

    lat = pipe(**call_args(c, output_type="latent", callback_on_step_end=cb)).images
    np.testing.assert_allclose(lat, REF["c1_final_latents"], rtol=0, atol=1e-4)
    assert [s[0] for s in seen] == [0, 1, 2]
    np.testing.assert_allclose([s[1] for s in seen], REF["c1_timesteps"], rtol=1e-6)
    for k, (_, _, l) in enumerate(seen):
        np.testing.assert_allclose(l, REF["c1_step_latents"][k], rtol=0, atol=1e-4)


def test_callback_can_replace_latents(pipe):
    c = case("c1")
    base = pipe(**call_args(c, output_type="latent")).images

    def zero_after_last(p, i, t, kw):
        return {"latents": np.zeros_like(kw["latents"])} if i == 2 else {}

    out = pipe(**call_args(c, output_type="latent", callback_on_step_end=zero_after_last)).images
    assert np.abs(base).max() > 0 and np.abs(out).max() == 0


def test_default_output_is_uint8_images_with_save(pipe, tmp_path):
    c = case("c1")
    out = pipe(**call_args(c, output_type=None))
    img = out.images[0]
    assert isinstance(img, zimage.Image) and img.dtype == np.uint8 and img.shape == (64, 64, 3)
    np.testing.assert_array_equal(np.asarray(img), REF["c1_images_u8"][0])
    img.save(str(tmp_path / "out.png"))
    assert (tmp_path / "out.png").read_bytes()[:4] == b"\x89PNG"
    assert out[0] is out.images and out.to_tuple()[0] is out.images
    tup = pipe(**call_args(c, output_type=None, return_dict=False))
    assert isinstance(tup, tuple) and len(tup[0]) == 1


def test_seeded_generators_are_deterministic(pipe):
    kw = dict(prompt="a fox", height=32, width=32, num_inference_steps=2, guidance_scale=0.0, output_type="np")
    a = pipe(generator=zimage.Generator("cpu").manual_seed(7), **kw).images
    b = pipe(generator=zimage.Generator("cpu").manual_seed(7), **kw).images
    c = pipe(generator=zimage.Generator("cpu").manual_seed(8), **kw).images
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    d = pipe(generator=[zimage.Generator("cuda").manual_seed(1), zimage.Generator("cuda").manual_seed(2)],
             **dict(kw, prompt=["a", "b"])).images
    assert d.shape == (2, 32, 32, 3)
    with pytest.raises(ValueError, match="generators"):
        pipe(generator=[zimage.Generator("cpu").manual_seed(1)], **dict(kw, prompt=["a", "b"]))


def test_ctrl_c_stops_between_steps(pipe):
    steps = []

    def cb(p, i, t, kw):
        steps.append(i)
        if i == 0:
            _thread.interrupt_main()
        return {}

    with pytest.raises(KeyboardInterrupt):
        pipe(prompt="a fox", height=32, width=32, num_inference_steps=5, guidance_scale=0.0,
             callback_on_step_end=cb, output_type="latent", latents=np.zeros((1, 16, 4, 4), np.float32))
    assert steps == [0]
    # the pipeline still works afterwards
    pipe(**call_args(case("c1"), output_type="latent"))


def test_gil_released_and_two_threads(pipe):
    c = case("c1")
    expect = pipe(**call_args(c)).images
    results, errors = [None, None], []

    def work(k):
        try:
            results[k] = pipe(**call_args(c)).images
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ticks = [0]
    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        ticks[0] += 1  # this thread runs while the others are inside C
    for t in threads:
        t.join()
    assert not errors
    for r in results:
        np.testing.assert_array_equal(r, expect)
    assert ticks[0] > 100


def test_repeated_calls_do_not_grow_memory(pipe):
    import resource
    c = case("c1")
    for _ in range(5):
        pipe(**call_args(c))
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(50):
        pipe(**call_args(c))
    gc.collect()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert after - before < 20 * 1024, f"peak RSS grew by {(after - before) / 1024:.1f} MiB over 50 calls"


def test_bad_arguments(pipe):
    kw = dict(prompt="a fox", num_inference_steps=1, guidance_scale=0.0, output_type="latent")
    with pytest.raises(ValueError, match="divisible by 16"):
        pipe(height=40, width=64, **kw)
    with pytest.raises(ValueError, match="divisible by 16"):
        pipe(height=64, width=72, **kw)
    with pytest.raises(ValueError, match="latents shape"):
        pipe(height=64, width=64, latents=np.zeros((1, 16, 4, 4), np.float32), **kw)
    with pytest.raises(ValueError, match="output_type"):
        pipe(height=32, width=32, **dict(kw, output_type="gif"))
    with pytest.raises(ValueError):
        pipe(height=32, width=32, **dict(kw, prompt="\ud800"))
    with pytest.raises(TypeError):
        pipe(height=32, width=32, **dict(kw, prompt=3))
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe(height=32, width=32, **dict(kw, num_inference_steps=0))
    with pytest.raises(ValueError, match="prompt"):
        pipe(height=32, width=32, num_inference_steps=1, guidance_scale=0.0)
    with pytest.raises(ValueError, match="negative"):
        pipe(height=32, width=32, prompt=["a", "b", "c"], negative_prompt=["x", "y"], num_inference_steps=1,
             guidance_scale=2.0, output_type="latent")


def test_prompt_embeds_path(pipe):
    c = case("c1")
    out = pipe(**call_args(c, prompt=None, prompt_embeds=[REF["c1_prompt_embeds0"]])).images
    assert float(np.abs(out - REF["c1_images"]).max()) < TOL
    with pytest.raises(ValueError, match="negative_prompt_embeds"):
        pipe(**call_args(c, prompt=None, prompt_embeds=[REF["c1_prompt_embeds0"]], guidance_scale=2.0))


def test_from_hub_id_through_modelscope_cache(tiny_pipeline, monkeypatch):
    cache, hub_id, _ = tiny_pipeline
    monkeypatch.setenv("MODELSCOPE_CACHE", cache)
    p = zimage.ZImagePipeline.from_pretrained(hub_id, torch_dtype=zimage.bfloat16).to("cpu")
    assert isinstance(p.transformer, zimage.ZImageTransformer2DModel)
    assert isinstance(p.text_encoder, zimage.Qwen3Model) and isinstance(p.vae, zimage.AutoencoderKL)
    assert p.vae_scale_factor == 8 and p.device == "cpu"
    with pytest.raises(FileNotFoundError, match="Looked in"):
        zimage.ZImagePipeline.from_pretrained("Nobody/Nothing", local_files_only=True)
    if zimage.cuda_device_count() == 0:
        with pytest.raises(zimage.ZImageError, match="CUDA"):
            p.to("cuda")


def test_outputs_are_freed(pipe):
    """Nothing keeps the returned images (or the latents a callback saw) alive after the caller drops them."""
    import weakref
    c = case("c1")
    out = pipe(**call_args(c))
    ref_np = weakref.ref(out.images)
    del out
    out = pipe(**call_args(c, output_type=None))
    ref_img = weakref.ref(out.images[0])
    del out
    seen = []
    pipe(**call_args(c, output_type="latent", callback_on_step_end=lambda p, i, t, kw: seen.append(
        weakref.ref(kw["latents"])) or {}))
    tup = pipe(**call_args(c, return_dict=False))
    ref_tup = weakref.ref(tup[0])
    del tup
    gc.collect()
    assert ref_np() is None and ref_img() is None and ref_tup() is None
    assert seen and all(r() is None for r in seen)
