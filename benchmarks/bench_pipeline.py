"""End-to-end benchmark: diffusers eager, diffusers with torch.compile on the transformer, and
zimage, on one checkpoint in the real layout (benchmarks/make_random_checkpoint.py), each in
its own process so memory peaks do not mix.

    python benchmarks/bench_pipeline.py --ckpt /tmp/zi-ckpt --frameworks zimage,diffusers,compiled \
        --sizes 1024,512,2048 --runs 5 --json results.json

Per framework: from_pretrained(...).to("cuda") time, then per size a warm-up and the median of
--runs timed calls (prompt of the model card, 9 steps, guidance 0), and at 1024^2 the stages
(prompt encoding, each denoising step, VAE decode). Peak GPU memory is device-wide (used =
total - free, polled every 2 ms), so it counts the CUDA context for every framework alike;
diffusers' torch allocator peak is reported too.
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time

PROMPT = "A cute cyberpunk cat, neon lights, 8k high definition"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PeakMemory:
    """Polls device-wide used memory in a thread."""

    def __init__(self, mem_info):
        self.mem_info, self.peak, self._stop = mem_info, 0, False
        self.t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop:
            free, total = self.mem_info()
            self.peak = max(self.peak, total - free)
            time.sleep(0.002)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *a):
        self._stop = True
        self.t.join()


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def timed_median(fn, sync, n, warm=1):
    for _ in range(warm):
        fn()
    sync()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return median(ts), ts


def bench_parts(framework, pipe, sync):
    """One transformer forward and one VAE decode at 1024^2 on their own, timed as
    ../shared/baseline/baseline_diffusers.py times diffusers (median of 5 and 3 synchronised calls, t = 0.5,
    the prompt's embeddings, random latents). zimage's calls take and return host arrays, so its numbers
    include the copies (latent in, 1 MB; prediction out, 1 MB; image out, 12 MB f32); diffusers' stay on the GPU."""
    import numpy as np
    rng = np.random.default_rng(0)
    lat = rng.standard_normal((1, 16, 128, 128)).astype(np.float32)
    z = rng.standard_normal((1, 16, 128, 128)).astype(np.float32)
    out = {}
    if framework == "zimage":
        pe = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)[0]
        fwd = lambda: pipe.transformer([lat[0][:, None]], [0.5], pe)
        dec = lambda: pipe.vae.decode(z, return_dict=False)
    else:
        import torch
        with torch.no_grad():
            pe, _ = pipe.encode_prompt(PROMPT, device="cuda", do_classifier_free_guidance=False)
        tl = torch.from_numpy(lat).to("cuda", torch.bfloat16)
        tz = torch.from_numpy(z).to("cuda", torch.bfloat16)
        tt = torch.tensor([0.5], device="cuda", dtype=torch.bfloat16)

        def fwd():
            with torch.no_grad():
                return pipe.transformer(list(tl.unsqueeze(2).unbind(0)), tt, pe, return_dict=False)

        def dec():
            with torch.no_grad():
                return pipe.vae.decode(tz, return_dict=False)

        def dec_host():  # what zimage's decode returns: the image as a float32 host array
            with torch.no_grad():
                return pipe.vae.decode(tz, return_dict=False)[0].float().cpu().numpy()
        out["vae_decode_to_host_1024_s"], _ = timed_median(dec_host, sync, 3)
    out["transformer_fwd_1024_s"], out["transformer_fwd_1024_all"] = timed_median(fwd, sync, 5)
    out["vae_decode_1024_s"], out["vae_decode_1024_all"] = timed_median(dec, sync, 3)
    if framework == "zimage":
        out["vae_decode_to_host_1024_s"] = out["vae_decode_1024_s"]
    return out


