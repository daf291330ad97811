/*
 * elementwise.cu - the memory-bound ops: unary/binary maps, SwiGLU of a merged gate/up row, the DiT's adaLN
 * activations, row-broadcast products and bias adds, fills, transpose, patchify/unpatchify, nearest upsample, the
 * tiled VAE's seam blend and im2col for conv2d. bf16 in and out, fp32 arithmetic. Maps take 8
 * elements (16 bytes) per thread step when every pointer is 16-byte aligned, else one element;
 * all use grid-stride loops.
 */
#include "common.cuh"

// ----------------------------------------------------------------------------------------------
// maps: out[i] = f(a[i], b[i])

struct OpScale    { float s; __device__ float operator()(float a, float) const { return a * s; } };
struct OpOnePlus  { __device__ float operator()(float a, float) const { return 1.0f + a; } };
struct OpTanh     { __device__ float operator()(float a, float) const { return tanhf(a); } };
struct OpSilu     { __device__ float operator()(float a, float) const { return a / (1.0f + expf(-a)); } };
struct OpAdd      { __device__ float operator()(float a, float b) const { return a + b; } };
struct OpSwiglu   { __device__ float operator()(float a, float b) const { return silu_mul(a, b); } };

/* b may be NULL for unary ops; VEC: 8 elements per step (n8 = n / 8 steps), then the tail */
template <bool VEC, class F>
__global__ void map_kernel(bf16 *out, const bf16 *a, const bf16 *b, size_t n, F f) {
    size_t stride = (size_t)gridDim.x * blockDim.x, t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    size_t start = 0;
    if (VEC) {
        size_t n8 = n / 8;
        for (size_t g = t; g < n8; g += stride) {
            float x[8], y[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            ld8(x, a + 8 * g);
            if (b) ld8(y, b + 8 * g);
#pragma unroll
            for (int j = 0; j < 8; j++) x[j] = f(x[j], y[j]);
            st8(out + 8 * g, x);
        }
        start = n8 * 8;
    }
    for (size_t i = start + t; i < n; i += stride) out[i] = f2b(f(b2f(a[i]), b ? b2f(b[i]) : 0.0f));
}

template <class F>
static cudaError_t launch_map(void *out, const void *a, const void *b, size_t n, F f, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    bool vec = is_aligned16(out) && is_aligned16(a) && (!b || is_aligned16(b));
    if (vec) map_kernel<true><<<grid_for(n / 8 + 1, 256), 256, 0, stream>>>((bf16 *)out, (const bf16 *)a, (const bf16 *)b, n, f);
    else map_kernel<false><<<grid_for(n, 256), 256, 0, stream>>>((bf16 *)out, (const bf16 *)a, (const bf16 *)b, n, f);
    return cudaGetLastError();
}

extern "C" cudaError_t zi_unary_cuda(void *out, const void *in, int op, float s, size_t n, cudaStream_t stream) {
    switch (op) {
    case ZI_UNARY_SCALE: return launch_map(out, in, NULL, n, OpScale{s}, stream);
    case ZI_UNARY_ONE_PLUS: return launch_map(out, in, NULL, n, OpOnePlus{}, stream);
    case ZI_UNARY_SILU: return launch_map(out, in, NULL, n, OpSilu{}, stream);
    }
    return cudaErrorInvalidValue;
}

extern "C" cudaError_t zi_binary_cuda(void *out, const void *a, const void *b, int op, size_t n, cudaStream_t stream) {
    switch (op) {
    case ZI_BINARY_ADD: return launch_map(out, a, b, n, OpAdd{}, stream);
    case ZI_BINARY_SWIGLU: return launch_map(out, a, b, n, OpSwiglu{}, stream);
    }
    return cudaErrorInvalidValue;
}

/* adaLN activations over mod[R, 4D] viewed as 4R parts of D: even parts 1 + x (one_plus), odd parts
   tanh(x) */
__global__ void adaln_gates_kernel(bf16 *out, const bf16 *mod, size_t n, int D) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float x = b2f(mod[i]);
        out[i] = f2b((i / (size_t)D) % 2 ? OpTanh{}(x, 0.0f) : OpOnePlus{}(x, 0.0f));
    }
}

extern "C" cudaError_t zi_adaln_gates_cuda(void *out, const void *mod, int R, int D, cudaStream_t stream) {
    size_t n = (size_t)R * 4 * D;
    if (n == 0) return cudaSuccess;
    adaln_gates_kernel<<<grid_for(n, 256), 256, 0, stream>>>((bf16 *)out, (const bf16 *)mod, n, D);
    return cudaGetLastError();
}

/* out[m, f] = silu(gu[m, f]) * gu[m, F + f]: rows over blockIdx.y (grid-stride), columns over x;
   VEC: 8 columns per thread step */
