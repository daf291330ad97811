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
 *
 * conv_wgmma_kernel<WGS, BN, STAGES, MINB> (sm_90a): the same GEMM, same k-blocks and epilogue, on
 * Hopper's wgmma (64 x BN per warpgroup, operands from 128-byte-swizzled shared memory written by
 * cp.async); ~1.6x the mma.sync kernel on H100. Taken on compute capability 9.x when the loaded binary
 * has sm_90a code (the sm90.cuh probe) and ZIMAGE_CONV_SM90 is not 0; every other device keeps the
 * mma.sync tiles (sm_86/89: the 99 KB ones).
 */
#include "mma.cuh"
#include "sm90.cuh"

#include <stdlib.h>
#include <string.h>

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

/* The epilogue's stores: Cs[n][m] (row stride ldc) holds the block's BM x BN output tile, already + bias and
   rounded to bf16; out[b, co, pix] = Cs (+ res, rounded again: what a separate add op computes) for 8 pixels
   per step: one 16-byte access when they are in one image and aligned. NT threads. */
template <int BM, int BN, int NT>
static __device__ __forceinline__ void conv_store_tile(const ConvArgs &p, const bf16 *Cs, int ldc, int m0, int n0) {
    const int HoWo = p.Ho * p.Wo;
    for (int i = threadIdx.x; i < BN * (BM / 8); i += NT) {
        int n = i / (BM / 8), mc = (i % (BM / 8)) * 8, co = n0 + n, m = m0 + mc;
        if (co >= p.Co || m >= p.M) continue;
        const bf16 *src = Cs + n * ldc + mc;
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

/* The output pixels of a thread's A rows m = m_first + i * RSTEP (i < ROWS): image offset (in source
   pixels) and y << 16 | x (y = 0x7fff: no pixel; H, W < 0x7ff0 is checked by the launcher, so every tap
   of it is outside). Shared by the mma.sync and the wgmma kernels. */
template <int ROWS, int RSTEP>
static __device__ __forceinline__ void conv_a_rows(const ConvArgs &p, int m_first, int (&a_img)[ROWS], int (&a_yx)[ROWS]) {
    const int HoWo = p.Ho * p.Wo;
#pragma unroll
    for (int i = 0; i < ROWS; i++) {
        int m = m_first + i * RSTEP;
        int b = m / HoWo, pix = m - b * HoWo;
        a_img[i] = b * p.Hs * p.Ws;
        a_yx[i] = m < p.M ? (pix / p.Wo) << 16 | (pix % p.Wo) : 0x7fff << 16;
    }
}

/* Where A row (img, yx) of conv_a_rows reads channels c .. c+7 at tap (ky, kx): the packed input pixel
   (the upsample's addressing included), or p.x with *valid = false past a border or past Ci (zero fill). */
static __device__ __forceinline__ const bf16 *conv_a_src(const ConvArgs &p, int img, int yx, int ky, int kx, int c,
                                                         bool c_ok, bool *valid) {
    int yi = (yx >> 16) + p.y0 + ky - p.pad, xi = (yx & 0xffff) + kx - p.pad;
    *valid = c_ok && (unsigned)yi < (unsigned)p.H && (unsigned)xi < (unsigned)p.W;
    return *valid ? p.x + ((size_t)(img + ((yi - p.ys) >> p.up) * p.Ws + (xi >> p.up)) * p.Ci + c) : p.x;
}

template <int BM, int BN, int BK, int WM, int WN, int STAGES>
__global__ void __launch_bounds__(WM * WN * 32) conv_igemm_kernel(ConvArgs p) {
    using C = ConvCfg<BM, BN, BK, WM, WN, STAGES>;
    extern __shared__ __align__(16) unsigned char conv_smem[];
    bf16 *smem = reinterpret_cast<bf16 *>(conv_smem);
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, wm = warp / WN, wn = warp % WN;
    const int tile_n = blockIdx.x % p.tiles_n, tile_m = blockIdx.x / p.tiles_n; /* n fastest: A tile shared in L2 */
    const int m0 = tile_m * BM, n0 = tile_n * BN, q = tid % C::CPR, r0 = tid / C::CPR;
    const int kk = p.k * p.k, cpt = (p.Ci + BK - 1) / BK, nk = kk * cpt;

    int a_img[C::A_ROWS], a_yx[C::A_ROWS];
    conv_a_rows<C::A_ROWS, C::RSTEP>(p, m0 + r0, a_img, a_yx); /* the output pixels of this thread's A rows */
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
            bool v;
            const bf16 *src = conv_a_src(p, a_img[i], a_yx[i], ld_ky, ld_kx, c, c_ok, &v);
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

    conv_store_tile<BM, BN, C::NT>(p, Cs, C::LDC, m0, n0);
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

// ----------------------------------------------------------------------------------------------
// sm_90a: the same implicit GEMM on wgmma (Hopper's asynchronous warpgroup MMA)
//
// conv_wgmma_kernel<WGS, BN, STAGES, MINB>: block tile BM = 64*WGS pixels x BN output channels, WGS
// warpgroups (128 threads each); warpgroup w owns pixel rows 64w .. 64w+63 and all BN channels: one
// wgmma m64nBNk16 per 16 channels, A (pixels x channels) and B (channels of the weights) both K-major
// in shared memory with the 128-byte swizzle (k-block BK = 64 channels = one 128-byte row per pixel /
// output channel; 16-byte chunk c of row r sits at chunk c ^ (r % 8); 8-row groups 1024 bytes apart).
// The k-blocks are those of conv_igemm_kernel (one tap x 64 channels), written by every thread with
// zero-filling 16-byte cp.async straight into the swizzled layout (a tap's pixel rows are not a TMA box).
// Pipeline of STAGES stages: k-block kb+STAGES-2 is loaded while wgmma kb runs and wgmma kb-1 may still
// be in flight (wgmma.wait_group 1), so a stage is refilled only after every warpgroup retired it.
// Epilogue as conv_igemm_kernel's (conv_store_tile). Compiled for every arch; the body only exists in
// sm_90a code, and the sm90.cuh probe tells the host whether the loaded binary has it.

template <int WGS, int BN, int STAGES>
struct Conv90Cfg {
    static constexpr int BM = 64 * WGS;                     /* pixels: 64 per warpgroup             */
    static constexpr int BK = 64;                           /* channels per k-block (128-byte rows) */
    static constexpr int NT = 128 * WGS;                    /* threads                              */
    static constexpr int A_BYTES = BM * 128, B_BYTES = BN * 128, STAGE_BYTES = A_BYTES + B_BYTES;
    static constexpr int RSTEP = NT / 8;                    /* rows one pass of threads loads       */
    static constexpr int A_ROWS = BM / RSTEP, B_ROWS = BN / RSTEP; /* rows per thread               */
    static constexpr int LDC = BM + 8;                      /* epilogue tile [BN][BM] stride        */
    static constexpr size_t PIPE = (size_t)STAGES * STAGE_BYTES, EPI = 2 * (size_t)BN * LDC;
    static constexpr size_t SMEM = 1024 + (PIPE > EPI ? PIPE : EPI); /* + alignment to 1024 bytes   */
    static_assert(STAGES >= 3 && (BN == 128 || BN == 256) && BM % RSTEP == 0 && BN % RSTEP == 0 && RSTEP % 8 == 0,
                  "tile shape");
};

#ifdef ZI_SM90_DEVICE_CODE
/* wgmma descriptor of a K-major tile in the 128-byte swizzle: 8-row groups 1024 bytes apart (sm90.cuh) */
static __device__ __forceinline__ uint64_t conv90_desc(uint32_t addr) { return wg_desc(addr, 16, 1024); }

/* d[64 x BN] += A[64 x 16] B[16 x BN], A and B K-major in shared memory (descriptors da, db) */
template <int BN>
static __device__ __forceinline__ void conv90_wgmma(float (&d)[BN / 2], uint64_t da, uint64_t db) {
    if constexpr (BN == 128) wgmma_ss_n128(d, da, db, 1);
    else wgmma_ss_n256(d, da, db, 1);
}
#endif /* ZI_SM90_DEVICE_CODE */

template <int WGS, int BN, int STAGES, int MINB>
__global__ void __launch_bounds__(WGS * 128, MINB) conv_wgmma_kernel(ConvArgs p) {
#ifdef ZI_SM90_DEVICE_CODE
    using C = Conv90Cfg<WGS, BN, STAGES>;
    constexpr int BM = C::BM, BK = C::BK;
    extern __shared__ __align__(16) unsigned char conv90_smem[];
    unsigned char *base = conv90_smem + ((1024 - (smem_u32(conv90_smem) & 1023)) & 1023); /* 1024-byte aligned */
    const uint32_t sbase = smem_u32(base);
    const int tid = threadIdx.x, wg = tid / 128, lane = tid % 32, warp_in_wg = (tid / 32) % 4;
    const int tile_n = blockIdx.x % p.tiles_n, tile_m = blockIdx.x / p.tiles_n; /* n fastest: A tile shared in L2 */
    const int m0 = tile_m * BM, n0 = tile_n * BN, q = tid % 8, r0 = tid / 8;
    const int kk = p.k * p.k, cpt = (p.Ci + BK - 1) / BK, nk = kk * cpt;
    /* rows r0 + i*RSTEP all have r % 8 == r0 % 8 (RSTEP % 8 == 0): one swizzled chunk offset per thread */
    const int chunk_off = ((q ^ (r0 % 8)) * 16);

    int a_img[C::A_ROWS], a_yx[C::A_ROWS];
    conv_a_rows<C::A_ROWS, C::RSTEP>(p, m0 + r0, a_img, a_yx); /* the output pixels of this thread's A rows */
    const bf16 *b_base = p.w + (size_t)(n0 + r0) * kk * p.Ci;
    const size_t b_step = (size_t)C::RSTEP * kk * p.Ci;

    int ld_tap = 0, ld_ky = 0, ld_kx = 0, ld_c0 = 0; /* loader position: k-block (tap, channels c0 ..) */
    auto load_stage = [&](int stage) {
        unsigned char *As = base + stage * C::STAGE_BYTES + r0 * 128 + chunk_off, *Bs = As + C::A_BYTES;
        int c = ld_c0 + q * 8;
        bool c_ok = c < p.Ci;
#pragma unroll
        for (int i = 0; i < C::A_ROWS; i++) {
            bool v;
            const bf16 *src = conv_a_src(p, a_img[i], a_yx[i], ld_ky, ld_kx, c, c_ok, &v);
            cp_async16(As + i * C::RSTEP * 128, src, v);
        }
#pragma unroll
        for (int i = 0; i < C::B_ROWS; i++) {
            bool v = c_ok && n0 + r0 + i * C::RSTEP < p.Co;
            const bf16 *src = v ? b_base + i * b_step + (size_t)ld_tap * p.Ci + c : p.w;
            cp_async16(Bs + i * C::RSTEP * 128, src, v);
        }
        ld_c0 += BK;
        if (ld_c0 >= p.Ci) {
            ld_c0 = 0;
            ld_tap++;
            if (++ld_kx == p.k) ld_kx = 0, ld_ky++;
        }
    };

    float acc[BN / 2]; /* the warpgroup's 64 x BN accumulators: acc[4j + e] = row 16 warp + lane/4 + 8 (e >> 1),
                          channel 8j + 2 (lane % 4) + (e & 1) */
#pragma unroll
    for (int i = 0; i < BN / 2; i++) acc[i] = 0.0f;

#pragma unroll
    for (int s = 0; s < STAGES - 2; s++) {
        if (s < nk) load_stage(s);
        cp_async_commit(); /* empty groups keep the wait_group count uniform */
    }
    for (int kb = 0; kb < nk; kb++) {
        cp_async_wait<STAGES - 3>(); /* this thread's copies of k-block kb have landed */
        fence_async_smem();  /* ... and are visible to wgmma, which reads through the async proxy */
        __syncthreads(); /* every thread's part of stage kb is in; every warpgroup retired wgmma kb-2 (wait 1 below) */
        if (kb + STAGES - 2 < nk) load_stage((kb + STAGES - 2) % STAGES); /* refills the stage of k-block kb-2 */
        cp_async_commit();
        const uint32_t a_addr = sbase + (kb % STAGES) * C::STAGE_BYTES + wg * 64 * 128;
        const uint32_t b_addr = sbase + (kb % STAGES) * C::STAGE_BYTES + C::A_BYTES;
        const uint64_t da = conv90_desc(a_addr), db = conv90_desc(b_addr);
        wg_fence(); /* accumulator registers written before (zeroing, wgmma kb-1) are ordered before wgmma kb */
#pragma unroll
        for (int ks = 0; ks < BK / 16; ks++) /* 16 channels = 32 bytes further along the swizzled rows */
            conv90_wgmma<BN>(acc, da + 2 * ks, db + 2 * ks);
        wg_commit();
        wg_wait<1>(); /* wgmma kb-1 is done: its stage may be refilled after the next barrier */
    }
    wg_wait<0>();
    cp_async_wait<0>();
    __syncthreads(); /* every warpgroup is done with the pipeline stages before the epilogue reuses them */

    /* epilogue: Cs[n][m] = bf16(acc + bias[n]) */
    bf16 *Cs = reinterpret_cast<bf16 *>(base);
    const int g = lane / 4, t4 = lane % 4, m = wg * 64 + warp_in_wg * 16 + g;
#pragma unroll
    for (int j = 0; j < BN / 8; j++) {
        int n = j * 8 + 2 * t4;
        float bias0 = 0.0f, bias1 = 0.0f;
        if (p.bias) {
            if (n0 + n < p.Co) bias0 = b2f(p.bias[n0 + n]);
            if (n0 + n + 1 < p.Co) bias1 = b2f(p.bias[n0 + n + 1]);
        }
        Cs[n * C::LDC + m] = f2b(acc[4 * j] + bias0);
        Cs[(n + 1) * C::LDC + m] = f2b(acc[4 * j + 1] + bias1);
        Cs[n * C::LDC + m + 8] = f2b(acc[4 * j + 2] + bias0);
        Cs[(n + 1) * C::LDC + m + 8] = f2b(acc[4 * j + 3] + bias1);
    }
    __syncthreads(); /* the whole output tile is in shared memory before rows of it are stored */

    conv_store_tile<BM, BN, C::NT>(p, Cs, C::LDC, m0, n0);
#endif /* ZI_SM90_DEVICE_CODE */
}

/* 1 when device dev can run conv_wgmma_kernel: compute capability 9.x and sm_90a code loaded (the
   sm90.cuh probe, once per device), unless ZIMAGE_CONV_SM90=0. Each launch sets its own shared memory. */
static int conv90_ready(int dev, cudaStream_t stream) {
    static int state[ZI_SM90_MAX_DEVICES]; /* 0 unknown, 1 ready, 2 not */
    static int env_off = -1;
    if (sm90_env_off("ZIMAGE_CONV_SM90", &env_off)) return 0;
    return sm90_kernels_ready(state, dev, stream, 0, NULL, 0);
}

/* one wgmma tile configuration: its kernel, shared memory and grid */
template <int WGS, int BN, int STAGES, int MINB>
static cudaError_t launch_wgmma(ConvArgs p, cudaStream_t stream) {
    using C = Conv90Cfg<WGS, BN, STAGES>;
    auto kern = conv_wgmma_kernel<WGS, BN, STAGES, MINB>;
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)C::SMEM);
    if (e != cudaSuccess) return e;
    p.tiles_n = (p.Co + BN - 1) / BN;
    size_t blocks = (size_t)p.tiles_n * ((p.M + C::BM - 1) / C::BM);
    if (blocks > 0x7fffffffu) return cudaErrorInvalidValue;
    kern<<<(unsigned)blocks, C::NT, C::SMEM, stream>>>(p);
    return cudaGetLastError();
}

/* Tile configurations (id, BM, BN, BK, WM, WN, STAGES), measured in benchmarks/kernels/README.md.
   Default 4 (sm_80, sm_90 without sm_90a code), 1 where shared memory is 99 KB (sm_86, sm_89) or Ci < 64,
   6 for Co <= 32; 5, 7 and 8 measured within 2% of 4 at the VAE's shapes on H100 (lab variants,
   ZIMAGE_CONV_TILE). */
#define CONV_CFG_LIST(X)                  \
    X(1, 128, 128, 32, 2, 4, 4)           \
    X(4, 256, 128, 64, 4, 2, 3)           \
    X(5, 128, 128, 64, 2, 4, 3)           \
    X(6, 128, 32, 32, 4, 1, 4)            \
    X(7, 128, 128, 64, 2, 2, 3)           \
    X(8, 256, 128, 64, 4, 2, 4)

/* wgmma tile configurations (id, warpgroups WGS (BM = 64 WGS), BN, STAGES, blocks per SM), sm_90a only:
   9 for Co >= 256 and 11 for 64 <= Co < 256 when Ci >= 64 (the others where they lose; README) */
#define CONV90_CFG_LIST(X)                \
    X(9, 2, 256, 4, 1)                    \
    X(10, 2, 128, 6, 1)                   \
    X(11, 4, 128, 4, 1)                   \
    X(12, 2, 128, 3, 2)

/* shared memory per block of a configuration (0: no such id) */
static size_t conv_tile_smem(int tile) {
#define X(id, bm, bn, bk, wm, wn, st) \
    if (tile == id) return ConvCfg<bm, bn, bk, wm, wn, st>::SMEM;
    CONV_CFG_LIST(X)
#undef X
#define X(id, wgs, bn, st, minb) \
    if (tile == id) return Conv90Cfg<wgs, bn, st>::SMEM;
    CONV90_CFG_LIST(X)
#undef X
    return 0;
}
static bool conv_tile_is_wgmma(int tile) {
#define X(id, wgs, bn, st, minb) \
    if (tile == id) return true;
    CONV90_CFG_LIST(X)
#undef X
    return false;
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
    int dev = 0, optin = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (e != cudaSuccess) return e;
    int sm90 = conv90_ready(dev, stream);
    if (tile <= 0) tile = Co <= 32 ? 6 : Ci < 64 ? 1 : !sm90 ? 4 : Co >= 256 ? 9 : 11;
    if (conv_tile_is_wgmma(tile) && !sm90) tile = Co <= 32 ? 6 : Ci < 64 ? 1 : 4; /* no sm_90a code or device */
    if (conv_tile_smem(tile) == 0 || conv_tile_smem(tile) > (size_t)optin) tile = Co <= 32 ? 6 : 1; /* sm_86/89: 99 KB */
    switch (tile) {
#define X(id, bm, bn, bk, wm, wn, st) \
    case id: return launch_igemm<bm, bn, bk, wm, wn, st>(p, stream);
        CONV_CFG_LIST(X)
#undef X
#define X(id, wgs, bn, st, minb) \
    case id: return launch_wgmma<wgs, bn, st, minb>(p, stream);
        CONV90_CFG_LIST(X)
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
   as groupnorm_apply_kernel in norm.cu; SiLU by silu_gn, common.cuh) */
struct PackNorm {
    const float2 *stats;  /* [B*G] (mean, rstd), NULL: no normalisation */
    const bf16 *gamma, *beta;
    int G, CG, silu;
    /* channel c of image b's parameters, loaded once for all its pixels */
    struct Chan {
        float mean, rstd, gamma, beta;
    };
    __device__ Chan chan(int b, int c) const {
        Chan k = {0.0f, 1.0f, 1.0f, 0.0f};
        if (!stats) return k;
        float2 s = stats[b * G + c / CG];
        k.mean = s.x, k.rstd = s.y;
        if (gamma) k.gamma = b2f(gamma[c]);
        if (beta) k.beta = b2f(beta[c]);
        return k;
    }
    __device__ float operator()(float v, const Chan &k) const {
        if (!stats) return v;
        float t = (v - k.mean) * k.rstd;
        if (gamma) t *= k.gamma;
        if (beta) t += k.beta;
        if (silu) t = silu_gn(t);
        return t;
    }
    __device__ float operator()(float v, int b, int c) const { return (*this)(v, chan(b, c)); }
};

/* fast path: C % 32 == 0, HW % 8 == 0, 16-byte aligned in and nhwc, through a shared-memory tile
   (it beat a register-transpose kernel: benchmarks/kernels/README.md). A tile = 32 channels x 256 pixels
   of one image; block = 256 threads, looping over tiles t = blockIdx.x, + gridDim.x, .. (channel tile
   fastest, so the tiles that fill one pixel's NHWC row run close together). Load: warp w reads channel
   rows w, w+8, w+16, w+24 of the tile (512 contiguous bytes each) by cp.async into the thread's own slots
   of Rs; the next tile's copies are issued before this tile is normalised, so the block's memory traffic
   overlaps its exp / divide work (with one tile per block, the kernel before this one, the two ran one
   after the other: 0.38 ms against 0.27 for the plain pack at 128 ch 1024^2). The rows are normalised (the channel's parameters loaded
   once per row) and stored as rows of Ts[32][256] (16-byte chunk pc of row ch at chunk pc ^ (ch / 8), so
   the column reads below hit 4 different bank groups). Store: thread (pixel tid/4 + 64k, channels
   8 (tid % 4) ..) gathers 8 channels from the tile and writes 16 bytes (a warp writes 8 pixels x 64
   contiguous bytes). */
struct PackTile {
    int b, c0, p0;
    __device__ PackTile(int t, int nct, int npt) : b(t / nct / npt), c0(t % nct * 32), p0(t / nct % npt * 256) {}
};

__global__ void __launch_bounds__(256, 3) conv_pack_input_vec_kernel(bf16 *nhwc, const bf16 *in, int B, int C, int HW,
                                                                   size_t plane, PackNorm f) {
    __shared__ __align__(16) bf16 Ts[32 * 256];
    __shared__ __align__(16) bf16 Rs[2][4 * 256 * 8]; /* each thread's 4 raw 16-byte chunks of two tiles */
    const int tid = threadIdx.x, pc = tid % 32;        /* pc: the 8-pixel chunk this thread loads */
    const int nct = C / 32, npt = (HW + 255) / 256;
    const int ntiles = B * nct * npt; /* < 2^31: checked by the launcher */
    /* cp.async of this thread's chunks (rows tid/32 + 8k, pixels pc*8 ..) of tile t into Rs[buf], one group */
    auto load = [&](int t, int buf) {
        PackTile tl(t, nct, npt);
        bool valid = tl.p0 + pc * 8 < HW;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            int ch = tid / 32 + 8 * k;
            const bf16 *src = valid ? in + ((size_t)tl.b * C + tl.c0 + ch) * plane + tl.p0 + pc * 8 : in;
            cp_async16(&Rs[buf][(k * 256 + tid) * 8], src, valid);
        }
        cp_async_commit();
    };
    if ((int)blockIdx.x < ntiles) load(blockIdx.x, 0);
    int buf = 0;
    for (int t = blockIdx.x; t < ntiles; t += gridDim.x, buf ^= 1) {
        const PackTile tl(t, nct, npt);
        if (t < ntiles - (int)gridDim.x) { /* the next tile's rows in flight while this one is normalised */
            load(t + gridDim.x, buf ^ 1);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        /* this thread's own chunks of tile t have landed; no other thread reads them, so no barrier */
#pragma unroll 1
        for (int k = 0; k < 4; k++) {
            int ch = tid / 32 + 8 * k;
            if (tl.p0 + pc * 8 >= HW) continue;
            float v[8];
            ld8(v, &Rs[buf][(k * 256 + tid) * 8]);
            const PackNorm::Chan kc = f.chan(tl.b, tl.c0 + ch);
#pragma unroll
            for (int i = 0; i < 8; i++) v[i] = f(v[i], kc);
            st8(Ts + ch * 256 + ((pc ^ (ch / 8)) * 8), v);
        }
        __syncthreads(); /* the whole tile is normalised and in shared memory before its columns are read */
        const int cg = tid % 4;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            int px = tid / 4 + 64 * k;
            if (tl.p0 + px >= HW) continue;
            uint4 u;
            bf16 *h = reinterpret_cast<bf16 *>(&u);
#pragma unroll
            for (int j = 0; j < 8; j++) {
                int ch = cg * 8 + j;
                h[j] = Ts[ch * 256 + (((px / 8) ^ (ch / 8)) * 8) + px % 8];
            }
            *reinterpret_cast<uint4 *>(nhwc + ((size_t)tl.b * HW + tl.p0 + px) * C + tl.c0 + cg * 8) = u;
        }
        __syncthreads(); /* every column of this tile is read before the next tile overwrites Ts */
    }
}

/* blocks of conv_pack_input_vec_kernel: at most as many as fit on the device at once (each loops over
   tiles) */
static long conv_pack_blocks(long ntiles) {
    int dev = 0, sms = 0, per_sm = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, conv_pack_input_vec_kernel, 256, 0) != cudaSuccess ||
        sms <= 0 || per_sm <= 0) {
        (void)cudaGetLastError(); /* a failed query only means one tile per block */
        return ntiles;
    }
    long fit = (long)sms * per_sm;
    return ntiles < fit ? ntiles : fit;
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
        long ntiles = (long)B * (C / 32) * ((HW + 255) / 256), blocks = conv_pack_blocks(ntiles);
        if (ntiles > 0x7fffffffL) return cudaErrorInvalidValue;
        conv_pack_input_vec_kernel<<<(unsigned)blocks, 256, 0, stream>>>((bf16 *)nhwc, (const bf16 *)in, B, C, HW,
                                                                         plane, f);
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
// direct 3x3 convolution for a few output channels (the decoder's conv_out, Co = 3), reading the NCHW input
// and applying the optional GroupNorm (+ SiLU) on the way into shared memory: no packing pass, and each
// input element is loaded from memory once per tile (the implicit GEMM's Co = 3 tile was L2-bound on
// the 9 taps' reloads of A, and wasted 29 of its 32 N columns).
//
// conv3x3_direct_kernel<CO>: block = CD_THREADS threads over an output tile of CD_TH x CD_TW pixels of
// image blockIdx.z; thread (tx, ty) computes column tx, rows CD_RPT ty .. + CD_RPT - 1, all CO channels
// (fp32 accumulators, on the CUDA cores: 2 x 9 x Ci x CO flops a pixel are few). Per chunk of CD_CC
// input channels: the (CD_TH + 2) x (CD_TW + 2) halo tile of each channel pair, normalised and rounded to
// bf16 exactly as the packing pass does (PackNorm, then f2b; zero outside the image and past Ci, as the
// implicit GEMM's zero-fill) and stored as bf16x2 words Xs[pair][row][col]; the chunk's weights as fp32
// Ws[pair][dx][dy][co][2] (padded to CD_WPAD floats per (pair, dx), read as broadcast float4s). Epilogue as
// the implicit GEMM's: bf16(acc + bias), then + res rounded again. Stride 1, padding 1, no upsampling.

