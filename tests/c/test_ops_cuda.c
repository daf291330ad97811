/*
 * test_ops_cuda.c - every op of the CUDA backend against the fp32 CPU backend, ggml
 * test-backend-ops style, with flash-attention's tolerance rule: on random fp32 inputs,
 *   ref  = CPU op on the fp32 inputs,
 *   pt   = bf16(CPU op on bf16-rounded inputs)     (what a same-precision computation gets),
 *   cuda = the CUDA op (bf16 storage, fp32 arithmetic),
 * and each op passes when no NaN/Inf appears where ref is finite and
 *   max|cuda - ref| <= 2 * max|pt - ref| + atol,  atol = 2^-9 * max|ref| (half a bf16 ulp at the top).
 * Device outputs are poisoned with NaN before the op (unwritten elements show up as NaN) and
 * followed by a canary region checked afterwards (out-of-bounds writes). Odd sizes, S = 1,
 * S off the tile, odd D and unaligned pointers are included. The sampler's f32 ops and the image
 * output ops do the same IEEE f32 operations in the same order on both backends: they must match
 * the CPU op bit for bit (run on the bf16 values the device holds where an input is of the
 * activation type; uint8 pixels included). One line per case, then
 * "N passed, M failed"; exit status 1 on any failure, 77 when there is no GPU (skip).
 * Usage: test_ops_cuda [substring]   (only the cases whose name contains it, e.g. "attention")
 *
 * Build (repo root; CUDA=/usr/local/cuda; use -gencode for your GPU, e.g. arch=compute_90a,code=sm_90a):
 *   mkdir -p build/test && for f in kernels/ *.cu; do nvcc -c $f -o build/test/$(basename $f).o -O3 -std=c++17 \
 *       -Ikernels -Icsrc -gencode arch=compute_90a,code=sm_90a; done
 *   gcc -std=gnu11 -O2 -fopenmp -DZI_WITH_CUDA -Icsrc -Ikernels -I$CUDA/include tests/c/test_ops_cuda.c \
 *       csrc/ops_cpu.c csrc/ops_cuda.c csrc/backend.c csrc/zi_error.c csrc/safetensors.c csrc/json.c \
 *       build/test/ *.cu.o -L$CUDA/lib64 -lcublasLt -lcublas -lcudart_static -lstdc++ -lpthread -ldl -lrt -lm \
 *       -o build/test/test_ops_cuda
 * (no space in "kernels/ *.cu" and "build/test/ *.cu.o"; it is there to keep this comment closed).
 * tests/test_ops_cuda.py and benchmarks/kernels/Makefile run exactly these steps.
 */
#include "ops.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CANARY 64            /* elements after every device output */
#define CANARY_VAL 1234.5f

typedef struct T {
    ZiBackend *cpu, *gpu;
    int pass, fail;
    uint64_t rng;
} T;

static const char *g_filter; /* argv[1]: run only the cases whose name contains it */
static int skip(const char *name) { return g_filter && !strstr(name, g_filter); }

static float bf(float x) { return zi_bf16_to_f32(zi_f32_to_bf16(x)); }

static float urand(T *t, float lo, float hi) {
    t->rng ^= t->rng >> 12;
    t->rng ^= t->rng << 25;
    t->rng ^= t->rng >> 27;
    uint64_t r = t->rng * 0x2545F4914F6CDD1DULL;
    return lo + (hi - lo) * (float)((r >> 40) * (1.0 / 16777216.0));
}

static void fail_status(T *t, const char *what) {
    printf("%-44s FAIL  %s: %s\n", what, "op returned an error", zi_last_error());
    t->fail++;
}

// ----------------------------------------------------------------------------------------------
// test tensors: host values h, CPU copy c (fp32), CPU copy r of bf16(h), device copy d

typedef struct Ten {
    size_t n;
    float *h, *c, *r;
    void *base, *d;          /* d = base + off elements; CANARY elements follow d[n) */
} Ten;

static void ten_init(T *t, Ten *x, size_t n, int off, const float *vals) {
    memset(x, 0, sizeof *x);
    x->n = n;
    size_t tot = n + CANARY + (size_t)off;
    x->h = malloc(n * sizeof(float) + 4);
    x->c = malloc(n * sizeof(float) + 4);
    x->r = malloc(n * sizeof(float) + 4);
    float *init = malloc(tot * sizeof(float));
    for (size_t i = 0; i < (size_t)off; i++) init[i] = CANARY_VAL;
    for (size_t i = 0; i < n; i++) {
        x->h[i] = vals ? vals[i] : NAN;
        x->c[i] = vals ? vals[i] : NAN;
        x->r[i] = vals ? bf(vals[i]) : NAN;
        init[off + i] = x->h[i];
    }
    for (size_t i = 0; i < CANARY; i++) init[off + n + i] = CANARY_VAL;
    if (t->gpu->ops->alloc(t->gpu, &x->base, tot * 2) != ZI_OK ||
        t->gpu->ops->upload(t->gpu, x->base, init, tot) != ZI_OK) {
        fprintf(stderr, "device setup failed: %s\n", zi_last_error());
        exit(2);
    }
    x->d = zi_act(t->gpu, x->base, (size_t)off);
    free(init);
}

