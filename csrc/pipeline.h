/*
 * pipeline.h - ZImagePipeline.__call__ as C: prompt -> caption features (tokenizer + Qwen3
 * layer -2), the flow-match Euler denoising loop with optional CFG (normalisation, truncation),
 * and the VAE decode with the pipeline's scale/shift. The components are borrowed, not owned.
 * Host float32 arrays pass between the stages.
 */
#ifndef ZI_PIPELINE_H
#define ZI_PIPELINE_H

#include "dit.h"
#include "scheduler.h"
#include "text_encoder.h"
#include "vae.h"

/* Called after every denoising step with the updated latents [B, C, h, w] (host, writable).
   Return ZI_OK to go on; any other status stops the run with that status (message recorded). */
typedef zi_status (*ZiStepHook)(void *ctx, int step, float timestep, float *latents, size_t n);

typedef struct ZiDenoiseArgs {
    int B;                          /* samples (prompts x images per prompt)               */
    int h, w;                       /* latent height, width                                */
    float *const *caps;             /* B caption feature arrays [L_b, Cc]                   */
    const int *cap_lens;
    float *const *neg_caps;         /* B negative arrays, or NULL without CFG               */
    const int *neg_lens;
    float guidance;                 /* guidance_scale; CFG on when > 0 and neg_caps given   */
    float cfg_normalization;        /* 0 = off, else the max norm ratio                     */
    float cfg_truncation;           /* CFG only while t_model <= this (when <= 1)           */
    const ZiSchedule *sched;
    ZiStepHook hook;                /* may be NULL                                          */
    void *hook_ctx;
} ZiDenoiseArgs;

/* Token ids of one templated prompt -> emb[n, Cc] (malloc'ed, caller frees): Qwen3
   hidden_states[-2], the caption features the transformer takes. */
zi_status zi_pipeline_encode_ids(TeModel *te, const int32_t *ids, size_t n, float **emb);

/* The denoising loop on latents[B, C, h, w] (f32, host, in place). */
zi_status zi_pipeline_denoise(DitModel *dit, float *latents, const ZiDenoiseArgs *a);

/* img[B, 3, 8h, 8w] = vae.decode(latents / scaling_factor + shift_factor) (f32, host). */
zi_status zi_pipeline_decode(VaeModel *vae, float *img, const float *latents, int B, int h, int w);

/* output_type "np": out[B, H, W, C] = clamp(img[B, C, H, W] * 0.5 + 0.5, 0, 1) (VaeImageProcessor) */
void zi_pipeline_to_float_hwc(float *out, const float *img, int B, int C, int H, int W);

#endif /* ZI_PIPELINE_H */
