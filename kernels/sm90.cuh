/*
 * sm90.cuh - the Hopper (sm_90a) primitives shared by attention_sm90.cu and gemm_sm90.cu:
 *   device (only where ZI_SM90_DEVICE_CODE is defined, i.e. code compiled for sm_90a): mbarrier
 *     init / expect_tx / arrive / wait, the 2D TMA tile load and store (bulk groups, proxy fence),
 *     the wgmma shared-memory descriptor
 *     (128-byte swizzle), wgmma fence / commit / wait, register fences, bf16x2 packing;
 *   host: the sm_90a probe (does the loaded binary hold sm_90a code for this device?), the
 *     tensor-map encoder from the driver entry point (cudart is linked statically, libcuda is not
 *     linked), the 2D tensor map of a row-major bf16 matrix, a once-read environment switch.
 * Every function here is static: each including .cu file gets its own copy (and its own caches).
 */
#ifndef ZI_SM90_CUH
#define ZI_SM90_CUH

#include "common.cuh"

#include <cuda.h> /* CUtensorMap and its enums (types only; no libcuda symbol is referenced) */
#include <cudaTypedefs.h>
#include <stdlib.h>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ZI_SM90_DEVICE_CODE 1
#endif

// ----------------------------------------------------------------------------------------------
// PTX wrappers (sm_90a)

#ifdef ZI_SM90_DEVICE_CODE
static __device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

static __device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
static __device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
static __device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
/* spin until the barrier's phase with parity `parity` has completed */
static __device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    asm volatile(
        "{\n"
        ".reg .pred done;\n"
        "WAIT_%=:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra WAIT_%=;\n"
        "}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
}
/* makes the mbarrier inits visible to the async proxy (TMA) and the cluster; one thread, after its inits */
static __device__ __forceinline__ void mbar_init_fence() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

/* box of the 2D tensor map at (c0 = column, c1 = row) -> shared memory, completion counted on bar */
static __device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap *map, int c0, int c1, uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
        "l"((uint64_t)map), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
}

/* shared memory -> box of the 2D tensor map at (c0 = column, c1 = row), in this thread's current bulk
   group; elements past the tensor's end are not written */
static __device__ __forceinline__ void tma_store_2d(const CUtensorMap *map, uint32_t src, int c0, int c1) {
    asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%1, %2}], [%3];\n" ::"l"((uint64_t)map),
                 "r"(c0), "r"(c1), "r"(src)
                 : "memory");
}
static __device__ __forceinline__ void tma_store_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
/* until at most N of this thread's committed store groups still read their shared memory source */
template <int N>
static __device__ __forceinline__ void tma_store_wait_read() {
    asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
/* until at most N of this thread's committed store groups are incomplete (their global writes included) */
template <int N>
static __device__ __forceinline__ void tma_store_wait() { asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory"); }
/* this thread's generic-proxy shared memory writes become visible to the async proxy (a TMA store) */
static __device__ __forceinline__ void fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

/* wgmma shared-memory matrix descriptor, 128-byte swizzle: start address, leading / stride byte
   offsets (>> 4 each), layout type 1 in bits 62-63; base offset 0 (every tile is 1024-byte aligned) */
static __device__ __forceinline__ uint64_t wg_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
    return (uint64_t)((addr & 0x3FFFF) >> 4) | (uint64_t)((lbo >> 4) & 0x3FFF) << 16 |
           (uint64_t)((sbo >> 4) & 0x3FFF) << 32 | (uint64_t)1 << 62;
}

static __device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
static __device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
static __device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }

/* keeps the compiler from moving accesses of registers that an in-flight wgmma owns across this point */
template <int N>
static __device__ __forceinline__ void reg_fence(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(d[i])::"memory");
}
template <int N>
static __device__ __forceinline__ void reg_fence(uint32_t (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+r"(d[i])::"memory");
}

static __device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&h);
}
#endif /* ZI_SM90_DEVICE_CODE */

