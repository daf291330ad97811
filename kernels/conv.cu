/*
 * conv.cu - stride-1 2-D convolution on the tensor cores as an implicit GEMM, and what feeds it.
 *
 *   out[B,Co,Ho,Wo] (NCHW) = sum over taps (ky,kx) and ci of x[b, y+ky-pad, x+kx-pad, ci] w[co,ci,ky,kx] + bias[co]
 *
 * is the GEMM out[P, Co] = A[P, K] W[K, Co] with P = B*Ho*Wo output pixels and K = k*k*Ci, k = tap-major
 * (tap*Ci + ci). A is never built: each tile row is one output pixel, and its BK columns for k-block
 * (tap, c0) are BK contiguous channels of one input pixel, so the input must be NHWC. The model keeps
 * NCHW, so the op first packs its input (one pass, conv_pack_input_kernel), optionally applying a
 * GroupNorm (+ SiLU) on the way (stats from groupnorm_partial_kernel / groupnorm_finalize_kernel), and
 * the weights to [Co][k*k][Ci] (conv_pack_weight_kernel). A nearest-2x upsample of the input is folded
 * into the addressing: the conv over the 2H x 2W image reads source pixel (y/2, x/2).
 *
 * conv_igemm_kernel<BM, BN, BK, WM, WN, STAGES>: block tile BM pixels x BN output channels, WM x WN
 * warps of (BM/WM) x (BN/WN), mma.sync m16n8k16 bf16 with fp32 accumulators (sm_80+), ldmatrix
 * fragments, a STAGES-deep cp.async pipeline of A and B tiles (16-byte copies, zero-fill at image
 * borders, past Ci and past Co), rows padded by 16 bytes so ldmatrix is free of bank conflicts.
 * Epilogue: + bias, round to bf16, transpose through shared memory, 16-byte NCHW stores, optionally
 * + a residual (rounded again, as a separate add would). Needs Ci % 8 == 0 and 16-byte aligned x and w
 * (the packed scratch); any Co, k, pad, H, W, B.
 */
#include "mma.cuh"

// ----------------------------------------------------------------------------------------------
// implicit-GEMM convolution

struct ConvArgs {
    bf16 *out;            /* [B, Co, Ho, Wo]                                     */
    const bf16 *x;        /* [B, Hs, Ws, Ci] NHWC                                */
    const bf16 *w;        /* [Co, k*k, Ci]                                       */
    const bf16 *bias;     /* [Co] or NULL                                        */
    const bf16 *res;      /* [B, Co, Ho, Wo] added after the rounding, or NULL   */
    int M;                /* B*Ho*Wo output pixels                               */
    int Ci, Co, k, pad, up;
    int H, W;             /* the conv's input size (2Hs x 2Ws when up)           */
    int Hs, Ws;           /* the stored input's size                             */
    int Ho, Wo;           /* Ho: rows computed by this launch (the band)          */
    int tiles_n;          /* ceil(Co / BN)                                       */
    int y0;               /* output row band: rows y0 .. y0+Ho of the full image  */
    int ys;               /* first conv-input row stored in x (band packing)      */
    size_t out_plane;     /* elements per output channel plane (Hfull * Wo)      */
    int out_vec;          /* Ho*Wo % 8 == 0 and out 16-byte aligned: 16-byte stores */
};

template <int BM, int BN, int BK, int WM, int WN, int STAGES>
struct ConvCfg {
    static constexpr int NT = WM * WN * 32;                /* threads                       */
    static constexpr int LDS = BK + 8;                     /* tile row stride (elements)    */
    static constexpr int WTM = BM / WM, WTN = BN / WN;     /* warp tile                     */
    static constexpr int MT = WTM / 16, NTL = WTN / 8;     /* m16 / n8 tiles per warp       */
    static constexpr int CPR = BK / 8;                     /* 16-byte chunks per tile row   */
    static constexpr int RSTEP = NT / CPR;                 /* rows one pass of threads loads */
    static constexpr int A_ROWS = BM / RSTEP, B_ROWS = BN / RSTEP; /* rows per thread       */
    static constexpr int STAGE = (BM + BN) * LDS;          /* elements per pipeline stage   */
    static constexpr int LDC = BM + 8;                     /* epilogue tile [BN][BM] stride */
    static constexpr size_t SMEM = 2 * (size_t)(STAGES * STAGE > BN * LDC ? STAGES * STAGE : BN * LDC);
    static_assert(BK % 16 == 0 && NT % CPR == 0 && BM % RSTEP == 0 && BN % RSTEP == 0, "tile shape");
    static_assert(WTM % 16 == 0 && WTN % 16 == 0, "warp tile: whole m16 tiles and pairs of n8 tiles");
};

