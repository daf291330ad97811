/*
 * attention_sm90.cu - flash-attention forward for Hopper (sm_90a) at head dim 128: the fast path
 * behind zi_attention_cuda (attention.cu) on compute capability 9.x devices.
 *
 * attention_sm90_kernel: one CTA = 128 query rows of one head, 3 warpgroups (384 threads).
 *   warpgroup 0, the producer: one thread issues TMA tile loads (cp.async.bulk.tensor, 128-byte
 *     swizzle, tensor maps encoded on the host) of the Q tile and of the K and V tiles of 128 keys
 *     into a ring of A90_STAGES shared-memory stages; an mbarrier per tile says "landed" (full) and
 *     one per stage and operand says "free again" (empty). Rows past S arrive as zeros.
 *   warpgroups 1 and 2, the consumers: 64 query rows each. Per key tile t:
 *     S_t = Q K_t^T       wgmma m64n128k16, Q and K both K-major from shared memory (8 k-steps);
 *     online softmax      in registers on the fp32 accumulators, base 2 with the scale folded into
 *                         one FMA, keys >= S (and, causal, keys > row) set to -inf first;
 *     O += P_t V_t        wgmma m64n128k16 with P (bf16) as the register A operand (the S
 *                         accumulator layout is the A-fragment layout) and V MN-major from shared
 *                         memory (transposed B), 8 k-steps of 16 keys.
 *     The loop is software-pipelined inside the warpgroup: S_t = Q K_t^T and O += P_{t-1} V_{t-1}
 *     are issued back to back, the softmax of tile t runs while the tensor cores do P_{t-1} V_{t-1}.
 *   The output is divided by the row sums, staged as bf16 through the warpgroup's (now unused) part
 *   of the Q tile and written with 16-byte coalesced stores; rows >= S are not stored.
 *   setmaxnreg moves registers from the producer (A90_PRODUCER_REGS) to the consumers.
 *   Lab knobs (-D...): ZI_ATTN90_STAGES (ring depth), ZI_ATTN90_PINGPONG (the consumers take turns
 *   issuing their wgmma batches, FA3's inter-warpgroup schedule). Timings: benchmarks/kernels/README.md.
 *
 * All sm_90a-only device code is inside `#ifdef ZI_SM90_DEVICE_CODE`: the file compiles for every
 * arch of the fat binary, and the sm_90a probe (sm90.cuh) tells the host (once per device) whether the
 * loaded binary really holds sm_90a code, so an sm_80-only build JIT-compiled on an H100 never runs
 * the empty kernel body. The PTX wrappers, the probe and the tensor-map helpers live in sm90.cuh
 * (shared with gemm_sm90.cu). Environment: ZIMAGE_ATTN_SM90=0 turns this path off (read once).
 */
#include "sm90.cuh"

#include <math.h>

#define A90_HD 128            /* head dim (the only one this kernel takes)                     */
#define A90_BM 128            /* query rows per CTA = 2 consumer warpgroups x 64               */
#define A90_BN 128            /* keys per tile                                                 */
#ifndef ZI_ATTN90_STAGES
#define ZI_ATTN90_STAGES 2    /* K/V ring depth (lab knob: 2 or 3)                             */
#endif
#define A90_STAGES ZI_ATTN90_STAGES
#ifndef ZI_ATTN90_PINGPONG
#define ZI_ATTN90_PINGPONG 0  /* lab knob: 1 makes the consumers take turns issuing their wgmma */
#endif
#define A90_THREADS 384
#define A90_PRODUCER_REGS 40
#define A90_CONSUMER_REGS 232 /* 128 x 40 + 256 x 232 <= 65536                                 */

/* shared memory, from a 1024-byte aligned base (the 128-byte swizzle repeats every 1024 bytes):
   Q [2 halves of 64 dims][128 rows][128 B], then per stage K and V [2 halves][128 keys][128 B],
   then the mbarriers */