/* input: uniform [lo, hi) */
static void ten_rand(T *t, Ten *x, size_t n, float lo, float hi, int off) {
    float *v = malloc((n + 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) v[i] = urand(t, lo, hi);
    ten_init(t, x, n, off, v);
    free(v);
}

/* output: NaN-poisoned everywhere */
static void ten_out(T *t, Ten *x, size_t n, int off) { ten_init(t, x, n, off, NULL); }

static void ten_free(T *t, Ten *x) {
    free(x->h);
    free(x->c);
    free(x->r);
    t->gpu->ops->free(t->gpu, x->base);
    memset(x, 0, sizeof *x);
}

/* download d, check the canary, compare against c (ref) and bf16(r) (pt) */
static void check(T *t, const char *name, Ten *y) {
    size_t n = y->n;
    float *g = malloc((n + CANARY) * sizeof(float));
    if (t->gpu->ops->download(t->gpu, g, y->d, n + CANARY) != ZI_OK) {
        fail_status(t, name);
        free(g);
        return;
    }
    int canary_ok = 1, nan_bad = 0;
    for (size_t i = 0; i < CANARY; i++) canary_ok &= g[n + i] == bf(CANARY_VAL);
    double err = 0, err_pt = 0, refmax = 0, sum_err = 0;
    for (size_t i = 0; i < n; i++) {
        float ref = y->c[i], pt = bf(y->r[i]);
        if (!isfinite(ref)) { nan_bad += isfinite(g[i]) != 0; continue; }
        if (!isfinite(g[i])) { nan_bad++; continue; }
        double e = fabs((double)g[i] - ref), ep = fabs((double)pt - ref);
        err = e > err ? e : err;
        err_pt = ep > err_pt ? ep : err_pt;
        sum_err += e;
        refmax = fabs(ref) > refmax ? fabs(ref) : refmax;
    }
    double atol = refmax / 512.0 + 1e-30;
    int ok = canary_ok && !nan_bad && err <= 2 * err_pt + atol;
    printf("%-44s %s  max|cuda-ref| %.3g (mean %.2g)  max|bf16ref-ref| %.3g  atol %.2g%s%s\n", name, ok ? "ok  " : "FAIL",
           err, n ? sum_err / n : 0.0, err_pt, atol, canary_ok ? "" : "  CANARY OVERWRITTEN",
           nan_bad ? "  NaN/Inf MISMATCH" : "");
    if (ok) t->pass++;
    else t->fail++;
    free(g);
}

#define GPU_OK(t, name, call)                          \
    do {                                               \
        if ((call) != ZI_OK) { fail_status(t, name); goto done; } \
    } while (0)

// ----------------------------------------------------------------------------------------------
// tests, one function per op

static void test_matmul(T *t, int M, int K, int N, int bias, int off) {
    char name[96];
    snprintf(name, sizeof name, "matmul M=%d K=%d N=%d%s%s", M, K, N, bias ? " +bias" : "", off ? " unaligned" : "");
    if (skip(name)) return;
    Ten x, w, b = {0}, y;
    ten_rand(t, &x, (size_t)M * K, -1, 1, off);
    ten_rand(t, &w, (size_t)N * K, -1, 1, 0);
    if (bias) ten_rand(t, &b, N, -1, 1, off);
    ten_out(t, &y, (size_t)M * N, 0);
    t->cpu->ops->matmul(t->cpu, y.c, x.c, w.c, bias ? b.c : NULL, M, K, N);
    t->cpu->ops->matmul(t->cpu, y.r, x.r, w.r, bias ? b.r : NULL, M, K, N);
    GPU_OK(t, name, t->gpu->ops->matmul(t->gpu, y.d, x.d, w.d, bias ? b.d : NULL, M, K, N));
    check(t, name, &y);
done:
    ten_free(t, &x);
    ten_free(t, &w);
    if (bias) ten_free(t, &b);
    ten_free(t, &y);
}

/* q, k uniform in [-qk_amp, qk_amp] (1.7: unit variance, as after RMSNorm; the larger the amplitude, the
   more peaked the softmax and the more the running max moves between key tiles), v in [-1, 1] */
static void test_attention_amp(T *t, int S, int NH, int NKV, int HD, int causal, int off, float qk_amp) {
    char name[96], amp[24] = "";
    if (qk_amp != 3.0f) snprintf(amp, sizeof amp, " qk=%g", qk_amp);
    snprintf(name, sizeof name, "attention S=%d NH=%d NKV=%d HD=%d%s%s%s", S, NH, NKV, HD, causal ? " causal" : "",
             off ? " unaligned" : "", amp);
    if (skip(name)) return;
    Ten q, k, v, o;
    float sc = 1.0f / sqrtf((float)HD);
    ten_rand(t, &q, (size_t)S * NH * HD, -qk_amp, qk_amp, off);
    ten_rand(t, &k, (size_t)S * NKV * HD, -qk_amp, qk_amp, 0);
    ten_rand(t, &v, (size_t)S * NKV * HD, -1, 1, 0);
    ten_out(t, &o, (size_t)S * NH * HD, 0);
    t->cpu->ops->attention(t->cpu, o.c, q.c, k.c, v.c, 0, S, NH, NKV, HD, causal, sc);
    t->cpu->ops->attention(t->cpu, o.r, q.r, k.r, v.r, 0, S, NH, NKV, HD, causal, sc);
    GPU_OK(t, name, t->gpu->ops->attention(t->gpu, o.d, q.d, k.d, v.d, 0, S, NH, NKV, HD, causal, sc));
    check(t, name, &o);
done:
    ten_free(t, &q);
    ten_free(t, &k);
    ten_free(t, &v);
    ten_free(t, &o);
}

static void test_attention(T *t, int S, int NH, int NKV, int HD, int causal, int off) {
    test_attention_amp(t, S, NH, NKV, HD, causal, off, 3.0f);
}

/* q, k and v read from the rows of one merged projection qkv[S, (NH + 2 NKV) HD] (ld = its row), as the DiT
   runs it after the merged q|k|v GEMM; the packed case above is the reference layout */
static void test_attention_merged(T *t, int S, int NH, int NKV, int HD, int causal) {
    char name[96];
    snprintf(name, sizeof name, "attention S=%d NH=%d NKV=%d HD=%d%s merged qkv rows", S, NH, NKV, HD,
             causal ? " causal" : "");
    if (skip(name)) return;
    Ten qkv, o;
    int ld = (NH + 2 * NKV) * HD;
    size_t ko = (size_t)NH * HD, vo = (size_t)(NH + NKV) * HD;
    float sc = 1.0f / sqrtf((float)HD);
    ten_rand(t, &qkv, (size_t)S * ld, -1.7f, 1.7f, 0);
    ten_out(t, &o, (size_t)S * NH * HD, 0);
    t->cpu->ops->attention(t->cpu, o.c, qkv.c, qkv.c + ko, qkv.c + vo, ld, S, NH, NKV, HD, causal, sc);
    t->cpu->ops->attention(t->cpu, o.r, qkv.r, qkv.r + ko, qkv.r + vo, ld, S, NH, NKV, HD, causal, sc);
    GPU_OK(t, name, t->gpu->ops->attention(t->gpu, o.d, qkv.d, zi_act(t->gpu, qkv.d, ko), zi_act(t->gpu, qkv.d, vo), ld,
                                           S, NH, NKV, HD, causal, sc));
    check(t, name, &o);
done:
    ten_free(t, &qkv);
    ten_free(t, &o);
}

static void test_rmsnorm(T *t, int M, int D, int weight, int off) {
    char name[96];
    snprintf(name, sizeof name, "rmsnorm M=%d D=%d%s%s", M, D, weight ? " w" : "", off ? " unaligned" : "");
    if (skip(name)) return;
    Ten x, w = {0}, y;
    ten_rand(t, &x, (size_t)M * D, -3, 3, off);
    if (weight) ten_rand(t, &w, D, 0.5f, 1.5f, 0);
    ten_out(t, &y, (size_t)M * D, 0);
    t->cpu->ops->rmsnorm(t->cpu, y.c, x.c, weight ? w.c : NULL, M, D, 1e-6f);
    t->cpu->ops->rmsnorm(t->cpu, y.r, x.r, weight ? w.r : NULL, M, D, 1e-6f);
    GPU_OK(t, name, t->gpu->ops->rmsnorm(t->gpu, y.d, x.d, weight ? w.d : NULL, M, D, 1e-6f));
    check(t, name, &y);
done:
    ten_free(t, &x);
    if (weight) ten_free(t, &w);
    ten_free(t, &y);
}

static void test_layernorm(T *t, int M, int D) {
    char name[96];
    snprintf(name, sizeof name, "layernorm M=%d D=%d", M, D);
    if (skip(name)) return;
    Ten x, y;
    ten_rand(t, &x, (size_t)M * D, 1, 4, 0); /* mean far from 0: the variance must not cancel */
    ten_out(t, &y, (size_t)M * D, 0);
    t->cpu->ops->layernorm(t->cpu, y.c, x.c, M, D, 1e-6f);
    t->cpu->ops->layernorm(t->cpu, y.r, x.r, M, D, 1e-6f);
    GPU_OK(t, name, t->gpu->ops->layernorm(t->gpu, y.d, x.d, M, D, 1e-6f));
    check(t, name, &y);
done:
    ten_free(t, &x);
    ten_free(t, &y);
}

static void test_groupnorm(T *t, int B, int C, int HW, int G, int affine, int silu) {
    char name[96];
    snprintf(name, sizeof name, "groupnorm B=%d C=%d HW=%d G=%d%s%s", B, C, HW, G, affine ? " affine" : "",
             silu ? " silu" : "");
    if (skip(name)) return;
    Ten x, ga = {0}, be = {0}, y;
    ten_rand(t, &x, (size_t)B * C * HW, 2, 6, 0);
    if (affine) { ten_rand(t, &ga, C, 0.5f, 1.5f, 0); ten_rand(t, &be, C, -0.5f, 0.5f, 0); }
    ten_out(t, &y, (size_t)B * C * HW, 0);
    t->cpu->ops->groupnorm(t->cpu, y.c, x.c, affine ? ga.c : NULL, affine ? be.c : NULL, B, C, HW, G, 1e-6f, silu);
    t->cpu->ops->groupnorm(t->cpu, y.r, x.r, affine ? ga.r : NULL, affine ? be.r : NULL, B, C, HW, G, 1e-6f, silu);
    GPU_OK(t, name, t->gpu->ops->groupnorm(t->gpu, y.d, x.d, affine ? ga.d : NULL, affine ? be.d : NULL, B, C, HW, G, 1e-6f, silu));
    check(t, name, &y);
done:
    ten_free(t, &x);
    if (affine) { ten_free(t, &ga); ten_free(t, &be); }
    ten_free(t, &y);
}

enum { EW_ADD, EW_SCALE, EW_ONE_PLUS, EW_SILU, EW_SWIGLU };
static const char *ew_names[] = {"add", "scale", "one_plus", "silu", "swiglu"};

static zi_status ew_run(ZiBackend *be, int op, void *out, const void *a, const void *b, size_t n) {
    switch (op) {
    case EW_ADD: return be->ops->add(be, out, a, b, n);
    case EW_SCALE: return be->ops->scale(be, out, a, 0.37f, n);
    case EW_ONE_PLUS: return be->ops->one_plus(be, out, a, n);
    case EW_SILU: return be->ops->silu(be, out, a, n);
    default: return be->ops->swiglu(be, out, a, b, n);
    }
}

static void test_elementwise(T *t, int op, size_t n, int off) {
    char name[96];
    snprintf(name, sizeof name, "%s n=%zu%s", ew_names[op], n, off ? " unaligned" : "");
    if (skip(name)) return;
    Ten a, b, y;
    ten_rand(t, &a, n, -4, 4, off);
    ten_rand(t, &b, n, -4, 4, 0);
    ten_out(t, &y, n, 0);
    ew_run(t->cpu, op, y.c, a.c, b.c, n);
    ew_run(t->cpu, op, y.r, a.r, b.r, n);
    GPU_OK(t, name, ew_run(t->gpu, op, y.d, a.d, b.d, n));
    check(t, name, &y);
done:
    ten_free(t, &a);
    ten_free(t, &b);
    ten_free(t, &y);
}

static void test_mul_rows(T *t, int M, int D, int off) {
    char name[96];
    snprintf(name, sizeof name, "mul_rows M=%d D=%d%s", M, D, off ? " unaligned" : "");
    if (skip(name)) return;
    Ten x, s, y;
    ten_rand(t, &x, (size_t)M * D, -2, 2, off);
    ten_rand(t, &s, D, -2, 2, 0);
    ten_out(t, &y, (size_t)M * D, 0);
    t->cpu->ops->mul_rows(t->cpu, y.c, x.c, s.c, M, D);
    t->cpu->ops->mul_rows(t->cpu, y.r, x.r, s.r, M, D);
    GPU_OK(t, name, t->gpu->ops->mul_rows(t->gpu, y.d, x.d, s.d, M, D));
    check(t, name, &y);
done:
    ten_free(t, &x);
    ten_free(t, &s);
    ten_free(t, &y);
}

static void test_rope(T *t, int S, int NH, int HD, int interleaved) {
    char name[96];
    snprintf(name, sizeof name, "rope S=%d NH=%d HD=%d %s", S, NH, HD, interleaved ? "interleaved" : "rotate-half");
    if (skip(name)) return;
    Ten x;
    ten_rand(t, &x, (size_t)S * NH * HD, -2, 2, 0);
    size_t ncs = (size_t)S * HD;
    float *cs = malloc(ncs * sizeof(float)), *dcs = NULL;
    for (size_t i = 0; i < ncs / 2; i++) {
        float a = urand(t, -6.3f, 6.3f);
        cs[2 * i] = cosf(a);
        cs[2 * i + 1] = sinf(a);
    }
    if (t->gpu->ops->alloc(t->gpu, (void **)&dcs, ncs * sizeof(float)) != ZI_OK) { fail_status(t, name); goto done; }
    GPU_OK(t, name, t->gpu->ops->upload_f32(t->gpu, dcs, cs, ncs));
    t->cpu->ops->rope(t->cpu, x.c, cs, S, NH, HD, interleaved);
    t->cpu->ops->rope(t->cpu, x.r, cs, S, NH, HD, interleaved);
    GPU_OK(t, name, t->gpu->ops->rope(t->gpu, x.d, dcs, S, NH, HD, interleaved));
    check(t, name, &x);
done:
    t->gpu->ops->free(t->gpu, dcs);
    free(cs);
    ten_free(t, &x);
}

// fused DiT ops

static void test_rmsnorm_scale(T *t, int M, int D, int scaled, int off) {
    char name[96];
    snprintf(name, sizeof name, "rmsnorm_scale M=%d D=%d%s%s", M, D, scaled ? "" : " (s NULL)", off ? " unaligned" : "");
    if (skip(name)) return;
    Ten x, w, s = {0}, y;
    ten_rand(t, &x, (size_t)M * D, -3, 3, off);
    ten_rand(t, &w, D, 0.5f, 1.5f, 0);
    if (scaled) ten_rand(t, &s, D, 0.2f, 2.0f, 0);
    ten_out(t, &y, (size_t)M * D, 0);
    t->cpu->ops->rmsnorm_scale(t->cpu, y.c, x.c, w.c, scaled ? s.c : NULL, M, D, 1e-5f);
    t->cpu->ops->rmsnorm_scale(t->cpu, y.r, x.r, w.r, scaled ? s.r : NULL, M, D, 1e-5f);
    GPU_OK(t, name, t->gpu->ops->rmsnorm_scale(t->gpu, y.d, x.d, w.d, scaled ? s.d : NULL, M, D, 1e-5f));
    check(t, name, &y);
done:
    ten_free(t, &x);
    ten_free(t, &w);
    if (scaled) ten_free(t, &s);
    ten_free(t, &y);
}

static void test_rmsnorm_add_gated(T *t, int M, int D, int gated) {
    char name[96];
    snprintf(name, sizeof name, "rmsnorm_add_gated M=%d D=%d%s", M, D, gated ? " g" : " (g NULL)");
    if (skip(name)) return;
    Ten x, y, w, g = {0};
    ten_rand(t, &x, (size_t)M * D, -2, 2, 0); /* updated in place: x is the output */
    ten_rand(t, &y, (size_t)M * D, -30, 30, 0);
    ten_rand(t, &w, D, 0.5f, 1.5f, 0);
    if (gated) ten_rand(t, &g, D, -1, 1, 0);
    t->cpu->ops->rmsnorm_add_gated(t->cpu, x.c, y.c, w.c, gated ? g.c : NULL, M, D, 1e-5f);
    t->cpu->ops->rmsnorm_add_gated(t->cpu, x.r, y.r, w.r, gated ? g.r : NULL, M, D, 1e-5f);
    GPU_OK(t, name, t->gpu->ops->rmsnorm_add_gated(t->gpu, x.d, y.d, w.d, gated ? g.d : NULL, M, D, 1e-5f));
    check(t, name, &x);
done:
    ten_free(t, &x);
    ten_free(t, &y);
    ten_free(t, &w);
    if (gated) ten_free(t, &g);
}

/* rmsnorm_add_gated then rmsnorm_scale of the updated x, fused: both outputs checked */
static void test_rmsnorm_add_gated_scale(T *t, int M, int D, int modulated) {
    char name[96];
    snprintf(name, sizeof name, "rmsnorm_add_gated_scale M=%d D=%d%s", M, D, modulated ? " g s" : " (g, s NULL)");
    if (skip(name)) return;
    Ten x, h, y, w, wn, g = {0}, s = {0};
    ten_rand(t, &x, (size_t)M * D, -2, 2, 0); /* updated in place */
    ten_out(t, &h, (size_t)M * D, 0);
    ten_rand(t, &y, (size_t)M * D, -30, 30, 0);
    ten_rand(t, &w, D, 0.5f, 1.5f, 0);
    ten_rand(t, &wn, D, 0.5f, 1.5f, 0);
    if (modulated) ten_rand(t, &g, D, -1, 1, 0), ten_rand(t, &s, D, 0.2f, 2.0f, 0);
    t->cpu->ops->rmsnorm_add_gated_scale(t->cpu, x.c, h.c, y.c, w.c, g.c, wn.c, s.c, M, D, 1e-5f);
    t->cpu->ops->rmsnorm_add_gated_scale(t->cpu, x.r, h.r, y.r, w.r, g.r, wn.r, s.r, M, D, 1e-5f);
    GPU_OK(t, name, t->gpu->ops->rmsnorm_add_gated_scale(t->gpu, x.d, h.d, y.d, w.d, g.d, wn.d, s.d, M, D, 1e-5f));
    check(t, name, &x);
    check(t, name, &h);
done:
    ten_free(t, &x);
    ten_free(t, &h);
    ten_free(t, &y);
    ten_free(t, &w);
    ten_free(t, &wn);
    if (modulated) ten_free(t, &g), ten_free(t, &s);
}

/* adaln_gates over R rows of [4D], in place as the DiT calls it, against one_plus / tanh */
static void test_adaln_gates(T *t, int R, int D) {
    char name[96];
    snprintf(name, sizeof name, "adaln_gates R=%d D=%d", R, D);
    if (skip(name)) return;
    Ten m;
    ten_rand(t, &m, (size_t)R * 4 * D, -4, 4, 0);
    t->cpu->ops->adaln_gates(t->cpu, m.c, m.c, R, D);
    t->cpu->ops->adaln_gates(t->cpu, m.r, m.r, R, D);
    for (int d = 0; d < 4 * D; d++) { /* the last row by hand: the part an element falls in picks its function */
        size_t i = (size_t)(R - 1) * 4 * D + d;
        float want = (d / D) % 2 ? tanhf(m.h[i]) : 1.0f + m.h[i];
        if (fabsf(m.c[i] - want) > 1e-6f * (1.0f + fabsf(want))) {
            printf("%-44s FAIL  CPU op is not one_plus/tanh at element %d\n", name, d);
            t->fail++;
            goto done;
        }
    }
    GPU_OK(t, name, t->gpu->ops->adaln_gates(t->gpu, m.d, m.d, R, D));
    check(t, name, &m);
done:
    ten_free(t, &m);
}

static void test_swiglu_pair(T *t, int M, int F, int off) {
    char name[96];
    snprintf(name, sizeof name, "swiglu_pair M=%d F=%d%s", M, F, off ? " unaligned" : "");
    if (skip(name)) return;
    Ten gu, y;
    ten_rand(t, &gu, (size_t)M * 2 * F, -4, 4, off);
    ten_out(t, &y, (size_t)M * F, 0);
    t->cpu->ops->swiglu_pair(t->cpu, y.c, gu.c, M, F);
    t->cpu->ops->swiglu_pair(t->cpu, y.r, gu.r, M, F);
    GPU_OK(t, name, t->gpu->ops->swiglu_pair(t->gpu, y.d, gu.d, M, F));
    check(t, name, &y);
done:
    ten_free(t, &gu);
    ten_free(t, &y);
}

/* out[M,F] = silu(x w[0:F]^T) * (x w[F:2F]^T), w[2F,K]. The same-precision reference (pt) rounds gate and up
   to bf16 before swiglu_pair, as the device does on both of its paths (fused kernel, or matmul + swiglu_pair) */
static void test_matmul_swiglu(T *t, int M, int K, int F, int off) {
    char name[96];
    snprintf(name, sizeof name, "matmul_swiglu M=%d K=%d F=%d%s", M, K, F, off ? " unaligned" : "");
    if (skip(name)) return;
    Ten x, w, y;
    float amp = 6.0f / sqrtf((float)K); /* gate and up of std ~2: the whole silu curve */
    float *gu = malloc((size_t)M * 2 * F * sizeof(float));
    ten_rand(t, &x, (size_t)M * K, -1, 1, off);
    ten_rand(t, &w, (size_t)2 * F * K, -amp, amp, 0);
    ten_out(t, &y, (size_t)M * F, 0);
    t->cpu->ops->matmul_swiglu(t->cpu, y.c, x.c, w.c, M, K, F);
    t->cpu->ops->matmul(t->cpu, gu, x.r, w.r, NULL, M, K, 2 * F);
    for (size_t i = 0; i < (size_t)M * 2 * F; i++) gu[i] = bf(gu[i]);
    t->cpu->ops->swiglu_pair(t->cpu, y.r, gu, M, F);
    GPU_OK(t, name, t->gpu->ops->matmul_swiglu(t->gpu, y.d, x.d, w.d, M, K, F));
    check(t, name, &y);
done:
    free(gu);
    ten_free(t, &x);
    ten_free(t, &w);
    ten_free(t, &y);
}

/* q and k normalised and rotated in place inside one merged projection; v must come back untouched */
static void test_qkv_norm_rope(T *t, int S, int NH, int NKV, int HD, int norm, int interleaved) {
    char name[96];
    snprintf(name, sizeof name, "qkv_norm_rope S=%d NH=%d NKV=%d HD=%d%s %s", S, NH, NKV, HD, norm ? " norm" : "",
             interleaved ? "interleaved" : "rotate-half");
    if (skip(name)) return;
    Ten qkv, wq = {0}, wk = {0};
    size_t ncs = (size_t)S * HD;
    float *cs = malloc(ncs * sizeof(float)), *dcs = NULL;
    for (size_t i = 0; i < ncs / 2; i++) {
        float a = urand(t, -6.3f, 6.3f);
        cs[2 * i] = cosf(a);
        cs[2 * i + 1] = sinf(a);
    }
    ten_rand(t, &qkv, (size_t)S * (NH + 2 * NKV) * HD, -8, 8, 0);
    if (norm) { ten_rand(t, &wq, HD, 0.5f, 1.5f, 0); ten_rand(t, &wk, HD, 0.5f, 1.5f, 0); }
    if (t->gpu->ops->alloc(t->gpu, (void **)&dcs, ncs * sizeof(float)) != ZI_OK) { fail_status(t, name); goto done; }
    GPU_OK(t, name, t->gpu->ops->upload_f32(t->gpu, dcs, cs, ncs));
    t->cpu->ops->qkv_norm_rope(t->cpu, qkv.c, norm ? wq.c : NULL, norm ? wk.c : NULL, cs, S, NH, NKV, HD, 1e-5f,
                               interleaved);
    t->cpu->ops->qkv_norm_rope(t->cpu, qkv.r, norm ? wq.r : NULL, norm ? wk.r : NULL, cs, S, NH, NKV, HD, 1e-5f,
                               interleaved);
    GPU_OK(t, name, t->gpu->ops->qkv_norm_rope(t->gpu, qkv.d, norm ? wq.d : NULL, norm ? wk.d : NULL, dcs, S, NH, NKV,
                                               HD, 1e-5f, interleaved));
    check(t, name, &qkv);
    { /* the v heads: the input's bf16 values, bit for bit */
        size_t row = (size_t)(NH + 2 * NKV) * HD, n = (size_t)S * row, bad = 0;
        float *g = malloc(n * sizeof(float));
        if (t->gpu->ops->download(t->gpu, g, qkv.d, n) != ZI_OK) { fail_status(t, name); free(g); goto done; }
        for (size_t i = 0; i < n; i++)
            if (i % row >= (size_t)(NH + NKV) * HD && g[i] != bf(qkv.h[i])) bad++;
        printf("%-44s %s  v heads changed: %zu\n", "  [v untouched]", bad ? "FAIL" : "ok  ", bad);
        if (bad) t->fail++;
        else t->pass++;
        free(g);
    }
done:
    t->gpu->ops->free(t->gpu, dcs);
    free(cs);
    ten_free(t, &qkv);
    if (norm) { ten_free(t, &wq); ten_free(t, &wk); }
}

static void test_copy(T *t, size_t n, int overlap) {
    char name[96];
    snprintf(name, sizeof name, "copy n=%zu%s", n, overlap ? " overlapping (dst = src + 3)" : "");
    if (skip(name)) return;
    Ten x, y;
    ten_out(t, &y, overlap ? 1 : n, 0);
    if (overlap) { /* in place within x: x[3..3+n) = x[0..n) */
        ten_rand(t, &x, n + 3, -2, 2, 0);
        t->cpu->ops->copy(t->cpu, x.c + 3, x.c, n);
        t->cpu->ops->copy(t->cpu, x.r + 3, x.r, n);
        GPU_OK(t, name, t->gpu->ops->copy(t->gpu, zi_act(t->gpu, x.d, 3), x.d, n));
        check(t, name, &x);
    } else {
        ten_rand(t, &x, n, -2, 2, 0);
        t->cpu->ops->copy(t->cpu, y.c, x.c, n);
        t->cpu->ops->copy(t->cpu, y.r, x.r, n);
        GPU_OK(t, name, t->gpu->ops->copy(t->gpu, y.d, x.d, n));
        check(t, name, &y);
    }
done:
    ten_free(t, &x);
    ten_free(t, &y);
}

static void test_fill_rows(T *t, int M, int D) {
    char name[96];
    snprintf(name, sizeof name, "fill_rows M=%d D=%d", M, D);
    if (skip(name)) return;
    Ten row, y;
    ten_rand(t, &row, D, -2, 2, 0);
    ten_out(t, &y, (size_t)M * D, 0);
    t->cpu->ops->fill_rows(t->cpu, y.c, row.c, M, D);
    t->cpu->ops->fill_rows(t->cpu, y.r, row.r, M, D);
    GPU_OK(t, name, t->gpu->ops->fill_rows(t->gpu, y.d, row.d, M, D));
    check(t, name, &y);
done:
    ten_free(t, &row);
    ten_free(t, &y);
}

static void test_transpose(T *t, int M, int N) {
    char name[96];
    snprintf(name, sizeof name, "transpose M=%d N=%d", M, N);
    if (skip(name)) return;
    Ten x, y;
    ten_rand(t, &x, (size_t)M * N, -2, 2, 0);
    ten_out(t, &y, (size_t)M * N, 0);
    t->cpu->ops->transpose(t->cpu, y.c, x.c, M, N);
    t->cpu->ops->transpose(t->cpu, y.r, x.r, M, N);
    GPU_OK(t, name, t->gpu->ops->transpose(t->gpu, y.d, x.d, M, N));
    check(t, name, &y);
done:
    ten_free(t, &x);
    ten_free(t, &y);
}

static void test_patch(T *t, int C, int F, int H, int W, int pF, int pH, int pW) {
    char name[96];
    size_t n = (size_t)C * F * H * W;
    Ten img, tok, back;
    snprintf(name, sizeof name, "patchify C=%d F=%d H=%d W=%d p=%d,%d,%d", C, F, H, W, pF, pH, pW);
    if (skip(name)) return;
    ten_rand(t, &img, n, -2, 2, 0);
    ten_out(t, &tok, n, 0);
    ten_out(t, &back, n, 0);
    t->cpu->ops->patchify(t->cpu, tok.c, img.c, C, F, H, W, pF, pH, pW);
    t->cpu->ops->patchify(t->cpu, tok.r, img.r, C, F, H, W, pF, pH, pW);
    GPU_OK(t, name, t->gpu->ops->patchify(t->gpu, tok.d, img.d, C, F, H, W, pF, pH, pW));
    check(t, name, &tok);
    snprintf(name, sizeof name, "unpatchify C=%d F=%d H=%d W=%d p=%d,%d,%d", C, F, H, W, pF, pH, pW);
    t->cpu->ops->unpatchify(t->cpu, back.c, tok.c, C, F, H, W, pF, pH, pW);
    t->cpu->ops->unpatchify(t->cpu, back.r, tok.r, C, F, H, W, pF, pH, pW);
    GPU_OK(t, name, t->gpu->ops->unpatchify(t->gpu, back.d, tok.d, C, F, H, W, pF, pH, pW));
    check(t, name, &back);
done:
    ten_free(t, &img);
    ten_free(t, &tok);
    ten_free(t, &back);
}

/* conv knobs of the CUDA backend (ops_cuda.c): mode "im2col" / "igemm" / NULL (auto), tile 0 (auto) or 1..6 */
static void conv_knobs(const char *mode, int tile) {
    char buf[16];
    if (mode) setenv("ZIMAGE_CONV", mode, 1);
    else unsetenv("ZIMAGE_CONV");
    snprintf(buf, sizeof buf, "%d", tile);
    if (tile) setenv("ZIMAGE_CONV_TILE", buf, 1);
    else unsetenv("ZIMAGE_CONV_TILE");
}

/* inputs uniform in [-amp, amp) */
static void test_conv2d(T *t, int B, int Ci, int H, int W, int Co, int k, int pad, int bias, float amp, const char *mode,
                        int tile) {
    char name[128];
    snprintf(name, sizeof name, "conv2d B=%d Ci=%d %dx%d Co=%d k=%d pad=%d%s%s%s tile=%d amp=%g", B, Ci, H, W, Co, k, pad,
             bias ? " +bias" : "", mode ? " " : "", mode ? mode : "", tile, amp);
    if (skip(name)) return;
    int Ho = H + 2 * pad - k + 1, Wo = W + 2 * pad - k + 1;
    Ten x, w, b = {0}, y;
    ten_rand(t, &x, (size_t)B * Ci * H * W, -amp, amp, 0);
    ten_rand(t, &w, (size_t)Co * Ci * k * k, -0.5f, 0.5f, 0);
    if (bias) ten_rand(t, &b, Co, -1, 1, 0);
    ten_out(t, &y, (size_t)B * Co * Ho * Wo, 0);
    t->cpu->ops->conv2d(t->cpu, y.c, x.c, w.c, bias ? b.c : NULL, B, Ci, H, W, Co, k, pad);
    t->cpu->ops->conv2d(t->cpu, y.r, x.r, w.r, bias ? b.r : NULL, B, Ci, H, W, Co, k, pad);
    conv_knobs(mode, tile);
    zi_status st = t->gpu->ops->conv2d(t->gpu, y.d, x.d, w.d, bias ? b.d : NULL, B, Ci, H, W, Co, k, pad);
    conv_knobs(NULL, 0);
    GPU_OK(t, name, st);
    check(t, name, &y);
done:
    ten_free(t, &x);
    ten_free(t, &w);
    if (bias) ten_free(t, &b);
    ten_free(t, &y);
}

/* conv2d(silu?(groupnorm(x))) with x uniform in [lo, hi); res: 0 none, 1 a residual tensor, 2 in place (res = out) */
static void test_groupnorm_conv2d(T *t, int B, int Ci, int H, int W, int Co, int k, int pad, int G, int silu, float lo,
                                  float hi, int res, const char *mode) {
    char name[128];
    snprintf(name, sizeof name, "groupnorm_conv2d B=%d Ci=%d %dx%d Co=%d k=%d G=%d%s x~[%g,%g)%s%s%s", B, Ci, H, W, Co,
             k, G, silu ? " silu" : "", lo, hi, res == 1 ? " +res" : res == 2 ? " +res in place" : "", mode ? " " : "",
             mode ? mode : "");
    if (skip(name)) return;
    int Ho = H + 2 * pad - k + 1, Wo = W + 2 * pad - k + 1;
    size_t ny = (size_t)B * Co * Ho * Wo;
    Ten x, ga, be, w, b, y, r = {0};
    ten_rand(t, &x, (size_t)B * Ci * H * W, lo, hi, 0);
    ten_rand(t, &ga, Ci, 0.5f, 1.5f, 0);
    ten_rand(t, &be, Ci, -0.5f, 0.5f, 0);
    ten_rand(t, &w, (size_t)Co * Ci * k * k, -0.5f, 0.5f, 0);
    ten_rand(t, &b, Co, -1, 1, 0);
    if (res == 1) ten_rand(t, &r, ny, -2, 2, 0);
    if (res == 2) ten_rand(t, &y, ny, -2, 2, 0); /* the residual, overwritten by the output */
    else ten_out(t, &y, ny, 0);
    const void *rc = res == 1 ? r.c : res == 2 ? y.c : NULL, *rr = res == 1 ? r.r : res == 2 ? y.r : NULL;
    const void *rd = res == 1 ? r.d : res == 2 ? y.d : NULL;
    t->cpu->ops->groupnorm_conv2d(t->cpu, y.c, x.c, rc, ga.c, be.c, w.c, b.c, B, Ci, H, W, Co, k, pad, G, 1e-6f, silu);
    t->cpu->ops->groupnorm_conv2d(t->cpu, y.r, x.r, rr, ga.r, be.r, w.r, b.r, B, Ci, H, W, Co, k, pad, G, 1e-6f, silu);
    conv_knobs(mode, 0);
    zi_status st = t->gpu->ops->groupnorm_conv2d(t->gpu, y.d, x.d, rd, ga.d, be.d, w.d, b.d, B, Ci, H, W, Co, k, pad, G,
                                                 1e-6f, silu);
    conv_knobs(NULL, 0);
    GPU_OK(t, name, st);
    check(t, name, &y);
done:
    ten_free(t, &x);
    ten_free(t, &ga);
    ten_free(t, &be);
    ten_free(t, &w);
    ten_free(t, &b);
    ten_free(t, &y);
    if (res == 1) ten_free(t, &r);
}

static void test_upsample_conv2d(T *t, int B, int Ci, int H, int W, int Co, int k, int pad, const char *mode) {
    char name[128];
    snprintf(name, sizeof name, "upsample_conv2d B=%d Ci=%d %dx%d Co=%d k=%d pad=%d%s%s", B, Ci, H, W, Co, k, pad,
             mode ? " " : "", mode ? mode : "");
    if (skip(name)) return;
    int Ho = 2 * H + 2 * pad - k + 1, Wo = 2 * W + 2 * pad - k + 1;
    Ten x, w, b, y;
    ten_rand(t, &x, (size_t)B * Ci * H * W, -1, 1, 0);
    ten_rand(t, &w, (size_t)Co * Ci * k * k, -0.5f, 0.5f, 0);
    ten_rand(t, &b, Co, -1, 1, 0);
    ten_out(t, &y, (size_t)B * Co * Ho * Wo, 0);
    t->cpu->ops->upsample_conv2d(t->cpu, y.c, x.c, w.c, b.c, B, Ci, H, W, Co, k, pad);
    t->cpu->ops->upsample_conv2d(t->cpu, y.r, x.r, w.r, b.r, B, Ci, H, W, Co, k, pad);
    conv_knobs(mode, 0);
    zi_status st = t->gpu->ops->upsample_conv2d(t->gpu, y.d, x.d, w.d, b.d, B, Ci, H, W, Co, k, pad);
    conv_knobs(NULL, 0);
    GPU_OK(t, name, st);
    check(t, name, &y);
done:
    ten_free(t, &x);
    ten_free(t, &w);
    ten_free(t, &b);
    ten_free(t, &y);
}

/* upload_weight from F32/BF16/F16 data must give exactly bf16(value) (round to nearest even) */
static void test_upload_weight(T *t, ZiDtype dt, size_t n) {
    char name[96];
    snprintf(name, sizeof name, "upload_weight %s n=%zu", st_dtype_name(dt), n);
    if (skip(name)) return;
    size_t es = dt == ZI_DT_F32 ? 4 : 2;
    unsigned char *raw = malloc(n * es);
    float *want = malloc(n * sizeof(float)), *got = malloc((n + CANARY) * sizeof(float));
    void *d = NULL;
    for (size_t i = 0; i < n; i++) {
        float v = urand(t, -100, 100);
        if (dt == ZI_DT_F32) { memcpy(raw + 4 * i, &v, 4); want[i] = bf(v); }
        else if (dt == ZI_DT_BF16) { uint16_t h = zi_f32_to_bf16(v); memcpy(raw + 2 * i, &h, 2); want[i] = zi_bf16_to_f32(h); }
        else { /* f16: take the bits of a random finite half */
            uint16_t h = (uint16_t)((uint32_t)urand(t, 0, 65535.99f) & 0xfbffu);
            memcpy(raw + 2 * i, &h, 2);
            want[i] = bf(zi_f16_to_f32(h));
        }
    }
    int ok = 1;
    float canary[CANARY];
    for (int i = 0; i < CANARY; i++) canary[i] = CANARY_VAL;
    if (t->gpu->ops->alloc(t->gpu, &d, (n + CANARY) * 2) != ZI_OK ||
        t->gpu->ops->upload(t->gpu, zi_act(t->gpu, d, n), canary, CANARY) != ZI_OK ||
        t->gpu->ops->upload_weight(t->gpu, d, raw, dt, n) != ZI_OK ||
        t->gpu->ops->download(t->gpu, got, d, n + CANARY) != ZI_OK) {
        fail_status(t, name);
        goto done;
    }
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += memcmp(&got[i], &want[i], 4) != 0;
    for (int i = 0; i < CANARY; i++) ok &= got[n + i] == bf(CANARY_VAL);
    ok &= bad == 0;
    printf("%-44s %s  %zu of %zu elements differ from bf16(value)%s\n", name, ok ? "ok  " : "FAIL", bad, n,
           ok || bad ? "" : ", CANARY OVERWRITTEN");
    if (ok) t->pass++;
    else t->fail++;
done:
    t->gpu->ops->free(t->gpu, d);
    free(raw);
    free(want);
    free(got);
}

static void test_alloc_zero(T *t, size_t n) {
    char name[96];
    snprintf(name, sizeof name, "alloc zero-filled n=%zu", n);
    if (skip(name)) return;
    void *d = NULL;
    float *got = malloc(n * sizeof(float));
    if (t->gpu->ops->alloc(t->gpu, &d, n * 2) != ZI_OK || t->gpu->ops->download(t->gpu, got, d, n) != ZI_OK) {
        fail_status(t, name);
    } else {
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) bad += got[i] != 0.0f;
        printf("%-44s %s  %zu nonzero\n", name, bad ? "FAIL" : "ok  ", bad);
        if (bad) t->fail++;
        else t->pass++;
    }
    t->gpu->ops->free(t->gpu, d);
    free(got);
}

