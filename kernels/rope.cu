/*
 * rope.cu - rotary position embedding applied in place to x[S,NH,HD] (bf16) with an fp32
 * cos/sin table cs[S,HD/2,2]. One thread per rotated pair; interleaved pairs (2j, 2j+1) for
 * Z-Image, rotate-half pairs (j, j+HD/2) for Qwen.
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
