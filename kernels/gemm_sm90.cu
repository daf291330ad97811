/*
 * gemm_sm90.cu - Hopper (sm_90a) GEMM of the DiT feed-forward, with its SwiGLU fused into the epilogue:
 *   swiglu: out[M,F] = silu(bf16(in @ w[0:F]^T)) * bf16(in @ w[F:2F]^T), w = [2F, K] (gate rows, then up)
 *   plain:  out[M,N] = in[M,K] @ w[N,K]^T
 * in, w, out bf16 row-major, fp32 accumulation. The swiglu epilogue rounds gate and up to bf16 and
 * computes silu_mul (common.cuh) in fp32, exactly the rounding points of matmul + swiglu_pair.
 *
 * gemm_sm90_kernel: persistent (one CTA per SM, tiles t = blockIdx.x, blockIdx.x + gridDim.x, ...), 3 warpgroups.
 *   Output tile: 128 rows x 256 accumulator columns. swiglu: columns 0..127 are gate features
 *   n0..n0+127 (w rows n0..), columns 128..255 the up features of the same n0 (w rows F+n0..), so a
 *   thread holds the gate and the up of each of its outputs (accumulator column j and j + 128) and
 *   128 outputs come out; plain: 256 output columns (w rows n0..n0+255). Tile order: row tile
 *   fastest within bands of ZI_GEMM90_GROUP_M row tiles (g90_tile).
 *   warpgroup 0, the producer: one thread issues TMA loads (128-byte swizzle) of the A tile
 *     [128 rows][64 k] and the two B halves [128 w rows][64 k] per k-step into a ring of G90_STAGES
 *     stages; per stage an mbarrier "full" (TMA bytes landed) and one "empty" (both consumers are done
 *     with it). It runs ahead across tiles, so the next tile's loads overlap this tile's epilogue.
 *     Rows past M, w rows past N (plain) and k past K arrive as zeros.
 *   warpgroups 1 and 2, the consumers: 64 rows each, a 64x256 fp32 accumulator (128 registers per
 *     thread); per k-step 4 wgmma m64n256k16 (A and B K-major in shared memory), one wgmma group kept
 *     in flight (the stage of k-step kt-1 is released once k-step kt's group is issued and kt-1's
 *     has completed). Epilogue: results (bf16) staged in shared memory in the 128-byte swizzle, then one
 *     TMA store per 64 x 64 box, left running while the next tile's k-loop starts.
 *   setmaxnreg moves registers from the producer (40) to the consumers (232).
 *   Lab knobs (-D...): ZI_GEMM90_STAGES (ring depth), ZI_GEMM90_TMA_STORE (0: 4-byte stores from registers
 *   through `out`), ZI_GEMM90_OVERLAP (1: the next tile's first k-step is issued before the epilogue),
 *   ZI_GEMM90_GROUP_M (the band height of the tile order).
 *   Their non-default settings measured slower or equal; see benchmarks/kernels/README.md.
 * sm_90a code only inside ZI_SM90_DEVICE_CODE (sm90.cuh): compiles for every arch of the fat binary;
 * the host runs it only where the sm_90a probe says the loaded code is sm_90a.
 * Environment: ZIMAGE_GEMM_SM90=0 turns this path off (read once). Timings: benchmarks/kernels/README.md.
 */
#include "sm90.cuh"

#define G90_BM 128          /* rows per tile = 2 consumer warpgroups x 64                     */
#define G90_BN 256          /* accumulator columns per tile (w rows per k-step)               */
#define G90_BK 64           /* k per stage: one 128-byte swizzle row                          */
#ifndef ZI_GEMM90_STAGES
#define ZI_GEMM90_STAGES 4  /* ring depth (4 x 48 KB)                                         */
#endif
#define G90_STAGES ZI_GEMM90_STAGES
#ifndef ZI_GEMM90_TMA_STORE
#define ZI_GEMM90_TMA_STORE 1 /* lab knob: 0 stores the epilogue straight from registers */
#endif
#ifndef ZI_GEMM90_OVERLAP
#define ZI_GEMM90_OVERLAP 0   /* lab knob: 1 issues the next tile's first k-step before the epilogue */
#endif
#ifndef ZI_GEMM90_GROUP_M
#define ZI_GEMM90_GROUP_M 8   /* row tiles per band of the tile order (0: row tile fastest over all rows) */
#endif
#define G90_THREADS 384
#define G90_PRODUCER_REGS 40
#define G90_CONSUMER_REGS 232 /* 128 x 40 + 256 x 232 <= 65536 */

