"""Reference draws of torch.randn for csrc/rng.c (the initial latents of ZImagePipeline).

Run:  /work/refenv/bin/python tests/reference/make_rng_fixtures.py            (CPU; always)
      python3 tests/reference/make_rng_fixtures.py --cuda-only                 (on a GPU machine)

Writes
------
tests/fixtures/rng/cpu_randn.npz     torch CPU generator (mt19937), for each of torch's CPU builds that
                                     this machine can run: "avx2" (avx_mathfun polynomials), "default"
                                     and "avx512" (both libm). The script re-runs itself with
                                     ATEN_CPU_CAPABILITY set; a kernel the CPU lacks is skipped.
tests/fixtures/rng/cuda_randn.npz    torch CUDA generator (Philox, curand), only where a GPU is found;
                                     the layout depends on the GPU's SM count, recorded in the file.
tests/fixtures/rng/versions_cpu.json / versions_cuda.json   torch version, capability, GPU name.
--full DIR additionally dumps the complete large CUDA arrays (not for the repository).
--sfu (GPU + nvcc) re-derives csrc/rng.c's model of the special-function unit behind curand's
__sincosf: it measures MUFU.SIN/COS on every reachable point of the first quadrant's fixed-point
grid, fits the 64 segments' coefficients (each must come out unique and exact) and compares them
with rng.c's table, then checks the model against the GPU for every float v in [0, 2pi_f].

npz keys (no strings, no pickles; scalars are 0-d int64)
--------------------------------------------------------
Every draw has a name K and is stored as
    K_sha256   uint8 (32,)  sha256 of the float32 little-endian bytes of the whole draw
    K          f32 (n,)     the whole draw, when n <= 4096; otherwise
    K_head     f32 (2048,)  first elements,  K_tail f32 (256,) last elements,
    K_every61  f32          elements 0, 61, 122, ...
    K_n        int64        n
cpu_randn.npz
    {kind}_s{seed}_n{n}     torch.randn(n, generator=torch.Generator().manual_seed(seed)),
                            kind in (avx2, default, avx512), seed in SEEDS_CPU, n in SIZES_CPU
    {kind}_seq              draws of SEQ_SIZES from ONE generator seeded with 7, concatenated
    {kind}_seq_state        uint8 (5056,) generator.get_state() after those draws
    seq_sizes               int64 SEQ_SIZES
cuda_randn.npz
    sms, threads_per_sm     int64: multiProcessorCount, maxThreadsPerMultiProcessor of the GPU used
    s{seed}_n{n}            torch.randn((1, 16, h, w) or (n,), generator=cuda generator seeded with seed)
    seq42_draw0/1           two consecutive (1,16,128,128) draws from one generator seeded with 42
    seq42_offsets           int64 (3,) generator.get_offset() before, after draw 0, after draw 1
    seq42_state             uint8 (16,) generator.get_state() after draw 1 (seed u64 + offset i64, LE)
"""
import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
OUT_DIR = REPO / "tests" / "fixtures" / "rng"

SEEDS_CPU = (0, 42, 1234, 2**40 + 5)          # the last one: the engine keeps only the low 32 bits
SIZES_CPU = (1, 7, 15, 16, 17, 100, 1000, 16 * 128 * 128)
SEQ_SIZES = (3, 5, 1, 20, 7, 33, 16, 2)        # mixes the scalar path (cached sample) and blocks of 16
SEEDS_CUDA = (0, 42, 1234)
LATENTS_CUDA = (128, 64, 256)                  # (1, 16, h, h): 1024^2, 512^2, 2048^2 images
FULL_MAX = 4096


def put(store: dict, key: str, x: np.ndarray) -> None:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(-1))
    store[key + "_sha256"] = np.frombuffer(hashlib.sha256(x.astype("<f4").tobytes()).digest(), np.uint8)
    store[key + "_n"] = np.array(x.size, np.int64)
    if x.size <= FULL_MAX:
        store[key] = x
    else:
        store[key + "_head"] = x[:2048].copy()
        store[key + "_tail"] = x[-256:].copy()
        store[key + "_every61"] = x[::61].copy()


def cpu_has(kind: str) -> bool:
    """Whether this CPU can run torch's `kind` build (torch trusts ATEN_CPU_CAPABILITY blindly)."""
    need = {"default": [], "avx2": ["avx2", "fma"], "avx512": ["avx512f", "avx512bw", "avx512dq", "avx512vl", "fma"]}[kind]
    if not need:
        return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return all(x in flags for x in need)


