"""How fast the card multiplies bf16 matrices in a short burst and sustained, through PyTorch (cuBLAS):
the reference point for what the DiT's GEMMs can reach inside the denoising loop, where the card runs
for ~0.8 s at its power cap. For the 8192^3 product of ../shared/baseline (755 TFLOP/s there, a burst)
and the DiT's four shapes at 4128 tokens (F.linear, as diffusers runs them): TFLOP/s over 10 calls after
a warm-up, and over ~2 s of back-to-back calls. Run with nvidia-smi sampling beside it to see the clock.

    python3 benchmarks/kernels/sustained_gemm_torch.py
"""
import time

import torch
import torch.nn.functional as F


def rate(fn, flop, seconds=None, calls=10):
    fn()
    torch.cuda.synchronize()
    if seconds:  # back-to-back for about `seconds`
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        calls = max(10, int(seconds / (time.perf_counter() - t0)))
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(calls):
        fn()
    e1.record()
    torch.cuda.synchronize()
    s = e0.elapsed_time(e1) / 1000 / calls
    return flop / s / 1e12, s * 1e6


def main():
    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    print(torch.cuda.get_device_name(0), torch.__version__)
    a = torch.randn(8192, 8192, device=dev, dtype=dt)
    b = torch.randn(8192, 8192, device=dev, dtype=dt)
    cases = [("matmul 8192^3", lambda: a @ b, 2 * 8192 ** 3)]
    S, D, F_ = 4128, 3840, 10240
    x = torch.randn(S, D, device=dev, dtype=dt)
    h = torch.randn(S, F_, device=dev, dtype=dt)
    for name, inp, n, k in [("qkv N=11520", x, 3 * D, D), ("out N=3840", x, D, D), ("w13 N=20480", x, 2 * F_, D),
                            ("w2 K=10240", h, D, F_)]:
        w = torch.randn(n, k, device=dev, dtype=dt)
        cases.append((f"F.linear {name}", (lambda inp=inp, w=w: F.linear(inp, w)), 2 * S * n * k))
    for name, fn, flop in cases:
        burst, us_b = rate(fn, flop)
        time.sleep(1.0)  # let the card cool between cases
        sus, us_s = rate(fn, flop, seconds=2.0)
        print(f"{name:24s} burst {burst:5.0f} TFLOP/s ({us_b:7.1f} us)   sustained 2 s {sus:5.0f} TFLOP/s ({us_s:7.1f} us)",
              flush=True)


if __name__ == "__main__":
    main()