template <bool VEC>
__global__ void swiglu_pair_kernel(bf16 *out, const bf16 *gu, int M, int F) {
    OpSwiglu f;
    int cols = VEC ? F / 8 : F;
    for (int m = blockIdx.y; m < M; m += gridDim.y) {
        const bf16 *g = gu + (size_t)m * 2 * F, *u = g + F;
        bf16 *o = out + (size_t)m * F;
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x) {
            if (VEC) {
                float x[8], y[8];
                ld8(x, g + 8 * c);
                ld8(y, u + 8 * c);
#pragma unroll
                for (int j = 0; j < 8; j++) x[j] = f(x[j], y[j]);
                st8(o + 8 * c, x);
            } else {
                o[c] = f2b(f(b2f(g[c]), b2f(u[c])));
            }
        }
    }
}

extern "C" cudaError_t zi_swiglu_pair_cuda(void *out, const void *gu, int M, int F, cudaStream_t stream) {
    if (M <= 0 || F <= 0) return cudaSuccess;
    bool vec = F % 8 == 0 && is_aligned16(out) && is_aligned16(gu);
    int cols = vec ? F / 8 : F;
    dim3 grid((unsigned)((cols + 255) / 256), (unsigned)(M < 65535 ? M : 65535));
    if (vec) swiglu_pair_kernel<true><<<grid, 256, 0, stream>>>((bf16 *)out, (const bf16 *)gu, M, F);
    else swiglu_pair_kernel<false><<<grid, 256, 0, stream>>>((bf16 *)out, (const bf16 *)gu, M, F);
    return cudaGetLastError();
}

// ----------------------------------------------------------------------------------------------
// row-broadcast ops over [M,D]: out[m,d] = f(a[m,d], b[m,d], s[d])

struct RowMul   { __device__ float operator()(float a, float, float s) const { return a * s; } };       /* mul_rows  */
struct RowBias  { __device__ float operator()(float x, float, float s) const { return x + s; } };        /* add_bias  */

/* s NULL reads as 1, b NULL as 0; VEC needs D % 8 == 0 and aligned pointers.
   grid.y walks rows, grid.x x threads walk the row (VEC: 8 elements per thread step): no divisions */
template <bool VEC, class F>
__global__ void rowop_kernel(bf16 *out, const bf16 *a, const bf16 *b, const bf16 *s, int M, int D, F f) {
    constexpr int V = VEC ? 8 : 1;
    int step = gridDim.x * blockDim.x * V;
    for (int m = blockIdx.y; m < M; m += gridDim.y) {
        size_t row = (size_t)m * D;
        for (int d = (blockIdx.x * blockDim.x + threadIdx.x) * V; d < D; d += step) {
            if (VEC) {
                float x[8], y[8] = {0, 0, 0, 0, 0, 0, 0, 0}, w[8] = {1, 1, 1, 1, 1, 1, 1, 1};
                ld8(x, a + row + d);
                if (b) ld8(y, b + row + d);
                if (s) ld8(w, s + d);
#pragma unroll
                for (int j = 0; j < 8; j++) x[j] = f(x[j], y[j], w[j]);
                st8(out + row + d, x);
            } else {
                out[row + d] = f2b(f(b2f(a[row + d]), b ? b2f(b[row + d]) : 0.0f, s ? b2f(s[d]) : 1.0f));
            }
        }
    }
}

template <class F>
static cudaError_t launch_rowop(void *out, const void *a, const void *b, const void *s, int M, int D, F f,
                                cudaStream_t stream) {
    if (M <= 0 || D <= 0) return cudaSuccess;
    bool vec = D % 8 == 0 && is_aligned16(out) && is_aligned16(a) && (!b || is_aligned16(b)) && (!s || is_aligned16(s));
    int per_row = vec ? D / 8 : D;
    dim3 grid((unsigned)((per_row + 255) / 256), (unsigned)(M < 65535 ? M : 65535));
    if (vec) rowop_kernel<true><<<grid, 256, 0, stream>>>((bf16 *)out, (const bf16 *)a, (const bf16 *)b, (const bf16 *)s, M, D, f);
    else rowop_kernel<false><<<grid, 256, 0, stream>>>((bf16 *)out, (const bf16 *)a, (const bf16 *)b, (const bf16 *)s, M, D, f);
    return cudaGetLastError();
}

extern "C" cudaError_t zi_mul_rows_cuda(void *out, const void *in, const void *s, int M, int D, cudaStream_t stream) {
    return launch_rowop(out, in, NULL, s, M, D, RowMul{}, stream);
}

extern "C" cudaError_t zi_add_bias_cuda(void *x, const void *bias, int M, int N, cudaStream_t stream) {
    return launch_rowop(x, x, NULL, bias, M, N, RowBias{}, stream);
}

