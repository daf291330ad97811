/*
 * sm90.cuh - the Hopper (sm_90a) primitives shared by attention_sm90.cu, gemm_sm90.cu and conv.cu:
 *   device (only where ZI_SM90_DEVICE_CODE is defined, i.e. code compiled for sm_90a): mbarrier
 *     init / expect_tx / arrive / wait, the 2D TMA tile load and store (bulk groups, proxy fence),
 *     the wgmma shared-memory descriptor
 *     (128-byte swizzle), wgmma fence / commit / wait, the accumulator register lists of the wgmma
 *     inline PTX, m64n128 / m64n256 wgmma with both operands in shared memory, register fences;
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

/* Register lists of wgmma accumulators for inline PTX: SM90_ACC{64,128}_STR is the "{%0, ..., %N-1}"
   operand list of a float d[N] bound by SM90_ACC{64,128}_OPS(d) (m64n128 and m64n256 fp32 tiles) */
#define SM90_REGS_0_63 \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define SM90_ACC64_STR "{" SM90_REGS_0_63 "}"
#define SM90_ACC128_STR \
    "{" SM90_REGS_0_63 ", " \
    "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
    "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, " \
    "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
    "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127" \
    "}"
#define SM90_ACC64_OPS(d) \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define SM90_ACC128_OPS(d) \
    SM90_ACC64_OPS(d), \
    "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
    "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
    "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
    "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), \
    "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), \
    "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), \
    "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
    "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

/* d[64x128] (+)= A[64x16] B[16x128]; A and B K-major in shared memory; accumulate == 0 overwrites d */
static __device__ __forceinline__ void wgmma_ss_n128(float (&d)[64], uint64_t da, uint64_t db, int accumulate) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " SM90_ACC64_STR ", %64, %65, p, 1, 1, 0, 0;\n"
        "}\n"
        : SM90_ACC64_OPS(d)
        : "l"(da), "l"(db), "r"(accumulate));
}
/* d[64x256] (+)= A[64x16] B[16x256]; A and B K-major in shared memory; accumulate == 0 overwrites d */
static __device__ __forceinline__ void wgmma_ss_n256(float (&d)[128], uint64_t da, uint64_t db, int accumulate) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 " SM90_ACC128_STR ", %128, %129, p, 1, 1, 0, 0;\n"
        "}\n"
        : SM90_ACC128_OPS(d)
        : "l"(da), "l"(db), "r"(accumulate));
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

/* map over a row-major [rows][cols] bf16 matrix whose rows are ld elements apart (ld >= cols, ld % 8 == 0,
   16-byte aligned base), boxes of 64 columns (128 bytes) x box_rows rows with the 128-byte swizzle; rows
   past `rows` and columns past `cols` read as zero */
static bool encode_map_ld(PFN_cuTensorMapEncodeTiled_v12000 enc, CUtensorMap *map, const void *base, int rows, int cols,
                          long ld, int box_rows) {
    if (ld < cols || ld % 8) return false;
    cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)rows}, strides[1] = {(cuuint64_t)ld * sizeof(bf16)};
    cuuint32_t box[2] = {64, (cuuint32_t)box_rows}, estr[2] = {1, 1};
    return enc(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void *>(base), dims, strides, box, estr,
               CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

/* the same over a packed [rows][cols] matrix (ld = cols) */
static bool encode_map(PFN_cuTensorMapEncodeTiled_v12000 enc, CUtensorMap *map, const void *base, int rows, int cols,
                       int box_rows) {
    return encode_map_ld(enc, map, base, rows, cols, cols, box_rows);
}

#endif /* ZI_SM90_CUH */
