/*
 * matmul.cu - a plain tiled matmul, out[M,N] = in[M,K] @ w[N,K]^T (+ bias[N]), bf16 in and out,
 * fp32 accumulation. Not the fast path: cuBLASLt does the real work in ops_cuda.c; this runs
 * only when cuBLASLt offers no algorithm for a shape/alignment, so odd shapes never fail.
 * Block = 16x16 threads, one output each; K is walked in tiles of 16 through shared memory.
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
