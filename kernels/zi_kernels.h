/*
 * zi_kernels.h - the C prototypes of every CUDA launcher in the kernels/ .cu files, included by
 * csrc/ops_cuda.c. Activation and weight buffers are bf16 (passed as void *), statistics and
 * tables are fp32. Every launcher enqueues on `stream` and returns cudaGetLastError(), so the
 * caller can record which launch failed. Shapes follow csrc/ops.h.
 */
#ifndef ZI_KERNELS_H
#define ZI_KERNELS_H

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- conversion (convert.cu) ---- */
/* dst bf16[n] = src[n] of dtype src_dtype: 0 = f32, 1 = bf16, 2 = f16 (round to nearest even) */
cudaError_t zi_to_bf16_cuda(void *dst, const void *src, int src_dtype, size_t n, cudaStream_t stream);
/* dst f32[n] = src bf16[n] */
cudaError_t zi_bf16_to_f32_cuda(float *dst, const void *src, size_t n, cudaStream_t stream);

/* ---- elementwise (elementwise.cu) ---- */
enum { ZI_UNARY_SCALE, ZI_UNARY_ONE_PLUS, ZI_UNARY_SILU };
/* out[n] = f(in[n]); s is the factor for ZI_UNARY_SCALE */
cudaError_t zi_unary_cuda(void *out, const void *in, int op, float s, size_t n, cudaStream_t stream);
enum { ZI_BINARY_ADD, ZI_BINARY_SWIGLU };
/* out[n] = a + b, or silu(a) * b */
cudaError_t zi_binary_cuda(void *out, const void *a, const void *b, int op, size_t n, cudaStream_t stream);
/* out[m,f] = silu(gu[m,f]) * gu[m,F+f] for gu[M,2F] (merged gate/up projection) */
cudaError_t zi_swiglu_pair_cuda(void *out, const void *gu, int M, int F, cudaStream_t stream);
/* out[R,4D] = (1 + mod[:, 0:D], tanh(mod[:, D:2D]), 1 + mod[:, 2D:3D], tanh(mod[:, 3D:4D])) per row; out may alias mod */
cudaError_t zi_adaln_gates_cuda(void *out, const void *mod, int R, int D, cudaStream_t stream);
/* out[M,D] = in[M,D] * s[D] */
cudaError_t zi_mul_rows_cuda(void *out, const void *in, const void *s, int M, int D, cudaStream_t stream);
/* x[M,N] += bias[N] (used when the matmul bias cannot go through the cuBLASLt epilogue) */
cudaError_t zi_add_bias_cuda(void *x, const void *bias, int M, int N, cudaStream_t stream);
/* out[B,C,HW] = bias[C] broadcast over each plane */
cudaError_t zi_fill_planes_cuda(void *out, const void *bias, int B, int C, size_t HW, cudaStream_t stream);
/* dst[M,D] = row[D] */
cudaError_t zi_fill_rows_cuda(void *dst, const void *row, int M, int D, cudaStream_t stream);
/* out[N,M] = in[M,N]^T */
cudaError_t zi_transpose_cuda(void *out, const void *in, int M, int N, cudaStream_t stream);
/* to_tokens = 1: img[C,F,H,W] -> tok[(F/pF)(H/pH)(W/pW), pF*pH*pW*C]; 0: the inverse */
cudaError_t zi_patch_cuda(void *tok, void *img, int C, int F, int H, int W, int pF, int pH, int pW, int to_tokens,
                          cudaStream_t stream);
/* out[B,C,2H,2W] = nearest 2x of in[B,C,H,W] */
cudaError_t zi_upsample2x_cuda(void *out, const void *in, int B, int C, int H, int W, cudaStream_t stream);
/* b[o*b_ld + t*X + x] = a[o*a_ld + t*X + x] * (1 - t/e) + b[...] * (t/e) for o < O, t < e, x < X (seam blend) */
cudaError_t zi_blend_seam_cuda(void *b, const void *a, int O, int e, int X, size_t b_ld, size_t a_ld,
                               cudaStream_t stream);
/* col[Ci*k*k, np] = patches of in[Ci,H,W] for output pixels p0 .. p0+np (stride 1, zero pad) */
cudaError_t zi_im2col_cuda(void *col, const void *in, int Ci, int H, int W, int k, int pad, size_t p0, int np,
                           cudaStream_t stream);

