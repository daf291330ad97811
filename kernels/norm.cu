/*
 * norm.cu - RMSNorm (alone, times a row scale, or into a gated residual add: the DiT block's fused
 * input and output), LayerNorm (one warp per row, fp32 statistics) and GroupNorm (+ SiLU) for the
 * VAE, whose groups hold millions of elements: there the statistics are two passes of partial sums
 * over many blocks per group, accumulated in double, then a third pass writes.
 */
#include "common.cuh"

#define ROWS_PER_BLOCK 8 /* one warp per row, 8 warps per block */

/* sum over the row of g(x) for one warp; VEC: 8 elements per lane step */
template <bool VEC, class G>
static __device__ float row_reduce(const bf16 *x, int D, G g) {
    int lane = threadIdx.x % 32;
    float acc = 0.0f;
    if (VEC) {
        for (int d = lane * 8; d < D; d += 256) {
            float v[8];
            ld8(v, x + d);
#pragma unroll
            for (int j = 0; j < 8; j++) acc += g(v[j]);
        }
    } else {
        for (int d = lane; d < D; d += 32) acc += g(b2f(x[d]));
    }
    return warp_sum(acc);
}

/* y[d] = (x[d] - mean) * r * (w ? w[d] : 1) * (sc ? sc[d] : 1) */
template <bool VEC>
static __device__ void row_write(bf16 *y, const bf16 *x, const bf16 *w, const bf16 *sc, int D, float mean, float r) {
    int lane = threadIdx.x % 32;
    if (VEC) {
        for (int d = lane * 8; d < D; d += 256) {
            float v[8], s[8] = {1, 1, 1, 1, 1, 1, 1, 1}, t[8] = {1, 1, 1, 1, 1, 1, 1, 1};
            ld8(v, x + d);
            if (w) ld8(s, w + d);
            if (sc) ld8(t, sc + d);
#pragma unroll
            for (int j = 0; j < 8; j++) v[j] = (v[j] - mean) * r * s[j] * t[j];
            st8(y + d, v);
        }
    } else {
        for (int d = lane; d < D; d += 32)
            y[d] = f2b((b2f(x[d]) - mean) * r * (w ? b2f(w[d]) : 1.0f) * (sc ? b2f(sc[d]) : 1.0f));
    }
}

/* x[d] += (g ? g[d] : 1) * y[d] * r * w[d]: the gated residual add of a normalised branch output */
template <bool VEC>
static __device__ void row_add_gated(bf16 *x, const bf16 *y, const bf16 *w, const bf16 *g, int D, float r) {
    int lane = threadIdx.x % 32;
    if (VEC) {
        for (int d = lane * 8; d < D; d += 256) {
            float xv[8], yv[8], s[8] = {1, 1, 1, 1, 1, 1, 1, 1}, t[8] = {1, 1, 1, 1, 1, 1, 1, 1};
            ld8(xv, x + d);
            ld8(yv, y + d);
            if (w) ld8(s, w + d);
            if (g) ld8(t, g + d);
#pragma unroll
            for (int j = 0; j < 8; j++) xv[j] += t[j] * (yv[j] * r * s[j]);
            st8(x + d, xv);
        }
    } else {
        for (int d = lane; d < D; d += 32)
            x[d] = f2b(b2f(x[d]) + (g ? b2f(g[d]) : 1.0f) * (b2f(y[d]) * r * (w ? b2f(w[d]) : 1.0f)));
    }
}

struct Square { __device__ float operator()(float v) const { return v * v; } };
struct Ident  { __device__ float operator()(float v) const { return v; } };
struct SqDev  { float m; __device__ float operator()(float v) const { return (v - m) * (v - m); } };

/* out[m,:] = in[m,:] * rsqrt(mean(in[m,:]^2) + eps) * w (* sc) */
template <bool VEC>
__global__ void rmsnorm_kernel(bf16 *out, const bf16 *in, const bf16 *w, const bf16 *sc, int M, int D, float eps) {
    int m = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    if (m >= M) return;
    const bf16 *x = in + (size_t)m * D;
    float ss = row_reduce<VEC>(x, D, Square{});
    row_write<VEC>(out + (size_t)m * D, x, w, sc, D, 0.0f, rsqrtf(ss / D + eps));
}

/* x[m,:] += g * rmsnorm(y[m,:]) * w: one read of y and x, one write of x */
template <bool VEC>
__global__ void rmsnorm_add_gated_kernel(bf16 *x, const bf16 *y, const bf16 *w, const bf16 *g, int M, int D, float eps) {
    int m = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    if (m >= M) return;
    const bf16 *yr = y + (size_t)m * D;
    float ss = row_reduce<VEC>(yr, D, Square{});
    row_add_gated<VEC>(x + (size_t)m * D, yr, w, g, D, rsqrtf(ss / D + eps));
}

