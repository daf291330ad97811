/*
 * ops_cuda.c - the CUDA backend: the ZiOps table for one GPU. Activations and weights are
 * bf16 (2 bytes), arithmetic and statistics fp32. Everything runs on one stream owned by the
 * backend; matmul, unpadded 1x1 and Ci % 8 != 0 convolutions (im2col) and attention with HD > 128
 * go through cuBLASLt (fp32 compute, heuristic algorithm cached per shape and alignment), the rest,
 * other convolutions (implicit GEMM, kernels/conv.cu) and attention with HD <= 128 included, through
 * the launchers in kernels/ (zi_kernels.h).
 * Scratch memory (packed conv inputs and weights or im2col columns, groupnorm statistics,
 * upload/download staging) lives in the backend and only grows, so hot ops never call cudaMalloc.
 * Host-side state is guarded by a mutex, so two pipelines on one GPU may share the backend.
 * Env ZIMAGE_SYNC=1 synchronises and checks after every op, so an asynchronous fault is reported
 * by the op that caused it.
 * Plain C: includes cuda_runtime.h and cublasLt.h, never Python.h.
 */
#include "ops.h"
#include "zi_kernels.h"

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STAGE_BYTES ((size_t)64 << 20)   /* each of 2 pinned + 2 device staging buffers */
#define LT_WORKSPACE ((size_t)32 << 20)  /* cuBLASLt workspace (the Hopper recommendation) */
#define LT_CACHE 128                     /* cached matmul plans                           */
#define LT_CANDIDATES 8                  /* heuristic candidates timed for large products */
#define LT_TUNE_FLOP 2e10                /* time the candidates of products above this    */
#define IM2COL_BYTES ((size_t)256 << 20) /* conv2d column buffer cap; larger convs chunk   */
#define ATTN_SCRATCH_MB 128              /* HD > 128 attention score chunks, in the conv scratch (env ZIMAGE_ATTN_SCRATCH_MB) */
#define FFN_SCRATCH_MB 64                /* matmul_swiglu without the sm_90a kernel: [rows, 2F] bands (env ZIMAGE_FFN_SCRATCH_MB) */
#define CONV_SCRATCH_MB 128              /* a conv's packed NHWC input; larger images go in row bands */

/* one cuBLASLt problem: column-major C[m,n] = alpha op(A) op(B) (+ bias[m]) + beta C; A, B bf16, C bf16 or f32 */
typedef struct LtPlan {
    int m, n, k, lda, ldb, ldc, opa, opb, bias, beta1, c_f32;
    int align_a, align_b, align_c;   /* pointer alignments the algorithm was chosen for */
    int found;                       /* 0: cuBLASLt has no algorithm, use the fallback  */
    int tuned;                       /* the heuristic's candidates were timed            */
    cublasLtMatmulHeuristicResult_t cand[LT_CANDIDATES];
    int ncand;                       /* heuristic candidates, best-ranked first          */
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
} LtPlan;

typedef struct Scratch {
    void *p;
    size_t n;                        /* bytes */
} Scratch;

typedef struct ZiCuda {
    int device;
    char name[24];                   /* "cuda:N"                                         */
    int sync_each_op;                /* ZIMAGE_SYNC=1                                    */
    int gemm_tune;                   /* ZIMAGE_GEMM_TUNE=1: time candidates (off: no gain measured) */
    int profile;                     /* ZIMAGE_PROFILE=1: time every op with events      */
    cudaEvent_t prof_start;          /* recorded by OP_BEGIN while profiling              */
    char prof_key[64];               /* op name with sizes, set by ops that have several  */
    cudaStream_t stream;
    cublasLtHandle_t lt;
    void *workspace;                 /* LT_WORKSPACE bytes                               */
    LtPlan plans[LT_CACHE];
    int nplans, evict;
    Scratch col, stats, tmp;         /* conv packing / im2col columns and the HD > 128 attention's score chunks,
                                        groupnorm + sumsq, copy */
    Scratch ffn;                     /* matmul_swiglu fallback: gate|up of a band of rows */
    size_t attn_bytes;               /* cap of an attention score chunk (ZIMAGE_ATTN_SCRATCH_MB) */
    size_t ffn_bytes;                /* cap of ffn (ZIMAGE_FFN_SCRATCH_MB)               */
    size_t conv_bytes;               /* cap of a conv's packed input (ZIMAGE_CONV_SCRATCH_MB) */
    void *pinned[2];                 /* host staging, STAGE_BYTES each (NULL until used) */
    void *dstage[2];                 /* device staging, STAGE_BYTES each                 */
    cudaEvent_t stage_ev[2];         /* staging buffer i is free again once this fires   */
    pthread_mutex_t lock;            /* plans, scratch and staging                       */
    unsigned long scratch_epoch;     /* bumped whenever a scratch buffer moves or is freed */
    int graphs;                      /* capture_begin allowed (not ZIMAGE_GRAPHS=0/PROFILE/SYNC) */
    cudaStream_t cap_stream;         /* where a graph is recorded (created on first use)  */
} ZiCuda;

/* While a thread records a graph, its ops go to the backend's capture stream; every other thread's
   ops still go to the backend's stream, so they are neither recorded nor held up. */
static __thread ZiCuda *tls_capture_cu;
#define STREAM(cu) (tls_capture_cu == (cu) ? (cu)->cap_stream : (cu)->stream)

static const ZiOps zi_ops_cuda;

/* offload: device memory accounting (at the end of the file) */
static zi_status mem_track_add(int device, void *p, size_t bytes, int host);
static void mem_track_remove(void *p);

// ----------------------------------------------------------------------------------------------
// error checking: record the call, file:line and CUDA's message, then jump to `fail:`

/* errors that leave the CUDA context corrupted: every later call in this process fails too */
static int cuda_error_is_sticky(cudaError_t e) {
    switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorAssert:
    case cudaErrorECCUncorrectable:
    case cudaErrorLaunchTimeout: return 1;
    default: return 0;
    }
}

static zi_status cuda_fail(const char *call, const char *file, int line, cudaError_t e) {
    cudaGetLastError(); /* clear a non-sticky error so the next call starts clean */
    return zi_fail(ZI_ERR_CUDA, "%s failed at %s:%d: %s%s", call, file, line, cudaGetErrorString(e),
                   cuda_error_is_sticky(e) ? " (the GPU context is now unusable: restart the process and load the "
                                             "pipeline again)"
                                           : "");
}

#define CU_TRY(call)                                                             \
    do {                                                                         \
        cudaError_t e_ = (call);                                                 \
        if (e_ != cudaSuccess) { st = cuda_fail(#call, __FILE__, __LINE__, e_); goto fail; } \
    } while (0)

#define LT_TRY(call)                                                                                       \
    do {                                                                                                   \
        cublasStatus_t s_ = (call);                                                                        \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                 \
            st = zi_fail(ZI_ERR_CUBLAS, "%s failed at %s:%d: %s", #call, __FILE__, __LINE__, cublasLtGetStatusString(s_)); \
            goto fail;                                                                                     \
        }                                                                                                  \
    } while (0)

/* cudaMalloc, or ZI_ERR_GPU_NOMEM saying how much was asked and how much is free */
static zi_status dev_malloc(ZiCuda *cu, void **p, size_t bytes) {
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 1);
    if (e == cudaSuccess) {
        zi_status tracked = mem_track_add(cu->device, *p, bytes ? bytes : 1, 0);
        if (tracked != ZI_OK) {
            cudaFree(*p);
            *p = NULL;
        }
        return tracked;
    }
    *p = NULL;
    cudaGetLastError();
    size_t fr = 0, tot = 0;
    cudaMemGetInfo(&fr, &tot);
    return zi_fail(e == cudaErrorMemoryAllocation ? ZI_ERR_GPU_NOMEM : ZI_ERR_CUDA,
                   "cudaMalloc of %zu bytes (%.1f MiB) failed on %s: %s; %.1f MiB of %.1f MiB free", bytes,
                   bytes / 1048576.0, cu->name, cudaGetErrorString(e), fr / 1048576.0, tot / 1048576.0);
}

/* make the backend's GPU current for this thread (a thread may drive several GPUs) */
static cudaError_t set_device(ZiCuda *cu) {
    int d = -1;
    cudaError_t e = cudaGetDevice(&d);
    if (e != cudaSuccess || d == cu->device) return e;
    return cudaSetDevice(cu->device);
}

/* The scratch buffers and the staging buffers back to the device and the host (they regrow on use);
   caller holds the lock and has waited for the stream */
static void release_scratch(ZiCuda *cu) {
    Scratch *sc[] = {&cu->col, &cu->stats, &cu->tmp, &cu->ffn};
    cu->scratch_epoch++; /* recorded graphs may point into them */
    for (size_t i = 0; i < sizeof sc / sizeof sc[0]; i++) {
        mem_track_remove(sc[i]->p);
        cudaFree(sc[i]->p);
        sc[i]->p = NULL;
        sc[i]->n = 0;
    }
    for (int i = 0; i < 2; i++) {
        mem_track_remove(cu->dstage[i]);
        cudaFree(cu->dstage[i]);
        cudaFreeHost(cu->pinned[i]);
        cu->dstage[i] = cu->pinned[i] = NULL;
    }
}

/* grow a scratch buffer to at least `bytes` (old contents are not kept) */
static zi_status scratch_reserve(ZiCuda *cu, Scratch *s, size_t bytes) {
    if (s->n >= bytes) return ZI_OK;
    if (tls_capture_cu == cu) /* cudaFree would wait on a stream that is recording, not running */
        return zi_fail(ZI_ERR_STATE, "scratch buffer grows while recording a CUDA graph");
    cu->scratch_epoch++; /* recorded graphs may point into the old buffer */
    mem_track_remove(s->p);
    cudaFree(s->p); /* waits for work that may still read it */
    s->p = NULL;
    s->n = 0;
    size_t want = (bytes + ((size_t)1 << 20) - 1) & ~(((size_t)1 << 20) - 1);
    zi_status st = dev_malloc(cu, &s->p, want);
    if (st == ZI_OK) s->n = want;
    return st;
}

// ----------------------------------------------------------------------------------------------
// ZIMAGE_PROFILE=1: every op between OP_BEGIN and op_end is bracketed by two events; the times are
// summed per op name (with sizes for matmul and attention) and printed to stderr at exit. A
// development aid only: events are kept until exit.

typedef struct ProfEntry { char key[64]; cudaEvent_t start, stop; } ProfEntry;
static ProfEntry *g_prof;
static size_t g_nprof, g_cap_prof;
static pthread_mutex_t g_prof_lock = PTHREAD_MUTEX_INITIALIZER;

static void prof_report(void) {
    typedef struct { char key[64]; double ms; long n; } Sum;
    Sum sums[256];
    int ns = 0;
    double total = 0;
    for (size_t i = 0; i < g_nprof; i++) {
        float ms = 0;
        if (cudaEventSynchronize(g_prof[i].stop) != cudaSuccess ||
            cudaEventElapsedTime(&ms, g_prof[i].start, g_prof[i].stop) != cudaSuccess)
            continue;
        int j = 0;
        while (j < ns && strcmp(sums[j].key, g_prof[i].key)) j++;
        if (j == ns && ns < 256) { snprintf(sums[ns].key, sizeof sums[ns].key, "%s", g_prof[i].key); sums[ns].ms = 0; sums[ns++].n = 0; }
        if (j < ns) { sums[j].ms += ms; sums[j].n++; }
        total += ms;
    }
    fprintf(stderr, "zimage profile: %zu ops, %.1f ms in ops\n", g_nprof, total);
    for (int a = 0; a < ns; a++) /* by time, descending */
        for (int b = a + 1; b < ns; b++)
            if (sums[b].ms > sums[a].ms) { Sum t = sums[a]; sums[a] = sums[b]; sums[b] = t; }
    for (int a = 0; a < ns; a++)
        fprintf(stderr, "  %-40s %7ld calls %10.2f ms %8.1f us/call %5.1f%%\n", sums[a].key, sums[a].n, sums[a].ms,
                1000.0 * sums[a].ms / sums[a].n, 100.0 * sums[a].ms / (total > 0 ? total : 1));
}

/* Forget the ops timed so far (after a warm-up); exported for benchmarks/profile_pipeline.py (ctypes). */
void zi_cuda_profile_reset(void) {
    pthread_mutex_lock(&g_prof_lock);
    for (size_t i = 0; i < g_nprof; i++) {
        cudaEventSynchronize(g_prof[i].stop);
        cudaEventDestroy(g_prof[i].start);
        cudaEventDestroy(g_prof[i].stop);
    }
    g_nprof = 0;
    pthread_mutex_unlock(&g_prof_lock);
}

static void prof_begin(ZiCuda *cu) {
    cu->prof_key[0] = 0;
    if (cu->prof_start) cudaEventDestroy(cu->prof_start); /* left by an op that returned early */
    if (cudaEventCreate(&cu->prof_start) == cudaSuccess) cudaEventRecord(cu->prof_start, STREAM(cu));
    else cu->prof_start = NULL;
}

static void prof_end(ZiCuda *cu, const char *op) {
    cudaEvent_t stop;
    if (!cu->prof_start || cudaEventCreate(&stop) != cudaSuccess) return;
    cudaEventRecord(stop, STREAM(cu));
    pthread_mutex_lock(&g_prof_lock);
    if (g_nprof == g_cap_prof) {
        size_t cap = g_cap_prof ? 2 * g_cap_prof : 4096;
        ProfEntry *n = realloc(g_prof, cap * sizeof *n);
        if (n) g_prof = n, g_cap_prof = cap;
    }
    if (g_nprof < g_cap_prof) {
        ProfEntry *e = &g_prof[g_nprof++];
        snprintf(e->key, sizeof e->key, "%s", cu->prof_key[0] ? cu->prof_key : op);
        e->start = cu->prof_start;
        e->stop = stop;
    }
    pthread_mutex_unlock(&g_prof_lock);
    cu->prof_start = NULL;
}

/* ZIMAGE_SYNC=1: wait for the op and report its fault here */
static zi_status op_end(ZiCuda *cu, const char *op) {
    if (cu->profile) prof_end(cu, op);
    if (!cu->sync_each_op) return ZI_OK;
    cudaError_t e = cudaStreamSynchronize(STREAM(cu));
    if (e == cudaSuccess) e = cudaGetLastError();
    if (e != cudaSuccess) return zi_fail(ZI_ERR_CUDA, "%s on %s failed (ZIMAGE_SYNC=1 check): %s", op, cu->name, cudaGetErrorString(e));
    return ZI_OK;
}

#define OP_BEGIN(be)                          \
    ZiCuda *cu = (ZiCuda *)(be)->impl;        \
    zi_status st = ZI_OK;                     \
    CU_TRY(set_device(cu));                   \
    if (cu->profile) prof_begin(cu)

// ----------------------------------------------------------------------------------------------
// device count and creation

int zi_cuda_device_count_impl(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        zi_fail(ZI_ERR_CUDA, "no usable CUDA driver or GPU: cudaGetDeviceCount failed: %s", cudaGetErrorString(e));
        return 0;
    }
    return n;
}

