"""Memory and load-time benchmark (issue 8): zimage against diffusers on one checkpoint in the real
layout (benchmarks/make_random_checkpoint.py), each framework in its own process:

    python benchmarks/bench_memory.py --ckpt /tmp/zi-ckpt --json memory.json

Per framework, in one process: from_pretrained(...).to("cuda") from the page cache; the resident
pipeline at 1024² (median of --runs calls after a warm-up; peak device-wide memory polled every
2 ms as bench_pipeline.py does, and the allocator's own peak: torch.cuda.max_memory_allocated /
zimage.cuda_max_memory_allocated); enable_model_cpu_offload() and the offloaded pipeline at 1024²
(zimage: --runs calls after a warm-up; diffusers: one call, it costs ~16 s); pipe.to("cpu") and
`del pipe` with the device-wide memory after each. zimage also: a 2048² call (--steps-2048 steps)
with vae.enable_tiling() while offloaded, then pipe.to("cuda") (resident again) and --gens calls
at 512² in a row (--gen-steps steps) with the peaks after calls 1, 10 and the last.
Then the cold load of each framework: every checkpoint file's pages are dropped from the page
cache first (sync, then posix_fadvise(POSIX_FADV_DONTNEED), which needs no root for clean pages),
checked with mincore, and from_pretrained(...).to("cuda") timed in a fresh process.
Prompt of the model card, guidance 0, the same seeded latents everywhere, bf16. Results are
printed as they come and written to --json after every stage.
"""
import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pipeline import PeakMemory, median  # noqa: E402

PROMPT = "A cute cyberpunk cat, neon lights, 8k high definition"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 2 ** 30


# ---------------------------------------------------------------------------------------------
# page cache: what of the checkpoint is resident, and dropping it

def checkpoint_files(ckpt):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(ckpt) for f in fs)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def resident_bytes(path):
    """Bytes of the file in the page cache (mincore over a read-only shared mapping)."""
    size = os.path.getsize(path)
    if size == 0:
        return 0
    page = os.sysconf("SC_PAGE_SIZE")
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap {path}")
        try:
            n = (size + page - 1) // page
            vec = (ctypes.c_ubyte * n)()
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore {path}")
            import numpy as np
            return min(int((np.frombuffer(vec, np.uint8) & 1).sum()) * page, size)
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def cached_fraction(ckpt):
    files = checkpoint_files(ckpt)
    total = sum(os.path.getsize(f) for f in files)
    return sum(resident_bytes(f) for f in files) / max(total, 1), total


def evict(ckpt):
    os.sync()  # a freshly written checkpoint has dirty pages, which DONTNEED leaves alone
    for f in checkpoint_files(ckpt):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(ckpt):
    for f in checkpoint_files(ckpt):
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass


# ---------------------------------------------------------------------------------------------
# one framework per process

def used(mem_info):
    free, total = mem_info()
    return (total - free) / GiB


class Run:
    """Results of one process, printed as one JSON line at the end; a stage that raises records its
    error under errors[stage] and the next stage runs."""

    def __init__(self, framework):
        self.res = {"framework": framework}

    def __setitem__(self, k, v):
        self.res[k] = v

    def log(self, msg):
        print(f"[{self.res['framework']}] {msg}", file=sys.stderr, flush=True)

    def stage(self, name, fn):
        try:
            fn()
            return True
        except Exception as e:
            import traceback
            traceback.print_exc()
            self.res.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"
            self.log(f"stage {name} failed: {e}")
            return False


