/*
 * vae.c - the AutoencoderKL decoder (diffusers autoencoder_kl.py + vae.py Decoder), one sample
 * at a time over the ops table. Reads top to bottom like the diffusers module:
 *   [post_quant_conv] -> conv_in -> mid block (ResNet, single-head attention, ResNet)
 *   -> NB up blocks (layers_per_block + 1 ResNets, then nearest-2x + 3x3 conv except the last)
 *   -> GroupNorm + SiLU -> conv_out
 * Every GroupNorm has G groups and eps 1e-6 (hard-coded in diffusers). Also the uint8
 * postprocessing of VaeImageProcessor on host arrays (the CPU backend's image_to_uint8).
 * Offloaded (vae_enable_offload), the weights live in page-locked host memory and visit the
 * backend whole for each decode call; the weights and the activations are freed after it.
 *
 * Dimension letters: L latent channels, C0 widest channels (block_out_channels[-1]), ci/co a
 * ResNet's channels in/out, H, W the current resolution, HW = H*W, N = tokens of the attention.
 */
#include "vae.h"
#include "json.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VAE_EPS 1e-6f
#define VAE_NACTS 10        /* buffers in VaeModel.t */

struct VaeModel {
    VaeConfig cfg;
    VaeWeights w;
    ZiBackend *be;
    StArchive ar;           /* mmapped checkpoint, kept for .to(device) reloads          */
    void *weights;          /* the one weight allocation (offloaded: only during a decode) */
    int offload;            /* weights in host_weights, visiting the backend per decode  */
    size_t weight_elems;    /* elements of the weight block                              */
    void *host_weights;     /* ops->host_alloc block packed as `weights`; w points here
                               between decodes                                           */
    VaeTiling tiling;       /* enable_tiling state                                      */
    /* activations: one allocation sized for the largest stage seen so far               */
    void *acts;
    size_t cap[VAE_NACTS];      /* elements per buffer below, in this order                  */
    struct {
        void *x;            /* residual stream: block inputs/outputs (swaps with h)       */
        void *h;            /* shortcut / upsample conv outputs, GroupNorm out, q         */
        void *y;            /* conv1 outputs, attention tokens / output, image (or tile)  */
        void *k, *v;        /* attention keys / values [N, C0]                            */
        void *z;            /* latent sample [L, h, w]                                    */
        void *zq;           /* post_quant_conv output [L, h, w] (of the tile when tiled)  */
        void *zt;           /* tiled: the latent tile [L, th, tw]                         */
        void *sv;           /* tiled: bottom blend rows of a row of tiles [NT][Co, e, TW]  */
        void *sh;           /* tiled: right blend columns of the last tile [Co, TH, e]     */
    } t;
};

/* channels of the decoder's up block i: in (from the previous block) and out */
static int vae_block_out(const VaeConfig *c, int i) { return c->block_out_channels[c->n_blocks - 1 - i]; }
static int vae_block_in(const VaeConfig *c, int i) { return vae_block_out(c, i > 0 ? i - 1 : 0); }

/* ---------------------------------------------------------------------------------------- */
/* config */

/* list of strings `key` must be absent or hold n copies of `want` */
static zi_status vae_check_block_types(const JsonDoc *doc, const JsonNode *r, const char *key, const char *want,
                                       int n, const char *path) {
    const JsonNode *a = json_get(doc, r, key);
    if (!a || a->type == JSON_NULL) {
        if (n != 1) return zi_fail(ZI_ERR_FORMAT, "%s: \"%s\" is missing (diffusers' default has 1 block, "
                                                  "block_out_channels has %d)", path, key, n);
        return ZI_OK;
    }
    if (a->type != JSON_ARRAY) return zi_fail(ZI_ERR_FORMAT, "%s: \"%s\" must be a list", path, key);
    if (a->count != n)
        return zi_fail(ZI_ERR_FORMAT, "%s: \"%s\" has %d entries but block_out_channels has %d", path, key,
                       a->count, n);
    for (const JsonNode *e = json_first(doc, a); e; e = json_next(doc, e))
        if (e->type != JSON_STRING || strcmp(e->str, want) != 0)
            return zi_fail(ZI_ERR_FORMAT, "%s: \"%s\" entries must be \"%s\" (the only block type supported)", path,
                           key, want);
    return ZI_OK;
}