static void cuda_destroy(ZiCuda *cu) {
    if (!cu) return;
    for (int i = 0; i < cu->nplans; i++) {
        cublasLtMatrixLayoutDestroy(cu->plans[i].la);
        cublasLtMatrixLayoutDestroy(cu->plans[i].lb);
        cublasLtMatrixLayoutDestroy(cu->plans[i].lc);
        cublasLtMatmulDescDestroy(cu->plans[i].desc);
    }
    release_scratch(cu);
    for (int i = 0; i < 2; i++)
        if (cu->stage_ev[i]) cudaEventDestroy(cu->stage_ev[i]);
    cudaFree(cu->workspace);
    if (cu->lt) cublasLtDestroy(cu->lt);
    if (cu->stream) cudaStreamDestroy(cu->stream);
    if (cu->cap_stream) cudaStreamDestroy(cu->cap_stream);
    pthread_mutex_destroy(&cu->lock);
    free(cu);
}

zi_status zi_backend_cuda_create(int device, ZiBackend **out) {
    zi_status st = ZI_OK;
    ZiBackend *be = NULL;
    ZiCuda *cu = NULL;
    *out = NULL;
    ZI_CALLOC(be, 1, sizeof *be);
    ZI_CALLOC(cu, 1, sizeof *cu);
    pthread_mutex_init(&cu->lock, NULL);
    cu->device = device;
    snprintf(cu->name, sizeof cu->name, "cuda:%d", device);
    const char *sync = getenv("ZIMAGE_SYNC");
    cu->sync_each_op = sync && sync[0] && strcmp(sync, "0") != 0;
    const char *tune = getenv("ZIMAGE_GEMM_TUNE");
    cu->gemm_tune = tune && tune[0] && strcmp(tune, "0") != 0;
    const char *prof = getenv("ZIMAGE_PROFILE");
    cu->profile = prof && prof[0] && strcmp(prof, "0") != 0;
    const char *graphs = getenv("ZIMAGE_GRAPHS");
    cu->graphs = !(graphs && strcmp(graphs, "0") == 0) && !cu->profile && !cu->sync_each_op;
    const char *cmb = getenv("ZIMAGE_CONV_SCRATCH_MB");
    cu->conv_bytes = (size_t)(cmb && atoi(cmb) > 0 ? atoi(cmb) : CONV_SCRATCH_MB) << 20;
    const char *amb = getenv("ZIMAGE_ATTN_SCRATCH_MB");
    cu->attn_bytes = (size_t)(amb && atoi(amb) > 0 ? atoi(amb) : ATTN_SCRATCH_MB) << 20;
    const char *fmb = getenv("ZIMAGE_FFN_SCRATCH_MB");
    cu->ffn_bytes = (size_t)(fmb && atoi(fmb) > 0 ? atoi(fmb) : FFN_SCRATCH_MB) << 20;
    CU_TRY(cudaSetDevice(device));
    CU_TRY(cudaStreamCreateWithFlags(&cu->stream, cudaStreamNonBlocking));
    if (cu->profile) atexit(prof_report); /* after cudart's own exit handler was registered: runs before it */
    for (int i = 0; i < 2; i++) CU_TRY(cudaEventCreateWithFlags(&cu->stage_ev[i], cudaEventDisableTiming));
    LT_TRY(cublasLtCreate(&cu->lt));
    ZI_TRY(dev_malloc(cu, &cu->workspace, LT_WORKSPACE));
    be->ops = &zi_ops_cuda;
    be->name = cu->name;
    be->device = device;
    be->act_size = 2;
    be->weight_size = 2;
    be->impl = cu;
    *out = be;
    return ZI_OK;
fail:
    zi_fail_context(st, "creating the CUDA backend on device %d", device);
    cuda_destroy(cu);
    free(be);
    return st;
}

// ----------------------------------------------------------------------------------------------
// memory and transfers

static zi_status cuda_alloc(ZiBackend *be, void **ptr, size_t bytes) {
    OP_BEGIN(be);
    *ptr = NULL;
    ZI_TRY(dev_malloc(cu, ptr, bytes));
    CU_TRY(cudaMemsetAsync(*ptr, 0, bytes, STREAM(cu)));
    return op_end(cu, "alloc");
fail:
    return st;
}

static void cuda_free(ZiBackend *be, void *ptr) {
    if (!ptr) return;
    ZiCuda *cu = be->impl;
    set_device(cu);
    mem_track_remove(ptr);
    cudaFree(ptr);
}

/* pinned host and device staging buffers, on first use (caller holds the lock) */
static zi_status ensure_staging(ZiCuda *cu) {
    zi_status st = ZI_OK;
    for (int i = 0; i < 2; i++) {
        if (!cu->pinned[i]) CU_TRY(cudaHostAlloc(&cu->pinned[i], STAGE_BYTES, cudaHostAllocDefault));
        if (!cu->dstage[i]) ZI_TRY(dev_malloc(cu, &cu->dstage[i], STAGE_BYTES));
    }
    return ZI_OK;
fail:
    return st;
}

/* memcpy into the pinned staging buffer; large copies (weights read from the mmapped, page-cached
   checkpoint) are split over the OpenMP threads: one core's memcpy is the load-time bottleneck */
static void staging_memcpy(void *dst, const void *src, size_t bytes) {
    const size_t piece = (size_t)1 << 20;
    if (bytes < 4 * piece) {
        memcpy(dst, src, bytes);
        return;
    }
    long pieces = (long)((bytes + piece - 1) / piece);
#pragma omp parallel for schedule(static)
    for (long p = 0; p < pieces; p++) {
        size_t o = (size_t)p * piece, len = bytes - o < piece ? bytes - o : piece;
        memcpy((char *)dst + o, (const char *)src + o, len);
    }
}

/* host src[n] of dtype (0 f32, 1 bf16, 2 f16) -> device bf16 dst[n], in STAGE_BYTES chunks through two
   pinned buffers: the CPU fills buffer i while the GPU copies and converts buffer i^1 */
static zi_status upload_bf16(ZiCuda *cu, void *dst, const void *src, int dtype, size_t n) {
    zi_status st = ZI_OK;
    size_t es = dtype == 0 ? 4 : 2, chunk = STAGE_BYTES / es;
    pthread_mutex_lock(&cu->lock);
    ZI_TRY(ensure_staging(cu));
    int i = 0;
    for (size_t off = 0; off < n; off += chunk, i ^= 1) {
        size_t cnt = n - off < chunk ? n - off : chunk;
        CU_TRY(cudaEventSynchronize(cu->stage_ev[i])); /* buffer i's last copy and conversion are done */
        staging_memcpy(cu->pinned[i], (const char *)src + off * es, cnt * es);
        if (dtype == 1) {
            CU_TRY(cudaMemcpyAsync((char *)dst + off * 2, cu->pinned[i], cnt * 2, cudaMemcpyHostToDevice, STREAM(cu)));
        } else {
            CU_TRY(cudaMemcpyAsync(cu->dstage[i], cu->pinned[i], cnt * es, cudaMemcpyHostToDevice, STREAM(cu)));
            CU_TRY(zi_to_bf16_cuda((char *)dst + off * 2, cu->dstage[i], dtype, cnt, STREAM(cu)));
        }
        CU_TRY(cudaEventRecord(cu->stage_ev[i], STREAM(cu)));
    }
fail:
    pthread_mutex_unlock(&cu->lock);
    return st;
}

static zi_status cuda_upload(ZiBackend *be, void *dst, const float *src, size_t n) {
    OP_BEGIN(be);
    ZI_TRY(upload_bf16(cu, dst, src, 0, n));
    return op_end(cu, "upload");
fail:
    return st;
}

static zi_status cuda_upload_weight(ZiBackend *be, void *dst, const void *src, ZiDtype dt, size_t n) {
    OP_BEGIN(be);
    int code = dt == ZI_DT_F32 ? 0 : dt == ZI_DT_BF16 ? 1 : dt == ZI_DT_F16 ? 2 : -1;
    if (code < 0) return zi_fail(ZI_ERR_FORMAT, "cannot load weights of dtype %s", st_dtype_name(dt));
    ZI_TRY(upload_bf16(cu, dst, src, code, n));
    return op_end(cu, "upload_weight");
fail:
    return st;
}

