/*
 * ops_cpu.c - the CPU backend: plain C, fp32 everywhere, OpenMP over rows where it pays.
 * This is the reference the CUDA backend is tested against, so clarity wins over speed;
 * only the matmul and conv loops are arranged for the compiler to vectorise.
 */
#include "ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define F(p) ((float *)(p))
#define CF(p) ((const float *)(p))

static zi_status cpu_alloc(ZiBackend *be, void **ptr, size_t bytes) {
    (void)be;
    *ptr = calloc(1, bytes ? bytes : 1);
    if (!*ptr) return zi_fail(ZI_ERR_NOMEM, "out of host memory allocating %zu bytes", bytes);
    return ZI_OK;
}

static void cpu_free(ZiBackend *be, void *ptr) { (void)be; free(ptr); }

static zi_status cpu_upload(ZiBackend *be, void *dst, const float *src, size_t n) {
    (void)be;
    memcpy(dst, src, n * sizeof(float));
    return ZI_OK;
}

static zi_status cpu_upload_weight(ZiBackend *be, void *dst, const void *src, ZiDtype dt, size_t n) {
    (void)be;
    const unsigned char *s = src;
    float *d = dst;
    switch (dt) {
    case ZI_DT_F32: memcpy(d, s, n * 4); return ZI_OK;
    case ZI_DT_BF16:
#pragma omp parallel for if (n > 65536)
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            d[i] = zi_bf16_to_f32(h);
        }
        return ZI_OK;
    case ZI_DT_F16:
#pragma omp parallel for if (n > 65536)
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            d[i] = zi_f16_to_f32(h);
        }
        return ZI_OK;
    default: return zi_fail(ZI_ERR_FORMAT, "cannot load weights of dtype %s", st_dtype_name(dt));
    }
}

static zi_status cpu_upload_f32(ZiBackend *be, float *dst, const float *src, size_t n) {
    (void)be;
    memcpy(dst, src, n * sizeof(float));
    return ZI_OK;
}

static zi_status cpu_download(ZiBackend *be, float *dst, const void *src, size_t n) {
    (void)be;
    memcpy(dst, src, n * sizeof(float));
    return ZI_OK;
}

static zi_status cpu_synchronize(ZiBackend *be) { (void)be; return ZI_OK; }

/* dot product with 8 independent partial sums so the loop vectorises without -ffast-math */
static inline float dot_f32(const float *a, const float *b, int K) {
    float acc[8] = {0};
    int k = 0;
    for (; k + 8 <= K; k += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[k + j] * b[k + j];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; k < K; k++) s += a[k] * b[k];
    return s;
}

/* out[M,N] = in[M,K] @ w[N,K]^T + bias[N] */
static zi_status cpu_matmul(ZiBackend *be, void *out, const void *in, const void *w, const void *bias, int M, int K,
                            int N) {
    (void)be;
    const float *x = in, *W = w, *b = bias;
    float *y = out;
    /* tile rows so a block of weight rows stays in cache while several input rows pass over it */
    enum { TM = 8, TN = 64 };
#pragma omp parallel for collapse(2) schedule(static) if ((long)M * N * K > 1 << 18)
    for (int m0 = 0; m0 < M; m0 += TM)
        for (int n0 = 0; n0 < N; n0 += TN)
            for (int m = m0; m < m0 + TM && m < M; m++)
                for (int n = n0; n < n0 + TN && n < N; n++)
                    y[(size_t)m * N + n] = dot_f32(x + (size_t)m * K, W + (size_t)n * K, K) + (b ? b[n] : 0.0f);
    return ZI_OK;
}

