/*
 * vae.h - the decoder of diffusers' AutoencoderKL (the FLUX.1 / Z-Image VAE: 16 latent
 * channels, 8x upsampling), written once over the ops table, plus the conversion of its output
 * to uint8 RGB that the pipeline's VaeImageProcessor does, on host arrays. One forward runs one
 * sample; a batch is decoded sample by sample (diffusers' slicing, same result per sample).
 */
#ifndef ZI_VAE_H
#define ZI_VAE_H

#include "ops.h"

#define VAE_MAX_BLOCKS 8

typedef struct VaeConfig {
    int in_channels;                       /* image channels of the encoder (unused here)    */
    int out_channels;                      /* Co image channels out of conv_out (3)          */
    int latent_channels;                   /* L latent channels into the decoder (16)        */
    int n_blocks;                          /* NB up blocks = len(block_out_channels) (4)     */
    int block_out_channels[VAE_MAX_BLOCKS]; /* encoder order; the decoder runs them reversed */
    int layers_per_block;                  /* up blocks get layers_per_block + 1 ResNets     */
    int norm_num_groups;                   /* G groups of every GroupNorm (32)               */
    int mid_attention;                     /* mid_block_add_attention                        */
    int post_quant_conv;                   /* use_post_quant_conv: 1x1 L->L before conv_in   */
    int use_quant_conv;                    /* encoder side, reported only                    */
    int force_upcast;                      /* reported only (ZImagePipeline ignores it)      */
    int sample_size;                       /* default tile_sample_min_size of tiled decoding */
    double scaling_factor;                 /* for the pipeline: z = latents / sf + shift     */
    double shift_factor;
    int has_shift_factor;                  /* 0 when shift_factor is null / absent            */
} VaeConfig;

typedef struct VaeResnet {
    int ci, co;                            /* channels in / out                              */
    void *norm1_w, *norm1_b;               /* [ci]                                           */
    void *conv1_w, *conv1_b;               /* [co, ci, 3, 3], [co]                           */
    void *norm2_w, *norm2_b;               /* [co]                                           */
    void *conv2_w, *conv2_b;               /* [co, co, 3, 3], [co]                           */
    void *short_w, *short_b;               /* [co, ci, 1, 1], [co] only when ci != co        */
} VaeResnet;

typedef struct VaeWeights {
    void *pq_w, *pq_b;                     /* post_quant_conv [L, L, 1, 1], [L] (optional)   */
    void *conv_in_w, *conv_in_b;           /* [C0, L, 3, 3], [C0]  C0 = widest = last boc    */
    VaeResnet mid[2];                      /* mid_block.resnets.0 / .1 (C0 -> C0)            */
    void *attn_norm_w, *attn_norm_b;       /* [C0]                                           */
    void *to_q, *to_q_b, *to_k, *to_k_b;   /* [C0, C0], [C0]                                 */
    void *to_v, *to_v_b, *to_out, *to_out_b;
    VaeResnet *up;                         /* [NB][layers_per_block + 1], execution order    */
    void *ups_w[VAE_MAX_BLOCKS];           /* up_blocks.i.upsamplers.0.conv [c, c, 3, 3]     */
    void *ups_b[VAE_MAX_BLOCKS];           /*   for i < NB - 1                               */
    void *norm_out_w, *norm_out_b;         /* conv_norm_out [Cl]  Cl = block_out_channels[0] */
    void *conv_out_w, *conv_out_b;         /* [Co, Cl, 3, 3], [Co]                           */
} VaeWeights;

typedef struct VaeModel VaeModel;

/* Read vae/config.json (a missing key takes diffusers' AutoencoderKL default). */
zi_status vae_config_load(VaeConfig *cfg, const char *config_path);
/* The decoder tensors' names and shapes for cfg, in state-dict order. With an archive, each
   mid-block attention tensor takes the legacy name (query/key/value/proj_attn) when only
   that one is in the file; without one (manifests) the current names are listed. */
zi_status vae_weight_list(const VaeConfig *cfg, VaeWeights *w, ZiWeightList *wl, const StArchive *ar);
/* Release the arrays vae_weight_list allocated inside w (not the weights themselves). */
void vae_weights_arrays_free(VaeWeights *w);
/* Load `dir` (config.json + diffusion_pytorch_model[.safetensors | shards + index]); the
   encoder tensors are left in the file. */
