/*
 * text_encoder.c - Qwen3 text encoder forward (transformers modeling_qwen3.py, Qwen3Model), one
 * unpadded sequence at a time over the ops table. Reads like the transformers decoder layer:
 *   embed_tokens -> [ input_layernorm -> q/k/v_proj -> q_norm/k_norm -> RoPE (rotate-half)
 *   -> causal GQA attention -> o_proj -> residual -> post_attention_layernorm -> SwiGLU MLP
 *   -> residual ] x layers needed -> (final norm only for hidden_states[-1]).
 * Right padding + a causal mask never lets a real token see a pad, so not padding at all
 * gives the rows the pipeline keeps (text_spec §1.5).
 *
 * Weights: the embedding table never leaves the mmapped checkpoint (the prompt's rows are
 * gathered on the host and uploaded as [S, D]); only the decoder layers the largest
 * hidden_states index asked for needs are held (te_limit_layers: the pipeline's [-2] skips the
 * last layer and the final norm), each layer at a 256-byte aligned stride. Resident: one block
 * on the backend. Offloaded (te_enable_offload): the layers in page-locked host memory, streamed
 * through two device slots by a copy queue, layer i+1 landing while layer i computes.
 *
 * Dimension letters: S tokens, D width, NH query heads, NKV key/value heads, HD head dim,
 * F MLP width, V vocabulary rows.
 */
#include "text_encoder.h"
#include "json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct TeModel {
    TeConfig cfg;
    TeWeights w;            /* embed_tokens unused (gathered from `embed`); layers >= held_layers NULL */
    ZiBackend *be;          /* where the layers run                                      */
    StArchive ar;           /* mmapped checkpoint, kept for .to(device) reloads          */
    const StTensor *embed;  /* embed_tokens [V, D] in the checkpoint (rows read per call) */
    void *weights;          /* backend block: the held layers (resident) and the final norm */
    int max_layer;          /* the largest hidden_states index to hold weights for       */
    int held_layers;        /* decoder layers held (from the first)                      */
    int held_norm;          /* the final norm is held                                    */
    size_t layer_bytes;     /* one layer's weights rounded up to 256 bytes: layer stride */
    /* offload: the held layers in host memory, streamed through two device slots          */
    int offload;
    void *host_weights;     /* ops->host_alloc: held_layers layers, layer_bytes apart    */
    void *queue;            /* ops copy queue with 2 slots                               */
    float *inv_freq;        /* [HD/2] RoPE inverse frequencies, fp32 as transformers    */
    /* activations: one allocation sized for max_S tokens                               */
    void *acts;
    int max_S;
    struct {
        void *x;            /* [S, D] residual stream                                   */
        void *h;            /* [S, D] normed input of a branch                          */
        void *q;            /* [S, NH*HD]                                               */
        void *k, *v;        /* [S, NKV*HD] each                                         */
        void *o;            /* [S, NH*HD] attention output before o_proj                */
        void *a;            /* [S, D] branch output                                     */
        void *g, *u;        /* [S, F] MLP gate and up                                   */
        float *cs;          /* [S, HD/2, 2] RoPE (cos, sin) for positions 0..S-1, fp32  */
    } t;
    int32_t *ids;           /* [max_S] host copy of the ids                             */
    void *rows;             /* [max_S, D] host: the gathered embedding rows (weight type) */
};

/* ---------------------------------------------------------------------------------------- */
/* config */

/* A string member, NULL when absent or null; a non-string is a format error. */
static zi_status te_get_str(const JsonDoc *d, const JsonNode *obj, const char *key, const char **out, const char *path) {
    const JsonNode *n = json_get(d, obj, key);
    *out = NULL;
    if (!n || n->type == JSON_NULL) return ZI_OK;
    if (n->type != JSON_STRING) return zi_fail(ZI_ERR_FORMAT, "%s: \"%s\" must be a string", path, key);
    *out = n->str;
    return ZI_OK;
}

/* RoPE settings: transformers-4 layout (top-level rope_theta, rope_scaling null) or
   transformers-5 layout (rope_parameters {rope_type, rope_theta}); only the default type. */