#define CD_TW 64                              /* output tile columns (one per thread of a row group)  */
#define CD_TH 16                              /* output tile rows                                     */
#define CD_RPT 4                              /* output rows per thread                               */
#define CD_THREADS (CD_TW * CD_TH / CD_RPT)   /* 256                                                  */
#define CD_CC 16                              /* input channels per chunk                             */
#define CD_PAIRS (CD_CC / 2)
#define CD_HH (CD_TH + 2)                     /* halo tile rows                                       */
#define CD_XW (CD_TW + 4)                     /* Xs row stride (words): halo column c at word c + 1, so the
                                                 interior pixel pairs a lane writes are 8-byte aligned     */
#define CD_XS (CD_PAIRS * CD_HH * CD_XW)      /* bf16x2 words of a chunk's input tile                     */
#define CD_UNITS (CD_PAIRS * CD_HH)           /* (pair, halo row) rows of a chunk's input tile            */
#define CD_UB 6                               /* rows a warp loads before it normalises any               */
#define CD_MAX_CO 4
#define CD_WPAD(co) ((3 * (co) * 2 + 3) / 4 * 4) /* floats per (pair, dx): 3 dy x co x 2, to whole float4s */

struct ConvDirectArgs {
    bf16 *out;          /* [B, CO, H, W]                                          */
    const bf16 *x;      /* [B, Ci, H, W]                                          */
    const bf16 *w;      /* [CO, Ci, 3, 3]                                         */
    const bf16 *bias;   /* [CO] or NULL                                           */
    const bf16 *res;    /* [B, CO, H, W] added after the rounding, or NULL        */
    int Ci, H, W, tiles_x;
    int vec;            /* W even and x 4-byte aligned: pixel pairs are 4-byte loads */
    PackNorm f;         /* the GroupNorm (+ SiLU) of the input, or none (stats NULL) */
};

