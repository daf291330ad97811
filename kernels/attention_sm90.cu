/*
 * attention_sm90.cu - flash-attention forward for Hopper (sm_90a) at head dim 128: the fast path
 * behind zi_attention_cuda (attention.cu) on compute capability 9.x devices.
 *
 * attention_sm90_kernel<NCW, BN>: one CTA = BM = 64 NCW query rows of one head, NCW + 1 warpgroups.
 *   warpgroup 0, the producer: one thread issues TMA tile loads (cp.async.bulk.tensor, 128-byte
 *     swizzle, tensor maps encoded on the host) of the Q tile and of the K and V tiles of BN keys
 *     into a ring of A90_STAGES shared-memory stages; an mbarrier per tile says "landed" (full) and
 *     one per stage and operand says "free again" (empty). Rows past S arrive as zeros.
 *   warpgroups 1..NCW, the consumers: 64 query rows each. Per key tile t:
 *     S_t = Q K_t^T       wgmma m64nBNk16, Q and K both K-major from shared memory (8 k-steps);
 *     online softmax      in registers on the fp32 accumulators, base 2 with the scale folded into
 *                         one FMA, keys >= S (and, causal, keys > row) set to -inf first; with 3
 *                         consumers a row's running max moves only when a tile exceeds it by more than
 *                         2^8 (FA4's rule, exact in real arithmetic: P <= 256), so O is rescaled in a
 *                         handful of tiles instead of every one (ZI_ATTN90_RESCALE3);
 *     O += P_t V_t        wgmma m64n128k16 with P (bf16) as the register A operand (the S
 *                         accumulator layout is the A-fragment layout) and V MN-major from shared
 *                         memory (transposed B), BN / 16 k-steps of 16 keys.
 *     With 2 consumers the loop is software-pipelined inside the warpgroup: S_t = Q K_t^T and
 *     O += P_{t-1} V_{t-1} are issued back to back, the softmax of tile t runs while the tensor cores
 *     do P_{t-1} V_{t-1}. With 3 consumers each one runs S_t, softmax_t, P_t V_t in turn (S and P of
 *     a tile never live together: O + S = 128 of its 160 registers) and the tensor cores overlap one
 *     consumer's softmax with the others' products.
 *     A consumer whose 64 rows all lie past S (the last query tile) exits at once; the empty
 *     barriers count only the working consumers' warps.
 *   The output is divided by the row sums, staged as bf16 through the warpgroup's (now unused) part
 *   of the Q tile and written with 16-byte coalesced stores; rows >= S are not stored.
 *   setmaxnreg moves registers from the producer to the consumers (40 / 232 for 2 consumers,
 *   32 / 160 for 3).
 * Two tile shapes (the wave count decides, a90_pick_bm):
 *   BM = 128: 2 consumers, BN = 128 keys (ZI_ATTN90_BN2), causal calls always take it;
 *   BM = 192: 3 consumers, BN = 128 keys (ZI_ATTN90_BN3), no intra-warpgroup overlap (with it, 160
 *     registers do not hold O, S and P of 96 or 128 keys: ptxas spills and serialises the wgmma; of
 *     64 keys they do, but that ran slower), non-causal only.
 *   At the DiT's S = 4128 with 30 heads on 132 SMs, BM = 128 gives 990 CTAs = 7.5 waves (the last
 *   half empty), BM = 192 gives 660 = exactly 5 waves of 1.5x the rows; per row the 192-row kernel
 *   is also a few percent faster, so it is taken wherever its waves cost no more rows.
 *   Lab knobs (-D...): ZI_ATTN90_STAGES (ring depth), ZI_ATTN90_PINGPONG (the consumers take turns
 *   issuing their wgmma batches, FA3's inter-warpgroup schedule), ZI_ATTN90_BN2 / ZI_ATTN90_BN3 (keys
 *   per tile: 128 or 176 / 64, 96 or 128), ZI_ATTN90_OVERLAP3=1 (the 3-consumer kernel with the
 *   intra-warpgroup overlap; BN3 = 64 then), ZI_ATTN90_PSMEM3=1 or 2 (the 3-consumer kernel writes P to
 *   shared memory and issues S_t = Q K_t^T with O += P_{t-1} V_{t-1} from shared memory: O + S in
 *   registers, but ~11% slower, the extra shared-memory traffic of the SS product), ZI_ATTN90_RESCALE3.
 *   Timings: benchmarks/kernels/README.md.
 *
 * All sm_90a-only device code is inside `#ifdef ZI_SM90_DEVICE_CODE`: the file compiles for every
 * arch of the fat binary, and the sm_90a probe (sm90.cuh) tells the host (once per device) whether the
 * loaded binary really holds sm_90a code, so an sm_80-only build JIT-compiled on an H100 never runs
 * the empty kernel body. The PTX wrappers, the probe and the tensor-map helpers live in sm90.cuh
 * (shared with gemm_sm90.cu). Environment: ZIMAGE_ATTN_SM90=0 turns this path off, ZIMAGE_ATTN90_BM=128 or
 * 192 forces a tile shape where it can run (read once; zi_attention_sm90_force_bm sets it in the lab).
 */
#include "sm90.cuh"

#include <math.h>