/* ---- convolution (conv.cu): implicit GEMM on the tensor cores over an NHWC copy of the input ---- */
/* out[B,Co,Ho,Wo] = conv2d(x, w) + bias[Co] (bias may be NULL), rounded to bf16, then + res[B,Co,Ho,Wo] and rounded
   again when res (res may be out); stride 1, zero padding pad; x [B,H,W,Ci] NHWC, read as its nearest-2x upsample
   (a 2H x 2W image) when up; w [Co, k*k, Ci] (zi_conv_pack_weight_cuda). Ho = Hc + 2 pad - k + 1 for the conv's
   input size Hc (H or 2H). Needs Ci % 8 == 0 and 16-byte aligned x and w (cudaErrorInvalidValue otherwise).
   tile: 0 = chosen by the shape and device, else a block tile configuration of conv.cu's CONV_CFG_LIST or (sm_90a)
   CONV90_CFG_LIST; a wgmma tile on a device without sm_90a code falls back to the shape's mma.sync tile */
cudaError_t zi_conv2d_igemm_cuda(void *out, const void *x, const void *w, const void *bias, const void *res, int B,
                                 int Ci, int H, int W, int Co, int k, int pad, int up, int tile, cudaStream_t stream);
/* the same for output rows y0 .. y0+ny of the full image (B = 1 unless the band is the whole image), with x
   holding conv-input rows ys .. (every row the band reads); the output and res are the full [B, Co, Ho, Wo]
   tensors. Not with up unless ys = 0 */
cudaError_t zi_conv2d_igemm_band_cuda(void *out, const void *x, const void *w, const void *bias, const void *res, int B,
                                      int Ci, int H, int W, int Co, int k, int pad, int up, int y0, int ny, int ys,
                                      int tile, cudaStream_t stream);
/* nhwc[B,HW,C] = in[B,C,plane][:, :, :HW] (plane >= HW: a band of rows of a larger image), or with stats
   (device float2 [B*G] (mean, rstd) from zi_groupnorm_stats_cuda) (in - mean) * rstd (* gamma[C]) (+ beta[C]) (then SiLU if silu), rounded to bf16 once */
cudaError_t zi_conv_pack_input_cuda(void *nhwc, const void *in, int B, int C, int HW, size_t plane, const float *stats,
                                    int G, const void *gamma, const void *beta, int silu, cudaStream_t stream);
/* wp[Co, kk, Ci] = w[Co, Ci, kk] (kk = k*k taps) */
cudaError_t zi_conv_pack_weight_cuda(void *wp, const void *w, int Co, int Ci, int kk, cudaStream_t stream);
/* whether zi_conv2d_direct_cuda takes this conv (host function): 3x3, padding 1, no upsample, Co <= 4, Ci <= ~500 */
int zi_conv2d_direct_supported(int Ci, int Co, int k, int pad, int up);
/* out[B,Co,H,W] = conv3x3(pre(x), w) + bias (bias may be NULL), rounded to bf16, then + res and rounded again (res
   may be out), padding 1, on the NCHW input x[B,Ci,H,W] and the unpacked weights w[Co,Ci,3,3]; pre = the
   groupnorm (+ SiLU) of zi_conv_pack_input_cuda with stats (NULL: none), rounded to bf16 as the packing pass
   rounds it. x must not overlap out. For a few output channels (conv_out): no packing pass. */
cudaError_t zi_conv2d_direct_cuda(void *out, const void *x, const void *w, const void *bias, const void *res, int B,
                                  int Ci, int H, int W, int Co, const float *stats, int G, const void *gamma,
                                  const void *beta, int silu, cudaStream_t stream);
/* float2 slots of the partials scratch zi_groupnorm_stats_cuda needs (host function) */
size_t zi_groupnorm_stats_partials(int B, int C, int HW, int G);
/* stats[B*G] (float2: mean, rstd = 1/sqrt(biased var + eps)) of the groups of in[B,C,HW]; partials: device
   float2[zi_groupnorm_stats_partials(B, C, HW, G)] scratch. Deterministic (no atomics). */
cudaError_t zi_groupnorm_stats_cuda(float *stats, float *partials, const void *in, int B, int C, int HW, int G, float eps,
                                    cudaStream_t stream);