// ----------------------------------------------------------------------------------------------
// the sampler's f32 ops and the image output: IEEE f32 arithmetic with the same rounding order
// on both backends, so results must match the CPU op bit for bit (the CPU runs on the bf16
// values the device holds where an input is of the activation type)

/* f32 device buffer: CPU copy c, device d with CANARY floats after it */
typedef struct F32 {
    size_t n;
    float *c;
    float *d;
} F32;

static void f32_init(T *t, F32 *x, size_t n, const float *vals) {
    x->n = n;
    x->c = malloc((n + CANARY) * sizeof(float));
    for (size_t i = 0; i < n + CANARY; i++) x->c[i] = i >= n ? CANARY_VAL : vals ? vals[i] : NAN;
    if (t->gpu->ops->alloc(t->gpu, (void **)&x->d, (n + CANARY) * sizeof(float)) != ZI_OK ||
        t->gpu->ops->upload_f32(t->gpu, x->d, x->c, n + CANARY) != ZI_OK) {
        fprintf(stderr, "device setup failed: %s\n", zi_last_error());
        exit(2);
    }
}

static void f32_rand(T *t, F32 *x, size_t n, float lo, float hi) {
    float *v = malloc((n + 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) v[i] = urand(t, lo, hi);
    f32_init(t, x, n, v);
    free(v);
}

static void f32_free(T *t, F32 *x) {
    free(x->c);
    t->gpu->ops->free(t->gpu, x->d);
    memset(x, 0, sizeof *x);
}

static int same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0 || (isnan(a) && isnan(b)); }