#define A90_HD 128            /* head dim (the only one this kernel takes)                     */
#ifndef ZI_ATTN90_STAGES
#define ZI_ATTN90_STAGES 2    /* K/V ring depth (lab knob: 2 or 3)                             */
#endif
#define A90_STAGES ZI_ATTN90_STAGES
#ifndef ZI_ATTN90_PINGPONG
#define ZI_ATTN90_PINGPONG 0  /* lab knob: 1 makes the consumers take turns issuing their wgmma */
#endif
#ifndef ZI_ATTN90_BN2
#define ZI_ATTN90_BN2 128     /* keys per tile with 2 consumers (BM = 128): 128 or 176         */
#endif
#ifndef ZI_ATTN90_BN3
#define ZI_ATTN90_BN3 128     /* keys per tile with 3 consumers (BM = 192): 64, 96 or 128      */
#endif
#ifndef ZI_ATTN90_OVERLAP3
#define ZI_ATTN90_OVERLAP3 0  /* 1: the 3-consumer kernel overlaps softmax_t with P_{t-1} V_{t-1} */
#endif
#ifndef ZI_ATTN90_PSMEM3
#define ZI_ATTN90_PSMEM3 0    /* 3 consumers: 1 = P through shared memory (S_t issued with P_{t-1} V_{t-1}),
                                 2 = the same with a warp-level sync before P V instead of the warpgroup's */
#endif
#ifndef ZI_ATTN90_RESCALE3
#define ZI_ATTN90_RESCALE3 2  /* 3 consumers: 2 = a row's max is kept until a tile exceeds it by 2^8 (FA4's
                                 rule), O rescaled only then; 1 = rescaled only where a row's max moved
                                 (bit-exact); 0 = every tile (round 1) */
#endif
#ifndef ZI_ATTN90_PREGS3
#define ZI_ATTN90_PREGS3 32   /* setmaxnreg with 3 consumers: producer, consumers (<= 65536 in all) */
#endif
#ifndef ZI_ATTN90_CREGS3
#define ZI_ATTN90_CREGS3 160
#endif

/* Tile geometry of attention_sm90_kernel<NCW, BN>. Shared memory, from a 1024-byte aligned base (the
   128-byte swizzle repeats every 1024 bytes): Q [2 halves of 64 dims][BM rows][128 B], then per stage K
   and V [2 halves][BN keys][128 B], then the mbarriers. */
template <int NCW, int BN>
struct A90 {
    static constexpr int BM = 64 * NCW, THREADS = 128 * (NCW + 1);
    /* registers: 40 x 128 + 232 x 256 <= 65536; 32 x 128 + 160 x 384 = 65536 */
    static constexpr int PRODUCER_REGS = NCW == 2 ? 40 : ZI_ATTN90_PREGS3;
    static constexpr int CONSUMER_REGS = NCW == 2 ? 232 : ZI_ATTN90_CREGS3;
    static constexpr int HALF_Q = BM * 128, HALF_KV = BN * 128, Q_BYTES = 2 * HALF_Q, KV_BYTES = 2 * HALF_KV;
    static constexpr int K_OFF = Q_BYTES, V_OFF = K_OFF + A90_STAGES * KV_BYTES;
    /* ZI_ATTN90_PSMEM3: each consumer's P tile [BN / 64 halves][64 rows][128 B] after the ring */
    static constexpr bool P_SMEM = NCW == 3 && ZI_ATTN90_PSMEM3 != 0;
    static constexpr int HALF_P = 64 * 128, P_BYTES = BN * 128, P_OFF = V_OFF + A90_STAGES * KV_BYTES;
    static constexpr int BAR_OFF = P_OFF + (P_SMEM ? NCW * P_BYTES : 0);
    static constexpr int NBAR = 1 + 4 * A90_STAGES; /* q_full, k_full[], v_full[], k_empty[], v_empty[] */
    static constexpr int SMEM_BYTES = 1024 + BAR_OFF + 8 * NBAR;
    static_assert(NCW == 2 || NCW == 3, "2 or 3 consumer warpgroups");
    static_assert(BN % 16 == 0 && BN <= 256, "BN keys: whole k-steps of P V, one TMA box");
    static_assert(!P_SMEM || BN % 64 == 0, "P in shared memory: whole 64-key halves");
    static_assert(SMEM_BYTES <= 232448, "227 KiB of shared memory per block");
};
typedef A90<2, ZI_ATTN90_BN2> A90Bm128;
typedef A90<3, ZI_ATTN90_BN3> A90Bm192;

#define A90_LOG2E 1.4426950408889634f

// ----------------------------------------------------------------------------------------------
// PTX wrappers (sm_90a)

#ifdef ZI_SM90_DEVICE_CODE
/* d[64x128] += A[64x16] B[16x128]; A in registers (4 x bf16x2 per thread), B MN-major in shared memory */
static __device__ __forceinline__ void wgmma_rs(float (&d)[64], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                uint64_t db) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " SM90_ACC64_STR
                 ", {%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n"
                 : SM90_ACC64_OPS(d)
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(db));
}