/* out[S,NH*HD]: for each head, softmax(q k^T * scale) v with a running max (exact softmax) */
static zi_status cpu_attention(ZiBackend *be, void *out, const void *q, const void *k, const void *v, int ld, int S,
                               int NH, int NKV, int HD, int causal, float scale) {
    (void)be;
    if (NH % NKV) return zi_fail(ZI_ERR_ARG, "attention: %d query heads not a multiple of %d kv heads", NH, NKV);
    if (ld && (ld < NH * HD || ld < NKV * HD)) return zi_fail(ZI_ERR_ARG, "attention: row stride %d below a row", ld);
    const float *Q = q, *Kp = k, *V = v;
    float *O = out;
    int group = NH / NKV;
    size_t os = (size_t)NH * HD, qs = ld ? (size_t)ld : os, ks = ld ? (size_t)ld : (size_t)NKV * HD;
    zi_status st = ZI_OK;
#pragma omp parallel if ((long)S * S * NH * HD > 1L << 18)
    {
        float *p = malloc((size_t)S * sizeof(float));
        if (!p) {
#pragma omp critical
            st = zi_fail(ZI_ERR_NOMEM, "attention: out of host memory");
        } else {
#pragma omp for collapse(2) schedule(static)
            for (int h = 0; h < NH; h++)
                for (int i = 0; i < S; i++) {
                    const float *qi = Q + (size_t)i * qs + (size_t)h * HD;
                    int kvh = h / group, nk = causal ? i + 1 : S;
                    float mx = -INFINITY;
                    for (int j = 0; j < nk; j++) {
                        p[j] = dot_f32(qi, Kp + (size_t)j * ks + (size_t)kvh * HD, HD) * scale;
                        if (p[j] > mx) mx = p[j];
                    }
                    float sum = 0.0f;
                    for (int j = 0; j < nk; j++) { p[j] = expf(p[j] - mx); sum += p[j]; }
                    float *oi = O + (size_t)i * os + (size_t)h * HD;
                    for (int d = 0; d < HD; d++) oi[d] = 0.0f;
                    for (int j = 0; j < nk; j++) {
                        const float *vj = V + (size_t)j * ks + (size_t)kvh * HD;
                        float pj = p[j] / sum;
                        for (int d = 0; d < HD; d++) oi[d] += pj * vj[d];
                    }
                }
            free(p);
        }
    }
    return st;
}

/* 1 / sqrt(mean(x^2) + eps) of one row, the sum in double */
static float rms_inv(const float *x, int D, float eps) {
    double ss = 0.0;
    for (int d = 0; d < D; d++) ss += (double)x[d] * x[d];
    return 1.0f / sqrtf((float)(ss / D) + eps);
}

static zi_status cpu_rmsnorm(ZiBackend *be, void *out, const void *in, const void *w, int M, int D, float eps) {
    (void)be;
#pragma omp parallel for if ((long)M * D > 1 << 16)
    for (int m = 0; m < M; m++) {
        const float *x = CF(in) + (size_t)m * D;
        float *y = F(out) + (size_t)m * D;
        float r = rms_inv(x, D, eps);
        for (int d = 0; d < D; d++) y[d] = x[d] * r * (w ? CF(w)[d] : 1.0f);
    }
    return ZI_OK;
}

static zi_status cpu_layernorm(ZiBackend *be, void *out, const void *in, int M, int D, float eps) {
    (void)be;
#pragma omp parallel for if ((long)M * D > 1 << 16)
    for (int m = 0; m < M; m++) {
        const float *x = CF(in) + (size_t)m * D;
        float *y = F(out) + (size_t)m * D;
        double mean = 0.0, var = 0.0;
        for (int d = 0; d < D; d++) mean += x[d];
        mean /= D;
        for (int d = 0; d < D; d++) var += (x[d] - mean) * (x[d] - mean);
        var /= D;
        float r = 1.0f / sqrtf((float)var + eps);
        for (int d = 0; d < D; d++) y[d] = (float)(x[d] - mean) * r;
    }
    return ZI_OK;
}

