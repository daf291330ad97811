/*
 * ops.h - the ops table every model is written over. One table per backend: the CPU one
 * (ops_cpu.c, fp32, the reference) and the CUDA one (ops_cuda.c, bf16 storage with fp32
 * accumulation). Model code holds `void *` buffers whose element type is the backend's
 * (be->act_size bytes each); weights are stored in the backend's weight type.
 *
 * Dimension letters: M rows (tokens), K reduction, N output features, D model width,
 * S sequence length, NH query heads, NKV key/value heads, HD head dim, F FFN width,
 * B batch, C channels, H/W height/width (images only; never heads).
 * Argument order: outputs, inputs, weights, dims. Every op returns a zi_status.
 */
#ifndef ZI_OPS_H
#define ZI_OPS_H

#include "safetensors.h"
#include "zi_common.h"

typedef struct ZiBackend ZiBackend;

typedef struct ZiOps {
    /* ---- memory ---- */
    zi_status (*alloc)(ZiBackend *be, void **ptr, size_t bytes);       /* zero-filled           */
    void (*free)(ZiBackend *be, void *ptr);                             /* NULL-safe             */
    /* host f32[n] -> backend elements (activation type) */
    zi_status (*upload)(ZiBackend *be, void *dst, const float *src, size_t n);
    /* checkpoint tensor data of dtype dt -> backend weight elements */
    zi_status (*upload_weight)(ZiBackend *be, void *dst, const void *src, ZiDtype dt, size_t n);
    /* host f32[n] -> backend f32[n] (tables that stay fp32 on every backend: RoPE cos/sin) */
    zi_status (*upload_f32)(ZiBackend *be, float *dst, const float *src, size_t n);
    /* backend elements -> host f32[n] */
    zi_status (*download)(ZiBackend *be, float *dst, const void *src, size_t n);
    zi_status (*synchronize)(ZiBackend *be);

    /* ---- linear algebra ---- */
    /* out[M,N] = in[M,K] @ w[N,K]^T (+ bias[N]) ; bias may be NULL */
    zi_status (*matmul)(ZiBackend *be, void *out, const void *in, const void *w, const void *bias, int M, int K, int N);
    /* fused feed-forward input (matmul + swiglu_pair, without the [M, 2F] intermediate):
       out[M,F] = silu(in @ w[0:F]^T) * (in @ w[F:2F]^T); w[2F,K] = gate rows, then up rows. Rounded as the
       two ops are (gate and up to the activation type first) */
    zi_status (*matmul_swiglu)(ZiBackend *be, void *out, const void *in, const void *w, int M, int K, int F);
    /* out[S,NH*HD] = softmax(q k^T * scale [+ causal mask]) v per head; q[S,NH*HD], k/v[S,NKV*HD] with their
       rows ld elements apart (ld = 0: packed, NH*HD for q and NKV*HD for k and v; a merged q|k|v projection
       passes ld = (NH + 2 NKV) HD), query head h uses kv head h / (NH/NKV) */
    zi_status (*attention)(ZiBackend *be, void *out, const void *q, const void *k, const void *v, int ld, int S,
                           int NH, int NKV, int HD, int causal, float scale);

    /* ---- normalisation ---- */
    /* out[M,D] = in / sqrt(mean(in^2) + eps) (* w[D] if w) */
    zi_status (*rmsnorm)(ZiBackend *be, void *out, const void *in, const void *w, int M, int D, float eps);
    /* out[M,D] = (in - mean) / sqrt(var + eps), no affine */
    zi_status (*layernorm)(ZiBackend *be, void *out, const void *in, int M, int D, float eps);
    /* out[B,C,HW] = groupnorm over G groups (* gamma[C] + beta[C]), then SiLU if silu */
    zi_status (*groupnorm)(ZiBackend *be, void *out, const void *in, const void *gamma, const void *beta, int B, int C,
                           int HW, int G, float eps, int silu);
    /* fused (DiT block input): out[M,D] = rmsnorm(in) * w[D] * s[D]; s NULL: no scale */
    zi_status (*rmsnorm_scale)(ZiBackend *be, void *out, const void *in, const void *w, const void *s, int M, int D,
                               float eps);
    /* fused (DiT block output): x[M,D] += g[D] * rmsnorm(y) * w[D]; g NULL: x += rmsnorm(y) * w */
    zi_status (*rmsnorm_add_gated)(ZiBackend *be, void *x, const void *y, const void *w, const void *g, int M, int D,
                                   float eps);
    /* fused (between two DiT branches): rmsnorm_add_gated(x, y, w, g) then rmsnorm_scale(h, x, wn, s), the
       updated x read back as stored; one pass over the rows. g or s NULL as in those ops */
    zi_status (*rmsnorm_add_gated_scale)(ZiBackend *be, void *x, void *h, const void *y, const void *w, const void *g,
                                         const void *wn, const void *s, int M, int D, float eps);

    /* ---- elementwise ---- */
    zi_status (*add)(ZiBackend *be, void *out, const void *a, const void *b, size_t n);      /* out = a + b     */
    zi_status (*scale)(ZiBackend *be, void *out, const void *in, float s, size_t n);        /* out = in * s    */
    zi_status (*one_plus)(ZiBackend *be, void *out, const void *in, size_t n);              /* out = 1 + in    */
    zi_status (*silu)(ZiBackend *be, void *out, const void *in, size_t n);
    /* out[n] = silu(gate[n]) * up[n] */
    zi_status (*swiglu)(ZiBackend *be, void *out, const void *gate, const void *up, size_t n);
    /* out[M,F] = silu(gu[M, 0:F]) * gu[M, F:2F] (output of a merged gate/up projection) */
    zi_status (*swiglu_pair)(ZiBackend *be, void *out, const void *gu, int M, int F);
    /* DiT adaLN activations, per row r < R of mod[R, 4D]: out[r] = (1 + mod[r, 0:D], tanh(mod[r, D:2D]),
       1 + mod[r, 2D:3D], tanh(mod[r, 3D:4D])) = (scale_msa, gate_msa, scale_mlp, gate_mlp), each rounded once;
       out may alias mod */
    zi_status (*adaln_gates)(ZiBackend *be, void *out, const void *mod, int R, int D);
    /* out[M,D] = in[M,D] * s[D] (row broadcast) */
    zi_status (*mul_rows)(ZiBackend *be, void *out, const void *in, const void *s, int M, int D);

    /* ---- position ---- */
    /* x[S,NH,HD] rotated in place; cs[S,HD/2,2] = (cos, sin) per pair, fp32 on the backend.
       interleaved: pairs (2j, 2j+1) (Z-Image, complex64 style); else rotate-half: pairs (j, j+HD/2) (Qwen) */
    zi_status (*rope)(ZiBackend *be, void *x, const float *cs, int S, int NH, int HD, int interleaved);
    /* attention input in place in a merged projection qkv[S, (NH + 2 NKV) HD] (q heads, then k, then v): the
       q and k heads RMS-normalised over HD with weights wq / wk (both NULL: no norm), then rotated as `rope`;
       the v heads are left as they are (attention reads all three from qkv with ld = (NH + 2 NKV) HD).
       HD even and at most 256 */
    zi_status (*qkv_norm_rope)(ZiBackend *be, void *qkv, const void *wq, const void *wk, const float *cs, int S,
                               int NH, int NKV, int HD, float eps, int interleaved);

    /* ---- data movement ---- */
    zi_status (*copy)(ZiBackend *be, void *dst, const void *src, size_t n);                 /* n elements      */
    /* dst[M,D] = row[D] for every row */
    zi_status (*fill_rows)(ZiBackend *be, void *dst, const void *row, int M, int D);
    /* out[N, M] = in[M, N]^T */
    zi_status (*transpose)(ZiBackend *be, void *out, const void *in, int M, int N);
    /* strided 2-D blocks: dst[b*dst_bs + r*dst_ld + x] = src[b*src_bs + r*src_ld + x] for b < B, r < R, x < X
       (tiles cut from / pasted into images); dst and src must not overlap */
    zi_status (*copy2d)(ZiBackend *be, void *dst, const void *src, int B, int R, int X, size_t dst_bs, size_t dst_ld,
                        size_t src_bs, size_t src_ld);
    /* linear seam blend of diffusers' blend_v / blend_h, in place on b: for o < O, t < e, x < X
       b[o*b_ld + t*X + x] = a[o*a_ld + t*X + x] * (1 - t/e) + b[...] * (t/e)   (f32, weights from double)
       rows of a tile: O = C, X = width; columns: O = C*height, X = 1 */
    zi_status (*blend_seam)(ZiBackend *be, void *b, const void *a, int O, int e, int X, size_t b_ld, size_t a_ld);
    /* latent in[C,F,H,W] -> tokens out[(F/pF)(H/pH)(W/pW), pF*pH*pW*C], channel fastest (Z-Image order) */
    zi_status (*patchify)(ZiBackend *be, void *out, const void *in, int C, int F, int H, int W, int pF, int pH, int pW);
    /* inverse of patchify: tokens in[...] -> out[C,F,H,W] */
    zi_status (*unpatchify)(ZiBackend *be, void *out, const void *in, int C, int F, int H, int W, int pF, int pH, int pW);

    /* ---- images ---- */
    /* out[B,Co,H,W] = conv2d(in[B,Ci,H,W], w[Co,Ci,k,k]) + bias[Co]; stride 1, zero padding pad */
    zi_status (*conv2d)(ZiBackend *be, void *out, const void *in, const void *w, const void *bias, int B, int Ci,
                        int H, int W, int Co, int k, int pad);
    /* out[B,Co,Ho,Wo] = conv2d(groupnorm(in[B,Ci,H,W]), w) + bias (+ res[B,Co,Ho,Wo] if res): the groupnorm op (G
       groups, * gamma + beta, then SiLU if silu), conv2d and add in one op, rounded to the activation type where the
       separate ops would round; the normalised input need not be stored. out must not overlap in; res may be out. */
    zi_status (*groupnorm_conv2d)(ZiBackend *be, void *out, const void *in, const void *res, const void *gamma,
                                  const void *beta, const void *w, const void *bias, int B, int Ci, int H, int W, int Co,
                                  int k, int pad, int G, float eps, int silu);
    /* out[B,Co,Ho,Wo] = conv2d(nearest-neighbour 2x of in[B,Ci,H,W], w) + bias, Ho = 2H + 2 pad - k + 1; the 2x
       input need not be stored. out must not overlap in. */
    zi_status (*upsample_conv2d)(ZiBackend *be, void *out, const void *in, const void *w, const void *bias, int B,
                                 int Ci, int H, int W, int Co, int k, int pad);

    /* ---- the sampler: latents and predictions are f32 on every backend ---- */
    /* backend bytes -> host bytes, no conversion (f32 latents, uint8 images); returns once dst is written */
    zi_status (*download_bytes)(ZiBackend *be, void *dst, const void *src, size_t bytes);
    /* out[n] (activation type) = in[n] (f32), rounded to nearest even where the type is narrower */
    zi_status (*to_act)(ZiBackend *be, void *out, const float *in, size_t n);
    /* out[n] (f32) = in[n] (activation type) */
    zi_status (*to_f32)(ZiBackend *be, float *out, const void *in, size_t n);
    /* pred[n] = pos + g * (pos - neg), each op rounded in f32 (pred may alias pos or neg) */
    zi_status (*cfg_combine)(ZiBackend *be, float *pred, const float *pos, const float *neg, float g, size_t n);
    /* *sum (host) = sum of x[i]^2 over x[n] (f32), accumulated in double; waits for the result */
    zi_status (*sumsq_f32)(ZiBackend *be, double *sum, const float *x, size_t n);
    /* out[n] = in[n] * s (f32; out may alias in) */
    zi_status (*scale_f32)(ZiBackend *be, float *out, const float *in, float s, size_t n);
    /* flow-match Euler step with v = -pred: x[n] = x + dt * v (f32, the product rounded before the add) */
    zi_status (*euler_step)(ZiBackend *be, float *x, const float *pred, float dt, size_t n);
    /* out[n] (activation type) = lat[n] / scaling_factor + shift_factor (f32, one rounding to the type at the end) */
    zi_status (*latents_to_vae)(ZiBackend *be, void *out, const float *lat, float scaling_factor, float shift_factor,
                                size_t n);

    /* ---- image output (VaeImageProcessor.postprocess) ---- */
    /* out[B,H,W,C] uint8 (backend bytes) = round_half_even(clamp(img * 0.5 + 0.5, 0, 1) * 255) of img[B,C,H,W]
       (activation type); NaN gives 0. bf16_rule: img and img * 0.5 + 0.5 are rounded to bf16 first, as
       diffusers' bf16 tensor arithmetic does */
    zi_status (*image_to_uint8)(ZiBackend *be, uint8_t *out, const void *img, int B, int C, int H, int W, int bf16_rule);
    /* out[B,H,W,C] f32 (backend) = clamp(img[B,C,H,W] * 0.5 + 0.5, 0, 1) (output_type "np") */
    zi_status (*image_to_float_hwc)(ZiBackend *be, float *out, const void *img, int B, int C, int H, int W);

    /* ---- offload: host-resident weights ---- */
    /* host memory the backend copies from asynchronously (CUDA: page-locked; CPU: plain), zero-filled;
       host_free is NULL-safe */
    zi_status (*host_alloc)(ZiBackend *be, void **ptr, size_t bytes);
    void (*host_free)(ZiBackend *be, void *ptr);
    /* checkpoint tensor data of dtype dt -> n backend weight elements in host memory (upload_weight's
       conversion, done on the host) */
    zi_status (*weight_to_host)(ZiBackend *be, void *dst, const void *src, ZiDtype dt, size_t n);
    /* host bytes -> backend bytes, no conversion, in order with the compute ops; src may be reused on return */
    zi_status (*upload_bytes)(ZiBackend *be, void *dst, const void *src, size_t bytes);
    /* A copy queue: a second stream for host -> backend copies that overlap the compute ops, with nslots
       slots (device buffers the caller owns). A slot's copy waits for the compute that last read the slot
       (queue_release); compute waits for the slot's copy (queue_acquire). queue_destroy waits for the
       queued copies and is NULL-safe. On the CPU the copy is a memcpy and the ordering calls do nothing. */
    zi_status (*queue_create)(ZiBackend *be, void **queue, int nslots);
    void (*queue_destroy)(ZiBackend *be, void *queue);
    /* queue dst (backend) <- src (host_alloc memory), bytes, as slot's next copy; returns at once */
    zi_status (*queue_copy)(ZiBackend *be, void *queue, int slot, void *dst, const void *src, size_t bytes);
    /* compute ops queued from now on run after slot's last queued copy has landed */
    zi_status (*queue_acquire)(ZiBackend *be, void *queue, int slot);
    /* the compute ops queued so far are slot's last readers: its next copy waits for them */
    zi_status (*queue_release)(ZiBackend *be, void *queue, int slot);

    /* ---- replay (CUDA graphs; NULL on backends without them) ---- */
    /* Record instead of run: the ops queued from capture_begin to capture_end are not executed but kept in
       *graph, to be run by replay with the same arguments (same buffers, sizes and scalars). capture_begin
       fails (ZI_ERR_STATE) where recording is off (ZIMAGE_GRAPHS=0, ZIMAGE_PROFILE, ZIMAGE_SYNC); after a
       failed op capture_end must still be called: it then returns an error and no graph. */
    zi_status (*capture_begin)(ZiBackend *be);
    zi_status (*capture_end)(ZiBackend *be, void **graph);
    /* queue the recorded ops; *ran = 0 (nothing queued) when the backend has since moved a buffer the
       recording may use (its scratch), so the caller records again */
    zi_status (*replay)(ZiBackend *be, void *graph, int *ran);
    void (*graph_free)(ZiBackend *be, void *graph); /* NULL-safe */
} ZiOps;