/* d[64xBN] (+)= A[64x16] B[16xBN]; A and B K-major in shared memory; accumulate == 0 overwrites d */
template <int BN>
__device__ __forceinline__ void a90_wgmma_qk(float (&d)[BN / 2], uint64_t da, uint64_t db, int accumulate);
template <>
__device__ __forceinline__ void a90_wgmma_qk<128>(float (&d)[64], uint64_t da, uint64_t db, int accumulate) {
    wgmma_ss_n128(d, da, db, accumulate);
}
/* "+f"(d[i]) .. "+f"(d[i + 7]): eight accumulator operands of inline wgmma PTX */
#define A90_OPS8(d, i) \
    "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), \
        "+f"(d[i + 7])

template <>
__device__ __forceinline__ void a90_wgmma_qk<64>(float (&d)[32], uint64_t da, uint64_t db, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
        "}, %32, %33, p, 1, 1, 0, 0;\n}\n"
        : A90_OPS8(d, 0), A90_OPS8(d, 8), A90_OPS8(d, 16), A90_OPS8(d, 24)
        : "l"(da), "l"(db), "r"(accumulate));
}
template <>
__device__ __forceinline__ void a90_wgmma_qk<96>(float (&d)[48], uint64_t da, uint64_t db, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %50, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n96k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47"
        "}, %48, %49, p, 1, 1, 0, 0;\n}\n"
        : A90_OPS8(d, 0), A90_OPS8(d, 8), A90_OPS8(d, 16), A90_OPS8(d, 24), A90_OPS8(d, 32), A90_OPS8(d, 40)
        : "l"(da), "l"(db), "r"(accumulate));
}
template <>
__device__ __forceinline__ void a90_wgmma_qk<176>(float (&d)[88], uint64_t da, uint64_t db, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %90, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n176k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87"
        "}, %88, %89, p, 1, 1, 0, 0;\n}\n"
        : A90_OPS8(d, 0), A90_OPS8(d, 8), A90_OPS8(d, 16), A90_OPS8(d, 24), A90_OPS8(d, 32), A90_OPS8(d, 40),
          A90_OPS8(d, 48), A90_OPS8(d, 56), A90_OPS8(d, 64), A90_OPS8(d, 72), A90_OPS8(d, 80)
        : "l"(da), "l"(db), "r"(accumulate));
}

static __device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
// ----------------------------------------------------------------------------------------------
// consumer: 64 query rows (rows q0 + 64 cw ...), 128 threads

/* Online softmax of one tile on the fp32 scores s (in place: s becomes p = 2^((s - m) scale log2e)).
   Accumulator layout (per warp 16 rows): s[4 nb + e] is row g + 8 (e >> 1), key nb*8 + 2 tq + (e & 1). */
/* LAZY (ZI_ATTN90_RESCALE3 = 2): the running max m of a row stays where the tile's max exceeds it by at most
   8 in the base-2 exponent (then p <= 2^8: exact in fp32 sums, and bf16 P keeps its relative precision),
   so alpha = 1 and O needs no rescale in almost every tile; l and O use the same m, so out = O / l is
   unchanged in exact arithmetic. Returns whether any alpha of this thread differs from 1. */
template <int BN, bool LAZY = false>
static __device__ __forceinline__ bool a90_softmax(float (&s)[BN / 2], float (&m)[2], float (&l)[2], float (&alpha)[2],
                                                   bool mask, int key0, int row0, int S, int causal, float sl2) {
    int lane = threadIdx.x % 32, tq = lane % 4;
    if (mask) {
#pragma unroll
        for (int nb = 0; nb < BN / 8; nb++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int key = key0 + nb * 8 + 2 * tq + (e & 1), row = row0 + 8 * (e >> 1);
                if (key >= S || (causal && key > row)) s[4 * nb + e] = -INFINITY;
            }
    }
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int nb = 0; nb < BN / 8; nb++) {
        mx[0] = fmaxf(mx[0], fmaxf(s[4 * nb], s[4 * nb + 1]));
        mx[1] = fmaxf(mx[1], fmaxf(s[4 * nb + 2], s[4 * nb + 3]));
    }
    float msub[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        /* every row has a valid key in every tile it visits (key 0 in tile 0; the diagonal key in a
           causal diagonal tile, where BM = BN = 128), so mx is finite; m = -inf before the first tile
           gives alpha = 0 */
        if (LAZY && (mx[r] - m[r]) * sl2 <= 8.0f) { /* false for m = -inf (first tile) */
            msub[r] = m[r] * sl2;
            alpha[r] = 1.0f;
        } else {
            msub[r] = mx[r] * sl2;
            alpha[r] = fast_exp2(fmaf(m[r], sl2, -msub[r]));
            m[r] = mx[r];
        }
    }
    float lsum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int nb = 0; nb < BN / 8; nb++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float p = fast_exp2(fmaf(s[4 * nb + e], sl2, -msub[e >> 1]));
            s[4 * nb + e] = p;
            lsum[e >> 1] += p;
        }
#pragma unroll
    for (int r = 0; r < 2; r++) l[r] = l[r] * alpha[r] + lsum[r];
    return alpha[0] != 1.0f || alpha[1] != 1.0f;
}

/* S = Q K^T for this warpgroup's 64 rows: 8 k-steps of 16 dims; dim d of a row lives in half d / 64
   at byte (d % 64) * 2 of the (swizzled) 128-byte row, so k-step kk starts 32 (kk % 4) bytes into
   half kk / 4. Stride between 8-row groups: 1024 bytes. */