static zi_status cpu_groupnorm(ZiBackend *be, void *out, const void *in, const void *gamma, const void *beta, int B,
                               int C, int HW, int G, float eps, int silu) {
    (void)be;
    if (C % G) return zi_fail(ZI_ERR_ARG, "groupnorm: %d channels not divisible by %d groups", C, G);
    int CG = C / G;
#pragma omp parallel for collapse(2) if ((long)B * C * HW > 1L << 16)
    for (int b = 0; b < B; b++)
        for (int g = 0; g < G; g++) {
            const float *x = CF(in) + ((size_t)b * C + (size_t)g * CG) * HW;
            float *y = F(out) + ((size_t)b * C + (size_t)g * CG) * HW;
            size_t n = (size_t)CG * HW;
            double mean = 0.0, var = 0.0;
            for (size_t i = 0; i < n; i++) mean += x[i];
            mean /= (double)n;
            for (size_t i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
            var /= (double)n;
            float r = 1.0f / sqrtf((float)var + eps);
            for (int c = 0; c < CG; c++) {
                float ga = gamma ? CF(gamma)[g * CG + c] : 1.0f, be_ = beta ? CF(beta)[g * CG + c] : 0.0f;
                for (int i = 0; i < HW; i++) {
                    float t = (float)(x[(size_t)c * HW + i] - mean) * r * ga + be_;
                    y[(size_t)c * HW + i] = silu ? t / (1.0f + expf(-t)) : t;
                }
            }
        }
    return ZI_OK;
}

static zi_status cpu_add(ZiBackend *be, void *out, const void *a, const void *b, size_t n) {
    (void)be;
    for (size_t i = 0; i < n; i++) F(out)[i] = CF(a)[i] + CF(b)[i];
    return ZI_OK;
}

static zi_status cpu_scale(ZiBackend *be, void *out, const void *in, float s, size_t n) {
    (void)be;
    for (size_t i = 0; i < n; i++) F(out)[i] = CF(in)[i] * s;
    return ZI_OK;
}

static zi_status cpu_one_plus(ZiBackend *be, void *out, const void *in, size_t n) {
    (void)be;
    for (size_t i = 0; i < n; i++) F(out)[i] = 1.0f + CF(in)[i];
    return ZI_OK;
}

static zi_status cpu_tanh(ZiBackend *be, void *out, const void *in, size_t n) {
    (void)be;
    for (size_t i = 0; i < n; i++) F(out)[i] = tanhf(CF(in)[i]);
    return ZI_OK;
}

static zi_status cpu_silu(ZiBackend *be, void *out, const void *in, size_t n) {
    (void)be;
    for (size_t i = 0; i < n; i++) { float x = CF(in)[i]; F(out)[i] = x / (1.0f + expf(-x)); }
    return ZI_OK;
}

static zi_status cpu_swiglu(ZiBackend *be, void *out, const void *gate, const void *up, size_t n) {
    (void)be;
#pragma omp parallel for if (n > 1 << 16)
    for (size_t i = 0; i < n; i++) { float g = CF(gate)[i]; F(out)[i] = g / (1.0f + expf(-g)) * CF(up)[i]; }
    return ZI_OK;
}

static zi_status cpu_mul_rows(ZiBackend *be, void *out, const void *in, const void *s, int M, int D) {
    (void)be;
    for (int m = 0; m < M; m++)
        for (int d = 0; d < D; d++) F(out)[(size_t)m * D + d] = CF(in)[(size_t)m * D + d] * CF(s)[d];
    return ZI_OK;
}

static zi_status cpu_rope(ZiBackend *be, void *x, const float *cs, int S, int NH, int HD, int interleaved) {
    (void)be;
    int half = HD / 2;
    for (int s = 0; s < S; s++)
        for (int h = 0; h < NH; h++) {
            float *v = F(x) + ((size_t)s * NH + h) * HD;
            const float *t = cs + (size_t)s * half * 2;
            for (int j = 0; j < half; j++) {
                int i0 = interleaved ? 2 * j : j, i1 = interleaved ? 2 * j + 1 : j + half;
                float a = v[i0], b = v[i1], c = t[2 * j], sn = t[2 * j + 1];
                v[i0] = a * c - b * sn;
                v[i1] = a * sn + b * c;
            }
        }
    return ZI_OK;
}

/* ---- fused DiT ops: the same arithmetic as the unfused reference ops in sequence (equal results) ---- */

static zi_status cpu_rmsnorm_scale(ZiBackend *be, void *out, const void *in, const void *w, const void *s, int M, int D,
                                   float eps) {
    zi_status st = cpu_rmsnorm(be, out, in, w, M, D, eps);
    if (st == ZI_OK && s) st = cpu_mul_rows(be, out, out, s, M, D);
    return st;
}

static zi_status cpu_rmsnorm_add_gated(ZiBackend *be, void *x, const void *y, const void *w, const void *g, int M, int D,
                                       float eps) {
    (void)be;
#pragma omp parallel for if ((long)M * D > 1 << 16)
    for (int m = 0; m < M; m++) {
        const float *yr = CF(y) + (size_t)m * D;
        float *xr = F(x) + (size_t)m * D;
        float r = rms_inv(yr, D, eps);
        for (int d = 0; d < D; d++) {
            float t = yr[d] * r * (w ? CF(w)[d] : 1.0f); /* cpu_rmsnorm's expression, then the gated add */
            xr[d] += (g ? CF(g)[d] : 1.0f) * t;
        }
    }
    return ZI_OK;
}

static zi_status cpu_rmsnorm_add_gated_scale(ZiBackend *be, void *x, void *h, const void *y, const void *w,
                                             const void *g, const void *wn, const void *s, int M, int D, float eps) {
    zi_status st = cpu_rmsnorm_add_gated(be, x, y, w, g, M, D, eps);
    if (st == ZI_OK) st = cpu_rmsnorm_scale(be, h, x, wn, s, M, D, eps);
    return st;
}

static zi_status cpu_adaln_gates(ZiBackend *be, void *out, const void *mod, int R, int D) {
    zi_status st = ZI_OK;
    for (int r = 0; r < R && st == ZI_OK; r++) {
        size_t o = (size_t)r * 4 * D;
        st = cpu_one_plus(be, F(out) + o, CF(mod) + o, (size_t)D);                          /* scale_msa */
        if (st == ZI_OK) st = cpu_tanh(be, F(out) + o + D, CF(mod) + o + D, (size_t)D);            /* gate_msa  */
        if (st == ZI_OK) st = cpu_one_plus(be, F(out) + o + 2 * D, CF(mod) + o + 2 * D, (size_t)D); /* scale_mlp */
        if (st == ZI_OK) st = cpu_tanh(be, F(out) + o + 3 * D, CF(mod) + o + 3 * D, (size_t)D);    /* gate_mlp  */
    }
    return st;
}

static zi_status cpu_swiglu_pair(ZiBackend *be, void *out, const void *gu, int M, int F) {
    (void)be;
#pragma omp parallel for if ((long)M * F > 1 << 16)
    for (int m = 0; m < M; m++) {
        const float *g = CF(gu) + (size_t)m * 2 * F, *u = g + F;
        float *o = F(out) + (size_t)m * F;
        for (int f = 0; f < F; f++) o[f] = g[f] / (1.0f + expf(-g[f])) * u[f];
    }
    return ZI_OK;
}

/* matmul into [rows, 2F] scratch, then swiglu_pair, over bands of rows (a row's result does not depend on
   the others, so this is the two ops' arithmetic exactly) */
static zi_status cpu_matmul_swiglu(ZiBackend *be, void *out, const void *in, const void *w, int M, int K, int F) {
    zi_status st = ZI_OK;
    if (M <= 0 || F <= 0) return ZI_OK;
    size_t row_bytes = (size_t)2 * F * sizeof(float);
    int band = (int)(((size_t)16 << 20) / row_bytes);
    if (band < 8) band = 8;
    if (band > M) band = M;
    float *gu = NULL;
    ZI_MALLOC(gu, (size_t)band * row_bytes);
    for (int m0 = 0; m0 < M && st == ZI_OK; m0 += band) {
        int rows = M - m0 < band ? M - m0 : band;
        st = cpu_matmul(be, gu, CF(in) + (size_t)m0 * K, w, NULL, rows, K, 2 * F);      /* gu [rows, 2F] */
        if (st == ZI_OK) st = cpu_swiglu_pair(be, F(out) + (size_t)m0 * F, gu, rows, F); /* out [rows, F] */
    }
fail:
    free(gu);
    return st;
}

static zi_status cpu_qkv_norm_rope(ZiBackend *be, void *qkv, const void *wq, const void *wk, const float *cs, int S,
                                   int NH, int NKV, int HD, float eps, int interleaved) {
    zi_status st = ZI_OK;
    if (HD <= 0 || HD % 2 || HD > 256 || (!wq != !wk))
        return zi_fail(ZI_ERR_ARG, "qkv_norm_rope: head dim %d (must be even, at most 256), q/k norms both or neither", HD);
    size_t row = (size_t)(NH + 2 * NKV) * HD, qd = (size_t)NH * HD;
    for (int s = 0; s < S; s++) {
        float *q = F(qkv) + (size_t)s * row, *k = q + qd;
        const float *cs_s = cs + (size_t)s * HD; /* token s's [HD/2, 2] (cos, sin) */
        if (wq || wk) {
            ZI_TRY(cpu_rmsnorm(be, q, q, wq, NH, HD, eps));   /* q heads [NH, HD] */
            ZI_TRY(cpu_rmsnorm(be, k, k, wk, NKV, HD, eps));  /* k heads [NKV, HD] */
        }
        ZI_TRY(cpu_rope(be, q, cs_s, 1, NH, HD, interleaved));
        ZI_TRY(cpu_rope(be, k, cs_s, 1, NKV, HD, interleaved));
    }
fail:
    return st;
}

static zi_status cpu_copy(ZiBackend *be, void *dst, const void *src, size_t n) {
    (void)be;
    memmove(dst, src, n * sizeof(float));
    return ZI_OK;
}

static zi_status cpu_fill_rows(ZiBackend *be, void *dst, const void *row, int M, int D) {
    (void)be;
    for (int m = 0; m < M; m++) memcpy(F(dst) + (size_t)m * D, row, (size_t)D * sizeof(float));
    return ZI_OK;
}

static zi_status cpu_transpose(ZiBackend *be, void *out, const void *in, int M, int N) {
    (void)be;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) F(out)[(size_t)n * M + m] = CF(in)[(size_t)m * N + n];
    return ZI_OK;
}

