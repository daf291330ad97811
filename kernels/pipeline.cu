/*
 * pipeline.cu - the device side of ZImagePipeline's loop (csrc/pipeline.c): f32 maps over the
 * latents (CFG combination, scaling, the Euler step, the VAE input cast), the L2 reduction of
 * cfg_normalization, and VaeImageProcessor's postprocess from the planar bf16 image to
 * interleaved uint8 or f32. Every f32 operation is one IEEE rounding, written with the __f*_rn
 * intrinsics so nvcc cannot fuse a multiply and an add: the results equal the CPU backend's bit
 * for bit. Grid-stride loops, one element per thread step (these buffers are a few MB at most).
 */
#include "common.cuh"

// ----------------------------------------------------------------------------------------------
// f32 maps: out[i] = f(a[i], b[i])

struct OpCfg   { float g; __device__ float operator()(float p, float n) const { return __fadd_rn(p, __fmul_rn(g, __fsub_rn(p, n))); } };
struct OpScale { float s; __device__ float operator()(float a, float) const { return __fmul_rn(a, s); } };
struct OpEuler { float dt; __device__ float operator()(float x, float p) const { return __fadd_rn(x, __fmul_rn(dt, -p)); } };

/* b may be NULL for unary maps (reads as 0) */
template <class F>
__global__ void map_f32_kernel(float *out, const float *a, const float *b, size_t n, F f) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = f(a[i], b ? b[i] : 0.0f);
}

template <class F>
static cudaError_t launch_map_f32(float *out, const float *a, const float *b, size_t n, F f, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    map_f32_kernel<<<grid_for(n, 256), 256, 0, stream>>>(out, a, b, n, f);
    return cudaGetLastError();
}

extern "C" cudaError_t zi_cfg_combine_cuda(float *pred, const float *pos, const float *neg, float g, size_t n,
                                           cudaStream_t stream) {
    return launch_map_f32(pred, pos, neg, n, OpCfg{g}, stream);
}

extern "C" cudaError_t zi_scale_f32_cuda(float *out, const float *in, float s, size_t n, cudaStream_t stream) {
    return launch_map_f32(out, in, NULL, n, OpScale{s}, stream);
}

extern "C" cudaError_t zi_euler_step_cuda(float *x, const float *pred, float dt, size_t n, cudaStream_t stream) {
    return launch_map_f32(x, x, pred, n, OpEuler{dt}, stream);
}

/* out[i] = bf16(lat[i] / sf + shift): IEEE division, then the add, then one rounding to bf16 */
__global__ void latents_to_vae_kernel(bf16 *out, const float *lat, float sf, float shift, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = f2b(__fadd_rn(__fdiv_rn(lat[i], sf), shift));
}

extern "C" cudaError_t zi_latents_to_vae_cuda(void *out, const float *lat, float sf, float shift, size_t n,
                                              cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    latents_to_vae_kernel<<<grid_for(n, 256), 256, 0, stream>>>((bf16 *)out, lat, sf, shift, n);
    return cudaGetLastError();
}

// ----------------------------------------------------------------------------------------------
// sum of squares in double, deterministic: a grid fixed by n (at most ZI_SUMSQ_BLOCKS blocks)
// writes one partial per block, then one block adds the partials in a fixed order.

static __device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* sum over a block of 256 threads; the result is valid in thread 0 */
static __device__ __forceinline__ double block_sum_d(double v) {
    __shared__ double red[8];
    v = warp_sum_d(v);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads(); /* the 8 warp sums are written */
    v = threadIdx.x < 8 ? red[threadIdx.x] : 0.0;
    return threadIdx.x < 32 ? warp_sum_d(v) : 0.0;
}

/* partials[blockIdx.x] = sum over the block's grid-stride slice of x[i]^2 */
__global__ void sumsq_partial_kernel(double *partials, const float *x, size_t n) {
    double s = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        s += (double)x[i] * (double)x[i];
    s = block_sum_d(s);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

/* *out = sum of partials[0 .. np) */
__global__ void sumsq_final_kernel(double *out, const double *partials, int np) {
    double s = 0.0;
    for (int i = threadIdx.x; i < np; i += blockDim.x) s += partials[i];
    s = block_sum_d(s);
    if (threadIdx.x == 0) *out = s;
}

extern "C" cudaError_t zi_sumsq_f32_cuda(double *out, double *partials, const float *x, size_t n, cudaStream_t stream) {
    unsigned grid = grid_for(n, 256);
    if (grid > ZI_SUMSQ_BLOCKS) grid = ZI_SUMSQ_BLOCKS;
    sumsq_partial_kernel<<<grid, 256, 0, stream>>>(partials, x, n);
    sumsq_final_kernel<<<1, 256, 0, stream>>>(out, partials, (int)grid);
    return cudaGetLastError();
}

// ----------------------------------------------------------------------------------------------
// image output: one thread per output element of out[B,H,W,C]; it reads img[b,c,y,x]

/* the planar source index of interleaved output element i */
static __device__ __forceinline__ size_t hwc_source(size_t i, int C, int H, int W) {
    int c = (int)(i % C);
    size_t p = i / C;                       /* pixel (b, y, x) */
    int x = (int)(p % W);
    size_t by = p / W;
    int y = (int)(by % H);
    size_t b = by / H;
    return ((b * C + c) * H + y) * (size_t)W + x;
}

static __device__ __forceinline__ float clamp01(float v) { return v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v; } /* NaN stays */

__global__ void image_to_uint8_kernel(uint8_t *out, const bf16 *img, int C, int H, int W, size_t n, int bf16_rule) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = b2f(img[hwc_source(i, C, H, W)]);
        v = __fadd_rn(__fmul_rn(v, 0.5f), 0.5f);   /* x * 0.5 + 0.5, two roundings (x * 0.5 is exact) */
        if (bf16_rule) v = b2f(f2b(v));             /* diffusers: the sum is a bf16 tensor     */
        float s = rintf(__fmul_rn(clamp01(v), 255.0f)); /* np.round: half to even              */
        out[i] = s >= 0.0f && s <= 255.0f ? (uint8_t)s : 0;
    }
}

__global__ void image_to_float_hwc_kernel(float *out, const bf16 *img, int C, int H, int W, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = clamp01(__fadd_rn(__fmul_rn(b2f(img[hwc_source(i, C, H, W)]), 0.5f), 0.5f));
}

extern "C" cudaError_t zi_image_to_uint8_cuda(uint8_t *out, const void *img, int B, int C, int H, int W, int bf16_rule,
                                              cudaStream_t stream) {
    size_t n = (size_t)B * C * H * W;
    if (n == 0) return cudaSuccess;
    image_to_uint8_kernel<<<grid_for(n, 256), 256, 0, stream>>>(out, (const bf16 *)img, C, H, W, n, bf16_rule);
    return cudaGetLastError();
}

extern "C" cudaError_t zi_image_to_float_hwc_cuda(float *out, const void *img, int B, int C, int H, int W,
                                                  cudaStream_t stream) {
    size_t n = (size_t)B * C * H * W;
    if (n == 0) return cudaSuccess;
    image_to_float_hwc_kernel<<<grid_for(n, 256), 256, 0, stream>>>(out, (const bf16 *)img, C, H, W, n);
    return cudaGetLastError();
}
