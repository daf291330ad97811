/*
 * dit.c - Z-Image DiT forward (diffusers transformer_z_image.py, basic mode), one sample at a
 * time over the ops table. Reads top to bottom like the diffusers module:
 *   t_embedder -> patchify + x_embedder (+ x_pad_token) -> noise_refiner (image tokens)
 *   cap_embedder (+ cap_pad_token) -> context_refiner (caption tokens)
 *   layers over [image ; caption] -> final layer on the image rows -> unpatchify
 * The unified sequence buffer holds the image rows first and the caption rows after them, so
 * both refiners work in place on their slice and the concat costs nothing.
 *
 * Dimension letters: S = Np + Lp tokens, N image tokens (Np padded to 32), L caption tokens
 * (Lp padded), D width, NH heads, HD head dim, F FFN width, A adaLN width, P patch features,
 * Cc caption feature width.
 */
#include "dit.h"
#include "json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SEQ_MULTI_OF 32
#define DIT_GRAPH_SLOTS 2

struct DitModel {
    DitConfig cfg;
    DitWeights w;
    ZiBackend *be;
    StArchive ar;           /* mmapped checkpoint, kept for .to(device) reloads        */
    void *weights;          /* the one weight allocation                              */
    /* RoPE: per-axis (cos, sin) tables [axes_lens[a], axes_dims[a]/2, 2], host f32       */
    float *rope_axis[3];
    /* activations: one allocation sized for max_S tokens, max_lat latent elements        */
    void *acts;
    int max_S, max_N, max_L;
    size_t max_lat;
    struct {
        void *x;            /* [S, D] unified residual stream: image rows, then caption   */
        void *h;            /* [S, D] normed / modulated input of a branch                */
        void *o;            /* [S, D] attention output before to_out                      */
        void *a;            /* [S, D] branch output                                       */
        void *gu;           /* [S, max(2F, 3D)] merged projections: q|k|v, then gate|up   */
        void *g;            /* [S, F] FFN hidden silu(gate) * up                          */
        void *lat;          /* [C*Fr*H*W] latent in, and out                              */
        void *patches;      /* [N, P] patch tokens in, then final-layer output             */
        void *cap;          /* [L, Cc] caption features (copied in by dit_forward*)       */
        void *capn;         /* [L, Cc] normed caption features                            */
        void *tf;           /* [256] sinusoid                                             */
        void *th;           /* [T] timestep MLP hidden                                    */
        void *c;            /* [A] adaln input                                            */
        void *cs_silu;      /* [A] silu(c) for the final layer                            */
        void *mods;         /* [NM, 4D] adaLN activations of the NM modulated blocks      */
        void *mod;          /* [D] final-layer modulation                                 */
        void *scale;        /* [D] final-layer 1 + scale                                  */
        float *cs;          /* [S, HD/2, 2] RoPE cos/sin, fp32 on every backend            */
    } t;
    float *cs_host;         /* [S, HD/2, 2] host staging for cs                           */
    int cs_key[4];          /* (Ft, Ht, Wt, Lp) the table in t.cs was built for            */
    int cs_valid;           /* t.cs holds that table (reset when the activations move)     */
    /* replay (backends with graphs): the transformer recorded once per set of sizes and buffers,
       in DIT_GRAPH_SLOTS slots (CFG alternates the positive and the negative caption's length) */
    struct DitGraph {
        void *exec;         /* the recorded dit_run, or NULL (the key's first run is eager) */
        size_t key[10];     /* sizes and buffers it was recorded with (dit_run_replayed)  */
        unsigned long used; /* when it last ran, for least-recently-used replacement      */
    } graphs[DIT_GRAPH_SLOTS];
    unsigned long graph_clock;
    int graphs_off;         /* recording failed once: run eagerly from then on            */
};

/* ---------------------------------------------------------------------------------------- */
/* config */

