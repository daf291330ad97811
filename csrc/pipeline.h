/*
 * pipeline.h - ZImagePipeline.__call__ as C: prompt -> caption features (tokenizer + Qwen3
 * layer -2), the flow-match Euler denoising loop with optional CFG (normalisation, truncation),
 * and the VAE decode with the pipeline's scale/shift and the image postprocess. The components
 * are borrowed, not owned. Caption features come from the host; the latents live on the
 * transformer's backend from the first step to the decoded image.
 */
#ifndef ZI_PIPELINE_H
#define ZI_PIPELINE_H

#include "dit.h"
#include "scheduler.h"
#include "text_encoder.h"
#include "vae.h"

/* Latents [B, C, h, w] f32 on a backend (the transformer's): they stay there from the first
   step to the decode; the host sees them only through the step hook or zi_latents_download. */
typedef struct ZiLatents {
    ZiBackend *be;
    float *x;                       /* [B, C, h, w] f32 on be                              */
    int B, C, h, w;
} ZiLatents;

/* Allocate latents on `be` and upload host[B, C, h, w] (f32) into them. */
zi_status zi_latents_create(ZiLatents *lat, ZiBackend *be, const float *host, int B, int C, int h, int w);
/* host[B, C, h, w] = the latents (output_type "latent"). */
zi_status zi_latents_download(const ZiLatents *lat, float *host);
void zi_latents_free(ZiLatents *lat);   /* NULL-safe, leaves lat zeroed */

/* What a step hook changed (bits of *changed). */
enum { ZI_HOOK_LATENTS = 1, ZI_HOOK_CAPTIONS = 2 };

/* Called after every denoising step. latents: the updated latents [B, C, h, w] copied to the
   host (writable) when ZiDenoiseArgs.hook_latents is set, else NULL (n = 0). The hook sets
   ZI_HOOK_LATENTS in *changed when it wrote them (they are uploaded again) and ZI_HOOK_CAPTIONS
   when it replaced entries of caps / cap_lens (the captions are uploaded again).
   Return ZI_OK to go on; any other status stops the run with that status (message recorded). */
typedef zi_status (*ZiStepHook)(void *ctx, int step, float timestep, float *latents, size_t n, unsigned *changed);

typedef struct ZiDenoiseArgs {
    float *const *caps;             /* B caption feature arrays [L_b, Cc] (host f32)        */
    const int *cap_lens;
    float *const *neg_caps;         /* B negative arrays, or NULL without CFG               */
    const int *neg_lens;
    float guidance;                 /* guidance_scale; CFG on when > 0 and neg_caps given   */
    float cfg_normalization;        /* 0 = off, else the max norm ratio                     */
    float cfg_truncation;           /* CFG only while t_model <= this (when <= 1)           */
    const ZiSchedule *sched;
    ZiStepHook hook;                /* may be NULL                                          */
    void *hook_ctx;
    int hook_latents;               /* the hook reads / writes the latents                  */
} ZiDenoiseArgs;

/* Token ids of one templated prompt -> emb[n, Cc] (malloc'ed, caller frees): Qwen3
   hidden_states[-2], the caption features the transformer takes. */
zi_status zi_pipeline_encode_ids(TeModel *te, const int32_t *ids, size_t n, float **emb);

/* The denoising loop on lat (in place, on the transformer's backend; B = lat->B samples).
   Device buffers are allocated once per call; a step transfers nothing unless the hook asks
   for the latents or cfg_normalization needs its two norms (8 bytes each). */
zi_status zi_pipeline_denoise(DitModel *dit, ZiLatents *lat, const ZiDenoiseArgs *a);

/* The image formats zi_pipeline_decode writes, both [B, H, W, Co] (VaeImageProcessor) */
typedef enum {
    ZI_IMAGE_UINT8,                 /* round_half_even(clamp(x * 0.5 + 0.5, 0, 1) * 255)    */
    ZI_IMAGE_F32,                   /* clamp(x * 0.5 + 0.5, 0, 1), output_type "np"          */
} ZiImageFormat;

/* ZI_ERR_STATE unless the transformer and the VAE are (or, deferred, will be) on one device. */
zi_status zi_pipeline_check_devices(const DitModel *dit, const VaeModel *vae);

/* img (host) [B, f*h, f*w, Co] = postprocess(vae.decode(latents / scaling_factor + shift_factor)),
   f = vae_up_factor, all on the VAE's backend, which must hold lat; only img is downloaded.
   uint8 uses diffusers' bf16 rule where the activations are bf16 (CUDA), the f32 rule on the CPU. */
zi_status zi_pipeline_decode(VaeModel *vae, void *img, ZiImageFormat fmt, const ZiLatents *lat);

#endif /* ZI_PIPELINE_H */