/* dynamic shared memory of conv3x3_direct_kernel<co> at Ci input channels */
static size_t conv_direct_smem(int co, int Ci) {
    return sizeof(PackNorm::Chan) * (size_t)Ci + sizeof(float) * CD_PAIRS * 3 * CD_WPAD(co) + sizeof(uint32_t) * CD_XS;
}

/* pixels x, x + 1 of one channel row (p at pixel x) as two bf16 (x in the low half), 0 past W: one 4-byte
   load when vec (W even, so x + 1 < W when x < W), else two 2-byte loads */
static __device__ __forceinline__ uint32_t ld_pixel_pair(const unsigned short *p, int x, int W, int vec) {
    if (vec) return x < W ? __ldg(reinterpret_cast<const unsigned int *>(p)) : 0u;
    return (x < W ? (uint32_t)__ldg(p) : 0u) | (x + 1 < W ? (uint32_t)__ldg(p + 1) << 16 : 0u);
}

template <int CO>
__global__ void __launch_bounds__(CD_THREADS, 3) conv3x3_direct_kernel(ConvDirectArgs p) {
    constexpr int WPAD = CD_WPAD(CO);
    extern __shared__ __align__(16) unsigned char cd_smem[];
    PackNorm::Chan *chan = reinterpret_cast<PackNorm::Chan *>(cd_smem);             /* [Ci]               */
    float *Ws = reinterpret_cast<float *>(chan + p.Ci);                             /* [pairs][3][WPAD]   */
    uint32_t *Xs = reinterpret_cast<uint32_t *>(Ws + CD_PAIRS * 3 * WPAD);          /* [pairs][HH][HWD]   */
    const int tid = threadIdx.x, tx = tid % CD_TW, ty = tid / CD_TW, b = blockIdx.z, warp = tid / 32, lane = tid % 32;
    const int x0 = (blockIdx.x % p.tiles_x) * CD_TW, y0 = (blockIdx.x / p.tiles_x) * CD_TH, lgx = x0 + 2 * lane;
    const int Ci = p.Ci, H = p.H, W = p.W;
    const bf16 *xb = p.x + (size_t)b * Ci * H * W;
    for (int c = tid; c < Ci; c += CD_THREADS) chan[c] = p.f.chan(b, c);

    float acc[CD_RPT][CO];
#pragma unroll
    for (int j = 0; j < CD_RPT; j++)
#pragma unroll
        for (int co = 0; co < CO; co++) acc[j][co] = 0.0f;

    for (int c0 = 0; c0 < Ci; c0 += CD_CC) {
        __syncthreads(); /* the previous chunk's tiles are consumed (and, first time, chan is written) */
        for (int i = tid; i < CD_PAIRS * 3 * 3 * CO * 2; i += CD_THREADS) {
            int h = i % 2, co = i / 2 % CO, dy = i / (2 * CO) % 3, dx = i / (6 * CO) % 3, pr = i / (18 * CO);
            int ci = c0 + 2 * pr + h;
            Ws[(pr * 3 + dx) * WPAD + (dy * CO + co) * 2 + h] =
                ci < Ci ? b2f(p.w[((size_t)co * Ci + ci) * 9 + dy * 3 + dx]) : 0.0f;
        }
        /* the interior 64 columns: warp w loads the tile rows (pair, halo row) u = w, w + 8, ..; lane l the
           pixels x0 + 2l, x0 + 2l + 1 of both channels (two 4-byte loads), CD_UB rows in flight at a time */
        static_assert(CD_TW == 64 && CD_UNITS % (CD_THREADS / 32 * CD_UB) == 0, "loader shape");
#pragma unroll 1
        for (int u0 = warp; u0 < CD_UNITS; u0 += CD_UB * (CD_THREADS / 32)) {
            uint32_t ra[CD_UB], rb[CD_UB]; /* channel ci, ci + 1: pixel gx in the low half, gx + 1 in the high */
#pragma unroll
            for (int l = 0; l < CD_UB; l++) {
                int u = u0 + l * (CD_THREADS / 32), pr = u / CD_HH, gy = y0 - 1 + u % CD_HH, ci = c0 + 2 * pr;
                bool row = gy >= 0 && gy < H;
                const unsigned short *src = reinterpret_cast<const unsigned short *>(xb) + ((size_t)ci * H + gy) * W + lgx;
                ra[l] = row && ci < Ci ? ld_pixel_pair(src, lgx, W, p.vec) : 0u;
                rb[l] = row && ci + 1 < Ci ? ld_pixel_pair(src + (size_t)H * W, lgx, W, p.vec) : 0u;
            }
#pragma unroll
            for (int l = 0; l < CD_UB; l++) {
                int u = u0 + l * (CD_THREADS / 32), pr = u / CD_HH, gy = y0 - 1 + u % CD_HH, ci = c0 + 2 * pr;
                bool row = gy >= 0 && gy < H, in0 = row && lgx < W, in1 = row && lgx + 1 < W;
                bool c_lo = ci < Ci, c_hi = ci + 1 < Ci;
                __nv_bfloat162 v0 = __floats2bfloat162_rn(0.0f, 0.0f), v1 = v0;
                if (in0 && c_lo) v0.x = f2b(p.f(__uint_as_float(ra[l] << 16), chan[ci]));
                if (in0 && c_hi) v0.y = f2b(p.f(__uint_as_float(rb[l] << 16), chan[ci + 1]));
                if (in1 && c_lo) v1.x = f2b(p.f(__uint_as_float(ra[l] & 0xffff0000u), chan[ci]));
                if (in1 && c_hi) v1.y = f2b(p.f(__uint_as_float(rb[l] & 0xffff0000u), chan[ci + 1]));
                *reinterpret_cast<uint2 *>(Xs + u * CD_XW + 2 + 2 * lane) =
                    make_uint2(*reinterpret_cast<uint32_t *>(&v0), *reinterpret_cast<uint32_t *>(&v1));
            }
        }
        /* the two halo columns x0 - 1 and x0 + 64 of every tile row: one word per thread step */
        for (int t = tid; t < 2 * CD_UNITS; t += CD_THREADS) {
            int u = t / 2, right = t % 2, pr = u / CD_HH, gy = y0 - 1 + u % CD_HH, ci = c0 + 2 * pr;
            int gx = right ? x0 + CD_TW : x0 - 1;
            bool in = gy >= 0 && gy < H && gx >= 0 && gx < W;
            const unsigned short *src = reinterpret_cast<const unsigned short *>(xb) + ((size_t)ci * H + gy) * W + gx;
            __nv_bfloat162 v = __floats2bfloat162_rn(0.0f, 0.0f);
            if (in && ci < Ci) v.x = f2b(p.f(__uint_as_float((uint32_t)__ldg(src) << 16), chan[ci]));
            if (in && ci + 1 < Ci) v.y = f2b(p.f(__uint_as_float((uint32_t)__ldg(src + (size_t)H * W) << 16), chan[ci + 1]));
            Xs[u * CD_XW + (right ? CD_TW + 2 : 1)] = *reinterpret_cast<uint32_t *>(&v);
        }
        __syncthreads(); /* the chunk's input and weight tiles are complete before any thread reads them */
#pragma unroll 1
        for (int pr = 0; pr < CD_PAIRS; pr++) {
#pragma unroll
            for (int dx = 0; dx < 3; dx++) {
                float lo[CD_RPT + 2], hi[CD_RPT + 2]; /* the pair's two channels at rows ty*RPT - 1 .. + RPT */
#pragma unroll
                for (int r = 0; r < CD_RPT + 2; r++) {
                    uint32_t u = Xs[(pr * CD_HH + ty * CD_RPT + r) * CD_XW + tx + dx + 1];
                    lo[r] = __uint_as_float(u << 16);
                    hi[r] = __uint_as_float(u & 0xffff0000u);
                }
                float wr[WPAD];
#pragma unroll
                for (int q = 0; q < WPAD / 4; q++)
                    *reinterpret_cast<float4 *>(wr + 4 * q) = *reinterpret_cast<const float4 *>(Ws + (pr * 3 + dx) * WPAD + 4 * q);
#pragma unroll
                for (int j = 0; j < CD_RPT; j++)
#pragma unroll
                    for (int dy = 0; dy < 3; dy++)
#pragma unroll
                        for (int co = 0; co < CO; co++) {
                            acc[j][co] = fmaf(lo[j + dy], wr[(dy * CO + co) * 2], acc[j][co]);
                            acc[j][co] = fmaf(hi[j + dy], wr[(dy * CO + co) * 2 + 1], acc[j][co]);
                        }
            }
        }
    }
    const int gx = x0 + tx;
    if (gx >= W) return;
#pragma unroll
    for (int j = 0; j < CD_RPT; j++) {
        int gy = y0 + ty * CD_RPT + j;
        if (gy >= H) break;
#pragma unroll
        for (int co = 0; co < CO; co++) {
            size_t o = (((size_t)b * CO + co) * H + gy) * W + gx;
            bf16 v = f2b(acc[j][co] + (p.bias ? b2f(p.bias[co]) : 0.0f));
            p.out[o] = p.res ? f2b(b2f(v) + b2f(p.res[o])) : v;
        }
    }
}

