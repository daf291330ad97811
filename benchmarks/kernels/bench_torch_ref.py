"""
Reference timings from PyTorch on the same card, for comparison with bench_ops.c: F.linear
(cuBLAS) at the DiT matmul size and scaled_dot_product_attention (flash / efficient kernels) at
the DiT and VAE attention sizes. bf16, random inputs, median of CUDA-event timings.
Run: python3 benchmarks/kernels/bench_torch_ref.py   (needs torch with CUDA; prints SKIP otherwise)
"""
import statistics

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None


def timed(fn, reps=15):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def main():
    if torch is None or not torch.cuda.is_available():
        print("SKIP: no torch with CUDA")
        return
    dev, dt = "cuda", torch.bfloat16
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    print(f"{'op (torch)':44s} {'median ms':>10s} {'TFLOP/s':>10s}")
    for M, K, N in [(4128, 3840, 3840), (4128, 3840, 10240), (4128, 10240, 3840)]:
        x, w, b = (torch.randn(M, K, device=dev, dtype=dt), torch.randn(N, K, device=dev, dtype=dt) * 0.02,
                   torch.randn(N, device=dev, dtype=dt))
        ms = timed(lambda: F.linear(x, w, b))
        print(f"{f'linear M={M} K={K} N={N}':44s} {ms:10.3f} {2 * M * N * K / ms / 1e9:10.1f}")
    for S, NH, HD in [(4128, 30, 128), (16384, 1, 512)]:
        q, k, v = (torch.randn(1, NH, S, HD, device=dev, dtype=dt) for _ in range(3))
        ms = timed(lambda: F.scaled_dot_product_attention(q, k, v))
        print(f"{f'sdpa S={S} NH={NH} HD={HD}':44s} {ms:10.3f} {4 * S * S * HD * NH / ms / 1e9:10.1f}")
    # our layout: token-major [S, NH*HD], seen by SDPA as a strided [1, NH, S, HD] view
    S, NH, HD = 4128, 30, 128
    q, k, v = (torch.randn(1, S, NH, HD, device=dev, dtype=dt).transpose(1, 2) for _ in range(3))
    ms = timed(lambda: F.scaled_dot_product_attention(q, k, v))
    print(f"{f'sdpa S={S} NH={NH} HD={HD} token-major':44s} {ms:10.3f} {4 * S * S * HD * NH / ms / 1e9:10.1f}")
    # the text encoder's shape (Qwen3-4B: 32 query heads, 8 kv heads), causal
    S, NH, NKV, HD = 1024, 32, 8, 128
    q = torch.randn(1, NH, S, HD, device=dev, dtype=dt)
    k, v = (torch.randn(1, NKV, S, HD, device=dev, dtype=dt) for _ in range(2))
    ms = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    print(f"{f'sdpa S={S} NH={NH} NKV={NKV} HD={HD} causal':44s} {ms:10.3f} {2 * S * S * HD * NH / ms / 1e9:10.1f}")


if __name__ == "__main__":
    main()