// ----------------------------------------------------------------------------------------------
// fills

/* out[m, d] = row[d] for every m */
__global__ void fill_rows_kernel(bf16 *out, const bf16 *row, int M, int D) {
    size_t n = (size_t)M * D, stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += stride) out[i] = row[i % D];
}

extern "C" cudaError_t zi_fill_rows_cuda(void *dst, const void *row, int M, int D, cudaStream_t stream) {
    size_t n = (size_t)M * D;
    if (n == 0) return cudaSuccess;
    fill_rows_kernel<<<grid_for(n, 256), 256, 0, stream>>>((bf16 *)dst, (const bf16 *)row, M, D);
    return cudaGetLastError();
}

/* out[plane, p] = bias[plane % C]; grid.y walks planes (b, c), grid.x the HW pixels */
__global__ void fill_planes_kernel(bf16 *out, const bf16 *bias, int C, size_t HW, size_t planes) {
    for (size_t pl = blockIdx.y; pl < planes; pl += gridDim.y) {
        bf16 v = bias[pl % C], *o = out + pl * HW;
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < HW; i += (size_t)gridDim.x * blockDim.x) o[i] = v;
    }
}

extern "C" cudaError_t zi_fill_planes_cuda(void *out, const void *bias, int B, int C, size_t HW, cudaStream_t stream) {
    size_t planes = (size_t)B * C;
    if (planes == 0 || HW == 0) return cudaSuccess;
    dim3 grid(grid_for(HW, 256) < 1024 ? grid_for(HW, 256) : 1024, (unsigned)(planes < 65535 ? planes : 65535));
    fill_planes_kernel<<<grid, 256, 0, stream>>>((bf16 *)out, (const bf16 *)bias, C, HW, planes);
    return cudaGetLastError();
}

// ----------------------------------------------------------------------------------------------
// transpose: 32x32 tiles through shared memory, so both the read and the write are coalesced

__global__ void transpose_kernel(bf16 *out, const bf16 *in, int M, int N) {
    __shared__ bf16 tile[32][33]; /* +1 column: no bank conflicts on the transposed read */
    int n0 = blockIdx.x * 32, m0 = blockIdx.y * 32;
    for (int r = threadIdx.y; r < 32; r += blockDim.y) {
        int m = m0 + r, n = n0 + threadIdx.x;
        if (m < M && n < N) tile[r][threadIdx.x] = in[(size_t)m * N + n];
    }
    __syncthreads(); /* the tile is complete before any thread reads its column */
    for (int r = threadIdx.y; r < 32; r += blockDim.y) {
        int n = n0 + r, m = m0 + threadIdx.x;
        if (m < M && n < N) out[(size_t)n * M + m] = tile[threadIdx.x][r];
    }
}

extern "C" cudaError_t zi_transpose_cuda(void *out, const void *in, int M, int N, cudaStream_t stream) {
    if (M == 0 || N == 0) return cudaSuccess;
    dim3 grid((N + 31) / 32, (M + 31) / 32), block(32, 8);
    if (grid.y > 65535) return cudaErrorInvalidValue;
    transpose_kernel<<<grid, block, 0, stream>>>((bf16 *)out, (const bf16 *)in, M, N);
    return cudaGetLastError();
}

// ----------------------------------------------------------------------------------------------
// patchify / unpatchify: one thread per token element
//   token n = (f*Ht + h)*Wt + w ; feature kk = ((pf*pH + ph)*pW + pw)*C + c
//   image element img[c, f*pF+pf, h*pH+ph, w*pW+pw]

__global__ void patch_kernel(bf16 *tok, bf16 *img, int C, int F, int H, int W, int pF, int pH, int pW, int to_tokens,
                             size_t n) {
    int Ht = H / pH, Wt = W / pW, P = pF * pH * pW * C;
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += stride) {
        size_t t = i / P;
        int kk = (int)(i % P);
        int c = kk % C, pw = (kk / C) % pW, ph = (kk / C / pW) % pH, pf = kk / C / pW / pH;
        int w = (int)(t % Wt), h = (int)((t / Wt) % Ht), f = (int)(t / Wt / Ht);
        size_t src = (((size_t)c * F + f * pF + pf) * H + h * pH + ph) * W + w * pW + pw;
        if (to_tokens) tok[i] = img[src];
        else img[src] = tok[i];
    }
}

extern "C" cudaError_t zi_patch_cuda(void *tok, void *img, int C, int F, int H, int W, int pF, int pH, int pW,
                                     int to_tokens, cudaStream_t stream) {
    size_t n = (size_t)(F / pF) * (H / pH) * (W / pW) * pF * pH * pW * C;
    if (n == 0) return cudaSuccess;
    patch_kernel<<<grid_for(n, 256), 256, 0, stream>>>((bf16 *)tok, (bf16 *)img, C, F, H, W, pF, pH, pW, to_tokens, n);
    return cudaGetLastError();
}

