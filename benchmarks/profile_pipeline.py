"""Per-op GPU time of zimage pipeline calls (development aid). Run with ZIMAGE_PROFILE=1 so the
CUDA backend brackets every op with events; the per-op table is printed to stderr at exit.

    ZIMAGE_PROFILE=1 python benchmarks/profile_pipeline.py --ckpt /tmp/zi-ckpt --size 1024 --calls 2

A first (warm-up) call runs untimed: the table covers the --calls calls after it.
"""
import argparse
import ctypes
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import zimage  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--ckpt", required=True)
ap.add_argument("--size", type=int, default=1024)
ap.add_argument("--calls", type=int, default=2)
ap.add_argument("--steps", type=int, default=9)
a = ap.parse_args()
pipe = zimage.ZImagePipeline.from_pretrained(a.ckpt).to("cuda")
reset = ctypes.CDLL(zimage._zimage.__file__).zi_cuda_profile_reset
for i in range(a.calls + 1):
    if i == 1:
        reset()
    t0 = time.perf_counter()
    pipe(prompt="A cute cyberpunk cat, neon lights, 8k high definition", height=a.size, width=a.size,
         num_inference_steps=a.steps, guidance_scale=0.0, generator=zimage.Generator().manual_seed(42))
    print(f"call {i}: {time.perf_counter() - t0:.3f} s", flush=True)
