/*
 * rope.cu - rotary position embedding applied in place to x[S,NH,HD] (bf16) with an fp32
 * cos/sin table cs[S,HD/2,2]. One thread per rotated pair; interleaved pairs (2j, 2j+1) for
 * Z-Image, rotate-half pairs (j, j+HD/2) for Qwen. qkv_norm_rope fuses the split of a merged QKV
 * projection, the per-head q/k RMSNorm and the rotation into one pass (one warp per head row).
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

/* One warp per (token s, head slot h) task, grid-stride: slots [0, NH) are q heads, [NH, NH+NKV) k heads,
   the rest v. Lane l owns pairs j = l + 32 i. q/k: x * rsqrt(mean(x^2) + eps) * w, then rotated; v: copied. */
__global__ void qkv_norm_rope_kernel(bf16 *q, bf16 *k, bf16 *v, const bf16 *qkv, const bf16 *wq, const bf16 *wk,
                                     const float *cs, int S, int NH, int NKV, int HD, float eps, int interleaved) {
    int slots = NH + 2 * NKV, lane = threadIdx.x % 32, half = HD / 2;
    size_t ntask = (size_t)S * slots, warps = (size_t)gridDim.x * (blockDim.x / 32);
    for (size_t task = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; task < ntask; task += warps) {
        int h = (int)(task % slots);
        size_t s = task / slots;
        const bf16 *src = qkv + task * HD;
        bf16 *dst;
        const bf16 *w;
        if (h < NH) dst = q + (s * NH + h) * HD, w = wq;
        else if (h < NH + NKV) dst = k + (s * NKV + h - NH) * HD, w = wk;
        else dst = v + (s * NKV + h - NH - NKV) * HD, w = NULL;
        int is_v = h >= NH + NKV;
        float a[QKV_MAX_PAIRS], b[QKV_MAX_PAIRS], ss = 0.0f;
#pragma unroll
        for (int i = 0; i < QKV_MAX_PAIRS; i++) {
            int j = lane + 32 * i, i0, i1;
            a[i] = b[i] = 0.0f;
            if (j >= half) continue;
            pair_index(j, half, interleaved, &i0, &i1);
            if (is_v) { dst[i0] = src[i0]; dst[i1] = src[i1]; continue; }
            a[i] = b2f(src[i0]);
            b[i] = b2f(src[i1]);
            ss += a[i] * a[i] + b[i] * b[i];
        }
        if (is_v) continue; /* uniform across the warp: one task per warp */
        float r = w ? rsqrtf(warp_sum(ss) / HD + eps) : 1.0f;
        const float *t = cs + s * half * 2;
#pragma unroll
        for (int i = 0; i < QKV_MAX_PAIRS; i++) {
            int j = lane + 32 * i, i0, i1;
            if (j >= half) continue;
            pair_index(j, half, interleaved, &i0, &i1);
            float x0 = a[i] * r * (w ? b2f(w[i0]) : 1.0f), x1 = b[i] * r * (w ? b2f(w[i1]) : 1.0f);
            float c = t[2 * j], sn = t[2 * j + 1];
            dst[i0] = f2b(x0 * c - x1 * sn);
            dst[i1] = f2b(x0 * sn + x1 * c);
        }
    }
}

extern "C" cudaError_t zi_qkv_norm_rope_cuda(void *q, void *k, void *v, const void *qkv, const void *wq, const void *wk,
                                             const float *cs, int S, int NH, int NKV, int HD, float eps,
                                             int interleaved, cudaStream_t stream) {
    if (S <= 0) return cudaSuccess;
    if (HD <= 0 || HD % 2 || HD / 2 > 32 * QKV_MAX_PAIRS || NH <= 0 || NKV <= 0 || (!wq != !wk))
        return cudaErrorInvalidValue;
    size_t tasks = (size_t)S * (NH + 2 * NKV);
    qkv_norm_rope_kernel<<<grid_for(tasks, 8), 256, 0, stream>>>((bf16 *)q, (bf16 *)k, (bf16 *)v, (const bf16 *)qkv,
                                                                 (const bf16 *)wq, (const bf16 *)wk, cs, S, NH, NKV,
                                                                 HD, eps, interleaved);
    return cudaGetLastError();
}