static void report_exact(T *t, const char *name, size_t bad, size_t n, int canary_ok, const char *what) {
    int ok = bad == 0 && canary_ok;
    printf("%-44s %s  %zu of %zu elements differ from %s%s\n", name, ok ? "ok  " : "FAIL", bad, n, what,
           canary_ok ? "" : "  CANARY OVERWRITTEN");
    if (ok) t->pass++;
    else t->fail++;
}

/* the device f32 result must equal the CPU op's c bit for bit */
static void check_f32_exact(T *t, const char *name, F32 *y) {
    size_t n = y->n, bad = 0;
    float *g = malloc((n + CANARY) * sizeof(float));
    if (t->gpu->ops->download_bytes(t->gpu, g, y->d, (n + CANARY) * sizeof(float)) != ZI_OK) {
        fail_status(t, name);
        free(g);
        return;
    }
    int canary_ok = 1;
    for (size_t i = 0; i < CANARY; i++) canary_ok &= g[n + i] == CANARY_VAL;
    for (size_t i = 0; i < n; i++) bad += !same_bits(g[i], y->c[i]);
    report_exact(t, name, bad, n, canary_ok, "the CPU op");
    free(g);
}

/* the device activation result must equal bf16(CPU op's c) bit for bit */
static void check_act_exact(T *t, const char *name, Ten *y) {
    size_t n = y->n, bad = 0;
    float *g = malloc((n + CANARY) * sizeof(float));
    if (t->gpu->ops->download(t->gpu, g, y->d, n + CANARY) != ZI_OK) {
        fail_status(t, name);
        free(g);
        return;
    }
    int canary_ok = 1;
    for (size_t i = 0; i < CANARY; i++) canary_ok &= g[n + i] == bf(CANARY_VAL);
    for (size_t i = 0; i < n; i++) bad += !same_bits(g[i], bf(y->c[i]));
    report_exact(t, name, bad, n, canary_ok, "bf16(CPU op)");
    free(g);
}