zi_status vae_load(VaeModel **out, const char *dir, int device);
/* Move the weights to another device (-1 CPU, >= 0 CUDA) by reloading from the mmapped files;
   an offloaded model becomes resident there. */
zi_status vae_to_device(VaeModel *m, int device);
/* Offload: decode on `device` with the weights in host memory (page-locked for a GPU); each decode
   call copies them to the device whole and frees them and its activations when it returns.
   vae_to_device makes the model resident again. */
zi_status vae_enable_offload(VaeModel *m, int device);
int vae_offloaded(const VaeModel *m);
const VaeConfig *vae_config(const VaeModel *m);
int vae_device(const VaeModel *m);
/* Output size factor 2^(NB-1). */
int vae_up_factor(const VaeModel *m);
void vae_free(VaeModel *m);

/* The backend holding the weights; weights deferred at load are loaded now, onto the CPU. */
zi_status vae_backend(VaeModel *m, ZiBackend **be);

/* AutoencoderKL tiling (enable_tiling / tiled_decode). Off at load, with diffusers' defaults
   tile_sample_min_size = sample_size, tile_latent_min_size = int(sample_size / f), overlap 0.25.
   When on, a latent larger than tile_latent in either dimension is decoded in tiles of
   tile_latent latents every int(tile_latent * (1 - overlap)), blended linearly over
   int(tile_sample * overlap) pixels and cropped, and the activations are sized for one tile. */
typedef struct VaeTiling {
    int enabled;                           /* use_tiling                                     */
    int tile_sample;                       /* tile_sample_min_size (pixels)                  */
    int tile_latent;                       /* tile_latent_min_size (latents)                 */
    double overlap;                        /* tile_overlap_factor                            */
} VaeTiling;

/* Set the tiling state: t->tile_sample / tile_latent <= 0 or overlap < 0 keep the current value
   (a size given alone sets the other to match: tile_sample = f * tile_latent). ZI_ERR_ARG where the
   tiles would not cover the image exactly as diffusers crops them (int(tile_sample * overlap) pixels
   blended, tile_sample - blend kept, which must equal f * int(tile_latent * (1 - overlap))). */
zi_status vae_set_tiling(VaeModel *m, const VaeTiling *t);
VaeTiling vae_get_tiling(const VaeModel *m);
/* Whether a latent of h x w is decoded in tiles with the current settings. */
int vae_tiles(const VaeModel *m, int h, int w);
/* Bytes of the activation buffer a first decode of an h x w latent allocates, for elements of
   act_size bytes (4 on the CPU, 2 on CUDA): one tile's worth when tiled. */
size_t vae_acts_bytes(const VaeModel *m, int h, int w, size_t act_size);

/* Decoder.forward (after the optional post_quant_conv) on B samples, one at a time, on the
   model's backend: z[B, L, h, w] (activation type, already un-scaled by the pipeline) ->
   out[B, Co, f*h, f*w] (activation type), f = vae_up_factor. No host transfer. Tiled when
   vae_tiles(m, h, w). */
zi_status vae_decode_dev(VaeModel *m, void *out, const void *z, int B, int h, int w);

/* vae_decode_dev on host f32 arrays z[B, L, h, w] -> out[B, Co, f*h, f*w]. */
zi_status vae_decode(VaeModel *m, float *out, const float *z, int B, int h, int w);

/* VaeImageProcessor.postprocess(..., "pil") as uint8 on host arrays: img[B, C, H, W] f32 ->
   out[B, H, W, C] with v = clamp(x * 0.5 + 0.5, 0, 1), u8 = round_half_even(v * 255). bf16 != 0
   reproduces the pipeline's bf16 tensor: x rounded to bf16 and x * 0.5 + 0.5 rounded to bf16
   before the clamp. The CPU backend's image_to_uint8 (the pipeline runs that op on its device). */
void vae_postprocess_uint8(uint8_t *out, const float *img, int B, int C, int H, int W, int bf16);

#endif /* ZI_VAE_H */