static zi_status cuda_upload_f32(ZiBackend *be, float *dst, const float *src, size_t n) {
    OP_BEGIN(be);
    /* pageable source: returns once the data is staged, so the caller may free src */
    CU_TRY(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyHostToDevice, STREAM(cu)));
    return op_end(cu, "upload_f32");
fail:
    return st;
}

/* device bf16 src[n] -> host f32 dst[n]: convert on the GPU into staging, copy back, repeat */
static zi_status cuda_download(ZiBackend *be, float *dst, const void *src, size_t n) {
    OP_BEGIN(be);
    size_t chunk = STAGE_BYTES / sizeof(float);
    pthread_mutex_lock(&cu->lock);
    st = ensure_staging(cu);
    for (size_t off = 0; st == ZI_OK && off < n; off += chunk) {
        size_t cnt = n - off < chunk ? n - off : chunk;
        cudaError_t e = zi_bf16_to_f32_cuda(cu->dstage[0], (const char *)src + off * 2, cnt, STREAM(cu));
        if (e == cudaSuccess) e = cudaMemcpyAsync(cu->pinned[0], cu->dstage[0], cnt * 4, cudaMemcpyDeviceToHost, STREAM(cu));
        if (e == cudaSuccess) e = cudaStreamSynchronize(STREAM(cu));
        if (e != cudaSuccess) st = cuda_fail("download (convert, copy, synchronize)", __FILE__, __LINE__, e);
        else memcpy(dst + off, cu->pinned[0], cnt * 4);
    }
    pthread_mutex_unlock(&cu->lock);
    return st;
fail:
    return st;
}

static zi_status cuda_synchronize(ZiBackend *be) {
    OP_BEGIN(be);
    CU_TRY(cudaStreamSynchronize(STREAM(cu)));
    CU_TRY(cudaGetLastError());
    return ZI_OK;
fail:
    return st;
}

// ----------------------------------------------------------------------------------------------
// cuBLASLt

/* largest power of two dividing the address, capped at 256 (what cuBLASLt's alignment prefs take) */
static int ptr_align(const void *p) {
    uintptr_t a = (uintptr_t)p;
    int al = 1;
    while (al < 256 && (a & (uintptr_t)(2 * al - 1)) == 0) al *= 2;
    return al;
}

static zi_status lt_plan_create(ZiCuda *cu, LtPlan *p) {
    zi_status st = ZI_OK;
    cublasLtMatmulPreference_t pref = NULL;
    cublasOperation_t opa = p->opa ? CUBLAS_OP_T : CUBLAS_OP_N, opb = p->opb ? CUBLAS_OP_T : CUBLAS_OP_N;
    LT_TRY(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    if (p->bias) {
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        cudaDataType_t bt = CUDA_R_16BF;
        LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
        LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
    }
    LT_TRY(cublasLtMatrixLayoutCreate(&p->la, CUDA_R_16BF, p->opa ? p->k : p->m, p->opa ? p->m : p->k, p->lda));
    LT_TRY(cublasLtMatrixLayoutCreate(&p->lb, CUDA_R_16BF, p->opb ? p->n : p->k, p->opb ? p->k : p->n, p->ldb));
    LT_TRY(cublasLtMatrixLayoutCreate(&p->lc, p->c_f32 ? CUDA_R_32F : CUDA_R_16BF, p->m, p->n, p->ldc));
    LT_TRY(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = LT_WORKSPACE;
    /* split-K partial sums in fp32 only, never in the bf16 output type */
    uint32_t red = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &red, sizeof red));
    uint32_t aa = (uint32_t)p->align_a, ab = (uint32_t)p->align_b, ac = (uint32_t)p->align_c;
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof aa));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof ab));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac, sizeof ac));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac, sizeof ac));
    int nres = 0;
    cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(cu->lt, p->desc, p->la, p->lb, p->lc, p->lc, pref, LT_CANDIDATES,
                                                       p->cand, &nres);
    p->found = hs == CUBLAS_STATUS_SUCCESS && nres > 0;
    p->ncand = p->found ? nres : 0;
    if (p->found) p->algo = p->cand[0].algo;
    cublasLtMatmulPreferenceDestroy(pref);
    return ZI_OK;
fail:
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (p->la) cublasLtMatrixLayoutDestroy(p->la);
    if (p->lb) cublasLtMatrixLayoutDestroy(p->lb);
    if (p->lc) cublasLtMatrixLayoutDestroy(p->lc);
    if (p->desc) cublasLtMatmulDescDestroy(p->desc);
    memset(p, 0, sizeof *p);
    return st;
}

/* ZIMAGE_GEMM_TUNE=1: time the heuristic's candidates on the real operands (C is overwritten: only when
   beta = 0) and keep the fastest, unless it beats the top-ranked one by less than 3% (so the choice rarely
   flips between processes). Once per plan; synchronises the stream. Off by default: on an H100 the
   timed winners were 1-6% faster alone but the 1024^2 pipeline was not faster (1.120-1.129 s vs 1.115 s). */
static zi_status lt_tune(ZiCuda *cu, LtPlan *p, const void *A, const void *B, void *C, float alpha) {
    zi_status st = ZI_OK;
    cudaEvent_t ev[2] = {NULL, NULL};
    float beta = 0.0f, best_ms = 0.0f, first_ms = 0.0f;
    int best = 0;
    p->tuned = 1;
    if (p->ncand < 2) return ZI_OK;
    CU_TRY(cudaEventCreate(&ev[0]));
    CU_TRY(cudaEventCreate(&ev[1]));
    for (int i = 0; i < p->ncand; i++) {
        float ms = 0.0f;
        int ok = 1;
        for (int r = 0; r < 4 && ok; r++) { /* run 0 warms up; runs 1-3 timed */
            if (r == 1) CU_TRY(cudaEventRecord(ev[0], STREAM(cu)));
            ok = cublasLtMatmul(cu->lt, p->desc, &alpha, A, p->la, B, p->lb, &beta, C, p->lc, C, p->lc, &p->cand[i].algo,
                                cu->workspace, LT_WORKSPACE, STREAM(cu)) == CUBLAS_STATUS_SUCCESS;
        }
        CU_TRY(cudaEventRecord(ev[1], STREAM(cu)));
        CU_TRY(cudaEventSynchronize(ev[1]));
        CU_TRY(cudaEventElapsedTime(&ms, ev[0], ev[1]));
        if (!ok) continue;
        if (i == 0) first_ms = best_ms = ms;
        else if (ms < best_ms) best_ms = ms, best = i;
    }
    if (best && best_ms < 0.97f * first_ms) p->algo = p->cand[best].algo;
    if (cu->profile)
        fprintf(stderr, "zimage gemm tune m=%d n=%d k=%d: heuristic #0 %.1f us, best #%d %.1f us%s\n", p->m, p->n, p->k,
                1000 * first_ms / 3, best, 1000 * best_ms / 3, best && best_ms < 0.97f * first_ms ? " (taken)" : "");
fail:
    if (ev[0]) cudaEventDestroy(ev[0]);
    if (ev[1]) cudaEventDestroy(ev[1]);
    return st;
}

/* column-major C[m,n] = alpha op(A) op(B) (+ bias[m]) + beta C; A, B bf16, C bf16 (c_f32 = 0) or f32,
   fp32 compute. *done = 0 when cuBLASLt has no algorithm for this problem (the caller falls back).
   Caller holds the lock. */
static zi_status lt_matmul(ZiCuda *cu, int m, int n, int k, const void *A, int lda, int opa, const void *B, int ldb,
                           int opb, void *C, int ldc, int c_f32, const void *bias, float alpha, float beta, int *done) {
    zi_status st = ZI_OK;
    LtPlan key = {.m = m, .n = n, .k = k, .lda = lda, .ldb = ldb, .ldc = ldc, .opa = opa, .opb = opb,
                  .bias = bias != NULL, .beta1 = beta != 0.0f, .c_f32 = c_f32, .align_a = ptr_align(A),
                  .align_b = ptr_align(B), .align_c = ptr_align(C)};
    LtPlan *p = NULL;
    *done = 0;
    for (int i = 0; i < cu->nplans && !p; i++) {
        LtPlan *q = &cu->plans[i];
        if (q->m == m && q->n == n && q->k == k && q->lda == lda && q->ldb == ldb && q->ldc == ldc && q->opa == opa &&
            q->opb == opb && q->bias == key.bias && q->beta1 == key.beta1 && q->c_f32 == c_f32 && q->align_a == key.align_a &&
            q->align_b == key.align_b && q->align_c == key.align_c)
            p = q;
    }
    if (!p) {
        if (cu->nplans < LT_CACHE) {
            p = &cu->plans[cu->nplans++];
        } else { /* full: replace plans round robin */
            p = &cu->plans[cu->evict];
            cu->evict = (cu->evict + 1) % LT_CACHE;
            cublasLtMatrixLayoutDestroy(p->la);
            cublasLtMatrixLayoutDestroy(p->lb);
            cublasLtMatrixLayoutDestroy(p->lc);
            cublasLtMatmulDescDestroy(p->desc);
        }
        *p = key;
        st = lt_plan_create(cu, p);
        if (st != ZI_OK) {
            *p = cu->plans[--cu->nplans]; /* drop the half-made slot (kept compact) */
            return st;
        }
    }
    if (!p->found) return ZI_OK;
    if (bias) LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    if (!p->tuned && beta == 0.0f && cu->gemm_tune && 2.0 * m * n * k >= LT_TUNE_FLOP) ZI_TRY(lt_tune(cu, p, A, B, C, alpha));
    cublasStatus_t s = cublasLtMatmul(cu->lt, p->desc, &alpha, A, p->la, B, p->lb, &beta, C, p->lc, C, p->lc, &p->algo,
                                      cu->workspace, LT_WORKSPACE, STREAM(cu));
    if (s == CUBLAS_STATUS_NOT_SUPPORTED) { p->found = 0; return ZI_OK; }
    if (s != CUBLAS_STATUS_SUCCESS)
        return zi_fail(ZI_ERR_CUBLAS, "cublasLtMatmul (m=%d n=%d k=%d) failed on %s: %s", m, n, k, cu->name,
                       cublasLtGetStatusString(s));
    *done = 1;
    return ZI_OK;
fail:
    return st;
}

// ----------------------------------------------------------------------------------------------
// linear algebra

/* row-major out[M,N] = in[M,K] @ w[N,K]^T + bias[N] is column-major out^T[N,M] = w^T(op T) in^T(op N):
   cuBLASLt m = N, n = M, A = w (lda K, transposed), B = in (ldb K), C = out (ldc N); the bias
   epilogue adds per row of the column-major C, i.e. per output feature. */
