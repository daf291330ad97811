/*
 * bench_vae.c - one whole VAE decode (csrc/vae.c over the ops table) at the real sizes, timed end to
 * end and broken down per op. Weights: a random checkpoint written by make_vae_checkpoint.py.
 *   bench_vae DIR [h w [device]]   latent h x w (default 128 x 128: a 1024^2 image), device 0 (or -1: CPU)
 * 2 warm-up decodes, then the median of REPS decodes, each bracketed by a synchronize (host clock).
 * Then one decode with every op wrapped (synchronize, host clock, op, synchronize): the time per op
 * and shape, largest first, and per op kind. The wrapper's synchronisations add a few microseconds per op.
 * Env ZIMAGE_CONV=im2col runs the convolutions the old way (see csrc/ops_cuda.c).
 */
#include "bench_util.h"
#include "ops.h"
#include "vae.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define REPS 10
#define MAX_ROWS 256


// ----------------------------------------------------------------------------------------------
// per-op timing: a copy of the backend's table whose entries time the real ones

typedef struct Row { char what[96]; const char *kind; double s; int calls; } Row;
static Row rows[MAX_ROWS];
static int nrows;
static const ZiOps *real;
static ZiOps timed;

static void record(const char *kind, const char *what, double s) {
    int i = 0;
    while (i < nrows && strcmp(rows[i].what, what) != 0) i++;
    if (i == nrows) {
        if (nrows == MAX_ROWS) return;
        snprintf(rows[nrows].what, sizeof rows[0].what, "%s", what);
        rows[nrows++].kind = kind;
    }
    rows[i].s += s;
    rows[i].calls++;
}

#define TIMED(kind, call, ...)                                          \
    do {                                                                \
        char what_[96];                                                 \
        snprintf(what_, sizeof what_, __VA_ARGS__);                     \
        real->synchronize(be);                                          \
        double t0_ = now();                                             \
        zi_status st_ = (call);                                         \
        real->synchronize(be);                                          \
        record(kind, what_, now() - t0_);                               \
        return st_;                                                     \
    } while (0)

static zi_status t_conv2d(ZiBackend *be, void *out, const void *in, const void *w, const void *bias, int B, int Ci,
                          int H, int W, int Co, int k, int pad) {
    TIMED("conv2d", real->conv2d(be, out, in, w, bias, B, Ci, H, W, Co, k, pad), "conv2d %dx%d %d->%d @%dx%d", k, k, Ci,
          Co, H, W);
}
static zi_status t_gn_conv2d(ZiBackend *be, void *out, const void *in, const void *res, const void *gamma,
                             const void *beta, const void *w, const void *bias, int B, int Ci, int H, int W, int Co, int k,
                             int pad, int G, float eps, int silu) {
    TIMED("groupnorm_conv2d",
          real->groupnorm_conv2d(be, out, in, res, gamma, beta, w, bias, B, Ci, H, W, Co, k, pad, G, eps, silu),
          "groupnorm_conv2d %dx%d %d->%d @%dx%d%s", k, k, Ci, Co, H, W, res ? " +res" : "");
}
static zi_status t_up_conv2d(ZiBackend *be, void *out, const void *in, const void *w, const void *bias, int B, int Ci,
                             int H, int W, int Co, int k, int pad) {
    TIMED("upsample_conv2d", real->upsample_conv2d(be, out, in, w, bias, B, Ci, H, W, Co, k, pad),
          "upsample_conv2d %dx%d %d->%d @%dx%d->2x", k, k, Ci, Co, H, W);
}
static zi_status t_groupnorm(ZiBackend *be, void *out, const void *in, const void *gamma, const void *beta, int B, int C,
                             int HW, int G, float eps, int silu) {
    TIMED("groupnorm", real->groupnorm(be, out, in, gamma, beta, B, C, HW, G, eps, silu), "groupnorm C=%d HW=%d", C, HW);
}
static zi_status t_add(ZiBackend *be, void *out, const void *a, const void *b, size_t n) {
    TIMED("add", real->add(be, out, a, b, n), "add n=%zu", n);
}
static zi_status t_matmul(ZiBackend *be, void *out, const void *in, const void *w, const void *bias, int M, int K, int N) {
    TIMED("matmul", real->matmul(be, out, in, w, bias, M, K, N), "matmul M=%d K=%d N=%d", M, K, N);
}
static zi_status t_attention(ZiBackend *be, void *out, const void *q, const void *k, const void *v, int ld, int S,
                             int NH, int NKV, int HD, int causal, float scale) {
    TIMED("attention", real->attention(be, out, q, k, v, ld, S, NH, NKV, HD, causal, scale), "attention S=%d HD=%d", S, HD);
}
static zi_status t_transpose(ZiBackend *be, void *out, const void *in, int M, int N) {
    TIMED("transpose", real->transpose(be, out, in, M, N), "transpose %dx%d", M, N);
}