// ----------------------------------------------------------------------------------------------
// images

/* out[p, y, x] = in[p, y/2, x/2]; grid.y walks output rows (p, y), threads walk x: one division per row */
__global__ void upsample2x_kernel(bf16 *out, const bf16 *in, int H, int W, size_t rows) {
    for (size_t row = blockIdx.y; row < rows; row += gridDim.y) {
        size_t p = row / (2 * H);
        int y = (int)(row % (2 * H));
        const bf16 *src = in + (p * H + y / 2) * W;
        bf16 *dst = out + row * 2 * W;
        for (int x = blockIdx.x * blockDim.x + threadIdx.x; x < 2 * W; x += gridDim.x * blockDim.x) dst[x] = src[x / 2];
    }
}

extern "C" cudaError_t zi_upsample2x_cuda(void *out, const void *in, int B, int C, int H, int W, cudaStream_t stream) {
    size_t rows = (size_t)B * C * 2 * H;
    if (rows == 0 || W == 0) return cudaSuccess;
    dim3 grid((unsigned)((2 * W + 255) / 256), (unsigned)(rows < 65535 ? rows : 65535));
    upsample2x_kernel<<<grid, 256, 0, stream>>>((bf16 *)out, (const bf16 *)in, H, W, rows);
    return cudaGetLastError();
}

/* b[o, t, x] = a[o, t, x] * (1 - t/e) + b[o, t, x] * (t/e), one element per thread step (X is a tile width
   for row seams, 1 for column seams). The weights are diffusers' Python floats t/e and 1 - t/e rounded to f32. */
__global__ void blend_seam_kernel(bf16 *b, const bf16 *a, int e, int X, size_t b_ld, size_t a_ld, size_t n) {
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x) {
        size_t r = k / X, o = r / e;
        int x = (int)(k % X), t = (int)(r % e);
        float wb = (float)((double)t / e), wa = (float)(1.0 - (double)t / e);
        bf16 *bp = b + o * b_ld + (size_t)t * X + x;
        *bp = f2b(b2f(a[o * a_ld + (size_t)t * X + x]) * wa + b2f(*bp) * wb);
    }
}

extern "C" cudaError_t zi_blend_seam_cuda(void *b, const void *a, int O, int e, int X, size_t b_ld, size_t a_ld,
                                          cudaStream_t stream) {
    size_t n = (size_t)O * e * X;
    if (n == 0) return cudaSuccess;
    blend_seam_kernel<<<grid_for(n, 256), 256, 0, stream>>>((bf16 *)b, (const bf16 *)a, e, X, b_ld, a_ld, n);
    return cudaGetLastError();
}

/* col[r, j] with r = (ci*k + ky)*k + kx, j < np: in[ci, y+ky-pad, x+kx-pad] (0 outside) for output pixel
   p0+j = y*Wo + x. grid.y walks r (one (ci, ky, kx) per row), threads walk j: coalesced writes, 32-bit math. */
__global__ void im2col_kernel(bf16 *col, const bf16 *in, int H, int W, int Wo, int k, int pad, int p0, int np, int K) {
    for (int r = blockIdx.y; r < K; r += gridDim.y) {
        int kx = r % k, ky = (r / k) % k, ci = r / (k * k);
        const bf16 *plane = in + (size_t)ci * H * W;
        bf16 *dst = col + (size_t)r * np;
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < np; j += gridDim.x * blockDim.x) {
            int p = p0 + j, y = p / Wo + ky - pad, x = p % Wo + kx - pad;
            dst[j] = (y >= 0 && y < H && x >= 0 && x < W) ? plane[y * W + x] : __float2bfloat16_rn(0.0f);
        }
    }
}

extern "C" cudaError_t zi_im2col_cuda(void *col, const void *in, int Ci, int H, int W, int k, int pad, size_t p0, int np,
                                      cudaStream_t stream) {
    int Ho = H + 2 * pad - k + 1, Wo = W + 2 * pad - k + 1, K = Ci * k * k;
    if (np <= 0 || K <= 0) return cudaSuccess;
    if ((size_t)Ho * Wo > 0x7fffffffu || (size_t)H * W > 0x7fffffffu) return cudaErrorInvalidValue;
    dim3 grid((unsigned)((np + 255) / 256 < 64 ? (np + 255) / 256 : 64), (unsigned)(K < 65535 ? K : 65535));
    im2col_kernel<<<grid, 256, 0, stream>>>((bf16 *)col, (const bf16 *)in, H, W, Wo, k, pad, (int)p0, np, K);
    return cudaGetLastError();
}
