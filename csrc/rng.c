/*
 * rng.c - torch.randn on the host, bit for bit (see rng.h).
 *
 * CUDA generator. ATen's normal_kernel -> distribution_nullary_kernel launches
 * min(ceil(n/256), sms * max_threads_per_sm / 256) blocks of 256 threads (T threads in all);
 * thread idx calls curand_init(seed, subsequence = idx, offset) and then, once per round,
 * curand_normal4 (= curand4 + two _curand_box_muller); element idx + T*ii + 4T*round gets
 * component ii. Afterwards the generator's offset grows by ((n-1)/(4T) + 1) * 4.
 * Everything is reproduced bit for bit on the host: the Philox4x32-10 stream and curand's
 * counter arithmetic; the u / v uniforms (one FFMA each); logf (the CUDA math library's
 * polynomial, ported FFMA by FFMA from what nvcc emits for sm_90); sqrtf (IEEE on both sides);
 * and __sincosf, a hardware intrinsic (FMUL.RZ by 1/2pi, then the MUFU.SIN / MUFU.COS special-
 * function unit), through a fixed-point model of that unit with coefficients measured on an
 * H100 (see mufu_sincos). Checked against torch 2.11 on an H100 (tests/fixtures/rng/).
 * Another GPU generation may have another special-function unit: re-run the --sfu check.
 *
 * CPU generator. torch's normal_fill (size >= 16, contiguous): n uniforms
 * (random() & 0xffffff) * 2^-24 from mt19937, Box-Muller on each block of 16 (u1 = 1 - d[j],
 * u2 = d[j+8], j < 8), and when 16 does not divide n, 16 fresh uniforms for the last 16
 * elements, transformed again. Two kernels: AVX2 (avx_mathfun's log256_ps / sincos256_ps,
 * with the FMAs GCC contracted them into; AVX512 machines run it too) and scalar (logf, sinf,
 * cosf of libm). Size < 16: normal_distribution<double> with random64 uniforms, log1p/sin/cos
 * in double, and the second sample cached in the generator. Bit-exact against torch 2.11/2.15
 * for both kernels; the scalar one (and the size < 16 path) relies on glibc's libm matching
 * the libm torch runs with (it is the same shared library on Linux).
 */
#include "rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ======================================================================================== */
/* small helpers                                                                            */