template <int NCW, int BN>
static __device__ __forceinline__ void a90_issue_qk(float (&s)[BN / 2], uint32_t q_addr, uint32_t k_addr) {
    typedef A90<NCW, BN> G;
    reg_fence(s);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < A90_HD / 16; kk++) {
        uint32_t off = (kk % 4) * 32;
        uint64_t da = wg_desc(q_addr + (kk / 4) * G::HALF_Q + off, 16, 1024);
        uint64_t db = wg_desc(k_addr + (kk / 4) * G::HALF_KV + off, 16, 1024);
        a90_wgmma_qk<BN>(s, da, db, kk > 0);
    }
    wg_commit();
    reg_fence(s);
}

/* O += P V: BN / 16 k-steps of 16 keys. V is [keys][dims] (MN-major for this product): within a half, key j
   is row j (128 bytes, 64 dims), 8-key groups 1024 bytes apart (SBO), the second 64 dims one half
   further (LBO); k-step ks starts at key 16 ks = byte 2048 ks. */
template <int NCW, int BN>
static __device__ __forceinline__ void a90_issue_pv(float (&o)[64], uint32_t (&p)[BN / 4], uint32_t v_addr) {
    reg_fence(o);
    reg_fence(p);
    wg_fence();
#pragma unroll
    for (int ks = 0; ks < BN / 16; ks++) {
        uint64_t db = wg_desc(v_addr + ks * 2048, A90<NCW, BN>::HALF_KV, 1024);
        wgmma_rs(o, p[4 * ks], p[4 * ks + 1], p[4 * ks + 2], p[4 * ks + 3], db);
    }
    wg_commit();
    reg_fence(o);
    reg_fence(p);
}

/* p (bf16 A fragments of O += P V) from the probabilities in s: k-step ks covers keys 16 ks .. 16 ks + 15
   = accumulator blocks 2 ks and 2 ks + 1; fragment order (row g, k lo), (g + 8, lo), (g, hi), (g + 8, hi) */
template <int BN>
static __device__ __forceinline__ void a90_pack_p(uint32_t (&p)[BN / 4], const float (&s)[BN / 2]) {
#pragma unroll
    for (int ks = 0; ks < BN / 16; ks++) {
        p[4 * ks + 0] = pack_bf16x2(s[8 * ks + 0], s[8 * ks + 1]);
        p[4 * ks + 1] = pack_bf16x2(s[8 * ks + 2], s[8 * ks + 3]);
        p[4 * ks + 2] = pack_bf16x2(s[8 * ks + 4], s[8 * ks + 5]);
        p[4 * ks + 3] = pack_bf16x2(s[8 * ks + 6], s[8 * ks + 7]);
    }
}
/* d[64x128] += A[64x16] B[16x128]; A K-major, B MN-major (transposed), both in shared memory */
__device__ __forceinline__ void wgmma_ss_n128_tb(float (&d)[64], uint64_t da, uint64_t db) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " SM90_ACC64_STR ", %64, %65, 1, 1, 1, 0, 1;\n"
                 : SM90_ACC64_OPS(d)
                 : "l"(da), "l"(db));
}

/* P (bf16 probabilities in s) of this warpgroup's 64 rows into its shared-memory tile, laid out as the
   K-major, 128-byte-swizzled A operand of O += P V: key k of row r in half k / 64, 16-byte chunk
   c = (k % 64) / 8 of the 128-byte row stored at chunk c ^ (r % 8) (conflict-free: the 8 rows g of a warp
   hit 8 different chunks). Accumulator block nb holds keys 8 nb + 2 tq, + 1 of rows g and g + 8. */
template <int BN>
static __device__ __forceinline__ void a90_store_p(unsigned char *p_tile, const float (&s)[BN / 2]) {
    int lane = threadIdx.x % 32, warp = (threadIdx.x % 128) / 32, g = lane / 4, tq = lane % 4;
#pragma unroll
    for (int nb = 0; nb < BN / 8; nb++)
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            int r = 16 * warp + g + 8 * hr, c = nb % 8;
            unsigned char *dst = p_tile + (nb / 8) * (64 * 128) + r * 128 + ((c ^ (r % 8)) * 16) + tq * 4;
            *reinterpret_cast<uint32_t *>(dst) = pack_bf16x2(s[4 * nb + 2 * hr], s[4 * nb + 2 * hr + 1]);
        }
}

/* O += P V with P from this warpgroup's shared-memory tile (A, K-major: k-step ks of 16 keys starts
   32 (ks % 4) bytes into half ks / 4, 8-row groups 1024 bytes apart) and V as in a90_issue_pv */
template <int NCW, int BN>
static __device__ __forceinline__ void a90_issue_pv_ss(float (&o)[64], uint32_t p_addr, uint32_t v_addr) {
    reg_fence(o);
    wg_fence();
#pragma unroll
    for (int ks = 0; ks < BN / 16; ks++) {
        uint64_t da = wg_desc(p_addr + (ks / 4) * (64 * 128) + (ks % 4) * 32, 16, 1024);
        uint64_t db = wg_desc(v_addr + ks * 2048, A90<NCW, BN>::HALF_KV, 1024);
        wgmma_ss_n128_tb(o, da, db);
    }
    wg_commit();
    reg_fence(o);
}

