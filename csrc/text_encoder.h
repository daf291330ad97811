/*
 * text_encoder.h - the Qwen3 text encoder (transformers Qwen3Model, Qwen3-4B in Z-Image-Turbo),
 * written once over the ops table. One call encodes one unpadded sequence and returns one of
 * transformers' `hidden_states` (by default [-2]: the raw residual stream after the
 * second-to-last decoder layer, which is what ZImagePipeline feeds the DiT).
 */
#ifndef ZI_TEXT_ENCODER_H
#define ZI_TEXT_ENCODER_H

#include "ops.h"

typedef struct TeConfig {
    int vocab_size;         /* V embedding rows (151936)                      */
    int hidden_size;        /* D model width (2560)                           */
    int intermediate_size;  /* F MLP width (9728)                             */
    int n_layers;           /* decoder layers (36)                            */
    int n_heads;            /* NH query heads (32)                            */
    int n_kv_heads;         /* NKV key/value heads (8)                        */
    int head_dim;           /* HD (128; need not be D / NH)                   */
    int attention_bias;     /* q/k/v/o projections carry biases               */
    double rms_norm_eps;    /* every RMSNorm, q_norm/k_norm included (1e-6)   */
    double rope_theta;      /* RoPE base (1e6)                                */
} TeConfig;

typedef struct TeLayer {
    void *q_proj, *k_proj, *v_proj;  /* [NH*HD, D], [NKV*HD, D], [NKV*HD, D]          */
    void *o_proj;                    /* [D, NH*HD]                                    */
    void *q_bias, *k_bias, *v_bias;  /* [NH*HD], [NKV*HD], [NKV*HD] (attention_bias)  */
    void *o_bias;                    /* [D] (attention_bias)                          */
    void *q_norm, *k_norm;           /* [HD] each, shared by all heads                */
    void *gate_proj, *up_proj;       /* [F, D]                                        */
    void *down_proj;                 /* [D, F]                                        */
    void *input_layernorm;           /* [D]                                           */
    void *post_attention_layernorm;  /* [D]                                           */
} TeLayer;

typedef struct TeWeights {
    void *embed_tokens;              /* [V, D] (listed; the model reads rows from the file) */
    TeLayer *layers;                 /* n_layers                                      */
    void *norm;                      /* [D] final RMSNorm (hidden_states[-1] only)    */
} TeWeights;

typedef struct TeModel TeModel;

/* Read text_encoder/config.json (a missing key takes transformers' Qwen3Config default).
   Unsupported variants (non-default RoPE, sliding-window layers, other activations) are
   ZI_ERR_FORMAT naming the key. */
zi_status te_config_load(TeConfig *cfg, const char *config_path);
/* The checkpoint's tensor names (without the "model." prefix) and shapes, in state-dict order.
   w->layers is allocated here; free it with te_weights_free_arrays. */
zi_status te_weight_list(const TeConfig *cfg, TeWeights *w, ZiWeightList *wl);
void te_weights_free_arrays(TeWeights *w);
/* Load `dir` (config.json + model[.safetensors | -0000k-of-0000n + index]); tensor names with or
   without "model."; lm_head.weight, if present, is ignored. */
zi_status te_load(TeModel **out, const char *dir, int device);
/* Move the weights to another device (-1 CPU, >= 0 CUDA) by reloading from the mmapped files;
   an offloaded model becomes resident there. */
zi_status te_to_device(TeModel *m, int device);
/* Offload: run on `device`, with the decoder layers in host memory (page-locked for a GPU),
   streamed layer by layer through two device slots on a copy queue during each encode (the
   slots live only for the call). te_to_device makes the model resident again. */
zi_status te_enable_offload(TeModel *m, int device);
int te_offloaded(const TeModel *m);
/* Hold weights only for hidden_states up to `layer` (negative counts from the end): decoder
   layers 0..layer-1, and the final norm only for n_layers (the pipeline passes -2, so the last
   layer and the norm are never read). Takes effect at the next load / move; an encode that asks
   for more loads every layer again. ZI_ERR_ARG when out of range. */
zi_status te_limit_layers(TeModel *m, int layer);
const TeConfig *te_config(const TeModel *m);
int te_device(const TeModel *m);
void te_free(TeModel *m);

/* hidden_states[layer] of transformers' Qwen3Model for one sequence ids[S] (positions 0..S-1,
   causal): layer 0 = embeddings, 1..n_layers-1 = raw output of decoder layer layer-1,
   n_layers = final RMSNorm of the last layer; negative values count from the end (-1 = n_layers).
   Runs only the layers needed. out[S, D] f32 (host). Bad ids / S / layer: ZI_ERR_ARG. */
zi_status te_encode(TeModel *m, float *out, const int64_t *ids, int S, int layer);

#endif /* ZI_TEXT_ENCODER_H */