static zi_status te_config_rope(TeConfig *cfg, const JsonDoc *doc, const JsonNode *r, const char *path) {
    zi_status st = ZI_OK;
    double theta;
    const char *type = NULL;
    ZI_TRY(json_get_double(doc, r, "rope_theta", 10000.0, &theta, path));
    const char *keys[] = {"rope_scaling", "rope_parameters"};
    for (int i = 0; i < 2; i++) {
        const JsonNode *rp = json_get(doc, r, keys[i]);
        if (!rp || rp->type == JSON_NULL) continue;
        if (rp->type != JSON_OBJECT) {
            st = zi_fail(ZI_ERR_FORMAT, "%s: \"%s\" must be an object or null", path, keys[i]);
            goto fail;
        }
        ZI_TRY(te_get_str(doc, rp, "rope_type", &type, path));
        if (!type) ZI_TRY(te_get_str(doc, rp, "type", &type, path));
        if (type && strcmp(type, "default") != 0) {
            st = zi_fail(ZI_ERR_FORMAT, "%s: %s.rope_type \"%s\" is not supported (only the default RoPE)", path, keys[i], type);
            goto fail;
        }
        ZI_TRY(json_get_double(doc, rp, "rope_theta", theta, &theta, path));
    }
    if (!(theta > 0.0) || !isfinite(theta)) { st = zi_fail(ZI_ERR_FORMAT, "%s: rope_theta must be positive", path); goto fail; }
    cfg->rope_theta = theta;
fail:
    return st;
}