static zi_status cuda_matmul(ZiBackend *be, void *out, const void *in, const void *w, const void *bias, int M, int K,
                             int N) {
    OP_BEGIN(be);
    if (M <= 0 || N <= 0) return ZI_OK;
    if (K <= 0) return zi_fail(ZI_ERR_ARG, "matmul: reduction size K = %d", K);
    int done = 0, epi_bias = bias && ((uintptr_t)bias & 15u) == 0;
    if (cu->profile) snprintf(cu->prof_key, sizeof cu->prof_key, "matmul M=%d K=%d N=%d", M, K, N);
    if (zi_gemv_suits(in, w, M, K)) { /* a few rows: memory-bound, our kernel reads w at full bandwidth */
        CU_TRY(zi_gemv_cuda(out, in, w, bias, M, K, N, STREAM(cu)));
        return op_end(cu, "matmul");
    }
    pthread_mutex_lock(&cu->lock);
    st = lt_matmul(cu, N, M, K, w, K, 1, in, K, 0, out, N, 0, epi_bias ? bias : NULL, 1.0f, 0.0f, &done);
    pthread_mutex_unlock(&cu->lock);
    if (st != ZI_OK) return st;
    if (!done) {
        CU_TRY(zi_matmul_fallback_cuda(out, in, w, bias, M, K, N, STREAM(cu)));
    } else if (bias && !epi_bias) {
        CU_TRY(zi_add_bias_cuda(out, bias, M, N, STREAM(cu)));
    }
    return op_end(cu, "matmul");
fail:
    return st;
}

static zi_status cuda_swiglu_pair(ZiBackend *be, void *out, const void *gu, int M, int F);

/* the fused sm_90a kernel as an op of its own (profiled as "matmul_swiglu"); *taken = 0: nothing ran */
static zi_status matmul_swiglu_sm90(ZiBackend *be, void *out, const void *in, const void *w, int M, int K, int F,
                                    int *taken) {
    OP_BEGIN(be);
    if (cu->profile) snprintf(cu->prof_key, sizeof cu->prof_key, "matmul_swiglu M=%d K=%d F=%d", M, K, F);
    CU_TRY(zi_matmul_swiglu_sm90_cuda(out, in, w, M, K, F, STREAM(cu), taken));
    if (!*taken) return ZI_OK; /* nothing ran (the next OP_BEGIN drops the unused start event) */
    return op_end(cu, "matmul_swiglu");
fail:
    return st;
}

/* out[M,F] = silu(in @ w[0:F]^T) * (in @ w[F:2F]^T). Hopper with sm_90a code: one fused kernel
   (zi_matmul_swiglu_sm90_cuda: K % 8 == 0, F % 128 == 0, 16-byte aligned buffers). Otherwise the two ops
   over bands of rows: matmul into cu->ffn [rows, 2F] (at most ffn_bytes, at least 16 rows), then
   swiglu_pair; the same arithmetic and rounding points either way. */
static zi_status cuda_matmul_swiglu(ZiBackend *be, void *out, const void *in, const void *w, int M, int K, int F) {
    zi_status st = ZI_OK;
    int taken = 0;
    if (M <= 0 || F <= 0) return ZI_OK;
    if (K <= 0) return zi_fail(ZI_ERR_ARG, "matmul_swiglu: reduction size K = %d", K);
    ZI_TRY(matmul_swiglu_sm90(be, out, in, w, M, K, F, &taken));
    if (taken) return ZI_OK;
    ZiCuda *cu = (ZiCuda *)be->impl;
    size_t row_bytes = (size_t)2 * F * 2;
    size_t band = cu->ffn_bytes / row_bytes;
    if (band < 16) band = 16;
    if (band > (size_t)M) band = (size_t)M;
    pthread_mutex_lock(&cu->lock);
    st = scratch_reserve(cu, &cu->ffn, band * row_bytes);
    void *gu = cu->ffn.p;
    pthread_mutex_unlock(&cu->lock);
    if (st != ZI_OK) return st;
    for (int m0 = 0; m0 < M; m0 += (int)band) {
        int rows = M - m0 < (int)band ? M - m0 : (int)band;
        ZI_TRY(cuda_matmul(be, gu, (const char *)in + (size_t)m0 * K * 2, w, NULL, rows, K, 2 * F)); /* gu [rows, 2F] */
        ZI_TRY(cuda_swiglu_pair(be, (char *)out + (size_t)m0 * F * 2, gu, rows, F));                 /* out [rows, F] */
    }
fail:
    return st;
}

/* Attention for HD > 128 (the VAE's single 512-wide head) as chunked GEMMs on the tensor cores:
   for each head and each chunk of `chunk` query rows i0.., with nk keys (all, or up to the chunk's
   last row when causal),
     scores[sq, nk] (fp32) = scale * q_chunk k^T   cuBLASLt m = nk, n = sq, k = HD, A = k (op T), B = q
     P[sq, nk] (bf16)      = row softmax           zi_softmax_rows_cuda
     out_chunk[sq, HD]     = P v                   cuBLASLt m = HD, n = sq, k = nk, A = v, B = P
   Scores and P of one chunk live in cu->col (at most attn_bytes; the conv scratch, idle between ops and
   grown to about the conv packing cap by a large decode's convs anyway), never the whole SxS matrix.
   *done = 0 when cuBLASLt has no algorithm (the caller falls back to the CUDA-core kernel). */
static zi_status attention_gemm(ZiCuda *cu, void *out, const void *q, const void *k, const void *v, int ld, int S,
                                int NH, int NKV, int HD, int causal, float scale, int *done) {
    zi_status st = ZI_OK;
    size_t row_bytes = (size_t)S * (sizeof(float) + 2);
    size_t chunk = cu->attn_bytes / row_bytes & ~(size_t)15;
    if (chunk < 16) chunk = 16;
    if (chunk > (size_t)S) chunk = (size_t)S;
    /* equal chunks (no short last one: P v of a few rows over all S keys keeps few blocks busy) */
    size_t nchunks = ((size_t)S + chunk - 1) / chunk, even = (((size_t)S + nchunks - 1) / nchunks + 15) & ~(size_t)15;
    if (even < chunk) chunk = even;
    *done = 0;
    ZI_TRY(scratch_reserve(cu, &cu->col, chunk * row_bytes));
    float *sc = cu->col.p;
    void *P = (char *)cu->col.p + chunk * (size_t)S * sizeof(float);
    size_t os = (size_t)NH * HD, qs = ld ? (size_t)ld : os, kvs = ld ? (size_t)ld : (size_t)NKV * HD;
    for (int h = 0; h < NH; h++) {
        const char *kh = (const char *)k + (size_t)(h / (NH / NKV)) * HD * 2;
        const char *vh = (const char *)v + (size_t)(h / (NH / NKV)) * HD * 2;
        for (int i0 = 0; i0 < S; i0 += (int)chunk) {
            int sq = S - i0 < (int)chunk ? S - i0 : (int)chunk, nk = causal ? (i0 + sq < S ? i0 + sq : S) : S, ok = 0;
            const char *qc = (const char *)q + ((size_t)i0 * qs + (size_t)h * HD) * 2;
            char *oc = (char *)out + ((size_t)i0 * os + (size_t)h * HD) * 2;
            ZI_TRY(lt_matmul(cu, nk, sq, HD, kh, (int)kvs, 1, qc, (int)qs, 0, sc, S, 1, NULL, scale, 0.0f, &ok));
            if (!ok) return ZI_OK;
            CU_TRY(zi_softmax_rows_cuda(P, sc, sq, nk, S, i0, causal, STREAM(cu)));
            ZI_TRY(lt_matmul(cu, HD, sq, nk, vh, (int)kvs, 0, P, S, 0, oc, (int)os, 0, NULL, 1.0f, 0.0f, &ok));
            if (!ok) return ZI_OK;
        }
    }
    *done = 1;
    return ZI_OK;
fail:
    return st;
}

static zi_status cuda_attention(ZiBackend *be, void *out, const void *q, const void *k, const void *v, int ld, int S,
                                int NH, int NKV, int HD, int causal, float scale) {
    OP_BEGIN(be);
    if (NKV <= 0 || NH % NKV)
        return zi_fail(ZI_ERR_ARG, "attention: %d query heads not a multiple of %d kv heads", NH, NKV);
    if (ld && (ld < NH * HD || ld < NKV * HD)) return zi_fail(ZI_ERR_ARG, "attention: row stride %d below a row", ld);
    if (HD <= 0 || HD > 1024) return zi_fail(ZI_ERR_ARG, "attention: head dim %d not supported on CUDA (1..1024)", HD);
    if (S <= 0) return ZI_OK;
    if (cu->profile) snprintf(cu->prof_key, sizeof cu->prof_key, "attention S=%d NH=%d HD=%d", S, NH, HD);
    int done = 0;
    if (HD > 128) {
        pthread_mutex_lock(&cu->lock);
        st = attention_gemm(cu, out, q, k, v, ld, S, NH, NKV, HD, causal, scale, &done);
        pthread_mutex_unlock(&cu->lock);
        if (st != ZI_OK) return st;
    }
    if (!done) CU_TRY(zi_attention_cuda(out, q, k, v, ld, S, NH, NKV, HD, causal, scale, STREAM(cu)));
    return op_end(cu, "attention");
fail:
    return st;
}

// ----------------------------------------------------------------------------------------------
// normalisation

static zi_status cuda_rmsnorm(ZiBackend *be, void *out, const void *in, const void *w, int M, int D, float eps) {
    OP_BEGIN(be);
    CU_TRY(zi_rmsnorm_cuda(out, in, w, M, D, eps, STREAM(cu)));
    return op_end(cu, "rmsnorm");
fail:
    return st;
}

static zi_status cuda_layernorm(ZiBackend *be, void *out, const void *in, int M, int D, float eps) {
    OP_BEGIN(be);
    CU_TRY(zi_layernorm_cuda(out, in, M, D, eps, STREAM(cu)));
    return op_end(cu, "layernorm");
fail:
    return st;
}

static zi_status cuda_groupnorm(ZiBackend *be, void *out, const void *in, const void *gamma, const void *beta, int B,
                                int C, int HW, int G, float eps, int silu) {
    OP_BEGIN(be);
    if (G <= 0 || C % G) return zi_fail(ZI_ERR_ARG, "groupnorm: %d channels not divisible by %d groups", C, G);
    if ((long)B * G > 65535) return zi_fail(ZI_ERR_ARG, "groupnorm: %d x %d groups is too many", B, G);
    pthread_mutex_lock(&cu->lock);
    st = scratch_reserve(cu, &cu->stats, sizeof(double) * 2 * (size_t)B * G);
    if (st == ZI_OK) {
        cudaError_t e = zi_groupnorm_cuda(out, in, gamma, beta, B, C, (size_t)HW, G, eps, silu, cu->stats.p, STREAM(cu));
        if (e != cudaSuccess) st = cuda_fail("zi_groupnorm_cuda", __FILE__, __LINE__, e);
    }
    pthread_mutex_unlock(&cu->lock);
    if (st != ZI_OK) return st;
    return op_end(cu, "groupnorm");
fail:
    return st;
}

// ----------------------------------------------------------------------------------------------
// elementwise

static zi_status cuda_add(ZiBackend *be, void *out, const void *a, const void *b, size_t n) {
    OP_BEGIN(be);
    CU_TRY(zi_binary_cuda(out, a, b, ZI_BINARY_ADD, n, STREAM(cu)));
    return op_end(cu, "add");
fail:
    return st;
}

static zi_status cuda_swiglu(ZiBackend *be, void *out, const void *gate, const void *up, size_t n) {
    OP_BEGIN(be);
    CU_TRY(zi_binary_cuda(out, gate, up, ZI_BINARY_SWIGLU, n, STREAM(cu)));
    return op_end(cu, "swiglu");
fail:
    return st;
}

static zi_status unary(ZiBackend *be, void *out, const void *in, int op, float s, size_t n, const char *name) {
    OP_BEGIN(be);
    CU_TRY(zi_unary_cuda(out, in, op, s, n, STREAM(cu)));
    return op_end(cu, name);
fail:
    return st;
}