static void test_to_act(T *t, size_t n) {
    char name[96];
    snprintf(name, sizeof name, "to_act n=%zu", n);
    if (skip(name)) return;
    F32 x;
    Ten y;
    f32_rand(t, &x, n, -300, 300);
    ten_out(t, &y, n, 0);
    t->cpu->ops->to_act(t->cpu, y.c, x.c, n);
    GPU_OK(t, name, t->gpu->ops->to_act(t->gpu, y.d, x.d, n));
    check_act_exact(t, name, &y);
done:
    f32_free(t, &x);
    ten_free(t, &y);
}

static void test_to_f32(T *t, size_t n) {
    char name[96];
    snprintf(name, sizeof name, "to_f32 n=%zu", n);
    if (skip(name)) return;
    Ten x;
    F32 y;
    ten_rand(t, &x, n, -300, 300, 0);
    f32_init(t, &y, n, NULL);
    t->cpu->ops->to_f32(t->cpu, y.c, x.r, n);          /* the device holds bf16(x) */
    GPU_OK(t, name, t->gpu->ops->to_f32(t->gpu, y.d, x.d, n));
    check_f32_exact(t, name, &y);
done:
    ten_free(t, &x);
    f32_free(t, &y);
}

enum { F32_CFG, F32_CFG_ALIAS, F32_SCALE, F32_EULER };
static const char *f32_names[] = {"cfg_combine", "cfg_combine (pred = neg)", "scale_f32", "euler_step"};

static zi_status f32_run(ZiBackend *be, int op, float *y, float *a, float *b, size_t n) {
    switch (op) {
    case F32_CFG: return be->ops->cfg_combine(be, y, a, b, 3.7f, n);
    case F32_CFG_ALIAS: return be->ops->cfg_combine(be, b, a, b, 0.8f, n);
    case F32_SCALE: return be->ops->scale_f32(be, y, a, 0.8237f, n);
    default: return be->ops->euler_step(be, a, b, -0.1427f, n);
    }
}

/* y (or, in place, the op's target) against the CPU op on identical f32 inputs */
static void test_f32_map(T *t, int op, size_t n) {
    char name[96];
    snprintf(name, sizeof name, "%s n=%zu", f32_names[op], n);
    if (skip(name)) return;
    F32 a, b, y;
    f32_rand(t, &a, n, -4, 4);
    f32_rand(t, &b, n, -4, 4);
    f32_init(t, &y, n, NULL);
    f32_run(t->cpu, op, y.c, a.c, b.c, n);
    GPU_OK(t, name, f32_run(t->gpu, op, y.d, a.d, b.d, n));
    check_f32_exact(t, name, op == F32_CFG_ALIAS ? &b : op == F32_EULER ? &a : &y);
done:
    f32_free(t, &a);
    f32_free(t, &b);
    f32_free(t, &y);
}