/* shared memory, from a 1024-byte aligned base: per stage A [128 rows][128 B] then B [256 w rows][128 B]
   (B half 1 = rows 0..127, half 2 = rows 128..255, one K-major tile of 256 rows); then the output staging
   of each consumer [2 halves of 64 columns][64 rows][128 B] (128-byte swizzled, as the TMA store reads it);
   then the mbarriers. 4 stages: 192 KB + 32 KB. */
#define G90_A_BYTES (G90_BM * 128)
#define G90_B_HALF (128 * 128)
#define G90_STAGE_BYTES (G90_A_BYTES + 2 * G90_B_HALF)
#define G90_OUT_OFF (G90_STAGES * G90_STAGE_BYTES)
#define G90_OUT_HALF (64 * 128)         /* one consumer's 64 rows x 64 output columns (bf16)  */
#define G90_OUT_BYTES (2 * G90_OUT_HALF) /* per consumer: 64 rows x 128 output columns         */
#define G90_BAR_OFF (G90_OUT_OFF + 2 * G90_OUT_BYTES)
#define G90_SMEM_BYTES (1024 + G90_BAR_OFF + 8 * 2 * G90_STAGES) /* full[], empty[] */

#ifdef ZI_SM90_DEVICE_CODE

/* silu_mul of the bf16 pairs (gate lo, gate hi) x (up lo, up hi) -> bf16 pair */
static __device__ __forceinline__ uint32_t silu_mul_bf16x2(uint32_t gate, uint32_t up) {
    float g0 = __uint_as_float(gate << 16), g1 = __uint_as_float(gate & 0xFFFF0000u);
    float u0 = __uint_as_float(up << 16), u1 = __uint_as_float(up & 0xFFFF0000u);
    return pack_bf16x2(silu_mul(g0, u0), silu_mul(g1, u1));
}

/* issues k-step `it` of this consumer (cw) as one wgmma group: waits for its stage, then 4 wgmma m64n256k16
   (k-step kk of 16: 32 kk bytes into every swizzled 128-byte row; 8-row groups 1024 B apart);
   first: the tile's first k-step (overwrites acc); wait = false: no wait for the stage (its contents are not used) */
static __device__ __forceinline__ void g90_issue(float (&acc)[128], uint32_t sbase, uint32_t full, int it, int cw,
                                                 bool first, bool wait = true) {
    int s = it % G90_STAGES;
    uint32_t a_addr = sbase + s * G90_STAGE_BYTES + cw * 64 * 128, b_addr = sbase + s * G90_STAGE_BYTES + G90_A_BYTES;
    if (wait) mbar_wait(full + 8 * s, (it / G90_STAGES) & 1);
    reg_fence(acc);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < G90_BK / 16; kk++)
        wgmma_ss_n256(acc, wg_desc(a_addr + kk * 32, 16, 1024), wg_desc(b_addr + kk * 32, 16, 1024), !first || kk > 0);
    wg_commit();
    reg_fence(acc);
}
#endif /* ZI_SM90_DEVICE_CODE */

/* Tile t -> row tile *mt, column tile *nt. The rows are cut into bands of ZI_GEMM90_GROUP_M row tiles; a
   band's tiles are walked column by column, its row tiles fastest. So the ~132 CTAs of a wave share
   GROUP_M row tiles of `in` and ~132 / GROUP_M weight tiles, each tile read by a handful of CTAs at once.
   (Row tile fastest over all rows made every CTA of a wave read one of a few weight tiles in lockstep: with
   33 row tiles (M = 4128) and 132 CTAs each CTA kept its row tile for good and the feed-forward ran 16%
   slower than at M = 4096.) */
#ifdef ZI_SM90_DEVICE_CODE
static __device__ __forceinline__ void g90_tile(int t, int n_mt, int n_tiles, int *mt, int *nt) {
    if (ZI_GEMM90_GROUP_M <= 0) {
        *mt = t % n_mt, *nt = t / n_mt;
        return;
    }
    int n_nt = n_tiles / n_mt, per_band = ZI_GEMM90_GROUP_M * n_nt;
    int band = t / per_band, r = t % per_band;
    int rows = n_mt - band * ZI_GEMM90_GROUP_M < ZI_GEMM90_GROUP_M ? n_mt - band * ZI_GEMM90_GROUP_M : ZI_GEMM90_GROUP_M;
    *mt = band * ZI_GEMM90_GROUP_M + r % rows, *nt = r / rows;
}
#endif