/* ---- normalisation (norm.cu) ---- */
/* out[M,D] = in / sqrt(mean(in^2) + eps) (* w[D] if w) */
cudaError_t zi_rmsnorm_cuda(void *out, const void *in, const void *w, int M, int D, float eps, cudaStream_t stream);
/* out[M,D] = in / sqrt(mean(in^2) + eps) * w[D] * s[D] (w or s NULL: 1) */
cudaError_t zi_rmsnorm_scale_cuda(void *out, const void *in, const void *w, const void *s, int M, int D, float eps,
                                  cudaStream_t stream);
/* x[M,D] += g[D] * y / sqrt(mean(y^2) + eps) * w[D] (g or w NULL: 1) */
cudaError_t zi_rmsnorm_add_gated_cuda(void *x, const void *y, const void *w, const void *g, int M, int D, float eps,
                                      cudaStream_t stream);
/* zi_rmsnorm_add_gated_cuda(x, y, w, g), then h[M,D] = zi_rmsnorm_scale_cuda(x, wn, s), in one kernel */
cudaError_t zi_rmsnorm_add_gated_scale_cuda(void *x, void *h, const void *y, const void *w, const void *g,
                                            const void *wn, const void *s, int M, int D, float eps,
                                            cudaStream_t stream);
/* out[M,D] = (in - mean) / sqrt(var + eps) */
cudaError_t zi_layernorm_cuda(void *out, const void *in, int M, int D, float eps, cudaStream_t stream);
/* out[B,C,HW] = groupnorm(in) (* gamma + beta) (then SiLU); stats: device double[2*B*G] scratch */
cudaError_t zi_groupnorm_cuda(void *out, const void *in, const void *gamma, const void *beta, int B, int C, size_t HW,
                              int G, float eps, int silu, double *stats, cudaStream_t stream);

/* ---- position (rope.cu) ---- */
/* x[S,NH,HD] rotated in place by cs[S,HD/2,2] (fp32); interleaved pairs (2j,2j+1), else (j,j+HD/2) */
cudaError_t zi_rope_cuda(void *x, const float *cs, int S, int NH, int HD, int interleaved, cudaStream_t stream);
/* in place in qkv[S,(NH+2NKV)HD]: the q and k heads RMS-normalised per head with wq / wk (both NULL: no norm)
   and rotated as zi_rope_cuda; the v heads untouched; HD even, at most 256 */
cudaError_t zi_qkv_norm_rope_cuda(void *qkv, const void *wq, const void *wk, const float *cs, int S, int NH, int NKV,
                                  int HD, float eps, int interleaved, cudaStream_t stream);

/* ---- attention (attention.cu) ---- */
/* out[S,NH*HD] = softmax(q k^T * scale (+ causal mask)) v per head; q[S,NH*HD], k/v[S,NKV*HD], their rows ld
   elements apart (0: packed; out is always packed).
   Tensor-core kernel for HD in {32,64,96,128} with 16-byte aligned buffers and scale > 0 (HD = 128 on
   Hopper: zi_attention_sm90_cuda); a CUDA-core kernel for any other HD up to 1024 (ops_cuda.c sends
   HD > 128 to cuBLASLt GEMMs first).
   cudaErrorInvalidValue for a head dim it cannot take. */
cudaError_t zi_attention_cuda(void *out, const void *q, const void *k, const void *v, int ld, int S, int NH, int NKV,
                              int HD, int causal, float scale, cudaStream_t stream);
/* The Hopper path of zi_attention_cuda (attention_sm90.cu): wgmma + TMA flash attention for HD == 128 with
   16-byte aligned buffers and scale > 0, on a compute capability 9.x device whose loaded code is sm_90a.
   *taken = 0 (nothing launched, cudaSuccess) when it cannot run this call; ZIMAGE_ATTN_SM90=0 turns it off. */
cudaError_t zi_attention_sm90_cuda(void *out, const void *q, const void *k, const void *v, int ld, int S, int NH,
                                   int NKV, int HD, int causal, float scale, cudaStream_t stream, int *taken);
/* Lab switch of zi_attention_sm90_cuda's tile shape: bm = 128 or 192 forces it (where the call can take it),
   anything else chooses by shape; returns the previous setting (0 = by shape). ZIMAGE_ATTN90_BM sets it at start. */
