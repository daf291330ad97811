/*
 * bench_ops.c - micro-benchmark of the CUDA backend's heavy ops at Z-Image sizes, through the
 * ops table exactly as the model calls them: the DiT matmul (M=4128 tokens, K=N=3840), DiT
 * attention (S=4128, NH=30, HD=128), the VAE mid-block attention (S=128*128, NH=1, HD=512) and
 * the VAE decoder's convolutions at a 1024^2 image: every shape through im2col + cuBLASLt (the old
 * path, "im2col") and the implicit-GEMM kernel (auto tile, then each tile configuration "t1".."t8"),
 * the fused groupnorm+conv and upsample+conv ops, and the NCHW -> NHWC input packing alone.
 * Random bf16 inputs (never zeros), 3 warm-up calls, then the median of REPS timed calls, each
 * bracketed by a stream synchronize (host clock), and the mean of REPS calls issued back to back
 * between two synchronizes (launch latency hidden, as in event timings). Prints ms and TFLOP/s (GB/s
 * for the packing), and first whether the sm_90a attention kernel takes HD = 128 here. The DiT feed-forward
 * input both ways (matmul N=2F + swiglu_pair, and the fused matmul_swiglu) and the sm_90a GEMM with its plain
 * epilogue (gemm_sm90) next to cuBLASLt, each followed by a comparison of its output with the other path
 * (BENCH_NO_COMPARE=1: no comparison).
 * Build and run: make -C benchmarks/kernels bench   (see the Makefile there); bench_ops [substring]
 */
#include "bench_util.h"
#include "ops.h"
#include "zi_kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define REPS 15


static void *rand_buf(ZiBackend *be, size_t n, float amp) {
    void *d = NULL;
    float *h = malloc(n * sizeof(float));
    uint64_t s = 0x243F6A8885A308D3ULL ^ n;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        h[i] = amp * ((float)(s >> 40) / 8388608.0f - 1.0f);
    }
    if (be->ops->alloc(be, &d, n * 2) != ZI_OK || be->ops->upload(be, d, h, n) != ZI_OK) {
        fprintf(stderr, "setup: %s\n", zi_last_error());
        exit(1);
    }
    free(h);
    return d;
}

/* conv cases: a = Ci, b = H = W of the conv's input, c = Co, d = k; e = variant: -1 im2col, 0 auto tile,
   1..12 tile (kernels/conv.cu), CONV_GN groupnorm_conv2d, CONV_UP upsample_conv2d (b is then the 2x size), CONV_PACK packing only,
   CONV_STATS groupnorm statistics only (G = 32), CONV_PACK_GN packing with groupnorm + SiLU (statistics made once),
   CONV_GN_IGEMM groupnorm_conv2d with ZIMAGE_CONV=igemm (the packing path where auto takes the direct kernel) */
enum { CONV_GN = 100, CONV_UP, CONV_PACK, CONV_STATS, CONV_PACK_GN, CONV_GN_IGEMM };
/* B_FFN: a = M, b = K, c = F; e = 0 matmul N=2F into scratch + swiglu_pair, 1 matmul_swiglu.
   B_GEMM90: the sm_90a GEMM with its plain epilogue (zi_matmul_sm90_cuda, default stream), a = M, b = K, c = N */
typedef enum { B_MATMUL, B_ATTN, B_CONV, B_FFN, B_GEMM90 } Kind;
typedef struct { Kind kind; int a, b, c, d, e; char what[64]; } Case;

static void conv_env(int variant) {
    char buf[8];
    unsetenv("ZIMAGE_CONV");
    unsetenv("ZIMAGE_CONV_TILE");
    if (variant == -1) setenv("ZIMAGE_CONV", "im2col", 1);
    if (variant >= 1 && variant <= 12) {
        snprintf(buf, sizeof buf, "%d", variant);
        setenv("ZIMAGE_CONV", "igemm", 1);
        setenv("ZIMAGE_CONV_TILE", buf, 1);
    }
    if (variant == CONV_GN_IGEMM) setenv("ZIMAGE_CONV", "igemm", 1);
}

/* the backend's stream and the default stream (B_GEMM90 runs there) */
static zi_status sync_all(ZiBackend *be) {
    zi_status st = be->ops->synchronize(be);
    cudaError_t e = cudaDeviceSynchronize();
    return st != ZI_OK ? st : e == cudaSuccess ? ZI_OK : zi_fail(ZI_ERR_CUDA, "sync: %s", cudaGetErrorString(e));
}