def bench_one(framework, ckpt, sizes, runs):
    res = {"framework": framework}
    if framework == "zimage":
        sys.path.insert(0, ROOT)
        import zimage
        mem_info = lambda: zimage._zimage.cuda_mem_info(0)
        sync = lambda: None  # zimage calls return with results on the host
        t0 = time.perf_counter()
        pipe = zimage.ZImagePipeline.from_pretrained(ckpt, torch_dtype=zimage.bfloat16).to("cuda")
        res["load_s"] = time.perf_counter() - t0
        as_latents = lambda a: a
    else:
        import torch
        from diffusers import ZImagePipeline
        mem_info = lambda: torch.cuda.mem_get_info(0)
        sync = torch.cuda.synchronize
        t0 = time.perf_counter()
        pipe = ZImagePipeline.from_pretrained(ckpt, torch_dtype=torch.bfloat16).to("cuda")
        sync()
        res["load_s"] = time.perf_counter() - t0
        if framework == "compiled":
            pipe.transformer = torch.compile(pipe.transformer)
        as_latents = lambda a: torch.from_numpy(a).to("cuda")
        torch.cuda.reset_peak_memory_stats()
    pipe.set_progress_bar_config(disable=True)

    import numpy as np
    noise = {}  # the same initial noise for every framework (seeded NumPy draw)

    def call(h, w, cb=None):
        kw = {"callback_on_step_end": cb} if cb else {}
        if h not in noise:
            noise[h] = np.random.default_rng(42).standard_normal((1, 16, h // 8, w // 8)).astype(np.float32)
        out = pipe(prompt=PROMPT, height=h, width=w, num_inference_steps=9, guidance_scale=0.0,
                   latents=as_latents(noise[h]), output_type="np", **kw).images
        sync()
        return out

    for size in sizes:
        n = runs if size <= 1024 else max(3, runs // 2)
        t0 = time.perf_counter()
        call(size, size)  # warm-up (and compile)
        res[f"warmup_{size}_s"] = time.perf_counter() - t0
        ts = []
        with PeakMemory(mem_info) as pm:
            for _ in range(n):
                t0 = time.perf_counter()
                call(size, size)
                ts.append(time.perf_counter() - t0)
        res[f"pipe_{size}_s"] = median(ts)
        res[f"pipe_{size}_all"] = ts
        res[f"peak_device_GiB_{size}"] = pm.peak / 2**30
        if framework != "zimage":
            import torch
            res[f"peak_torch_alloc_GiB_{size}"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        if size == 1024:  # stages
            stamps = []
            t_start = [0.0]

            def cb(p, i, t, kw):
                sync()
                stamps.append(time.perf_counter())
                return {}

            t_start[0] = time.perf_counter()
            call(1024, 1024, cb)
            t_end = time.perf_counter()
            steps = [b - a for a, b in zip([t_start[0]] + stamps[:-1], stamps)]
            res["steps_1024_s"] = steps[1:]           # step 0 also holds encoding and noise
            res["first_step_incl_encode_s"] = steps[0]
            res["after_last_step_s"] = t_end - stamps[-1]  # decode + postprocess
            if framework == "zimage":
                t0 = time.perf_counter()
                for _ in range(5):
                    pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)
                res["encode_prompt_s"] = (time.perf_counter() - t0) / 5
            else:
                import torch
                with torch.no_grad():
                    pipe.encode_prompt(PROMPT, device="cuda", do_classifier_free_guidance=False)
                    sync()
                    t0 = time.perf_counter()
                    for _ in range(5):
                        pipe.encode_prompt(PROMPT, device="cuda", do_classifier_free_guidance=False)
                    sync()
                res["encode_prompt_s"] = (time.perf_counter() - t0) / 5
            res.update(bench_parts(framework, pipe, sync))
    print(json.dumps(res), flush=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default="/tmp/zi-ckpt")
    ap.add_argument("--frameworks", default="zimage,diffusers,compiled")
    ap.add_argument("--sizes", default="1024,512,2048")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    if a.one:
        bench_one(a.one, a.ckpt, sizes, a.runs)
        return
    results = []
    for fw in a.frameworks.split(","):
        r = subprocess.run([sys.executable, __file__, "--one", fw, "--ckpt", a.ckpt, "--sizes", a.sizes, "--runs",
                            str(a.runs)], capture_output=True, text=True)
        lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
        if r.returncode != 0 or not lines:
            print(f"{fw} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}", flush=True)
            continue
        results.append(json.loads(lines[-1]))
    keys = ["load_s"] + [f"pipe_{s}_s" for s in sizes] + [f"peak_device_GiB_{s}" for s in sizes] + \
        ["encode_prompt_s", "first_step_incl_encode_s", "after_last_step_s", "transformer_fwd_1024_s", "vae_decode_1024_s",
         "vae_decode_to_host_1024_s"]
    print(f"{'':30s}" + "".join(f"{r['framework']:>12s}" for r in results))
    for k in keys:
        print(f"{k:30s}" + "".join(f"{r.get(k, float('nan')):12.3f}" for r in results))
    for r in results:
        if "steps_1024_s" in r:
            print(f"{r['framework']} steps 1..8 at 1024^2 (s): " + " ".join(f"{x:.3f}" for x in r["steps_1024_s"]))
    if a.json:
        import torch
        json.dump({"date": time.strftime("%Y-%m-%d"), "gpu": torch.cuda.get_device_name(0), "results": results},
                  open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