/* x[m,:] += g * rmsnorm(y[m,:]) * w, then h[m,:] = rmsnorm(x[m,:]) * wn * s: the same warp re-reads the
   row of x it has just stored (its own writes, so visible to it without a fence; from L1/L2) */
template <bool VEC>
__global__ void rmsnorm_add_gated_scale_kernel(bf16 *x, bf16 *h, const bf16 *y, const bf16 *w, const bf16 *g,
                                               const bf16 *wn, const bf16 *s, int M, int D, float eps) {
    int m = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    if (m >= M) return;
    const bf16 *yr = y + (size_t)m * D;
    bf16 *xr = x + (size_t)m * D;
    float ss = row_reduce<VEC>(yr, D, Square{});
    row_add_gated<VEC>(xr, yr, w, g, D, rsqrtf(ss / D + eps));
    __syncwarp(); /* the non-VEC path reads elements other lanes of this warp wrote */
    float sx = row_reduce<VEC>(xr, D, Square{});
    row_write<VEC>(h + (size_t)m * D, xr, wn, s, D, 0.0f, rsqrtf(sx / D + eps));
}

/* The same op with the row held in registers: one block of ROWREG_THREADS per row, each thread
   keeping up to ROWREG_CHUNKS 8-element chunks of y and of the updated x, so y and x are read once
   and x and h written once (D % 8 == 0, D <= 8 * ROWREG_THREADS * ROWREG_CHUNKS; the DiT's 3840). */
#define ROWREG_THREADS 128
#define ROWREG_CHUNKS 4
__global__ void __launch_bounds__(ROWREG_THREADS) rmsnorm_add_gated_scale_reg_kernel(
    bf16 *x, bf16 *h, const bf16 *y, const bf16 *w, const bf16 *g, const bf16 *wn, const bf16 *s, int D, float eps) {
    __shared__ float red[32];
    size_t row = (size_t)blockIdx.x * D;
    int nch = D / 8;
    float yv[ROWREG_CHUNKS][8], xv[ROWREG_CHUNKS][8];
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < ROWREG_CHUNKS; i++) {
        int c = threadIdx.x + i * ROWREG_THREADS;
        if (c < nch) {
            ld8(yv[i], y + row + 8 * c);
#pragma unroll
            for (int j = 0; j < 8; j++) ss += yv[i][j] * yv[i][j];
        }
    }
    float r = rsqrtf(block_sum(ss, red) / D + eps);
    float sx = 0.0f;
#pragma unroll
    for (int i = 0; i < ROWREG_CHUNKS; i++) {
        int c = threadIdx.x + i * ROWREG_THREADS;
        if (c < nch) {
            float wv[8] = {1, 1, 1, 1, 1, 1, 1, 1}, gv[8] = {1, 1, 1, 1, 1, 1, 1, 1};
            ld8(xv[i], x + row + 8 * c);
            if (w) ld8(wv, w + 8 * c);
            if (g) ld8(gv, g + 8 * c);
#pragma unroll
            for (int j = 0; j < 8; j++) xv[i][j] = b2f(f2b(xv[i][j] + gv[j] * (yv[i][j] * r * wv[j]))); /* as stored */
            st8(x + row + 8 * c, xv[i]);
#pragma unroll
            for (int j = 0; j < 8; j++) sx += xv[i][j] * xv[i][j];
        }
    }
    float r2 = rsqrtf(block_sum(sx, red) / D + eps);
#pragma unroll
    for (int i = 0; i < ROWREG_CHUNKS; i++) {
        int c = threadIdx.x + i * ROWREG_THREADS;
        if (c < nch) {
            float wv[8] = {1, 1, 1, 1, 1, 1, 1, 1}, sv[8] = {1, 1, 1, 1, 1, 1, 1, 1}, o[8];
            if (wn) ld8(wv, wn + 8 * c);
            if (s) ld8(sv, s + 8 * c);
#pragma unroll
            for (int j = 0; j < 8; j++) o[j] = xv[i][j] * r2 * wv[j] * sv[j];
            st8(h + row + 8 * c, o);
        }
    }
}