zi_status vae_config_load(VaeConfig *cfg, const char *path) {
    zi_status st = ZI_OK;
    JsonDoc doc = {0};
    int64_t v, arr[VAE_MAX_BLOCKS];
    int n;
    double d;
    memset(cfg, 0, sizeof *cfg);
    ZI_TRY(json_parse_file(&doc, path));
    const JsonNode *r = json_root(&doc);
    if (r->type != JSON_OBJECT) { st = zi_fail(ZI_ERR_FORMAT, "%s: not a JSON object", path); goto fail; }
#define GETI(key, field, dflt) ZI_TRY(json_get_int(&doc, r, key, dflt, &v, path)); cfg->field = (int)v
    GETI("in_channels", in_channels, 3);
    GETI("out_channels", out_channels, 3);
    GETI("latent_channels", latent_channels, 4);
    GETI("layers_per_block", layers_per_block, 1);
    GETI("norm_num_groups", norm_num_groups, 32);
#undef GETI
    const JsonNode *ss = json_get(&doc, r, "sample_size");   /* an int or [h, w] */
    if (ss && ss->type == JSON_ARRAY && ss->count > 0) ss = json_first(&doc, ss);
    cfg->sample_size = ss && ss->type == JSON_NUMBER ? (int)ss->num : 32;
    ZI_TRY(json_get_bool(&doc, r, "mid_block_add_attention", 1, &cfg->mid_attention, path));
    ZI_TRY(json_get_bool(&doc, r, "use_post_quant_conv", 1, &cfg->post_quant_conv, path));
    ZI_TRY(json_get_bool(&doc, r, "use_quant_conv", 1, &cfg->use_quant_conv, path));
    ZI_TRY(json_get_bool(&doc, r, "force_upcast", 1, &cfg->force_upcast, path));
    ZI_TRY(json_get_double(&doc, r, "scaling_factor", 0.18215, &d, path)); cfg->scaling_factor = d;
    const JsonNode *sf = json_get(&doc, r, "shift_factor");
    cfg->has_shift_factor = sf && sf->type != JSON_NULL;
    ZI_TRY(json_get_double(&doc, r, "shift_factor", 0.0, &d, path)); cfg->shift_factor = d;
    ZI_TRY(json_get_int_array(&doc, r, "block_out_channels", arr, VAE_MAX_BLOCKS, &n, path));
    if (n == 0) { cfg->n_blocks = 1; cfg->block_out_channels[0] = 64; }
    else {
        cfg->n_blocks = n;
        for (int i = 0; i < n; i++) {
            if (arr[i] <= 0 || arr[i] > 1 << 16) {
                st = zi_fail(ZI_ERR_FORMAT, "%s: block_out_channels[%d] = %lld is not a valid width", path, i,
                             (long long)arr[i]);
                goto fail;
            }
            cfg->block_out_channels[i] = (int)arr[i];
        }
    }
    const JsonNode *act = json_get(&doc, r, "act_fn");
    if (act && act->type != JSON_NULL && (act->type != JSON_STRING || strcmp(act->str, "silu") != 0)) {
        st = zi_fail(ZI_ERR_FORMAT, "%s: act_fn must be \"silu\" (the only activation supported)", path);
        goto fail;
    }
    ZI_TRY(vae_check_block_types(&doc, r, "up_block_types", "UpDecoderBlock2D", cfg->n_blocks, path));

    int G = cfg->norm_num_groups;
    if (cfg->latent_channels <= 0 || cfg->out_channels <= 0 || cfg->layers_per_block < 0 ||
        cfg->layers_per_block > 64 || G <= 0) {
        st = zi_fail(ZI_ERR_FORMAT, "%s: inconsistent sizes (latent_channels %d, out_channels %d, layers_per_block "
                     "%d, norm_num_groups %d)", path, cfg->latent_channels, cfg->out_channels, cfg->layers_per_block, G);
        goto fail;
    }
    for (int i = 0; i < cfg->n_blocks; i++)
        if (cfg->block_out_channels[i] % G) {
            st = zi_fail(ZI_ERR_FORMAT, "%s: block_out_channels[%d] = %d is not divisible by norm_num_groups %d", path,
                         i, cfg->block_out_channels[i], G);
            goto fail;
        }
fail:
    json_free(&doc);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* weights: the diffusers state-dict names, in state-dict order */

static zi_status vae_resnet_list(VaeResnet *r, ZiWeightList *wl, const char *p, int ci, int co) {
    zi_status st = ZI_OK;
    r->ci = ci;
    r->co = co;
    ZI_TRY(ZI_W1(wl, &r->norm1_w, ci, "%s.norm1.weight", p));
    ZI_TRY(ZI_W1(wl, &r->norm1_b, ci, "%s.norm1.bias", p));
    ZI_TRY(ZI_W4(wl, &r->conv1_w, co, ci, 3, 3, "%s.conv1.weight", p));
    ZI_TRY(ZI_W1(wl, &r->conv1_b, co, "%s.conv1.bias", p));
    ZI_TRY(ZI_W1(wl, &r->norm2_w, co, "%s.norm2.weight", p));
    ZI_TRY(ZI_W1(wl, &r->norm2_b, co, "%s.norm2.bias", p));
    ZI_TRY(ZI_W4(wl, &r->conv2_w, co, co, 3, 3, "%s.conv2.weight", p));
    ZI_TRY(ZI_W1(wl, &r->conv2_b, co, "%s.conv2.bias", p));
    if (ci != co) {
        ZI_TRY(ZI_W4(wl, &r->short_w, co, ci, 1, 1, "%s.conv_shortcut.weight", p));
        ZI_TRY(ZI_W1(wl, &r->short_b, co, "%s.conv_shortcut.bias", p));
    }
fail:
    return st;
}

/* `<p>.<cur>` unless only the legacy `<p>.<old>` (diffusers' deprecated attention block) is in ar */
static const char *vae_attn_name(const StArchive *ar, const char *p, const char *cur, const char *old) {
    char name[ZI_WEIGHT_NAME_MAX];
    if (!ar) return cur;
    snprintf(name, sizeof name, "%s.%s", p, cur);
    if (st_find(ar, name)) return cur;
    snprintf(name, sizeof name, "%s.%s", p, old);
    return st_find(ar, name) ? old : cur;
}

zi_status vae_weight_list(const VaeConfig *c, VaeWeights *w, ZiWeightList *wl, const StArchive *ar) {
    zi_status st = ZI_OK;
    int64_t L = c->latent_channels, C0 = vae_block_out(c, 0), Cl = c->block_out_channels[0];
    int nr = c->layers_per_block + 1;
    char p[96];
    memset(w, 0, sizeof *w);
    ZI_CALLOC(w->up, (size_t)c->n_blocks * nr, sizeof(VaeResnet));
    ZI_TRY(ZI_W4(wl, &w->conv_in_w, C0, L, 3, 3, "decoder.conv_in.weight"));
    ZI_TRY(ZI_W1(wl, &w->conv_in_b, C0, "decoder.conv_in.bias"));
    for (int i = 0; i < c->n_blocks; i++) {
        int ci = vae_block_in(c, i), co = vae_block_out(c, i);
        for (int j = 0; j < nr; j++) {
            snprintf(p, sizeof p, "decoder.up_blocks.%d.resnets.%d", i, j);
            ZI_TRY(vae_resnet_list(&w->up[i * nr + j], wl, p, j == 0 ? ci : co, co));
        }
        if (i < c->n_blocks - 1) {
            ZI_TRY(ZI_W4(wl, &w->ups_w[i], co, co, 3, 3, "decoder.up_blocks.%d.upsamplers.0.conv.weight", i));
            ZI_TRY(ZI_W1(wl, &w->ups_b[i], co, "decoder.up_blocks.%d.upsamplers.0.conv.bias", i));
        }
    }
    if (c->mid_attention) {
        const char *a = "decoder.mid_block.attentions.0";
        ZI_TRY(ZI_W1(wl, &w->attn_norm_w, C0, "%s.group_norm.weight", a));
        ZI_TRY(ZI_W1(wl, &w->attn_norm_b, C0, "%s.group_norm.bias", a));
        ZI_TRY(ZI_W2(wl, &w->to_q, C0, C0, "%s.%s", a, vae_attn_name(ar, a, "to_q.weight", "query.weight")));
        ZI_TRY(ZI_W1(wl, &w->to_q_b, C0, "%s.%s", a, vae_attn_name(ar, a, "to_q.bias", "query.bias")));
        ZI_TRY(ZI_W2(wl, &w->to_k, C0, C0, "%s.%s", a, vae_attn_name(ar, a, "to_k.weight", "key.weight")));
        ZI_TRY(ZI_W1(wl, &w->to_k_b, C0, "%s.%s", a, vae_attn_name(ar, a, "to_k.bias", "key.bias")));
        ZI_TRY(ZI_W2(wl, &w->to_v, C0, C0, "%s.%s", a, vae_attn_name(ar, a, "to_v.weight", "value.weight")));
        ZI_TRY(ZI_W1(wl, &w->to_v_b, C0, "%s.%s", a, vae_attn_name(ar, a, "to_v.bias", "value.bias")));
        ZI_TRY(ZI_W2(wl, &w->to_out, C0, C0, "%s.%s", a, vae_attn_name(ar, a, "to_out.0.weight", "proj_attn.weight")));
        ZI_TRY(ZI_W1(wl, &w->to_out_b, C0, "%s.%s", a, vae_attn_name(ar, a, "to_out.0.bias", "proj_attn.bias")));
    }
    ZI_TRY(vae_resnet_list(&w->mid[0], wl, "decoder.mid_block.resnets.0", (int)C0, (int)C0));
    ZI_TRY(vae_resnet_list(&w->mid[1], wl, "decoder.mid_block.resnets.1", (int)C0, (int)C0));
    ZI_TRY(ZI_W1(wl, &w->norm_out_w, Cl, "decoder.conv_norm_out.weight"));
    ZI_TRY(ZI_W1(wl, &w->norm_out_b, Cl, "decoder.conv_norm_out.bias"));
    ZI_TRY(ZI_W4(wl, &w->conv_out_w, c->out_channels, Cl, 3, 3, "decoder.conv_out.weight"));
    ZI_TRY(ZI_W1(wl, &w->conv_out_b, c->out_channels, "decoder.conv_out.bias"));
    if (c->post_quant_conv) {
        ZI_TRY(ZI_W4(wl, &w->pq_w, L, L, 1, 1, "post_quant_conv.weight"));
        ZI_TRY(ZI_W1(wl, &w->pq_b, L, "post_quant_conv.bias"));
    }
    return ZI_OK;
fail:
    vae_weights_arrays_free(w);
    return st;
}

void vae_weights_arrays_free(VaeWeights *w) {
    free(w->up);
    w->up = NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* activations: one allocation, carved by byte offsets */

static int imin(int a, int b) { return a < b ? a : b; }

/* tiled_decode's steps: latent stride between tile origins, pixels blended at a seam, pixels kept */
static void vae_tile_steps(const VaeTiling *t, int *stride, int *blend, int *keep) {
    *stride = (int)(t->tile_latent * (1 - t->overlap));
    *blend = (int)(t->tile_sample * t->overlap);
    *keep = t->tile_sample - *blend;
}

int vae_tiles(const VaeModel *m, int h, int w) {
    return m->tiling.enabled && (w > m->tiling.tile_latent || h > m->tiling.tile_latent);
}

/* elements of each buffer of VaeModel.t (in order) for decoding an h x w latent */
static void vae_acts_plan(const VaeModel *m, int h, int w, size_t n[VAE_NACTS]) {
    const VaeConfig *c = &m->cfg;
    size_t f = (size_t)1 << (c->n_blocks - 1), Co = (size_t)c->out_channels, L = (size_t)c->latent_channels;
    size_t big = 0, y = 0, sv = 0, sh = 0, zt = 0;
    int dh = h, dw = w; /* what one decoder pass sees: the whole latent or one tile */
    if (vae_tiles(m, h, w)) {
        int s, e, keep, Tl = m->tiling.tile_latent;
        vae_tile_steps(&m->tiling, &s, &e, &keep);
        dh = imin(Tl, h), dw = imin(Tl, w);
        size_t sumw = 0; /* pixel widths of one row of tiles */
        for (int j = 0; j < w; j += s) sumw += (size_t)imin(Tl, w - j) * f;
        sv = Co * (size_t)e * sumw;
        sh = Co * (size_t)dh * f * (size_t)e;
        zt = L * (size_t)dh * dw;
    }
    size_t HW0 = (size_t)dh * dw;
    for (int i = 0; i < c->n_blocks; i++) {
        size_t HW = HW0 << (2 * i);
        size_t ci = (size_t)vae_block_in(c, i), co = (size_t)vae_block_out(c, i);
        size_t mx = (ci > co ? ci : co) * HW;
        if (mx > big) big = mx;
        if (co * HW > y) y = co * HW;
    }
    size_t C0 = (size_t)vae_block_out(c, 0);
    size_t tok = c->mid_attention ? C0 * HW0 : 0;
    if (tok > y) y = tok;
    size_t img = Co * (HW0 << (2 * (c->n_blocks - 1)));
    if (img > y) y = img;
    /* x: any block's input or output; y: conv1 outputs, the copy of a block's output before its upsample,
       attention tokens, the tile image; h: shortcut outputs and attention tokens (at most y) */
    size_t plan[VAE_NACTS] = {big, y, y, tok, tok, L * (size_t)h * w, L * HW0, zt, sv, sh};
    memcpy(n, plan, sizeof plan);
}

static size_t align256(size_t b) { return (b + 255) & ~(size_t)255; }

size_t vae_acts_bytes(const VaeModel *m, int h, int w, size_t act_size) {
    size_t n[VAE_NACTS], total = 0;
    vae_acts_plan(m, h, w, n);
    for (int i = 0; i < VAE_NACTS; i++) total += align256(n[i] * act_size);
    return total;
}

static zi_status vae_ensure_acts(VaeModel *m, int h, int w) {
    size_t n[VAE_NACTS];
    int fits = m->acts != NULL;
    vae_acts_plan(m, h, w, n);
    for (int i = 0; i < VAE_NACTS; i++) {
        fits &= n[i] <= m->cap[i];
        if (n[i] < m->cap[i]) n[i] = m->cap[i]; /* never shrink */
    }
    if (fits) return ZI_OK;

    zi_status st = ZI_OK;
    ZiBackend *be = m->be;
    void **slot[VAE_NACTS] = {&m->t.x, &m->t.h, &m->t.y, &m->t.k, &m->t.v, &m->t.z, &m->t.zq, &m->t.zt, &m->t.sv, &m->t.sh};
    size_t total = 0, e = be->act_size;
    for (int i = 0; i < VAE_NACTS; i++) total += align256(n[i] * e);
    be->ops->free(be, m->acts);
    m->acts = NULL;
    ZI_TRY(be->ops->alloc(be, &m->acts, total));
    size_t off = 0;
    for (int i = 0; i < VAE_NACTS; i++) {
        *slot[i] = n[i] ? (char *)m->acts + off : NULL;
        off += align256(n[i] * e);
        m->cap[i] = n[i];
    }
    return ZI_OK;
fail:
    memset(m->cap, 0, sizeof m->cap);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* forward */

/* ResnetBlock2D on x[ci, H, W] -> x[co, H, W] (no time embedding, output_scale_factor 1) */
static zi_status vae_resnet(VaeModel *m, const VaeResnet *r, int H, int W) {
    zi_status st = ZI_OK;
    ZiBackend *be = m->be;
    const ZiOps *op = be->ops;
    int G = m->cfg.norm_num_groups, ci = r->ci, co = r->co;
    ZI_TRY(op->groupnorm_conv2d(be, m->t.y, m->t.x, NULL, r->norm1_w, r->norm1_b, r->conv1_w, r->conv1_b, 1, ci, H, W,
                                co, 3, 1, G, VAE_EPS, 1));                            /* y [co, HW] conv1(silu(norm1 x)) */
    if (r->short_w) ZI_TRY(op->conv2d(be, m->t.h, m->t.x, r->short_w, r->short_b, 1, ci, H, W, co, 1, 0)); /* h 1x1 */
    ZI_TRY(op->groupnorm_conv2d(be, m->t.x, m->t.y, r->short_w ? m->t.h : m->t.x, r->norm2_w, r->norm2_b, r->conv2_w,
                                r->conv2_b, 1, co, H, W, co, 3, 1, G, VAE_EPS, 1));   /* x = (h or x) + conv2(silu(norm2 y)) */
fail:
    return st;
}

/* mid-block Attention (1 head of width C0, AttnProcessor2_0) on x[C0, N] in place, N = H*W */
static zi_status vae_attention(VaeModel *m, int N) {
    zi_status st = ZI_OK;
    ZiBackend *be = m->be;
    const ZiOps *op = be->ops;
    const VaeWeights *w = &m->w;
    int C = vae_block_out(&m->cfg, 0), G = m->cfg.norm_num_groups;
    ZI_TRY(op->groupnorm(be, m->t.h, m->t.x, w->attn_norm_w, w->attn_norm_b, 1, C, N, G, VAE_EPS, 0)); /* h [C, N] */
    ZI_TRY(op->transpose(be, m->t.y, m->t.h, C, N));                                 /* tokens y [N, C]     */
    ZI_TRY(op->matmul(be, m->t.h, m->t.y, w->to_q, w->to_q_b, N, C, C));             /* q = h [N, C]        */
    ZI_TRY(op->matmul(be, m->t.k, m->t.y, w->to_k, w->to_k_b, N, C, C));             /* k [N, C]            */
    ZI_TRY(op->matmul(be, m->t.v, m->t.y, w->to_v, w->to_v_b, N, C, C));             /* v [N, C]            */
    ZI_TRY(op->attention(be, m->t.y, m->t.h, m->t.k, m->t.v, 0, N, 1, 1, C, 0, 1.0f / sqrtf((float)C))); /* y [N, C] */
    ZI_TRY(op->matmul(be, m->t.h, m->t.y, w->to_out, w->to_out_b, N, C, C));         /* h [N, C]            */
    ZI_TRY(op->transpose(be, m->t.y, m->t.h, N, C));                                 /* y [C, N]            */
    ZI_TRY(op->add(be, m->t.x, m->t.y, m->t.x, (size_t)C * N));                      /* x = y + residual    */
fail:
    return st;
}

/* Decoder.forward on one sample z [L, h, w] -> out [Co, f*h, f*w] (activation type, backend);
   out may be m->t.y and z may be m->t.z */
static zi_status vae_decode_one(VaeModel *m, void *out, const void *z, int h, int w) {
    zi_status st = ZI_OK;
    ZiBackend *be = m->be;
    const ZiOps *op = be->ops;
    const VaeConfig *c = &m->cfg;
    const VaeWeights *wt = &m->w;
    int L = c->latent_channels, C0 = vae_block_out(c, 0), nr = c->layers_per_block + 1, H = h, W = w;
    const void *src = z;
    if (wt->pq_w) {
        ZI_TRY(op->conv2d(be, m->t.zq, z, wt->pq_w, wt->pq_b, 1, L, H, W, L, 1, 0));         /* zq [L, h, w]   */
        src = m->t.zq;
    }
    ZI_TRY(op->conv2d(be, m->t.x, src, wt->conv_in_w, wt->conv_in_b, 1, L, H, W, C0, 3, 1)); /* x [C0, h, w]  */

    /* mid block */
    ZI_TRY(vae_resnet(m, &wt->mid[0], H, W));                                          /* x [C0, h, w]  */
    if (c->mid_attention) ZI_TRY(vae_attention(m, H * W));                            /* x [C0, h, w]  */
    ZI_TRY(vae_resnet(m, &wt->mid[1], H, W));                                          /* x [C0, h, w]  */

    /* up blocks */
    for (int i = 0; i < c->n_blocks; i++) {
        if (zi_interrupt_requested()) { st = zi_fail(ZI_ERR_INTERRUPTED, "VAE decode interrupted"); goto fail; }
        int co = vae_block_out(c, i);
        for (int j = 0; j < nr; j++) ZI_TRY(vae_resnet(m, &wt->up[i * nr + j], H, W)); /* x [co, H, W]   */
        if (i < c->n_blocks - 1) {
            ZI_TRY(op->copy(be, m->t.y, m->t.x, (size_t)co * H * W));                     /* y [co, H, W]  */
            ZI_TRY(op->upsample_conv2d(be, m->t.x, m->t.y, wt->ups_w[i], wt->ups_b[i], 1, co, H, W, co, 3, 1)); /* x [co, 2H, 2W] */
            H *= 2, W *= 2;
        }
    }

    /* conv_norm_out, SiLU, conv_out */
    int Cl = c->block_out_channels[0];
    ZI_TRY(op->groupnorm_conv2d(be, out, m->t.x, NULL, wt->norm_out_w, wt->norm_out_b, wt->conv_out_w, wt->conv_out_b, 1, Cl,
                                H, W, c->out_channels, 3, 1, c->norm_num_groups, VAE_EPS, 1)); /* out [Co, H, W] */
fail:
    return st;
}

static zi_status vae_place(VaeModel *m, int device, int offload);

zi_status vae_backend(VaeModel *m, ZiBackend **be) {
    zi_status st = ZI_OK;
    *be = NULL;
    if (!m->be) ZI_TRY(vae_place(m, -1, 0)); /* deferred at load: the CPU, now */
    *be = m->be;
fail:
    return st;
}

/* point m->w into a block packed as the loaders pack the weight list (the backend's or the host's) */
static zi_status vae_point(VaeModel *m, void *block) {
    zi_status st = ZI_OK;
    ZiWeightList wl = {0};
    VaeWeights w = {0};
    ZI_TRY(vae_weight_list(&m->cfg, &w, &wl, &m->ar));
    zi_weights_place(m->be, &wl, block);
    vae_weights_arrays_free(&m->w);
    m->w = w;
    w = (VaeWeights){0};
fail:
    vae_weights_arrays_free(&w);
    zi_weights_list_free(&wl);
    return st;
}

/* offloaded: the weights come to the backend for this decode (one copy from host memory) */
static zi_status vae_visit(VaeModel *m) {
    zi_status st = ZI_OK;
    ZiBackend *be = m->be;
    void *block = NULL;
    if (!m->offload || m->weights) return ZI_OK;
    size_t bytes = m->weight_elems * be->weight_size;
    ZI_TRY(be->ops->alloc(be, &block, bytes));
    ZI_TRY(be->ops->upload_bytes(be, block, m->host_weights, bytes));
    ZI_TRY(vae_point(m, block));
    m->weights = block;
    return ZI_OK;
fail:
    be->ops->free(be, block);
    return st;
}

/* offloaded: after a decode, the weights and activations leave the backend */
static void vae_unvisit(VaeModel *m) {
    if (!m->offload || !m->weights) return;
    m->be->ops->free(m->be, m->weights); /* a CUDA free waits for the decode that reads it */
    m->be->ops->free(m->be, m->acts);
    m->weights = m->acts = NULL;
    memset(m->cap, 0, sizeof m->cap);
    if (vae_point(m, m->host_weights) != ZI_OK) vae_weights_arrays_free(&m->w); /* re-pointed at the next visit */
}

/* check a batch of B latents of h x w and size the activations for it */
static zi_status vae_prepare(VaeModel *m, int B, int h, int w) {
    zi_status st = ZI_OK;
    ZiBackend *be = NULL;
    ZI_TRY(vae_backend(m, &be));
    ZI_TRY(vae_visit(m));
    int f = vae_up_factor(m);
    if (B <= 0 || h <= 0 || w <= 0) return zi_fail(ZI_ERR_ARG, "latent batch %d of %dx%d is empty", B, h, w);
    if ((int64_t)h * f > INT_MAX / ((int64_t)w * f))
        return zi_fail(ZI_ERR_ARG, "latent of %dx%d decodes to a %lldx%lld image, too large", h, w,
                       (long long)h * f, (long long)w * f);
    ZI_TRY(vae_ensure_acts(m, h, w));
fail:
    return st;
}

/* AutoencoderKL.tiled_decode on one sample z[L, h, w] (zs = its row stride, w) -> out[Co, f*h, f*w].
   Tiles of up to Tl x Tl latents start every s latents (row-major); tile (i, j) is decoded into y
   [Co, TH, TW], blended in place with the already-blended tile above (its last e rows, kept in sv)
   and the one to the left (its last e columns, kept in sh), and its top-left keep x keep pixels go to
   out at (f*i, f*j) (keep = f*s, checked by vae_set_tiling, so the crops tile the image exactly). */
static zi_status vae_decode_tiled(VaeModel *m, void *out, const void *z, int h, int w) {
    zi_status st = ZI_OK;
    ZiBackend *be = m->be;
    const ZiOps *op = be->ops;
    const VaeConfig *c = &m->cfg;
    int f = vae_up_factor(m), L = c->latent_channels, Co = c->out_channels, Tl = m->tiling.tile_latent, s, e, keep;
    size_t H = (size_t)h * f, W = (size_t)w * f;
    vae_tile_steps(&m->tiling, &s, &e, &keep);
    for (int i = 0; i < h; i += s) {
        int th = imin(Tl, h - i), TH = th * f, THa = imin(Tl, h - (i - s)) * f; /* this tile's / the above's height */
        size_t sv_off = 0;                                                       /* column j's blend rows in sv   */
        for (int j = 0; j < w; j += s) {
            int tw = imin(Tl, w - j), TW = tw * f, TWl = imin(Tl, w - (j - s)) * f;
            size_t plane = (size_t)TH * TW;
            ZI_TRY(op->copy2d(be, m->t.zt, zi_act(be, z, (size_t)i * w + j), L, th, tw, (size_t)th * tw, tw,
                              (size_t)h * w, w));                                /* zt [L, th, tw] = z[:, i:, j:] */
            ZI_TRY(vae_decode_one(m, m->t.y, m->t.zt, th, tw));                  /* y [Co, TH, TW]               */
            if (i > 0) {                                                         /* blend_v with the tile above  */
                int ea = imin(e, THa), ev = imin(ea, TH);                        /* its rows kept / blended      */
                if (ev > 0)
                    ZI_TRY(op->blend_seam(be, m->t.y, zi_act(be, m->t.sv, sv_off + (size_t)(ea - ev) * TW), Co, ev, TW,
                                          plane, (size_t)ea * TW));
            }
            if (j > 0) {                                                         /* blend_h with the tile left   */
                int el = imin(e, TWl), eh = imin(el, TW);
                if (eh > 0)
                    ZI_TRY(op->blend_seam(be, m->t.y, zi_act(be, m->t.sh, (size_t)(el - eh)), Co * TH, eh, 1, TW, el));
            }
            int eb = imin(e, TH), er = imin(e, TW);
            if (i + s < h && eb > 0)                                             /* sv[j] [Co, eb, TW] = y[:, -eb:, :] */
                ZI_TRY(op->copy2d(be, zi_act(be, m->t.sv, sv_off), zi_act(be, m->t.y, (size_t)(TH - eb) * TW), Co, eb, TW,
                                  (size_t)eb * TW, TW, plane, TW));
            if (j + s < w && er > 0)                                             /* sh [Co*TH, er] = y[:, :, -er:]    */
                ZI_TRY(op->copy2d(be, m->t.sh, zi_act(be, m->t.y, (size_t)(TW - er)), 1, Co * TH, er, 0, er, 0, TW));
            ZI_TRY(op->copy2d(be, zi_act(be, out, (size_t)i * f * W + (size_t)j * f), m->t.y, Co, imin(keep, TH),
                              imin(keep, TW), H * W, W, plane, TW));             /* out[:, fi:, fj:] = y[:, :keep, :keep] */
            sv_off += (size_t)Co * e * TW;
        }
    }
fail:
    return st;
}

/* one sample, tiled or not */
static zi_status vae_decode_sample(VaeModel *m, void *out, const void *z, int h, int w) {
    return vae_tiles(m, h, w) ? vae_decode_tiled(m, out, z, h, w) : vae_decode_one(m, out, z, h, w);
}

zi_status vae_decode_dev(VaeModel *m, void *out, const void *z, int B, int h, int w) {
    zi_status st = ZI_OK;
    ZI_TRY(vae_prepare(m, B, h, w));
    const VaeConfig *c = &m->cfg;
    int f = vae_up_factor(m);
    size_t nz = (size_t)c->latent_channels * h * w;
    size_t nimg = (size_t)c->out_channels * (size_t)(h * f) * (size_t)(w * f);
    for (int b = 0; b < B; b++)
        ZI_TRY(vae_decode_sample(m, zi_act(m->be, out, b * nimg), zi_act(m->be, z, b * nz), h, w)); /* [Co, fh, fw] */
fail:
    vae_unvisit(m);
    return st;
}

zi_status vae_decode(VaeModel *m, float *out, const float *z, int B, int h, int w) {
    zi_status st = ZI_OK;
    void *img = NULL; /* tiled: the whole image [Co, fh, fw] on the backend (y holds one tile) */
    ZI_TRY(vae_prepare(m, B, h, w));
    const VaeConfig *c = &m->cfg;
    int f = vae_up_factor(m);
    size_t nz = (size_t)c->latent_channels * h * w;
    size_t nimg = (size_t)c->out_channels * (size_t)(h * f) * (size_t)(w * f);
    if (vae_tiles(m, h, w)) ZI_TRY(m->be->ops->alloc(m->be, &img, nimg * m->be->act_size));
    for (int b = 0; b < B; b++) {
        void *y = img ? img : m->t.y;
        ZI_TRY(m->be->ops->upload(m->be, m->t.z, z + b * nz, nz));                    /* z [L, h, w]    */
        ZI_TRY(vae_decode_sample(m, y, m->t.z, h, w));                                /* y [Co, fh, fw] */
        ZI_TRY(m->be->ops->download(m->be, out + b * nimg, y, nimg));
    }
fail:
    if (img) m->be->ops->free(m->be, img);
    vae_unvisit(m);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* tiling state */

zi_status vae_set_tiling(VaeModel *m, const VaeTiling *t) {
    VaeTiling n = m->tiling;
    int f = vae_up_factor(m), s, e, keep;
    n.enabled = t->enabled != 0;
    if (t->tile_sample > 0 || t->tile_latent > 0) {
        n.tile_sample = t->tile_sample > 0 ? t->tile_sample : t->tile_latent * f;
        n.tile_latent = t->tile_latent > 0 ? t->tile_latent : t->tile_sample / f;
    }
    if (t->overlap >= 0) n.overlap = t->overlap;
    if (n.tile_latent < 1 || n.tile_sample < 1 || !(n.overlap < 1))
        return zi_fail(ZI_ERR_ARG, "tiling needs tile sizes >= 1 and an overlap factor in [0, 1) (got %d latents, %d "
                       "pixels, %g)", n.tile_latent, n.tile_sample, n.overlap);
    vae_tile_steps(&n, &s, &e, &keep);
    if (s < 1 || keep != s * f)
        return zi_fail(ZI_ERR_ARG, "tiles of %d latents / %d pixels with overlap %g: diffusers keeps %d pixels of each "
                       "tile but steps %d latents (%d pixels), so its output would not be %dx the latent size",
                       n.tile_latent, n.tile_sample, n.overlap, keep, s, s * f, f);
    m->tiling = n;
    return ZI_OK;
}

VaeTiling vae_get_tiling(const VaeModel *m) { return m->tiling; }

/* ---------------------------------------------------------------------------------------- */
/* postprocess: VaeImageProcessor.denormalize, pt_to_numpy, numpy_to_pil */

void vae_postprocess_uint8(uint8_t *out, const float *img, int B, int C, int H, int W, int bf16) {
    ZiBackend *cpu = NULL;
    zi_backend_get(-1, &cpu); /* the CPU backend is static: this cannot fail */
    cpu->ops->image_to_uint8(cpu, out, img, B, C, H, W, bf16);
}

/* ---------------------------------------------------------------------------------------- */
/* lifetime */

/* the model's buffers on its current backend */
static void vae_release(VaeModel *m) {
    if (m->be) {
        m->be->ops->free(m->be, m->weights);
        m->be->ops->free(m->be, m->acts);
        m->be->ops->host_free(m->be, m->host_weights);
    }
    m->weights = m->acts = m->host_weights = NULL;
    memset(m->cap, 0, sizeof m->cap);
    vae_weights_arrays_free(&m->w);
}

/* read the weights for `device`: one block on its backend, or, offloaded, in host memory */
static zi_status vae_place(VaeModel *m, int device, int offload) {
    zi_status st = ZI_OK;
    ZiWeightList wl = {0};
    ZiBackend *be = NULL;
    void *block = NULL;
    VaeWeights w = {0};
    ZI_TRY(zi_backend_get(device, &be));
    ZI_TRY(vae_weight_list(&m->cfg, &w, &wl, &m->ar));
    if (offload) ZI_TRY(zi_weights_load_host(be, &m->ar, &wl, NULL, &block));
    else ZI_TRY(zi_weights_load(be, &m->ar, &wl, NULL, &block));
    /* success: release the old device's buffers, adopt the new ones */
    vae_release(m);
    m->w = w;
    if (offload) m->host_weights = block;
    else m->weights = block;
    m->weight_elems = wl.total;
    m->offload = offload;
    m->be = be;
    zi_weights_list_free(&wl);
    return ZI_OK;
fail:
    vae_weights_arrays_free(&w);
    zi_weights_list_free(&wl);
    return st;
}

/* names, shapes and dtypes of the checkpoint, without reading any weight data */
static zi_status vae_check_weights(VaeModel *m) {
    zi_status st = ZI_OK;
    ZiWeightList wl = {0};
    VaeWeights w = {0};
    ZI_TRY(vae_weight_list(&m->cfg, &w, &wl, &m->ar));
    ZI_TRY(zi_weights_check(&m->ar, &wl, NULL));
fail:
    vae_weights_arrays_free(&w);
    zi_weights_list_free(&wl);
    return st;
}

zi_status vae_load(VaeModel **out, const char *dir, int device) {
    zi_status st = ZI_OK;
    char path[4096];
    VaeModel *m = NULL;
    *out = NULL;
    ZI_CALLOC(m, 1, sizeof *m);
    snprintf(path, sizeof path, "%s/config.json", dir);
    ZI_TRY(vae_config_load(&m->cfg, path));
    m->tiling = (VaeTiling){.enabled = 0, .tile_sample = m->cfg.sample_size, .overlap = 0.25,
                            .tile_latent = (int)(m->cfg.sample_size / (double)(1 << (m->cfg.n_blocks - 1)))};
    ZI_TRY(st_open_dir(&m->ar, dir, "diffusion_pytorch_model"));
    if (device == ZI_DEVICE_DEFER) ZI_TRY(vae_check_weights(m));
    else ZI_TRY(vae_place(m, device, 0));
    *out = m;
    return ZI_OK;
fail:
    vae_free(m);
    return st;
}

zi_status vae_to_device(VaeModel *m, int device) {
    if (m->be && m->be->device == device && !m->offload) return ZI_OK;
    return vae_place(m, device, 0);
}

zi_status vae_enable_offload(VaeModel *m, int device) {
    if (m->be && m->be->device == device && m->offload) return ZI_OK;
    return vae_place(m, device, 1);
}

int vae_offloaded(const VaeModel *m) { return m->offload; }

const VaeConfig *vae_config(const VaeModel *m) { return &m->cfg; }
int vae_device(const VaeModel *m) { return m->be ? m->be->device : -1; }
int vae_up_factor(const VaeModel *m) { return 1 << (m->cfg.n_blocks - 1); }

void vae_free(VaeModel *m) {
    if (!m) return;
    vae_release(m);
    st_close(&m->ar);
    free(m);
}