static zi_status cuda_scale(ZiBackend *be, void *out, const void *in, float s, size_t n) {
    return unary(be, out, in, ZI_UNARY_SCALE, s, n, "scale");
}
static zi_status cuda_one_plus(ZiBackend *be, void *out, const void *in, size_t n) {
    return unary(be, out, in, ZI_UNARY_ONE_PLUS, 0.0f, n, "one_plus");
}
static zi_status cuda_silu(ZiBackend *be, void *out, const void *in, size_t n) {
    return unary(be, out, in, ZI_UNARY_SILU, 0.0f, n, "silu");
}

static zi_status cuda_mul_rows(ZiBackend *be, void *out, const void *in, const void *s, int M, int D) {
    OP_BEGIN(be);
    CU_TRY(zi_mul_rows_cuda(out, in, s, M, D, STREAM(cu)));
    return op_end(cu, "mul_rows");
fail:
    return st;
}

static zi_status cuda_rope(ZiBackend *be, void *x, const float *cs, int S, int NH, int HD, int interleaved) {
    OP_BEGIN(be);
    CU_TRY(zi_rope_cuda(x, cs, S, NH, HD, interleaved, STREAM(cu)));
    return op_end(cu, "rope");
fail:
    return st;
}

// ----------------------------------------------------------------------------------------------
// fused DiT block ops (one pass each where the unfused ops made two to four)

static zi_status cuda_rmsnorm_scale(ZiBackend *be, void *out, const void *in, const void *w, const void *s, int M, int D,
                                    float eps) {
    OP_BEGIN(be);
    CU_TRY(zi_rmsnorm_scale_cuda(out, in, w, s, M, D, eps, STREAM(cu)));
    return op_end(cu, "rmsnorm_scale");
fail:
    return st;
}

static zi_status cuda_rmsnorm_add_gated(ZiBackend *be, void *x, const void *y, const void *w, const void *g, int M,
                                        int D, float eps) {
    OP_BEGIN(be);
    CU_TRY(zi_rmsnorm_add_gated_cuda(x, y, w, g, M, D, eps, STREAM(cu)));
    return op_end(cu, "rmsnorm_add_gated");
fail:
    return st;
}

static zi_status cuda_rmsnorm_add_gated_scale(ZiBackend *be, void *x, void *h, const void *y, const void *w,
                                              const void *g, const void *wn, const void *s, int M, int D, float eps) {
    OP_BEGIN(be);
    CU_TRY(zi_rmsnorm_add_gated_scale_cuda(x, h, y, w, g, wn, s, M, D, eps, STREAM(cu)));
    return op_end(cu, "rmsnorm_add_gated_scale");
fail:
    return st;
}

static zi_status cuda_adaln_gates(ZiBackend *be, void *out, const void *mod, int R, int D) {
    OP_BEGIN(be);
    CU_TRY(zi_adaln_gates_cuda(out, mod, R, D, STREAM(cu)));
    return op_end(cu, "adaln_gates");
fail:
    return st;
}

static zi_status cuda_swiglu_pair(ZiBackend *be, void *out, const void *gu, int M, int F) {
    OP_BEGIN(be);
    CU_TRY(zi_swiglu_pair_cuda(out, gu, M, F, STREAM(cu)));
    return op_end(cu, "swiglu_pair");
fail:
    return st;
}

static zi_status cuda_qkv_norm_rope(ZiBackend *be, void *qkv, const void *wq, const void *wk, const float *cs, int S,
                                    int NH, int NKV, int HD, float eps, int interleaved) {
    OP_BEGIN(be);
    if (HD <= 0 || HD % 2 || HD > 256 || (!wq != !wk))
        return zi_fail(ZI_ERR_ARG, "qkv_norm_rope: head dim %d (must be even, at most 256), q/k norms both or neither", HD);
    CU_TRY(zi_qkv_norm_rope_cuda(qkv, wq, wk, cs, S, NH, NKV, HD, eps, interleaved, STREAM(cu)));
    return op_end(cu, "qkv_norm_rope");
fail:
    return st;
}

// ----------------------------------------------------------------------------------------------
// data movement

static zi_status cuda_copy(ZiBackend *be, void *dst, const void *src, size_t n) {
    OP_BEGIN(be);
    size_t bytes = n * 2;
    if (bytes == 0 || dst == src) return ZI_OK;
    const char *d = dst, *s = src;
    if (d < s + bytes && s < d + bytes) { /* overlapping (memmove semantics): go through scratch */
        pthread_mutex_lock(&cu->lock);
        st = scratch_reserve(cu, &cu->tmp, bytes);
        cudaError_t e = cudaSuccess;
        if (st == ZI_OK) e = cudaMemcpyAsync(cu->tmp.p, src, bytes, cudaMemcpyDeviceToDevice, STREAM(cu));
        if (st == ZI_OK && e == cudaSuccess) e = cudaMemcpyAsync(dst, cu->tmp.p, bytes, cudaMemcpyDeviceToDevice, STREAM(cu));
        if (e != cudaSuccess) st = cuda_fail("cudaMemcpyAsync (overlapping copy)", __FILE__, __LINE__, e);
        pthread_mutex_unlock(&cu->lock);
        if (st != ZI_OK) return st;
    } else {
        CU_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, STREAM(cu)));
    }
    return op_end(cu, "copy");
fail:
    return st;
}

/* one cudaMemcpy2DAsync per block b (B is a handful of channels) */
static zi_status cuda_copy2d(ZiBackend *be, void *dst, const void *src, int B, int R, int X, size_t dst_bs,
                             size_t dst_ld, size_t src_bs, size_t src_ld) {
    OP_BEGIN(be);
    if (B <= 0 || R <= 0 || X <= 0) return ZI_OK;
    for (int b = 0; b < B; b++)
        CU_TRY(cudaMemcpy2DAsync((char *)dst + b * dst_bs * 2, dst_ld * 2, (const char *)src + b * src_bs * 2, src_ld * 2,
                                 (size_t)X * 2, (size_t)R, cudaMemcpyDeviceToDevice, STREAM(cu)));
    return op_end(cu, "copy2d");
fail:
    return st;
}

static zi_status cuda_blend_seam(ZiBackend *be, void *b, const void *a, int O, int e, int X, size_t b_ld, size_t a_ld) {
    OP_BEGIN(be);
    CU_TRY(zi_blend_seam_cuda(b, a, O, e, X, b_ld, a_ld, STREAM(cu)));
    return op_end(cu, "blend_seam");
fail:
    return st;
}

static zi_status cuda_fill_rows(ZiBackend *be, void *dst, const void *row, int M, int D) {
    OP_BEGIN(be);
    CU_TRY(zi_fill_rows_cuda(dst, row, M, D, STREAM(cu)));
    return op_end(cu, "fill_rows");
fail:
    return st;
}

static zi_status cuda_transpose(ZiBackend *be, void *out, const void *in, int M, int N) {
    OP_BEGIN(be);
    CU_TRY(zi_transpose_cuda(out, in, M, N, STREAM(cu)));
    return op_end(cu, "transpose");
fail:
    return st;
}

static zi_status cuda_patchify(ZiBackend *be, void *out, const void *in, int C, int F, int H, int W, int pF, int pH,
                               int pW) {
    OP_BEGIN(be);
    CU_TRY(zi_patch_cuda(out, (void *)in, C, F, H, W, pF, pH, pW, 1, STREAM(cu)));
    return op_end(cu, "patchify");
fail:
    return st;
}

static zi_status cuda_unpatchify(ZiBackend *be, void *out, const void *in, int C, int F, int H, int W, int pF, int pH,
                                 int pW) {
    OP_BEGIN(be);
    CU_TRY(zi_patch_cuda((void *)in, out, C, F, H, W, pF, pH, pW, 0, STREAM(cu)));
    return op_end(cu, "unpatchify");
fail:
    return st;
}

// ----------------------------------------------------------------------------------------------
// images

/* What a conv's input goes through before the convolution (groupnorm_conv2d, upsample_conv2d). */
typedef struct ConvPre {
    int norm;                        /* groupnorm (* gamma + beta) (+ SiLU) of the input first */
    const void *gamma, *beta;
    int G, silu;
    float eps;
    int up;                          /* nearest 2x upsample of the input first               */
    const void *res;                 /* added to the (rounded) output, or NULL; may be out   */
} ConvPre;

/* Env ZIMAGE_CONV (read per call, a lab knob for benchmarks and tests): "im2col" sends every conv
   through im2col + cuBLASLt, "igemm" every conv with Ci % 8 == 0 through the implicit-GEMM kernel;
   unset (auto): the implicit GEMM except an unpadded 1x1 conv without a pre step, which is a plain
   cuBLASLt GEMM on the NCHW input, and a 3x3 conv with at most 4 output channels (conv_out), which is the
   direct kernel on the NCHW input (zi_conv2d_direct_cuda; "igemm" / "im2col" keep it off). ZIMAGE_CONV_TILE=<id> picks the kernel's tile configuration
   (the ids of CONV_CFG_LIST, and of CONV90_CFG_LIST on sm_90a, in kernels/conv.cu); ZIMAGE_CONV_SM90=0
   (read once, in conv.cu) keeps Hopper on the mma.sync tiles. */
enum { CONV_AUTO, CONV_IM2COL, CONV_IGEMM };
static int conv_mode(void) {
    const char *s = getenv("ZIMAGE_CONV");
    if (!s) return CONV_AUTO;
    return strcmp(s, "im2col") == 0 ? CONV_IM2COL : strcmp(s, "igemm") == 0 ? CONV_IGEMM : CONV_AUTO;
}
static int conv_tile(void) {
    const char *s = getenv("ZIMAGE_CONV_TILE");
    return s ? atoi(s) : 0;
}

static size_t align256(size_t b) { return (b + 255) & ~(size_t)255; }

/* The implicit GEMM (kernels/conv.cu): cu->col holds the NHWC input [B, H*W, Ci] (after the groupnorm,
   when pre->norm), the weights as [Co, k*k, Ci] and the groupnorm statistics. The pre-step's output is
   never stored in NCHW; the upsample is read through the kernel's addressing; the residual is added in
   the kernel's epilogue. Caller holds the lock. */