/* double sums in another order: any order of n non-negative terms is within (n - 1) * eps of the
   exact sum, so |cuda - cpu| <= 2 n eps relative; two device runs give the same bits */
static void test_sumsq(T *t, size_t n) {
    char name[96];
    snprintf(name, sizeof name, "sumsq_f32 n=%zu", n);
    if (skip(name)) return;
    F32 x;
    double ref = 0, g1 = -1, g2 = -2;
    f32_rand(t, &x, n, -3, 3);
    t->cpu->ops->sumsq_f32(t->cpu, &ref, x.c, n);
    GPU_OK(t, name, t->gpu->ops->sumsq_f32(t->gpu, &g1, x.d, n));
    GPU_OK(t, name, t->gpu->ops->sumsq_f32(t->gpu, &g2, x.d, n));
    double rel = fabs(g1 - ref) / (ref > 0 ? ref : 1);
    int ok = rel <= 2.0 * (double)n * DBL_EPSILON && memcmp(&g1, &g2, sizeof g1) == 0;
    printf("%-44s %s  cuda %.17g cpu %.17g (rel %.2g)%s\n", name, ok ? "ok  " : "FAIL", g1, ref, rel,
           memcmp(&g1, &g2, sizeof g1) ? "  NOT DETERMINISTIC" : "");
    if (ok) t->pass++;
    else t->fail++;
done:
    f32_free(t, &x);
}

static void test_latents_to_vae(T *t, size_t n) {
    char name[96];
    snprintf(name, sizeof name, "latents_to_vae n=%zu", n);
    if (skip(name)) return;
    F32 x;
    Ten y;
    f32_rand(t, &x, n, -4, 4);
    ten_out(t, &y, n, 0);
    t->cpu->ops->latents_to_vae(t->cpu, y.c, x.c, 0.3611f, 0.1159f, n);
    GPU_OK(t, name, t->gpu->ops->latents_to_vae(t->gpu, y.d, x.d, 0.3611f, 0.1159f, n));
    check_act_exact(t, name, &y);
done:
    f32_free(t, &x);
    ten_free(t, &y);
}

/* image inputs: uniform in [-1.3, 1.3] with clamp edges, .5 steps and NaN/Inf mixed in; every = 1
   replaces them with all 65536 bf16 bit patterns in turn (so every value the device can hold) */
static void image_input(T *t, Ten *x, size_t n, int every) {
    float *v = malloc(n * sizeof(float));
    static const float special[] = {-1.0f, 1.0f, 0.0f, -0.0f, 1.0f / 255.0f - 1.0f, 0.5f / 255.0f, NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < n; i++) {
        if (every) v[i] = zi_bf16_to_f32((uint16_t)(i & 0xffffu));
        else if (i % 17 == 0) v[i] = special[(i / 17) % (sizeof special / sizeof special[0])];
        else if (i % 5 == 0) v[i] = 2.0f * ((float)(int)urand(t, 0, 256) + 0.5f) / 255.0f - 1.0f; /* u8 .5 steps */
        else v[i] = urand(t, -1.3f, 1.3f);
    }
    ten_init(t, x, n, 0, v);
    free(v);
}

static void test_image_to_uint8(T *t, int B, int C, int H, int W, int bf16_rule, int every) {
    char name[96];
    snprintf(name, sizeof name, "image_to_uint8 %dx%dx%dx%d%s%s", B, C, H, W, bf16_rule ? " bf16 rule" : "",
             every ? " all bf16" : "");
    if (skip(name)) return;
    size_t n = (size_t)B * C * H * W, nb = (n + CANARY + 3) & ~(size_t)3, bad = 0;
    Ten x;
    uint8_t *ref = malloc(n), *g = malloc(nb), *poison = malloc(nb);
    uint8_t *d = NULL;
    image_input(t, &x, n, every);
    memset(poison, 0xA5, nb);
    if (t->gpu->ops->alloc(t->gpu, (void **)&d, nb) != ZI_OK ||
        t->gpu->ops->upload_f32(t->gpu, (float *)d, (const float *)poison, nb / 4) != ZI_OK) { /* raw bytes */
        fail_status(t, name);
        goto done;
    }
    t->cpu->ops->image_to_uint8(t->cpu, ref, x.r, B, C, H, W, bf16_rule); /* the device holds bf16(x) */
    GPU_OK(t, name, t->gpu->ops->image_to_uint8(t->gpu, d, x.d, B, C, H, W, bf16_rule));
    GPU_OK(t, name, t->gpu->ops->download_bytes(t->gpu, g, d, nb));
    int canary_ok = 1;
    for (size_t i = n; i < nb; i++) canary_ok &= g[i] == 0xA5;
    for (size_t i = 0; i < n; i++) bad += g[i] != ref[i];
    report_exact(t, name, bad, n, canary_ok, "the CPU op on bf16 inputs");
done:
    t->gpu->ops->free(t->gpu, d);
    ten_free(t, &x);
    free(ref);
    free(g);
    free(poison);
}

static void test_image_to_float_hwc(T *t, int B, int C, int H, int W) {
    char name[96];
    snprintf(name, sizeof name, "image_to_float_hwc %dx%dx%dx%d", B, C, H, W);
    if (skip(name)) return;
    size_t n = (size_t)B * C * H * W;
    Ten x;
    F32 y;
    image_input(t, &x, n, 0);
    f32_init(t, &y, n, NULL);
    t->cpu->ops->image_to_float_hwc(t->cpu, y.c, x.r, B, C, H, W);
    GPU_OK(t, name, t->gpu->ops->image_to_float_hwc(t->gpu, y.d, x.d, B, C, H, W));
    check_f32_exact(t, name, &y);
done:
    ten_free(t, &x);
    f32_free(t, &y);
}

/* a tile of x[B, R0, X0] at (r0, x0) pasted into y[B, R1, X1] at (r1, x1): both strides exercised */
static void test_copy2d(T *t, int B, int R, int X) {
    char name[96];
    snprintf(name, sizeof name, "copy2d B=%d R=%d X=%d", B, R, X);
    if (skip(name)) return;
    int R0 = R + 3, X0 = X + 5, R1 = R + 2, X1 = X + 7;
    size_t so = (size_t)2 * X0 + 1, dof = (size_t)X1 + 3;
    Ten x, y;
    ten_rand(t, &x, (size_t)B * R0 * X0, -2, 2, 0);
    ten_rand(t, &y, (size_t)B * R1 * X1, -2, 2, 0);  /* untouched elements keep their values */
    t->cpu->ops->copy2d(t->cpu, y.c + dof, x.c + so, B, R, X, (size_t)R1 * X1, X1, (size_t)R0 * X0, X0);
    t->cpu->ops->copy2d(t->cpu, y.r + dof, x.r + so, B, R, X, (size_t)R1 * X1, X1, (size_t)R0 * X0, X0);
    GPU_OK(t, name, t->gpu->ops->copy2d(t->gpu, zi_act(t->gpu, y.d, dof), zi_act(t->gpu, x.d, so), B, R, X,
                                        (size_t)R1 * X1, X1, (size_t)R0 * X0, X0));
    check(t, name, &y);
done:
    ten_free(t, &x);
    ten_free(t, &y);
}

/* rows (O = C planes of e x X) or columns (X = 1) of b blended with a, a with its own row stride */
static void test_blend_seam(T *t, int O, int e, int X, size_t b_ld, size_t a_ld) {
    char name[96];
    snprintf(name, sizeof name, "blend_seam O=%d e=%d X=%d", O, e, X);
    if (skip(name)) return;
    Ten a, b;
    ten_rand(t, &a, (size_t)O * a_ld, -2, 2, 0);
    ten_rand(t, &b, (size_t)O * b_ld, -2, 2, 0);
    t->cpu->ops->blend_seam(t->cpu, b.c, a.c, O, e, X, b_ld, a_ld);
    t->cpu->ops->blend_seam(t->cpu, b.r, a.r, O, e, X, b_ld, a_ld);
    GPU_OK(t, name, t->gpu->ops->blend_seam(t->gpu, b.d, a.d, O, e, X, b_ld, a_ld));
    check(t, name, &b);
done:
    ten_free(t, &a);
    ten_free(t, &b);
}