static zi_status cpu_copy2d(ZiBackend *be, void *dst, const void *src, int B, int R, int X, size_t dst_bs,
                            size_t dst_ld, size_t src_bs, size_t src_ld) {
    (void)be;
    for (int b = 0; b < B; b++)
        for (int r = 0; r < R; r++)
            memcpy(F(dst) + b * dst_bs + r * dst_ld, CF(src) + b * src_bs + r * src_ld, (size_t)X * sizeof(float));
    return ZI_OK;
}

/* diffusers: b[..., t, ...] = a[..., -e + t, ...] * (1 - t / e) + b[..., t, ...] * (t / e); the Python float
   weights become f32 scalars of the f32 tensor ops (a is passed already offset to its last e rows / columns) */
static zi_status cpu_blend_seam(ZiBackend *be, void *b, const void *a, int O, int e, int X, size_t b_ld, size_t a_ld) {
    (void)be;
    for (int o = 0; o < O; o++)
        for (int t = 0; t < e; t++) {
            float wb = (float)((double)t / e), wa = (float)(1.0 - (double)t / e);
            float *bp = F(b) + o * b_ld + (size_t)t * X;
            const float *ap = CF(a) + o * a_ld + (size_t)t * X;
            for (int i = 0; i < X; i++) {
                float pa = ap[i] * wa, pb = bp[i] * wb;
                bp[i] = pa + pb;
            }
        }
    return ZI_OK;
}