template <int BM, int BN, int BK, int WM, int WN, int STAGES>
__global__ void __launch_bounds__(WM * WN * 32) conv_igemm_kernel(ConvArgs p) {
    using C = ConvCfg<BM, BN, BK, WM, WN, STAGES>;
    extern __shared__ __align__(16) unsigned char conv_smem[];
    bf16 *smem = reinterpret_cast<bf16 *>(conv_smem);
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, wm = warp / WN, wn = warp % WN;
    const int tile_n = blockIdx.x % p.tiles_n, tile_m = blockIdx.x / p.tiles_n; /* n fastest: A tile shared in L2 */
    const int m0 = tile_m * BM, n0 = tile_n * BN, q = tid % C::CPR, r0 = tid / C::CPR;
    const int HoWo = p.Ho * p.Wo, kk = p.k * p.k, cpt = (p.Ci + BK - 1) / BK, nk = kk * cpt;

    /* the output pixels of this thread's A rows: image offset (in source pixels) and y << 16 | x
       (y = 0x7fff: no pixel; H, W < 0x7ff0 is checked by the launcher, so every tap of it is outside) */
    int a_img[C::A_ROWS], a_yx[C::A_ROWS];
#pragma unroll
    for (int i = 0; i < C::A_ROWS; i++) {
        int m = m0 + r0 + i * C::RSTEP;
        int b = m / HoWo, pix = m - b * HoWo;
        a_img[i] = b * p.Hs * p.Ws;
        a_yx[i] = m < p.M ? (pix / p.Wo) << 16 | (pix % p.Wo) : 0x7fff << 16;
    }
    /* this thread's B rows are output channels n0 + r0 + i*RSTEP: one base pointer, rows RSTEP*k*k*Ci apart */
    const bf16 *b_base = p.w + (size_t)(n0 + r0) * kk * p.Ci;
    const size_t b_step = (size_t)C::RSTEP * kk * p.Ci;

    /* loader position: k-block (tap = ky*k + kx, channels c0 .. c0+BK) */
    int ld_tap = 0, ld_ky = 0, ld_kx = 0, ld_c0 = 0;
    auto load_stage = [&](int stage) {
        bf16 *As = smem + stage * C::STAGE, *Bs = As + BM * C::LDS;
        int c = ld_c0 + q * 8;
        bool c_ok = c < p.Ci;
#pragma unroll
        for (int i = 0; i < C::A_ROWS; i++) {
            int yi = (a_yx[i] >> 16) + p.y0 + ld_ky - p.pad, xi = (a_yx[i] & 0xffff) + ld_kx - p.pad;
            bool v = c_ok && (unsigned)yi < (unsigned)p.H && (unsigned)xi < (unsigned)p.W;
            const bf16 *src =
                v ? p.x + ((size_t)(a_img[i] + ((yi - p.ys) >> p.up) * p.Ws + (xi >> p.up)) * p.Ci + c) : p.x;
            cp_async16(As + (r0 + i * C::RSTEP) * C::LDS + q * 8, src, v);
        }
#pragma unroll
        for (int i = 0; i < C::B_ROWS; i++) {
            bool v = c_ok && n0 + r0 + i * C::RSTEP < p.Co;
            const bf16 *src = v ? b_base + i * b_step + (size_t)ld_tap * p.Ci + c : p.w;
            cp_async16(Bs + (r0 + i * C::RSTEP) * C::LDS + q * 8, src, v);
        }
        ld_c0 += BK;
        if (ld_c0 >= p.Ci) {
            ld_c0 = 0;
            ld_tap++;
            if (++ld_kx == p.k) ld_kx = 0, ld_ky++;
        }
    };

    float acc[C::MT][C::NTL][4];
#pragma unroll
    for (int i = 0; i < C::MT; i++)
#pragma unroll
        for (int j = 0; j < C::NTL; j++) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < nk) load_stage(s);
        cp_async_commit(); /* empty groups keep the wait_group count uniform */
    }
    for (int kb = 0; kb < nk; kb++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads(); /* stage kb has landed for every thread; every warp is done with stage kb-1 */
        if (kb + STAGES - 1 < nk) load_stage((kb + STAGES - 1) % STAGES); /* refills stage kb-1 */
        cp_async_commit();
        const bf16 *As = smem + (kb % STAGES) * C::STAGE, *Bs = As + BM * C::LDS;
#pragma unroll
        for (int ks = 0; ks < BK / 16; ks++) {
            uint32_t a[C::MT][4], b[C::NTL][2];
#pragma unroll
            for (int mt = 0; mt < C::MT; mt++)
                ldmatrix_x4(a[mt], As + (wm * C::WTM + mt * 16 + lane % 16) * C::LDS + ks * 16 + (lane / 16) * 8);
#pragma unroll
            for (int nt = 0; nt < C::NTL; nt += 2) {
                uint32_t r[4];
                ldmatrix_x4(r, Bs + (wn * C::WTN + nt * 8 + (lane / 16) * 8 + lane % 8) * C::LDS + ks * 16 +
                                   ((lane / 8) % 2) * 8);
                b[nt][0] = r[0], b[nt][1] = r[1], b[nt + 1][0] = r[2], b[nt + 1][1] = r[3];
            }
#pragma unroll
            for (int mt = 0; mt < C::MT; mt++)
#pragma unroll
                for (int nt = 0; nt < C::NTL; nt++) mma_bf16(acc[mt][nt], a[mt], b[nt][0], b[nt][1]);
        }
    }
    cp_async_wait<0>();
    __syncthreads(); /* all warps are done with the pipeline tiles before the epilogue reuses them */

    /* epilogue: Cs[n][m] = bf16(acc + bias[n]); accumulator e of (mt, nt) is row g (+8 for e >= 2), col 2t + (e & 1) */
    bf16 *Cs = smem;
    const int g = lane / 4, t4 = lane % 4;