zi_status te_config_load(TeConfig *cfg, const char *path) {
    zi_status st = ZI_OK;
    JsonDoc doc = {0};
    int64_t v, max_window_layers;
    double d;
    int sliding;
    const char *s;
    memset(cfg, 0, sizeof *cfg);
    ZI_TRY(json_parse_file(&doc, path));
    const JsonNode *r = json_root(&doc);
    if (r->type != JSON_OBJECT) { st = zi_fail(ZI_ERR_FORMAT, "%s: not a JSON object", path); goto fail; }
    ZI_TRY(te_get_str(&doc, r, "model_type", &s, path));
    if (s && strcmp(s, "qwen3") != 0) { st = zi_fail(ZI_ERR_FORMAT, "%s: model_type \"%s\" is not qwen3", path, s); goto fail; }
#define GETI(key, field, dflt) ZI_TRY(json_get_int(&doc, r, key, dflt, &v, path)); cfg->field = (int)(v > (1 << 30) ? -1 : v)
    GETI("vocab_size", vocab_size, 151936);
    GETI("hidden_size", hidden_size, 4096);
    GETI("intermediate_size", intermediate_size, 22016);
    GETI("num_hidden_layers", n_layers, 32);
    GETI("num_attention_heads", n_heads, 32);
    GETI("num_key_value_heads", n_kv_heads, 32);
    GETI("head_dim", head_dim, 128);
#undef GETI
    /* an explicit null means "derive": num_attention_heads, and hidden_size / heads (modeling_qwen3) */
    const JsonNode *nul = json_get(&doc, r, "num_key_value_heads");
    if (nul && nul->type == JSON_NULL) cfg->n_kv_heads = cfg->n_heads;
    nul = json_get(&doc, r, "head_dim");
    if (nul && nul->type == JSON_NULL && cfg->n_heads > 0) cfg->head_dim = cfg->hidden_size / cfg->n_heads;
    ZI_TRY(json_get_double(&doc, r, "rms_norm_eps", 1e-6, &d, path)); cfg->rms_norm_eps = d;
    ZI_TRY(json_get_bool(&doc, r, "attention_bias", 0, &cfg->attention_bias, path));
    ZI_TRY(te_config_rope(cfg, &doc, r, path));
    ZI_TRY(te_get_str(&doc, r, "hidden_act", &s, path));
    if (s && strcmp(s, "silu") != 0) {
        st = zi_fail(ZI_ERR_FORMAT, "%s: hidden_act \"%s\" is not supported (only silu)", path, s);
        goto fail;
    }

    /* sliding-window layers (never in Qwen3-4B) would change the mask: reject them */
    ZI_TRY(json_get_bool(&doc, r, "use_sliding_window", 0, &sliding, path));
    ZI_TRY(json_get_int(&doc, r, "max_window_layers", 28, &max_window_layers, path));
    const JsonNode *sw = json_get(&doc, r, "sliding_window");
    if (sliding && sw && sw->type != JSON_NULL && max_window_layers < cfg->n_layers) {
        st = zi_fail(ZI_ERR_FORMAT, "%s: sliding-window attention (use_sliding_window) is not supported", path);
        goto fail;
    }
    const JsonNode *lt = json_get(&doc, r, "layer_types");
    if (lt && lt->type == JSON_ARRAY) {
        for (const JsonNode *e = json_first(&doc, lt); e; e = json_next(&doc, e))
            if (e->type != JSON_STRING || strcmp(e->str, "full_attention") != 0) {
                st = zi_fail(ZI_ERR_FORMAT, "%s: layer_types may only contain \"full_attention\"", path);
                goto fail;
            }
    }

    if (cfg->vocab_size <= 0 || cfg->hidden_size <= 0 || cfg->intermediate_size <= 0 || cfg->n_layers <= 0 ||
        cfg->n_heads <= 0 || cfg->n_kv_heads <= 0 || cfg->head_dim <= 0 || cfg->head_dim % 2 ||
        cfg->n_heads % cfg->n_kv_heads || cfg->hidden_size > 1 << 20 || cfg->intermediate_size > 1 << 22 ||
        cfg->head_dim > 1 << 12 || (int64_t)cfg->n_heads * cfg->head_dim > 1 << 22 || cfg->n_layers > 1 << 12 ||
        !(cfg->rms_norm_eps >= 0.0)) {
        st = zi_fail(ZI_ERR_FORMAT,
                     "%s: inconsistent sizes (vocab_size %d, hidden_size %d, intermediate_size %d, num_hidden_layers %d, "
                     "num_attention_heads %d, num_key_value_heads %d, head_dim %d, rms_norm_eps %g)",
                     path, cfg->vocab_size, cfg->hidden_size, cfg->intermediate_size, cfg->n_layers, cfg->n_heads,
                     cfg->n_kv_heads, cfg->head_dim, cfg->rms_norm_eps);
        goto fail;
    }
fail:
    json_free(&doc);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* weights: the transformers state-dict names (checkpoint keys minus "model."), in module order */

/* decoder layer i's tensors, in state-dict order (contiguous in every weight block) */
static zi_status te_layer_specs(const TeConfig *c, TeLayer *l, int i, ZiWeightList *wl) {
    zi_status st = ZI_OK;
    int64_t D = c->hidden_size, F = c->intermediate_size;
    int64_t QD = (int64_t)c->n_heads * c->head_dim, KD = (int64_t)c->n_kv_heads * c->head_dim, HD = c->head_dim;
    ZI_TRY(ZI_W2(wl, &l->q_proj, QD, D, "layers.%d.self_attn.q_proj.weight", i));
    if (c->attention_bias) ZI_TRY(ZI_W1(wl, &l->q_bias, QD, "layers.%d.self_attn.q_proj.bias", i));
    ZI_TRY(ZI_W2(wl, &l->k_proj, KD, D, "layers.%d.self_attn.k_proj.weight", i));
    if (c->attention_bias) ZI_TRY(ZI_W1(wl, &l->k_bias, KD, "layers.%d.self_attn.k_proj.bias", i));
    ZI_TRY(ZI_W2(wl, &l->v_proj, KD, D, "layers.%d.self_attn.v_proj.weight", i));
    if (c->attention_bias) ZI_TRY(ZI_W1(wl, &l->v_bias, KD, "layers.%d.self_attn.v_proj.bias", i));
    ZI_TRY(ZI_W2(wl, &l->o_proj, D, QD, "layers.%d.self_attn.o_proj.weight", i));
    if (c->attention_bias) ZI_TRY(ZI_W1(wl, &l->o_bias, D, "layers.%d.self_attn.o_proj.bias", i));
    ZI_TRY(ZI_W1(wl, &l->q_norm, HD, "layers.%d.self_attn.q_norm.weight", i));
    ZI_TRY(ZI_W1(wl, &l->k_norm, HD, "layers.%d.self_attn.k_norm.weight", i));
    ZI_TRY(ZI_W2(wl, &l->gate_proj, F, D, "layers.%d.mlp.gate_proj.weight", i));
    ZI_TRY(ZI_W2(wl, &l->up_proj, F, D, "layers.%d.mlp.up_proj.weight", i));
    ZI_TRY(ZI_W2(wl, &l->down_proj, D, F, "layers.%d.mlp.down_proj.weight", i));
    ZI_TRY(ZI_W1(wl, &l->input_layernorm, D, "layers.%d.input_layernorm.weight", i));
    ZI_TRY(ZI_W1(wl, &l->post_attention_layernorm, D, "layers.%d.post_attention_layernorm.weight", i));
fail:
    return st;
}

zi_status te_weight_list(const TeConfig *c, TeWeights *w, ZiWeightList *wl) {
    zi_status st = ZI_OK;
    ZI_CALLOC(w->layers, (size_t)c->n_layers, sizeof(TeLayer));
    ZI_TRY(ZI_W2(wl, &w->embed_tokens, c->vocab_size, c->hidden_size, "embed_tokens.weight"));
    for (int i = 0; i < c->n_layers; i++) ZI_TRY(te_layer_specs(c, &w->layers[i], i, wl));
    ZI_TRY(ZI_W1(wl, &w->norm, c->hidden_size, "norm.weight"));
fail:
    return st;
}

void te_weights_free_arrays(TeWeights *w) {
    free(w->layers);
    w->layers = NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* RoPE: inv_freq as transformers computes it, 1 / fl32(theta ** fl32(2i / HD)) in fp32 */

/* torch's fp32 pow is not correctly rounded; for the real checkpoint (theta 1e6, HD 128) these are
   its exact results (text_spec §3.4; the double formula below misses entry 37 by one ulp). */
static const uint32_t te_inv_freq_1e6_128[64] = {
    0x3f800000, 0x3f4e4bad, 0x3f263de0, 0x3f05f6ef, 0x3ed7e89b, 0x3eadfcff, 0x3e8c3504, 0x3e61f835, 0x3e361887,
    0x3e12bd91, 0x3dec7fd6, 0x3dbe94c6, 0x3d99940d, 0x3d778513, 0x3d47763f, 0x3d20bc1d, 0x3d0186e3, 0x3cd0c1a8,
    0x3ca8398b, 0x3c879008, 0x3c5a7bf2, 0x3c301052, 0x3c0de12d, 0x3be4aa46, 0x3bb8449c, 0x3b947dae, 0x3b6f520e,
    0x3b40dac5, 0x3b1b690d, 0x3afa78f0, 0x3ac9d75c, 0x3aa2a6f7, 0x3a83126f, 0x3a533f28, 0x3a2a3b44, 0x3a092e02,
    0x39dd1725, 0x39b229fb, 0x398f9272, 0x39676492, 0x393a7753, 0x39164324, 0x38f22ce2, 0x38c327b5, 0x389d43a4,
    0x387d75d4, 0x384c3fbe, 0x382497ab, 0x3804a2b2, 0x37d5c441, 0x37ac431d, 0x378ad0ed, 0x375fba4f, 0x37344a0e,
    0x371148e3, 0x36ea2732, 0x36bcb0c1, 0x36980e02, 0x36751070, 0x36457bab, 0x361f23e4, 0x36003dec, 0x35ceaf79,
    0x35a68e4c,
};

static zi_status te_build_inv_freq(TeModel *m) {
    zi_status st = ZI_OK;
    int HD = m->cfg.head_dim, half = HD / 2;
    float base = (float)m->cfg.rope_theta;  /* torch turns the Python scalar into an fp32 operand */
    ZI_MALLOC(m->inv_freq, (size_t)half * sizeof(float));
    if (HD == 128 && m->cfg.rope_theta == 1e6) {
        memcpy(m->inv_freq, te_inv_freq_1e6_128, sizeof te_inv_freq_1e6_128);
        return ZI_OK;
    }
    for (int i = 0; i < half; i++) {
        float e = (float)(2 * i) / (float)HD;              /* arange(0, HD, 2).float() / HD */
        float p = (float)pow((double)base, (double)e);     /* base ** e, rounded to fp32    */
        m->inv_freq[i] = 1.0f / p;
    }
fail:
    return st;
}

/* cs[S, HD/2, 2]: angle = fl32(pos * inv_freq[j]); (cos, sin) rounded once to fp32 */
static void te_fill_rope(const TeModel *m, float *cs, int S) {
    int half = m->cfg.head_dim / 2;
    for (int p = 0; p < S; p++)
        for (int j = 0; j < half; j++) {
            float angle = (float)p * m->inv_freq[j];
            cs[((size_t)p * half + j) * 2 + 0] = (float)cos((double)angle);
            cs[((size_t)p * half + j) * 2 + 1] = (float)sin((double)angle);
        }
}

/* ---------------------------------------------------------------------------------------- */
/* activations: one allocation, carved by byte offsets (the fp32 RoPE table and backend elements) */

static zi_status te_ensure_acts(TeModel *m, int S) {
    if (m->acts && S <= m->max_S) return ZI_OK;
    zi_status st = ZI_OK;
    ZiBackend *be = m->be;
    const TeConfig *c = &m->cfg;
    float *cs_host = NULL;
    if (S < m->max_S) S = m->max_S;
    size_t D = (size_t)c->hidden_size, F = (size_t)c->intermediate_size;
    size_t QD = (size_t)c->n_heads * c->head_dim, KD = (size_t)c->n_kv_heads * c->head_dim;
    size_t e = be->act_size, N = (size_t)S;
    struct { void **slot; size_t bytes; } spec[] = {
        {&m->t.x, N * D * e},  {&m->t.h, N * D * e},  {&m->t.q, N * QD * e},
        {&m->t.k, N * KD * e}, {&m->t.v, N * KD * e}, {&m->t.o, N * QD * e},
        {&m->t.a, N * D * e},  {&m->t.g, N * F * e},  {&m->t.u, N * F * e},
        {(void **)&m->t.cs, N * (size_t)c->head_dim * sizeof(float)},
    };
    size_t total = 0, n = sizeof spec / sizeof spec[0];
    for (size_t i = 0; i < n; i++) total += (spec[i].bytes + 255) & ~(size_t)255;
    be->ops->free(be, m->acts);
    m->acts = NULL;
    m->max_S = 0;
    free(m->ids);
    m->ids = NULL;
    free(m->rows);
    m->rows = NULL;
    ZI_TRY(be->ops->alloc(be, &m->acts, total));
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        *spec[i].slot = (char *)m->acts + off;
        off += (spec[i].bytes + 255) & ~(size_t)255;
    }
    ZI_MALLOC(m->ids, N * sizeof(int32_t));
    ZI_MALLOC(m->rows, N * D * be->weight_size);
    ZI_MALLOC(cs_host, N * (size_t)c->head_dim * sizeof(float));
    te_fill_rope(m, cs_host, S);
    ZI_TRY(be->ops->upload_f32(be, m->t.cs, cs_host, N * (size_t)c->head_dim)); /* cs [S, HD/2, 2] */
    free(cs_host);
    m->max_S = S;
    return ZI_OK;
fail:
    free(cs_host);
    be->ops->free(be, m->acts);
    m->acts = NULL;
    m->max_S = 0;
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* forward */

/* Qwen3Attention on h = m->t.h [S, D] -> m->t.a [S, D] */
static zi_status te_attention(TeModel *m, const TeLayer *l, int S) {
    zi_status st = ZI_OK;
    ZiBackend *be = m->be;
    const ZiOps *op = be->ops;
    const TeConfig *c = &m->cfg;
    int D = c->hidden_size, NH = c->n_heads, NKV = c->n_kv_heads, HD = c->head_dim;
    float eps = (float)c->rms_norm_eps, scale = (float)(1.0 / sqrt((double)HD));
    ZI_TRY(op->matmul(be, m->t.q, m->t.h, l->q_proj, l->q_bias, S, D, NH * HD));   /* q [S, NH*HD]     */
    ZI_TRY(op->matmul(be, m->t.k, m->t.h, l->k_proj, l->k_bias, S, D, NKV * HD));  /* k [S, NKV*HD]    */
    ZI_TRY(op->matmul(be, m->t.v, m->t.h, l->v_proj, l->v_bias, S, D, NKV * HD));  /* v [S, NKV*HD]    */
    ZI_TRY(op->rmsnorm(be, m->t.q, m->t.q, l->q_norm, S * NH, HD, eps));           /* q [S*NH, HD]     */
    ZI_TRY(op->rmsnorm(be, m->t.k, m->t.k, l->k_norm, S * NKV, HD, eps));          /* k [S*NKV, HD]    */
    ZI_TRY(op->rope(be, m->t.q, m->t.cs, S, NH, HD, 0));                           /* q [S, NH, HD]    */
    ZI_TRY(op->rope(be, m->t.k, m->t.cs, S, NKV, HD, 0));                          /* k [S, NKV, HD]   */
    ZI_TRY(op->attention(be, m->t.o, m->t.q, m->t.k, m->t.v, 0, S, NH, NKV, HD, 1, scale)); /* o [S, NH*HD] */
    ZI_TRY(op->matmul(be, m->t.a, m->t.o, l->o_proj, l->o_bias, S, NH * HD, D));   /* a [S, D]         */
fail:
    return st;
}

/* Qwen3MLP: down(silu(gate h) * up h), h = m->t.h [S, D] -> m->t.a [S, D] */
static zi_status te_mlp(TeModel *m, const TeLayer *l, int S) {
    zi_status st = ZI_OK;
    ZiBackend *be = m->be;
    const ZiOps *op = be->ops;
    int D = m->cfg.hidden_size, F = m->cfg.intermediate_size;
    ZI_TRY(op->matmul(be, m->t.g, m->t.h, l->gate_proj, NULL, S, D, F));           /* g [S, F]         */
    ZI_TRY(op->matmul(be, m->t.u, m->t.h, l->up_proj, NULL, S, D, F));             /* u [S, F]         */
    ZI_TRY(op->swiglu(be, m->t.g, m->t.g, m->t.u, (size_t)S * F));                 /* g = silu(g) * u  */
    ZI_TRY(op->matmul(be, m->t.a, m->t.g, l->down_proj, NULL, S, F, D));           /* a [S, D]         */
fail:
    return st;
}

/* Qwen3DecoderLayer on x = m->t.x [S, D] in place */
static zi_status te_layer_forward(TeModel *m, const TeLayer *l, int S) {
    zi_status st = ZI_OK;
    ZiBackend *be = m->be;
    const ZiOps *op = be->ops;
    int D = m->cfg.hidden_size;
    float eps = (float)m->cfg.rms_norm_eps;
    size_t n = (size_t)S * D;
    ZI_TRY(op->rmsnorm(be, m->t.h, m->t.x, l->input_layernorm, S, D, eps));          /* h [S, D]         */
    ZI_TRY(te_attention(m, l, S));                                                   /* a [S, D]         */
    ZI_TRY(op->add(be, m->t.x, m->t.x, m->t.a, n));                                  /* x += a           */
    ZI_TRY(op->rmsnorm(be, m->t.h, m->t.x, l->post_attention_layernorm, S, D, eps)); /* h [S, D]         */
    ZI_TRY(te_mlp(m, l, S));                                                         /* a [S, D]         */
    ZI_TRY(op->add(be, m->t.x, m->t.x, m->t.a, n));                                  /* x += a           */
fail:
    return st;
}

/* x [S, D] = embed_tokens[ids]: the rows read from the mmapped checkpoint, converted on the host as
   the weights are, uploaded in one copy (the table itself never goes to the backend) */
static zi_status te_embed(TeModel *m, int S) {
    zi_status st = ZI_OK;
    ZiBackend *be = m->be;
    const StTensor *t = m->embed;
    size_t D = (size_t)m->cfg.hidden_size, row = D * st_dtype_size(t->dtype), e = be->weight_size;
    for (int i = 0; i < S; i++)
        ZI_TRY(be->ops->weight_to_host(be, (char *)m->rows + i * D * e, (const char *)t->data + m->ids[i] * row,
                                       t->dtype, D));                                  /* rows [S, D]      */
    ZI_TRY(be->ops->upload_bytes(be, m->t.x, m->rows, (size_t)S * D * e));           /* x [S, D]         */
fail:
    return st;
}

/* layer i's weights as they are read from a copy of its host bytes [from, from + layer_bytes) at `to` */
static void te_layer_rebase(TeLayer *dst, const TeLayer *src, const char *from, char *to) {
#define TE_REBASE(f) dst->f = src->f ? to + ((const char *)src->f - from) : NULL
    TE_REBASE(q_proj), TE_REBASE(k_proj), TE_REBASE(v_proj), TE_REBASE(o_proj);
    TE_REBASE(q_bias), TE_REBASE(k_bias), TE_REBASE(v_bias), TE_REBASE(o_bias);
    TE_REBASE(q_norm), TE_REBASE(k_norm);
    TE_REBASE(gate_proj), TE_REBASE(up_proj), TE_REBASE(down_proj);
    TE_REBASE(input_layernorm), TE_REBASE(post_attention_layernorm);
#undef TE_REBASE
}

/* Offloaded: layers 0..run-1 on x [S, D], each copied from host memory into one of two device
   slots on the copy queue. Layer i+2's copy into slot i%2 is queued right after layer i's compute
   and waits for it (queue_release), layer i waits for its own copy (queue_acquire): the host queues
   everything at once, the copy of layer i+1 overlaps the compute of layer i. The slots are
   allocated per call, so they take no device memory while the DiT and the VAE run. */
static zi_status te_run_streamed(TeModel *m, int S, int run) {
    zi_status st = ZI_OK;
    ZiBackend *be = m->be;
    const ZiOps *op = be->ops;
    size_t lb = m->layer_bytes;
    char *slots = NULL, *host = m->host_weights;
    ZI_TRY(op->alloc(be, (void **)&slots, 2 * lb));                                 /* slots [2][lb]    */
    for (int i = 0; i < 2; i++) ZI_TRY(op->queue_release(be, m->queue, i)); /* the copies land after the zero fill */
    for (int i = 0; i < 2 && i < run; i++) ZI_TRY(op->queue_copy(be, m->queue, i, slots + i * lb, host + i * lb, lb));
    for (int i = 0; i < run; i++) {
        int s = i & 1;
        TeLayer l;
        if (zi_interrupt_requested()) { st = zi_fail(ZI_ERR_INTERRUPTED, "interrupted"); goto fail; }
        te_layer_rebase(&l, &m->w.layers[i], host + i * lb, slots + s * lb);
        ZI_TRY(op->queue_acquire(be, m->queue, s));                                  /* layer i landed   */
        ZI_TRY(te_layer_forward(m, &l, S));                                          /* x [S, D]         */
        ZI_TRY(op->queue_release(be, m->queue, s));                                  /* slot s read      */
        if (i + 2 < run) ZI_TRY(op->queue_copy(be, m->queue, s, slots + s * lb, host + (i + 2) * lb, lb));
    }
    ZI_TRY(op->synchronize(be)); /* every queued copy was acquired: once compute is done, the slots are idle */
fail:
    op->free(be, slots); /* after a failure, copies may still be in flight: a CUDA free waits for the device */
    return st;
}

static zi_status te_place(TeModel *m, int device, int offload);

zi_status te_encode(TeModel *m, float *out, const int64_t *ids, int S, int layer) {
    zi_status st = ZI_OK;
    if (!m->be) ZI_TRY(te_place(m, -1, 0)); /* deferred at load: the CPU, now */
    const TeConfig *c = &m->cfg;
    int D = c->hidden_size, NL = c->n_layers;
    float eps = (float)c->rms_norm_eps;
    if (S <= 0) return zi_fail(ZI_ERR_ARG, "input_ids is empty: at least one token is needed");
    if ((int64_t)S * c->n_heads > INT32_MAX)  /* ops index rows with int: S*NH rows for q_norm */
        return zi_fail(ZI_ERR_ARG, "input_ids of %d tokens is too long", S);
    if (layer < -(NL + 1) || layer > NL)
        return zi_fail(ZI_ERR_ARG, "layer %d out of range: hidden_states has %d entries (valid: %d..%d)", layer, NL + 1,
                       -(NL + 1), NL);
    if (layer < 0) layer += NL + 1;
    for (int i = 0; i < S; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return zi_fail(ZI_ERR_ARG, "input_ids[%d] = %lld is out of range for vocab_size %d", i, (long long)ids[i],
                           c->vocab_size);
    int run = layer < NL ? layer : NL;  /* hidden_states[j] is the output of layer j-1 */
    if (run > m->held_layers || (layer == NL && !m->held_norm)) {
        /* asked for more than te_limit_layers kept: hold every layer from now on */
        m->max_layer = NL;
        ZI_TRY(te_place(m, m->be->device, m->offload));
    }
    ZiBackend *be = m->be;
    const ZiOps *op = be->ops;
    const TeWeights *w = &m->w;
    ZI_TRY(te_ensure_acts(m, S));
    for (int i = 0; i < S; i++) m->ids[i] = (int32_t)ids[i];

    ZI_TRY(te_embed(m, S));                                                          /* x [S, D]         */
    if (m->offload && run > 0) {
        ZI_TRY(te_run_streamed(m, S, run));                                          /* x [S, D]         */
    } else {
        for (int i = 0; i < run; i++) {
            if (zi_interrupt_requested()) { st = zi_fail(ZI_ERR_INTERRUPTED, "interrupted"); goto fail; }
            ZI_TRY(te_layer_forward(m, &w->layers[i], S));                           /* x [S, D]         */
        }
    }
    if (layer == NL) {
        ZI_TRY(op->rmsnorm(be, m->t.h, m->t.x, w->norm, S, D, eps));                 /* h [S, D]         */
        ZI_TRY(op->download(be, out, m->t.h, (size_t)S * D));
    } else {
        ZI_TRY(op->download(be, out, m->t.x, (size_t)S * D));
    }
fail:
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* lifetime */

static size_t align256(size_t bytes) { return (bytes + 255) & ~(size_t)255; }

/* names, shapes and dtypes of the checkpoint, without reading any weight data */
static zi_status te_check_weights(TeModel *m) {
    zi_status st = ZI_OK;
    ZiWeightList wl = {0};
    TeWeights w = {0};
    ZI_TRY(te_weight_list(&m->cfg, &w, &wl));
    ZI_TRY(zi_weights_check(&m->ar, &wl, "model."));
    m->embed = zi_weights_find(&m->ar, &wl.specs[0], "model.");                      /* embed_tokens     */
fail:
    te_weights_free_arrays(&w);
    zi_weights_list_free(&wl);
    return st;
}

/* layer i's tensors from the checkpoint into dst (backend memory, or host memory when host) */
static zi_status te_fill_layer(TeModel *m, ZiBackend *be, TeLayer *l, int i, char *dst, int host) {
    zi_status st = ZI_OK;
    ZiWeightList wl = {0};
    ZI_TRY(te_layer_specs(&m->cfg, l, i, &wl));
    ZI_TRY(zi_weights_fill(be, &m->ar, &wl, "model.", dst, host));
fail:
    zi_weights_list_free(&wl);
    return st;
}

/* a cold checkpoint: start reading layer i's tensors while the one before is copied */
static zi_status te_prefetch_layer(TeModel *m, int i) {
    zi_status st = ZI_OK;
    ZiWeightList wl = {0};
    TeLayer l = {0};
    ZI_TRY(te_layer_specs(&m->cfg, &l, i, &wl));
    for (int k = 0; k < wl.n; k++) {
        const StTensor *t = zi_weights_find(&m->ar, &wl.specs[k], "model.");
        zi_prefetch(t->data, t->nbytes);
    }
fail:
    zi_weights_list_free(&wl);
    return st;
}

/* the model's buffers on its current backend (weights, host weights, queue, activations) */
static void te_release(TeModel *m) {
    if (m->be) {
        m->be->ops->queue_destroy(m->be, m->queue);   /* first: its copies read the host weights */
        m->be->ops->host_free(m->be, m->host_weights);
        m->be->ops->free(m->be, m->weights);
        m->be->ops->free(m->be, m->acts);
    }
    m->queue = m->host_weights = m->weights = m->acts = NULL;
    m->max_S = 0;
    m->held_layers = m->held_norm = 0;
    te_weights_free_arrays(&m->w);
}

/* Read the held layers (and the final norm) for `device`: one block on its backend, or, offloaded,
   the layers in host memory with a copy queue and only the norm on the backend. Layer i sits at
   i * layer_bytes in either block, so a slot and the resident block align every tensor alike. */
static zi_status te_place(TeModel *m, int device, int offload) {
    zi_status st = ZI_OK;
    ZiBackend *be = NULL;
    ZiWeightList wl = {0};
    TeWeights w = {0};
    TeLayer probe = {0};
    void *block = NULL, *host = NULL, *queue = NULL;
    const TeConfig *c = &m->cfg;
    int NL = c->n_layers, keep = m->max_layer < NL ? m->max_layer : NL, norm = m->max_layer >= NL;
    ZI_TRY(zi_backend_get(device, &be));
    if (be->act_size != be->weight_size)  /* the gathered rows are weights used as activations */
        return zi_fail(ZI_ERR_STATE, "%s stores activations and weights differently", be->name);
    ZI_TRY(te_check_weights(m));
    ZI_TRY(te_layer_specs(c, &probe, 0, &wl));
    size_t lb = align256(wl.total * be->weight_size), nb = (size_t)c->hidden_size * be->weight_size;
    zi_weights_list_free(&wl);
    size_t dev_bytes = (offload ? 0 : keep * lb) + (norm ? nb : 0);
    ZI_CALLOC(w.layers, (size_t)NL, sizeof(TeLayer));
    if (dev_bytes) ZI_TRY(be->ops->alloc(be, &block, dev_bytes));
    if (offload) {
        ZI_TRY(be->ops->host_alloc(be, &host, keep * lb));
        ZI_TRY(be->ops->queue_create(be, &queue, 2));
    }
    for (int i = 0; i < keep; i++) {
        if (i + 1 < keep) ZI_TRY(te_prefetch_layer(m, i + 1));
        ZI_TRY(te_fill_layer(m, be, &w.layers[i], i, (char *)(offload ? host : block) + i * lb, offload));
    }
    if (norm) {
        ZI_TRY(ZI_W1(&wl, &w.norm, c->hidden_size, "norm.weight"));
        const StTensor *t = zi_weights_find(&m->ar, &wl.specs[0], "model.");
        w.norm = (char *)block + (offload ? 0 : keep * lb);
        ZI_TRY(be->ops->upload_weight(be, w.norm, t->data, t->dtype, (size_t)t->numel)); /* norm [D]   */
    }
    /* success: release the old device's buffers, adopt the new ones */
    te_release(m);
    m->w = w;
    m->weights = block;
    m->host_weights = host;
    m->queue = queue;
    m->be = be;
    m->offload = offload;
    m->held_layers = keep;
    m->held_norm = norm;
    m->layer_bytes = lb;
    zi_weights_list_free(&wl);
    return ZI_OK;
fail:
    if (be) {
        be->ops->queue_destroy(be, queue);
        be->ops->host_free(be, host);
        be->ops->free(be, block);
    }
    te_weights_free_arrays(&w);
    zi_weights_list_free(&wl);
    return st;
}

zi_status te_load(TeModel **out, const char *dir, int device) {
    zi_status st = ZI_OK;
    char path[4096];
    TeModel *m = NULL;
    *out = NULL;
    ZI_CALLOC(m, 1, sizeof *m);
    snprintf(path, sizeof path, "%s/config.json", dir);
    ZI_TRY(te_config_load(&m->cfg, path));
    m->max_layer = m->cfg.n_layers;
    ZI_TRY(st_open_dir(&m->ar, dir, "model"));
    ZI_TRY(te_build_inv_freq(m));
    if (device == ZI_DEVICE_DEFER) ZI_TRY(te_check_weights(m));
    else ZI_TRY(te_place(m, device, 0));
    *out = m;
    return ZI_OK;
fail:
    te_free(m);
    return st;
}

zi_status te_to_device(TeModel *m, int device) {
    if (m->be && m->be->device == device && !m->offload) return ZI_OK;
    return te_place(m, device, 0);
}

zi_status te_enable_offload(TeModel *m, int device) {
    if (m->be && m->be->device == device && m->offload) return ZI_OK;
    return te_place(m, device, 1);
}

int te_offloaded(const TeModel *m) { return m->offload; }

zi_status te_limit_layers(TeModel *m, int layer) {
    int NL = m->cfg.n_layers;
    if (layer < -(NL + 1) || layer > NL)
        return zi_fail(ZI_ERR_ARG, "layer %d out of range: hidden_states has %d entries (valid: %d..%d)", layer, NL + 1,
                       -(NL + 1), NL);
    m->max_layer = layer < 0 ? layer + NL + 1 : layer;
    return ZI_OK;
}

const TeConfig *te_config(const TeModel *m) { return &m->cfg; }
int te_device(const TeModel *m) { return m->be ? m->be->device : -1; }

void te_free(TeModel *m) {
    if (!m) return;
    te_release(m);
    free(m->ids);
    free(m->rows);
    free(m->inv_freq);
    st_close(&m->ar);
    free(m);
}