static zi_status conv2d_igemm(ZiCuda *cu, void *out, const void *in, const void *w, const void *bias, int B, int Ci,
                              int H, int W, int Co, int k, int pad, const ConvPre *pre) {
    zi_status st = ZI_OK;
    size_t HW = (size_t)H * W, wb = align256((size_t)Co * Ci * k * k * 2);
    size_t nparts = pre->norm ? zi_groupnorm_stats_partials(B, Ci, (int)HW, pre->G) : 0;
    size_t sb = pre->norm ? align256((size_t)B * pre->G * 8) : 0;
    /* one image without upsampling packs at most conv_bytes of input: bands of output rows, each with
       the input rows it reads (pad above and k - 1 - pad below); otherwise the whole input */
    int Ho = (pre->up ? 2 * H : H) + 2 * pad - k + 1, band = Ho;
    size_t row_bytes = (size_t)W * Ci * 2;
    if (B == 1 && !pre->up && Ho > 0 && (size_t)H * row_bytes > cu->conv_bytes) {
        size_t rows = cu->conv_bytes / row_bytes;
        band = rows > (size_t)k ? (int)(rows - (size_t)(k - 1)) : 1;
        if (band > Ho) band = Ho;
    }
    size_t in_rows = band == Ho ? (size_t)H : (size_t)band + (size_t)k - 1;
    size_t xb = align256((size_t)B * in_rows * W * Ci * 2);
    ZI_TRY(scratch_reserve(cu, &cu->col, xb + wb + sb + nparts * 8));
    char *xin = cu->col.p, *wp = xin + xb;
    float *stats = pre->norm ? (float *)(wp + wb) : NULL, *partials = pre->norm ? (float *)(wp + wb + sb) : NULL;
    if (pre->norm) CU_TRY(zi_groupnorm_stats_cuda(stats, partials, in, B, Ci, (int)HW, pre->G, pre->eps, STREAM(cu)));
    CU_TRY(zi_conv_pack_weight_cuda(wp, w, Co, Ci, k * k, STREAM(cu)));
    if (band == Ho) {
        CU_TRY(zi_conv_pack_input_cuda(xin, in, B, Ci, (int)HW, HW, stats, pre->G, pre->gamma, pre->beta, pre->silu,
                                       STREAM(cu)));
        CU_TRY(zi_conv2d_igemm_cuda(out, xin, wp, bias, pre->res, B, Ci, H, W, Co, k, pad, pre->up, conv_tile(),
                                    STREAM(cu)));
        return ZI_OK;
    }
    for (int y0 = 0; y0 < Ho; y0 += band) { /* the stream orders each band's packing after the last band's GEMM */
        int ny = Ho - y0 < band ? Ho - y0 : band;
        int r0 = y0 - pad < 0 ? 0 : y0 - pad, r1 = y0 + ny - 1 - pad + k < H ? y0 + ny - 1 - pad + k : H;
        const char *src = (const char *)in + (size_t)r0 * W * 2;
        CU_TRY(zi_conv_pack_input_cuda(xin, src, 1, Ci, (r1 - r0) * W, HW, stats, pre->G, pre->gamma, pre->beta,
                                       pre->silu, STREAM(cu)));
        CU_TRY(zi_conv2d_igemm_band_cuda(out, xin, wp, bias, pre->res, 1, Ci, H, W, Co, k, pad, 0, y0, ny, r0,
                                         conv_tile(), STREAM(cu)));
    }
fail:
    return st;
}

/* A 3x3 conv with a few output channels (conv_out) straight from the NCHW input (kernels/conv.cu,
   conv3x3_direct_kernel): the groupnorm statistics, then one kernel; no packing. Caller holds the lock. */
static zi_status conv2d_direct(ZiCuda *cu, void *out, const void *in, const void *w, const void *bias, int B, int Ci,
                               int H, int W, int Co, const ConvPre *pre) {
    zi_status st = ZI_OK;
    size_t HW = (size_t)H * W;
    float *stats = NULL;
    if (pre->norm) {
        size_t nparts = zi_groupnorm_stats_partials(B, Ci, (int)HW, pre->G), sb = align256((size_t)B * pre->G * 8);
        ZI_TRY(scratch_reserve(cu, &cu->col, sb + nparts * 8));
        stats = cu->col.p;
        CU_TRY(zi_groupnorm_stats_cuda(stats, (float *)((char *)cu->col.p + sb), in, B, Ci, (int)HW, pre->G, pre->eps,
                                       STREAM(cu)));
    }
    CU_TRY(zi_conv2d_direct_cuda(out, in, w, bias, pre->res, B, Ci, H, W, Co, stats, pre->G, pre->gamma, pre->beta,
                                 pre->silu, STREAM(cu)));
fail:
    return st;
}

/* im2col + cuBLASLt, per image b: out_b[Co, P] = w[Co, Ci*k*k] @ col[Ci*k*k, P], P = Ho*Wo output pixels.
   Column-major that is out_b^T[P, Co] = col^T[P, Kc] w^T[Kc, Co]: cuBLASLt m = pixels, n = Co,
   A = col (lda = pixels of the chunk), B = w (ldb = Kc), C = out_b + p0 (ldc = P). A 1x1 unpadded
   conv uses the input as col directly; otherwise im2col fills at most IM2COL_BYTES of columns at
   a time. The bias is per Co (per column here), which the epilogue cannot add: the output is
   filled with the bias first and the GEMM accumulates onto it (beta = 1). A pre step is materialised
   first (NCHW, at the start of cu->col); with a residual the conv goes to scratch (after it) and an add
   writes out; the columns come last. Caller holds the lock. */
static zi_status conv2d_im2col(ZiCuda *cu, void *out, const void *in, const void *w, const void *bias, int B, int Ci,
                               int H, int W, int Co, int k, int pad, const ConvPre *pre) {
    zi_status st = ZI_OK;
    int Hc = pre->up ? 2 * H : H, Wc = pre->up ? 2 * W : W;
    int Ho = Hc + 2 * pad - k + 1, Wo = Wc + 2 * pad - k + 1;
    size_t P = (size_t)Ho * Wo, Kc = (size_t)Ci * k * k;
    size_t pb = pre->norm || pre->up ? align256((size_t)B * Ci * Hc * Wc * 2) : 0; /* the pre step's output */
    size_t ob = pre->res ? align256((size_t)B * Co * Ho * Wo * 2) : 0;              /* the conv's, with res  */
    float beta = 0.0f;
    int direct = k == 1 && pad == 0;
    size_t chunk = P;
    if (!direct && Kc * P * 2 > IM2COL_BYTES) {
        chunk = IM2COL_BYTES / (Kc * 2) & ~(size_t)255;
        if (chunk < 256) chunk = 256;
    }
    ZI_TRY(scratch_reserve(cu, &cu->col, pb + ob + (direct ? 0 : Kc * chunk * 2)));
    if (pre->norm) {
        ZI_TRY(scratch_reserve(cu, &cu->stats, sizeof(double) * 2 * (size_t)B * pre->G));
        CU_TRY(zi_groupnorm_cuda(cu->col.p, in, pre->gamma, pre->beta, B, Ci, (size_t)H * W, pre->G, pre->eps, pre->silu,
                                 cu->stats.p, STREAM(cu)));
        in = cu->col.p;
    } else if (pre->up) {
        CU_TRY(zi_upsample2x_cuda(cu->col.p, in, B, Ci, H, W, STREAM(cu)));
        in = cu->col.p;
    }
    void *col = (char *)cu->col.p + pb + ob, *res_out = out;
    if (pre->res) out = (char *)cu->col.p + pb;
    if (bias) {
        CU_TRY(zi_fill_planes_cuda(out, bias, B, Co, P, STREAM(cu)));
        beta = 1.0f;
    }
    for (int b = 0; b < B; b++) {
        const char *in_b = (const char *)in + (size_t)b * Ci * Hc * Wc * 2;
        char *out_b = (char *)out + (size_t)b * Co * P * 2;
        for (size_t p0 = 0; p0 < P; p0 += chunk) {
            int np = (int)(P - p0 < chunk ? P - p0 : chunk), done = 0;
            const void *A = in_b;
            if (!direct) {
                CU_TRY(zi_im2col_cuda(col, in_b, Ci, Hc, Wc, k, pad, p0, np, STREAM(cu)));
                A = col;
            }
            ZI_TRY(lt_matmul(cu, np, Co, (int)Kc, A, np, 0, w, (int)Kc, 0, out_b + p0 * 2, (int)P, 0, NULL, 1.0f, beta, &done));
            if (!done)
                return zi_fail(ZI_ERR_CUBLAS, "conv2d: cuBLASLt has no algorithm for %d pixels x %d channels x K=%zu", np,
                               Co, Kc);
        }
    }
    if (pre->res) CU_TRY(zi_binary_cuda(res_out, out, pre->res, ZI_BINARY_ADD, (size_t)B * Co * P, STREAM(cu)));
fail:
    return st;
}

/* conv2d(pre(in)): checks, then the implicit GEMM where it applies (Ci % 8 == 0), else im2col */
static zi_status conv2d_pre(ZiBackend *be, void *out, const void *in, const void *w, const void *bias, int B, int Ci,
                            int H, int W, int Co, int k, int pad, const ConvPre *pre, const char *name) {
    OP_BEGIN(be);
    int Hc = pre->up ? 2 * H : H, Wc = pre->up ? 2 * W : W;
    int Ho = Hc + 2 * pad - k + 1, Wo = Wc + 2 * pad - k + 1;
    if (k <= 0 || pad < 0) return zi_fail(ZI_ERR_ARG, "%s: kernel size %d, padding %d", name, k, pad);
    if (Ho <= 0 || Wo <= 0) return zi_fail(ZI_ERR_ARG, "%s: kernel %d larger than padded input %dx%d", name, k, Hc, Wc);
    if (pre->norm && (pre->G <= 0 || Ci % pre->G))
        return zi_fail(ZI_ERR_ARG, "%s: %d channels not divisible by %d groups", name, Ci, pre->G);
    if (pre->norm && (long)B * pre->G > 65535) return zi_fail(ZI_ERR_ARG, "%s: %d x %d groups is too many", name, B, pre->G);
    size_t P = (size_t)Ho * Wo, Kc = (size_t)Ci * k * k;
    if (P > 0x7fffffff || Kc > 0x7fffffff || (size_t)B * P > 0x7ffffdff || (size_t)B * H * W > 0x7fffffff ||
        (size_t)Hc * Wc > 0x7fffffff)
        return zi_fail(ZI_ERR_ARG, "%s: %d images of %dx%d too large", name, B, Ho, Wo);
    if (B <= 0 || Co <= 0) return ZI_OK;
    int mode = conv_mode(), plain_1x1 = k == 1 && pad == 0 && !pre->norm && !pre->up;
    int igemm = Ci % 8 == 0 && mode != CONV_IM2COL && (mode == CONV_IGEMM || !plain_1x1);
    /* the direct kernel reads the input while it writes the output: not in place */
    const char *ib = in, *ob = out;
    int apart = ib + (size_t)B * Ci * H * W * 2 <= ob || ob + (size_t)B * Co * P * 2 <= ib;
    int direct = mode == CONV_AUTO && apart && zi_conv2d_direct_supported(Ci, Co, k, pad, pre->up);
    pthread_mutex_lock(&cu->lock);
    st = direct  ? conv2d_direct(cu, out, in, w, bias, B, Ci, H, W, Co, pre)
         : igemm ? conv2d_igemm(cu, out, in, w, bias, B, Ci, H, W, Co, k, pad, pre)
                 : conv2d_im2col(cu, out, in, w, bias, B, Ci, H, W, Co, k, pad, pre);
    pthread_mutex_unlock(&cu->lock);
    if (st != ZI_OK) return st;
    return op_end(cu, name);
fail:
    return st;
}

static zi_status cuda_conv2d(ZiBackend *be, void *out, const void *in, const void *w, const void *bias, int B, int Ci,
                             int H, int W, int Co, int k, int pad) {
    ConvPre pre = {0};
    return conv2d_pre(be, out, in, w, bias, B, Ci, H, W, Co, k, pad, &pre, "conv2d");
}

static zi_status cuda_groupnorm_conv2d(ZiBackend *be, void *out, const void *in, const void *res, const void *gamma,
                                       const void *beta, const void *w, const void *bias, int B, int Ci, int H, int W,
                                       int Co, int k, int pad, int G, float eps, int silu) {
    ConvPre pre = {.norm = 1, .gamma = gamma, .beta = beta, .G = G, .silu = silu, .eps = eps, .res = res};
    return conv2d_pre(be, out, in, w, bias, B, Ci, H, W, Co, k, pad, &pre, "groupnorm_conv2d");
}

static zi_status cuda_upsample_conv2d(ZiBackend *be, void *out, const void *in, const void *w, const void *bias, int B,
                                      int Ci, int H, int W, int Co, int k, int pad) {
    ConvPre pre = {.up = 1};
    return conv2d_pre(be, out, in, w, bias, B, Ci, H, W, Co, k, pad, &pre, "upsample_conv2d");
}