#pragma unroll
    for (int nt = 0; nt < C::NTL; nt++) {
        int n = wn * C::WTN + nt * 8 + 2 * t4;
        float bias0 = 0.0f, bias1 = 0.0f;
        if (p.bias) {
            if (n0 + n < p.Co) bias0 = b2f(p.bias[n0 + n]);
            if (n0 + n + 1 < p.Co) bias1 = b2f(p.bias[n0 + n + 1]);
        }
#pragma unroll
        for (int mt = 0; mt < C::MT; mt++) {
            int m = wm * C::WTM + mt * 16 + g;
            Cs[n * C::LDC + m] = f2b(acc[mt][nt][0] + bias0);
            Cs[(n + 1) * C::LDC + m] = f2b(acc[mt][nt][1] + bias1);
            Cs[n * C::LDC + m + 8] = f2b(acc[mt][nt][2] + bias0);
            Cs[(n + 1) * C::LDC + m + 8] = f2b(acc[mt][nt][3] + bias1);
        }
    }
    __syncthreads(); /* the whole output tile is in shared memory before rows of it are stored */

    /* out[b, co, pix] for 8 pixels per step (+ res, rounded again: what a separate add op computes):
       one 16-byte access when they are in one image and aligned */
    for (int i = tid; i < BN * (BM / 8); i += C::NT) {
        int n = i / (BM / 8), mc = (i % (BM / 8)) * 8, co = n0 + n, m = m0 + mc;
        if (co >= p.Co || m >= p.M) continue;
        const bf16 *src = Cs + n * C::LDC + mc;
        if (p.out_vec) { /* M and HoWo are multiples of 8: the 8 pixels exist and share an image */
            int b = m / HoWo;
            size_t o = ((size_t)b * p.Co + co) * p.out_plane + (size_t)p.y0 * p.Wo + (m - b * HoWo);
            uint4 v = *reinterpret_cast<const uint4 *>(src);
            if (p.res) {
                float a[8], r[8];
                ld8(a, reinterpret_cast<const bf16 *>(&v));
                ld8(r, p.res + o);
#pragma unroll
                for (int j = 0; j < 8; j++) a[j] += r[j];
                st8(p.out + o, a);
            } else {
                *reinterpret_cast<uint4 *>(p.out + o) = v;
            }
        } else {
            for (int j = 0; j < 8 && m + j < p.M; j++) {
                int b = (m + j) / HoWo;
                size_t o = ((size_t)b * p.Co + co) * p.out_plane + (size_t)p.y0 * p.Wo + (m + j - b * HoWo);
                p.out[o] = p.res ? f2b(b2f(src[j]) + b2f(p.res[o])) : src[j];
            }
        }
    }
}