/* The P tile written by this thread is made visible to the tensor cores (async proxy), then either the
   whole warpgroup (named barrier 1 + cw, 128 threads: every warp's rows of P are in shared memory before
   any warp issues the P V that reads them) or, with ZI_ATTN90_PSMEM3 = 2, only the warp (FA3's choice: the
   rows of A that a warp's part of an m64 wgmma reads are the warp's own 16 rows) waits. */
static __device__ __forceinline__ void a90_p_ready(int cw) {
    fence_async_smem();
    if (ZI_ATTN90_PSMEM3 == 2)
        __syncwarp();
    else
        asm volatile("bar.sync %0, 128;\n" ::"r"(1 + cw) : "memory"); /* the warpgroup's P rows are all stored */
}
/* Ping-pong (ZI_ATTN90_PINGPONG, 2 consumers only): the two consumer warpgroups take turns issuing their
   wgmma batches, so one's softmax runs while the other's matrix products do. Turns alternate 0, 1, 0, 1, ...;
   consumer w waits on named barrier 3 + w (its 128 threads) until the other one passed it on (128 arrivals).
   Consumer 0 takes its first turn unasked, and consumer 1 does not pass on after its last turn, so
   every barrier phase gets exactly 256 arrivals. */
static __device__ __forceinline__ void pp_wait(int cw) { asm volatile("bar.sync %0, 256;\n" ::"r"(3 + cw) : "memory"); }
static __device__ __forceinline__ void pp_pass(int cw) { asm volatile("bar.arrive %0, 256;\n" ::"r"(4 - cw) : "memory"); }
#endif /* ZI_SM90_DEVICE_CODE */

// ----------------------------------------------------------------------------------------------

template <int NCW, int BN>
__global__ void __launch_bounds__(128 * (NCW + 1), 1)
    attention_sm90_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                          const __grid_constant__ CUtensorMap tm_v, bf16 *out, int S, int NH, int NKV, float sl2,
                          int causal, int n_qt) {
#ifdef ZI_SM90_DEVICE_CODE
    typedef A90<NCW, BN> G;
    constexpr bool PINGPONG = ZI_ATTN90_PINGPONG && NCW == 2;
    /* intra-warpgroup overlap of softmax_t with P_{t-1} V_{t-1} (O, S and P live at once) */
    constexpr bool OVERLAP = NCW == 2 || ZI_ATTN90_OVERLAP3;
    extern __shared__ unsigned char a90_smem_raw[];
    /* offset from the array itself (not an integer round-trip) keeps the accesses below st/ld.shared */
    unsigned char *sm = a90_smem_raw + ((1024 - (smem_u32(a90_smem_raw) & 1023)) & 1023);
    uint32_t sbase = smem_u32(sm);
    uint32_t q_full = sbase + G::BAR_OFF, k_full = q_full + 8, v_full = k_full + 8 * A90_STAGES,
             k_empty = v_full + 8 * A90_STAGES, v_empty = k_empty + 8 * A90_STAGES; /* + 8 * stage */

    /* tile of this CTA (1D grid, dispatched about in index order). Non-causal: head-major (the CTAs of
       a wave share K/V in L2). Causal: the longest q-tiles first, all heads of one q-tile together. */
    int b = blockIdx.x, qt = causal ? n_qt - 1 - b / NH : b % n_qt, h = causal ? b % NH : b / n_qt;
    int kvh = h / (NH / NKV), q0 = qt * G::BM;
    int n_tiles = (S + BN - 1) / BN;
    if (causal) n_tiles = min(n_tiles, (q0 + G::BM - 1) / BN + 1);
    int wg = threadIdx.x / 128;
    /* consumers with at least one row < S (the others exit at once; ping-pong needs both turns) */
    int n_work = PINGPONG ? NCW : min(NCW, (S - q0 + 63) / 64);

    if (threadIdx.x == 0) {
        mbar_init(q_full, 1);
        for (int s = 0; s < A90_STAGES; s++) {
            mbar_init(k_full + 8 * s, 1);
            mbar_init(v_full + 8 * s, 1);
            mbar_init(k_empty + 8 * s, 4 * n_work); /* lane 0 of each working consumer warp */
            mbar_init(v_empty + 8 * s, 4 * n_work);
        }
        mbar_init_fence();
    }
    __syncthreads(); /* the mbarriers are initialised before any thread waits on them or TMA signals them */

    if (wg == 0) {
        // ---------------- producer ----------------
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(G::PRODUCER_REGS));
        if (threadIdx.x == 0) {
            int qc = h * A90_HD, kc = kvh * A90_HD;
            mbar_expect_tx(q_full, G::Q_BYTES);
            tma_load_2d(sbase, &tm_q, qc, q0, q_full);
            tma_load_2d(sbase + G::HALF_Q, &tm_q, qc + 64, q0, q_full);
            for (int t = 0; t < n_tiles; t++) {
                int s = t % A90_STAGES;
                uint32_t par = ((t / A90_STAGES) + 1) & 1; /* completion t / STAGES - 1 of the empty barrier */
                uint32_t kdst = sbase + G::K_OFF + s * G::KV_BYTES, vdst = sbase + G::V_OFF + s * G::KV_BYTES;
                if (t >= A90_STAGES) mbar_wait(k_empty + 8 * s, par);
                mbar_expect_tx(k_full + 8 * s, G::KV_BYTES);
                tma_load_2d(kdst, &tm_k, kc, t * BN, k_full + 8 * s);
                tma_load_2d(kdst + G::HALF_KV, &tm_k, kc + 64, t * BN, k_full + 8 * s);
                if (t >= A90_STAGES) mbar_wait(v_empty + 8 * s, par);
                mbar_expect_tx(v_full + 8 * s, G::KV_BYTES);
                tma_load_2d(vdst, &tm_v, kc, t * BN, v_full + 8 * s);
                tma_load_2d(vdst + G::HALF_KV, &tm_v, kc + 64, t * BN, v_full + 8 * s);
            }
        }
    } else {
        // ---------------- consumers ----------------
        asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(G::CONSUMER_REGS));
        int cw = wg - 1, tid = threadIdx.x % 128, warp = tid / 32, lane = tid % 32, g = lane / 4, tq = lane % 4;
        if (cw >= n_work) return; /* all 64 rows past S: nothing to compute or store */
        int row0 = q0 + 64 * cw + 16 * warp + g; /* this thread's rows: row0, row0 + 8 */
        uint32_t q_addr = sbase + cw * 64 * 128;
        float o[64], s[BN / 2], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, alpha[2];
        uint32_t p[BN / 4];