/* token n = (f*Ht + h)*Wt + w ; feature k = ((pf*pH + ph)*pW + pw)*C + c ; value in[c, f*pF+pf, h*pH+ph, w*pW+pw] */
static zi_status cpu_patch_common(float *tok, float *img, int C, int Fr, int H, int W, int pF, int pH, int pW,
                                  int to_tokens) {
    int Ft = Fr / pF, Ht = H / pH, Wt = W / pW, P = pF * pH * pW * C;
    for (int f = 0; f < Ft; f++)
        for (int h = 0; h < Ht; h++)
            for (int w = 0; w < Wt; w++) {
                size_t n = ((size_t)f * Ht + h) * Wt + w;
                for (int pf = 0; pf < pF; pf++)
                    for (int ph = 0; ph < pH; ph++)
                        for (int pw = 0; pw < pW; pw++)
                            for (int c = 0; c < C; c++) {
                                size_t kk = (((size_t)pf * pH + ph) * pW + pw) * C + c;
                                size_t src = (((size_t)c * Fr + f * pF + pf) * H + h * pH + ph) * W + w * pW + pw;
                                if (to_tokens) tok[n * P + kk] = img[src];
                                else img[src] = tok[n * P + kk];
                            }
            }
    return ZI_OK;
}

static zi_status cpu_patchify(ZiBackend *be, void *out, const void *in, int C, int Fr, int H, int W, int pF, int pH,
                              int pW) {
    (void)be;
    return cpu_patch_common(F(out), (float *)in, C, Fr, H, W, pF, pH, pW, 1);
}

static zi_status cpu_unpatchify(ZiBackend *be, void *out, const void *in, int C, int Fr, int H, int W, int pF, int pH,
                                int pW) {
    (void)be;
    return cpu_patch_common((float *)in, F(out), C, Fr, H, W, pF, pH, pW, 0);
}

