/*
 * attention.cu - softmax(q k^T * scale) v without the SxS matrix (flash-attention style: K/V
 * tiles stream past a tile of queries while a running max and sum keep the softmax exact).
 *
 * attention_mma_kernel<HD, BM, WM> (HD in 32/64/96/128, sm_80+ tensor cores, mma.sync m16n8k16 bf16):
 *   block = BM/(16 WM) warps, BM query rows of one head; a warp owns WM m-tiles of 16 rows and keeps
 *   their output accumulators (fp32) and row max/sum in registers (and, for WM = 1, its Q fragments).
 *   Default BM = 128, WM = 2: 4 warps of 32 rows, every K/V fragment feeds two mma.
 *   Shared memory: one K and one V tile of 64 keys x HD, plus the Q tile when WM > 1 (rows padded
 *   by 16 bytes so ldmatrix is free of bank conflicts), loaded with cp.async: V_t loads while
 *   S = Q K_t^T is computed, K_{t+1} loads while O += P V_t. P goes from the S accumulators
 *   straight into A fragments; the softmax runs in base 2 on the raw scores.
 * attention_generic_kernel<DPL> (any HD up to 32*DPL, CUDA cores): for head dims <= 128 other than
 *   the four above, unaligned buffers, and HD > 128 when cuBLASLt offers no algorithm. Block =
 *   4 warps x 4 query rows; per tile of 32 keys, lane l scores key l against the warp's rows, then
 *   lanes own output dims d = lane + 32t and accumulate p_j * v_j, with p_j broadcast by shuffles.
 * On compute capability 9.x with sm_90a code, HD = 128 goes to the wgmma/TMA kernel of attention_sm90.cu.
 * softmax_rows_kernel: the row softmax of the chunked GEMM path that ops_cuda.c uses for HD > 128
 *   (scores = q k^T by cuBLASLt into fp32, P = softmax -> bf16, out = P v by cuBLASLt);
 *   softmax_rows_reg_kernel: the same with the row in registers (rows of up to 16384 scores).
 */
#include "mma.cuh"

#include <math.h>

#define LOG2E 1.4426950408889634f

// ----------------------------------------------------------------------------------------------
// tensor-core kernel. Tile shape knobs (the defaults are the measured best on H100, see
// benchmarks/kernels/README.md; the others are lab variants built with -D...):
//   ZI_ATTN_BM   query rows per block
//   ZI_ATTN_WM   16-row m-tiles per warp: 1 keeps Q in registers; 2 reloads Q fragments from shared
//                memory but reuses every K/V fragment twice (half the ldmatrix traffic per mma)
//   ZI_ATTN_BN   keys per tile
//   ZI_ATTN_MINB min blocks per SM for __launch_bounds__ (0: none)

#ifndef ZI_ATTN_BM
#define ZI_ATTN_BM 128
#endif
#ifndef ZI_ATTN_WM
#define ZI_ATTN_WM 2
#endif
#ifndef ZI_ATTN_BN
#define ZI_ATTN_BN 64
#endif
#ifndef ZI_ATTN_MINB
#define ZI_ATTN_MINB 0
#endif
#define MMA_BN ZI_ATTN_BN
#if ZI_ATTN_MINB > 0
#define MMA_BOUNDS(nt) __launch_bounds__(nt, ZI_ATTN_MINB)
#else
#define MMA_BOUNDS(nt) __launch_bounds__(nt)
#endif

/* tile[r][c] (row stride LD) = src[(r0 + r) * stride + c] for r < ROWS, c < HD; rows past S are zero.
   NT threads share the work. */
template <int ROWS, int HD, int LD, int NT>
static __device__ __forceinline__ void load_tile(bf16 *tile, const bf16 *src, size_t stride, int r0, int S) {
    constexpr int CPR = HD / 8; /* 16-byte chunks per row */
#pragma unroll
    for (int i = threadIdx.x; i < ROWS * CPR; i += NT) {
        int r = i / CPR, c = (i % CPR) * 8;
        bool valid = r0 + r < S;
        cp_async16(tile + r * LD + c, src + (size_t)(valid ? r0 + r : 0) * stride + c, valid);
    }
}