/* one tile configuration: its kernel, shared memory and grid */
template <int BM, int BN, int BK, int WM, int WN, int STAGES>
static cudaError_t launch_igemm(ConvArgs p, cudaStream_t stream) {
    using C = ConvCfg<BM, BN, BK, WM, WN, STAGES>;
    auto kern = conv_igemm_kernel<BM, BN, BK, WM, WN, STAGES>;
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)C::SMEM);
    if (e != cudaSuccess) return e;
    p.tiles_n = (p.Co + BN - 1) / BN;
    size_t blocks = (size_t)p.tiles_n * ((p.M + BM - 1) / BM);
    if (blocks > 0x7fffffffu) return cudaErrorInvalidValue;
    kern<<<(unsigned)blocks, C::NT, C::SMEM, stream>>>(p);
    return cudaGetLastError();
}

/* Tile configurations (id, BM, BN, BK, WM, WN, STAGES), measured in benchmarks/kernels/README.md.
   Default 4 (sm_80, sm_90), 1 where shared memory is 99 KB (sm_86, sm_89) or Ci < 64, 6 for Co <= 32;
   5, 7 and 8 measured within 2% of 4 at the VAE's shapes on H100 (lab variants, ZIMAGE_CONV_TILE). */
#define CONV_CFG_LIST(X)                  \
    X(1, 128, 128, 32, 2, 4, 4)           \
    X(4, 256, 128, 64, 4, 2, 3)           \
    X(5, 128, 128, 64, 2, 4, 3)           \
    X(6, 128, 32, 32, 4, 1, 4)            \
    X(7, 128, 128, 64, 2, 2, 3)           \
    X(8, 256, 128, 64, 4, 2, 4)

/* shared memory per block of a configuration (0: no such id) */
static size_t conv_tile_smem(int tile) {
#define X(id, bm, bn, bk, wm, wn, st) \
    if (tile == id) return ConvCfg<bm, bn, bk, wm, wn, st>::SMEM;
    CONV_CFG_LIST(X)
#undef X
    return 0;
}