#pragma unroll
        for (int i = 0; i < 64; i++) o[i] = 0.0f;

        mbar_wait(q_full, 0);
        if constexpr (G::P_SMEM) {
            /* per tile t >= 1: S_t = Q K_t^T and O += P_{t-1} V_{t-1} (P from shared memory) issued back to
               back, softmax_t runs while P_{t-1} V_{t-1} does; live: O 64 + S 64 registers */
            unsigned char *p_tile = sm + G::P_OFF + cw * G::P_BYTES;
            uint32_t p_addr = sbase + G::P_OFF + cw * G::P_BYTES;
            mbar_wait(k_full, 0);
            a90_issue_qk<NCW, BN>(s, q_addr, sbase + G::K_OFF);
            wg_wait<0>();
            reg_fence(s);
            if (lane == 0) mbar_arrive(k_empty);
            a90_softmax<BN>(s, m, l, alpha, BN > S || (causal && BN - 1 > 64 * cw + q0), 0, row0, S, causal, sl2);
            a90_store_p<BN>(p_tile, s);
            a90_p_ready(cw);
            for (int t = 1; t < n_tiles; t++) {
                int st = t % A90_STAGES, sp = (t - 1) % A90_STAGES, k0 = t * BN;
                mbar_wait(k_full + 8 * st, (t / A90_STAGES) & 1);
                a90_issue_qk<NCW, BN>(s, q_addr, sbase + G::K_OFF + st * G::KV_BYTES);
                mbar_wait(v_full + 8 * sp, ((t - 1) / A90_STAGES) & 1);
                a90_issue_pv_ss<NCW, BN>(o, p_addr, sbase + G::V_OFF + sp * G::KV_BYTES);
                wg_wait<1>(); /* S_t done (P_{t-1} V_{t-1} may still run) */
                reg_fence(s);
                if (lane == 0) mbar_arrive(k_empty + 8 * st);
                a90_softmax<BN>(s, m, l, alpha, k0 + BN > S || (causal && k0 + BN - 1 > q0 + 64 * cw), k0, row0, S,
                                causal, sl2);
                /* P_{t-1} V_{t-1} done (the whole warpgroup-wide wgmma, so also its reads of the other
                   warps' P rows): o is ours again, the P tile and V stage sp are free */
                wg_wait<0>();
                reg_fence(o);
                if (lane == 0) mbar_arrive(v_empty + 8 * sp);
                a90_store_p<BN>(p_tile, s);
#pragma unroll
                for (int i = 0; i < 64; i++) o[i] *= alpha[(i >> 1) & 1];
                a90_p_ready(cw);
            }
            int sl = (n_tiles - 1) % A90_STAGES;
            mbar_wait(v_full + 8 * sl, ((n_tiles - 1) / A90_STAGES) & 1);
            a90_issue_pv_ss<NCW, BN>(o, p_addr, sbase + G::V_OFF + sl * G::KV_BYTES);
            wg_wait<0>();
            reg_fence(o);
            if (lane == 0) mbar_arrive(v_empty + 8 * sl);
        } else if constexpr (!OVERLAP) { /* per tile: S = Q K^T, softmax, O += P V, one after the other */
            for (int t = 0; t < n_tiles; t++) {
                int st = t % A90_STAGES, k0 = t * BN;
                uint32_t par = (t / A90_STAGES) & 1;
                mbar_wait(k_full + 8 * st, par);
                a90_issue_qk<NCW, BN>(s, q_addr, sbase + G::K_OFF + st * G::KV_BYTES);
                wg_wait<0>();
                reg_fence(s);
                if (lane == 0) mbar_arrive(k_empty + 8 * st);
                bool rescale = a90_softmax<BN, ZI_ATTN90_RESCALE3 == 2>(
                    s, m, l, alpha, k0 + BN > S || (causal && k0 + BN - 1 > q0 + 64 * cw), k0, row0, S, causal, sl2);
                if (ZI_ATTN90_RESCALE3 == 0 || rescale) /* alpha = 1 in both rows: o stays as it is */
#pragma unroll
                    for (int i = 0; i < 64; i++) o[i] *= alpha[(i >> 1) & 1];
                a90_pack_p<BN>(p, s);
                mbar_wait(v_full + 8 * st, par);
                a90_issue_pv<NCW, BN>(o, p, sbase + G::V_OFF + st * G::KV_BYTES);
                wg_wait<0>(); /* P_t V_t done: o and p are ours again, V stage st is free */
                reg_fence(o);
                reg_fence(p);
                if (lane == 0) mbar_arrive(v_empty + 8 * st);
            }
        } else {
            mbar_wait(k_full, 0);
            if (PINGPONG && cw == 1) pp_wait(cw);
            a90_issue_qk<NCW, BN>(s, q_addr, sbase + G::K_OFF);
            if (PINGPONG) pp_pass(cw);
            wg_wait<0>();
            reg_fence(s);
            if (lane == 0) mbar_arrive(k_empty);
            a90_softmax<BN>(s, m, l, alpha, BN > S || (causal && BN - 1 > 64 * cw + q0), 0, row0, S, causal, sl2);
            a90_pack_p<BN>(p, s);

            for (int t = 1; t < n_tiles; t++) {
                int st = t % A90_STAGES, sp = (t - 1) % A90_STAGES, k0 = t * BN;
                mbar_wait(k_full + 8 * st, (t / A90_STAGES) & 1);
                if (PINGPONG) { /* both operands here before the turn is taken */
                    mbar_wait(v_full + 8 * sp, ((t - 1) / A90_STAGES) & 1);
                    pp_wait(cw);
                }
                a90_issue_qk<NCW, BN>(s, q_addr, sbase + G::K_OFF + st * G::KV_BYTES);
                mbar_wait(v_full + 8 * sp, ((t - 1) / A90_STAGES) & 1);
                a90_issue_pv<NCW, BN>(o, p, sbase + G::V_OFF + sp * G::KV_BYTES);
                if (PINGPONG) pp_pass(cw);
                wg_wait<1>(); /* S_t done (P_{t-1} V_{t-1} may still run) */
                reg_fence(s);
                if (lane == 0) mbar_arrive(k_empty + 8 * st);
                a90_softmax<BN>(s, m, l, alpha, k0 + BN > S || (causal && k0 + BN - 1 > q0 + 64 * cw), k0, row0, S,
                                causal, sl2);
                wg_wait<0>(); /* P_{t-1} V_{t-1} done: o and p are ours again, V stage sp is free */
                reg_fence(o);
                reg_fence(p);
                if (lane == 0) mbar_arrive(v_empty + 8 * sp);
#pragma unroll
                for (int i = 0; i < 64; i++) o[i] *= alpha[(i >> 1) & 1];
                a90_pack_p<BN>(p, s);
            }
            {
                int sl = (n_tiles - 1) % A90_STAGES;
                mbar_wait(v_full + 8 * sl, ((n_tiles - 1) / A90_STAGES) & 1);
                if (PINGPONG) pp_wait(cw);
                a90_issue_pv<NCW, BN>(o, p, sbase + G::V_OFF + sl * G::KV_BYTES);
                if (PINGPONG && cw == 0) pp_pass(cw); /* consumer 1 has no turn left to wait for */
                wg_wait<0>();
                reg_fence(o);
                if (lane == 0) mbar_arrive(v_empty + 8 * sl);
            }
        }

        /* out = o / l; l is spread over the 4 threads of a quad */
        float inv[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float x = l[r];
            x += __shfl_xor_sync(0xffffffffu, x, 1);
            x += __shfl_xor_sync(0xffffffffu, x, 2);
            inv[r] = 1.0f / x;
        }
        /* stage through this warpgroup's 64 rows of the Q tile (its last reader, S = Q K^T, has completed):
           [2 halves][64 rows][128 B], 16-byte chunk c of row r at chunk c ^ (r % 8) (conflict-free) */
        unsigned char *stage = sm + cw * 64 * 128;