#define A90_HALF_Q (A90_BM * 128)
#define A90_HALF_KV (A90_BN * 128)
#define A90_Q_BYTES (2 * A90_HALF_Q)
#define A90_KV_BYTES (2 * A90_HALF_KV)
#define A90_K_OFF A90_Q_BYTES
#define A90_V_OFF (A90_K_OFF + A90_STAGES * A90_KV_BYTES)
#define A90_BAR_OFF (A90_V_OFF + A90_STAGES * A90_KV_BYTES)
#define A90_NBAR (1 + 4 * A90_STAGES) /* q_full, k_full[], v_full[], k_empty[], v_empty[] */
#define A90_SMEM_BYTES (1024 + A90_BAR_OFF + 8 * A90_NBAR)

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

static __device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
// ----------------------------------------------------------------------------------------------
// consumer: 64 query rows (rows q0 + 64 cw ...), 128 threads

/* Online softmax of one tile on the fp32 scores s (in place: s becomes p = 2^((s - m) scale log2e)).
   Accumulator layout (per warp 16 rows): s[4 nb + e] is row g + 8 (e >> 1), key nb*8 + 2 tq + (e & 1). */
static __device__ __forceinline__ void a90_softmax(float (&s)[64], float (&m)[2], float (&l)[2], float (&alpha)[2],
                                                   bool mask, int key0, int row0, int S, int causal, float sl2) {
    int lane = threadIdx.x % 32, tq = lane % 4;
    if (mask) {
#pragma unroll
        for (int nb = 0; nb < 16; nb++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int key = key0 + nb * 8 + 2 * tq + (e & 1), row = row0 + 8 * (e >> 1);
                if (key >= S || (causal && key > row)) s[4 * nb + e] = -INFINITY;
            }
    }
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int nb = 0; nb < 16; nb++) {
        mx[0] = fmaxf(mx[0], fmaxf(s[4 * nb], s[4 * nb + 1]));
        mx[1] = fmaxf(mx[1], fmaxf(s[4 * nb + 2], s[4 * nb + 3]));
    }
    float msub[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        /* every row has a valid key in every tile it visits (key 0 in tile 0; the diagonal key in a
           causal diagonal tile), so mx is finite; m = -inf before the first tile gives alpha = 0 */
        msub[r] = mx[r] * sl2;
        alpha[r] = fast_exp2(fmaf(m[r], sl2, -msub[r]));
        m[r] = mx[r];
    }
    float lsum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int nb = 0; nb < 16; nb++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float p = fast_exp2(fmaf(s[4 * nb + e], sl2, -msub[e >> 1]));
            s[4 * nb + e] = p;
            lsum[e >> 1] += p;
        }
#pragma unroll
    for (int r = 0; r < 2; r++) l[r] = l[r] * alpha[r] + lsum[r];
}

/* S = Q K^T for this warpgroup's 64 rows: 8 k-steps of 16 dims; dim d of a row lives in half d / 64
   at byte (d % 64) * 2 of the (swizzled) 128-byte row, so k-step kk starts 32 (kk % 4) bytes into
   half kk / 4. Stride between 8-row groups: 1024 bytes. */
static __device__ __forceinline__ void a90_issue_qk(float (&s)[64], uint32_t q_addr, uint32_t k_addr) {
    reg_fence(s);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < A90_HD / 16; kk++) {
        uint32_t off = (kk % 4) * 32;
        uint64_t da = wg_desc(q_addr + (kk / 4) * A90_HALF_Q + off, 16, 1024);
        uint64_t db = wg_desc(k_addr + (kk / 4) * A90_HALF_KV + off, 16, 1024);
        wgmma_ss_n128(s, da, db, kk > 0);
    }
    wg_commit();
    reg_fence(s);
}

/* O += P V: 8 k-steps of 16 keys. V is [keys][dims] (MN-major for this product): within a half, key j
   is row j (128 bytes, 64 dims), 8-key groups 1024 bytes apart (SBO), the second 64 dims one half
   further (LBO); k-step ks starts at key 16 ks = byte 2048 ks. */
static __device__ __forceinline__ void a90_issue_pv(float (&o)[64], uint32_t (&p)[32], uint32_t v_addr) {
    reg_fence(o);
    reg_fence(p);
    wg_fence();
#pragma unroll
    for (int ks = 0; ks < A90_BN / 16; ks++) {
        uint64_t db = wg_desc(v_addr + ks * 2048, A90_HALF_KV, 1024);
        wgmma_rs(o, p[4 * ks], p[4 * ks + 1], p[4 * ks + 2], p[4 * ks + 3], db);
    }
    wg_commit();
    reg_fence(o);
    reg_fence(p);
}