// ----------------------------------------------------------------------------------------------
// the sampler's f32 latents and the image output

static zi_status cuda_download_bytes(ZiBackend *be, void *dst, const void *src, size_t bytes) {
    OP_BEGIN(be);
    if (bytes == 0) return ZI_OK;
    CU_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, STREAM(cu)));
    CU_TRY(cudaStreamSynchronize(STREAM(cu))); /* dst is pageable: wait until it holds the data */
    return ZI_OK;
fail:
    return st;
}

static zi_status cuda_to_act(ZiBackend *be, void *out, const float *in, size_t n) {
    OP_BEGIN(be);
    CU_TRY(zi_to_bf16_cuda(out, in, 0, n, STREAM(cu)));
    return op_end(cu, "to_act");
fail:
    return st;
}

static zi_status cuda_to_f32(ZiBackend *be, float *out, const void *in, size_t n) {
    OP_BEGIN(be);
    CU_TRY(zi_bf16_to_f32_cuda(out, in, n, STREAM(cu)));
    return op_end(cu, "to_f32");
fail:
    return st;
}

static zi_status cuda_cfg_combine(ZiBackend *be, float *pred, const float *pos, const float *neg, float g, size_t n) {
    OP_BEGIN(be);
    CU_TRY(zi_cfg_combine_cuda(pred, pos, neg, g, n, STREAM(cu)));
    return op_end(cu, "cfg_combine");
fail:
    return st;
}

/* two small kernels into the stats scratch, then 8 bytes back: one synchronisation per call */
static zi_status cuda_sumsq_f32(ZiBackend *be, double *sum, const float *x, size_t n) {
    OP_BEGIN(be);
    *sum = 0.0;
    if (n == 0) return ZI_OK;
    pthread_mutex_lock(&cu->lock);
    st = scratch_reserve(cu, &cu->stats, sizeof(double) * (ZI_SUMSQ_BLOCKS + 1));
    if (st == ZI_OK) {
        double *partials = cu->stats.p, *dsum = partials + ZI_SUMSQ_BLOCKS;
        cudaError_t e = zi_sumsq_f32_cuda(dsum, partials, x, n, STREAM(cu));
        if (e == cudaSuccess) e = cudaMemcpyAsync(sum, dsum, sizeof(double), cudaMemcpyDeviceToHost, STREAM(cu));
        if (e == cudaSuccess) e = cudaStreamSynchronize(STREAM(cu));
        if (e != cudaSuccess) st = cuda_fail("sumsq_f32 (reduce, copy, synchronize)", __FILE__, __LINE__, e);
    }
    pthread_mutex_unlock(&cu->lock);
    return st;
fail:
    return st;
}

static zi_status cuda_scale_f32(ZiBackend *be, float *out, const float *in, float s, size_t n) {
    OP_BEGIN(be);
    CU_TRY(zi_scale_f32_cuda(out, in, s, n, STREAM(cu)));
    return op_end(cu, "scale_f32");
fail:
    return st;
}

static zi_status cuda_euler_step(ZiBackend *be, float *x, const float *pred, float dt, size_t n) {
    OP_BEGIN(be);
    CU_TRY(zi_euler_step_cuda(x, pred, dt, n, STREAM(cu)));
    return op_end(cu, "euler_step");
fail:
    return st;
}

static zi_status cuda_latents_to_vae(ZiBackend *be, void *out, const float *lat, float scaling_factor,
                                     float shift_factor, size_t n) {
    OP_BEGIN(be);
    CU_TRY(zi_latents_to_vae_cuda(out, lat, scaling_factor, shift_factor, n, STREAM(cu)));
    return op_end(cu, "latents_to_vae");
fail:
    return st;
}

static zi_status cuda_image_to_uint8(ZiBackend *be, uint8_t *out, const void *img, int B, int C, int H, int W,
                                     int bf16_rule) {
    OP_BEGIN(be);
    CU_TRY(zi_image_to_uint8_cuda(out, img, B, C, H, W, bf16_rule, STREAM(cu)));
    return op_end(cu, "image_to_uint8");
fail:
    return st;
}

static zi_status cuda_image_to_float_hwc(ZiBackend *be, float *out, const void *img, int B, int C, int H, int W) {
    OP_BEGIN(be);
    CU_TRY(zi_image_to_float_hwc_cuda(out, img, B, C, H, W, STREAM(cu)));
    return op_end(cu, "image_to_float_hwc");
fail:
    return st;
}

/* ---- offload: host-resident weights (implemented at the end of the file) ---- */
static zi_status cuda_host_alloc(ZiBackend *be, void **ptr, size_t bytes);
static void cuda_host_free(ZiBackend *be, void *ptr);
static zi_status cuda_weight_to_host(ZiBackend *be, void *dst, const void *src, ZiDtype dt, size_t n);
static zi_status cuda_upload_bytes(ZiBackend *be, void *dst, const void *src, size_t bytes);
static zi_status cuda_queue_create(ZiBackend *be, void **queue, int nslots);
static void cuda_queue_destroy(ZiBackend *be, void *queue);
static zi_status cuda_queue_copy(ZiBackend *be, void *queue, int slot, void *dst, const void *src, size_t bytes);
static zi_status cuda_queue_acquire(ZiBackend *be, void *queue, int slot);
static zi_status cuda_queue_release(ZiBackend *be, void *queue, int slot);

// ----------------------------------------------------------------------------------------------
// replay: CUDA graphs recorded from the backend's stream

typedef struct CudaGraph {
    cudaGraphExec_t exec;
    unsigned long scratch_epoch;     /* the backend's scratch layout it was recorded with */
} CudaGraph;

static zi_status cuda_capture_begin(ZiBackend *be) {
    OP_BEGIN(be);
    if (!cu->graphs) return zi_fail(ZI_ERR_STATE, "CUDA graphs are off (ZIMAGE_GRAPHS=0, ZIMAGE_PROFILE or ZIMAGE_SYNC)");
    if (tls_capture_cu) return zi_fail(ZI_ERR_STATE, "a CUDA graph is already being recorded");
    if (!cu->cap_stream) CU_TRY(cudaStreamCreateWithFlags(&cu->cap_stream, cudaStreamNonBlocking));
    /* thread-local mode: only this thread's unsafe calls (synchronisations) break the capture */
    CU_TRY(cudaStreamBeginCapture(cu->cap_stream, cudaStreamCaptureModeThreadLocal));
    tls_capture_cu = cu;
fail:
    return st;
}

static zi_status cuda_capture_end(ZiBackend *be, void **graph) {
    cudaGraph_t g = NULL;
    CudaGraph *cg = NULL;
    *graph = NULL;
    OP_BEGIN(be);
    if (tls_capture_cu != cu) return zi_fail(ZI_ERR_STATE, "capture_end without capture_begin");
    tls_capture_cu = NULL;
    cudaError_t e = cudaStreamEndCapture(cu->cap_stream, &g); /* fails if an op broke the capture */
    if (e != cudaSuccess || !g) {
        cudaGetLastError();
        st = zi_fail(ZI_ERR_CUDA, "recording a CUDA graph failed: %s", cudaGetErrorString(e));
        goto fail;
    }
    ZI_CALLOC(cg, 1, sizeof *cg);
    CU_TRY(cudaGraphInstantiate(&cg->exec, g, 0));
    cg->scratch_epoch = cu->scratch_epoch;
    *graph = cg;
    cg = NULL;
fail:
    if (g) cudaGraphDestroy(g);
    free(cg);
    return st;
}

static unsigned long g_graph_replays; /* process-wide count, for tests (zi_cuda_graph_replays) */

/* How many recorded graphs were replayed so far in this process (exported for the tests, via ctypes). */
unsigned long zi_cuda_graph_replays(void) { return __atomic_load_n(&g_graph_replays, __ATOMIC_RELAXED); }

static zi_status cuda_replay(ZiBackend *be, void *graph, int *ran) {
    CudaGraph *cg = (CudaGraph *)graph;
    *ran = 0;
    OP_BEGIN(be);
    if (cg->scratch_epoch != cu->scratch_epoch) return ZI_OK;
    CU_TRY(cudaGraphLaunch(cg->exec, STREAM(cu)));
    __atomic_add_fetch(&g_graph_replays, 1, __ATOMIC_RELAXED);
    *ran = 1;
fail:
    return st;
}

static void cuda_graph_free(ZiBackend *be, void *graph) {
    CudaGraph *cg = (CudaGraph *)graph;
    if (!cg) return;
    ZiCuda *cu = (ZiCuda *)be->impl;
    if (set_device(cu) == cudaSuccess) cudaGraphExecDestroy(cg->exec);
    free(cg);
}

static const ZiOps zi_ops_cuda = {
    .alloc = cuda_alloc,
    .free = cuda_free,
    .upload = cuda_upload,
    .upload_weight = cuda_upload_weight,
    .upload_f32 = cuda_upload_f32,
    .download = cuda_download,
    .synchronize = cuda_synchronize,
    .matmul = cuda_matmul,
    .matmul_swiglu = cuda_matmul_swiglu,
    .attention = cuda_attention,
    .rmsnorm = cuda_rmsnorm,
    .rmsnorm_scale = cuda_rmsnorm_scale,
    .rmsnorm_add_gated = cuda_rmsnorm_add_gated,
    .rmsnorm_add_gated_scale = cuda_rmsnorm_add_gated_scale,
    .layernorm = cuda_layernorm,
    .groupnorm = cuda_groupnorm,
    .add = cuda_add,
    .scale = cuda_scale,
    .one_plus = cuda_one_plus,
    .silu = cuda_silu,
    .swiglu = cuda_swiglu,
    .swiglu_pair = cuda_swiglu_pair,
    .adaln_gates = cuda_adaln_gates,
    .mul_rows = cuda_mul_rows,
    .rope = cuda_rope,
    .qkv_norm_rope = cuda_qkv_norm_rope,
    .copy = cuda_copy,
    .copy2d = cuda_copy2d,
    .blend_seam = cuda_blend_seam,
    .fill_rows = cuda_fill_rows,
    .transpose = cuda_transpose,
    .patchify = cuda_patchify,
    .unpatchify = cuda_unpatchify,
    .conv2d = cuda_conv2d,
    .groupnorm_conv2d = cuda_groupnorm_conv2d,
    .upsample_conv2d = cuda_upsample_conv2d,
    .download_bytes = cuda_download_bytes,
    .to_act = cuda_to_act,
    .to_f32 = cuda_to_f32,
    .cfg_combine = cuda_cfg_combine,
    .sumsq_f32 = cuda_sumsq_f32,
    .scale_f32 = cuda_scale_f32,
    .euler_step = cuda_euler_step,
    .latents_to_vae = cuda_latents_to_vae,
    .image_to_uint8 = cuda_image_to_uint8,
    .image_to_float_hwc = cuda_image_to_float_hwc,
    /* ---- offload: host-resident weights ---- */
    .host_alloc = cuda_host_alloc,
    .host_free = cuda_host_free,
    .weight_to_host = cuda_weight_to_host,
    .upload_bytes = cuda_upload_bytes,
    .queue_create = cuda_queue_create,
    .queue_destroy = cuda_queue_destroy,
    .queue_copy = cuda_queue_copy,
    .queue_acquire = cuda_queue_acquire,
    .queue_release = cuda_queue_release,
    .capture_begin = cuda_capture_begin,
    .capture_end = cuda_capture_end,
    .replay = cuda_replay,
    .graph_free = cuda_graph_free,
};