/* direct convolution: each (b, co) output plane accumulates Ci*k*k shifted, clipped input planes */
static zi_status cpu_conv2d(ZiBackend *be, void *out, const void *in, const void *w, const void *bias, int B, int Ci,
                            int H, int W, int Co, int k, int pad) {
    (void)be;
    int Ho = H + 2 * pad - k + 1, Wo = W + 2 * pad - k + 1;
    if (Ho <= 0 || Wo <= 0) return zi_fail(ZI_ERR_ARG, "conv2d: kernel %d larger than padded input %dx%d", k, H, W);
#pragma omp parallel for collapse(2) schedule(static) if ((long)B * Co * Ci * H * W * k * k > 1L << 18)
    for (int b = 0; b < B; b++)
        for (int co = 0; co < Co; co++) {
            float *y = F(out) + ((size_t)b * Co + co) * Ho * Wo;
            float b0 = bias ? CF(bias)[co] : 0.0f;
            for (int i = 0; i < Ho * Wo; i++) y[i] = b0;
            for (int ci = 0; ci < Ci; ci++) {
                const float *x = CF(in) + ((size_t)b * Ci + ci) * H * W;
                for (int ky = 0; ky < k; ky++)
                    for (int kx = 0; kx < k; kx++) {
                        float wv = CF(w)[(((size_t)co * Ci + ci) * k + ky) * k + kx];
                        int y0 = pad - ky > 0 ? pad - ky : 0, y1 = H + pad - ky < Ho ? H + pad - ky : Ho;
                        int x0 = pad - kx > 0 ? pad - kx : 0, x1 = W + pad - kx < Wo ? W + pad - kx : Wo;
                        for (int oy = y0; oy < y1; oy++) {
                            const float *xr = x + (size_t)(oy + ky - pad) * W + (kx - pad);
                            float *yr = y + (size_t)oy * Wo;
                            for (int ox = x0; ox < x1; ox++) yr[ox] += wv * xr[ox];
                        }
                    }
            }
        }
    return ZI_OK;
}

static zi_status cpu_upsample2x(ZiBackend *be, void *out, const void *in, int B, int C, int H, int W) {
    (void)be;
    for (size_t p = 0; p < (size_t)B * C; p++)
        for (int y = 0; y < 2 * H; y++)
            for (int x = 0; x < 2 * W; x++)
                F(out)[(p * 2 * H + y) * 2 * W + x] = CF(in)[(p * H + y / 2) * W + x / 2];
    return ZI_OK;
}

/* the ops one after the other through temporaries: the normalised input, the conv output when res */
static zi_status cpu_groupnorm_conv2d(ZiBackend *be, void *out, const void *in, const void *res, const void *gamma,
                                      const void *beta, const void *w, const void *bias, int B, int Ci, int H, int W,
                                      int Co, int k, int pad, int G, float eps, int silu) {
    zi_status st = ZI_OK;
    float *t = NULL, *y = NULL;
    size_t n = (size_t)B * Co * (H + 2 * pad - k + 1) * (W + 2 * pad - k + 1);
    if (G <= 0) return zi_fail(ZI_ERR_ARG, "groupnorm_conv2d: %d groups", G);
    if (H + 2 * pad - k + 1 <= 0 || W + 2 * pad - k + 1 <= 0)
        return zi_fail(ZI_ERR_ARG, "groupnorm_conv2d: kernel %d larger than padded input %dx%d", k, H, W);
    ZI_TRY(cpu_alloc(be, (void **)&t, (size_t)B * Ci * H * W * sizeof(float)));
    if (res) ZI_TRY(cpu_alloc(be, (void **)&y, n * sizeof(float)));
    ZI_TRY(cpu_groupnorm(be, t, in, gamma, beta, B, Ci, H * W, G, eps, silu));
    ZI_TRY(cpu_conv2d(be, res ? y : out, t, w, bias, B, Ci, H, W, Co, k, pad));
    if (res) ZI_TRY(cpu_add(be, out, y, res, n));
fail:
    free(t);
    free(y);
    return st;
}