struct ZiBackend {
    const ZiOps *ops;
    const char *name;     /* "cpu" or "cuda:N"                      */
    int device;           /* -1 for the CPU, else the CUDA ordinal  */
    size_t act_size;      /* bytes per activation element           */
    size_t weight_size;   /* bytes per weight element               */
    void *impl;           /* backend-private state                  */
};

/* Passed as the device to a model's *_load: read the config, open and check the checkpoint
   (every name, shape, dtype), but upload no weights until *_to_device or the first forward
   (which then loads onto the CPU). Lets from_pretrained(...).to("cuda") read weights once. */
#define ZI_DEVICE_DEFER (-2)

/* The process-wide backend for a device: -1 = CPU, >= 0 = CUDA ordinal. Created on first use;
   without CUDA support or without that GPU, a ZI_ERR_STATE naming the reason. */
zi_status zi_backend_get(int device, ZiBackend **out);
/* Number of usable CUDA devices (0 when built without CUDA or without a driver). */
int zi_cuda_device_count(void);
/* Whether this build has the CUDA backend compiled in. */
int zi_cuda_compiled(void);
/* Device-wide free / total memory of a GPU (what nvidia-smi reports, all processes). */
zi_status zi_cuda_mem_info(int device, size_t *free_bytes, size_t *total_bytes);
/* Name, SM count, max threads per SM and compute capability of a GPU. */
zi_status zi_cuda_device_props(int device, char *name, size_t name_len, int *sms, int *threads_per_sm, int *cc_major,
                               int *cc_minor);