/* SWIGLU: out[M, n_out] with n_out = F (w has 2F rows); else out[M, N], n_out = N = w rows.
   n_mt row tiles, n_tiles = n_mt x column tiles. */
template <bool SWIGLU>
__global__ void __launch_bounds__(G90_THREADS, 1)
    gemm_sm90_kernel(const __grid_constant__ CUtensorMap tm_a, const __grid_constant__ CUtensorMap tm_w,
                     const __grid_constant__ CUtensorMap tm_out, bf16 *out, int M, int K, int n_out, int n_mt,
                     int n_tiles) {
#ifdef ZI_SM90_DEVICE_CODE
    extern __shared__ unsigned char g90_smem_raw[];
    unsigned char *sm = g90_smem_raw + ((1024 - (smem_u32(g90_smem_raw) & 1023)) & 1023);
    uint32_t sbase = smem_u32(sm);
    uint32_t full = sbase + G90_BAR_OFF, empty = full + 8 * G90_STAGES; /* + 8 * stage */
    const int n_k = (K + G90_BK - 1) / G90_BK;
    const int cols_per_tile = SWIGLU ? G90_BN / 2 : G90_BN; /* outputs per tile row */
    int wg = threadIdx.x / 128;

    if (threadIdx.x == 0) {
        for (int s = 0; s < G90_STAGES; s++) {
            mbar_init(full + 8 * s, 1);
            mbar_init(empty + 8 * s, 8); /* lane 0 of each of the 8 consumer warps */
        }
        mbar_init_fence();
    }
    __syncthreads(); /* the mbarriers are initialised before any thread waits on them or TMA signals them */

    if (wg == 0) {
        // ---------------- producer ----------------
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(G90_PRODUCER_REGS));
        if (threadIdx.x == 0) {
            int it = 0; /* k-steps issued by this CTA over all its tiles: stage it % STAGES, use it / STAGES */
            for (int t = blockIdx.x; t < n_tiles; t += gridDim.x) {
                int mt, nt;
                g90_tile(t, n_mt, n_tiles, &mt, &nt);
                int row0 = mt * G90_BM, n0 = nt * cols_per_tile;
                int w_lo = n0, w_hi = SWIGLU ? n_out + n0 : n0 + 128; /* w rows of B halves 1 and 2 */
                for (int kt = 0; kt < n_k; kt++, it++) {
                    int s = it % G90_STAGES;
                    uint32_t dst = sbase + s * G90_STAGE_BYTES, bar = full + 8 * s;
                    /* completion (it / STAGES - 1) of the stage's empty barrier: both consumers read it */
                    if (it >= G90_STAGES) mbar_wait(empty + 8 * s, ((it / G90_STAGES) + 1) & 1);
                    mbar_expect_tx(bar, G90_STAGE_BYTES);
                    tma_load_2d(dst, &tm_a, kt * G90_BK, row0, bar);
                    tma_load_2d(dst + G90_A_BYTES, &tm_w, kt * G90_BK, w_lo, bar);
                    tma_load_2d(dst + G90_A_BYTES + G90_B_HALF, &tm_w, kt * G90_BK, w_hi, bar);
                }
            }
        }
    } else {
        // ---------------- consumers ----------------
        asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(G90_CONSUMER_REGS));
        int cw = wg - 1, tid = threadIdx.x % 128, warp = tid / 32, lane = tid % 32, g = lane / 4, tq = lane % 4;
        float acc[128];
        uint32_t pk[64]; /* the finished tile as bf16 pairs: pk[2 nb + hr] = acc[4 nb + 2 hr], acc[4 nb + 2 hr + 1] */
#pragma unroll
        for (int i = 0; i < 128; i++) acc[i] = 0.0f;
        int it = 0; /* k-steps consumed by this CTA over all its tiles (as the producer counts) */