/* p (bf16 A fragments of O += P V) from the probabilities in s: k-step ks covers keys 16 ks .. 16 ks + 15
   = accumulator blocks 2 ks and 2 ks + 1; fragment order (row g, k lo), (g + 8, lo), (g, hi), (g + 8, hi) */
static __device__ __forceinline__ void a90_pack_p(uint32_t (&p)[32], const float (&s)[64]) {
#pragma unroll
    for (int ks = 0; ks < A90_BN / 16; ks++) {
        p[4 * ks + 0] = pack_bf16x2(s[8 * ks + 0], s[8 * ks + 1]);
        p[4 * ks + 1] = pack_bf16x2(s[8 * ks + 2], s[8 * ks + 3]);
        p[4 * ks + 2] = pack_bf16x2(s[8 * ks + 4], s[8 * ks + 5]);
        p[4 * ks + 3] = pack_bf16x2(s[8 * ks + 6], s[8 * ks + 7]);
    }
}
/* Ping-pong (ZI_ATTN90_PINGPONG): the two consumer warpgroups take turns issuing their wgmma batches, so
   one's softmax runs while the other's matrix products do. Turns alternate 0, 1, 0, 1, ...; consumer w
   waits on named barrier 3 + w (its 128 threads) until the other one passed it on (128 arrivals).
   Consumer 0 takes its first turn unasked, and consumer 1 does not pass on after its last turn, so
   every barrier phase gets exactly 256 arrivals. */
static __device__ __forceinline__ void pp_wait(int cw) { asm volatile("bar.sync %0, 256;\n" ::"r"(3 + cw) : "memory"); }
static __device__ __forceinline__ void pp_pass(int cw) { asm volatile("bar.arrive %0, 256;\n" ::"r"(4 - cw) : "memory"); }
#endif /* ZI_SM90_DEVICE_CODE */

// ----------------------------------------------------------------------------------------------