/* shared memory of attention_mma_kernel<HD, BM, WM>: K and V tiles, plus the Q tile when WM > 1 */
static size_t mma_smem_bytes(int HD, int BM, int WM) {
    return sizeof(bf16) * (size_t)(HD + 8) * (2 * MMA_BN + (WM > 1 ? BM : 0));
}

template <int HD, int BM, int WM>
__global__ void MMA_BOUNDS(BM / WM * 2) attention_mma_kernel(bf16 *out, const bf16 *q, const bf16 *k, const bf16 *v,
                                                             int ld, int S, int NH, int NKV, float scale_log2,
                                                             int causal) {
    constexpr int LD = HD + 8, NT = BM / WM * 2; /* BM / (16 WM) warps */
    constexpr bool QREG = WM == 1;
    static_assert(!QREG || BM <= 2 * MMA_BN, "the Q tile is staged through the K and V tiles");
    extern __shared__ __align__(16) unsigned char mma_smem[];
    bf16 *Ks = reinterpret_cast<bf16 *>(mma_smem), *Vs = Ks + MMA_BN * LD, *Qs = QREG ? Ks : Vs + MMA_BN * LD;
    int h = blockIdx.y, kvh = h / (NH / NKV), q0 = blockIdx.x * BM;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    int wrow = q0 + warp * WM * 16; /* first query row of this warp; m-tile w covers wrow + 16w .. +15 */
    size_t os = (size_t)NH * HD, qs = ld ? (size_t)ld : os, kvs = ld ? (size_t)ld : (size_t)NKV * HD; /* row strides */
    const bf16 *kh = k + (size_t)kvh * HD, *vh = v + (size_t)kvh * HD;

    load_tile<BM, HD, LD, NT>(Qs, q + (size_t)h * HD, qs, q0, S);
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads(); /* the Q tile is visible to every warp */
    uint32_t qf[QREG ? HD / 16 : 1][4];
    if (QREG) {
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++)
            ldmatrix_x4(qf[QREG ? kk : 0], Qs + (warp * 16 + lane % 16) * LD + kk * 16 + (lane / 16) * 8);
        __syncthreads(); /* every warp holds its Q fragments before the tiles are overwritten with K and V */
    }

    float o[WM][HD / 8][4];
    float mrow[WM][2], lrow[WM][2]; /* per m-tile, rows g and g+8; mrow in raw score units */