extern "C" cudaError_t zi_conv2d_igemm_band_cuda(void *out, const void *x, const void *w, const void *bias,
                                                 const void *res, int B, int Ci, int H, int W, int Co, int k, int pad,
                                                 int up, int y0, int ny, int ys, int tile, cudaStream_t stream) {
    int Hc = up ? 2 * H : H, Wc = up ? 2 * W : W; /* the conv's input size */
    int Hof = Hc + 2 * pad - k + 1, Wo = Wc + 2 * pad - k + 1, Ho = ny;
    if (B <= 0 || Co <= 0 || Hof <= 0 || Wo <= 0 || ny <= 0) return cudaSuccess;
    if (y0 < 0 || y0 + ny > Hof || ys < 0 || (up && ys) || (B > 1 && (y0 || ny != Hof))) return cudaErrorInvalidValue;
    if (Ci <= 0 || Ci % 8 || !is_aligned16(x) || !is_aligned16(w) || k <= 0 || pad < 0) return cudaErrorInvalidValue;
    if ((size_t)B * Ho * Wo > 0x7fffffffu - 512 || (size_t)B * H * W > 0x7fffffffu ||
        (size_t)Co * k * k * Ci > 0x7fffffffu || Hc + pad >= 0x7ff0 || Wc + pad >= 0x7ff0)
        return cudaErrorInvalidValue;
    ConvArgs p = {(bf16 *)out, (const bf16 *)x, (const bf16 *)w, (const bf16 *)bias, (const bf16 *)res, B * Ho * Wo,
                  Ci, Co, k, pad, up ? 1 : 0, Hc, Wc, H, W, Ho, Wo, 0, y0, ys, (size_t)Hof * Wo,
                  (Ho * Wo) % 8 == 0 && ((size_t)y0 * Wo) % 8 == 0 && ((size_t)Hof * Wo) % 8 == 0 && is_aligned16(out) &&
                      (!res || is_aligned16(res))};
    if (tile <= 0) tile = Co <= 32 ? 6 : Ci < 64 ? 1 : 4;
    int dev = 0, optin = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (e != cudaSuccess) return e;
    if (conv_tile_smem(tile) == 0 || conv_tile_smem(tile) > (size_t)optin) tile = Co <= 32 ? 6 : 1; /* sm_86/89: 99 KB */
    switch (tile) {
#define X(id, bm, bn, bk, wm, wn, st) \
    case id: return launch_igemm<bm, bn, bk, wm, wn, st>(p, stream);
        CONV_CFG_LIST(X)
#undef X
    }
    return cudaErrorInvalidValue;
}

extern "C" cudaError_t zi_conv2d_igemm_cuda(void *out, const void *x, const void *w, const void *bias, const void *res,
                                            int B, int Ci, int H, int W, int Co, int k, int pad, int up, int tile,
                                            cudaStream_t stream) {
    int Hof = (up ? 2 * H : H) + 2 * pad - k + 1;
    return zi_conv2d_igemm_band_cuda(out, x, w, bias, res, B, Ci, H, W, Co, k, pad, up, 0, Hof, 0, tile, stream);
}

// ----------------------------------------------------------------------------------------------
// packing: NCHW input (optionally group-normalised) -> NHWC, and the weights -> [Co][k*k][Ci]

/* value of channel c after the optional groupnorm + SiLU (the same operations, in the same order,
   as groupnorm_apply_kernel in norm.cu) */
struct PackNorm {
    const float2 *stats;  /* [B*G] (mean, rstd), NULL: no normalisation */
    const bf16 *gamma, *beta;
    int G, CG, silu;
    __device__ float operator()(float v, int b, int c) const {
        if (!stats) return v;
        float2 s = stats[b * G + c / CG];
        float t = (v - s.x) * s.y;
        if (gamma) t *= b2f(gamma[c]);
        if (beta) t += b2f(beta[c]);
        if (silu) t = t / (1.0f + expf(-t));
        return t;
    }
};

/* fast path: C % 32 == 0, HW % 8 == 0, 16-byte aligned in. Block = 256 threads over 32 channels x 512
   pixels of image blockIdx.z; lane (cq = lane % 4, pq = lane / 4): an 8x8 block of 8 channels x 8 pixels,
   read as 8 rows of 16 bytes (a warp reads 128 contiguous bytes per channel), transposed in registers,
   written as 8 pixels of 16 bytes (a warp writes 64 contiguous bytes per pixel). */
__global__ void conv_pack_input_vec_kernel(bf16 *nhwc, const bf16 *in, int C, int HW, size_t plane, PackNorm f) {
    int b = blockIdx.z, c = blockIdx.y * 32 + (threadIdx.x % 4) * 8;
    int p = (blockIdx.x * 64 + threadIdx.x / 4) * 8;
    if (p >= HW) return;
    float v[8][8]; /* [channel][pixel] */
#pragma unroll
    for (int j = 0; j < 8; j++) {
        ld8(v[j], in + ((size_t)b * C + c + j) * plane + p);
#pragma unroll
        for (int i = 0; i < 8; i++) v[j][i] = f(v[j][i], b, c + j);
    }
#pragma unroll
    for (int i = 0; i < 8; i++) {
        float o[8];
#pragma unroll
        for (int j = 0; j < 8; j++) o[j] = v[j][i];
        st8(nhwc + ((size_t)b * HW + p + i) * C + c, o);
    }
}