/* B_GEMM90 against cuBLASLt (ops->matmul), B_FFN fused against unfused, on the outputs of the timed calls:
   max |a - b| / max |b| and the share of elements that differ at all */
static void compare_outputs(ZiBackend *be, const Case *c, void **buf) {
    size_t n = (size_t)c->a * c->c;
    void *ref = NULL, *gu = NULL;
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    zi_status st = be->ops->alloc(be, &ref, n * 2);
    if (st == ZI_OK && c->kind == B_GEMM90) st = be->ops->matmul(be, ref, buf[1], buf[2], NULL, c->a, c->b, c->c);
    if (st == ZI_OK && c->kind == B_FFN) {
        st = be->ops->alloc(be, &gu, 2 * n * 2);
        if (st == ZI_OK) st = be->ops->matmul(be, gu, buf[1], buf[2], NULL, c->a, c->b, 2 * c->c);
        if (st == ZI_OK) st = be->ops->swiglu_pair(be, ref, gu, c->a, c->c);
    }
    if (st == ZI_OK) st = sync_all(be);
    if (st == ZI_OK) st = be->ops->download(be, a, buf[0], n);
    if (st == ZI_OK) st = be->ops->download(be, b, ref, n);
    if (st == ZI_OK) {
        double d = 0, m = 0;
        size_t ndiff = 0;
        for (size_t i = 0; i < n; i++) {
            double e = fabs((double)a[i] - b[i]);
            d = e > d || e != e ? e : d;
            m = fabs(b[i]) > m ? fabs(b[i]) : m;
            ndiff += a[i] != b[i];
        }
        printf("    vs %s: max|diff| / max|ref| = %.3g, %.4f%% of elements differ\n",
               c->kind == B_GEMM90 ? "cuBLASLt" : "matmul+swiglu_pair", d / (m > 0 ? m : 1), 100.0 * ndiff / n);
    } else {
        printf("    compare failed: %s\n", zi_last_error());
    }
    be->ops->free(be, ref);
    be->ops->free(be, gu);
    free(a);
    free(b);
}

static zi_status run(ZiBackend *be, const Case *c, void **buf) {
    int pad = c->d / 2, Ci = c->a, H = c->b, Co = c->c, k = c->d;
    switch (c->kind) {
    case B_MATMUL: return be->ops->matmul(be, buf[0], buf[1], buf[2], buf[3], c->a, c->b, c->c);
    case B_FFN: {
        zi_status st = ZI_OK;
        if (c->e) return be->ops->matmul_swiglu(be, buf[0], buf[1], buf[2], c->a, c->b, c->c);
        st = be->ops->matmul(be, buf[3], buf[1], buf[2], NULL, c->a, c->b, 2 * c->c); /* gu [M, 2F] */
        return st == ZI_OK ? be->ops->swiglu_pair(be, buf[0], buf[3], c->a, c->c) : st;
    }
    case B_GEMM90: {
        int taken = 0;
        cudaError_t e = zi_matmul_sm90_cuda(buf[0], buf[1], buf[2], c->a, c->b, c->c, 0, &taken);
        if (e == cudaSuccess && !taken) return zi_fail(ZI_ERR_STATE, "sm_90a GEMM not taken on this device/binary");
        return e == cudaSuccess ? ZI_OK : zi_fail(ZI_ERR_CUDA, "gemm_sm90: %s", cudaGetErrorString(e));
    }
    case B_ATTN: return be->ops->attention(be, buf[0], buf[1], buf[2], buf[3], 0, c->a, c->b, c->d ? c->d : c->b, c->c, c->e,
                                           0.0883883f);
    default:
        if (c->e == CONV_GN || c->e == CONV_GN_IGEMM)
            return be->ops->groupnorm_conv2d(be, buf[0], buf[1], NULL, buf[4], buf[5], buf[2], buf[3], 1, Ci, H, H, Co, k,
                                             pad, 32, 1e-6f, 1);
        if (c->e == CONV_UP) return be->ops->upsample_conv2d(be, buf[0], buf[1], buf[2], buf[3], 1, Ci, H / 2, H / 2, Co, k, pad);
        if (c->e == CONV_STATS || c->e == CONV_PACK_GN) {
            static float *stats; /* [32] (mean, rstd) then the partials */
            static int have_stats;
            cudaError_t e = cudaSuccess;
            if (!stats) e = cudaMalloc((void **)&stats, (size_t)1 << 22);
            if (e == cudaSuccess && (c->e == CONV_STATS || !have_stats))
                e = zi_groupnorm_stats_cuda(stats, stats + 64, buf[1], 1, Ci, H * H, 32, 1e-6f, 0);
            have_stats = c->e == CONV_STATS;
            if (e == cudaSuccess && c->e == CONV_PACK_GN)
                e = zi_conv_pack_input_cuda(buf[0], buf[1], 1, Ci, H * H, (size_t)H * H, stats, 32, buf[4], buf[5], 1, 0);
            if (e == cudaSuccess) e = cudaDeviceSynchronize();
            return e == cudaSuccess ? ZI_OK : zi_fail(ZI_ERR_CUDA, "stats / pack: %s", cudaGetErrorString(e));
        }
        if (c->e == CONV_PACK) {
            cudaError_t e = zi_conv_pack_input_cuda(buf[0], buf[1], 1, Ci, H * H, (size_t)H * H, NULL, 1, NULL, NULL, 0, 0);
            if (e == cudaSuccess) e = cudaDeviceSynchronize();
            return e == cudaSuccess ? ZI_OK : zi_fail(ZI_ERR_CUDA, "pack: %s", cudaGetErrorString(e));
        }
        return be->ops->conv2d(be, buf[0], buf[1], buf[2], buf[3], 1, Ci, H, H, Co, k, pad);
    }
}