def cpu_worker(kind: str, out_path: str) -> None:
    """Runs under ATEN_CPU_CAPABILITY=<kind>; writes the draws of that kernel to out_path."""
    import torch

    torch.set_num_threads(1)
    got = torch.backends.cpu.get_cpu_capability().lower()
    store = {}
    if got == kind and cpu_has(kind):
        for seed in SEEDS_CPU:
            for n in SIZES_CPU:
                g = torch.Generator().manual_seed(seed)
                put(store, f"{kind}_s{seed}_n{n}", torch.randn(n, generator=g).numpy())
        g = torch.Generator().manual_seed(7)
        put(store, f"{kind}_seq", np.concatenate([torch.randn(n, generator=g).numpy() for n in SEQ_SIZES]))
        store[f"{kind}_seq_state"] = g.get_state().numpy().copy()
    else:
        print(f"  capability {kind!r} not available on this CPU (torch reports {got!r}): skipped")
    np.savez(out_path, **store)


def make_cpu() -> None:
    import torch

    store = {"seq_sizes": np.array(SEQ_SIZES, np.int64)}
    kinds = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("avx2", "default", "avx512"):
            path = os.path.join(tmp, kind + ".npz")
            env = dict(os.environ, ATEN_CPU_CAPABILITY=kind)
            subprocess.check_call([sys.executable, __file__, "--cpu-worker", kind, path], env=env)
            with np.load(path) as z:
                if len(z.files):
                    kinds.append(kind)
                store.update({k: z[k] for k in z.files})
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT_DIR / "cpu_randn.npz", **store)
    info = {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "machine": platform.machine(), "native_capability": torch.backends.cpu.get_cpu_capability(),
            "kinds_recorded": kinds}
    (OUT_DIR / "versions_cpu.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"  wrote cpu_randn.npz ({(OUT_DIR / 'cpu_randn.npz').stat().st_size} B), kinds {kinds}")


def make_cuda(full_dir) -> None:
    import torch

    if not torch.cuda.is_available():
        print("  no CUDA device: cuda_randn.npz not written")
        return
    props = torch.cuda.get_device_properties(0)
    store = {"sms": np.array(props.multi_processor_count, np.int64),
             "threads_per_sm": np.array(props.max_threads_per_multi_processor, np.int64)}
    full = {}

    def draw(key, shape, seed):
        g = torch.Generator("cuda").manual_seed(seed)
        x = torch.randn(shape, generator=g, device="cuda", dtype=torch.float32).cpu().numpy()
        put(store, key, x)
        full[key] = x.reshape(-1)

    for seed in SEEDS_CUDA:
        for h in LATENTS_CUDA:
            draw(f"s{seed}_n{16 * h * h}", (1, 16, h, h), seed)
    for n in (1, 7, 1000):
        draw(f"s42_n{n}", (n,), 42)
    draw("s7_n1200000", (1200000,), 7)   # > 4T on an H100: a second round of curand_normal4
    g = torch.Generator("cuda").manual_seed(42)
    offs = [g.get_offset()]
    d0 = torch.randn((1, 16, 128, 128), generator=g, device="cuda").cpu().numpy()
    offs.append(g.get_offset())
    d1 = torch.randn((1, 16, 128, 128), generator=g, device="cuda").cpu().numpy()
    offs.append(g.get_offset())
    put(store, "seq42_draw0", d0)
    put(store, "seq42_draw1", d1)
    full["seq42_draw0"], full["seq42_draw1"] = d0.reshape(-1), d1.reshape(-1)
    store["seq42_offsets"] = np.array(offs, np.int64)
    store["seq42_state"] = g.get_state().numpy().copy()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT_DIR / "cuda_randn.npz", **store)
    info = {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "cuda": torch.version.cuda, "device": props.name, "sms": props.multi_processor_count,
            "threads_per_sm": props.max_threads_per_multi_processor}
    (OUT_DIR / "versions_cuda.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"  wrote cuda_randn.npz ({(OUT_DIR / 'cuda_randn.npz').stat().st_size} B) on {props.name}, offsets {offs}")
    if full_dir:
        os.makedirs(full_dir, exist_ok=True)
        groups = {}
        for k, v in full.items():
            groups.setdefault(k.split("_")[0].replace("seq", "s"), {})[k] = v
        for name, arrs in groups.items():
            np.savez(os.path.join(full_dir, f"cuda_full_{name}.npz"), **arrs)


# ---------------------------------------------------------------------------------------------
# --sfu: measure the special-function unit (MUFU.SIN / MUFU.COS) behind __sincosf

SFU_PROBE = r"""
#include <cstdio>
#include <cstdint>
#include <cstdlib>
__constant__ long long coef[64][3];
__device__ float model(uint32_t k, int cs) {  // = sfu_sincos_fixed in csrc/rng.c
  unsigned q = (k >> 23) + cs; uint32_t f = k & 0x7fffffu; if (q & 1) f = 0x7fffffu - f;
  uint32_t sign = (q >> 1) & 1, seg = f >> 17, x = f & 0x1ffffu, sq = 0;
  for (int i = 0; i < 17; i++) if ((x >> i) & 1) sq += x >> (18 - i);
  long long res = (coef[seg][0] << 11) + coef[seg][1] * x + coef[seg][2] * (long long)(sq >> 1);
  if (res <= 0) return __uint_as_float(sign << 31);
  int lead = 37; while (!((res >> lead) & 1)) lead--;
  uint32_t mant = lead >= 23 ? (uint32_t)(res >> (lead - 23)) : (uint32_t)(res << (23 - lead));
  return __uint_as_float((sign << 31) | ((uint32_t)(127 - (37 - lead)) << 23) | (mant - 0x800000u));
}
__device__ unsigned long long bad[3];
__global__ void check(uint32_t hi) {  // every float v in [0, hi] (bit patterns)
  const float c = __uint_as_float(0x3e22f983u);
  for (uint64_t b = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; b <= hi; b += (uint64_t)gridDim.x * blockDim.x) {
    float v = __uint_as_float((uint32_t)b), s, co; __sincosf(v, &s, &co);
    uint32_t k = (uint32_t)(__fmul_rz(v, c) * 33554432.0f);
    bool e1 = __float_as_uint(model(k, 0)) != __float_as_uint(s), e2 = __float_as_uint(model(k, 1)) != __float_as_uint(co);
    if (e1) atomicAdd(&bad[0], 1ull); if (e2) atomicAdd(&bad[1], 1ull); atomicAdd(&bad[2], 1ull);
  }
}
__global__ void grid(float *S, float *C, unsigned char *ok) {  // MUFU at t = f * 2^-25, first quadrant
  const float c = __uint_as_float(0x3e22f983u);
  uint32_t f = blockIdx.x * blockDim.x + threadIdx.x; if (f >= (1u << 23)) return;
  float t = (float)f * 2.98023223876953125e-08f, v = __double2float_rn((double)t / (double)c);
  ok[f] = 0;
  for (int d = -16; d <= 16; d++) {
    float w = f ? __uint_as_float(__float_as_uint(v) + d) : 0.0f;
    if (__fmul_rz(w, c) == t) { __sincosf(w, &S[f], &C[f]); ok[f] = 1; break; }
  }
}
int main(int argc, char **argv) {
  long long h[64][3]; FILE *fp = fopen(argv[1], "rb"); if (fread(h, sizeof h, 1, fp) != 1) return 1; fclose(fp);
  cudaMemcpyToSymbol(coef, h, sizeof h);
  check<<<4096, 256>>>(0x40C90FDBu);  // 2pi_f, the largest v curand can produce
  unsigned long long r[3]; if (cudaMemcpyFromSymbol(r, bad, sizeof r) != cudaSuccess) return 2;
  printf("%llu %llu %llu\n", r[2], r[0], r[1]);
  const int N = 1 << 23; float *S, *C; unsigned char *ok;
  cudaMalloc(&S, N * 4); cudaMalloc(&C, N * 4); cudaMalloc(&ok, N);
  grid<<<N / 256, 256>>>(S, C, ok); if (cudaDeviceSynchronize() != cudaSuccess) return 3;
  unsigned char *host = (unsigned char *)malloc(9 * (size_t)N);
  cudaMemcpy(host, S, N * 4, cudaMemcpyDeviceToHost); cudaMemcpy(host + 4 * (size_t)N, C, N * 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(host + 8 * (size_t)N, ok, N, cudaMemcpyDeviceToHost);
  fp = fopen(argv[2], "wb"); fwrite(host, 1, 9 * (size_t)N, fp); fclose(fp);
  return 0;
}
"""


def rng_c_table():
    import re
    src = (REPO / "csrc" / "rng.c").read_text()
    body = src[src.index("sfu_sin_coef[64][3] = {"):]
    body = body[: body.index("};")]
    rows = re.findall(r"\{\s*(0x[0-9a-fA-F]+),\s*(0x[0-9a-fA-F]+),\s*(-?\d+)\}", body)
    assert len(rows) == 64, len(rows)
    return np.array([[int(a, 16), int(b, 16), int(c)] for a, b, c in rows], np.int64)


def fit_sfu(S, ok):
    """Solve, segment by segment, the integers (A, B, C) with
    trunc24(A*2^11 + B*x + C*sq(x)) * 2^-37 == S at every measured point; None where not unique."""
    X = np.arange(1 << 17, dtype=np.int64)
    SQ = np.zeros_like(X)
    for i in range(17):
        SQ += np.where((X >> i) & 1, X >> (18 - i), 0)
    SQ >>= 1
    out = []
    for seg in range(64):
        f = (seg << 17) + X
        m = ok[f]
        x, q = X[m], SQ[m]
        sb = S[f][m].view(np.uint32).astype(np.int64)
        sh = ((sb >> 23) & 0xFF) - 127 + 14
        mant = (sb & 0x7FFFFF) | 0x800000
        lo = np.where(sb == 0, 0, np.where(sh >= 0, mant << np.maximum(sh, 0), mant >> np.maximum(-sh, 0)))
        hi = lo + np.where((sb == 0) | (sh <= 0), 1, np.int64(1) << np.maximum(sh, 0))  # res in [lo, hi)
        M = np.stack([np.full(x.size, 2048.0), x.astype(np.float64), q.astype(np.float64)], 1)
        est = np.linalg.lstsq(M, S[f][m].astype(np.float64) * 2.0 ** 37, rcond=None)[0]
        found = []
        for dB in range(-6, 7):
            for dC in range(-6, 7):
                B, C = int(round(est[1])) + dB, int(round(est[2])) + dC
                r = B * x + C * q
                a0, a1 = -(-(lo - r).max() // 2048), (hi - 1 - r).min() // 2048
                if a0 <= a1:
                    found += [(a, B, C) for a in range(int(a0), int(a1) + 1)]
        out.append(found[0] if len(found) == 1 else None)
    return out


def measure_sfu() -> None:
    table = rng_c_table()
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "sfu.cu"), os.path.join(tmp, "sfu")
        Path(src).write_text(SFU_PROBE)
        subprocess.check_call(["nvcc", "-O3", "-arch=native", src, "-o", exe])
        table.astype("<i8").tofile(os.path.join(tmp, "coef.bin"))
        res = subprocess.run([exe, os.path.join(tmp, "coef.bin"), os.path.join(tmp, "grid.bin")],
                             check=True, capture_output=True, text=True).stdout.split()
        total, bad_sin, bad_cos = (int(v) for v in res)
        raw = np.fromfile(os.path.join(tmp, "grid.bin"), np.uint8)
    N = 1 << 23
    S, C = raw[: 4 * N].view(np.float32), raw[4 * N: 8 * N].view(np.float32)
    ok = raw[8 * N:].astype(bool)
    fitted = fit_sfu(S, ok)
    unique = sum(r is not None for r in fitted)
    same = sum(r is not None and tuple(r) == tuple(table[i]) for i, r in enumerate(fitted))
    print(f"  grid: {ok.sum()} of {N} first-quadrant points reachable through __sincosf")
    print(f"  fit: {unique}/64 segments unique and exact; {same}/64 equal to csrc/rng.c's table")
    print(f"  model (rng.c's table) vs __sincosf for all {total} float v in [0, 2pi_f]: "
          f"{bad_sin} sin and {bad_cos} cos mismatches")
    if same != 64 or bad_sin or bad_cos:
        sys.exit("  this GPU's special-function unit differs from csrc/rng.c's model")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cuda-only", action="store_true", help="only the CUDA fixture")
    ap.add_argument("--cpu-only", action="store_true", help="only the CPU fixture")
    ap.add_argument("--full", default=None, help="also dump whole CUDA draws into this folder")
    ap.add_argument("--sfu", action="store_true", help="only re-derive and check rng.c's MUFU.SIN/COS model (GPU, nvcc)")
    ap.add_argument("--cpu-worker", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.cpu_worker:
        cpu_worker(*a.cpu_worker)
        return
    if a.sfu:
        measure_sfu()
        return
    if not a.cuda_only:
        make_cpu()
    if not a.cpu_only:
        make_cuda(a.full)


if __name__ == "__main__":
    main()