static zi_status cpu_upsample_conv2d(ZiBackend *be, void *out, const void *in, const void *w, const void *bias, int B,
                                     int Ci, int H, int W, int Co, int k, int pad) {
    zi_status st = ZI_OK;
    float *t = NULL;
    ZI_TRY(cpu_alloc(be, (void **)&t, (size_t)B * Ci * 4 * H * W * sizeof(float)));
    ZI_TRY(cpu_upsample2x(be, t, in, B, Ci, H, W));
    ZI_TRY(cpu_conv2d(be, out, t, w, bias, B, Ci, 2 * H, 2 * W, Co, k, pad));
fail:
    free(t);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* the sampler's f32 latents; activations are f32 here too, so the casts are copies */

static zi_status cpu_download_bytes(ZiBackend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    memmove(dst, src, bytes);
    return ZI_OK;
}

static zi_status cpu_to_act(ZiBackend *be, void *out, const float *in, size_t n) {
    (void)be;
    memmove(out, in, n * sizeof(float));
    return ZI_OK;
}

static zi_status cpu_to_f32(ZiBackend *be, float *out, const void *in, size_t n) {
    (void)be;
    memmove(out, in, n * sizeof(float));
    return ZI_OK;
}

/* pred = pos + g * (pos - neg): three f32 roundings, in this order */
static zi_status cpu_cfg_combine(ZiBackend *be, float *pred, const float *pos, const float *neg, float g, size_t n) {
    (void)be;
    for (size_t i = 0; i < n; i++) {
        float d = pos[i] - neg[i];
        float gd = g * d;
        pred[i] = pos[i] + gd;
    }
    return ZI_OK;
}

static zi_status cpu_sumsq_f32(ZiBackend *be, double *sum, const float *x, size_t n) {
    (void)be;
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    *sum = s;
    return ZI_OK;
}

static zi_status cpu_scale_f32(ZiBackend *be, float *out, const float *in, float s, size_t n) {
    (void)be;
    for (size_t i = 0; i < n; i++) out[i] = in[i] * s;
    return ZI_OK;
}

/* x + dt * v with v = -pred: the product is rounded, then added (no fused multiply-add) */
static zi_status cpu_euler_step(ZiBackend *be, float *x, const float *pred, float dt, size_t n) {
    (void)be;
    for (size_t i = 0; i < n; i++) {
        float step = dt * -pred[i];
        x[i] += step;
    }
    return ZI_OK;
}

static zi_status cpu_latents_to_vae(ZiBackend *be, void *out, const float *lat, float scaling_factor,
                                    float shift_factor, size_t n) {
    (void)be;
    for (size_t i = 0; i < n; i++) {
        float q = lat[i] / scaling_factor;
        F(out)[i] = q + shift_factor;
    }
    return ZI_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* image output: planar [B,C,H,W] in, interleaved [B,H,W,C] out */

static inline float bf16_round(float x) { return zi_bf16_to_f32(zi_f32_to_bf16(x)); }

static zi_status cpu_image_to_uint8(ZiBackend *be, uint8_t *out, const void *img, int B, int C, int H, int W,
                                    int bf16_rule) {
    (void)be;
    size_t HW = (size_t)H * W;
#pragma omp parallel for collapse(2) if ((size_t)B * C * HW > 1 << 16)
    for (int b = 0; b < B; b++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                for (int ch = 0; ch < C; ch++) {
                    float v = CF(img)[((size_t)b * C + ch) * HW + (size_t)y * W + x];
                    if (bf16_rule) v = bf16_round(bf16_round(v) * 0.5f + 0.5f); /* two bf16 tensor ops */
                    else v = v * 0.5f + 0.5f;                                     /* x * 0.5 exact      */
                    v = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;                     /* clamp(0, 1); NaN stays */
                    float s = rintf(v * 255.0f);                                   /* np.round: half to even */
                    out[(((size_t)b * H + y) * W + x) * C + ch] = s >= 0.0f && s <= 255.0f ? (uint8_t)s : 0;
                }
    return ZI_OK;
}

static zi_status cpu_image_to_float_hwc(ZiBackend *be, float *out, const void *img, int B, int C, int H, int W) {
    (void)be;
    size_t HW = (size_t)H * W;
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    float v = CF(img)[((size_t)b * C + c) * HW + (size_t)y * W + x] * 0.5f + 0.5f;
                    out[(((size_t)b * H + y) * W + x) * C + c] = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
                }
    return ZI_OK;
}

/* ---- offload: host-resident weights (implemented at the end of the file) ---- */
static zi_status cpu_host_alloc(ZiBackend *be, void **ptr, size_t bytes);
static void cpu_host_free(ZiBackend *be, void *ptr);
static zi_status cpu_weight_to_host(ZiBackend *be, void *dst, const void *src, ZiDtype dt, size_t n);
static zi_status cpu_upload_bytes(ZiBackend *be, void *dst, const void *src, size_t bytes);
static zi_status cpu_queue_create(ZiBackend *be, void **queue, int nslots);
static void cpu_queue_destroy(ZiBackend *be, void *queue);
static zi_status cpu_queue_copy(ZiBackend *be, void *queue, int slot, void *dst, const void *src, size_t bytes);
static zi_status cpu_queue_order(ZiBackend *be, void *queue, int slot);

const ZiOps zi_ops_cpu = {
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_upload,
    .upload_weight = cpu_upload_weight,
    .upload_f32 = cpu_upload_f32,
    .download = cpu_download,
    .synchronize = cpu_synchronize,
    .matmul = cpu_matmul,
    .matmul_swiglu = cpu_matmul_swiglu,
    .attention = cpu_attention,
    .rmsnorm = cpu_rmsnorm,
    .rmsnorm_scale = cpu_rmsnorm_scale,
    .rmsnorm_add_gated = cpu_rmsnorm_add_gated,
    .rmsnorm_add_gated_scale = cpu_rmsnorm_add_gated_scale,
    .layernorm = cpu_layernorm,
    .groupnorm = cpu_groupnorm,
    .add = cpu_add,
    .scale = cpu_scale,
    .one_plus = cpu_one_plus,
    .silu = cpu_silu,
    .swiglu = cpu_swiglu,
    .swiglu_pair = cpu_swiglu_pair,
    .adaln_gates = cpu_adaln_gates,
    .mul_rows = cpu_mul_rows,
    .rope = cpu_rope,
    .qkv_norm_rope = cpu_qkv_norm_rope,
    .copy = cpu_copy,
    .fill_rows = cpu_fill_rows,
    .transpose = cpu_transpose,
    .copy2d = cpu_copy2d,
    .blend_seam = cpu_blend_seam,
    .patchify = cpu_patchify,
    .unpatchify = cpu_unpatchify,
    .conv2d = cpu_conv2d,
    .groupnorm_conv2d = cpu_groupnorm_conv2d,
    .upsample_conv2d = cpu_upsample_conv2d,
    .download_bytes = cpu_download_bytes,
    .to_act = cpu_to_act,
    .to_f32 = cpu_to_f32,
    .cfg_combine = cpu_cfg_combine,
    .sumsq_f32 = cpu_sumsq_f32,
    .scale_f32 = cpu_scale_f32,
    .euler_step = cpu_euler_step,
    .latents_to_vae = cpu_latents_to_vae,
    .image_to_uint8 = cpu_image_to_uint8,
    .image_to_float_hwc = cpu_image_to_float_hwc,
    /* ---- offload: host-resident weights ---- */
    .host_alloc = cpu_host_alloc,
    .host_free = cpu_host_free,
    .weight_to_host = cpu_weight_to_host,
    .upload_bytes = cpu_upload_bytes,
    .queue_create = cpu_queue_create,
    .queue_destroy = cpu_queue_destroy,
    .queue_copy = cpu_queue_copy,
    .queue_acquire = cpu_queue_order,
    .queue_release = cpu_queue_order,
};

/* ---- offload: host-resident weights ----
   On the CPU the "device" is host memory: the host block is plain memory, a queued copy is a
   memcpy done at once, and there is nothing to order. This runs the offload code paths (the
   streamed text encoder, the visiting VAE) on the CPU, where tests compare them with the
   resident paths. */

static zi_status cpu_host_alloc(ZiBackend *be, void **ptr, size_t bytes) { return cpu_alloc(be, ptr, bytes); }

static void cpu_host_free(ZiBackend *be, void *ptr) { cpu_free(be, ptr); }

static zi_status cpu_weight_to_host(ZiBackend *be, void *dst, const void *src, ZiDtype dt, size_t n) {
    return cpu_upload_weight(be, dst, src, dt, n);
}

static zi_status cpu_upload_bytes(ZiBackend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    memcpy(dst, src, bytes);
    return ZI_OK;
}

static zi_status cpu_queue_create(ZiBackend *be, void **queue, int nslots) {
    (void)be;
    *queue = calloc(1, (size_t)(nslots > 0 ? nslots : 1)); /* a unique non-NULL handle; holds nothing */
    if (!*queue) return zi_fail(ZI_ERR_NOMEM, "out of host memory creating a copy queue");
    return ZI_OK;
}

static void cpu_queue_destroy(ZiBackend *be, void *queue) { (void)be; free(queue); }

static zi_status cpu_queue_copy(ZiBackend *be, void *queue, int slot, void *dst, const void *src, size_t bytes) {
    (void)be, (void)queue, (void)slot;
    memcpy(dst, src, bytes);
    return ZI_OK;
}

static zi_status cpu_queue_order(ZiBackend *be, void *queue, int slot) {
    (void)be, (void)queue, (void)slot;
    return ZI_OK;
}