#if ZI_GEMM90_OVERLAP
        /* the first k-step of every tile is issued before the previous tile's epilogue (every CTA has a tile:
           grid <= n_tiles), so the tensor cores work during it; the epilogue reads only pk. Unconditional, so
           that no branch joins in-flight accumulators (ptxas would insert a wait there): after the last tile
           a k-step of a stale stage is issued and its result dropped. */
        g90_issue(acc, sbase, full, 0, cw, true);
        for (int t = blockIdx.x; t < n_tiles; t += gridDim.x) {
            int mt, nt;
            g90_tile(t, n_mt, n_tiles, &mt, &nt);
            int n0 = nt * cols_per_tile;
            for (int kt = 1; kt < n_k; kt++) {
                it++;
                g90_issue(acc, sbase, full, it, cw, false);
                wg_wait<1>(); /* k-step it-1's group has completed: its stage is free */
                if (lane == 0) mbar_arrive(empty + 8 * ((it - 1) % G90_STAGES));
            }
            wg_wait<0>(); /* the tile's last group has completed: acc is final, its stage is free */
            reg_fence(acc);
            if (lane == 0) mbar_arrive(empty + 8 * (it % G90_STAGES));
            it++;
#pragma unroll
            for (int j = 0; j < 64; j++) pk[j] = pack_bf16x2(acc[2 * j], acc[2 * j + 1]);
            reg_fence(pk); /* pk is computed here, before the next wgmma overwrites acc (volatile asm order) */
            g90_issue(acc, sbase, full, it, cw, true, t + (int)gridDim.x < n_tiles);
#else
        for (int t = blockIdx.x; t < n_tiles; t += gridDim.x) {
            int mt, nt;
            g90_tile(t, n_mt, n_tiles, &mt, &nt);
            int n0 = nt * cols_per_tile;
            for (int kt = 0; kt < n_k; kt++, it++) {
                g90_issue(acc, sbase, full, it, cw, kt == 0);
                wg_wait<1>(); /* k-step kt-1's group has completed: its stage is free */
                if (kt > 0 && lane == 0) mbar_arrive(empty + 8 * ((it - 1) % G90_STAGES));
            }
            wg_wait<0>(); /* the tile's last group has completed: acc is final, its stage is free */
            reg_fence(acc);
            if (lane == 0) mbar_arrive(empty + 8 * ((it - 1) % G90_STAGES));
            /* rounded to bf16: the outputs (plain), or gate and up as the unfused path stores them (swiglu) */
#pragma unroll
            for (int j = 0; j < 64; j++) pk[j] = pack_bf16x2(acc[2 * j], acc[2 * j + 1]);
#endif

            /* epilogue: bf16 results -> this consumer's staging (128-byte swizzle: 16-byte chunk c of row r at
               chunk c ^ (r % 8), conflict-free) -> TMA store of [64 rows][128 columns], which runs on while the
               next tile's k-loop goes; rows >= M are not written (ZI_GEMM90_TMA_STORE=0: 4-byte global stores
               from registers instead). Accumulator layout (per warp 16 rows): acc[4 nb + e] is row g + 8 (e >> 1),
               column 8 nb + 2 tq + (e & 1). swiglu: one round (gate column j and up column j + 128 -> output j);
               plain: two rounds of 128 columns. */
            int orow0 = mt * G90_BM + cw * 64;
            uint32_t stage_out = sbase + G90_OUT_OFF + cw * G90_OUT_BYTES;
#pragma unroll
            for (int rd = 0; rd < (SWIGLU ? 1 : 2); rd++) {
                if (ZI_GEMM90_TMA_STORE) {
                    if (tid == 0) tma_store_wait_read<0>();
                    asm volatile("bar.sync %0, 128;\n" ::"r"(1 + cw) : "memory"); /* the staging's last store has read it */
                }
#pragma unroll
                for (int nb = 0; nb < 16; nb++)
#pragma unroll
                    for (int hr = 0; hr < 2; hr++) {
                        int j = 2 * nb + hr + 32 * rd, r = 16 * warp + g + 8 * hr, c = nb % 8;
                        uint32_t v = SWIGLU ? silu_mul_bf16x2(pk[j], pk[j + 32]) : pk[j];
                        if (ZI_GEMM90_TMA_STORE) {
                            uint32_t dst = stage_out + (nb / 8) * G90_OUT_HALF + r * 128 + ((c ^ (r % 8)) * 16) + tq * 4;
                            asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(dst), "r"(v) : "memory");
                        } else {
                            int col = n0 + 128 * rd + 8 * nb + 2 * tq;
                            if (orow0 + r < M && col < n_out)
                                *reinterpret_cast<uint32_t *>(out + (size_t)(orow0 + r) * n_out + col) = v;
                        }
                    }
                if (ZI_GEMM90_TMA_STORE) {
                    fence_async_smem();
                    asm volatile("bar.sync %0, 128;\n" ::"r"(1 + cw) : "memory"); /* all 128 threads' staging writes are in */
                    int col = n0 + 128 * rd;
                    if (tid == 0 && orow0 < M && col < n_out) {
                        tma_store_2d(&tm_out, stage_out, col, orow0);
                        if (col + 64 < n_out) tma_store_2d(&tm_out, stage_out + G90_OUT_HALF, col + 64, orow0);
                        tma_store_commit();
                    }
                }
            }
        }
        if (ZI_GEMM90_OVERLAP) wg_wait<0>(); /* the dropped k-step after the last tile */
        if (tid == 0) tma_store_wait<0>(); /* the last stores are complete before the CTA (and its smem) goes */
    }