/* any shape: one output element per thread step */
__global__ void conv_pack_input_kernel(bf16 *nhwc, const bf16 *in, int B, int C, int HW, size_t plane, PackNorm f) {
    size_t n = (size_t)B * C * HW;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        int c = (int)(i % C);
        size_t bp = i / C;
        int b = (int)(bp / HW), pix = (int)(bp % HW);
        nhwc[i] = f2b(f(b2f(in[((size_t)b * C + c) * plane + pix]), b, c));
    }
}

extern "C" cudaError_t zi_conv_pack_input_cuda(void *nhwc, const void *in, int B, int C, int HW, size_t plane,
                                               const float *stats, int G, const void *gamma, const void *beta, int silu,
                                               cudaStream_t stream) {
    if (B <= 0 || C <= 0 || HW <= 0) return cudaSuccess;
    if (plane < (size_t)HW) return cudaErrorInvalidValue;
    if (stats && (G <= 0 || C % G)) return cudaErrorInvalidValue;
    PackNorm f = {(const float2 *)stats, (const bf16 *)gamma, (const bf16 *)beta, stats ? G : 1, stats ? C / G : C, silu};
    if (C % 32 == 0 && HW % 8 == 0 && plane % 8 == 0 && is_aligned16(in) && is_aligned16(nhwc) && B <= 65535 &&
        C / 32 <= 65535) {
        dim3 grid((unsigned)((HW + 511) / 512), (unsigned)(C / 32), (unsigned)B);
        conv_pack_input_vec_kernel<<<grid, 256, 0, stream>>>((bf16 *)nhwc, (const bf16 *)in, C, HW, plane, f);
    } else {
        conv_pack_input_kernel<<<grid_for((size_t)B * C * HW, 256), 256, 0, stream>>>((bf16 *)nhwc, (const bf16 *)in, B,
                                                                                       C, HW, plane, f);
    }
    return cudaGetLastError();
}

/* wp[co, t, ci] = w[co, ci, t] for t < kk taps */
__global__ void conv_pack_weight_kernel(bf16 *wp, const bf16 *w, int Co, int Ci, int kk) {
    size_t n = (size_t)Co * Ci * kk;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        int ci = (int)(i % Ci), t = (int)((i / Ci) % kk);
        size_t co = i / ((size_t)Ci * kk);
        wp[i] = w[(co * Ci + ci) * kk + t];
    }
}

extern "C" cudaError_t zi_conv_pack_weight_cuda(void *wp, const void *w, int Co, int Ci, int kk, cudaStream_t stream) {
    size_t n = (size_t)Co * Ci * kk;
    if (n == 0) return cudaSuccess;
    conv_pack_weight_kernel<<<grid_for(n, 256), 256, 0, stream>>>((bf16 *)wp, (const bf16 *)w, Co, Ci, kk);
    return cudaGetLastError();
}

// ----------------------------------------------------------------------------------------------
// groupnorm statistics for the packed input. Group bg = (b, g) is the contiguous range
// in[bg*n .. (bg+1)*n), n = (C/G)*HW, cut into chunks of GS_CHUNK elements; block (chunk, bg) keeps its
// chunk in registers and writes (mean, M2) about its own mean (exact two-pass inside the chunk); the
// finalize kernel combines the chunks of a group in double: mean = sum cnt_i mean_i / n,
// var = sum (M2_i + cnt_i mean_i^2) / n - mean^2 (biased, as torch).

#define GS_THREADS 256
#define GS_PER_THREAD 32
#define GS_CHUNK (GS_THREADS * GS_PER_THREAD)

static __device__ __forceinline__ double block_sum_double(double v, double *red) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads(); /* red may still be read by a previous call */
    if (lane == 0) red[warp] = v;
    __syncthreads(); /* all partial sums written */
    v = lane < nw ? red[lane] : 0.0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* VEC: n % 8 == 0 and in 16-byte aligned (8 elements per load) */
