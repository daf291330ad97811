/*
 * rope.cu - rotary position embedding applied in place to x[S,NH,HD] (bf16) with an fp32
 * cos/sin table cs[S,HD/2,2]. One thread per rotated pair; interleaved pairs (2j, 2j+1) for
 * Z-Image, rotate-half pairs (j, j+HD/2) for Qwen. qkv_norm_rope applies the per-head q/k RMSNorm and
 * the rotation in place to the q and k heads of a merged QKV projection (one warp per head row); the v
 * heads stay where they are and the attention reads all three from the merged rows.
 */
#include "common.cuh"

/* pair i -> (s, h, j): x0' = x0 c - x1 s, x1' = x0 s + x1 c */
__global__ void rope_kernel(bf16 *x, const float *cs, int NH, int HD, int interleaved, size_t n) {
    int half = HD / 2;
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += stride) {
        int j = (int)(i % half);
        size_t sh = i / half, s = sh / NH;
        bf16 *v = x + sh * HD;
        int i0 = interleaved ? 2 * j : j, i1 = interleaved ? 2 * j + 1 : j + half;
        float c = cs[(s * half + j) * 2], sn = cs[(s * half + j) * 2 + 1];
        float a = b2f(v[i0]), b = b2f(v[i1]);
        v[i0] = f2b(a * c - b * sn);
        v[i1] = f2b(a * sn + b * c);
    }
}

extern "C" cudaError_t zi_rope_cuda(void *x, const float *cs, int S, int NH, int HD, int interleaved,
                                    cudaStream_t stream) {
    size_t n = (size_t)S * NH * (HD / 2);
    if (n == 0) return cudaSuccess;
    rope_kernel<<<grid_for(n, 256), 256, 0, stream>>>((bf16 *)x, cs, NH, HD, interleaved, n);
    return cudaGetLastError();
}

#define QKV_MAX_PAIRS 4 /* HD <= 256: at most 4 pairs per lane */

/* pair j of a head row: elements (2j, 2j+1) interleaved, else (j, j + HD/2) */
static __device__ __forceinline__ void pair_index(int j, int half, int interleaved, int *i0, int *i1) {
    *i0 = interleaved ? 2 * j : j;
    *i1 = interleaved ? 2 * j + 1 : j + half;
}

/* One warp per (token s, head slot h) task over the q and k slots, grid-stride: slots [0, NH) are q heads,
   [NH, NH+NKV) k heads. Lane l owns pairs j = l + 32 i: x * rsqrt(mean(x^2) + eps) * w, then rotated, in place. */
__global__ void qkv_norm_rope_kernel(bf16 *qkv, const bf16 *wq, const bf16 *wk, const float *cs, int S, int NH, int NKV,
                                     int HD, float eps, int interleaved) {
    int slots = NH + NKV, lane = threadIdx.x % 32, half = HD / 2;
    size_t ntask = (size_t)S * slots, warps = (size_t)gridDim.x * (blockDim.x / 32), row = (size_t)(NH + 2 * NKV) * HD;
    for (size_t task = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; task < ntask; task += warps) {
        int h = (int)(task % slots);
        size_t s = task / slots;
        bf16 *x = qkv + s * row + (size_t)h * HD;
        const bf16 *w = h < NH ? wq : wk;
        float a[QKV_MAX_PAIRS], b[QKV_MAX_PAIRS], ss = 0.0f;
#pragma unroll
        for (int i = 0; i < QKV_MAX_PAIRS; i++) {
            int j = lane + 32 * i, i0, i1;
            a[i] = b[i] = 0.0f;
            if (j >= half) continue;
            pair_index(j, half, interleaved, &i0, &i1);
            a[i] = b2f(x[i0]);
            b[i] = b2f(x[i1]);
            ss += a[i] * a[i] + b[i] * b[i];
        }
        float r = w ? rsqrtf(warp_sum(ss) / HD + eps) : 1.0f; /* a lane writes back only the pairs it read */
        const float *t = cs + s * half * 2;
#pragma unroll
        for (int i = 0; i < QKV_MAX_PAIRS; i++) {
            int j = lane + 32 * i, i0, i1;
            if (j >= half) continue;
            pair_index(j, half, interleaved, &i0, &i1);
            float x0 = a[i] * r * (w ? b2f(w[i0]) : 1.0f), x1 = b[i] * r * (w ? b2f(w[i1]) : 1.0f);
            float c = t[2 * j], sn = t[2 * j + 1];
            x[i0] = f2b(x0 * c - x1 * sn);
            x[i1] = f2b(x0 * sn + x1 * c);
        }
    }
}

/* HD = 128 fast path: lane l owns elements 4l..4l+3 of its head row (8-byte loads and stores).
   Interleaved pairs (2j, 2j+1) are within a lane; rotate-half partners (j, j+64) are in lanes l and
   l^16, exchanged with one shuffle. Each warp walks the head slots of one token, so the token's
   cos/sin row (as float4 per lane) is loaded once. */
