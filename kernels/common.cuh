/*
 * common.cuh - small device helpers shared by the kernels: bf16 <-> f32, 8-wide packed
 * loads/stores, bf16 pair packing, shared-memory addresses, warp and block reductions, grid sizing.
 * Defines: bf16, ld8/st8, pack_bf16x2, smem_u32, warp_sum, warp_max, block_sum, block_max, grid_for,
 * is_aligned16, silu_mul, silu_gn.
 */
#ifndef ZI_COMMON_CUH
#define ZI_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "zi_kernels.h"

typedef __nv_bfloat16 bf16;

static __device__ __forceinline__ float b2f(bf16 x) { return __bfloat162float(x); }
static __device__ __forceinline__ bf16 f2b(float x) { return __float2bfloat16_rn(x); }

/* 8 bf16 <-> 8 floats through one 16-byte access */
static __device__ __forceinline__ void ld8(float f[8], const bf16 *p) {
    uint4 u = *reinterpret_cast<const uint4 *>(p);
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 t = __bfloat1622float2(h[i]);
        f[2 * i] = t.x;
        f[2 * i + 1] = t.y;
    }
}
static __device__ __forceinline__ void st8(bf16 *p, const float f[8]) {
    uint4 u;
    __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    *reinterpret_cast<uint4 *>(p) = u;
}

/* silu(a) * b in fp32, the one formula of every SwiGLU on the device (swiglu, swiglu_pair, the
   matmul_swiglu epilogue), so the fused and unfused paths round identically */
static __device__ __forceinline__ float silu_mul(float a, float b) { return a / (1.0f + expf(-a)) * b; }

/* silu(t) = t / (1 + e^-t) of a GroupNorm's output (the VAE's normalising packs, groupnorm_apply) on the
   fast paths: ex2.approx of t log2(e) and an approximate divide (rcp.approx + mul). Relative error below
   ~2e-6 for |t| < 30 (ex2.approx's 2 ulp plus the rounding of t log2(e)), three orders under bf16's half
   ulp (2^-9), so only bf16 roundings within that distance of a tie can change. e^-t = inf (t < -88) gives
   t * 0 = -0 as the IEEE formula does. Half the instructions of expf + the IEEE divide, which made the
   normalising pack ALU-bound (0.386 -> 0.34 ms at 128 ch 1024^2 on an H100). */
static __device__ __forceinline__ float silu_gn(float t) { return __fdividef(t, 1.0f + __expf(-t)); }

/* two floats -> one register of two bf16 (lo in the low half), rounded to nearest even */
static __device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&h);
}

/* shared-memory address of a generic pointer into shared memory (for PTX operands) */
static __device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
   `red` is shared scratch of 32 floats. */
static __device__ __forceinline__ float block_sum(float v, float *red) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads(); /* red may still be read by a previous call */
    if (lane == 0) red[warp] = v;
    __syncthreads(); /* all partial sums written */
    v = lane < nw ? red[lane] : 0.0f;
    return warp_sum(v);
}

/* Max over the block, as block_sum. */
static __device__ __forceinline__ float block_max(float v, float *red) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    v = warp_max(v);
    __syncthreads(); /* red may still be read by a previous call */
    if (lane == 0) red[warp] = v;
    __syncthreads(); /* all partial maxima written */
    v = lane < nw ? red[lane] : -INFINITY;
    return warp_max(v);
}

static inline bool is_aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* blocks for n items at `per_block` items per block, capped for grid-stride loops */
static inline unsigned grid_for(size_t n, size_t per_block) {
    size_t g = (n + per_block - 1) / per_block;
    if (g > 65535u * 8u) g = 65535u * 8u;
    return (unsigned)(g ? g : 1);
}

#endif /* ZI_COMMON_CUH */