#pragma unroll
        for (int nb = 0; nb < 16; nb++)
#pragma unroll
            for (int hr = 0; hr < 2; hr++) {
                int r = 16 * warp + g + 8 * hr, c = nb % 8;
                unsigned char *dst = stage + (nb / 8) * G::HALF_Q + r * 128 + ((c ^ (r % 8)) * 16) + tq * 4;
                *reinterpret_cast<uint32_t *>(dst) =
                    pack_bf16x2(o[4 * nb + 2 * hr] * inv[hr], o[4 * nb + 2 * hr + 1] * inv[hr]);
            }
        asm volatile("bar.sync %0, 128;\n" ::"r"(1 + cw) : "memory"); /* the warpgroup's staged rows are complete */
        size_t qs = (size_t)NH * A90_HD;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int idx = i * 128 + tid, r = idx / 16, cc = idx % 16, c = cc % 8, row = q0 + 64 * cw + r;
            uint4 val = *reinterpret_cast<const uint4 *>(stage + (cc / 8) * G::HALF_Q + r * 128 + ((c ^ (r % 8)) * 16));
            if (row < S) *reinterpret_cast<uint4 *>(out + (size_t)row * qs + (size_t)h * A90_HD + cc * 8) = val;
        }
    }
#endif
}

// ----------------------------------------------------------------------------------------------
// host side

