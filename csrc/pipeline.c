/*
 * pipeline.c - the body of ZImagePipeline.__call__ (diffusers pipeline_z_image.py) over the
 * component models. Per step i: t_model = (1000 - timestep_i) / 1000; each sample runs the
 * transformer once (twice with CFG: positive then negative caption), the prediction is
 * negated and the Euler step x += (sigma_{i+1} - sigma_i) * v is taken in f32.
 * Samples are independent, so a batch is a loop over samples (see NOTES.md).
 */
#include "pipeline.h"

#include <math.h>
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

static double l2_norm(const float *x, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return sqrt(s);
}

zi_status zi_pipeline_denoise(DitModel *dit, float *latents, const ZiDenoiseArgs *a) {
    zi_status st = ZI_OK;
    const DitConfig *c = dit_config(dit);
    int C = c->in_channels;
    size_t n = (size_t)C * a->h * a->w;          /* elements of one sample */
    float *pos = NULL, *neg = NULL;
    int cfg = a->guidance > 0.0f && a->neg_caps != NULL;
    ZI_MALLOC(pos, n * sizeof(float));
    if (cfg) ZI_MALLOC(neg, n * sizeof(float));
    for (int i = 0; i < a->sched->steps; i++) {
        float t = a->sched->t_model[i];
        float g = a->guidance;
        if (cfg && a->cfg_truncation <= 1.0f && t > a->cfg_truncation) g = 0.0f;  /* truncated CFG */
        int apply_cfg = cfg && g > 0.0f;
        float dt = a->sched->sigmas[i + 1] - a->sched->sigmas[i];
        for (int b = 0; b < a->B; b++) {
            float *x = latents + (size_t)b * n;
            ZI_TRY(dit_forward(dit, pos, x, 1, a->h, a->w, t, a->caps[b], a->cap_lens[b]));     /* pos [C, 1, h, w] */
            if (apply_cfg) {
                ZI_TRY(dit_forward(dit, neg, x, 1, a->h, a->w, t, a->neg_caps[b], a->neg_lens[b])); /* neg [C, 1, h, w] */
                double pos_norm = a->cfg_normalization > 0.0f ? l2_norm(pos, n) : 0.0;
                for (size_t k = 0; k < n; k++) {
                    float d = pos[k] - neg[k];
                    float gd = g * d;
                    neg[k] = pos[k] + gd;                /* pred = pos + g * (pos - neg) */
                }
                if (a->cfg_normalization > 0.0f) {
                    float max_norm = (float)pos_norm * a->cfg_normalization;
                    float new_norm = (float)l2_norm(neg, n);
                    if (new_norm > max_norm) {
                        float ratio = max_norm / new_norm;
                        for (size_t k = 0; k < n; k++) neg[k] *= ratio;
                    }
                }
                memcpy(pos, neg, n * sizeof(float));
            }
            for (size_t k = 0; k < n; k++) {
                float step = dt * -pos[k];               /* v = -model output; x + dt * v */
                x[k] += step;
            }
        }
        if (a->hook) ZI_TRY(a->hook(a->hook_ctx, i, a->sched->timesteps[i], latents, n * (size_t)a->B));
    }
fail:
    free(pos);
    free(neg);
    return st;
}

zi_status zi_pipeline_decode(VaeModel *vae, float *img, const float *latents, int B, int h, int w) {
    zi_status st = ZI_OK;
    const VaeConfig *vc = vae_config(vae);
    size_t n = (size_t)B * vc->latent_channels * h * w;
    float *z = NULL;
    ZI_MALLOC(z, n * sizeof(float));
    float sf = (float)vc->scaling_factor, sh = vc->has_shift_factor ? (float)vc->shift_factor : 0.0f;
    for (size_t k = 0; k < n; k++) {
        float q = latents[k] / sf;                       /* latents / scaling_factor + shift_factor */
        z[k] = q + sh;
    }
    ZI_TRY(vae_decode(vae, img, z, B, h, w));            /* img [B, 3, 8h, 8w] */
fail:
    free(z);
    return st;
}

void zi_pipeline_to_float_hwc(float *out, const float *img, int B, int C, int H, int W) {
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    float v = img[(((size_t)b * C + c) * H + y) * W + x] * 0.5f + 0.5f;
                    out[(((size_t)b * H + y) * W + x) * C + c] = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
                }
}