int zi_attention_sm90_force_bm(int bm);

/* ---- Hopper GEMM (gemm_sm90.cu): TMA + wgmma, persistent, sm_90a only ---- */
/* out[M,F] = silu(bf16(in[M,K] @ w[0:F,K]^T)) * bf16(in @ w[F:2F,K]^T), w = [2F, K] (gate rows, then up rows),
   rounded as matmul + zi_swiglu_pair_cuda. Takes K % 8 == 0, F % 128 == 0 and 16-byte aligned buffers on a
   compute capability 9.x device whose loaded code is sm_90a; *taken = 0 (nothing launched, cudaSuccess)
   otherwise. ZIMAGE_GEMM_SM90=0 turns it off. */
cudaError_t zi_matmul_swiglu_sm90_cuda(void *out, const void *in, const void *w, int M, int K, int F,
                                       cudaStream_t stream, int *taken);
/* out[M,N] = in[M,K] @ w[N,K]^T, the same kernel with a plain epilogue (K % 8 == 0, N % 8 == 0); *taken as above */
cudaError_t zi_matmul_sm90_cuda(void *out, const void *in, const void *w, int M, int K, int N, cudaStream_t stream,
                                int *taken);

/* p[r, j] (bf16) = softmax_j(s[r, j]) over j < cols (row stride ld, fp32 scores already scaled); causal:
   only j <= row0 + r count, the rest of the row is 0. Used by the GEMM attention path for HD > 128. */
cudaError_t zi_softmax_rows_cuda(void *p, const float *s, int rows, int cols, int ld, int row0, int causal,
                                 cudaStream_t stream);

/* ---- matmul fallback (matmul.cu) ---- */
/* out[M,N] = in[M,K] @ w[N,K]^T (+ bias[N]); plain tiled kernel used only when cuBLASLt finds no algorithm */
/* out[M,N] = in[M,K] @ w[N,K]^T (+ bias[N]) for M <= 4 rows (zi_gemv_suits: K % 8 == 0, in and w 16-byte aligned) */
int zi_gemv_suits(const void *in, const void *w, int M, int K);
cudaError_t zi_gemv_cuda(void *out, const void *in, const void *w, const void *bias, int M, int K, int N,
                         cudaStream_t stream);
cudaError_t zi_matmul_fallback_cuda(void *out, const void *in, const void *w, const void *bias, int M, int K, int N,
                                    cudaStream_t stream);

/* ---- the pipeline loop and image output (pipeline.cu); f32 arithmetic as the CPU backend, bit for bit ---- */
/* pred[n] = pos + g * (pos - neg) (pred may alias pos or neg) */
cudaError_t zi_cfg_combine_cuda(float *pred, const float *pos, const float *neg, float g, size_t n, cudaStream_t stream);
/* out[n] = in[n] * s */
cudaError_t zi_scale_f32_cuda(float *out, const float *in, float s, size_t n, cudaStream_t stream);
/* x[n] = x + dt * (-pred) */
cudaError_t zi_euler_step_cuda(float *x, const float *pred, float dt, size_t n, cudaStream_t stream);
/* out bf16[n] = lat[n] / sf + shift */
cudaError_t zi_latents_to_vae_cuda(void *out, const float *lat, float sf, float shift, size_t n, cudaStream_t stream);
/* *out (device double) = sum x[i]^2 in double, deterministic; partials: device double[ZI_SUMSQ_BLOCKS] scratch */
#define ZI_SUMSQ_BLOCKS 256
cudaError_t zi_sumsq_f32_cuda(double *out, double *partials, const float *x, size_t n, cudaStream_t stream);
/* out uint8[B,H,W,C] = round_half_even(clamp(img * 0.5 + 0.5, 0, 1) * 255) of img bf16[B,C,H,W]; bf16_rule rounds
   img * 0.5 + 0.5 to bf16 before the clamp; NaN gives 0 */
cudaError_t zi_image_to_uint8_cuda(uint8_t *out, const void *img, int B, int C, int H, int W, int bf16_rule,
                                   cudaStream_t stream);
/* out f32[B,H,W,C] = clamp(img[B,C,H,W] * 0.5 + 0.5, 0, 1) */
cudaError_t zi_image_to_float_hwc_cuda(float *out, const void *img, int B, int C, int H, int W, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* ZI_KERNELS_H */
