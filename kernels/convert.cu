/*
 * convert.cu - dtype conversion on the device: checkpoint data (f32 / bf16 / f16, staged raw
 * into device memory) to bf16 weights and activations, and bf16 back to f32 for downloads.
 * Memory-bound one-pass kernels with a grid-stride loop, one element per thread step.
 */
#include "common.cuh"

/* dst[i] = bf16(src[i]); SRC is float, bf16 or half */
template <typename SRC>
__global__ void to_bf16_kernel(bf16 *dst, const SRC *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        if constexpr (sizeof(SRC) == 4) dst[i] = f2b(src[i]);
        else dst[i] = f2b((float)src[i]);
    }
}

__global__ void bf16_to_f32_kernel(float *dst, const bf16 *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = b2f(src[i]);
}

extern "C" cudaError_t zi_to_bf16_cuda(void *dst, const void *src, int src_dtype, size_t n, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    unsigned grid = grid_for(n, 256);
    switch (src_dtype) {
    case 0: to_bf16_kernel<float><<<grid, 256, 0, stream>>>((bf16 *)dst, (const float *)src, n); break;
    case 1: return cudaMemcpyAsync(dst, src, n * 2, cudaMemcpyDeviceToDevice, stream);
    case 2: to_bf16_kernel<__half><<<grid, 256, 0, stream>>>((bf16 *)dst, (const __half *)src, n); break;
    default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

extern "C" cudaError_t zi_bf16_to_f32_cuda(float *dst, const void *src, size_t n, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    bf16_to_f32_kernel<<<grid_for(n, 256), 256, 0, stream>>>(dst, (const bf16 *)src, n);
    return cudaGetLastError();
}