def noise(size):
    import numpy as np
    return np.random.default_rng(42).standard_normal((1, 16, size // 8, size // 8)).astype(np.float32)


def run_zimage(a, r):
    import numpy as np
    sys.path.insert(0, ROOT)
    import zimage
    Z = zimage._zimage
    mem_info = lambda: Z.cuda_mem_info(0)
    alloc = lambda: zimage.cuda_memory_stats(0)

    t0 = time.perf_counter()
    pipe = zimage.ZImagePipeline.from_pretrained(a.ckpt, torch_dtype=zimage.bfloat16).to("cuda")
    r["load_s"] = time.perf_counter() - t0
    r["after_load_device_GiB"] = used(mem_info)
    r["after_load_alloc_GiB"] = alloc()["allocated"] / GiB
    r.log(f"load {r.res['load_s']:.2f} s")
    pipe.set_progress_bar_config(disable=True)
    lat = {s: noise(s) for s in (512, 1024, 2048)}

    def call(size, steps=9):
        return pipe(prompt=PROMPT, height=size, width=size, num_inference_steps=steps, guidance_scale=0.0,
                    latents=lat[size], output_type="np").images

    def timed_calls(key, n):
        call(1024)  # warm-up
        zimage.cuda_reset_peak_memory_stats()
        ts = []
        with PeakMemory(mem_info) as pm:
            for _ in range(n):
                t0 = time.perf_counter()
                img = call(1024)
                ts.append(time.perf_counter() - t0)
        r[f"{key}_1024_s"] = median(ts)
        r[f"{key}_1024_all"] = ts
        r[f"{key}_peak_device_GiB"] = pm.peak / GiB
        r[f"{key}_peak_alloc_GiB"] = zimage.cuda_max_memory_allocated() / GiB
        t0 = time.perf_counter()
        for _ in range(3):
            pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)
        r[f"{key}_encode_prompt_s"] = (time.perf_counter() - t0) / 3
        r.log(f"{key}: {r.res[f'{key}_1024_s']:.3f} s, peak {pm.peak / GiB:.2f} GiB device-wide, "
              f"{r.res[f'{key}_peak_alloc_GiB']:.2f} GiB allocated; encode {r.res[f'{key}_encode_prompt_s']:.3f} s")
        return img

    imgs = {}

    def resident():
        imgs["resident"] = timed_calls("resident", a.runs)

    def offload():
        t0 = time.perf_counter()
        pipe.enable_model_cpu_offload()
        r["enable_offload_s"] = time.perf_counter() - t0
        s = alloc()
        r["offload_idle_device_GiB"] = used(mem_info)
        r["offload_idle_alloc_GiB"] = s["allocated"] / GiB
        r["offload_pinned_GiB"] = s["pinned"] / GiB
        img = timed_calls("offload", a.runs)
        # every encode streams the text encoder's layers (nearly all of the pinned bytes) to the GPU
        r["offload_encode_stream_GBps"] = s["pinned"] / 1e9 / r.res["offload_encode_prompt_s"]
        r["offload_overhead_s"] = r.res["offload_1024_s"] - r.res["resident_1024_s"]
        r["offload_equals_resident"] = bool(np.array_equal(img, imgs["resident"]))
        r["offload_max_abs_diff"] = float(np.abs(img - imgs["resident"]).max())

    def tiled_2048():
        pipe.vae.enable_tiling()
        try:
            zimage.cuda_reset_peak_memory_stats()
            with PeakMemory(mem_info) as pm:
                t0 = time.perf_counter()
                img = call(2048, a.steps_2048)
                r["tiled_2048_offload_s"] = time.perf_counter() - t0
            r["tiled_2048_offload_peak_device_GiB"] = pm.peak / GiB
            r["tiled_2048_offload_peak_alloc_GiB"] = zimage.cuda_max_memory_allocated() / GiB
            r["tiled_2048_finite"] = bool(np.isfinite(img).all())
            r.log(f"2048^2 tiled, offloaded={pipe.text_encoder.offloaded}, {a.steps_2048} steps: peak "
                  f"{pm.peak / GiB:.2f} GiB device-wide")
        finally:
            pipe.vae.disable_tiling()

    def repeated_512():
        t0 = time.perf_counter()
        pipe.to("cuda")
        r["back_to_resident_s"] = time.perf_counter() - t0
        zimage.cuda_reset_peak_memory_stats()
        gens = {}
        with PeakMemory(mem_info) as pm:
            for i in range(1, a.gens + 1):
                call(512, a.gen_steps)
                if i in (1, 10, a.gens):
                    gens[i] = {"peak_device_GiB": pm.peak / GiB,
                               "peak_alloc_GiB": zimage.cuda_max_memory_allocated() / GiB,
                               "alloc_GiB": alloc()["allocated"] / GiB, "device_GiB": used(mem_info)}
        r["gens_512"] = gens
        r.log(f"{a.gens} calls at 512^2: " + ", ".join(f"after {i}: peak {g['peak_device_GiB']:.2f} GiB"
                                                        for i, g in gens.items()))

    def to_cpu():
        t0 = time.perf_counter()
        pipe.to("cpu")
        r["to_cpu_s"] = time.perf_counter() - t0
        r["after_to_cpu_device_GiB"] = used(mem_info)
        r["after_to_cpu_alloc_GiB"] = alloc()["allocated"] / GiB

    for name, fn in (("resident", resident), ("offload", offload), ("tiled_2048", tiled_2048),
                     ("repeated_512", repeated_512), ("to_cpu", to_cpu)):
        r.stage(name, fn)
    del pipe
    gc.collect()
    r["after_del_device_GiB"] = used(mem_info)
    r["after_del_alloc_GiB"] = alloc()["allocated"] / GiB
    zimage.cuda_empty_cache()
    r["after_empty_cache_device_GiB"] = used(mem_info)
    r["after_empty_cache_alloc_GiB"] = alloc()["allocated"] / GiB
    r.log(f"to('cpu'): {r.res['after_to_cpu_device_GiB']:.2f} GiB device-wide; del: "
          f"{r.res['after_del_device_GiB']:.2f}; empty_cache: {r.res['after_empty_cache_device_GiB']:.2f}")


def run_diffusers(a, r):
    import torch
    from diffusers import ZImagePipeline
    mem_info = lambda: torch.cuda.mem_get_info(0)
    sync = torch.cuda.synchronize

    t0 = time.perf_counter()
    pipe = ZImagePipeline.from_pretrained(a.ckpt, torch_dtype=torch.bfloat16).to("cuda")
    sync()
    r["load_s"] = time.perf_counter() - t0
    r["after_load_device_GiB"] = used(mem_info)
    r.log(f"load {r.res['load_s']:.2f} s")
    pipe.set_progress_bar_config(disable=True)
    lat = {s: torch.from_numpy(noise(s)) for s in (1024,)}

    def call(size, steps=9):
        out = pipe(prompt=PROMPT, height=size, width=size, num_inference_steps=steps, guidance_scale=0.0,
                   latents=lat[size], output_type="np").images
        sync()
        return out

    def resident():
        call(1024)
        torch.cuda.reset_peak_memory_stats()
        ts = []
        with PeakMemory(mem_info) as pm:
            for _ in range(a.runs):
                t0 = time.perf_counter()
                call(1024)
                ts.append(time.perf_counter() - t0)
        r["resident_1024_s"] = median(ts)
        r["resident_1024_all"] = ts
        r["resident_peak_device_GiB"] = pm.peak / GiB
        r["resident_peak_alloc_GiB"] = torch.cuda.max_memory_allocated() / GiB
        r.log(f"resident: {r.res['resident_1024_s']:.3f} s, peak {pm.peak / GiB:.2f} GiB device-wide")

    def to_cpu():
        t0 = time.perf_counter()
        pipe.to("cpu")
        sync()
        r["to_cpu_s"] = time.perf_counter() - t0
        r["after_to_cpu_device_GiB"] = used(mem_info)
        torch.cuda.empty_cache()
        r["after_to_cpu_empty_cache_device_GiB"] = used(mem_info)

    def offload():
        t0 = time.perf_counter()
        pipe.enable_model_cpu_offload()
        r["enable_offload_s"] = time.perf_counter() - t0
        torch.cuda.reset_peak_memory_stats()
        with PeakMemory(mem_info) as pm:
            t0 = time.perf_counter()
            call(1024)
            r["offload_1024_s"] = time.perf_counter() - t0
        r["offload_peak_device_GiB"] = pm.peak / GiB
        r["offload_peak_alloc_GiB"] = torch.cuda.max_memory_allocated() / GiB
        r["offload_overhead_s"] = r.res["offload_1024_s"] - r.res.get("resident_1024_s", float("nan"))
        r.log(f"offload (one call): {r.res['offload_1024_s']:.2f} s, peak {pm.peak / GiB:.2f} GiB device-wide")

    for name, fn in (("resident", resident), ("to_cpu", to_cpu), ("offload", offload)):
        r.stage(name, fn)
    del pipe
    gc.collect()
    r["after_del_device_GiB"] = used(mem_info)
    torch.cuda.empty_cache()
    r["after_empty_cache_device_GiB"] = used(mem_info)


def run_cold(a, r, framework):
    """from_pretrained(...).to("cuda") only (the caller dropped the checkpoint's pages first)."""
    if framework == "zimage":  # imports first: their files are not what is measured
        sys.path.insert(0, ROOT)
        import zimage
        t0 = time.perf_counter()
        pipe = zimage.ZImagePipeline.from_pretrained(a.ckpt, torch_dtype=zimage.bfloat16).to("cuda")
    else:
        import torch
        from diffusers import ZImagePipeline
        t0 = time.perf_counter()
        pipe = ZImagePipeline.from_pretrained(a.ckpt, torch_dtype=torch.bfloat16).to("cuda")
        torch.cuda.synchronize()
    r["load_s"] = time.perf_counter() - t0
    r.log(f"cold load {r.res['load_s']:.2f} s")
    del pipe


def one(a):
    r = Run(a.one)
    try:
        if a.one == "zimage":
            run_zimage(a, r)
        elif a.one == "diffusers":
            run_diffusers(a, r)
        else:
            run_cold(a, r, a.one.split("-")[0])
    except Exception as e:  # report what was measured before the failure
        import traceback
        traceback.print_exc()
        r["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(r.res), flush=True)


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default="/tmp/zi-ckpt")
    ap.add_argument("--frameworks", default="zimage,diffusers")
    ap.add_argument("--runs", type=int, default=3, help="timed calls at 1024^2 (diffusers offload: always 1)")
    ap.add_argument("--gens", type=int, default=100, help="calls in a row at 512^2 (zimage)")
    ap.add_argument("--gen-steps", type=int, default=4, help="steps of each of those calls")
    ap.add_argument("--steps-2048", type=int, default=2, help="steps of the tiled 2048^2 call")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-disk loads")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per framework process")
    ap.add_argument("--deadline", type=float, default=0,
                    help="seconds for the whole run: a process gets what is left (cold loads skipped when < 40 s)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        one(a)
        return
    out = {"date": time.strftime("%Y-%m-%d"), "results": {}}
    try:
        name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True).stdout.strip()
        out["gpu"] = name
    except OSError:
        pass

    def save():
        if a.json:
            with open(a.json, "w") as f:
                json.dump(out, f, indent=1)

    start = time.perf_counter()

    def child(role):
        timeout = a.timeout
        if a.deadline:
            timeout = min(timeout, a.deadline - (time.perf_counter() - start) - 5)
            if timeout < 40:
                out["results"][role] = {"framework": role, "error": "skipped: --deadline reached"}
                save()
                return out["results"][role]
        cmd = [sys.executable, __file__, "--one", role, "--ckpt", a.ckpt, "--runs", str(a.runs), "--gens",
               str(a.gens), "--gen-steps", str(a.gen_steps), "--steps-2048", str(a.steps_2048)]
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout)
            lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
            res = json.loads(lines[-1]) if lines else {"framework": role, "error": f"exit {p.returncode}, no result"}
        except subprocess.TimeoutExpired:
            res = {"framework": role, "error": f"timed out after {timeout:.0f} s"}
        out["results"][role] = res
        save()
        return res

    frac, total = cached_fraction(a.ckpt)
    if frac < 0.99:
        warm(a.ckpt)
    out["checkpoint_GB"] = total / 1e9
    out["cached_fraction_before_warm_loads"] = cached_fraction(a.ckpt)[0]
    fws = a.frameworks.split(",")
    for fw in fws:
        child(fw)
    if not a.no_cold:
        for fw in fws:
            evict(a.ckpt)
            out[f"cached_fraction_before_{fw}_cold"] = cached_fraction(a.ckpt)[0]
            child(f"{fw}-cold")
    save()

    R = out["results"]
    cols = [fw for fw in fws if fw in R]
    rows = [("load_s", "from_pretrained().to('cuda'), page cache (s)"),
            ("resident_1024_s", "resident 1024^2, 9 steps (s)"),
            ("resident_peak_device_GiB", "resident peak, device-wide (GiB)"),
            ("resident_peak_alloc_GiB", "resident peak, allocator (GiB)"),
            ("offload_1024_s", "offloaded 1024^2 (s)"),
            ("offload_overhead_s", "offload cost per call (s)"),
            ("offload_peak_device_GiB", "offloaded peak, device-wide (GiB)"),
            ("offload_peak_alloc_GiB", "offloaded peak, allocator (GiB)"),
            ("tiled_2048_offload_peak_device_GiB", "2048^2 tiled + offloaded peak (GiB)"),
            ("after_to_cpu_device_GiB", "after pipe.to('cpu'), device-wide (GiB)"),
            ("after_del_device_GiB", "after del pipe, device-wide (GiB)"),
            ("after_empty_cache_device_GiB", "  + empty_cache, device-wide (GiB)")]
    print(f"{'':48s}" + "".join(f"{c:>12s}" for c in cols))
    for k, label in rows:
        print(f"{label:48s}" + "".join(f"{R[c][k]:12.3f}" if isinstance(R[c].get(k), (int, float)) else f"{'-':>12s}"
                                       for c in cols))
    for fw in cols:
        cold = R.get(f"{fw}-cold", {})
        print(f"{fw} cold load: {cold.get('load_s', float('nan')):.2f} s (page cache before it: "
              f"{out.get(f'cached_fraction_before_{fw}_cold', float('nan')):.3f} of the checkpoint)")
        for k in ("error", "errors"):
            if k in R[fw]:
                print(f"{fw} {k}: {R[fw][k]}")
    if "zimage" in R and "gens_512" in R["zimage"]:
        print("zimage 512^2 calls in a row: " + ", ".join(
            f"after {i}: peak {g['peak_device_GiB']:.2f} GiB device / {g['peak_alloc_GiB']:.2f} GiB allocated"
            for i, g in R["zimage"]["gens_512"].items()))
        print(f"zimage offloaded image == resident image: {R['zimage'].get('offload_equals_resident')}")


if __name__ == "__main__":
    main()
