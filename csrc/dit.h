/*
 * dit.h - the Z-Image single-stream DiT (diffusers ZImageTransformer2DModel), written once
 * over the ops table. One forward runs one sample; a batch is run sample by sample, which is
 * what diffusers' key-padding mask computes for each sample.
 */
#ifndef ZI_DIT_H
#define ZI_DIT_H

#include "ops.h"

typedef struct DitConfig {
    int in_channels;        /* C latent channels (16)                        */
    int dim;                /* D model width (3840)                          */
    int n_layers;           /* main blocks (30)                              */
    int n_refiner_layers;   /* noise and context refiner blocks each (2)     */
    int n_heads;            /* NH (30)                                       */
    int head_dim;           /* HD = D / NH (128)                             */
    int ffn_dim;            /* F = int(D / 3 * 8) (10240)                    */
    int cap_feat_dim;       /* caption feature width (2560)                  */
    int adaln_dim;          /* min(D, 256)                                   */
    int t_mid;              /* timestep MLP hidden width (1024)              */
    int t_freq;             /* sinusoid width (256)                          */
    int patch, f_patch;     /* pH = pW = patch, pF = f_patch                 */
    int qk_norm;
    int axes_dims[3], axes_lens[3];
    float norm_eps, rope_theta, t_scale;
} DitConfig;

typedef struct DitBlock {
    void *to_q, *to_k, *to_v;        /* [D, D] each                            */
    void *to_out;                    /* [D, D]                                 */
    void *norm_q, *norm_k;           /* [HD] (qk_norm)                         */
    void *w1, *w3;                   /* [F, D]                                 */
    void *w2;                        /* [D, F]                                 */
    void *attention_norm1, *attention_norm2, *ffn_norm1, *ffn_norm2; /* [D]    */
    void *adaln_w, *adaln_b;         /* [4D, A], [4D] (modulated blocks only)  */
} DitBlock;

typedef struct DitWeights {
    void *x_embed_w, *x_embed_b;     /* [D, P], [D]   P = pF*pH*pW*C           */
    void *x_pad_token;               /* [1, D]                                 */
    void *cap_norm;                  /* [Cc]                                   */
    void *cap_w, *cap_b;             /* [D, Cc], [D]                           */
    void *cap_pad_token;             /* [1, D]                                 */
    void *t_mlp0_w, *t_mlp0_b;       /* [T, 256], [T]  T = t_mid               */
    void *t_mlp2_w, *t_mlp2_b;       /* [A, T], [A]                            */
    void *final_adaln_w, *final_adaln_b; /* [D, A], [D]                        */
    void *final_w, *final_b;         /* [P, D], [P]                            */
    DitBlock *noise_refiner;         /* n_refiner_layers, modulated            */
    DitBlock *context_refiner;       /* n_refiner_layers, not modulated        */
    DitBlock *layers;                /* n_layers, modulated                    */
} DitWeights;

typedef struct DitModel DitModel;

/* Read transformer/config.json (a missing key takes diffusers' default). */
zi_status dit_config_load(DitConfig *cfg, const char *config_path);
/* The checkpoint's tensor names and shapes for cfg, in load order (for manifests). */
zi_status dit_weight_list(const DitConfig *cfg, DitWeights *w, ZiWeightList *wl);
/* Load `dir` (config.json + diffusion_pytorch_model[.safetensors | -0000x-of-0000n + index]). */
zi_status dit_load(DitModel **out, const char *dir, int device);
/* Move the weights to another device (-1 CPU, >= 0 CUDA) by reloading from the mmapped files. */
zi_status dit_to_device(DitModel *m, int device);
const DitConfig *dit_config(const DitModel *m);
int dit_device(const DitModel *m);
void dit_free(DitModel *m);
/* Free the activation buffers until the next forward (offloaded pipelines: before the VAE decode). */
void dit_release_acts(DitModel *m);

/* The backend holding the weights; weights deferred at load are loaded now, onto the CPU (as
   the first forward would). */
zi_status dit_backend(DitModel *m, ZiBackend **be);

/* One sample on the model's backend, no host transfer of the latent. latent[C, Fr, H, W] f32
   (backend), t the pipeline's t, cap[L, Cc] caption features (activation type, backend);
   out[C, Fr, H, W] f32 (backend) gets the model output (before the pipeline negates it). The
   latent is rounded to the activation type as the model's input; out may not alias latent. */
zi_status dit_forward_dev(DitModel *m, float *out, const float *latent, int Fr, int H, int W, float t, const void *cap,
                          int L);

/* dit_forward_dev on host arrays: latent[C, Fr, H, W], cap[L, Cc], out[C, Fr, H, W], all f32 (host). */
zi_status dit_forward(DitModel *m, float *out, const float *latent, int Fr, int H, int W, float t, const float *cap,
                      int L);

#endif /* ZI_DIT_H */
