/*
 * matmul.cu - out[M,N] = in[M,K] @ w[N,K]^T (+ bias[N]), bf16 in and out, fp32 accumulation, for the
 * shapes cuBLASLt serves badly or not at all (it does the real work in ops_cuda.c):
 *   gemv: M <= GEMV_MAX_M rows (the DiT's adaLN and timestep projections, M = 1), memory-bound:
 *         one warp per output feature reads its weight row once with 16-byte loads (cuBLASLt
 *         moved these at ~0.75 TB/s);
 *   fallback: any shape cuBLASLt has no algorithm for, so odd shapes never fail. Block = 16x16
 *         threads, one output each; K is walked in tiles of 16 through shared memory.
 */
#include "common.cuh"

#define MM_T 16

__global__ void matmul_fallback_kernel(bf16 *out, const bf16 *in, const bf16 *w, const bf16 *bias, int M, int K, int N) {
    __shared__ float xs[MM_T][MM_T + 1], ws[MM_T][MM_T + 1];
    int tx = threadIdx.x, ty = threadIdx.y;
    int m = blockIdx.y * MM_T + ty, n = blockIdx.x * MM_T + tx;
    float acc = 0.0f;
    for (int k0 = 0; k0 < K; k0 += MM_T) {
        int wn = blockIdx.x * MM_T + ty; /* the w row this thread loads */
        xs[ty][tx] = (m < M && k0 + tx < K) ? b2f(in[(size_t)m * K + k0 + tx]) : 0.0f;
        ws[ty][tx] = (wn < N && k0 + tx < K) ? b2f(w[(size_t)wn * K + k0 + tx]) : 0.0f;
        __syncthreads(); /* both tiles stored */
#pragma unroll
        for (int kk = 0; kk < MM_T; kk++) acc += xs[ty][kk] * ws[tx][kk];
        __syncthreads(); /* done reading before the next tiles overwrite them */
    }
    if (m < M && n < N) out[(size_t)m * N + n] = f2b(acc + (bias ? b2f(bias[n]) : 0.0f));
}

extern "C" cudaError_t zi_matmul_fallback_cuda(void *out, const void *in, const void *w, const void *bias, int M, int K,
                                               int N, cudaStream_t stream) {
    if (M == 0 || N == 0) return cudaSuccess;
    dim3 grid((N + MM_T - 1) / MM_T, (M + MM_T - 1) / MM_T), block(MM_T, MM_T);
    if (grid.y > 65535) return cudaErrorInvalidValue;
    matmul_fallback_kernel<<<grid, block, 0, stream>>>((bf16 *)out, (const bf16 *)in, (const bf16 *)w,
                                                       (const bf16 *)bias, M, K, N);
    return cudaGetLastError();
}

#define GEMV_MAX_M 4
#define GEMV_WARPS 8

/* out[m, n] = w[n, :] . in[m, :] (+ bias[n]) for m < M <= GEMV_MAX_M: a warp per n (grid-stride),
   8 k per lane step; K % 8 == 0 and in, w 16-byte aligned (checked by the launcher) */
template <int M>
__global__ void gemv_kernel(bf16 *out, const bf16 *in, const bf16 *w, const bf16 *bias, int K, int N) {
    int lane = threadIdx.x % 32;
    for (int n = blockIdx.x * GEMV_WARPS + threadIdx.x / 32; n < N; n += gridDim.x * GEMV_WARPS) {
        const bf16 *wr = w + (size_t)n * K;
        float acc[M];
#pragma unroll
        for (int m = 0; m < M; m++) acc[m] = 0.0f;
        for (int k = lane * 8; k < K; k += 256) {
            float wv[8], xv[8];
            ld8(wv, wr + k);
#pragma unroll
            for (int m = 0; m < M; m++) {
                ld8(xv, in + (size_t)m * K + k);
#pragma unroll
                for (int j = 0; j < 8; j++) acc[m] += wv[j] * xv[j];
            }
        }
#pragma unroll
        for (int m = 0; m < M; m++) {
            float v = warp_sum(acc[m]);
            if (lane == 0) out[(size_t)m * N + n] = f2b(v + (bias ? b2f(bias[n]) : 0.0f));
        }
    }
}

extern "C" int zi_gemv_suits(const void *in, const void *w, int M, int K) {
    return M >= 1 && M <= GEMV_MAX_M && K % 8 == 0 && is_aligned16(in) && is_aligned16(w);
}

extern "C" cudaError_t zi_gemv_cuda(void *out, const void *in, const void *w, const void *bias, int M, int K, int N,
                                    cudaStream_t stream) {
    if (N == 0) return cudaSuccess;
    if (!zi_gemv_suits(in, w, M, K)) return cudaErrorInvalidValue;
    unsigned grid = (unsigned)((N + GEMV_WARPS - 1) / GEMV_WARPS);
    if (grid > 65535u * 8) grid = 65535u * 8;
    bf16 *o = (bf16 *)out;
    const bf16 *x = (const bf16 *)in, *wt = (const bf16 *)w, *b = (const bf16 *)bias;
    switch (M) {
    case 1: gemv_kernel<1><<<grid, 32 * GEMV_WARPS, 0, stream>>>(o, x, wt, b, K, N); break;
    case 2: gemv_kernel<2><<<grid, 32 * GEMV_WARPS, 0, stream>>>(o, x, wt, b, K, N); break;
    case 3: gemv_kernel<3><<<grid, 32 * GEMV_WARPS, 0, stream>>>(o, x, wt, b, K, N); break;
    default: gemv_kernel<4><<<grid, 32 * GEMV_WARPS, 0, stream>>>(o, x, wt, b, K, N); break;
    }
    return cudaGetLastError();
}