int main(int argc, char **argv) {
    T t = {.rng = 0x9E3779B97F4A7C15ULL};
    g_filter = argc > 1 ? argv[1] : NULL;
    setenv("ZIMAGE_ATTN_SCRATCH_MB", "1", 0); /* small score chunks, so the HD > 128 path really chunks */
    setenv("ZIMAGE_CONV_SCRATCH_MB", "1", 0); /* conv inputs over 1 MiB packed in row bands              */
    setenv("ZIMAGE_FFN_SCRATCH_MB", "1", 0);  /* matmul_swiglu's unfused path in bands of rows            */
    if (zi_cuda_device_count() <= 0) {
        printf("SKIP: no CUDA device (%s)\n", zi_last_error());
        return 77;
    }
    if (zi_backend_get(-1, &t.cpu) != ZI_OK || zi_backend_get(0, &t.gpu) != ZI_OK) {
        printf("FAIL: backend creation: %s\n", zi_last_error());
        return 1;
    }
    printf("testing %s against %s\n", t.gpu->name, t.cpu->name);

    test_alloc_zero(&t, 1001);
    test_upload_weight(&t, ZI_DT_F32, 1000);
    test_upload_weight(&t, ZI_DT_BF16, 999);
    test_upload_weight(&t, ZI_DT_F16, 1003);
    test_upload_weight(&t, ZI_DT_F32, (size_t)9 << 20); /* several staging chunks */
    test_upload_weight(&t, ZI_DT_BF16, (size_t)17 << 20);

    test_matmul(&t, 1, 64, 64, 0, 0);
    test_matmul(&t, 1, 256, 15360, 1, 0); /* the gemv path: DiT adaLN */
    test_matmul(&t, 3, 1024, 77, 1, 0);
    test_matmul(&t, 4, 2568, 40, 0, 0);
    test_matmul(&t, 2, 64, 33, 1, 1);    /* unaligned: cuBLASLt or the fallback */
    test_matmul(&t, 7, 33, 17, 1, 0);
    test_matmul(&t, 130, 256, 96, 1, 0);
    test_matmul(&t, 257, 384, 200, 0, 0);
    test_matmul(&t, 64, 3840, 512, 1, 0);
    test_matmul(&t, 33, 128, 64, 1, 1);
    test_matmul(&t, 5, 7, 3, 1, 1);

    /* fused sm_90a kernel on Hopper (ZIMAGE_GEMM_SM90=0: all through matmul + swiglu_pair) */
    test_matmul_swiglu(&t, 32, 64, 128, 0);
    test_matmul_swiglu(&t, 1, 128, 256, 0);
    test_matmul_swiglu(&t, 130, 256, 384, 0);       /* row tail */
    test_matmul_swiglu(&t, 300, 72, 1024, 0);       /* k tail (K % 64 != 0) */
    test_matmul_swiglu(&t, 2000, 256, 1280, 0);     /* 160 tiles: CTAs take several */
    test_matmul_swiglu(&t, 4128, 128, 4096, 0);     /* the DiT's row count, 8 tiles per CTA */
    test_matmul_swiglu(&t, 257, 3840, 10240, 0);    /* the DiT's K and F */
    /* always the unfused path: F % 128, K % 8, unaligned (and several row bands of the 1 MiB scratch) */
    test_matmul_swiglu(&t, 33, 128, 100, 0);
    test_matmul_swiglu(&t, 20, 60, 128, 0);
    test_matmul_swiglu(&t, 300, 256, 1024, 1);

    test_attention(&t, 1, 2, 1, 64, 0, 0);
    test_attention(&t, 1, 2, 2, 128, 1, 0);
    test_attention(&t, 77, 4, 2, 128, 0, 0);
    test_attention(&t, 130, 3, 3, 96, 1, 0);
    test_attention(&t, 200, 2, 1, 32, 1, 0);
    test_attention(&t, 65, 2, 2, 64, 0, 0);
    test_attention(&t, 257, 4, 1, 128, 1, 0);
    test_attention(&t, 300, 3, 3, 128, 0, 0);
    test_attention(&t, 70, 2, 1, 128, 0, 1);
    test_attention(&t, 33, 2, 1, 80, 0, 0);
    test_attention(&t, 40, 2, 2, 7, 1, 0);
    test_attention(&t, 300, 1, 1, 512, 0, 0);    /* HD > 128: chunked GEMM path, one chunk */
    test_attention(&t, 1, 1, 1, 512, 0, 0);
    test_attention(&t, 2500, 1, 1, 512, 0, 0);   /* 40 chunks of 64 rows (1 MiB scratch) */
    test_attention(&t, 700, 2, 1, 256, 1, 0);    /* causal GQA over 3 chunks */
    test_attention(&t, 100, 1, 1, 512, 0, 1);
    test_attention(&t, 8200, 1, 1, 132, 0, 0);   /* rows of 8200 scores: the register softmax's 8-float4 rows */
    test_attention_merged(&t, 4128, 3, 3, 128, 0); /* the DiT: q|k|v rows of one projection (sm_90a: 192-row tiles) */
    test_attention_merged(&t, 300, 4, 2, 128, 1);  /* GQA, causal (sm_90a: 128-row tiles) */
    test_attention_merged(&t, 77, 2, 2, 64, 0);    /* the mma.sync kernel */
    test_attention_merged(&t, 50, 2, 1, 40, 0);    /* the CUDA-core kernel */
    test_attention_merged(&t, 300, 1, 1, 256, 0);  /* HD > 128: the GEMM path */
    /* HD = 128, aligned, non-causal: the sm_90a kernel on Hopper (key and query tails: S % 128 != 0) */
    test_attention_amp(&t, 1, 2, 2, 128, 0, 0, 1.7f);
    test_attention_amp(&t, 77, 3, 1, 128, 0, 0, 1.7f);
    test_attention_amp(&t, 128, 2, 2, 128, 0, 0, 1.7f);
    test_attention_amp(&t, 300, 4, 2, 128, 0, 0, 1.7f);
    test_attention_amp(&t, 1000, 2, 1, 128, 0, 0, 1.7f);
    test_attention_amp(&t, 4128, 2, 2, 128, 0, 0, 1.7f); /* the DiT's sequence length */
    test_attention_amp(&t, 2100, 4, 2, 128, 0, 0, 1.7f); /* 68 tiles: on 132 SMs no half-tile tail */
    test_attention_amp(&t, 4096, 3, 3, 128, 0, 0, 1.7f); /* refiner length: BM = 192's last tile has 64 rows */
    test_attention_amp(&t, 385, 2, 1, 128, 0, 0, 1.7f);  /* 3 row tiles of 192, the last one row */
    test_attention_amp(&t, 1000, 2, 2, 128, 0, 0, 6.8f); /* 4x: scores of std ~15, the max moves a lot */
    test_attention_amp(&t, 300, 3, 3, 128, 0, 0, 6.8f);
    test_attention_amp(&t, 1000, 2, 1, 128, 1, 0, 1.7f); /* causal, diagonal tiles masked */
    test_attention_amp(&t, 129, 2, 2, 128, 1, 0, 6.8f);

    test_rmsnorm(&t, 1, 128, 1, 0);
    test_rmsnorm(&t, 5, 3840, 1, 0);
    test_rmsnorm(&t, 7, 33, 1, 0);
    test_rmsnorm(&t, 123, 128, 0, 0);
    test_rmsnorm(&t, 9, 256, 1, 1);
    test_layernorm(&t, 3, 3840);
    test_layernorm(&t, 5, 33);
    test_layernorm(&t, 1, 1);
    test_groupnorm(&t, 1, 64, 4096, 32, 1, 1);
    test_groupnorm(&t, 2, 6, 17, 3, 1, 0);
    test_groupnorm(&t, 1, 128, 257, 32, 0, 1);
    test_groupnorm(&t, 1, 32, 70000, 8, 1, 0);

    for (int op = EW_ADD; op <= EW_SWIGLU; op++) {
        test_elementwise(&t, op, 1, 0);
        test_elementwise(&t, op, 4099, 0);
        test_elementwise(&t, op, 4096, 1);
    }
    test_mul_rows(&t, 3, 5, 0);
    test_mul_rows(&t, 17, 64, 0);
    test_mul_rows(&t, 17, 64, 1);
    test_rope(&t, 5, 3, 64, 1);
    test_rope(&t, 5, 3, 64, 0);
    test_rope(&t, 1, 2, 128, 1);
    test_rope(&t, 7, 2, 6, 0);
    test_rmsnorm_scale(&t, 5, 3840, 1, 0);
    test_rmsnorm_scale(&t, 7, 33, 1, 0);
    test_rmsnorm_scale(&t, 3, 64, 0, 1);
    test_rmsnorm_add_gated(&t, 5, 3840, 1);
    test_rmsnorm_add_gated(&t, 3, 7, 1);
    test_rmsnorm_add_gated(&t, 4, 64, 0);
    test_rmsnorm_add_gated_scale(&t, 5, 3840, 1);
    test_rmsnorm_add_gated_scale(&t, 3, 7, 1);
    test_rmsnorm_add_gated_scale(&t, 4, 64, 0);
    test_rmsnorm_add_gated_scale(&t, 2, 4104, 1); /* wider than the register-resident kernel takes */
    test_adaln_gates(&t, 3, 3840);
    test_adaln_gates(&t, 2, 5);
    test_swiglu_pair(&t, 5, 10240, 0);
    test_swiglu_pair(&t, 3, 7, 0);
    test_swiglu_pair(&t, 4, 64, 1);
    test_qkv_norm_rope(&t, 37, 30, 30, 128, 1, 1);  /* the DiT's layout (HD = 128 fast path) */
    test_qkv_norm_rope(&t, 9, 32, 8, 128, 1, 0);    /* Qwen3's layout: GQA, rotate-half (fast path) */
    test_qkv_norm_rope(&t, 4, 3, 3, 128, 0, 1);     /* fast path without norm */
    test_qkv_norm_rope(&t, 5, 4, 2, 64, 1, 0);      /* GQA, rotate-half */
    test_qkv_norm_rope(&t, 3, 2, 1, 6, 0, 1);       /* tiny head, no norm */
    test_qkv_norm_rope(&t, 2, 1, 1, 256, 1, 0);     /* widest head the fused op takes */

    test_copy(&t, 1, 0);
    test_copy(&t, 1001, 0);
    test_copy(&t, 100, 1);
    test_fill_rows(&t, 5, 33);
    test_transpose(&t, 33, 65);
    test_transpose(&t, 1, 7);
    test_patch(&t, 16, 1, 6, 10, 1, 2, 2);
    test_patch(&t, 3, 2, 4, 4, 2, 2, 2);

    /* im2col + cuBLASLt: Ci % 8 != 0, plain 1x1 (auto), or forced */
    test_conv2d(&t, 1, 3, 17, 19, 8, 3, 1, 1, 1, NULL, 0);
    test_conv2d(&t, 2, 16, 8, 8, 32, 1, 0, 1, 1, NULL, 0);
    test_conv2d(&t, 1, 33, 7, 5, 4, 3, 1, 0, 1, NULL, 0);
    test_conv2d(&t, 1, 4, 5, 5, 6, 3, 0, 1, 1, NULL, 0);
    test_conv2d(&t, 2, 64, 64, 64, 64, 3, 1, 1, 1, "im2col", 0);
    /* implicit GEMM (kernels/conv.cu) */
    test_conv2d(&t, 2, 64, 64, 64, 64, 3, 1, 1, 1, NULL, 0);
    test_conv2d(&t, 1, 16, 16, 16, 128, 3, 1, 1, 1, NULL, 0);     /* conv_in: Ci below one k-block      */
    test_conv2d(&t, 2, 128, 7, 13, 128, 3, 1, 1, 1, NULL, 0);     /* tiles cross images, scalar stores  */
    test_conv2d(&t, 1, 256, 1, 1, 512, 3, 1, 1, 1, NULL, 0);      /* 1x1 image: only the centre tap     */
    test_conv2d(&t, 1, 512, 9, 10, 256, 3, 1, 1, 1, NULL, 0);
    test_conv2d(&t, 2, 128, 13, 7, 3, 3, 1, 1, 1, NULL, 0);       /* conv_out: Co = 3                   */
    test_conv2d(&t, 3, 128, 8, 8, 20, 3, 1, 0, 1, NULL, 0);       /* 16-byte stores, partial N tile     */
    test_conv2d(&t, 1, 16, 5, 6, 24, 3, 0, 1, 1, NULL, 0);        /* no padding                         */
    test_conv2d(&t, 2, 256, 7, 13, 128, 1, 0, 1, 1, "igemm", 0);  /* 1x1 through the kernel             */
    test_conv2d(&t, 2, 256, 7, 13, 128, 1, 0, 1, 1, NULL, 0);     /* 1x1 auto: cuBLASLt                 */
    test_conv2d(&t, 1, 128, 12, 12, 128, 3, 1, 1, 1000, NULL, 0); /* large magnitude                    */
    test_conv2d(&t, 1, 128, 64, 48, 256, 3, 1, 1, 1, NULL, 0);    /* many M tiles                       */
    test_conv2d(&t, 1, 256, 60, 40, 64, 3, 1, 1, 1, NULL, 0);     /* 2 row bands (1 MiB packing cap)    */
    test_conv2d(&t, 1, 256, 60, 40, 32, 3, 0, 1, 1, NULL, 0);     /* row bands without padding          */
    test_conv2d(&t, 1, 256, 5, 2100, 16, 3, 1, 1, 1, NULL, 0);    /* one output row per band            */
    static const int tiles[] = {1, 4, 5, 6, 7, 8, 9, 10, 11, 12}; /* every tile configuration (9-12: wgmma,
                                                                     sm_90a; elsewhere they fall back)   */
    for (size_t i = 0; i < sizeof tiles / sizeof tiles[0]; i++) {
        test_conv2d(&t, 2, 64, 20, 24, 256, 3, 1, 1, 1, NULL, tiles[i]);
        test_conv2d(&t, 1, 40, 9, 11, 200, 3, 1, 1, 1, NULL, tiles[i]);
    }
    static const int wgmma_tiles[] = {9, 10, 11, 12};
    for (size_t i = 0; i < sizeof wgmma_tiles / sizeof wgmma_tiles[0]; i++) {
        int tl = wgmma_tiles[i];
        test_conv2d(&t, 2, 128, 7, 13, 320, 3, 1, 1, 1, NULL, tl);  /* tiles cross images, partial N tile  */
        test_conv2d(&t, 1, 96, 13, 7, 72, 3, 1, 0, 1, NULL, tl);    /* Ci % 64 != 0, scalar stores         */
        test_conv2d(&t, 3, 64, 8, 8, 136, 3, 0, 1, 1, NULL, tl);    /* no padding, 16-byte stores          */
        test_conv2d(&t, 1, 512, 9, 10, 512, 3, 1, 1, 1, NULL, tl);  /* two N tiles of 256                  */
        test_conv2d(&t, 1, 128, 12, 12, 128, 3, 1, 1, 1000, NULL, tl); /* large magnitude                  */
        test_conv2d(&t, 2, 256, 7, 13, 128, 1, 0, 1, 1, "igemm", tl); /* 1x1 through the kernel            */
    }
    test_conv2d(&t, 1, 16, 6, 5, 2, 3, 0, 0, 1, NULL, 0);         /* Co = 2, no padding                 */
    test_upsample_conv2d(&t, 1, 24, 5, 4, 3, 3, 1, NULL);         /* Co = 3, upsampled                  */
    test_groupnorm_conv2d(&t, 2, 64, 16, 16, 64, 3, 1, 32, 1, -1, 1, 0, NULL);    /* vector packing        */
    test_groupnorm_conv2d(&t, 1, 32, 7, 13, 16, 3, 1, 8, 0, -2, 2, 0, NULL);      /* scalar packing        */
    test_groupnorm_conv2d(&t, 1, 128, 96, 96, 32, 3, 1, 32, 1, -1, 1, 0, NULL);   /* 5 chunks per group, bands */
    test_groupnorm_conv2d(&t, 1, 128, 96, 96, 64, 3, 1, 32, 1, -1, 1, 2, NULL);   /* bands, residual in place */
    test_groupnorm_conv2d(&t, 1, 128, 16, 16, 3, 3, 1, 32, 1, 9, 11, 0, NULL);    /* mean >> std, Co = 3   */
    test_groupnorm_conv2d(&t, 2, 128, 7, 13, 3, 3, 1, 32, 1, -1, 1, 1, NULL);     /* Co = 3 tile + res     */
    /* Co <= 4, 3x3 (conv_out): the direct kernel in auto mode, the packing path with "igemm" */
    test_groupnorm_conv2d(&t, 1, 128, 16, 16, 3, 3, 1, 32, 1, 9, 11, 0, "igemm"); /* mean >> std, Co = 3   */
    test_groupnorm_conv2d(&t, 2, 128, 7, 13, 3, 3, 1, 32, 1, -1, 1, 1, "igemm");  /* Co = 3 tile + res     */
    test_groupnorm_conv2d(&t, 2, 128, 70, 130, 3, 3, 1, 32, 1, -1, 1, 1, NULL);   /* direct: edge tiles    */
    test_groupnorm_conv2d(&t, 1, 40, 33, 65, 4, 3, 1, 8, 0, -2, 2, 2, NULL);      /* partial chunk, in place res */
    test_groupnorm_conv2d(&t, 1, 256, 18, 66, 2, 3, 1, 32, 1, -3, 5, 0, NULL);    /* 16 chunks             */
    test_conv2d(&t, 1, 7, 20, 70, 1, 3, 1, 1, 1, NULL, 0);        /* direct: odd Ci, Co = 1             */
    test_conv2d(&t, 1, 64, 17, 17, 2, 3, 1, 1, 1000, NULL, 0);    /* direct: large magnitude            */
    test_conv2d(&t, 2, 128, 13, 7, 3, 3, 1, 1, 1, "igemm", 0);    /* conv_out shape through t6          */
    test_groupnorm_conv2d(&t, 2, 64, 16, 16, 64, 3, 1, 32, 1, -1, 1, 0, "im2col");
    test_groupnorm_conv2d(&t, 2, 256, 100, 100, 32, 3, 1, 32, 1, -1, 1, 0, NULL); /* 640 packing tiles: blocks loop */
    test_groupnorm_conv2d(&t, 1, 6, 5, 7, 8, 3, 1, 3, 1, -1, 1, 0, NULL);         /* Ci % 8: im2col        */
    test_groupnorm_conv2d(&t, 2, 64, 16, 16, 64, 3, 1, 32, 1, -1, 1, 1, NULL);    /* residual, 16-byte     */
    test_groupnorm_conv2d(&t, 2, 64, 16, 16, 64, 3, 1, 32, 1, -1, 1, 2, NULL);    /* residual in place     */
    test_groupnorm_conv2d(&t, 1, 32, 7, 13, 48, 3, 1, 8, 1, -1, 1, 2, NULL);      /* in place, scalar      */
    test_groupnorm_conv2d(&t, 2, 64, 16, 16, 64, 3, 1, 32, 1, -1, 1, 2, "im2col");
    test_groupnorm_conv2d(&t, 1, 6, 5, 7, 8, 3, 1, 3, 1, -1, 1, 2, NULL);         /* Ci % 8, in place      */
    test_upsample_conv2d(&t, 2, 64, 5, 7, 32, 3, 1, NULL);
    test_upsample_conv2d(&t, 1, 16, 1, 1, 8, 3, 1, NULL);
    test_upsample_conv2d(&t, 1, 8, 3, 3, 16, 3, 0, NULL);
    test_upsample_conv2d(&t, 1, 128, 16, 16, 128, 3, 1, NULL);
    /* the wgmma tiles' auto choice (sm_90a): Co >= 256 (tile 9) with the fused pre steps */
    test_upsample_conv2d(&t, 2, 256, 7, 13, 256, 3, 1, NULL);
    test_groupnorm_conv2d(&t, 1, 256, 7, 13, 256, 3, 1, 32, 1, -1, 1, 1, NULL);
    test_groupnorm_conv2d(&t, 2, 128, 7, 13, 512, 3, 1, 32, 1, -1, 1, 2, NULL);
    test_upsample_conv2d(&t, 1, 3, 4, 5, 4, 3, 1, NULL);                       /* Ci % 8: im2col        */
    test_upsample_conv2d(&t, 2, 64, 5, 7, 32, 3, 1, "im2col");
    test_copy2d(&t, 3, 17, 23);
    test_copy2d(&t, 1, 1, 1);
    test_blend_seam(&t, 3, 8, 40, 32 * 40, 10 * 40);          /* blend_v: 8 of 32 rows, a keeps 10 rows */
    test_blend_seam(&t, 3 * 32, 8, 1, 40, 11);                 /* blend_h: 8 of 40 columns, a keeps 11    */
    test_blend_seam(&t, 3, 256, 1024, 1024 * 1024, 256 * 1024); /* a real 1024-px tile seam                */

    test_to_act(&t, 1);
    test_to_act(&t, 4099);
    test_to_f32(&t, 1);
    test_to_f32(&t, 4099);
    for (int op = F32_CFG; op <= F32_EULER; op++) {
        test_f32_map(&t, op, 1);
        test_f32_map(&t, op, 16 * 64 * 64 + 3);
    }
    test_sumsq(&t, 1);
    test_sumsq(&t, 1000);
    test_sumsq(&t, 16 * 128 * 128);           /* one 1024^2 latent             */
    test_sumsq(&t, (size_t)3 << 20);          /* more than 256 blocks x 256     */
    test_latents_to_vae(&t, 1);
    test_latents_to_vae(&t, 2 * 16 * 12 * 10 + 1);
    test_image_to_uint8(&t, 1, 3, 1, 1, 0, 0);
    test_image_to_uint8(&t, 2, 3, 17, 23, 0, 0);
    test_image_to_uint8(&t, 2, 3, 17, 23, 1, 0);
    test_image_to_uint8(&t, 1, 3, 128, 171, 0, 1);
    test_image_to_uint8(&t, 1, 3, 128, 171, 1, 1);
    test_image_to_uint8(&t, 1, 4, 5, 7, 1, 0);
    test_image_to_float_hwc(&t, 1, 3, 1, 1);
    test_image_to_float_hwc(&t, 2, 3, 17, 23);

    if (t.gpu->ops->synchronize(t.gpu) != ZI_OK) fail_status(&t, "final synchronize");
    printf("%d passed, %d failed\n", t.pass, t.fail);
    return t.fail ? 1 : 0;
}