zi_status dit_config_load(DitConfig *cfg, const char *path) {
    zi_status st = ZI_OK;
    JsonDoc doc = {0};
    int64_t v, arr[8];
    int n;
    double d;
    memset(cfg, 0, sizeof *cfg);
    ZI_TRY(json_parse_file(&doc, path));
    const JsonNode *r = json_root(&doc);
    if (r->type != JSON_OBJECT) { st = zi_fail(ZI_ERR_FORMAT, "%s: not a JSON object", path); goto fail; }
#define GETI(key, field, dflt) ZI_TRY(json_get_int(&doc, r, key, dflt, &v, path)); cfg->field = (int)v
    GETI("in_channels", in_channels, 16);
    GETI("dim", dim, 3840);
    GETI("n_layers", n_layers, 30);
    GETI("n_refiner_layers", n_refiner_layers, 2);
    GETI("n_heads", n_heads, 30);
#undef GETI
    ZI_TRY(json_get_double(&doc, r, "norm_eps", 1e-5, &d, path)); cfg->norm_eps = (float)d;
    ZI_TRY(json_get_double(&doc, r, "rope_theta", 256.0, &d, path)); cfg->rope_theta = (float)d;
    ZI_TRY(json_get_double(&doc, r, "t_scale", 1000.0, &d, path)); cfg->t_scale = (float)d;
    ZI_TRY(json_get_bool(&doc, r, "qk_norm", 1, &cfg->qk_norm, path));
    ZI_TRY(json_get_int(&doc, r, "cap_feat_dim", 2560, &v, path)); cfg->cap_feat_dim = (int)v;
    ZI_TRY(json_get_int_array(&doc, r, "axes_dims", arr, 8, &n, path));
    if (n == 0) { cfg->axes_dims[0] = 32; cfg->axes_dims[1] = 48; cfg->axes_dims[2] = 48; }
    else if (n != 3) { st = zi_fail(ZI_ERR_FORMAT, "%s: axes_dims must have 3 entries", path); goto fail; }
    else for (int i = 0; i < 3; i++) cfg->axes_dims[i] = (int)arr[i];
    ZI_TRY(json_get_int_array(&doc, r, "axes_lens", arr, 8, &n, path));
    if (n == 0) { cfg->axes_lens[0] = 1024; cfg->axes_lens[1] = 512; cfg->axes_lens[2] = 512; }
    else if (n != 3) { st = zi_fail(ZI_ERR_FORMAT, "%s: axes_lens must have 3 entries", path); goto fail; }
    else for (int i = 0; i < 3; i++) cfg->axes_lens[i] = (int)arr[i];
    /* the forward uses patch 2, frame patch 1 (diffusers' defaults), which must be listed */
    cfg->patch = 2;
    cfg->f_patch = 1;
    ZI_TRY(json_get_int_array(&doc, r, "all_patch_size", arr, 8, &n, path));
    int found = n == 0;
    for (int i = 0; i < n; i++) found |= arr[i] == 2;
    ZI_TRY(json_get_int_array(&doc, r, "all_f_patch_size", arr, 8, &n, path));
    int found_f = n == 0;
    for (int i = 0; i < n; i++) found_f |= arr[i] == 1;
    if (!found || !found_f) { st = zi_fail(ZI_ERR_FORMAT, "%s: all_patch_size must include 2 and all_f_patch_size 1", path); goto fail; }
    const JsonNode *sig = json_get(&doc, r, "siglip_feat_dim");
    if (sig && sig->type != JSON_NULL) { st = zi_fail(ZI_ERR_FORMAT, "%s: the Omni variant (siglip_feat_dim) is not supported", path); goto fail; }

    if (cfg->dim <= 0 || cfg->n_heads <= 0 || cfg->dim % cfg->n_heads || cfg->in_channels <= 0 || cfg->cap_feat_dim <= 0 ||
        cfg->n_layers < 0 || cfg->n_refiner_layers < 0) {
        st = zi_fail(ZI_ERR_FORMAT, "%s: inconsistent sizes (dim %d, n_heads %d, in_channels %d, cap_feat_dim %d)", path,
                     cfg->dim, cfg->n_heads, cfg->in_channels, cfg->cap_feat_dim);
        goto fail;
    }
    cfg->head_dim = cfg->dim / cfg->n_heads;
    int sum = 0;
    for (int i = 0; i < 3; i++) {
        if (cfg->axes_dims[i] <= 0 || cfg->axes_dims[i] % 2 || cfg->axes_lens[i] <= 0 || cfg->axes_lens[i] > 1 << 20) {
            st = zi_fail(ZI_ERR_FORMAT, "%s: axes_dims must be positive and even, axes_lens positive", path); goto fail;
        }
        sum += cfg->axes_dims[i];
    }
    if (sum != cfg->head_dim) { st = zi_fail(ZI_ERR_FORMAT, "%s: axes_dims sum to %d but head_dim is %d", path, sum, cfg->head_dim); goto fail; }
    cfg->ffn_dim = (int)((double)cfg->dim / 3.0 * 8.0);  /* int(dim / 3 * 8) as in diffusers */
    cfg->adaln_dim = cfg->dim < 256 ? cfg->dim : 256;
    cfg->t_mid = 1024;
    cfg->t_freq = 256;
fail:
    json_free(&doc);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* weights: the diffusers state-dict names, in module order, except that w3 follows w1. The weight
   block stores specs back to back in list order, so to_q|to_k|to_v form one [3D, D] matrix and
   w1|w3 one [2F, D] matrix: the forward runs each as one merged GEMM (dit_check_merged checks). */

static zi_status dit_block_list(const DitConfig *c, DitBlock *b, ZiWeightList *wl, const char *p) {
    zi_status st = ZI_OK;
    int64_t D = c->dim, F = c->ffn_dim, HD = c->head_dim;
    ZI_TRY(ZI_W2(wl, &b->to_q, D, D, "%s.attention.to_q.weight", p));
    ZI_TRY(ZI_W2(wl, &b->to_k, D, D, "%s.attention.to_k.weight", p));
    ZI_TRY(ZI_W2(wl, &b->to_v, D, D, "%s.attention.to_v.weight", p));
    ZI_TRY(ZI_W2(wl, &b->to_out, D, D, "%s.attention.to_out.0.weight", p));
    if (c->qk_norm) {
        ZI_TRY(ZI_W1(wl, &b->norm_q, HD, "%s.attention.norm_q.weight", p));
        ZI_TRY(ZI_W1(wl, &b->norm_k, HD, "%s.attention.norm_k.weight", p));
    }
    ZI_TRY(ZI_W2(wl, &b->w1, F, D, "%s.feed_forward.w1.weight", p));
    ZI_TRY(ZI_W2(wl, &b->w3, F, D, "%s.feed_forward.w3.weight", p));
    ZI_TRY(ZI_W2(wl, &b->w2, D, F, "%s.feed_forward.w2.weight", p));
    ZI_TRY(ZI_W1(wl, &b->attention_norm1, D, "%s.attention_norm1.weight", p));
    ZI_TRY(ZI_W1(wl, &b->ffn_norm1, D, "%s.ffn_norm1.weight", p));
    ZI_TRY(ZI_W1(wl, &b->attention_norm2, D, "%s.attention_norm2.weight", p));
    ZI_TRY(ZI_W1(wl, &b->ffn_norm2, D, "%s.ffn_norm2.weight", p));
fail:
    return st;
}

/* The adaLN projections of the NM modulated blocks (noise_refiner, then layers), every weight and then
   every bias, so that the block stores them as one [NM * 4D, A] matrix and one [NM * 4D] bias and a
   forward computes all modulations as one product (dit_modulations). */
static zi_status dit_adaln_list(const DitConfig *c, DitWeights *w, ZiWeightList *wl) {
    zi_status st = ZI_OK;
    int64_t D = c->dim, A = c->adaln_dim;
    int R = c->n_refiner_layers, NM = R + c->n_layers;
    char p[64];
    for (int bias = 0; bias < 2; bias++)
        for (int i = 0; i < NM; i++) {
            DitBlock *b = i < R ? &w->noise_refiner[i] : &w->layers[i - R];
            if (i < R) snprintf(p, sizeof p, "noise_refiner.%d", i);
            else snprintf(p, sizeof p, "layers.%d", i - R);
            if (bias) ZI_TRY(ZI_W1(wl, &b->adaln_b, 4 * D, "%s.adaLN_modulation.0.bias", p));
            else ZI_TRY(ZI_W2(wl, &b->adaln_w, 4 * D, A, "%s.adaLN_modulation.0.weight", p));
        }
fail:
    return st;
}

zi_status dit_weight_list(const DitConfig *c, DitWeights *w, ZiWeightList *wl) {
    zi_status st = ZI_OK;
    int64_t D = c->dim, A = c->adaln_dim, T = c->t_mid, Cc = c->cap_feat_dim;
    int64_t P = (int64_t)c->f_patch * c->patch * c->patch * c->in_channels;
    char p[64];
    ZI_CALLOC(w->noise_refiner, (size_t)c->n_refiner_layers + 1, sizeof(DitBlock));
    ZI_CALLOC(w->context_refiner, (size_t)c->n_refiner_layers + 1, sizeof(DitBlock));
    ZI_CALLOC(w->layers, (size_t)c->n_layers + 1, sizeof(DitBlock));
    ZI_TRY(ZI_W2(wl, &w->x_embed_w, D, P, "all_x_embedder.%d-%d.weight", c->patch, c->f_patch));
    ZI_TRY(ZI_W1(wl, &w->x_embed_b, D, "all_x_embedder.%d-%d.bias", c->patch, c->f_patch));
    ZI_TRY(ZI_W2(wl, &w->final_adaln_w, D, A, "all_final_layer.%d-%d.adaLN_modulation.1.weight", c->patch, c->f_patch));
    ZI_TRY(ZI_W1(wl, &w->final_adaln_b, D, "all_final_layer.%d-%d.adaLN_modulation.1.bias", c->patch, c->f_patch));
    ZI_TRY(ZI_W2(wl, &w->final_w, P, D, "all_final_layer.%d-%d.linear.weight", c->patch, c->f_patch));
    ZI_TRY(ZI_W1(wl, &w->final_b, P, "all_final_layer.%d-%d.linear.bias", c->patch, c->f_patch));
    for (int i = 0; i < c->n_refiner_layers; i++) {
        snprintf(p, sizeof p, "noise_refiner.%d", i);
        ZI_TRY(dit_block_list(c, &w->noise_refiner[i], wl, p));
    }
    for (int i = 0; i < c->n_refiner_layers; i++) {
        snprintf(p, sizeof p, "context_refiner.%d", i);
        ZI_TRY(dit_block_list(c, &w->context_refiner[i], wl, p));
    }
    ZI_TRY(ZI_W2(wl, &w->t_mlp0_w, T, c->t_freq, "t_embedder.mlp.0.weight"));
    ZI_TRY(ZI_W1(wl, &w->t_mlp0_b, T, "t_embedder.mlp.0.bias"));
    ZI_TRY(ZI_W2(wl, &w->t_mlp2_w, A, T, "t_embedder.mlp.2.weight"));
    ZI_TRY(ZI_W1(wl, &w->t_mlp2_b, A, "t_embedder.mlp.2.bias"));
    ZI_TRY(ZI_W1(wl, &w->cap_norm, Cc, "cap_embedder.0.weight"));
    ZI_TRY(ZI_W2(wl, &w->cap_w, D, Cc, "cap_embedder.1.weight"));
    ZI_TRY(ZI_W1(wl, &w->cap_b, D, "cap_embedder.1.bias"));
    ZI_TRY(ZI_W2(wl, &w->x_pad_token, 1, D, "x_pad_token"));
    ZI_TRY(ZI_W2(wl, &w->cap_pad_token, 1, D, "cap_pad_token"));
    for (int i = 0; i < c->n_layers; i++) {
        snprintf(p, sizeof p, "layers.%d", i);
        ZI_TRY(dit_block_list(c, &w->layers[i], wl, p));
    }
    ZI_TRY(dit_adaln_list(c, w, wl));
fail:
    return st;
}

static void dit_free_block_arrays(DitWeights *w) {
    free(w->noise_refiner);
    free(w->context_refiner);
    free(w->layers);
    w->noise_refiner = w->context_refiner = w->layers = NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* RoPE tables: omega_a[k] = 1 / theta^(2k/d_a) in f64; angle = f32(p * omega); (cos, sin) in f32 */

static zi_status dit_build_rope(DitModel *m) {
    zi_status st = ZI_OK;
    const DitConfig *c = &m->cfg;
    for (int a = 0; a < 3; a++) {
        int half = c->axes_dims[a] / 2, len = c->axes_lens[a];
        float *tab;
        ZI_MALLOC(tab, (size_t)len * half * 2 * sizeof(float));
        for (int k = 0; k < half; k++) {
            double omega = 1.0 / pow((double)c->rope_theta, (double)(2 * k) / (double)c->axes_dims[a]);
            for (int p = 0; p < len; p++) {
                float ang = (float)((double)p * omega);
                tab[((size_t)p * half + k) * 2 + 0] = cosf(ang);
                tab[((size_t)p * half + k) * 2 + 1] = sinf(ang);
            }
        }
        m->rope_axis[a] = tab;
    }
fail:
    return st;
}

/* cs row for a token at position (p0, p1, p2): the three axis tables side by side */
static void dit_rope_row(const DitModel *m, float *row, int p0, int p1, int p2) {
    const DitConfig *c = &m->cfg;
    int pos[3] = {p0, p1, p2};
    for (int a = 0; a < 3; a++) {
        int half = c->axes_dims[a] / 2;
        memcpy(row, m->rope_axis[a] + (size_t)pos[a] * half * 2, (size_t)half * 2 * sizeof(float));
        row += half * 2;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* activations: one allocation, carved by byte offsets (fp32 tables and backend elements) */

/* Forget the recorded forwards (their buffers are about to move, or the model goes away). */
static void dit_drop_graph(DitModel *m) {
    for (int i = 0; i < DIT_GRAPH_SLOTS; i++) {
        if (m->graphs[i].exec) m->be->ops->graph_free(m->be, m->graphs[i].exec);
        memset(&m->graphs[i], 0, sizeof m->graphs[i]);
    }
}

static zi_status dit_ensure_acts(DitModel *m, int S, int N, int L, size_t lat) {
    if (m->acts && S <= m->max_S && N <= m->max_N && L <= m->max_L && lat <= m->max_lat) return ZI_OK;
    zi_status st = ZI_OK;
    ZiBackend *be = m->be;
    const DitConfig *c = &m->cfg;
    if (S < m->max_S) S = m->max_S;
    if (N < m->max_N) N = m->max_N;
    if (L < m->max_L) L = m->max_L;
    if (lat < m->max_lat) lat = m->max_lat;
    size_t D = (size_t)c->dim, F = (size_t)c->ffn_dim, A = (size_t)c->adaln_dim;
    size_t P = (size_t)c->f_patch * c->patch * c->patch * c->in_channels, Cc = (size_t)c->cap_feat_dim;
    size_t e = be->act_size, GU = 2 * F > 3 * D ? 2 * F : 3 * D;
    size_t NM = (size_t)c->n_refiner_layers + (size_t)c->n_layers; /* modulated blocks */
    struct { void **slot; size_t bytes; } spec[] = {
        {&m->t.x, S * D * e},     {&m->t.h, S * D * e},       {&m->t.o, S * D * e},
        {&m->t.a, S * D * e},     {&m->t.gu, S * GU * e},     {&m->t.g, S * F * e},
        {&m->t.lat, lat * e},     {&m->t.patches, N * P * e}, {&m->t.cap, L * Cc * e},
        {&m->t.capn, L * Cc * e}, {&m->t.tf, 256 * e},        {&m->t.th, (size_t)c->t_mid * e},
        {&m->t.c, A * e},         {&m->t.cs_silu, A * e},     {&m->t.mods, NM * 4 * D * e},
        {&m->t.mod, D * e},       {&m->t.scale, D * e},       {(void **)&m->t.cs, S * (size_t)c->head_dim * sizeof(float)},
    };
    size_t total = 0, n = sizeof spec / sizeof spec[0];
    for (size_t i = 0; i < n; i++) total += (spec[i].bytes + 255) & ~(size_t)255;
    dit_drop_graph(m);
    be->ops->free(be, m->acts);
    m->acts = NULL;
    m->cs_valid = 0;
    free(m->cs_host);
    m->cs_host = NULL;
    ZI_TRY(be->ops->alloc(be, &m->acts, total));
    ZI_MALLOC(m->cs_host, (size_t)S * c->head_dim * sizeof(float));
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        *spec[i].slot = (char *)m->acts + off;
        off += (spec[i].bytes + 255) & ~(size_t)255;
    }
    m->max_S = S, m->max_N = N, m->max_L = L, m->max_lat = lat;
    return ZI_OK;
fail:
    be->ops->free(be, m->acts);
    m->acts = NULL;
    m->max_S = m->max_N = m->max_L = 0;
    m->max_lat = 0;
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* forward */

/* Attention (diffusers Attention + ZSingleStreamAttnProcessor) on x[S, D] -> m->t.a[S, D] */
static zi_status dit_attention(DitModel *m, const DitBlock *b, const void *x, const float *cs, int S) {
    zi_status st = ZI_OK;
    ZiBackend *be = m->be;
    const ZiOps *op = be->ops;
    const DitConfig *c = &m->cfg;
    int D = c->dim, NH = c->n_heads, HD = c->head_dim;
    ZI_TRY(op->matmul(be, m->t.gu, x, b->to_q, NULL, S, D, 3 * D));             /* qkv [S, 3D]: to_q|to_k|to_v */
    ZI_TRY(op->qkv_norm_rope(be, m->t.gu, b->norm_q, b->norm_k, cs, S, NH, NH, HD, 1e-5f,
                             1));                                               /* q, k normed + rotated in qkv; eps fixed in diffusers */
    const char *q = m->t.gu, *k = zi_act(be, m->t.gu, D), *v = zi_act(be, m->t.gu, 2 * D); /* [S, NH, HD] in rows of 3D */
    ZI_TRY(op->attention(be, m->t.o, q, k, v, 3 * D, S, NH, NH, HD, 0, 1.0f / sqrtf((float)HD))); /* o [S, D] */
    ZI_TRY(op->matmul(be, m->t.a, m->t.o, b->to_out, NULL, S, D, D));           /* a [S, D]            */
fail:
    return st;
}

/* FeedForward: w2(silu(w1 h) * w3 h), h = m->t.h [S, D] -> m->t.a [S, D] */
static zi_status dit_feed_forward(DitModel *m, const DitBlock *b, int S) {
    zi_status st = ZI_OK;
    ZiBackend *be = m->be;
    const ZiOps *op = be->ops;
    int D = m->cfg.dim, F = m->cfg.ffn_dim;
    ZI_TRY(op->matmul(be, m->t.gu, m->t.h, b->w1, NULL, S, D, 2 * F));          /* gu [S, 2F]: w1|w3   */
    ZI_TRY(op->swiglu_pair(be, m->t.g, m->t.gu, S, F));                         /* g = silu(gate) * up [S, F] */
    ZI_TRY(op->matmul(be, m->t.a, m->t.g, b->w2, NULL, S, F, D));               /* a [S, D]            */
fail:
    return st;
}

/* adaLN modulation of the NM modulated blocks (noise_refiner, then layers) for the current timestep
   embedding m->t.c: mods[i] = (1 + scale_msa, tanh(gate_msa), 1 + scale_mlp, tanh(gate_mlp)) [4D] */
static zi_status dit_modulations(DitModel *m) {
    zi_status st = ZI_OK;
    ZiBackend *be = m->be;
    const ZiOps *op = be->ops;
    const DitConfig *c = &m->cfg;
    int D = c->dim, A = c->adaln_dim, R = c->n_refiner_layers, NM = R + c->n_layers;
    const DitBlock *b0 = R ? &m->w.noise_refiner[0] : &m->w.layers[0];
    ZI_TRY(op->matmul(be, m->t.mods, m->t.c, b0->adaln_w, b0->adaln_b, 1, A, NM * 4 * D)); /* mods [NM, 4D] */
    ZI_TRY(op->adaln_gates(be, m->t.mods, m->t.mods, NM, D));                        /* mods [NM, 4D] */
fail:
    return st;
}

/* The four [D] parts of a block's adaLN activations (all NULL for an unmodulated block). */
typedef struct DitMod { const void *scale_msa, *gate_msa, *scale_mlp, *gate_mlp; } DitMod;

static DitMod dit_mod(const DitModel *m, int i) {
    DitMod r = {0};
    if (i < 0) return r;
    size_t D = (size_t)m->cfg.dim, o = (size_t)i * 4 * D;
    r.scale_msa = zi_act(m->be, m->t.mods, o), r.gate_msa = zi_act(m->be, m->t.mods, o + D);
    r.scale_mlp = zi_act(m->be, m->t.mods, o + 2 * D), r.gate_mlp = zi_act(m->be, m->t.mods, o + 3 * D);
    return r;
}

/* A run of n ZImageTransformerBlocks on x[S, D] in place; block j is modulated by mods[mod0 + j]
   (mod0 < 0: unmodulated). Each block:
     x += gate_msa * attention_norm2(attn(attention_norm1(x) * scale_msa))
     x += gate_mlp * ffn_norm2(ffn(ffn_norm1(x) * scale_mlp))
   Every norm of x is fused into the residual add before it (rmsnorm_add_gated_scale), so
   m->t.h holds the next branch's input when a branch ends. */
static zi_status dit_blocks(DitModel *m, const DitBlock *blocks, int n, int mod0, void *x, const float *cs, int S) {
    zi_status st = ZI_OK;
    ZiBackend *be = m->be;
    const ZiOps *op = be->ops;
    int D = m->cfg.dim;
    float eps = m->cfg.norm_eps;
    if (n <= 0) return ZI_OK;
    DitMod md = dit_mod(m, mod0);
    ZI_TRY(op->rmsnorm_scale(be, m->t.h, x, blocks[0].attention_norm1, md.scale_msa, S, D, eps)); /* h [S, D] */
    for (int j = 0; j < n; j++) {
        const DitBlock *b = &blocks[j];
        md = dit_mod(m, mod0 < 0 ? -1 : mod0 + j);
        ZI_TRY(dit_attention(m, b, m->t.h, cs, S));                                   /* a [S, D]      */
        ZI_TRY(op->rmsnorm_add_gated_scale(be, x, m->t.h, m->t.a, b->attention_norm2, md.gate_msa, b->ffn_norm1,
                                           md.scale_mlp, S, D, eps));                 /* x, h [S, D]   */
        ZI_TRY(dit_feed_forward(m, b, S));                                            /* a [S, D]      */
        if (j + 1 < n) {
            DitMod next = dit_mod(m, mod0 < 0 ? -1 : mod0 + j + 1);
            ZI_TRY(op->rmsnorm_add_gated_scale(be, x, m->t.h, m->t.a, b->ffn_norm2, md.gate_mlp,
                                               blocks[j + 1].attention_norm1, next.scale_msa, S, D, eps)); /* x, h */
        } else {
            ZI_TRY(op->rmsnorm_add_gated(be, x, m->t.a, b->ffn_norm2, md.gate_mlp, S, D, eps)); /* x [S, D] */
        }
    }
fail:
    return st;
}

/* TimestepEmbedder's input: sinusoid(t * t_scale) (cos first) => m->t.tf [256], computed on the host
   (the one per-step input of the recorded forward besides the latent) */
static zi_status dit_timestep_sinusoid(DitModel *m, float t) {
    zi_status st = ZI_OK;
    ZiBackend *be = m->be;
    const ZiOps *op = be->ops;
    const DitConfig *c = &m->cfg;
    float freq[256];
    int half = c->t_freq / 2;
    float tt = t * c->t_scale;
    const float neg_log_period = -logf(10000.0f);
    for (int k = 0; k < half; k++) {
        float f = expf(neg_log_period * (float)k / (float)half);
        freq[k] = cosf(tt * f);
        freq[half + k] = sinf(tt * f);
    }
    ZI_TRY(op->upload(be, m->t.tf, freq, (size_t)c->t_freq));                          /* tf [256]    */
fail:
    return st;
}

/* TimestepEmbedder: tf [256] -> Linear -> SiLU -> Linear  => c [A] */
static zi_status dit_timestep_embed(DitModel *m) {
    zi_status st = ZI_OK;
    ZiBackend *be = m->be;
    const ZiOps *op = be->ops;
    const DitConfig *c = &m->cfg;
    ZI_TRY(op->matmul(be, m->t.th, m->t.tf, m->w.t_mlp0_w, m->w.t_mlp0_b, 1, c->t_freq, c->t_mid)); /* th [T] */
    ZI_TRY(op->silu(be, m->t.th, m->t.th, (size_t)c->t_mid));                         /* th [T]      */
    ZI_TRY(op->matmul(be, m->t.c, m->t.th, m->w.t_mlp2_w, m->w.t_mlp2_b, 1, c->t_mid, c->adaln_dim)); /* c [A] */
fail:
    return st;
}

static zi_status dit_load_weights(DitModel *m, int device);

/* Give the activations back (they are reallocated by the next forward). */
void dit_release_acts(DitModel *m) {
    if (!m->be) return;
    dit_drop_graph(m);
    m->be->ops->free(m->be, m->acts);
    m->acts = NULL;
    m->cs_valid = 0;
    m->max_S = m->max_N = m->max_L = 0;
    m->max_lat = 0;
}


zi_status dit_backend(DitModel *m, ZiBackend **be) {
    zi_status st = ZI_OK;
    *be = NULL;
    if (!m->be) ZI_TRY(dit_load_weights(m, -1)); /* deferred at load: the CPU, now */
    *be = m->be;
fail:
    return st;
}

/* Sizes of one forward, checked. */
typedef struct DitDims {
    int Fr, H, W, L;        /* latent [C, Fr, H, W], caption rows                    */
    int Ft, Ht, Wt, N;      /* token grid, N = Ft*Ht*Wt image tokens                 */
    int Np, Lp, S;          /* padded to SEQ_MULTI_OF, S = Np + Lp                    */
    size_t lat;             /* latent elements                                       */
} DitDims;

/* Check the sizes, size the activations and fill the RoPE table for them (kept on the device
   while the token layout stays the same, so a denoising loop uploads it once). */
static zi_status dit_prepare(DitModel *m, DitDims *d, int Fr, int H, int W, int L) {
    zi_status st = ZI_OK;
    ZiBackend *be = NULL;
    ZI_TRY(dit_backend(m, &be));
    const DitConfig *c = &m->cfg;
    int pF = c->f_patch, pH = c->patch, pW = c->patch, HD = c->head_dim;
    if (Fr <= 0 || H <= 0 || W <= 0 || Fr % pF || H % pH || W % pW)
        return zi_fail(ZI_ERR_ARG, "latent of %d frames x %dx%d is not divisible by the patch size %dx%dx%d", Fr, H, W,
                       pF, pH, pW);
    if (L <= 0) return zi_fail(ZI_ERR_ARG, "caption features must have at least one row");
    d->Fr = Fr, d->H = H, d->W = W, d->L = L;
    d->Ft = Fr / pF, d->Ht = H / pH, d->Wt = W / pW;
    d->N = d->Ft * d->Ht * d->Wt;
    d->Np = d->N + (SEQ_MULTI_OF - d->N % SEQ_MULTI_OF) % SEQ_MULTI_OF;
    d->Lp = L + (SEQ_MULTI_OF - L % SEQ_MULTI_OF) % SEQ_MULTI_OF;
    d->S = d->Np + d->Lp;
    d->lat = (size_t)c->in_channels * Fr * H * W;
    if (d->Lp + d->Ft >= c->axes_lens[0] || d->Ht > c->axes_lens[1] || d->Wt > c->axes_lens[2])
        return zi_fail(ZI_ERR_ARG,
                       "input too large for the RoPE tables: %d caption tokens (padded %d) and a %dx%dx%d token grid "
                       "need axes_lens of at least [%d, %d, %d], the model has [%d, %d, %d]",
                       L, d->Lp, d->Ft, d->Ht, d->Wt, d->Lp + d->Ft + 1, d->Ht, d->Wt, c->axes_lens[0], c->axes_lens[1],
                       c->axes_lens[2]);
    ZI_TRY(dit_ensure_acts(m, d->S, d->N, L, d->lat));
    int key[4] = {d->Ft, d->Ht, d->Wt, d->Lp};
    if (m->cs_valid && memcmp(key, m->cs_key, sizeof key) == 0) return ZI_OK;

    /* RoPE positions: image (Lp+1+f, h, w), image pad (0,0,0), caption (1+i, 0, 0) */
    for (int f = 0; f < d->Ft; f++)
        for (int h = 0; h < d->Ht; h++)
            for (int x = 0; x < d->Wt; x++)
                dit_rope_row(m, m->cs_host + (size_t)((f * d->Ht + h) * d->Wt + x) * HD, d->Lp + 1 + f, h, x);
    for (int n = d->N; n < d->Np; n++) dit_rope_row(m, m->cs_host + (size_t)n * HD, 0, 0, 0);
    for (int i = 0; i < d->Lp; i++) dit_rope_row(m, m->cs_host + (size_t)(d->Np + i) * HD, 1 + i, 0, 0);
    ZI_TRY(be->ops->upload_f32(be, m->t.cs, m->cs_host, (size_t)d->S * HD));      /* cs [S, HD/2, 2] */
    memcpy(m->cs_key, key, sizeof key);
    m->cs_valid = 1;
fail:
    return st;
}

/* The transformer on its inputs in fixed buffers: the latent m->t.lat [C, Fr, H, W], the timestep's
   sinusoid m->t.tf and the caption features m->t.cap [L, Cc] (activation type); the output replaces
   m->t.lat. Queues backend ops only (no host waits), so it can be recorded. */
static zi_status dit_run(DitModel *m, const DitDims *d) {
    zi_status st = ZI_OK;
    ZiBackend *be = m->be;
    const ZiOps *op = be->ops;
    const DitConfig *c = &m->cfg;
    const DitWeights *w = &m->w;
    int C = c->in_channels, pF = c->f_patch, pH = c->patch, pW = c->patch, D = c->dim, HD = c->head_dim;
    int Cc = c->cap_feat_dim, P = pF * pH * pW * C;
    int Fr = d->Fr, H = d->H, W = d->W, L = d->L, N = d->N, Np = d->Np, Lp = d->Lp, S = d->S;
    void *img = m->t.x;                                /* rows [0, Np): image tokens    */
    void *txt = zi_act(be, m->t.x, (size_t)Np * D);    /* rows [Np, S): caption tokens  */
    const float *cs_img = m->t.cs, *cs_txt = m->t.cs + (size_t)Np * HD;

    /* t_embedder */
    ZI_TRY(dit_timestep_embed(m));                                                 /* c [A]           */
    ZI_TRY(dit_modulations(m));                                                    /* mods [NM, 4D]   */

    /* image: patchify, x_embedder, pad token, noise_refiner */
    ZI_TRY(op->patchify(be, m->t.patches, m->t.lat, C, Fr, H, W, pF, pH, pW));     /* patches [N, P]  */
    ZI_TRY(op->matmul(be, img, m->t.patches, w->x_embed_w, w->x_embed_b, N, P, D)); /* img [N, D]     */
    if (Np > N) ZI_TRY(op->fill_rows(be, zi_act(be, img, (size_t)N * D), w->x_pad_token, Np - N, D)); /* img [Np, D] */
    ZI_TRY(dit_blocks(m, w->noise_refiner, c->n_refiner_layers, 0, img, cs_img, Np)); /* img [Np, D]  */

    /* caption: cap_embedder (RMSNorm, Linear), pad token, context_refiner */
    ZI_TRY(op->rmsnorm(be, m->t.capn, m->t.cap, w->cap_norm, L, Cc, c->norm_eps));  /* capn [L, Cc]   */
    ZI_TRY(op->matmul(be, txt, m->t.capn, w->cap_w, w->cap_b, L, Cc, D));           /* txt [L, D]     */
    if (Lp > L) ZI_TRY(op->fill_rows(be, zi_act(be, txt, (size_t)L * D), w->cap_pad_token, Lp - L, D)); /* txt [Lp, D] */
    ZI_TRY(dit_blocks(m, w->context_refiner, c->n_refiner_layers, -1, txt, cs_txt, Lp)); /* txt [Lp, D] */

    /* main layers over the unified [image ; caption] sequence */
    ZI_TRY(dit_blocks(m, w->layers, c->n_layers, c->n_refiner_layers, m->t.x, m->t.cs, S)); /* x [S, D] */

    /* final layer on the N real image rows: LayerNorm * (1 + Linear(silu(c))), Linear */
    ZI_TRY(op->silu(be, m->t.cs_silu, m->t.c, (size_t)c->adaln_dim));              /* silu(c) [A]    */
    ZI_TRY(op->matmul(be, m->t.mod, m->t.cs_silu, w->final_adaln_w, w->final_adaln_b, 1, c->adaln_dim, D)); /* [D] */
    ZI_TRY(op->one_plus(be, m->t.scale, m->t.mod, (size_t)D));                     /* scale [D]      */
    ZI_TRY(op->layernorm(be, m->t.h, m->t.x, N, D, 1e-6f));                         /* h [N, D]       */
    ZI_TRY(op->mul_rows(be, m->t.h, m->t.h, m->t.scale, N, D));                     /* h [N, D]       */
    ZI_TRY(op->matmul(be, m->t.patches, m->t.h, w->final_w, w->final_b, N, D, P));  /* out [N, P]     */

    /* unpatchify */
    ZI_TRY(op->unpatchify(be, m->t.lat, m->t.patches, C, Fr, H, W, pF, pH, pW));   /* lat [C, Fr, H, W] */
fail:
    return st;
}

/* dit_run. On a backend with graphs, the first run with a set of sizes and buffers is eager
   (it sizes the backend's plans and scratch), the second is recorded, and every later one replays the
   recording: one launch instead of ~400. DIT_GRAPH_SLOTS sets are kept (least recently used replaced).
   Any failure to record turns recording off for this model. */
static zi_status dit_run_replayed(DitModel *m, const DitDims *d) {
    zi_status st = ZI_OK;
    ZiBackend *be = m->be;
    const ZiOps *op = be->ops;
    size_t key[10] = {(size_t)m->acts, (size_t)m->weights, (size_t)m->max_S, (size_t)m->max_N, (size_t)m->max_L,
                      m->max_lat, (size_t)d->Fr, (size_t)d->H, (size_t)d->W, (size_t)d->L};
    if (!op->capture_begin || m->graphs_off) return dit_run(m, d);
    struct DitGraph *g = NULL, *lru = &m->graphs[0];
    for (int i = 0; i < DIT_GRAPH_SLOTS; i++) {
        if (memcmp(key, m->graphs[i].key, sizeof key) == 0) g = &m->graphs[i];
        if (m->graphs[i].used < lru->used) lru = &m->graphs[i];
    }
    if (!g) { /* new sizes or buffers: warm up eagerly, in the least recently used slot */
        if (lru->exec) op->graph_free(be, lru->exec);
        lru->exec = NULL;
        memcpy(lru->key, key, sizeof key);
        lru->used = ++m->graph_clock;
        return dit_run(m, d);
    }
    g->used = ++m->graph_clock;
    if (g->exec) {
        int ran = 0;
        ZI_TRY(op->replay(be, g->exec, &ran));
        if (ran) return ZI_OK;
        op->graph_free(be, g->exec); /* the backend's scratch moved since: record again */
        g->exec = NULL;
    }
    if (op->capture_begin(be) != ZI_OK) {
        m->graphs_off = 1;
        return dit_run(m, d);
    }
    zi_status run_st = dit_run(m, d); /* recorded, not run */
    void *graph = NULL;
    zi_status end_st = op->capture_end(be, &graph);
    if (run_st != ZI_OK || end_st != ZI_OK) {
        op->graph_free(be, graph);
        m->graphs_off = 1;
        return dit_run(m, d); /* eagerly, reporting a real failure as it happens */
    }
    g->exec = graph;
    int ran = 0;
    ZI_TRY(op->replay(be, g->exec, &ran));
    if (!ran) ZI_TRY(dit_run(m, d));
fail:
    return st;
}

zi_status dit_forward_dev(DitModel *m, float *out, const float *latent, int Fr, int H, int W, float t, const void *cap,
                          int L) {
    zi_status st = ZI_OK;
    DitDims d;
    ZI_TRY(dit_prepare(m, &d, Fr, H, W, L));
    ZiBackend *be = m->be;
    ZI_TRY(be->ops->to_act(be, m->t.lat, latent, d.lat));                          /* lat [C, Fr, H, W] */
    ZI_TRY(be->ops->copy(be, m->t.cap, cap, (size_t)L * m->cfg.cap_feat_dim));     /* cap [L, Cc]     */
    ZI_TRY(dit_timestep_sinusoid(m, t));                                           /* tf [256]        */
    ZI_TRY(dit_run_replayed(m, &d));                                               /* lat: the output */
    ZI_TRY(be->ops->to_f32(be, out, m->t.lat, d.lat));                             /* out [C, Fr, H, W] f32 */
fail:
    return st;
}

zi_status dit_forward(DitModel *m, float *out, const float *latent, int Fr, int H, int W, float t, const float *cap,
                      int L) {
    zi_status st = ZI_OK;
    DitDims d;
    ZI_TRY(dit_prepare(m, &d, Fr, H, W, L));
    ZiBackend *be = m->be;
    ZI_TRY(be->ops->upload(be, m->t.lat, latent, d.lat));                         /* lat [C, Fr, H, W] */
    ZI_TRY(be->ops->upload(be, m->t.cap, cap, (size_t)L * m->cfg.cap_feat_dim));  /* cap [L, Cc]     */
    ZI_TRY(dit_timestep_sinusoid(m, t));                                           /* tf [256]        */
    ZI_TRY(dit_run(m, &d));                                              /* lat: the output */
    ZI_TRY(be->ops->download(be, out, m->t.lat, d.lat));
fail:
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* lifetime */

/* The merged GEMMs read to_q|to_k|to_v and w1|w3 as single matrices: check the block laid them out so. */
static zi_status dit_check_merged(const ZiBackend *be, const DitConfig *c, const DitBlock *b, int n) {
    size_t DD = (size_t)c->dim * c->dim, FD = (size_t)c->ffn_dim * c->dim;
    for (int i = 0; i < n; i++)
        if (b[i].to_k != zi_wt(be, b[i].to_q, DD) || b[i].to_v != zi_wt(be, b[i].to_k, DD) ||
            b[i].w3 != zi_wt(be, b[i].w1, FD))
            return zi_fail(ZI_ERR_STATE, "transformer weights: merged q|k|v or w1|w3 not adjacent in the weight block");
    return ZI_OK;
}

/* dit_modulations reads the adaLN weights and biases of all modulated blocks as one matrix and one vector */
static zi_status dit_check_adaln(const ZiBackend *be, const DitWeights *w, const DitConfig *c) {
    size_t W = (size_t)4 * c->dim * c->adaln_dim, Bn = (size_t)4 * c->dim;
    int R = c->n_refiner_layers, NM = R + c->n_layers;
    const DitBlock *b0 = R ? &w->noise_refiner[0] : &w->layers[0];
    for (int i = 1; i < NM; i++) {
        const DitBlock *b = i < R ? &w->noise_refiner[i] : &w->layers[i - R];
        if (b->adaln_w != zi_wt(be, b0->adaln_w, i * W) || b->adaln_b != zi_wt(be, b0->adaln_b, i * Bn))
            return zi_fail(ZI_ERR_STATE, "transformer weights: the adaLN projections are not one run in the weight block");
    }
    return ZI_OK;
}

static zi_status dit_load_weights(DitModel *m, int device) {
    zi_status st = ZI_OK;
    ZiWeightList wl = {0};
    ZiBackend *be = NULL;
    void *block = NULL;
    DitWeights w = {0};
    ZI_TRY(zi_backend_get(device, &be));
    ZI_TRY(dit_weight_list(&m->cfg, &w, &wl));
    ZI_TRY(zi_weights_load(be, &m->ar, &wl, NULL, &block));
    st = dit_check_merged(be, &m->cfg, w.noise_refiner, m->cfg.n_refiner_layers);
    if (st == ZI_OK) st = dit_check_merged(be, &m->cfg, w.context_refiner, m->cfg.n_refiner_layers);
    if (st == ZI_OK) st = dit_check_merged(be, &m->cfg, w.layers, m->cfg.n_layers);
    if (st == ZI_OK) st = dit_check_adaln(be, &w, &m->cfg);
    if (st != ZI_OK) {
        be->ops->free(be, block);
        goto fail;
    }
    /* success: release the old device's buffers, adopt the new ones */
    if (m->be) {
        dit_drop_graph(m);
        m->be->ops->free(m->be, m->weights);
        m->be->ops->free(m->be, m->acts);
    }
    dit_free_block_arrays(&m->w);
    m->w = w;
    m->weights = block;
    m->be = be;
    m->acts = NULL;
    m->cs_valid = 0;
    m->max_S = m->max_N = m->max_L = 0;
    m->max_lat = 0;
    zi_weights_list_free(&wl);
    return ZI_OK;
fail:
    dit_free_block_arrays(&w);
    zi_weights_list_free(&wl);
    return st;
}

/* names, shapes and dtypes of the checkpoint, without reading any weight data */
static zi_status dit_check_weights(DitModel *m) {
    zi_status st = ZI_OK;
    ZiWeightList wl = {0};
    DitWeights w = {0};
    ZI_TRY(dit_weight_list(&m->cfg, &w, &wl));
    ZI_TRY(zi_weights_check(&m->ar, &wl, NULL));
fail:
    dit_free_block_arrays(&w);
    zi_weights_list_free(&wl);
    return st;
}

zi_status dit_load(DitModel **out, const char *dir, int device) {
    zi_status st = ZI_OK;
    char path[4096];
    DitModel *m = NULL;
    *out = NULL;
    ZI_CALLOC(m, 1, sizeof *m);
    snprintf(path, sizeof path, "%s/config.json", dir);
    ZI_TRY(dit_config_load(&m->cfg, path));
    ZI_TRY(st_open_dir(&m->ar, dir, "diffusion_pytorch_model"));
    ZI_TRY(dit_build_rope(m));
    if (device == ZI_DEVICE_DEFER) ZI_TRY(dit_check_weights(m));
    else ZI_TRY(dit_load_weights(m, device));
    *out = m;
    return ZI_OK;
fail:
    dit_free(m);
    return st;
}

zi_status dit_to_device(DitModel *m, int device) {
    if (m->be && m->be->device == device) return ZI_OK;
    return dit_load_weights(m, device);
}

const DitConfig *dit_config(const DitModel *m) { return &m->cfg; }
int dit_device(const DitModel *m) { return m->be ? m->be->device : -1; }

void dit_free(DitModel *m) {
    if (!m) return;
    if (m->be) {
        dit_drop_graph(m);
        m->be->ops->free(m->be, m->weights);
        m->be->ops->free(m->be, m->acts);
    }
    free(m->cs_host);
    for (int a = 0; a < 3; a++) free(m->rope_axis[a]);
    dit_free_block_arrays(&m->w);
    st_close(&m->ar);
    free(m);
}