template <bool VEC>
__global__ void groupnorm_partial_kernel(float2 *partials, const bf16 *in, size_t n, int nchunks) {
    __shared__ float red[32];
    size_t bg = blockIdx.y, e0 = (size_t)blockIdx.x * GS_CHUNK;
    const bf16 *x = in + bg * n;
    float v[GS_PER_THREAD];
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < GS_PER_THREAD / 8; i++) {
        size_t e = e0 + ((size_t)i * GS_THREADS + threadIdx.x) * 8;
        if (VEC && e + 8 <= n) {
            ld8(v + 8 * i, x + e);
        } else {
#pragma unroll
            for (int j = 0; j < 8; j++) v[8 * i + j] = e + j < n ? b2f(x[e + j]) : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < 8; j++) s += v[8 * i + j];
    }
    size_t cnt = n - e0 < GS_CHUNK ? n - e0 : GS_CHUNK;
    float mean = block_sum(s, red) / (float)cnt, m2 = 0.0f;
#pragma unroll
    for (int i = 0; i < GS_PER_THREAD / 8; i++) {
        size_t e = e0 + ((size_t)i * GS_THREADS + threadIdx.x) * 8;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            float d = v[8 * i + j] - mean;
            m2 += e + j < n ? d * d : 0.0f;
        }
    }
    m2 = block_sum(m2, red);
    if (threadIdx.x == 0) partials[bg * nchunks + blockIdx.x] = make_float2(mean, m2);
}

/* stats[bg] = (mean, rstd) of group bg from its nchunks partials */
__global__ void groupnorm_finalize_kernel(float2 *stats, const float2 *partials, size_t n, int nchunks, float eps) {
    __shared__ double red[32];
    size_t bg = blockIdx.x;
    double s = 0.0, q = 0.0;
    for (int i = threadIdx.x; i < nchunks; i += blockDim.x) {
        float2 pt = partials[bg * nchunks + i];
        double cnt = (double)(n - (size_t)i * GS_CHUNK < GS_CHUNK ? n - (size_t)i * GS_CHUNK : GS_CHUNK);
        s += cnt * pt.x;
        q += pt.y + cnt * (double)pt.x * pt.x;
    }
    s = block_sum_double(s, red);
    q = block_sum_double(q, red);
    if (threadIdx.x == 0) {
        double mean = s / (double)n, var = q / (double)n - mean * mean;
        stats[bg] = make_float2((float)mean, rsqrtf((float)(var > 0.0 ? var : 0.0) + eps));
    }
}

extern "C" size_t zi_groupnorm_stats_partials(int B, int C, int HW, int G) {
    size_t n = (size_t)(C / G) * HW;
    return (size_t)B * G * ((n + GS_CHUNK - 1) / GS_CHUNK);
}

extern "C" cudaError_t zi_groupnorm_stats_cuda(float *stats, float *partials, const void *in, int B, int C, int HW,
                                               int G, float eps, cudaStream_t stream) {
    if (B <= 0 || C <= 0 || HW <= 0) return cudaSuccess;
    if (G <= 0 || C % G || (size_t)B * G > 65535) return cudaErrorInvalidValue;
    size_t n = (size_t)(C / G) * HW, nchunks = (n + GS_CHUNK - 1) / GS_CHUNK;
    if (nchunks > 0x7fffffffu) return cudaErrorInvalidValue;
    dim3 grid((unsigned)nchunks, (unsigned)(B * G));
    if (n % 8 == 0 && is_aligned16(in))
        groupnorm_partial_kernel<true><<<grid, GS_THREADS, 0, stream>>>((float2 *)partials, (const bf16 *)in, n, (int)nchunks);
    else
        groupnorm_partial_kernel<false><<<grid, GS_THREADS, 0, stream>>>((float2 *)partials, (const bf16 *)in, n, (int)nchunks);
    groupnorm_finalize_kernel<<<B * G, 256, 0, stream>>>((float2 *)stats, (const float2 *)partials, n, (int)nchunks, eps);
    return cudaGetLastError();
}