__global__ void __launch_bounds__(A90_THREADS, 1)
    attention_sm90_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                          const __grid_constant__ CUtensorMap tm_v, bf16 *out, int S, int NH, int NKV, float sl2,
                          int causal, int n_qt) {
#ifdef ZI_SM90_DEVICE_CODE
    extern __shared__ unsigned char a90_smem_raw[];
    /* offset from the array itself (not an integer round-trip) keeps the accesses below st/ld.shared */
    unsigned char *sm = a90_smem_raw + ((1024 - (smem_u32(a90_smem_raw) & 1023)) & 1023);
    uint32_t sbase = smem_u32(sm);
    uint32_t q_full = sbase + A90_BAR_OFF, k_full = q_full + 8, v_full = k_full + 8 * A90_STAGES,
             k_empty = v_full + 8 * A90_STAGES, v_empty = k_empty + 8 * A90_STAGES; /* + 8 * stage */

    /* tile of this CTA (1D grid, dispatched about in index order). Non-causal: head-major (the CTAs of
       a wave share K/V in L2). Causal: the longest q-tiles first, all heads of one q-tile together. */
    int b = blockIdx.x, qt = causal ? n_qt - 1 - b / NH : b % n_qt, h = causal ? b % NH : b / n_qt;
    int kvh = h / (NH / NKV), q0 = qt * A90_BM;
    int n_tiles = (S + A90_BN - 1) / A90_BN;
    if (causal) n_tiles = min(n_tiles, (q0 + A90_BM - 1) / A90_BN + 1);
    int wg = threadIdx.x / 128;

    if (threadIdx.x == 0) {
        mbar_init(q_full, 1);
        for (int s = 0; s < A90_STAGES; s++) {
            mbar_init(k_full + 8 * s, 1);
            mbar_init(v_full + 8 * s, 1);
            mbar_init(k_empty + 8 * s, 8); /* lane 0 of each of the 8 consumer warps */
            mbar_init(v_empty + 8 * s, 8);
        }
        mbar_init_fence();
    }
    __syncthreads(); /* the mbarriers are initialised before any thread waits on them or TMA signals them */

    if (wg == 0) {
        // ---------------- producer ----------------
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(A90_PRODUCER_REGS));
        if (threadIdx.x == 0) {
            int qc = h * A90_HD, kc = kvh * A90_HD;
            mbar_expect_tx(q_full, A90_Q_BYTES);
            tma_load_2d(sbase, &tm_q, qc, q0, q_full);
            tma_load_2d(sbase + A90_HALF_Q, &tm_q, qc + 64, q0, q_full);
            for (int t = 0; t < n_tiles; t++) {
                int s = t % A90_STAGES;
                uint32_t par = ((t / A90_STAGES) + 1) & 1; /* completion t / STAGES - 1 of the empty barrier */
                uint32_t kdst = sbase + A90_K_OFF + s * A90_KV_BYTES, vdst = sbase + A90_V_OFF + s * A90_KV_BYTES;
                if (t >= A90_STAGES) mbar_wait(k_empty + 8 * s, par);
                mbar_expect_tx(k_full + 8 * s, A90_KV_BYTES);
                tma_load_2d(kdst, &tm_k, kc, t * A90_BN, k_full + 8 * s);
                tma_load_2d(kdst + A90_HALF_KV, &tm_k, kc + 64, t * A90_BN, k_full + 8 * s);
                if (t >= A90_STAGES) mbar_wait(v_empty + 8 * s, par);
                mbar_expect_tx(v_full + 8 * s, A90_KV_BYTES);
                tma_load_2d(vdst, &tm_v, kc, t * A90_BN, v_full + 8 * s);
                tma_load_2d(vdst + A90_HALF_KV, &tm_v, kc + 64, t * A90_BN, v_full + 8 * s);
            }
        }
    } else {
        // ---------------- consumers ----------------
        asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(A90_CONSUMER_REGS));
        int cw = wg - 1, tid = threadIdx.x % 128, warp = tid / 32, lane = tid % 32, g = lane / 4, tq = lane % 4;
        int row0 = q0 + 64 * cw + 16 * warp + g; /* this thread's rows: row0, row0 + 8 */
        uint32_t q_addr = sbase + cw * 64 * 128;
        float o[64], s[64], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, alpha[2];
        uint32_t p[32];
