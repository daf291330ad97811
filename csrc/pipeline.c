/*
 * pipeline.c - the body of ZImagePipeline.__call__ (diffusers pipeline_z_image.py) over the
 * component models. Per step i: t_model = (1000 - timestep_i) / 1000; each sample runs the
 * transformer once (twice with CFG: positive then negative caption), the prediction is
 * negated and the Euler step x += (sigma_{i+1} - sigma_i) * v is taken in f32.
 * Samples are independent, so a batch is a loop over samples (see NOTES.md).
 * Everything after the caption features runs over the ops table on the transformer's backend:
 * the f32 latents, the CFG combination and normalisation, the Euler step, the decode and the
 * postprocess; the host gets the latents only when a step hook asks, and the final image.
 */
#include "pipeline.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

zi_status zi_pipeline_encode_ids(TeModel *te, const int32_t *ids, size_t n, float **emb) {
    zi_status st = ZI_OK;
    int64_t *ids64 = NULL;
    float *out = NULL;
    *emb = NULL;
    if (n == 0 || n > (size_t)INT32_MAX) return zi_fail(ZI_ERR_ARG, "a prompt must give 1 or more token ids, got %zu", n);
    ZI_MALLOC(ids64, n * sizeof *ids64);
    for (size_t i = 0; i < n; i++) ids64[i] = ids[i];
    int D = te_config(te)->hidden_size;
    ZI_MALLOC(out, n * (size_t)D * sizeof(float));
    ZI_TRY(te_encode(te, out, ids64, (int)n, -2));                 /* hidden_states[-2] [n, D] */
    *emb = out;
    out = NULL;
fail:
    free(out);
    free(ids64);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* latents on the backend */

zi_status zi_latents_create(ZiLatents *lat, ZiBackend *be, const float *host, int B, int C, int h, int w) {
    zi_status st = ZI_OK;
    memset(lat, 0, sizeof *lat);
    if (B <= 0 || C <= 0 || h <= 0 || w <= 0) return zi_fail(ZI_ERR_ARG, "latents of shape (%d, %d, %d, %d)", B, C, h, w);
    size_t n = (size_t)B * C * h * w;
    ZI_TRY(be->ops->alloc(be, (void **)&lat->x, n * sizeof(float)));
    lat->be = be;
    lat->B = B, lat->C = C, lat->h = h, lat->w = w;
    ZI_TRY(be->ops->upload_f32(be, lat->x, host, n));
    return ZI_OK;
fail:
    zi_latents_free(lat);
    return st;
}

zi_status zi_latents_download(const ZiLatents *lat, float *host) {
    size_t n = (size_t)lat->B * lat->C * lat->h * lat->w;
    return lat->be->ops->download_bytes(lat->be, host, lat->x, n * sizeof(float));
}

void zi_latents_free(ZiLatents *lat) {
    if (lat->be) lat->be->ops->free(lat->be, lat->x);
    memset(lat, 0, sizeof *lat);
}

/* ---------------------------------------------------------------------------------------- */
/* denoising */

static size_t align256(size_t bytes) { return (bytes + 255) & ~(size_t)255; }

/* The host caption features -> one block of activation elements on be (replacing *block):
   dcaps[b] and dneg[b] (with CFG) point into it. */
static zi_status upload_captions(ZiBackend *be, const ZiDenoiseArgs *a, int B, int Cc, void **block,
                                 const void **dcaps, const void **dneg) {
    zi_status st = ZI_OK;
    size_t total = 0, off = 0;
    for (int b = 0; b < B; b++) {
        total += align256((size_t)a->cap_lens[b] * Cc * be->act_size);
        if (dneg) total += align256((size_t)a->neg_lens[b] * Cc * be->act_size);
    }
    be->ops->free(be, *block);
    *block = NULL;
    ZI_TRY(be->ops->alloc(be, block, total));
    for (int b = 0; b < B; b++) {
        dcaps[b] = (char *)*block + off;
        off += align256((size_t)a->cap_lens[b] * Cc * be->act_size);
        ZI_TRY(be->ops->upload(be, (void *)dcaps[b], a->caps[b], (size_t)a->cap_lens[b] * Cc));   /* [L_b, Cc] */
        if (!dneg) continue;
        dneg[b] = (char *)*block + off;
        off += align256((size_t)a->neg_lens[b] * Cc * be->act_size);
        ZI_TRY(be->ops->upload(be, (void *)dneg[b], a->neg_caps[b], (size_t)a->neg_lens[b] * Cc)); /* [L_b', Cc] */
    }
fail:
    return st;
}

zi_status zi_pipeline_denoise(DitModel *dit, ZiLatents *lat, const ZiDenoiseArgs *a) {
    zi_status st = ZI_OK;
    ZiBackend *be = NULL;
    void *work = NULL, *capblock = NULL;
    const void **dcaps = NULL, **dneg = NULL;
    float *host = NULL;
    ZI_TRY(dit_backend(dit, &be));
    const ZiOps *op = be->ops;
    const DitConfig *c = dit_config(dit);
    int B = lat->B, h = lat->h, w = lat->w;
    if (lat->be != be)
        return zi_fail(ZI_ERR_STATE, "the latents are on %s but the transformer is on %s", lat->be->name, be->name);
    if (lat->C != c->in_channels)
        return zi_fail(ZI_ERR_ARG, "latents have %d channels, the transformer takes %d", lat->C, c->in_channels);
    size_t n = (size_t)c->in_channels * h * w;   /* elements of one sample */
    int cfg = a->guidance > 0.0f && a->neg_caps != NULL;

    /* once per call: the model outputs pos, neg [n] f32 (neg then holds the CFG prediction),
       the captions, and the host copy the hook reads */
    ZI_TRY(op->alloc(be, &work, align256(n * sizeof(float)) * (cfg ? 2 : 1)));
    float *pos = work, *neg = cfg ? (float *)((char *)work + align256(n * sizeof(float))) : NULL;
    ZI_CALLOC(dcaps, B, sizeof *dcaps);
    if (cfg) ZI_CALLOC(dneg, B, sizeof *dneg);
    ZI_TRY(upload_captions(be, a, B, c->cap_feat_dim, &capblock, dcaps, dneg));
    if (a->hook && a->hook_latents) ZI_MALLOC(host, (size_t)B * n * sizeof(float));

    for (int i = 0; i < a->sched->steps; i++) {
        float t = a->sched->t_model[i];
        float g = a->guidance;
        if (cfg && a->cfg_truncation <= 1.0f && t > a->cfg_truncation) g = 0.0f;  /* truncated CFG */
        int apply_cfg = cfg && g > 0.0f;
        float dt = a->sched->sigmas[i + 1] - a->sched->sigmas[i];
        for (int b = 0; b < B; b++) {
            float *x = lat->x + (size_t)b * n;
            const float *pred = pos;
            ZI_TRY(dit_forward_dev(dit, pos, x, 1, h, w, t, dcaps[b], a->cap_lens[b]));       /* pos [C, 1, h, w] */
            if (apply_cfg) {
                ZI_TRY(dit_forward_dev(dit, neg, x, 1, h, w, t, dneg[b], a->neg_lens[b]));    /* neg [C, 1, h, w] */
                double pos_ss = 0.0, pred_ss = 0.0;
                if (a->cfg_normalization > 0.0f) ZI_TRY(op->sumsq_f32(be, &pos_ss, pos, n));
                ZI_TRY(op->cfg_combine(be, neg, pos, neg, g, n));        /* pred = pos + g * (pos - neg) */
                if (a->cfg_normalization > 0.0f) {
                    ZI_TRY(op->sumsq_f32(be, &pred_ss, neg, n));
                    float max_norm = (float)sqrt(pos_ss) * a->cfg_normalization;
                    float new_norm = (float)sqrt(pred_ss);
                    if (new_norm > max_norm) ZI_TRY(op->scale_f32(be, neg, neg, max_norm / new_norm, n));
                }
                pred = neg;
            }
            ZI_TRY(op->euler_step(be, x, pred, dt, n));                  /* x += dt * (-pred)            */
        }
        if (a->hook) {
            unsigned changed = 0;
            if (host) ZI_TRY(op->download_bytes(be, host, lat->x, (size_t)B * n * sizeof(float)));
            ZI_TRY(a->hook(a->hook_ctx, i, a->sched->timesteps[i], host, host ? (size_t)B * n : 0, &changed));
            if (host && (changed & ZI_HOOK_LATENTS)) ZI_TRY(op->upload_f32(be, lat->x, host, (size_t)B * n));
            if (changed & ZI_HOOK_CAPTIONS) ZI_TRY(upload_captions(be, a, B, c->cap_feat_dim, &capblock, dcaps, dneg));
        }
    }
fail:
    if (be) {
        be->ops->free(be, work);
        be->ops->free(be, capblock);
    }
    free(dcaps);
    free(dneg);
    free(host);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* decode and postprocess */

static const char *device_name(int device, char *buf, size_t len) {
    if (device < 0) snprintf(buf, len, "cpu");
    else snprintf(buf, len, "cuda:%d", device);
    return buf;
}

zi_status zi_pipeline_check_devices(const DitModel *dit, const VaeModel *vae) {
    char a[24], b[24];
    int dd = dit_device(dit), vd = vae_device(vae); /* deferred weights count as the CPU, where they will load */
    if (dd == vd) return ZI_OK;
    return zi_fail(ZI_ERR_STATE,
                   "the transformer is on %s and the VAE on %s; the pipeline needs them on one device "
                   "(pipe.to(device) moves every component)",
                   device_name(dd, a, sizeof a), device_name(vd, b, sizeof b));
}

zi_status zi_pipeline_decode(VaeModel *vae, void *img, ZiImageFormat fmt, const ZiLatents *lat) {
    zi_status st = ZI_OK;
    ZiBackend *be = NULL;
    void *block = NULL;
    ZI_TRY(vae_backend(vae, &be));
    if (be != lat->be)
        return zi_fail(ZI_ERR_STATE,
                       "the latents (the transformer) are on %s and the VAE on %s; the pipeline needs them on one "
                       "device (pipe.to(device) moves every component)", lat->be->name, be->name);
    const ZiOps *op = be->ops;
    const VaeConfig *vc = vae_config(vae);
    int B = lat->B, h = lat->h, w = lat->w, f = vae_up_factor(vae), Co = vc->out_channels;
    if (lat->C != vc->latent_channels)
        return zi_fail(ZI_ERR_ARG, "latents have %d channels, the VAE takes %d", lat->C, vc->latent_channels);
    size_t nz = (size_t)B * lat->C * h * w, nimg = (size_t)B * Co * (size_t)(h * f) * (size_t)(w * f);
    size_t out_bytes = nimg * (fmt == ZI_IMAGE_UINT8 ? 1 : sizeof(float));
    /* one block: z [B, L, h, w] and image [B, Co, fh, fw] (activation type), out [B, fh, fw, Co] */
    size_t zb = align256(nz * be->act_size), ib = align256(nimg * be->act_size);
    ZI_TRY(op->alloc(be, &block, zb + ib + out_bytes));
    void *z = block, *image = (char *)block + zb, *out = (char *)block + zb + ib;
    float sf = (float)vc->scaling_factor, sh = vc->has_shift_factor ? (float)vc->shift_factor : 0.0f;
    ZI_TRY(op->latents_to_vae(be, z, lat->x, sf, sh, nz));              /* z = latents / sf + shift     */
    ZI_TRY(vae_decode_dev(vae, image, z, B, h, w));                     /* image [B, Co, fh, fw]        */
    if (fmt == ZI_IMAGE_UINT8)                                          /* bf16 activations: bf16 rule  */
        ZI_TRY(op->image_to_uint8(be, out, image, B, Co, h * f, w * f, be->act_size != sizeof(float)));
    else
        ZI_TRY(op->image_to_float_hwc(be, out, image, B, Co, h * f, w * f));
    ZI_TRY(op->download_bytes(be, img, out, out_bytes));                /* [B, fh, fw, Co]              */
fail:
    if (be) be->ops->free(be, block);
    return st;
}