static inline float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint32_t bits_from_f32(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* ======================================================================================== */
/* Philox4x32-10, as curand_philox4x32_x.h / curand_kernel.h implement it                  */

#define PHILOX_W32_0 0x9E3779B9u
#define PHILOX_W32_1 0xBB67AE85u
#define PHILOX_M4x32_0 0xD2511F53u
#define PHILOX_M4x32_1 0xCD9E8D57u

typedef struct { uint32_t x, y, z, w; } u32x4;

typedef struct {
    u32x4 ctr;       /* 128-bit counter, x lowest                              */
    u32x4 output;    /* Philox(ctr, key): the block the next draws come from  */
    uint32_t key[2];
    unsigned state;  /* index (0..3) of the next 32-bit word in output         */
} PhiloxState;

static inline u32x4 philox_round(u32x4 c, uint32_t k0, uint32_t k1) {
    uint64_t p0 = (uint64_t)PHILOX_M4x32_0 * c.x;
    uint64_t p1 = (uint64_t)PHILOX_M4x32_1 * c.z;
    u32x4 r = {(uint32_t)(p1 >> 32) ^ c.y ^ k0, (uint32_t)p1, (uint32_t)(p0 >> 32) ^ c.w ^ k1, (uint32_t)p0};
    return r;
}

static inline u32x4 philox4x32_10(u32x4 c, const uint32_t key[2]) {
    uint32_t k0 = key[0], k1 = key[1];
    c = philox_round(c, k0, k1);
    for (int i = 1; i < 10; i++) {
        k0 += PHILOX_W32_0;
        k1 += PHILOX_W32_1;
        c = philox_round(c, k0, k1);
    }
    return c;
}

/* Philox_State_Incr(s): counter += 1 */
static inline void philox_incr(PhiloxState *s) {
    if (++s->ctr.x) return;
    if (++s->ctr.y) return;
    if (++s->ctr.z) return;
    ++s->ctr.w;
}

/* Philox_State_Incr(s, n): counter += n, with curand's carry handling verbatim */
static void philox_incr_n(PhiloxState *s, uint64_t n) {
    uint32_t nlo = (uint32_t)n, nhi = (uint32_t)(n >> 32);
    s->ctr.x += nlo;
    if (s->ctr.x < nlo) nhi++;
    s->ctr.y += nhi;
    if (nhi <= s->ctr.y) return;
    if (++s->ctr.z) return;
    ++s->ctr.w;
}

/* Philox_State_Incr_hi(s, n): upper 64 bits of the counter += n (the subsequence) */
static void philox_incr_hi(PhiloxState *s, uint64_t n) {
    uint32_t nlo = (uint32_t)n, nhi = (uint32_t)(n >> 32);
    s->ctr.z += nlo;
    if (s->ctr.z < nlo) nhi++;
    s->ctr.w += nhi;
}

/* curand_init(seed, subsequence, offset, &state) */
static void philox_init(PhiloxState *s, uint64_t seed, uint64_t subsequence, uint64_t offset) {
    memset(s, 0, sizeof *s);
    s->key[0] = (uint32_t)seed;
    s->key[1] = (uint32_t)(seed >> 32);
    /* skipahead_sequence */
    philox_incr_hi(s, subsequence);
    s->output = philox4x32_10(s->ctr, s->key);
    /* skipahead(offset) */
    s->state += (unsigned)(offset & 3);
    uint64_t n = offset / 4;
    if (s->state > 3) {
        n += 1;
        s->state -= 4;
    }
    philox_incr_n(s, n);
    s->output = philox4x32_10(s->ctr, s->key);
}

/* curand4(&state) */
static u32x4 philox_curand4(PhiloxState *s) {
    u32x4 tmp = s->output, r;
    philox_incr(s);
    s->output = philox4x32_10(s->ctr, s->key);
    switch (s->state) {
    case 1: r = (u32x4){tmp.y, tmp.z, tmp.w, s->output.x}; break;
    case 2: r = (u32x4){tmp.z, tmp.w, s->output.x, s->output.y}; break;
    case 3: r = (u32x4){tmp.w, s->output.x, s->output.y, s->output.z}; break;
    default: r = tmp; break;
    }
    return r;
}

/* ======================================================================================== */
/* the device float math of _curand_box_muller                                              */

/* logf as nvcc (CUDA 13, no fast-math) compiles it for sm_90: the libdevice polynomial, one
   fmaf per FFMA of the SASS, in the same order. Valid for every finite input. */
static float cuda_logf(float a) {
    float x = a, e0 = 0.0f, r;
    if (a < f32_from_bits(0x00800000u)) { /* denormal: scale up by 2^23 */
        x = a * 8388608.0f;
        e0 = -23.0f;
    }
    uint32_t ix = bits_from_f32(x);
    int32_t ei = (int32_t)((ix - 0x3F2AAAABu) & 0xFF800000u); /* exponent so m in [2/3, 4/3) */
    float m = f32_from_bits(ix - (uint32_t)ei);
    float e = fmaf((float)ei, f32_from_bits(0x34000000u) /* 2^-23 */, e0);
    float f = m - 1.0f;
    float p = fmaf(f32_from_bits(0xBE055027u), f, f32_from_bits(0x3E1039F6u));
    p = fmaf(p, f, f32_from_bits(0xBDF8CDCCu));
    p = fmaf(p, f, f32_from_bits(0x3E0F2955u));
    p = fmaf(p, f, f32_from_bits(0xBE2AD8B9u));
    p = fmaf(p, f, f32_from_bits(0x3E4CED0Bu));
    p = fmaf(p, f, f32_from_bits(0xBE7FFF22u));
    p = fmaf(p, f, f32_from_bits(0x3EAAAA78u));
    p = fmaf(p, f, -0.5f);
    volatile float q = p * f; /* a plain FMUL on the device: keep it rounded on its own */
    p = fmaf(q, f, f);
    r = fmaf(e, f32_from_bits(0x3F317218u) /* ln 2 */, p);
    if (ix >= 0x7F800000u) r = fmaf(x, INFINITY, INFINITY); /* +inf, nan, negative */
    if (x == 0.0f) r = -INFINITY;
    return r;
}

/* FMUL.RZ: a * b rounded toward zero (the 48-bit product is exact in double). */
static inline float mul_rz_f32(float a, float b) {
    double p = (double)a * (double)b;
    float r = (float)p;
    if (fabs((double)r) > fabs(p)) r = nextafterf(r, 0.0f);
    return r;
}

/* __sincosf(v) on sm_90: FMUL.RZ t = v * f32(1/2pi) (t in turns), then MUFU.SIN / MUFU.COS of t.
   The special-function unit works in fixed point: the argument becomes quarter turns with 23
   fraction bits (truncated; bits 23-24 = quadrant), the quadrant folds the fraction into
   [0, 1/4 turn) (odd quadrants use 2^23-1-f, quadrants 2-3 negate; cos is sin one quadrant on),
   and sin(f) = A + B*x + C*sq(x) over 64 segments, in integers, with a truncating 17-bit
   squarer; the sum is truncated to 24 significant bits. The design is the NV50 SFU described by
   the envytools project; the coefficients below were MEASURED on an H100 (MUFU.SIN at every
   reachable grid point of the first quadrant, fitted segment by segment: unique and exact), and
   the model equals the GPU's __sincosf for every float v in [0, 2pi_f] (1,086,918,620 inputs,
   sin and cos): `make_rng_fixtures.py --sfu` repeats both steps on any GPU. */
static const int32_t sfu_sin_coef[64][3] = {
    /* A (x 2^11), B, C: sin(pi/2 * (seg/64 + x/2^23)) ~ (A*2^11 + B*x + C*sq(x)) * 2^-37 */
    {0x0000000, 0x6489,   -14}, {0x019214e, 0x6482,   -48},
    {0x0323ec8, 0x646a,   -76}, {0x04b547c, 0x6444,  -110},
    {0x0645e94, 0x640d,  -137}, {0x07d5934, 0x63c8,  -171},
    {0x096407a, 0x6373,  -201}, {0x0af109c, 0x630e,  -229},
    {0x0c7c5ba, 0x629b,  -262}, {0x0e05c10, 0x6218,  -292},
    {0x0f8cfc8, 0x6186,  -322}, {0x1111d24, 0x60e5,  -352},
    {0x129405e, 0x6035,  -381}, {0x14135ca, 0x5f76,  -410},
    {0x158f9a2, 0x5ea9,  -441}, {0x170884c, 0x5dcd,  -470},
    {0x187de2a, 0x5ce2,  -497}, {0x19ef796, 0x5be9,  -525},
    {0x1b5d0fe, 0x5ae2,  -553}, {0x1cc66e8, 0x59cd,  -581},
    {0x1e2b5d4, 0x58aa,  -608}, {0x1f8ba48, 0x577a,  -637},
    {0x20e70ec, 0x563c,  -664}, {0x223d66c, 0x54f0,  -688},
    {0x238e760, 0x5398,  -715}, {0x24da0a8, 0x5232,  -738},
    {0x261fefc, 0x50c0,  -763}, {0x275ff44, 0x4f42,  -790},
    {0x2899e5e, 0x4db7,  -812}, {0x29cd952, 0x4c21,  -839},
    {0x2afad20, 0x4a7e,  -859}, {0x2c216e4, 0x48d0,  -881},
    {0x2d413ca, 0x4717,  -904}, {0x2e5a104, 0x4553,  -926},
    {0x2f6bbe4, 0x4384,  -946}, {0x30761be, 0x41ab,  -967},
    {0x3179008, 0x3fc8,  -988}, {0x327444c, 0x3dda, -1004},
    {0x3367c04, 0x3be4, -1025}, {0x34534f2, 0x39e4, -1043},
    {0x3536cc0, 0x37db, -1059}, {0x361214e, 0x35c9, -1074},
    {0x36e5064, 0x33b0, -1093}, {0x37af812, 0x318e, -1107},
    {0x3871658, 0x2f65, -1123}, {0x392a960, 0x2d34, -1136},
    {0x39daf5c, 0x2afc, -1148}, {0x3a82698, 0x28be, -1162},
    {0x3b20d7a, 0x2679, -1172}, {0x3bb6274, 0x242f, -1185},
    {0x3c4241c, 0x21df, -1196}, {0x3cc511e, 0x1f89, -1203},
    {0x3d3e82c, 0x1d2f, -1213}, {0x3dae822, 0x1ad0, -1220},
    {0x3e14fda, 0x186e, -1230}, {0x3e71e78, 0x1607, -1236},
    {0x3ec52fc, 0x139d, -1242}, {0x3f0eca0, 0x1130, -1247},
    {0x3f4eab2, 0x0ec0, -1250}, {0x3f84c8e, 0x0c4f, -1258},
    {0x3fb11b2, 0x09db, -1260}, {0x3fd39ba, 0x0765, -1260},
    {0x3fec43c, 0x04ef, -1263}, {0x3ffb10c, 0x0278, -1265},
};

/* the squarer: sum over the set bits i of x of (x >> (18 - i)), halved (x < 2^17) */
static inline uint32_t sfu_square(uint32_t x) {
    uint32_t r = 0;
    for (int i = 0; i < 17; i++)
        if ((x >> i) & 1u) r += x >> (18 - i);
    return r >> 1;
}

/* sin (cosine = 0) or cos (cosine = 1) of k quarter turns, k in 2.23 fixed point */
static float sfu_sincos_fixed(uint32_t k, int cosine) {
    const unsigned q = (k >> 23) + (unsigned)cosine;
    uint32_t f = k & 0x7FFFFFu;
    if (q & 1u) f = 0x7FFFFFu - f;
    const uint32_t sign = (q >> 1) & 1u;
    const uint32_t seg = f >> 17, x = f & 0x1FFFFu;
    int64_t res = ((int64_t)sfu_sin_coef[seg][0] << 11) + (int64_t)sfu_sin_coef[seg][1] * x +
                  (int64_t)sfu_sin_coef[seg][2] * sfu_square(x); /* 0 <= res < 2^38 */
    if (res <= 0) return f32_from_bits(sign << 31);
    int lead = 37;
    while (!((res >> lead) & 1)) lead--;
    uint32_t mant = lead >= 23 ? (uint32_t)(res >> (lead - 23)) : (uint32_t)(res << (23 - lead));
    uint32_t exp = (uint32_t)(127 - (37 - lead));
    return f32_from_bits((sign << 31) | (exp << 23) | (mant - 0x800000u));
}

/* __sincosf(v) for v in [0, 2pi_f] (all curand produces), bit-exact with sm_90 */
static void mufu_sincos(float v, float *s, float *c) {
    const float t = mul_rz_f32(v, f32_from_bits(0x3E22F983u)); /* turns, in [0, 1] */
    const uint32_t k = (uint32_t)(t * 33554432.0f);               /* 2^25: quarter turns, 23 bits */
    *s = sfu_sincos_fixed(k, 0);
    *c = sfu_sincos_fixed(k, 1);
}

/* _curand_box_muller(x, y) as compiled for the device, then ATen's `rand * std + mean`
   (std 1, mean 0, one FFMA: turns -0 into +0). */
static inline void curand_box_muller(uint32_t x, uint32_t y, float *r0, float *r1) {
    float u = fmaf((float)x, f32_from_bits(0x2F800000u) /* 2^-32 */, f32_from_bits(0x2F000000u));
    float v = fmaf((float)y, f32_from_bits(0x30C90FDBu) /* 2^-32 * 2pi */, f32_from_bits(0x30490FDBu));
    float s = sqrtf(-2.0f * cuda_logf(u));
    float sn, cs;
    mufu_sincos(v, &sn, &cs);
    *r0 = fmaf(sn * s, 1.0f, 0.0f);
    *r1 = fmaf(cs * s, 1.0f, 0.0f);
}

/* ======================================================================================== */
/* CUDA generator: the grid-stride layout                                                   */

#define ZI_RNG_BLOCK 256u
#define ZI_RNG_UNROLL 4u

uint64_t zi_philox_threads(uint64_t n, int sms, int max_threads_per_sm) {
    if (n == 0 || sms <= 0 || max_threads_per_sm < (int)ZI_RNG_BLOCK) return 0;
    uint64_t blocks = (n + ZI_RNG_BLOCK - 1) / ZI_RNG_BLOCK;
    uint64_t cap = (uint64_t)sms * (uint64_t)(max_threads_per_sm / (int)ZI_RNG_BLOCK);
    /* grid.x is a uint32 in ATen */
    if (blocks > 0xFFFFFFFFull) blocks = 0xFFFFFFFFull;
    if (blocks > cap) blocks = cap;
    return blocks * ZI_RNG_BLOCK;
}

uint64_t zi_philox_offset_increment(uint64_t n, int sms, int max_threads_per_sm) {
    uint64_t T = zi_philox_threads(n, sms, max_threads_per_sm);
    if (T == 0) return 0;
    uint64_t inc = ((n - 1) / (T * ZI_RNG_UNROLL) + 1) * 4; /* max_generator_offsets_per_curand_call */
    return ((inc + 3) / 4) * 4;                              /* CUDAGeneratorState::increase    */
}

zi_status zi_randn_cuda_philox(float *out, size_t n, uint64_t seed, uint64_t offset, int sms, int max_threads_per_sm) {
    if (n == 0) return ZI_OK;
    if (!out) return zi_fail(ZI_ERR_ARG, "randn: NULL output");
    if (sms <= 0 || max_threads_per_sm < (int)ZI_RNG_BLOCK)
        return zi_fail(ZI_ERR_ARG, "randn: need sms >= 1 and threads_per_sm >= 256, got %d and %d", sms, max_threads_per_sm);
    /* TensorIterator::can_use_32bit_indexing counts bytes: past 2^29 floats ATen splits the
       draw into several launches (each reserving its own offset); only one launch is modelled. */
    if ((uint64_t)n > ((uint64_t)INT32_MAX + 3) / 4)
        return zi_fail(ZI_ERR_ARG, "randn: %zu elements exceed one 32-bit-indexed launch, which torch splits; not reproduced", n);
    const uint64_t T = zi_philox_threads(n, sms, max_threads_per_sm);
    const uint64_t stride = T * ZI_RNG_UNROLL;
    const uint64_t rounds = ((uint64_t)n - 1) / stride + 1;
    const int64_t nthreads = (int64_t)(T < (uint64_t)n ? T : (uint64_t)n); /* threads that write */

#pragma omp parallel for schedule(static)
    for (int64_t idx = 0; idx < nthreads; idx++) {
        PhiloxState st;
        philox_init(&st, seed, (uint64_t)idx, offset);
        for (uint64_t r = 0; r < rounds; r++) {
            uint64_t base = (uint64_t)idx + r * stride;
            if (base >= (uint64_t)n) break; /* later components are further still */
            u32x4 x = philox_curand4(&st);
            float v[4];
            curand_box_muller(x.x, x.y, &v[0], &v[1]);
            if (base + 2 * T < (uint64_t)n) curand_box_muller(x.z, x.w, &v[2], &v[3]);
            for (unsigned ii = 0; ii < ZI_RNG_UNROLL; ii++) {
                uint64_t li = base + T * ii;
                if (li < (uint64_t)n) out[li] = v[ii];
            }
        }
    }
    return ZI_OK;
}

/* ======================================================================================== */
/* CPU generator: mt19937 (ATen's MT19937RNGEngine.h)                                       */

#define MT_M 397
#define MT_MATRIX_A 0x9908b0dfu
#define MT_UMASK 0x80000000u
#define MT_LMASK 0x7fffffffu

void zi_cpu_generator_seed(ZiCpuGenerator *g, uint64_t seed) {
    memset(g, 0, sizeof *g);
    g->seed = seed;
    g->state[0] = (uint32_t)(seed & 0xffffffffu);
    for (uint32_t j = 1; j < ZI_MT_N; j++)
        g->state[j] = 1812433253u * (g->state[j - 1] ^ (g->state[j - 1] >> 30)) + j;
    g->left = 1;
    g->next = 0;
}

static inline uint32_t mt_twist(uint32_t u, uint32_t v) {
    return (((u & MT_UMASK) | (v & MT_LMASK)) >> 1) ^ ((v & 1u) ? MT_MATRIX_A : 0u);
}

static void mt_next_state(ZiCpuGenerator *g) {
    uint32_t *p = g->state;
    g->left = ZI_MT_N;
    g->next = 0;
    for (int j = ZI_MT_N - MT_M + 1; --j; p++) *p = p[MT_M] ^ mt_twist(p[0], p[1]);
    for (int j = MT_M; --j; p++) *p = p[MT_M - ZI_MT_N] ^ mt_twist(p[0], p[1]);
    *p = p[MT_M - ZI_MT_N] ^ mt_twist(p[0], g->state[0]);
}

uint32_t zi_cpu_generator_u32(ZiCpuGenerator *g) {
    if (--g->left == 0) mt_next_state(g);
    uint32_t y = g->state[g->next++];
    y ^= (y >> 11);
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= (y >> 18);
    return y;
}

static inline uint64_t cpu_u64(ZiCpuGenerator *g) {
    uint32_t hi = zi_cpu_generator_u32(g);
    uint32_t lo = zi_cpu_generator_u32(g);
    return ((uint64_t)hi << 32) | lo;
}

/* uniform_real_distribution<float>(0, 1): 24 random bits times 2^-24 */
static inline float cpu_uniform_f32(ZiCpuGenerator *g) {
    return (float)(zi_cpu_generator_u32(g) & 0xffffffu) * 0x1p-24f;
}

/* uniform_real_distribution<double>(0, 1): 53 random bits times 2^-53 */
static inline double cpu_uniform_f64(ZiCpuGenerator *g) {
    return (double)(cpu_u64(g) & ((1ull << 53) - 1)) * 0x1p-53;
}

/* ---- Box-Muller on 16 floats, scalar kernel (torch's DEFAULT build, non-x86) --------------- */

static void normal16_scalar(float *d) {
    for (int j = 0; j < 8; j++) {
        const float u1 = 1.0f - d[j];
        const float u2 = d[j + 8];
        const float radius = sqrtf(-2.0f * logf(u1));
        /* `2.0f * c10::pi<double> * u2` is a double product, stored into a float */
        const float theta = (float)(6.283185307179586232 * (double)u2);
        d[j] = fmaf(radius * cosf(theta), 1.0f, 0.0f);
        d[j + 8] = fmaf(radius * sinf(theta), 1.0f, 0.0f);
    }
}

/* ---- Box-Muller on 16 floats, AVX2 kernel: avx_mathfun.h (Cephes) lane by lane ---------
   torch's wheels are built by GCC with -mavx2 -mfma and FMA contraction on, so a multiply
   whose only use is an add became one FMA (the first one of a sum of two products). Here each
   FMA is an explicit fmaf and each product torch rounds on its own goes through a volatile, so
   no compiler (or -ffp-contract setting) can fuse differently. */

static float avx_log(float x) {
    const float one = 1.0f;
    if (x < f32_from_bits(0x00800000u)) x = f32_from_bits(0x00800000u); /* never for u1 >= 2^-24 */
    uint32_t ix = bits_from_f32(x);
    float e = (float)((int32_t)(ix >> 23) - 0x7f);
    x = f32_from_bits((ix & ~0x7f800000u) | bits_from_f32(0.5f));
    e = e + one;
    if (x < 0.707106781186547524f) {
        e = e - one;
        x = (x - one) + x;
    } else {
        x = x - one;
    }
    const float z = x * x;
    float y = 7.0376836292E-2f;
    y = fmaf(y, x, -1.1514610310E-1f);
    y = fmaf(y, x, 1.1676998740E-1f);
    y = fmaf(y, x, -1.2420140846E-1f);
    y = fmaf(y, x, +1.4249322787E-1f);
    y = fmaf(y, x, -1.6668057665E-1f);
    y = fmaf(y, x, +2.0000714765E-1f);
    y = fmaf(y, x, -2.4999993993E-1f);
    y = fmaf(y, x, +3.3333331174E-1f);
    volatile float yx = y * x;
    volatile float tmp = e * -2.12194440e-4f;
    y = fmaf(yx, z, tmp);
    y = fmaf(-z, 0.5f, y);
    volatile float xy = x + y;
    x = fmaf(e, 0.693359375f, xy);
    return x;
}

static void avx_sincos(float xin, float *s, float *c) {
    uint32_t sign_sin = bits_from_f32(xin) & 0x80000000u;
    float x = fabsf(xin);
    float y = x * 1.27323954473516f; /* 4/pi */
    int32_t j = (int32_t)y;          /* cvtt */
    j = (j + 1) & ~1;
    y = (float)j;
    uint32_t swap_sign_sin = ((uint32_t)j & 4u) << 29;
    int poly1 = ((j & 2) == 0); /* poly_mask: use the sine polynomial for sin */
    x = fmaf(y, -0.78515625f, x);
    x = fmaf(y, -2.4187564849853515625e-4f, x);
    x = fmaf(y, -3.77489497744594108e-8f, x);
    uint32_t sign_cos = ((~(uint32_t)(j - 2)) & 4u) << 29;
    sign_sin ^= swap_sign_sin;
    const float z = x * x;
    float yc = 2.443315711809948E-005f;
    yc = fmaf(yc, z, -1.388731625493765E-003f);
    yc = fmaf(yc, z, 4.166664568298827E-002f);
    volatile float yz = yc * z;
    volatile float half_z = z * 0.5f;
    yc = fmaf(yz, z, -half_z);
    yc = yc + 1.0f;
    float ys = -1.9515295891E-4f;
    ys = fmaf(ys, z, 8.3321608736E-3f);
    ys = fmaf(ys, z, -1.6666654611E-1f);
    volatile float ysz = ys * z;
    ys = fmaf(ysz, x, x);
    float rs = poly1 ? ys : yc, rc = poly1 ? yc : ys;
    *s = f32_from_bits(bits_from_f32(rs) ^ sign_sin);
    *c = f32_from_bits(bits_from_f32(rc) ^ sign_cos);
}

static void normal16_avx2(float *d) {
    for (int j = 0; j < 8; j++) {
        const float u1 = 1.0f - d[j];
        const float u2 = d[j + 8];
        const float radius = sqrtf(-2.0f * avx_log(u1));
        const float theta = 6.2831855f * u2;
        float sn, cs;
        avx_sincos(theta, &sn, &cs);
        d[j] = fmaf(radius * cs, 1.0f, 0.0f);
        d[j + 8] = fmaf(radius * sn, 1.0f, 0.0f);
    }
}

/* torch's choice: ATEN_CPU_CAPABILITY if set, else the best the CPU has. normal_stub has no
   AVX512 kernel (REGISTER_NO_AVX512_DISPATCH), so AVX512 machines run the AVX2 one (checked:
   torch 2.11 on an AVX512 Xeon gives the AVX2 kernel's bits). Non-x86 builds: the scalar one. */
ZiCpuRandnKind zi_cpu_randn_native_kind(void) {
    const char *env = getenv("ATEN_CPU_CAPABILITY");
    if (env && !strcmp(env, "default")) return ZI_CPU_RANDN_SCALAR;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return ZI_CPU_RANDN_AVX2;
#endif
    return ZI_CPU_RANDN_SCALAR;
}

zi_status zi_randn_cpu_generator(ZiCpuGenerator *g, float *out, size_t n, ZiCpuRandnKind kind) {
    if (n == 0) return ZI_OK;
    if (!g || !out) return zi_fail(ZI_ERR_ARG, "randn: NULL generator or output");
    if (kind == ZI_CPU_RANDN_NATIVE) kind = zi_cpu_randn_native_kind();
    if (n < 16) {
        /* cpu_serial_kernel over normal_distribution<double>: pairs, the sine one cached */
        for (size_t i = 0; i < n; i++) {
            double ret;
            if (g->has_next_double) {
                ret = g->next_double;
                g->has_next_double = 0;
            } else {
                const double u1 = cpu_uniform_f64(g);
                const double u2 = cpu_uniform_f64(g);
                const double r = sqrt(-2.0 * log1p(-u2));
                const double theta = 2.0 * 3.141592653589793238 * u1;
                g->next_double = r * sin(theta);
                g->has_next_double = 1;
                ret = r * cos(theta);
            }
            out[i] = (float)fma(ret, 1.0, 0.0);
        }
        return ZI_OK;
    }
    void (*fill16)(float *) = kind == ZI_CPU_RANDN_AVX2 ? normal16_avx2 : normal16_scalar;
    for (size_t i = 0; i < n; i++) out[i] = cpu_uniform_f32(g);
    for (size_t i = 0; i + 16 <= n; i += 16) fill16(out + i);
    if (n % 16 != 0) {
        float *d = out + n - 16; /* recompute the last 16 values from fresh uniforms */
        for (int i = 0; i < 16; i++) d[i] = cpu_uniform_f32(g);
        fill16(d);
    }
    return ZI_OK;
}

zi_status zi_randn_cpu_mt19937(float *out, size_t n, uint64_t seed) {
    ZiCpuGenerator *g = malloc(sizeof *g);
    if (!g) return zi_fail(ZI_ERR_NOMEM, "randn: out of host memory");
    zi_cpu_generator_seed(g, seed);
    zi_status st = zi_randn_cpu_generator(g, out, n, ZI_CPU_RANDN_NATIVE);
    free(g);
    return st;
}

/* ---- torch's get_state() layout (CPUGeneratorImplState, little-endian, x86-64/arm64) ---- */

#define ST_OFF_SEED 0
#define ST_OFF_LEFT 8
#define ST_OFF_SEEDED 12
#define ST_OFF_NEXT 16
#define ST_OFF_STATE 24
#define ST_OFF_NORMAL_Y (24 + 8 * ZI_MT_N + 8)
#define ST_OFF_NORMAL_VALID (24 + 8 * ZI_MT_N + 24)
#define ST_OFF_FLOAT_NORMAL 5048
#define ST_OFF_FLOAT_VALID 5052

void zi_cpu_generator_pack(const ZiCpuGenerator *g, uint8_t out[ZI_CPU_GEN_STATE_BYTES]) {
    memset(out, 0, ZI_CPU_GEN_STATE_BYTES);
    int32_t seeded = 1, valid = g->has_next_double ? 1 : 0;
    uint64_t next = g->next;
    double y = g->has_next_double ? g->next_double : 0.0;
    memcpy(out + ST_OFF_SEED, &g->seed, 8);
    memcpy(out + ST_OFF_LEFT, &g->left, 4);
    memcpy(out + ST_OFF_SEEDED, &seeded, 4);
    memcpy(out + ST_OFF_NEXT, &next, 8);
    for (int i = 0; i < ZI_MT_N; i++) {
        uint64_t w = g->state[i];
        memcpy(out + ST_OFF_STATE + 8 * i, &w, 8);
    }
    memcpy(out + ST_OFF_NORMAL_Y, &y, 8);
    memcpy(out + ST_OFF_NORMAL_VALID, &valid, 4);
}

zi_status zi_cpu_generator_unpack(ZiCpuGenerator *g, const uint8_t *in, size_t len) {
    if (len != ZI_CPU_GEN_STATE_BYTES)
        return zi_fail(ZI_ERR_ARG, "CPU generator state must be %d bytes, got %zu", ZI_CPU_GEN_STATE_BYTES, len);
    int32_t left, seeded, valid;
    uint64_t next;
    memset(g, 0, sizeof *g);
    memcpy(&g->seed, in + ST_OFF_SEED, 8);
    memcpy(&left, in + ST_OFF_LEFT, 4);
    memcpy(&seeded, in + ST_OFF_SEEDED, 4);
    memcpy(&next, in + ST_OFF_NEXT, 8);
    if (!seeded || left <= 0 || left > ZI_MT_N || next > ZI_MT_N)
        return zi_fail(ZI_ERR_ARG, "invalid mt19937 state (left %d, next %llu)", left, (unsigned long long)next);
    g->left = left;
    g->next = (uint32_t)next;
    for (int i = 0; i < ZI_MT_N; i++) {
        uint64_t w;
        memcpy(&w, in + ST_OFF_STATE + 8 * i, 8);
        g->state[i] = (uint32_t)w;
    }
    memcpy(&valid, in + ST_OFF_NORMAL_VALID, 4);
    if (valid) {
        g->has_next_double = 1;
        memcpy(&g->next_double, in + ST_OFF_NORMAL_Y, 8);
    }
    return ZI_OK;
}