#pragma unroll
    for (int w = 0; w < WM; w++) {
#pragma unroll
        for (int dt = 0; dt < HD / 8; dt++) o[w][dt][0] = o[w][dt][1] = o[w][dt][2] = o[w][dt][3] = 0.0f;
        mrow[w][0] = mrow[w][1] = -INFINITY;
        lrow[w][0] = lrow[w][1] = 0.0f;
    }
    int n_tiles = (S + MMA_BN - 1) / MMA_BN;
    if (causal) n_tiles = min(n_tiles, (q0 + BM - 1) / MMA_BN + 1);

    load_tile<MMA_BN, HD, LD, NT>(Ks, kh, kvs, 0, S);
    cp_async_commit();
    for (int t = 0; t < n_tiles; t++) {
        int k0 = t * MMA_BN;
        cp_async_wait_all();
        __syncthreads(); /* K_t has landed; every warp is done reading V_{t-1} */
        load_tile<MMA_BN, HD, LD, NT>(Vs, vh, kvs, k0, S);
        cp_async_commit();

        /* s[w][i][j] = sum_d q[i][d] k[j][d] over m-tile w's 16 rows and the tile's keys */
        float s[WM][MMA_BN / 8][4];
#pragma unroll
        for (int w = 0; w < WM; w++)
#pragma unroll
            for (int nt = 0; nt < MMA_BN / 8; nt++) s[w][nt][0] = s[w][nt][1] = s[w][nt][2] = s[w][nt][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            uint32_t a[WM][4];
#pragma unroll
            for (int w = 0; w < WM; w++) {
                if (QREG) {
#pragma unroll
                    for (int i = 0; i < 4; i++) a[w][i] = qf[QREG ? kk : 0][i];
                } else {
                    ldmatrix_x4(a[w], Qs + ((warp * WM + w) * 16 + lane % 16) * LD + kk * 16 + (lane / 16) * 8);
                }
            }
#pragma unroll
            for (int nt = 0; nt < MMA_BN / 8; nt += 2) {
                uint32_t b[4];
                ldmatrix_x4(b, Ks + (nt * 8 + (lane / 16) * 8 + lane % 8) * LD + kk * 16 + ((lane / 8) % 2) * 8);
#pragma unroll
                for (int w = 0; w < WM; w++) {
                    mma_bf16(s[w][nt], a[w], b[0], b[1]);
                    mma_bf16(s[w][nt + 1], a[w], b[2], b[3]);
                }
            }
        }

        /* online softmax in base 2 on raw scores s (scale > 0 commutes with max): m' = max(m, max_j s),
           p = 2^((s - m') scale log2e), l' = l 2^((m - m') scale log2e) + sum_j p */
        bool mask = k0 + MMA_BN > S || (causal && k0 + MMA_BN - 1 > wrow);
#pragma unroll
        for (int w = 0; w < WM; w++) {
            int row0 = wrow + w * 16 + g, row1 = row0 + 8;
            float mx[2] = {mrow[w][0], mrow[w][1]};
#pragma unroll
            for (int nt = 0; nt < MMA_BN / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    float x = s[w][nt][e];
                    int key = k0 + nt * 8 + tq * 2 + (e & 1), row = e < 2 ? row0 : row1;
                    if (mask && (key >= S || (causal && key > row))) x = -INFINITY;
                    s[w][nt][e] = x;
                    mx[e / 2] = fmaxf(mx[e / 2], x);
                }
            float msub[2], alpha[2], lsum[2] = {0.0f, 0.0f};
#pragma unroll
            for (int r = 0; r < 2; r++) {
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
                msub[r] = mx[r] == -INFINITY ? 0.0f : mx[r] * scale_log2; /* every key masked so far: 0 */
                alpha[r] = exp2f(mrow[w][r] * scale_log2 - msub[r]);
                mrow[w][r] = mx[r];
            }
#pragma unroll
            for (int nt = 0; nt < MMA_BN / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    float p = exp2f(fmaf(s[w][nt][e], scale_log2, -msub[e / 2]));
                    s[w][nt][e] = p;
                    lsum[e / 2] += p;
                }
#pragma unroll
            for (int r = 0; r < 2; r++) lrow[w][r] = lrow[w][r] * alpha[r] + lsum[r];
#pragma unroll
            for (int dt = 0; dt < HD / 8; dt++) {
                o[w][dt][0] *= alpha[0];
                o[w][dt][1] *= alpha[0];
                o[w][dt][2] *= alpha[1];
                o[w][dt][3] *= alpha[1];
            }
        }

        cp_async_wait_all();
        __syncthreads(); /* V_t has landed; every warp is done reading K_t */
        if (t + 1 < n_tiles) {
            load_tile<MMA_BN, HD, LD, NT>(Ks, kh, kvs, k0 + MMA_BN, S);
            cp_async_commit();
        }

        /* o[i][d] += sum_j p[i][j] v[j][d]; the S accumulators of key tiles 2kt, 2kt+1 are the A fragment */
#pragma unroll
        for (int kt = 0; kt < MMA_BN / 16; kt++) {
            uint32_t a[WM][4];
#pragma unroll
            for (int w = 0; w < WM; w++) {
                a[w][0] = pack_bf16x2(s[w][2 * kt][0], s[w][2 * kt][1]);
                a[w][1] = pack_bf16x2(s[w][2 * kt][2], s[w][2 * kt][3]);
                a[w][2] = pack_bf16x2(s[w][2 * kt + 1][0], s[w][2 * kt + 1][1]);
                a[w][3] = pack_bf16x2(s[w][2 * kt + 1][2], s[w][2 * kt + 1][3]);
            }
#pragma unroll
            for (int dt = 0; dt < HD / 8; dt += 2) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, Vs + (kt * 16 + ((lane / 8) % 2) * 8 + lane % 8) * LD + (dt + lane / 16) * 8);
#pragma unroll
                for (int w = 0; w < WM; w++) {
                    mma_bf16(o[w][dt], a[w], b[0], b[1]);
                    mma_bf16(o[w][dt + 1], a[w], b[2], b[3]);
                }
            }
        }
    }

    /* out = o / l; the row sum is spread over the 4 threads of a quad */