/* writes 1 where this binary's code for the running device was compiled for sm_90a */
static __global__ void sm90a_probe_kernel(int *flag) {
#ifdef ZI_SM90_DEVICE_CODE
    *flag = 1;
#else
    *flag = 0;
#endif
}

// ----------------------------------------------------------------------------------------------
// host side

#define ZI_SM90_MAX_DEVICES 64

/* 1 when device dev can run the sm_90a kernels `kernels[0..n)`: compute capability 9.x, at least
   smem_bytes of opt-in shared memory (set as each kernel's dynamic limit), the loaded code is sm_90a
   (probe). state[ZI_SM90_MAX_DEVICES] is the caller's per-device cache (0 unknown, 1 ready, 2 not),
   filled once per device (a synchronous copy; skipped, without caching, while `stream` is being
   captured into a graph). The cache is read and written atomically: threads racing on a first call
   probe twice and agree. */
static int sm90_kernels_ready(int *state, int dev, cudaStream_t stream, int smem_bytes, const void *const *kernels,
                              int n_kernels) {
    if (dev < 0 || dev >= ZI_SM90_MAX_DEVICES) return 0;
    int known = __atomic_load_n(&state[dev], __ATOMIC_ACQUIRE);
    if (known) return known == 1;
    cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream, &cap) != cudaSuccess || cap != cudaStreamCaptureStatusNone) return 0;
    int major = 0, optin = 0, ok = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (major == 9 && optin >= smem_bytes) {
        int *d_flag = NULL, flag = 0;
        if (cudaMalloc(&d_flag, sizeof(int)) == cudaSuccess) {
            sm90a_probe_kernel<<<1, 1>>>(d_flag);
            if (cudaMemcpy(&flag, d_flag, sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess && flag == 1) ok = 1;
            cudaFree(d_flag);
        }
        for (int i = 0; ok && i < n_kernels; i++)
            ok = cudaFuncSetAttribute(kernels[i], cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes) == cudaSuccess;
    }
    (void)cudaGetLastError(); /* a failed probe is an answer, not an error of the caller's op */
    __atomic_store_n(&state[dev], ok ? 1 : 2, __ATOMIC_RELEASE);
    return ok;
}

/* 1 when environment variable `name` is "0..." (read once into *cache, which starts at -1) */
static int sm90_env_off(const char *name, int *cache) {
    int off = __atomic_load_n(cache, __ATOMIC_RELAXED);
    if (off < 0) {
        const char *e = getenv(name);
        off = e && e[0] == '0';
        __atomic_store_n(cache, off, __ATOMIC_RELAXED);
    }
    return off;
}

static PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder(void) {
    static void *fn;
    static int tried;
    if (!__atomic_load_n(&tried, __ATOMIC_ACQUIRE)) {
        void *p = NULL;
        cudaDriverEntryPointQueryResult q;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) != cudaSuccess ||
            q != cudaDriverEntryPointSuccess)
            p = NULL;
        (void)cudaGetLastError();
        __atomic_store_n(&fn, p, __ATOMIC_RELAXED);
        __atomic_store_n(&tried, 1, __ATOMIC_RELEASE);
    }
    return (PFN_cuTensorMapEncodeTiled_v12000)__atomic_load_n(&fn, __ATOMIC_RELAXED);
}

/* map over a row-major [rows][cols] bf16 matrix (cols % 8 == 0, 16-byte aligned base), boxes of 64
   columns (128 bytes) x box_rows rows with the 128-byte swizzle; rows past `rows` and columns past
   `cols` read as zero */
static bool encode_map(PFN_cuTensorMapEncodeTiled_v12000 enc, CUtensorMap *map, const void *base, int rows, int cols,
                       int box_rows) {
    cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)rows}, strides[1] = {(cuuint64_t)cols * sizeof(bf16)};
    cuuint32_t box[2] = {64, (cuuint32_t)box_rows}, estr[2] = {1, 1};
    return enc(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void *>(base), dims, strides, box, estr,
               CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

#endif /* ZI_SM90_CUH */