int main(int argc, char **argv) {
    ZiBackend *be;
    const char *filter = argc > 1 ? argv[1] : NULL; /* only the cases whose name contains it */
    if (zi_cuda_device_count() <= 0 || zi_backend_get(0, &be) != ZI_OK) {
        printf("SKIP: no CUDA device (%s)\n", zi_last_error());
        return 77;
    }
    Case cases[128] = {
        {B_MATMUL, 4128, 3840, 3840, 0, 0, "matmul M=4128 K=3840 N=3840 +bias"},
        {B_MATMUL, 4128, 3840, 10240, 0, 0, "matmul M=4128 K=3840 N=10240"},
        {B_MATMUL, 4128, 10240, 3840, 0, 0, "matmul M=4128 K=10240 N=3840"},
        {B_MATMUL, 4128, 3840, 11520, 0, 0, "matmul M=4128 K=3840 N=11520"},
        {B_MATMUL, 4128, 3840, 20480, 0, 0, "matmul M=4128 K=3840 N=20480"},
        {B_GEMM90, 4128, 3840, 3840, 0, 0, "gemm_sm90 M=4128 K=3840 N=3840"},
        {B_GEMM90, 4128, 3840, 10240, 0, 0, "gemm_sm90 M=4128 K=3840 N=10240"},
        {B_GEMM90, 4128, 10240, 3840, 0, 0, "gemm_sm90 M=4128 K=10240 N=3840"},
        {B_GEMM90, 4128, 3840, 11520, 0, 0, "gemm_sm90 M=4128 K=3840 N=11520"},
        {B_GEMM90, 4128, 3840, 20480, 0, 0, "gemm_sm90 M=4128 K=3840 N=20480"},
        {B_FFN, 4128, 3840, 10240, 0, 0, "ffn M=4128 K=3840 F=10240 matmul+swiglu_pair"},
        {B_FFN, 4128, 3840, 10240, 0, 1, "ffn M=4128 K=3840 F=10240 matmul_swiglu"},
        {B_FFN, 4096, 3840, 10240, 0, 0, "ffn M=4096 K=3840 F=10240 matmul+swiglu_pair"},
        {B_FFN, 4096, 3840, 10240, 0, 1, "ffn M=4096 K=3840 F=10240 matmul_swiglu"},
        {B_ATTN, 4128, 30, 128, 0, 0, "attention S=4128 NH=30 HD=128"},
        {B_ATTN, 1024, 32, 128, 8, 1, "attention S=1024 NH=32 NKV=8 HD=128 causal"},
        {B_ATTN, 16384, 1, 512, 0, 0, "attention S=16384 NH=1 HD=512 (VAE 1024^2)"},
        {B_ATTN, 4096, 1, 512, 0, 0, "attention S=4096 NH=1 HD=512 (VAE 512^2)"},
    };
    size_t ncases = 0; /* the cases above, then the generated conv cases */
    while (cases[ncases].what[0]) ncases++;
    void *conv_buf[6] = {0};
    /* the decoder's convolutions at a 1024^2 image (Ci, size, Co, k), each through the old and new paths */
    static const int shapes[][4] = {{512, 128, 512, 3}, {512, 256, 512, 3}, {512, 512, 512, 3}, {512, 512, 256, 3},
                                    {256, 512, 256, 3}, {256, 1024, 256, 3}, {256, 1024, 128, 3}, {128, 1024, 128, 3},
                                    {128, 1024, 3, 3},  {16, 128, 512, 3},   {256, 1024, 128, 1}, {512, 512, 256, 1}};
    static const int variants[] = {0, 4, 9, 10, 11, 12}; /* im2col (-1), 1, 5, 7, 8: README */
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const int *sh = shapes[i];
        for (size_t v = 0; v < sizeof variants / sizeof variants[0]; v++) {
            int var = variants[v];
            if (var > 0 && (sh[2] <= 32 || sh[0] < 64)) continue; /* conv_in, conv_out: auto only (t1, t6) */
            Case *c = &cases[ncases++];
            *c = (Case){B_CONV, sh[0], sh[1], sh[2], sh[3], var, ""};
            snprintf(c->what, sizeof c->what, "conv%dx%d %d->%d @%d %s%.0d", sh[3], sh[3], sh[0], sh[2], sh[1],
                     var == -1 ? "im2col" : var == 0 ? "igemm" : "t", var > 0 ? var : 0);
        }
    }
    cases[ncases++] = (Case){B_CONV, 128, 1024, 3, 3, 6, "conv3x3 128->3 @1024 t6 (implicit GEMM)"};
    cases[ncases++] = (Case){B_CONV, 128, 1024, 3, 3, CONV_GN_IGEMM, "groupnorm_conv2d 128->3 @1024 igemm (pack + t6)"};
    cases[ncases++] = (Case){B_CONV, 128, 1024, 3, 3, CONV_GN, "groupnorm_conv2d 128->3 @1024 (conv_out)"};
    cases[ncases++] = (Case){B_CONV, 128, 1024, 128, 3, CONV_GN, "groupnorm_conv2d 128->128 @1024"};
    cases[ncases++] = (Case){B_CONV, 256, 1024, 256, 3, CONV_UP, "upsample_conv2d 256->256 @512->1024"};
    cases[ncases++] = (Case){B_CONV, 512, 512, 512, 3, CONV_UP, "upsample_conv2d 512->512 @256->512"};
    cases[ncases++] = (Case){B_CONV, 128, 1024, 128, 3, CONV_PACK, "conv pack NCHW->NHWC 128ch @1024 (GB/s)"};
    cases[ncases++] = (Case){B_CONV, 128, 1024, 128, 3, CONV_STATS, "conv groupnorm stats 128ch @1024 (GB/s)"};
    cases[ncases++] = (Case){B_CONV, 128, 1024, 128, 3, CONV_PACK_GN, "conv pack + groupnorm/SiLU 128ch @1024 (GB/s)"};
    {
        /* which attention kernel runs HD = 128 on this device and binary (ZIMAGE_ATTN_SM90=0: the old one) */
        void *b[4] = {0};
        int taken = 0;
        for (int j = 0; j < 4; j++) b[j] = rand_buf(be, 256 * 2 * 128, 1);
        cudaError_t e = zi_attention_sm90_cuda(b[0], b[1], b[2], b[3], 0, 256, 2, 2, 128, 0, 0.0883883f, 0, &taken);
        if (e == cudaSuccess) e = cudaDeviceSynchronize();
        printf("sm_90a attention kernel: %s (%s)\n", taken ? "taken" : "not taken", cudaGetErrorString(e));
        for (int j = 0; j < 4; j++) be->ops->free(be, b[j]);
    }
    printf("%-44s %10s %10s %10s %10s\n", "op", "median ms", "TFLOP/s", "b2b ms", "TFLOP/s");
    for (size_t i = 0; i < ncases; i++) {
        const Case *c = &cases[i];
        if (filter && !strstr(c->what, filter)) continue;
        void *buf[6] = {0};
        double flop;
        if (c->kind == B_MATMUL || c->kind == B_GEMM90) {
            size_t M = c->a, K = c->b, N = c->c;
            buf[0] = rand_buf(be, M * N, 1), buf[1] = rand_buf(be, M * K, 1), buf[2] = rand_buf(be, N * K, 0.02f);
            buf[3] = i == 0 ? rand_buf(be, N, 1) : NULL;
            flop = 2.0 * M * N * K;
        } else if (c->kind == B_FFN) {
            size_t M = c->a, K = c->b, F = c->c;
            buf[0] = rand_buf(be, M * F, 1), buf[1] = rand_buf(be, M * K, 1), buf[2] = rand_buf(be, 2 * F * K, 0.02f);
            buf[3] = rand_buf(be, M * 2 * F, 1);
            flop = 2.0 * M * 2 * F * K;
        } else if (c->kind == B_ATTN) {
            size_t n = (size_t)c->a * c->b * c->c, nkv = (size_t)c->a * (c->d ? c->d : c->b) * c->c;
            for (int j = 0; j < 4; j++) buf[j] = rand_buf(be, j == 0 || j == 1 ? n : nkv, 1);
            flop = 4.0 * c->a * (double)c->a * c->c * c->b * (c->e ? 0.5 : 1.0); /* causal: half the pairs */
        } else {
            size_t Ci = c->a, Co = c->c, P = (size_t)c->b * c->b, kk = (size_t)c->d * c->d;
            if (!conv_buf[0]) { /* kept while the next case has the same shape */
                conv_buf[0] = rand_buf(be, (Co > Ci ? Co : Ci) * P, 1), conv_buf[1] = rand_buf(be, Ci * P, 1);
                conv_buf[2] = rand_buf(be, Co * Ci * kk, 0.02f), conv_buf[3] = rand_buf(be, Co, 1);
                conv_buf[4] = rand_buf(be, Ci, 1), conv_buf[5] = rand_buf(be, Ci, 0.1f);
            }
            memcpy(buf, conv_buf, sizeof buf);
            flop = c->e == CONV_PACK || c->e == CONV_PACK_GN ? 4.0 * Ci * P * 1e3 /* packing: bytes * 1000 */
                   : c->e == CONV_STATS ? 2.0 * Ci * P * 1e3 /* statistics: bytes read * 1000 */
                                        : 2.0 * Ci * Co * kk * P;
            conv_env(c->e);
        }
        double t[REPS];
        zi_status st = ZI_OK;
        for (int r = 0; r < 3 && st == ZI_OK; r++) st = run(be, c, buf);
        if (st == ZI_OK) st = sync_all(be);
        for (int r = 0; r < REPS && st == ZI_OK; r++) {
            double t0 = now();
            st = run(be, c, buf);
            if (st == ZI_OK) st = sync_all(be);
            t[r] = now() - t0;
        }
        double b2b = 0.0;
        if (st == ZI_OK) {
            double t0 = now();
            for (int r = 0; r < REPS && st == ZI_OK; r++) st = run(be, c, buf);
            if (st == ZI_OK) st = sync_all(be);
            b2b = (now() - t0) / REPS;
        }
        if (st != ZI_OK) {
            printf("%-44s FAILED: %s\n", c->what, zi_last_error());
        } else {
            qsort(t, REPS, sizeof t[0], cmp);
            printf("%-44s %10.3f %10.1f %10.3f %10.1f\n", c->what, t[REPS / 2] * 1e3, flop / t[REPS / 2] / 1e12,
                   b2b * 1e3, flop / b2b / 1e12);
            if ((c->kind == B_GEMM90 || (c->kind == B_FFN && c->e)) && !getenv("BENCH_NO_COMPARE"))
                compare_outputs(be, c, buf);
        }
        const Case *nx = i + 1 < ncases ? &cases[i + 1] : NULL;
        int keep = c->kind == B_CONV && nx && nx->kind == B_CONV && nx->a == c->a && nx->b == c->b && nx->c == c->c &&
                   nx->d == c->d && (!filter || strstr(nx->what, filter));
        if (c->kind != B_CONV || !keep)
            for (int j = 0; j < 6; j++) be->ops->free(be, buf[j]);
        if (c->kind == B_CONV && !keep) memset(conv_buf, 0, sizeof conv_buf);
        conv_env(0);
    }
    return 0;
}