#pragma unroll
    for (int w = 0; w < WM; w++) {
        float inv[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float l = lrow[w][r];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            inv[r] = l > 0.0f ? 1.0f / l : 0.0f;
        }
        int row0 = wrow + w * 16 + g, row1 = row0 + 8;
        bf16 *o0 = out + (size_t)row0 * os + (size_t)h * HD + tq * 2, *o1 = out + (size_t)row1 * os + (size_t)h * HD + tq * 2;
#pragma unroll
        for (int dt = 0; dt < HD / 8; dt++) {
            if (row0 < S) *reinterpret_cast<uint32_t *>(o0 + dt * 8) = pack_bf16x2(o[w][dt][0] * inv[0], o[w][dt][1] * inv[0]);
            if (row1 < S) *reinterpret_cast<uint32_t *>(o1 + dt * 8) = pack_bf16x2(o[w][dt][2] * inv[1], o[w][dt][3] * inv[1]);
        }
    }
}

// ----------------------------------------------------------------------------------------------
// CUDA-core kernel for any head dim

#define GA_WARPS 4
#define GA_ROWS 4 /* query rows per warp */
#define GA_BK 32  /* keys per tile: one per lane in the score phase */

/* K tile row stride in elements: even, with an odd number of 4-byte words (conflict-free column reads) */
static __host__ __device__ inline int ga_k_stride(int HD) {
    int s = (HD + 1) & ~1;
    return (s / 2) % 2 ? s : s + 2;
}
static size_t ga_smem_bytes(int HD) {
    return sizeof(bf16) * ((size_t)GA_BK * ga_k_stride(HD) + (size_t)GA_BK * HD + (size_t)GA_WARPS * GA_ROWS * ((HD + 1) & ~1));
}