#pragma unroll
        for (int i = 0; i < 64; i++) o[i] = 0.0f;

        mbar_wait(q_full, 0);
        mbar_wait(k_full, 0);
        if (ZI_ATTN90_PINGPONG && cw == 1) pp_wait(cw);
        a90_issue_qk(s, q_addr, sbase + A90_K_OFF);
        if (ZI_ATTN90_PINGPONG) pp_pass(cw);
        wg_wait<0>();
        reg_fence(s);
        if (lane == 0) mbar_arrive(k_empty);
        a90_softmax(s, m, l, alpha, A90_BN > S || (causal && A90_BN - 1 > 64 * cw + q0), 0, row0, S, causal, sl2);
        a90_pack_p(p, s);

        for (int t = 1; t < n_tiles; t++) {
            int st = t % A90_STAGES, sp = (t - 1) % A90_STAGES, k0 = t * A90_BN;
            mbar_wait(k_full + 8 * st, (t / A90_STAGES) & 1);
            if (ZI_ATTN90_PINGPONG) { /* both operands here before the turn is taken */
                mbar_wait(v_full + 8 * sp, ((t - 1) / A90_STAGES) & 1);
                pp_wait(cw);
            }
            a90_issue_qk(s, q_addr, sbase + A90_K_OFF + st * A90_KV_BYTES);
            mbar_wait(v_full + 8 * sp, ((t - 1) / A90_STAGES) & 1);
            a90_issue_pv(o, p, sbase + A90_V_OFF + sp * A90_KV_BYTES);
            if (ZI_ATTN90_PINGPONG) pp_pass(cw);
            wg_wait<1>(); /* S_t done (P_{t-1} V_{t-1} may still run) */
            reg_fence(s);
            if (lane == 0) mbar_arrive(k_empty + 8 * st);
            a90_softmax(s, m, l, alpha, k0 + A90_BN > S || (causal && k0 + A90_BN - 1 > q0 + 64 * cw), k0, row0, S,
                        causal, sl2);
            wg_wait<0>(); /* P_{t-1} V_{t-1} done: o and p are ours again, V stage sp is free */
            reg_fence(o);
            reg_fence(p);
            if (lane == 0) mbar_arrive(v_empty + 8 * sp);
#pragma unroll
            for (int i = 0; i < 64; i++) o[i] *= alpha[(i >> 1) & 1];
            a90_pack_p(p, s);
        }
        {
            int sl = (n_tiles - 1) % A90_STAGES;
            mbar_wait(v_full + 8 * sl, ((n_tiles - 1) / A90_STAGES) & 1);
            if (ZI_ATTN90_PINGPONG) pp_wait(cw);
            a90_issue_pv(o, p, sbase + A90_V_OFF + sl * A90_KV_BYTES);
            if (ZI_ATTN90_PINGPONG && cw == 0) pp_pass(cw); /* consumer 1 has no turn left to wait for */
            wg_wait<0>();
            reg_fence(o);
            if (lane == 0) mbar_arrive(v_empty + 8 * sl);
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
                unsigned char *dst = stage + (nb / 8) * A90_HALF_Q + r * 128 + ((c ^ (r % 8)) * 16) + tq * 4;
                *reinterpret_cast<uint32_t *>(dst) =
                    pack_bf16x2(o[4 * nb + 2 * hr] * inv[hr], o[4 * nb + 2 * hr + 1] * inv[hr]);
            }
        asm volatile("bar.sync %0, 128;\n" ::"r"(1 + cw) : "memory"); /* the warpgroup's staged rows are complete */
        size_t qs = (size_t)NH * A90_HD;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int idx = i * 128 + tid, r = idx / 16, cc = idx % 16, c = cc % 8, row = q0 + 64 * cw + r;
            uint4 val = *reinterpret_cast<const uint4 *>(stage + (cc / 8) * A90_HALF_Q + r * 128 + ((c ^ (r % 8)) * 16));
            if (row < S) *reinterpret_cast<uint4 *>(out + (size_t)row * qs + (size_t)h * A90_HD + cc * 8) = val;
        }
    }
#endif
}

// ----------------------------------------------------------------------------------------------
// host side

extern "C" cudaError_t zi_attention_sm90_cuda(void *out, const void *q, const void *k, const void *v, int S, int NH,
                                              int NKV, int HD, int causal, float scale, cudaStream_t stream,
                                              int *taken) {
    static int disabled_cache = -1, ready[ZI_SM90_MAX_DEVICES];
    static const void *const kernels[] = {(const void *)attention_sm90_kernel};
    *taken = 0;
    if (sm90_env_off("ZIMAGE_ATTN_SM90", &disabled_cache) || HD != A90_HD || S <= 0 || NH <= 0 || NKV <= 0 || NH % NKV || !(scale > 0.0f))
        return cudaSuccess;
    if (!is_aligned16(out) || !is_aligned16(q) || !is_aligned16(k) || !is_aligned16(v)) return cudaSuccess;
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || !sm90_kernels_ready(ready, dev, stream, A90_SMEM_BYTES, kernels, 1)) {
        (void)cudaGetLastError();
        return cudaSuccess;
    }
    PFN_cuTensorMapEncodeTiled_v12000 enc = tensor_map_encoder();
    if (!enc) return cudaSuccess;
    CUtensorMap mq, mk, mv;
    if (!encode_map(enc, &mq, q, S, NH * A90_HD, A90_BM) || !encode_map(enc, &mk, k, S, NKV * A90_HD, A90_BN) ||
        !encode_map(enc, &mv, v, S, NKV * A90_HD, A90_BN))
        return cudaSuccess;
    int n_qt = (S + A90_BM - 1) / A90_BM;
    if ((long)n_qt * NH > 0x7fffffffL) return cudaSuccess;
    *taken = 1;
    attention_sm90_kernel<<<(unsigned)(n_qt * NH), A90_THREADS, A90_SMEM_BYTES, stream>>>(
        mq, mk, mv, (bf16 *)out, S, NH, NKV, scale * A90_LOG2E, causal, n_qt);
    return cudaGetLastError();
}