static int row_cmp(const void *a, const void *b) {
    double x = ((const Row *)a)->s, y = ((const Row *)b)->s;
    return x > y ? -1 : x < y;
}

// ----------------------------------------------------------------------------------------------

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_vae DIR [h w [device]]\n");
        return 2;
    }
    int h = argc > 3 ? atoi(argv[2]) : 128, w = argc > 3 ? atoi(argv[3]) : 128, dev = argc > 4 ? atoi(argv[4]) : 0;
    ZiBackend *be = NULL;
    VaeModel *m = NULL;
    void *z = NULL, *out = NULL;
    if (dev >= 0 && zi_cuda_device_count() <= 0) {
        printf("SKIP: no CUDA device (%s)\n", zi_last_error());
        return 77;
    }
    if (zi_backend_get(dev, &be) != ZI_OK || vae_load(&m, argv[1], dev) != ZI_OK) {
        fprintf(stderr, "setup: %s\n", zi_last_error());
        return 1;
    }
    const VaeConfig *c = vae_config(m);
    int f = vae_up_factor(m);
    size_t nz = (size_t)c->latent_channels * h * w, nimg = (size_t)c->out_channels * h * f * w * f;
    float *hz = malloc(nz * sizeof(float));
    uint64_t s = 0x9E3779B97F4A7C15ULL;
    for (size_t i = 0; i < nz; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        hz[i] = 2.0f * ((float)(s >> 40) / 16777216.0f) - 1.0f;
    }
    zi_status st = be->ops->alloc(be, &z, nz * be->act_size);
    if (st == ZI_OK) st = be->ops->alloc(be, &out, nimg * be->act_size);
    if (st == ZI_OK) st = be->ops->upload(be, z, hz, nz);
    double t[REPS];
    for (int r = 0; r < 2 && st == ZI_OK; r++) st = vae_decode_dev(m, out, z, 1, h, w);
    if (st == ZI_OK) st = be->ops->synchronize(be);
    for (int r = 0; r < REPS && st == ZI_OK; r++) {
        double t0 = now();
        st = vae_decode_dev(m, out, z, 1, h, w);
        if (st == ZI_OK) st = be->ops->synchronize(be);
        t[r] = now() - t0;
    }
    if (st != ZI_OK) {
        fprintf(stderr, "decode: %s\n", zi_last_error());
        return 1;
    }
    qsort(t, REPS, sizeof t[0], cmp);
    const char *mode = getenv("ZIMAGE_CONV");
    printf("VAE decode %dx%d latent -> %dx%d image on %s (conv %s): median %.2f ms, min %.2f ms over %d\n", h, w, h * f,
           w * f, be->name, mode ? mode : "auto", t[REPS / 2] * 1e3, t[0] * 1e3, REPS);

    /* one decode with every op timed */
    real = be->ops;
    timed = *real;
    timed.conv2d = t_conv2d, timed.groupnorm_conv2d = t_gn_conv2d, timed.upsample_conv2d = t_up_conv2d;
    timed.groupnorm = t_groupnorm, timed.add = t_add, timed.matmul = t_matmul, timed.attention = t_attention;
    timed.transpose = t_transpose;
    be->ops = &timed;
    double t0 = now();
    st = vae_decode_dev(m, out, z, 1, h, w);
    if (st == ZI_OK) st = real->synchronize(be);
    double total = now() - t0;
    be->ops = real;
    if (st != ZI_OK) {
        fprintf(stderr, "timed decode: %s\n", zi_last_error());
        return 1;
    }
    qsort(rows, nrows, sizeof rows[0], row_cmp);
    double sum = 0;
    printf("%-48s %6s %9s %6s\n", "op (one decode, synchronised per op)", "calls", "ms", "%");
    for (int i = 0; i < nrows; i++) sum += rows[i].s;
    for (int i = 0; i < nrows; i++)
        printf("%-48s %6d %9.3f %6.1f\n", rows[i].what, rows[i].calls, rows[i].s * 1e3, 100 * rows[i].s / sum);
    const char *kinds[] = {"groupnorm_conv2d", "upsample_conv2d", "conv2d", "groupnorm", "add", "matmul", "attention",
                           "transpose"};
    printf("per kind:");
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        double ks = 0;
        for (int i = 0; i < nrows; i++) ks += rows[i].kind == kinds[k] ? rows[i].s : 0;
        if (ks > 0) printf("  %s %.2f ms", kinds[k], ks * 1e3);
    }
    printf("\nsum of ops %.2f ms, decode wall %.2f ms (with the per-op synchronisations)\n", sum * 1e3, total * 1e3);
    be->ops->free(be, z);
    be->ops->free(be, out);
    vae_free(m);
    free(hz);
    return 0;
}