static int a90_forced_bm = -1; /* 0 = by shape, 128 or 192 = that shape; -1 = ZIMAGE_ATTN90_BM not read yet */

extern "C" int zi_attention_sm90_force_bm(int bm) {
    int old = __atomic_exchange_n(&a90_forced_bm, bm == 128 || bm == 192 ? bm : 0, __ATOMIC_RELAXED);
    return old < 0 ? 0 : old;
}

/* BM = 192 where its waves (one CTA per SM) cover no more rows than BM = 128's: S = 4128 or 4096 with 30
   heads on 132 SMs: 5 x 192 < 8 x 128; S = 1056 and 16416 tie (3 x 128 = 2 x 192, 30 x 128 = 20 x 192) and
   take 192, which is faster per row. Causal calls keep 128 (the 192-row tiles would reach key tiles in
   which a consumer's rows have no key at or before them). */
static int a90_pick_bm(int S, int NH, int causal, int n_sm) {
    int forced = __atomic_load_n(&a90_forced_bm, __ATOMIC_RELAXED);
    if (forced < 0) {
        const char *e = getenv("ZIMAGE_ATTN90_BM");
        int v = e ? atoi(e) : 0;
        forced = v == 128 || v == 192 ? v : 0;
        __atomic_store_n(&a90_forced_bm, forced, __ATOMIC_RELAXED);
    }
    if (causal) return 128;
    if (forced) return forced;
    long t128 = (long)((S + 127) / 128) * NH, t192 = (long)((S + 191) / 192) * NH;
    return (t192 + n_sm - 1) / n_sm * 192 <= (t128 + n_sm - 1) / n_sm * 128 ? 192 : 128;
}

template <int NCW, int BN>
static cudaError_t a90_launch(PFN_cuTensorMapEncodeTiled_v12000 enc, void *out, const void *q, const void *k,
                              const void *v, int ld, int S, int NH, int NKV, int causal, float scale,
                              cudaStream_t stream, int *taken) {
    typedef A90<NCW, BN> G;
    CUtensorMap mq, mk, mv;
    long ldq = ld ? ld : (long)NH * A90_HD, ldkv = ld ? ld : (long)NKV * A90_HD; /* row strides of q and k/v */
    if (!encode_map_ld(enc, &mq, q, S, NH * A90_HD, ldq, G::BM) || !encode_map_ld(enc, &mk, k, S, NKV * A90_HD, ldkv, BN) ||
        !encode_map_ld(enc, &mv, v, S, NKV * A90_HD, ldkv, BN))
        return cudaSuccess;
    int n_qt = (S + G::BM - 1) / G::BM;
    if ((long)n_qt * NH > 0x7fffffffL) return cudaSuccess;
    *taken = 1;
    attention_sm90_kernel<NCW, BN><<<(unsigned)(n_qt * NH), G::THREADS, G::SMEM_BYTES, stream>>>(
        mq, mk, mv, (bf16 *)out, S, NH, NKV, scale * A90_LOG2E, causal, n_qt);
    return cudaGetLastError();
}

extern "C" cudaError_t zi_attention_sm90_cuda(void *out, const void *q, const void *k, const void *v, int ld, int S,
                                              int NH, int NKV, int HD, int causal, float scale, cudaStream_t stream,
                                              int *taken) {
    static int disabled_cache = -1, ready[ZI_SM90_MAX_DEVICES], n_sm[ZI_SM90_MAX_DEVICES];
    static const void *const kernels[] = {(const void *)attention_sm90_kernel<2, ZI_ATTN90_BN2>,
                                          (const void *)attention_sm90_kernel<3, ZI_ATTN90_BN3>};
    const int smem_max = A90Bm128::SMEM_BYTES > A90Bm192::SMEM_BYTES ? A90Bm128::SMEM_BYTES : A90Bm192::SMEM_BYTES;
    *taken = 0;
    if (sm90_env_off("ZIMAGE_ATTN_SM90", &disabled_cache) || HD != A90_HD || S <= 0 || NH <= 0 || NKV <= 0 || NH % NKV || !(scale > 0.0f))
        return cudaSuccess;
    if (!is_aligned16(out) || !is_aligned16(q) || !is_aligned16(k) || !is_aligned16(v)) return cudaSuccess;
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || !sm90_kernels_ready(ready, dev, stream, smem_max, kernels, 2)) {
        (void)cudaGetLastError();
        return cudaSuccess;
    }
    int sms = __atomic_load_n(&n_sm[dev], __ATOMIC_RELAXED);
    if (sms <= 0) {
        if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0) sms = 132;
        __atomic_store_n(&n_sm[dev], sms, __ATOMIC_RELAXED);
    }
    PFN_cuTensorMapEncodeTiled_v12000 enc = tensor_map_encoder();
    if (!enc) return cudaSuccess;
    if (a90_pick_bm(S, NH, causal, sms) == 192)
        return a90_launch<3, ZI_ATTN90_BN3>(enc, out, q, k, v, ld, S, NH, NKV, causal, scale, stream, taken);
    return a90_launch<2, ZI_ATTN90_BN2>(enc, out, q, k, v, ld, S, NH, NKV, causal, scale, stream, taken);
}