/* Pointer to element i of a backend buffer of activation / weight elements. */
static inline void *zi_act(const ZiBackend *be, const void *p, size_t i) { return (char *)p + i * be->act_size; }
static inline void *zi_wt(const ZiBackend *be, const void *p, size_t i) { return (char *)p + i * be->weight_size; }

/* ---- weights: name table -> one allocation ---- */
#define ZI_WEIGHT_NAME_MAX 192
typedef struct ZiWeightSpec {
    char name[ZI_WEIGHT_NAME_MAX];   /* checkpoint (diffusers / transformers) tensor name */
    int ndim;
    int64_t shape[4];
    void **slot;                     /* receives the tensor's address inside the block    */
} ZiWeightSpec;

typedef struct ZiWeightList {
    ZiWeightSpec *specs;
    int n, cap;
    size_t total;                    /* elements over all specs */
} ZiWeightList;

/* Append a spec: name printf-style, then ndim and the dims. */
zi_status zi_weights_add(ZiWeightList *wl, void **slot, int ndim, const int64_t *shape, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;
/* Check that the archive holds every spec with the right shape and a loadable dtype (reads
   headers only). Names are looked up as `prefix + name` first when prefix is non-NULL, then as `name`. */
zi_status zi_weights_check(const StArchive *ar, const ZiWeightList *wl, const char *prefix);
/* zi_weights_check, then one block for all specs on `be`, then upload every tensor. */
zi_status zi_weights_load(ZiBackend *be, const StArchive *ar, ZiWeightList *wl, const char *prefix, void **block);
void zi_weights_list_free(ZiWeightList *wl);

/* Shorthand used by the model files: ZI_W(list, &ptr, "name", d0, d1) */
#define ZI_W1(wl, slot, d0, ...) zi_weights_add((wl), (void **)(slot), 1, (const int64_t[]){(d0)}, __VA_ARGS__)
#define ZI_W2(wl, slot, d0, d1, ...) zi_weights_add((wl), (void **)(slot), 2, (const int64_t[]){(d0), (d1)}, __VA_ARGS__)
#define ZI_W4(wl, slot, d0, d1, d2, d3, ...) \
    zi_weights_add((wl), (void **)(slot), 4, (const int64_t[]){(d0), (d1), (d2), (d3)}, __VA_ARGS__)

/* ---- offload: host-resident weights ---- */
/* Start reading [data, data + bytes) of a mapped checkpoint into the page cache unless it is there. */
void zi_prefetch(const void *data, size_t bytes);
/* The checkpoint tensor of a spec (prefix + name first, then name), or NULL. */
const StTensor *zi_weights_find(const StArchive *ar, const ZiWeightSpec *s, const char *prefix);
/* Upload the specs' tensors back to back into block (backend memory, or host memory from ops->host_alloc
   when host), pointing each slot at its copy; reads ahead of the copies on a cold checkpoint. The specs
   must have been checked (zi_weights_check). */
zi_status zi_weights_fill(ZiBackend *be, const StArchive *ar, ZiWeightList *wl, const char *prefix, void *block,
                          int host);
/* zi_weights_load into host memory (ops->host_alloc, ops->weight_to_host): the same packing, so
   zi_weights_place can point the specs into a backend copy of the block. */
zi_status zi_weights_load_host(ZiBackend *be, const StArchive *ar, ZiWeightList *wl, const char *prefix, void **block);
/* Point every spec's slot into block (backend weight elements packed in list order, as the loaders do). */
void zi_weights_place(const ZiBackend *be, ZiWeightList *wl, void *block);

/* Device memory accounting of the CUDA backend of a GPU: every cudaMalloc it made (weights,
   activations, scratch, staging, workspace) that is not yet freed, the peak of that since the
   last reset (or process start), and the page-locked host memory (host_alloc and staging).
   All zero without CUDA or before the GPU's backend exists. */
typedef struct ZiMemStats {
    size_t allocated, peak;  /* device bytes */
    size_t pinned;           /* page-locked host bytes */
} ZiMemStats;
zi_status zi_cuda_memory_stats(int device, ZiMemStats *s);
/* peak = allocated now */
zi_status zi_cuda_reset_peak_memory(int device);
/* Free the backend's cached scratch and staging buffers on a GPU (they regrow on demand), as
   torch.cuda.empty_cache() gives cached blocks back; a no-op before the backend exists. */
zi_status zi_cuda_empty_cache(int device);

#endif /* ZI_OPS_H */