/* out[m,:] = (in[m,:] - mean) * rsqrt(var + eps), var from a second pass over (x - mean)^2 */
template <bool VEC>
__global__ void layernorm_kernel(bf16 *out, const bf16 *in, int M, int D, float eps) {
    int m = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    if (m >= M) return;
    const bf16 *x = in + (size_t)m * D;
    float mean = row_reduce<VEC>(x, D, Ident{}) / D;
    float var = row_reduce<VEC>(x, D, SqDev{mean}) / D;
    row_write<VEC>(out + (size_t)m * D, x, NULL, NULL, D, mean, rsqrtf(var + eps));
}

static bool row_vec_ok(const void *out, const void *in, const void *w, int D) {
    return D % 8 == 0 && is_aligned16(out) && is_aligned16(in) && (!w || is_aligned16(w));
}

extern "C" cudaError_t zi_rmsnorm_scale_cuda(void *out, const void *in, const void *w, const void *s, int M, int D,
                                             float eps, cudaStream_t stream) {
    if (M == 0 || D == 0) return cudaSuccess;
    unsigned grid = (unsigned)((M + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);
    if (row_vec_ok(out, in, w, D) && (!s || is_aligned16(s)))
        rmsnorm_kernel<true><<<grid, 32 * ROWS_PER_BLOCK, 0, stream>>>((bf16 *)out, (const bf16 *)in, (const bf16 *)w,
                                                                       (const bf16 *)s, M, D, eps);
    else
        rmsnorm_kernel<false><<<grid, 32 * ROWS_PER_BLOCK, 0, stream>>>((bf16 *)out, (const bf16 *)in, (const bf16 *)w,
                                                                        (const bf16 *)s, M, D, eps);
    return cudaGetLastError();
}

extern "C" cudaError_t zi_rmsnorm_cuda(void *out, const void *in, const void *w, int M, int D, float eps,
                                       cudaStream_t stream) {
    return zi_rmsnorm_scale_cuda(out, in, w, NULL, M, D, eps, stream);
}

extern "C" cudaError_t zi_rmsnorm_add_gated_cuda(void *x, const void *y, const void *w, const void *g, int M, int D,
                                                 float eps, cudaStream_t stream) {
    if (M == 0 || D == 0) return cudaSuccess;
    unsigned grid = (unsigned)((M + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);
    if (row_vec_ok(x, y, w, D) && (!g || is_aligned16(g)))
        rmsnorm_add_gated_kernel<true><<<grid, 32 * ROWS_PER_BLOCK, 0, stream>>>((bf16 *)x, (const bf16 *)y,
                                                                                 (const bf16 *)w, (const bf16 *)g, M, D, eps);
    else
        rmsnorm_add_gated_kernel<false><<<grid, 32 * ROWS_PER_BLOCK, 0, stream>>>((bf16 *)x, (const bf16 *)y,
                                                                                  (const bf16 *)w, (const bf16 *)g, M, D, eps);
    return cudaGetLastError();
}

extern "C" cudaError_t zi_rmsnorm_add_gated_scale_cuda(void *x, void *h, const void *y, const void *w, const void *g,
                                                       const void *wn, const void *s, int M, int D, float eps,
                                                       cudaStream_t stream) {
    if (M == 0 || D == 0) return cudaSuccess;
    unsigned grid = (unsigned)((M + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);
    bool vec = row_vec_ok(x, y, w, D) && row_vec_ok(h, wn, g, D) && (!s || is_aligned16(s));
    if (vec && D <= 8 * ROWREG_THREADS * ROWREG_CHUNKS && M <= 0x7fffffff)
        rmsnorm_add_gated_scale_reg_kernel<<<(unsigned)M, ROWREG_THREADS, 0, stream>>>(
            (bf16 *)x, (bf16 *)h, (const bf16 *)y, (const bf16 *)w, (const bf16 *)g, (const bf16 *)wn, (const bf16 *)s,
            D, eps);
    else if (vec)
        rmsnorm_add_gated_scale_kernel<true><<<grid, 32 * ROWS_PER_BLOCK, 0, stream>>>(
            (bf16 *)x, (bf16 *)h, (const bf16 *)y, (const bf16 *)w, (const bf16 *)g, (const bf16 *)wn, (const bf16 *)s,
            M, D, eps);
    else
        rmsnorm_add_gated_scale_kernel<false><<<grid, 32 * ROWS_PER_BLOCK, 0, stream>>>(
            (bf16 *)x, (bf16 *)h, (const bf16 *)y, (const bf16 *)w, (const bf16 *)g, (const bf16 *)wn, (const bf16 *)s,
            M, D, eps);
    return cudaGetLastError();
}

extern "C" cudaError_t zi_layernorm_cuda(void *out, const void *in, int M, int D, float eps, cudaStream_t stream) {
    if (M == 0 || D == 0) return cudaSuccess;
    unsigned grid = (unsigned)((M + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);
    if (row_vec_ok(out, in, NULL, D))
        layernorm_kernel<true><<<grid, 32 * ROWS_PER_BLOCK, 0, stream>>>((bf16 *)out, (const bf16 *)in, M, D, eps);
    else
        layernorm_kernel<false><<<grid, 32 * ROWS_PER_BLOCK, 0, stream>>>((bf16 *)out, (const bf16 *)in, M, D, eps);
    return cudaGetLastError();
}

// ----------------------------------------------------------------------------------------------
// groupnorm. Group bg = (b, g) is the contiguous range in[bg * n .. (bg+1) * n), n = (C/G)*HW.
// grid (chunks, B*G); block x sums chunk x of its group. stats[2*bg] = sum x, stats[2*bg+1] =
// sum (x - mean)^2, both double (zeroed by the caller before pass 1).

#define GN_THREADS 256
#define GN_CHUNK (GN_THREADS * 16)

/* PASS 0: stats[2bg] += sum x ; PASS 1: stats[2bg+1] += sum (x - mean)^2 */
template <int PASS>
__global__ void groupnorm_stats_kernel(const bf16 *in, size_t n, double *stats) {
    __shared__ float red[32];
    size_t bg = blockIdx.y, e0 = (size_t)blockIdx.x * GN_CHUNK;
    const bf16 *x = in + bg * n;
    float mean = PASS == 1 ? (float)(stats[2 * bg] / (double)n) : 0.0f;
    float acc = 0.0f;
    for (size_t e = e0 + threadIdx.x; e < e0 + GN_CHUNK && e < n; e += GN_THREADS) {
        float v = b2f(x[e]) - mean;
        acc += PASS == 0 ? v : v * v;
    }
    acc = block_sum(acc, red);
    if (threadIdx.x == 0) atomicAdd(&stats[2 * bg + PASS], (double)acc);
}

/* out = (x - mean) * rstd * gamma[c] + beta[c], then SiLU if silu */
__global__ void groupnorm_apply_kernel(bf16 *out, const bf16 *in, const bf16 *gamma, const bf16 *beta, int C, int G,
                                       size_t HW, float eps, int silu, const double *stats) {
    size_t bg = blockIdx.y, n = (size_t)(C / G) * HW;
    unsigned e0 = blockIdx.x * GN_CHUNK, hw = (unsigned)HW; /* n < 2^32: checked by the launcher */
    int g = (int)(bg % G);
    float mean = (float)(stats[2 * bg] / (double)n);
    float rstd = rsqrtf((float)(stats[2 * bg + 1] / (double)n) + eps);
    const bf16 *x = in + bg * n;
    bf16 *y = out + bg * n;
    for (unsigned e = e0 + threadIdx.x; e < e0 + GN_CHUNK && e < n; e += GN_THREADS) {
        int c = g * (C / G) + (int)(e / hw);
        float t = (b2f(x[e]) - mean) * rstd;
        if (gamma) t *= b2f(gamma[c]);
        if (beta) t += b2f(beta[c]);
        if (silu) t = silu_gn(t);
        y[e] = f2b(t);
    }
}

extern "C" cudaError_t zi_groupnorm_cuda(void *out, const void *in, const void *gamma, const void *beta, int B, int C,
                                         size_t HW, int G, float eps, int silu, double *stats, cudaStream_t stream) {
    if (B == 0 || C == 0 || HW == 0) return cudaSuccess;
    if (G <= 0 || C % G || (size_t)B * G > 65535) return cudaErrorInvalidValue;
    size_t n = (size_t)(C / G) * HW;
    if (n + GN_CHUNK >= ((size_t)1 << 32)) return cudaErrorInvalidValue; /* 32-bit element index per group */
    dim3 grid((unsigned)((n + GN_CHUNK - 1) / GN_CHUNK), (unsigned)(B * G));
    cudaError_t e = cudaMemsetAsync(stats, 0, sizeof(double) * 2 * B * G, stream);
    if (e != cudaSuccess) return e;
    groupnorm_stats_kernel<0><<<grid, GN_THREADS, 0, stream>>>((const bf16 *)in, n, stats);
    groupnorm_stats_kernel<1><<<grid, GN_THREADS, 0, stream>>>((const bf16 *)in, n, stats);
    groupnorm_apply_kernel<<<grid, GN_THREADS, 0, stream>>>((bf16 *)out, (const bf16 *)in, (const bf16 *)gamma,
                                                            (const bf16 *)beta, C, G, HW, eps, silu, stats);
    return cudaGetLastError();
}