/* free and total bytes on a GPU (device-wide, every process and context included) */
zi_status zi_cuda_mem_info_impl(int device, size_t *free_bytes, size_t *total_bytes) {
    zi_status st = ZI_OK;
    int cur = -1;
    *free_bytes = *total_bytes = 0;
    CU_TRY(cudaGetDevice(&cur));
    if (cur != device) CU_TRY(cudaSetDevice(device));
    CU_TRY(cudaMemGetInfo(free_bytes, total_bytes));
fail:
    return st;
}

/* the properties torch's randn layout depends on (blocks = min(ceil(n/256), SMs * threads/256)) */
zi_status zi_cuda_device_props_impl(int device, char *name, size_t name_len, int *sms, int *threads_per_sm,
                                    int *cc_major, int *cc_minor) {
    zi_status st = ZI_OK;
    struct cudaDeviceProp p;
    CU_TRY(cudaGetDeviceProperties(&p, device));
    snprintf(name, name_len, "%s", p.name);
    *sms = p.multiProcessorCount;
    *threads_per_sm = p.maxThreadsPerMultiProcessor;
    *cc_major = p.major;
    *cc_minor = p.minor;
fail:
    return st;
}

// ----------------------------------------------------------------------------------------------
// ---- offload: host-resident weights ----
// Weights that live in page-locked host memory and visit the GPU (the offloaded text encoder
// streams its layers through two device slots on a second stream; the VAE visits whole), and the
// accounting of every device allocation this file makes (zimage.cuda_memory_allocated & co.).

/* every live cudaMalloc / host_alloc block of the process, with its size (cudaFree takes none);
   a few hundred at most, so a list searched from the newest end */
typedef struct MemBlock {
    void *p;
    size_t bytes;
    int device, host;
} MemBlock;

#define MEM_TRACK_DEVICES 16
static struct {
    pthread_mutex_t lock;
    MemBlock *blocks;
    int n, cap;
    size_t allocated[MEM_TRACK_DEVICES], peak[MEM_TRACK_DEVICES], pinned[MEM_TRACK_DEVICES];
} mem_track = {.lock = PTHREAD_MUTEX_INITIALIZER};

static zi_status mem_track_add(int device, void *p, size_t bytes, int host) {
    if (device < 0 || device >= MEM_TRACK_DEVICES) return ZI_OK;
    zi_status st = ZI_OK;
    pthread_mutex_lock(&mem_track.lock);
    if (mem_track.n == mem_track.cap) {
        int cap = mem_track.cap ? 2 * mem_track.cap : 256;
        MemBlock *nb = realloc(mem_track.blocks, (size_t)cap * sizeof *nb);
        if (!nb) {
            st = zi_fail(ZI_ERR_NOMEM, "out of host memory recording a device allocation");
            goto done;
        }
        mem_track.blocks = nb;
        mem_track.cap = cap;
    }
    mem_track.blocks[mem_track.n++] = (MemBlock){p, bytes, device, host};
    if (host) {
        mem_track.pinned[device] += bytes;
    } else {
        mem_track.allocated[device] += bytes;
        if (mem_track.allocated[device] > mem_track.peak[device]) mem_track.peak[device] = mem_track.allocated[device];
    }
done:
    pthread_mutex_unlock(&mem_track.lock);
    return st;
}

static void mem_track_remove(void *p) {
    if (!p) return;
    pthread_mutex_lock(&mem_track.lock);
    for (int i = mem_track.n - 1; i >= 0; i--) {
        MemBlock *b = &mem_track.blocks[i];
        if (b->p != p) continue;
        if (b->host) mem_track.pinned[b->device] -= b->bytes;
        else mem_track.allocated[b->device] -= b->bytes;
        *b = mem_track.blocks[--mem_track.n];
        break;
    }
    pthread_mutex_unlock(&mem_track.lock);
}

zi_status zi_cuda_memory_stats_impl(int device, ZiMemStats *s) {
    memset(s, 0, sizeof *s);
    if (device < 0 || device >= MEM_TRACK_DEVICES) return ZI_OK;
    pthread_mutex_lock(&mem_track.lock);
    s->allocated = mem_track.allocated[device];
    s->peak = mem_track.peak[device];
    s->pinned = mem_track.pinned[device];
    pthread_mutex_unlock(&mem_track.lock);
    return ZI_OK;
}

zi_status zi_cuda_reset_peak_memory_impl(int device) {
    if (device < 0 || device >= MEM_TRACK_DEVICES) return ZI_OK;
    pthread_mutex_lock(&mem_track.lock);
    mem_track.peak[device] = mem_track.allocated[device];
    pthread_mutex_unlock(&mem_track.lock);
    return ZI_OK;
}

/* torch.cuda.empty_cache(): the scratch and staging buffers go back to the device; each regrows on
   its next use (the cuBLASLt workspace stays: the cached plans were chosen for it) */
zi_status zi_cuda_empty_cache_impl(ZiBackend *be) {
    OP_BEGIN(be);
    pthread_mutex_lock(&cu->lock);
    cudaError_t e = cudaStreamSynchronize(STREAM(cu)); /* staging copies may still be in flight */
    release_scratch(cu);
    pthread_mutex_unlock(&cu->lock);
    if (e != cudaSuccess) CU_TRY(e);
    return ZI_OK;
fail:
    return st;
}

static zi_status cuda_host_alloc(ZiBackend *be, void **ptr, size_t bytes) {
    OP_BEGIN(be);
    *ptr = NULL;
    cudaError_t e = cudaHostAlloc(ptr, bytes ? bytes : 1, cudaHostAllocDefault);
    if (e != cudaSuccess) {
        *ptr = NULL;
        cudaGetLastError();
        return zi_fail(e == cudaErrorMemoryAllocation ? ZI_ERR_NOMEM : ZI_ERR_CUDA,
                       "cudaHostAlloc of %zu bytes (%.1f MiB) of page-locked host memory failed for %s: %s", bytes,
                       bytes / 1048576.0, cu->name, cudaGetErrorString(e));
    }
    st = mem_track_add(cu->device, *ptr, bytes ? bytes : 1, 1);
    if (st != ZI_OK) {
        cudaFreeHost(*ptr);
        *ptr = NULL;
    }
    return st;
fail:
    return st;
}

static void cuda_host_free(ZiBackend *be, void *ptr) {
    if (!ptr) return;
    set_device(be->impl);
    mem_track_remove(ptr);
    cudaFreeHost(ptr); /* copies queued from it are waited for by their queue's owner first */
}

/* the conversion upload_weight does on the GPU (convert.cu: __float2bfloat16_rn, round to nearest
   even; f16 widened exactly first), on the host over the OpenMP threads; NaN payloads may differ */
static zi_status cuda_weight_to_host(ZiBackend *be, void *dst, const void *src, ZiDtype dt, size_t n) {
    (void)be;
    const unsigned char *s = src;
    uint16_t *d = dst;
    switch (dt) {
    case ZI_DT_BF16: staging_memcpy(dst, src, n * 2); return ZI_OK;
    case ZI_DT_F32:
#pragma omp parallel for if (n > 65536)
        for (size_t i = 0; i < n; i++) {
            float f;
            memcpy(&f, s + 4 * i, 4);
            d[i] = zi_f32_to_bf16(f);
        }
        return ZI_OK;
    case ZI_DT_F16:
#pragma omp parallel for if (n > 65536)
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            d[i] = zi_f32_to_bf16(zi_f16_to_f32(h));
        }
        return ZI_OK;
    default: return zi_fail(ZI_ERR_FORMAT, "cannot load weights of dtype %s", st_dtype_name(dt));
    }
}

static zi_status cuda_upload_bytes(ZiBackend *be, void *dst, const void *src, size_t bytes) {
    OP_BEGIN(be);
    /* pageable source: returns once staged; page-locked: the source must outlive the copy */
    CU_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, STREAM(cu)));
    return op_end(cu, "upload_bytes");
fail:
    return st;
}

/* a copy stream and, per slot, the event of its last copy and of the last compute that read it */
typedef struct CudaQueue {
    cudaStream_t stream;
    int nslots;
    cudaEvent_t *landed, *released;
} CudaQueue;

static void cuda_queue_destroy(ZiBackend *be, void *queue) {
    CudaQueue *q = queue;
    if (!q) return;
    set_device(be->impl);
    if (q->stream) cudaStreamSynchronize(q->stream); /* its copies read host memory the caller frees next */
    for (int i = 0; i < q->nslots; i++) {
        if (q->landed && q->landed[i]) cudaEventDestroy(q->landed[i]);
        if (q->released && q->released[i]) cudaEventDestroy(q->released[i]);
    }
    if (q->stream) cudaStreamDestroy(q->stream);
    free(q->landed);
    free(q->released);
    free(q);
}

static zi_status cuda_queue_create(ZiBackend *be, void **queue, int nslots) {
    CudaQueue *q = NULL;
    *queue = NULL;
    OP_BEGIN(be);
    if (nslots < 1) return zi_fail(ZI_ERR_ARG, "a copy queue needs at least one slot, got %d", nslots);
    ZI_CALLOC(q, 1, sizeof *q);
    ZI_CALLOC(q->landed, (size_t)nslots, sizeof *q->landed);
    ZI_CALLOC(q->released, (size_t)nslots, sizeof *q->released);
    q->nslots = nslots;
    CU_TRY(cudaStreamCreateWithFlags(&q->stream, cudaStreamNonBlocking));
    for (int i = 0; i < nslots; i++) {
        CU_TRY(cudaEventCreateWithFlags(&q->landed[i], cudaEventDisableTiming));
        CU_TRY(cudaEventCreateWithFlags(&q->released[i], cudaEventDisableTiming));
    }
    *queue = q;
    return ZI_OK;
fail:
    cuda_queue_destroy(be, q);
    return st;
}

/* an event never recorded is complete: a slot's first copy and first acquire wait for nothing */
static zi_status cuda_queue_copy(ZiBackend *be, void *queue, int slot, void *dst, const void *src, size_t bytes) {
    OP_BEGIN(be);
    CudaQueue *q = queue;
    if (slot < 0 || slot >= q->nslots) return zi_fail(ZI_ERR_ARG, "copy queue slot %d of %d", slot, q->nslots);
    CU_TRY(cudaStreamWaitEvent(q->stream, q->released[slot], 0));  /* the slot's last readers are done */
    CU_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, q->stream));
    CU_TRY(cudaEventRecord(q->landed[slot], q->stream));
    if (cu->sync_each_op) CU_TRY(cudaStreamSynchronize(q->stream));
    return ZI_OK;
fail:
    return st;
}

static zi_status cuda_queue_acquire(ZiBackend *be, void *queue, int slot) {
    OP_BEGIN(be);
    CudaQueue *q = queue;
    if (slot < 0 || slot >= q->nslots) return zi_fail(ZI_ERR_ARG, "copy queue slot %d of %d", slot, q->nslots);
    CU_TRY(cudaStreamWaitEvent(STREAM(cu), q->landed[slot], 0));
    return ZI_OK;
fail:
    return st;
}

static zi_status cuda_queue_release(ZiBackend *be, void *queue, int slot) {
    OP_BEGIN(be);
    CudaQueue *q = queue;
    if (slot < 0 || slot >= q->nslots) return zi_fail(ZI_ERR_ARG, "copy queue slot %d of %d", slot, q->nslots);
    CU_TRY(cudaEventRecord(q->released[slot], STREAM(cu)));
    return ZI_OK;
fail:
    return st;
}
