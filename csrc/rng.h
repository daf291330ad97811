/*
 * rng.h - torch.randn reproduced without torch, for the initial latents (diffusers'
 * randn_tensor). Two generators, as torch has them:
 *   - a CUDA generator: Philox4x32-10 through curand (curand_init(seed, idx, offset) per thread,
 *     curand_normal4 per round), laid out over threads the way ATen's grid-stride kernel
 *     distribution_nullary_kernel does it; the layout depends on the GPU's SM count;
 *   - a CPU generator: mt19937, 24-bit uniforms and Box-Muller over blocks of 16 (size >= 16)
 *     or the double-precision scalar path with a cached second sample (size < 16).
 * Everything runs on the host and matches torch bit for bit (CUDA: checked against torch 2.11
 * on an H100, including curand's hardware __sincosf; CPU: torch 2.11 and 2.15); rng.c says how.
 */
#ifndef ZI_RNG_H
#define ZI_RNG_H

#include <stddef.h>
#include <stdint.h>

#include "zi_common.h"

/* ---------------------------------------------------------------------------------------- */
/* CUDA generator (Philox)                                                                  */

/* torch's launch geometry for a draw of n elements on a GPU with `sms` multiprocessors of
   `max_threads_per_sm` threads: T = 256 * min(ceil(n / 256), sms * (max_threads_per_sm / 256))
   threads. Returns T (0 for n == 0). */
uint64_t zi_philox_threads(uint64_t n, int sms, int max_threads_per_sm);

/* How much one torch.randn of n elements advances the generator's philox offset:
   ((n - 1) / (4 T) + 1) * 4 (already a multiple of 4); 0 for n == 0. */
uint64_t zi_philox_offset_increment(uint64_t n, int sms, int max_threads_per_sm);

/* out[n] = torch.randn(n, generator=g, device="cuda") for g = torch.Generator("cuda") seeded
   with `seed` whose philox offset is `offset` (0 when freshly seeded; see
   zi_philox_offset_increment for later draws), on a GPU with that many SMs / threads per SM
   (H100: 132 x 2048). Float32, mean 0, std 1. Any shape with n elements draws the same values.
   n is limited to 2^29 (torch splits larger draws into several launches). ZI_ERR_ARG on bad
   arguments. Parallel over OpenMP threads. */
zi_status zi_randn_cuda_philox(float *out, size_t n, uint64_t seed, uint64_t offset, int sms, int max_threads_per_sm);

/* ---------------------------------------------------------------------------------------- */
/* CPU generator (mt19937)                                                                  */

#define ZI_MT_N 624

/* torch's CPUGeneratorImpl: the engine plus the cached second Box-Muller sample of the
   scalar (double) path. */
typedef struct ZiCpuGenerator {
    uint64_t seed;            /* initial_seed(); the engine uses its low 32 bits        */
    uint32_t state[ZI_MT_N];  /* mt19937 state vector                                   */
    int32_t left;             /* draws left before the next twist (1..624)              */
    uint32_t next;            /* index of the next state word                           */
    int32_t has_next_double;  /* next_double_normal_sample is set                       */
    double next_double;       /* the cached sample (r * sin(theta))                     */
} ZiCpuGenerator;

/* Which of torch's CPU kernels to mirror for size >= 16 (they round differently): AVX2 (the
   avx_mathfun polynomials with FMA; also what AVX512 machines run) or the scalar kernel (the
   DEFAULT build and non-x86: libm's logf / sinf / cosf). NATIVE picks what torch picks on this
   CPU: scalar if ATEN_CPU_CAPABILITY=default or the CPU lacks AVX2+FMA, else AVX2. */
typedef enum { ZI_CPU_RANDN_NATIVE = 0, ZI_CPU_RANDN_AVX2 = 1, ZI_CPU_RANDN_SCALAR = 2 } ZiCpuRandnKind;

void zi_cpu_generator_seed(ZiCpuGenerator *g, uint64_t seed);   /* manual_seed(seed)     */
uint32_t zi_cpu_generator_u32(ZiCpuGenerator *g);               /* CPUGeneratorImpl::random() */
ZiCpuRandnKind zi_cpu_randn_native_kind(void);                  /* AVX2 or SCALAR        */

/* out[n] = torch.randn(n, generator=g) (CPU), advancing g as torch does. */
zi_status zi_randn_cpu_generator(ZiCpuGenerator *g, float *out, size_t n, ZiCpuRandnKind kind);

/* out[n] = torch.randn(n, generator=torch.Generator("cpu").manual_seed(seed)), native kernel. */
zi_status zi_randn_cpu_mt19937(float *out, size_t n, uint64_t seed);

/* torch's get_state() byte layout of a CPU generator (CPUGeneratorImplState, 5056 bytes). */
#define ZI_CPU_GEN_STATE_BYTES 5056
void zi_cpu_generator_pack(const ZiCpuGenerator *g, uint8_t out[ZI_CPU_GEN_STATE_BYTES]);
zi_status zi_cpu_generator_unpack(ZiCpuGenerator *g, const uint8_t *in, size_t len);

#endif /* ZI_RNG_H */