__global__ void qkv_norm_rope128_kernel(bf16 *qkv, const bf16 *wq, const bf16 *wk, const float *cs, int S, int NH,
                                        int NKV, float eps, int interleaved) {
    const int HD = 128;
    int slots = NH + NKV, lane = threadIdx.x % 32, wpb = blockDim.x / 32; /* q and k slots; v stays */
    size_t s = blockIdx.x;
    if (s >= (size_t)S) return;
    int e0 = 4 * lane;
    /* cos/sin of the pairs this lane rotates: interleaved pairs 2l, 2l+1; rotate-half pairs e0..e0+3 mod 64 */
    float c[4], sn[4];
    const float *t = cs + s * HD; /* [HD/2 pairs][cos, sin] */
    if (interleaved) {
        float4 u = *reinterpret_cast<const float4 *>(t + e0); /* pairs 2l, 2l+1: floats 4l .. 4l+3 */
        c[0] = u.x, sn[0] = u.y, c[1] = u.z, sn[1] = u.w;
        c[2] = c[3] = sn[2] = sn[3] = 0.0f; /* unused: two pairs per lane */
    } else {
        int j0 = e0 % 64;
#pragma unroll
        for (int i = 0; i < 4; i++) c[i] = t[2 * (j0 + i)], sn[i] = t[2 * (j0 + i) + 1];
    }
    float wqv[4] = {1, 1, 1, 1}, wkv[4] = {1, 1, 1, 1};
    if (wq) {
#pragma unroll
        for (int i = 0; i < 4; i++) wqv[i] = b2f(wq[e0 + i]), wkv[i] = b2f(wk[e0 + i]);
    }
    for (int h = threadIdx.x / 32; h < slots; h += wpb) {
        bf16 *dst = qkv + (s * (NH + 2 * NKV) + h) * HD; /* each lane reads and writes only its own 4 elements */
        uint2 raw = *reinterpret_cast<const uint2 *>(dst + e0);
        const float *w = h < NH ? wqv : wkv;
        const __nv_bfloat162 *p2 = reinterpret_cast<const __nv_bfloat162 *>(&raw);
        float x[4];
        float2 f0 = __bfloat1622float2(p2[0]), f1 = __bfloat1622float2(p2[1]);
        x[0] = f0.x, x[1] = f0.y, x[2] = f1.x, x[3] = f1.y;
        float r = 1.0f;
        if (wq) r = rsqrtf(warp_sum(x[0] * x[0] + x[1] * x[1] + x[2] * x[2] + x[3] * x[3]) / HD + eps);
#pragma unroll
        for (int i = 0; i < 4; i++) x[i] *= r * w[i];
        float y[4];
        if (interleaved) {
            y[0] = x[0] * c[0] - x[1] * sn[0];
            y[1] = x[0] * sn[0] + x[1] * c[0];
            y[2] = x[2] * c[1] - x[3] * sn[1];
            y[3] = x[2] * sn[1] + x[3] * c[1];
        } else { /* lanes 0-15 hold the first halves (x0' = x0 c - x1 s), lanes 16-31 the second (x1' = x0 s + x1 c) */
            bool first = lane < 16;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float o = __shfl_xor_sync(0xffffffffu, x[i], 16);
                y[i] = first ? x[i] * c[i] - o * sn[i] : o * sn[i] + x[i] * c[i];
            }
        }
        uint2 out;
        __nv_bfloat162 *o2 = reinterpret_cast<__nv_bfloat162 *>(&out);
        o2[0] = __floats2bfloat162_rn(y[0], y[1]);
        o2[1] = __floats2bfloat162_rn(y[2], y[3]);
        *reinterpret_cast<uint2 *>(dst + e0) = out;
    }
}

extern "C" cudaError_t zi_qkv_norm_rope_cuda(void *qkv, const void *wq, const void *wk, const float *cs, int S, int NH,
                                             int NKV, int HD, float eps, int interleaved, cudaStream_t stream) {
    if (S <= 0) return cudaSuccess;
    if (HD <= 0 || HD % 2 || HD / 2 > 32 * QKV_MAX_PAIRS || NH <= 0 || NKV <= 0 || (!wq != !wk))
        return cudaErrorInvalidValue;
    if (HD == 128 && S <= 0x7fffffff && is_aligned16(qkv) && ((uintptr_t)cs & 15u) == 0) {
        qkv_norm_rope128_kernel<<<(unsigned)S, 256, 0, stream>>>((bf16 *)qkv, (const bf16 *)wq, (const bf16 *)wk, cs, S,
                                                                NH, NKV, eps, interleaved);
        return cudaGetLastError();
    }
    size_t tasks = (size_t)S * (NH + NKV);
    qkv_norm_rope_kernel<<<grid_for(tasks, 8), 256, 0, stream>>>((bf16 *)qkv, (const bf16 *)wq, (const bf16 *)wk, cs, S,
                                                                 NH, NKV, HD, eps, interleaved);
    return cudaGetLastError();
}
