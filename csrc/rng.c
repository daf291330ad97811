/*
 * rng.c - torch.randn on the host, bit for bit where the arithmetic allows it (see rng.h).
 *
 * CUDA generator. ATen's normal_kernel -> distribution_nullary_kernel launches
 * min(ceil(n/256), sms * max_threads_per_sm / 256) blocks of 256 threads (T threads in all);
 * thread idx calls curand_init(seed, subsequence = idx, offset) and then, once per round,
 * curand_normal4 (= curand4 + two _curand_box_muller); element idx + T*ii + 4T*round gets
 * component ii. Afterwards the generator's offset grows by ((n-1)/(4T) + 1) * 4.
 * Reproduced exactly: the Philox4x32-10 stream and counter arithmetic, the u / v uniforms
 * (FFMA), logf (the CUDA math library's polynomial, ported instruction by instruction from
 * the PTX nvcc emits), sqrtf (IEEE on both sides), the final products. NOT reproducible from
 * documentation: curand uses the hardware intrinsic __sincosf (FMUL.RZ by 1/2pi, then the
 * MUFU.SIN / MUFU.COS special-function unit, abs. error ~2^-21); we evaluate sin/cos of the
 * same turn fraction in double and round. So values usually differ from the GPU's in the last
 * bits (see zi_mufu_sincos and the report in tests/test_rng.py).
 *
 * CPU generator. torch's normal_fill (size >= 16, contiguous): n uniforms
 * (random() & 0xffffff) * 2^-24 from mt19937, Box-Muller on each block of 16 (u1 = 1 - d[j],
 * u2 = d[j+8], j < 8), and when 16 does not divide n, 16 fresh uniforms for the last 16
 * elements, transformed again. Two kernels: AVX2 (avx_mathfun's log256_ps / sincos256_ps,
 * with the FMAs GCC contracted them into) and scalar (logf, sinf, cosf of libm). Size < 16:
 * normal_distribution<double> with random64 uniforms, log1p/sin/cos in double, and the
 * second sample cached in the generator.
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

/* __sincosf(v): t = v * f32(1/2pi) rounded toward zero, then MUFU.SIN / MUFU.COS of t turns.
   The special-function unit is an undocumented table interpolation; we return sin/cos(2 pi t)
   rounded to float, which is within its error bound but not bit-identical to it. */
static void mufu_sincos(float v, float *s, float *c) {
    float t = mul_rz_f32(v, f32_from_bits(0x3E22F983u));
    double a = 6.283185307179586476925 * (double)t;
    *s = (float)sin(a);
    *c = (float)cos(a);
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
    /* ATen splits tensors that need 64-bit indexing into several launches (each with its own
       offset reservation); we only reproduce the single launch. */
    if ((uint64_t)n > (uint64_t)INT32_MAX)
        return zi_fail(ZI_ERR_ARG, "randn: %zu elements need 64-bit indexing, which torch splits; not reproduced", n);
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

/* ---- Box-Muller on 16 floats, scalar kernel (DEFAULT / AVX512 builds) ---------------- */

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
   whose only use is an add became one FMA (the first one of a sum of two products). */

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

ZiCpuRandnKind zi_cpu_randn_native_kind(void) {
    const char *env = getenv("ATEN_CPU_CAPABILITY");
    if (env && *env) {
        if (!strcmp(env, "avx2")) return ZI_CPU_RANDN_AVX2;
        if (!strcmp(env, "default") || !strcmp(env, "avx512") || !strcmp(env, "zvector") || !strcmp(env, "sve256"))
            return ZI_CPU_RANDN_SCALAR;
    }
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma"))
        return ZI_CPU_RANDN_SCALAR; /* torch's AVX512 build has no NormalFill16 specialisation */
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