template <int CO>
static cudaError_t launch_conv_direct(ConvDirectArgs p, int B, cudaStream_t stream) {
    size_t smem = conv_direct_smem(CO, p.Ci);
    cudaError_t e = cudaFuncSetAttribute(conv3x3_direct_kernel<CO>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return e;
    size_t tiles = (size_t)p.tiles_x * ((p.H + CD_TH - 1) / CD_TH);
    if (tiles > 0x7fffffffu) return cudaErrorInvalidValue;
    conv3x3_direct_kernel<CO><<<dim3((unsigned)tiles, 1, (unsigned)B), CD_THREADS, smem, stream>>>(p);
    return cudaGetLastError();
}

extern "C" int zi_conv2d_direct_supported(int Ci, int Co, int k, int pad, int up) {
    return k == 3 && pad == 1 && !up && Co >= 1 && Co <= CD_MAX_CO && Ci >= 1 && conv_direct_smem(CD_MAX_CO, Ci) <= 48 * 1024;
}

extern "C" cudaError_t zi_conv2d_direct_cuda(void *out, const void *x, const void *w, const void *bias, const void *res,
                                             int B, int Ci, int H, int W, int Co, const float *stats, int G,
                                             const void *gamma, const void *beta, int silu, cudaStream_t stream) {
    if (B <= 0 || H <= 0 || W <= 0) return cudaSuccess;
    if (!zi_conv2d_direct_supported(Ci, Co, 3, 1, 0) || B > 65535 || (stats && (G <= 0 || Ci % G)))
        return cudaErrorInvalidValue;
    ConvDirectArgs p = {(bf16 *)out, (const bf16 *)x, (const bf16 *)w, (const bf16 *)bias, (const bf16 *)res, Ci, H, W,
                        (W + CD_TW - 1) / CD_TW, W % 2 == 0 && ((uintptr_t)x & 3u) == 0,
                        {(const float2 *)stats, (const bf16 *)gamma, (const bf16 *)beta, stats ? G : 1,
                         stats ? Ci / G : Ci, silu}};
    switch (Co) {
    case 1: return launch_conv_direct<1>(p, B, stream);
    case 2: return launch_conv_direct<2>(p, B, stream);
    case 3: return launch_conv_direct<3>(p, B, stream);
    case 4: return launch_conv_direct<4>(p, B, stream);
    }
    return cudaErrorInvalidValue;
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