template <int DPL>
__global__ void __launch_bounds__(32 * GA_WARPS) attention_generic_kernel(bf16 *out, const bf16 *q, const bf16 *k,
                                                                          const bf16 *v, int ld, int S, int NH, int NKV,
                                                                          int HD, float scale_log2, int causal) {
    extern __shared__ __align__(16) unsigned char ga_smem[];
    const int SK = ga_k_stride(HD), SQ = (HD + 1) & ~1, HD2 = SQ / 2;
    bf16 *Ks = reinterpret_cast<bf16 *>(ga_smem);  /* [GA_BK][SK]             */
    bf16 *Vs = Ks + GA_BK * SK;                    /* [GA_BK][HD]             */
    bf16 *Qs = Vs + GA_BK * HD;                    /* [GA_WARPS*GA_ROWS][SQ]  */
    int h = blockIdx.y, kvh = h / (NH / NKV), q0 = blockIdx.x * GA_WARPS * GA_ROWS;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    size_t os = (size_t)NH * HD, qs = ld ? (size_t)ld : os, kvs = ld ? (size_t)ld : (size_t)NKV * HD; /* row strides */
    const bf16 *kh = k + (size_t)kvh * HD, *vh = v + (size_t)kvh * HD;
    const bf16 zero = __float2bfloat16_rn(0.0f);

    /* Q rows of the block, zero past S and in the odd-HD pad column */
    for (int i = threadIdx.x; i < GA_WARPS * GA_ROWS * SQ; i += blockDim.x) {
        int r = i / SQ, d = i % SQ;
        Qs[i] = (q0 + r < S && d < HD) ? q[(size_t)(q0 + r) * qs + (size_t)h * HD + d] : zero;
    }

    float m[GA_ROWS], l[GA_ROWS], acc[GA_ROWS][DPL];
#pragma unroll
    for (int r = 0; r < GA_ROWS; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int t = 0; t < DPL; t++) acc[r][t] = 0.0f;
    }
    int row_base = q0 + warp * GA_ROWS;
    int kv_end = causal ? min(S, q0 + GA_WARPS * GA_ROWS) : S;
    for (int k0 = 0; k0 < kv_end; k0 += GA_BK) {
        __syncthreads(); /* every warp is done with the previous tile (and Q is stored) */
        for (int i = threadIdx.x; i < GA_BK * SK; i += blockDim.x) {
            int j = i / SK, d = i % SK;
            Ks[i] = (k0 + j < S && d < HD) ? kh[(size_t)(k0 + j) * kvs + d] : zero;
        }
        for (int i = threadIdx.x; i < GA_BK * HD; i += blockDim.x) {
            int j = i / HD, d = i % HD;
            Vs[i] = k0 + j < S ? vh[(size_t)(k0 + j) * kvs + d] : zero;
        }
        __syncthreads(); /* the K/V tile is visible */

        /* score phase: lane <-> key k0+lane, sc[r] = q[row r] . k[key] */
        float sc[GA_ROWS];
#pragma unroll
        for (int r = 0; r < GA_ROWS; r++) sc[r] = 0.0f;
        const __nv_bfloat162 *kr = reinterpret_cast<const __nv_bfloat162 *>(Ks + lane * SK);
        const __nv_bfloat162 *qr = reinterpret_cast<const __nv_bfloat162 *>(Qs + warp * GA_ROWS * SQ);
        for (int d2 = 0; d2 < HD2; d2++) {
            float2 kv = __bfloat1622float2(kr[d2]);
#pragma unroll
            for (int r = 0; r < GA_ROWS; r++) {
                float2 qv = __bfloat1622float2(qr[r * HD2 + d2]);
                sc[r] += qv.x * kv.x + qv.y * kv.y;
            }
        }
        int key = k0 + lane;
#pragma unroll
        for (int r = 0; r < GA_ROWS; r++) {
            float x = sc[r] * scale_log2;
            if (key >= S || (causal && key > row_base + r)) x = -INFINITY;
            float mnew = fmaxf(m[r], warp_max(x));
            float msub = mnew == -INFINITY ? 0.0f : mnew;
            float alpha = exp2f(m[r] - msub), p = exp2f(x - msub);
            l[r] = l[r] * alpha + warp_sum(p);
            m[r] = mnew;
            sc[r] = p;
#pragma unroll
            for (int t = 0; t < DPL; t++) acc[r][t] *= alpha;
        }

        /* value phase: lane <-> dims d = lane + 32t, acc[r][t] += p[r][j] v[j][d] */
        int nk = min(GA_BK, S - k0);
        for (int j = 0; j < nk; j++) {
            float pj[GA_ROWS];
#pragma unroll
            for (int r = 0; r < GA_ROWS; r++) pj[r] = __shfl_sync(0xffffffffu, sc[r], j);
#pragma unroll
            for (int t = 0; t < DPL; t++) {
                int d = lane + 32 * t;
                if (d < HD) {
                    float vv = b2f(Vs[j * HD + d]);
#pragma unroll
                    for (int r = 0; r < GA_ROWS; r++) acc[r][t] += pj[r] * vv;
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < GA_ROWS; r++) {
        int row = row_base + r;
        if (row >= S) continue;
        float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        bf16 *orow = out + (size_t)row * os + (size_t)h * HD;
#pragma unroll
        for (int t = 0; t < DPL; t++) {
            int d = lane + 32 * t;
            if (d < HD) orow[d] = f2b(acc[r][t] * inv);
        }
    }
}

template <int DPL>
static cudaError_t launch_generic(bf16 *out, const bf16 *q, const bf16 *k, const bf16 *v, int ld, int S, int NH, int NKV,
                                  int HD, float sl2, int causal, cudaStream_t stream) {
    size_t smem = ga_smem_bytes(HD);
    if (smem > 48 * 1024) {
        cudaError_t e = cudaFuncSetAttribute(attention_generic_kernel<DPL>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             (int)smem);
        if (e != cudaSuccess) return e;
    }
    dim3 grid((S + GA_WARPS * GA_ROWS - 1) / (GA_WARPS * GA_ROWS), NH);
    attention_generic_kernel<DPL><<<grid, 32 * GA_WARPS, smem, stream>>>(out, q, k, v, ld, S, NH, NKV, HD, sl2, causal);
    return cudaGetLastError();
}

template <int HD>
static cudaError_t launch_mma(bf16 *out, const bf16 *q, const bf16 *k, const bf16 *v, int ld, int S, int NH, int NKV,
                              float sl2, int causal, cudaStream_t stream) {
    constexpr int BM = ZI_ATTN_BM, WM = ZI_ATTN_WM;
    size_t smem = mma_smem_bytes(HD, BM, WM);
    if (smem > 48 * 1024) {
        cudaError_t e = cudaFuncSetAttribute(attention_mma_kernel<HD, BM, WM>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             (int)smem);
        if (e != cudaSuccess) return e;
    }
    dim3 grid((S + BM - 1) / BM, NH);
    attention_mma_kernel<HD, BM, WM><<<grid, BM / WM * 2, smem, stream>>>(out, q, k, v, ld, S, NH, NKV, sl2, causal);
    return cudaGetLastError();
}

extern "C" cudaError_t zi_attention_cuda(void *out, const void *q, const void *k, const void *v, int ld, int S, int NH,
                                         int NKV, int HD, int causal, float scale, cudaStream_t stream) {
    if (S <= 0 || NH <= 0) return cudaSuccess;
    if (NKV <= 0 || NH % NKV || HD <= 0 || NH > 65535 || ld < 0 || (ld && (ld < NH * HD || ld < NKV * HD)))
        return cudaErrorInvalidValue;
    bf16 *O = (bf16 *)out;
    const bf16 *Q = (const bf16 *)q, *K = (const bf16 *)k, *V = (const bf16 *)v;
    float sl2 = scale * LOG2E;
    /* the tensor-core kernel takes the max of raw scores, which needs scale > 0 */
    bool aligned = is_aligned16(out) && is_aligned16(q) && is_aligned16(k) && is_aligned16(v) && ld % 8 == 0 &&
                   scale > 0.0f;
    if (aligned) {
        int taken = 0;
        cudaError_t e = zi_attention_sm90_cuda(out, q, k, v, ld, S, NH, NKV, HD, causal, scale, stream, &taken);
        if (taken) return e;
        switch (HD) {
        case 32: return launch_mma<32>(O, Q, K, V, ld, S, NH, NKV, sl2, causal, stream);
        case 64: return launch_mma<64>(O, Q, K, V, ld, S, NH, NKV, sl2, causal, stream);
        case 96: return launch_mma<96>(O, Q, K, V, ld, S, NH, NKV, sl2, causal, stream);
        case 128: return launch_mma<128>(O, Q, K, V, ld, S, NH, NKV, sl2, causal, stream);
        }
    }
    if (HD <= 32) return launch_generic<1>(O, Q, K, V, ld, S, NH, NKV, HD, sl2, causal, stream);
    if (HD <= 64) return launch_generic<2>(O, Q, K, V, ld, S, NH, NKV, HD, sl2, causal, stream);
    if (HD <= 128) return launch_generic<4>(O, Q, K, V, ld, S, NH, NKV, HD, sl2, causal, stream);
    if (HD <= 256) return launch_generic<8>(O, Q, K, V, ld, S, NH, NKV, HD, sl2, causal, stream);
    if (HD <= 512) return launch_generic<16>(O, Q, K, V, ld, S, NH, NKV, HD, sl2, causal, stream);
    if (HD <= 1024) return launch_generic<32>(O, Q, K, V, ld, S, NH, NKV, HD, sl2, causal, stream);
    return cudaErrorInvalidValue;
}

// ----------------------------------------------------------------------------------------------
// row softmax for the GEMM attention path: one block per row, three passes over the fp32 row
// (max, sum of exp, write), the row stays in L1/L2 between them

__global__ void softmax_rows_kernel(bf16 *p, const float *s, int rows, int cols, int ld, int row0, int causal) {
    __shared__ float red[32];
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *x = s + (size_t)r * ld;
        bf16 *y = p + (size_t)r * ld;
        int valid = causal ? min(cols, row0 + r + 1) : cols;
        float mx = -INFINITY;
        for (int j = threadIdx.x; j < valid; j += blockDim.x) mx = fmaxf(mx, x[j]);
        mx = block_max(mx, red);
        float sum = 0.0f;
        for (int j = threadIdx.x; j < valid; j += blockDim.x) sum += expf(x[j] - mx);
        float inv = 1.0f / block_sum(sum, red);
        for (int j = threadIdx.x; j < cols; j += blockDim.x) y[j] = f2b(j < valid ? expf(x[j] - mx) * inv : 0.0f);
    }
}

/* The same softmax with the row held in registers: one read of the scores, not three (the VAE's mid-block
   attention, S = 16384: its rows were read from L2 three times by 256 threads each). Block = SMR_THREADS
   threads per row, V float4 of the row per thread (cols <= 4 V SMR_THREADS); element j = 4 (i SMR_THREADS + tid)
   + e of float4 i, so every load and store of a warp is contiguous. Needs cols % 4 == 0, ld % 4 == 0, s 16-byte
   and p 8-byte aligned. Same operations per element as softmax_rows_kernel (max, expf(x - max), 1 / sum, the
   products rounded to bf16 once); only the order of the fp32 sum differs. */
#define SMR_THREADS 512
template <int V>
__global__ void __launch_bounds__(SMR_THREADS) softmax_rows_reg_kernel(bf16 *p, const float *s, int rows, int cols,
                                                                        int ld, int row0, int causal) {
    __shared__ float red[32];
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *x = s + (size_t)r * ld;
        bf16 *y = p + (size_t)r * ld;
        const int valid = causal ? min(cols, row0 + r + 1) : cols;
        float4 e[V]; /* the scores, then expf(score - max) (0 past valid) */
#pragma unroll
        for (int i = 0; i < V; i++) {
            int j = 4 * (i * SMR_THREADS + threadIdx.x);
            e[i] = j < cols ? *reinterpret_cast<const float4 *>(x + j) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
        float mx = -INFINITY;
#pragma unroll
        for (int i = 0; i < V; i++) {
            int j = 4 * (i * SMR_THREADS + threadIdx.x);
            if (j < valid) mx = fmaxf(mx, e[i].x);
            if (j + 1 < valid) mx = fmaxf(mx, e[i].y);
            if (j + 2 < valid) mx = fmaxf(mx, e[i].z);
            if (j + 3 < valid) mx = fmaxf(mx, e[i].w);
        }
        mx = block_max(mx, red);
        float sum = 0.0f;
#pragma unroll
        for (int i = 0; i < V; i++) {
            int j = 4 * (i * SMR_THREADS + threadIdx.x);
            e[i].x = j < valid ? expf(e[i].x - mx) : 0.0f;
            e[i].y = j + 1 < valid ? expf(e[i].y - mx) : 0.0f;
            e[i].z = j + 2 < valid ? expf(e[i].z - mx) : 0.0f;
            e[i].w = j + 3 < valid ? expf(e[i].w - mx) : 0.0f;
            sum += (e[i].x + e[i].y) + (e[i].z + e[i].w);
        }
        const float inv = 1.0f / block_sum(sum, red);
#pragma unroll
        for (int i = 0; i < V; i++) {
            int j = 4 * (i * SMR_THREADS + threadIdx.x);
            if (j >= cols) continue;
            __nv_bfloat162 lo = __floats2bfloat162_rn(e[i].x * inv, e[i].y * inv);
            __nv_bfloat162 hi = __floats2bfloat162_rn(e[i].z * inv, e[i].w * inv);
            uint2 u = make_uint2(*reinterpret_cast<uint32_t *>(&lo), *reinterpret_cast<uint32_t *>(&hi));
            *reinterpret_cast<uint2 *>(y + j) = u;
        }
    }
}

extern "C" cudaError_t zi_softmax_rows_cuda(void *p, const float *s, int rows, int cols, int ld, int row0, int causal,
                                            cudaStream_t stream) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    const unsigned grid = rows < 65535 ? rows : 65535;
    const bool reg = cols % 4 == 0 && ld % 4 == 0 && is_aligned16(s) && ((uintptr_t)p & 7u) == 0;
    if (reg && cols <= 4 * 4 * SMR_THREADS)
        softmax_rows_reg_kernel<4><<<grid, SMR_THREADS, 0, stream>>>((bf16 *)p, s, rows, cols, ld, row0, causal);
    else if (reg && cols <= 4 * 8 * SMR_THREADS)
        softmax_rows_reg_kernel<8><<<grid, SMR_THREADS, 0, stream>>>((bf16 *)p, s, rows, cols, ld, row0, causal);
    else
        softmax_rows_kernel<<<grid, 256, 0, stream>>>((bf16 *)p, s, rows, cols, ld, row0, causal);
    return cudaGetLastError();
}