#endif
}

// ----------------------------------------------------------------------------------------------
// host side

/* swiglu: n_out = F, w [2F, K]; else n_out = N, w [N, K]. *taken = 0 (nothing launched) when this
   call does not suit the kernel. */
static cudaError_t gemm_sm90_launch(bool swiglu, void *out, const void *in, const void *w, int M, int K, int n_out,
                                    cudaStream_t stream, int *taken) {
    static int disabled_cache = -1, ready[ZI_SM90_MAX_DEVICES];
    static const void *const kernels[] = {(const void *)gemm_sm90_kernel<true>, (const void *)gemm_sm90_kernel<false>};
    *taken = 0;
    if (sm90_env_off("ZIMAGE_GEMM_SM90", &disabled_cache) || M <= 0 || K <= 0 || n_out <= 0 || K % 8 ||
        (swiglu ? n_out % 128 : n_out % 8))
        return cudaSuccess;
    if (!is_aligned16(out) || !is_aligned16(in) || !is_aligned16(w)) return cudaSuccess;
    int dev = 0, n_sm = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || !sm90_kernels_ready(ready, dev, stream, G90_SMEM_BYTES, kernels, 2) ||
        cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n_sm <= 0) {
        (void)cudaGetLastError();
        return cudaSuccess;
    }
    PFN_cuTensorMapEncodeTiled_v12000 enc = tensor_map_encoder();
    if (!enc) return cudaSuccess;
    long w_rows = swiglu ? 2L * n_out : (long)n_out;
    if (w_rows > 0x7fffffffL) return cudaSuccess;
    CUtensorMap ma, mw, mo;
    if (!encode_map(enc, &ma, in, M, K, G90_BM) || !encode_map(enc, &mw, w, (int)w_rows, K, 128) ||
        !encode_map(enc, &mo, out, M, n_out, 64))
        return cudaSuccess;
    int cols_per_tile = swiglu ? G90_BN / 2 : G90_BN;
    long n_mt = (M + G90_BM - 1) / G90_BM, n_nt = (n_out + cols_per_tile - 1) / cols_per_tile;
    if (n_mt * n_nt > 0x7fffffffL) return cudaSuccess;
    int n_tiles = (int)(n_mt * n_nt), grid = n_tiles < n_sm ? n_tiles : n_sm;
    *taken = 1;
    if (swiglu)
        gemm_sm90_kernel<true><<<grid, G90_THREADS, G90_SMEM_BYTES, stream>>>(ma, mw, mo, (bf16 *)out, M, K, n_out, (int)n_mt,
                                                                              n_tiles);
    else
        gemm_sm90_kernel<false><<<grid, G90_THREADS, G90_SMEM_BYTES, stream>>>(ma, mw, mo, (bf16 *)out, M, K, n_out, (int)n_mt,
                                                                              n_tiles);
    return cudaGetLastError();
}

extern "C" cudaError_t zi_matmul_swiglu_sm90_cuda(void *out, const void *in, const void *w, int M, int K, int F,
                                                  cudaStream_t stream, int *taken) {
    return gemm_sm90_launch(true, out, in, w, M, K, F, stream, taken);
}

extern "C" cudaError_t zi_matmul_sm90_cuda(void *out, const void *in, const void *w, int M, int K, int N,
                                           cudaStream_t stream, int *taken) {
    return gemm_sm90_launch(false, out, in, w, M, K, N, stream, taken);
}
