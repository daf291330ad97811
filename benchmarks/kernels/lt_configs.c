/*
 * lt_configs.c - which cuBLASLt kernel configuration runs the DiT's four GEMMs best on this card,
 * measured the way the pipeline runs them: besides the usual short burst, a sustained loop of a few
 * hundred back-to-back calls, long enough for the card to reach its power-capped clock (in the
 * denoising loop an H100 sits at its 700 W cap, ~1560 MHz instead of 1980).
 *
 * For each shape (column-major C[m,n] = W^T X as csrc/ops_cuda.c calls it: m = output features,
 * n = tokens, k = input features; bf16 in and out, fp32 compute): the heuristic's candidates with
 * their configuration (tile m x n, stages, cluster, swizzle, split-K, waves), then the top algorithm
 * forced to other tiles and cluster shapes (only configurations cublasLtMatmulAlgoCheck accepts),
 * each timed as a burst and sustained. Last, a "layer loop" (the four GEMMs in block order, 60
 * times) with the heuristic's choices against the sustained winners, alternated three times.
 *
 *   gcc -O2 -std=gnu11 benchmarks/kernels/lt_configs.c -I$CUDA/include -L$CUDA/lib64 -lcublasLt -lcudart -o lt_configs
 *   ./lt_configs [tokens=4128]
 * No GPU-side correctness check: every configuration is cuBLASLt's own kernel on the same problem.
 */
#include <cublasLt.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); return 1; } } while (0)
#define LK(x) do { cublasStatus_t s_ = (x); if (s_ != CUBLAS_STATUS_SUCCESS) { fprintf(stderr, "%s:%d cublasLt %d\n", __FILE__, __LINE__, (int)s_); return 1; } } while (0)

#define WS_BYTES ((size_t)32 << 20)
#define MAXC 96

typedef struct {
    const char *name;
    int m, n, k;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    void *A, *B, *C;
    cublasLtMatmulAlgo_t cand[MAXC];
    char label[MAXC][112];
    float burst_us[MAXC], sus_us[MAXC];
    int ncand, best;
} Shape;

static cublasLtHandle_t lt;
static void *ws;
static cudaStream_t stream;
static cudaEvent_t e0, e1;

static const char *tile_name(uint32_t t) {
    static const char *names[] = {"?", "8x8", "8x16", "16x8", "8x32", "16x16", "32x8", "8x64", "16x32", "32x16", "64x8",
                                  "32x32", "32x64", "64x32", "32x128", "64x64", "128x32", "64x128", "128x64", "64x256",
                                  "128x128", "256x64", "64x512", "128x256", "256x128", "512x64", "64x96", "96x64",
                                  "96x128", "128x160", "160x128", "192x128", "128x192", "128x96"};
    return t < sizeof names / sizeof *names ? names[t] : "other";
}

static const char *cluster_name(uint32_t c) {
    switch (c) {
    case 0: return "auto";
    case 2: return "1x1";
    case 3: return "2x1";
    case 4: return "4x1";
    case 5: return "1x2";
    case 6: return "2x2";
    case 8: return "1x4";
    default: return "other";
    }
}

static void describe(const cublasLtMatmulAlgo_t *a, char *out, size_t n, float waves) {
    int32_t id = 0, splitk = 0;
    uint32_t tile = 0, stages = 0, swz = 0, custom = 0;
    uint16_t cluster = 0;
    size_t w;
    cublasLtMatmulAlgoConfigGetAttribute(a, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof id, &w);
    cublasLtMatmulAlgoConfigGetAttribute(a, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &w);
    cublasLtMatmulAlgoConfigGetAttribute(a, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages, &w);
    cublasLtMatmulAlgoConfigGetAttribute(a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof splitk, &w);
    cublasLtMatmulAlgoConfigGetAttribute(a, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &swz, sizeof swz, &w);
    cublasLtMatmulAlgoConfigGetAttribute(a, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, &custom, sizeof custom, &w);
    cublasLtMatmulAlgoConfigGetAttribute(a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, sizeof cluster, &w);
    snprintf(out, n, "algo %d tile %s(%u) stages %u cluster %s swz %u splitk %d custom %u waves %.2f", id, tile_name(tile), tile,
             stages, cluster_name(cluster), swz, splitk, custom, waves);
}

static int run(Shape *s, const cublasLtMatmulAlgo_t *a, int calls) {
    float alpha = 1.0f, beta = 0.0f;
    for (int i = 0; i < calls; i++)
        if (cublasLtMatmul(lt, s->desc, &alpha, s->A, s->la, s->B, s->lb, &beta, s->C, s->lc, s->C, s->lc, a, ws, WS_BYTES,
                           stream) != CUBLAS_STATUS_SUCCESS)
            return 1;
    return 0;
}

/* mean microseconds per call over `calls` timed calls after `warm` untimed ones; < 0 on failure */
static float time_us(Shape *s, const cublasLtMatmulAlgo_t *a, int warm, int calls) {
    float ms = 0;
    if (run(s, a, warm)) return -1;
    cudaEventRecord(e0, stream);
    if (run(s, a, calls)) return -1;
    cudaEventRecord(e1, stream);
    cudaEventSynchronize(e1);
    cudaEventElapsedTime(&ms, e0, e1);
    return 1000.0f * ms / calls;
}

static int sustained_calls(float burst_us) {
    int n = (int)(250000.0f / (burst_us > 1 ? burst_us : 1)); /* ~250 ms of back-to-back calls */
    return n < 100 ? 100 : n;
}

static void add_candidate(Shape *s, const cublasLtMatmulAlgo_t *a, float waves, const char *tag) {
    if (s->ncand >= MAXC) return;
    s->cand[s->ncand] = *a;
    char d[100];
    describe(a, d, sizeof d, waves);
    snprintf(s->label[s->ncand], sizeof s->label[0], "%s %s", tag, d);
    s->ncand++;
}

static int setup(Shape *s) {
    cublasOperation_t opa = CUBLAS_OP_T, opb = CUBLAS_OP_N;
    LK(cublasLtMatmulDescCreate(&s->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LK(cublasLtMatmulDescSetAttribute(s->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    LK(cublasLtMatmulDescSetAttribute(s->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    LK(cublasLtMatrixLayoutCreate(&s->la, CUDA_R_16BF, s->k, s->m, s->k));
    LK(cublasLtMatrixLayoutCreate(&s->lb, CUDA_R_16BF, s->k, s->n, s->k));
    LK(cublasLtMatrixLayoutCreate(&s->lc, CUDA_R_16BF, s->m, s->n, s->m));
    size_t na = (size_t)s->m * s->k, nb = (size_t)s->k * s->n;
    uint16_t *h = malloc((na > nb ? na : nb) * 2);
    uint32_t x = 12345;
    for (size_t i = 0; i < (na > nb ? na : nb); i++) { /* bf16 of a uniform value in [-1, 1) */
        x = x * 1664525u + 1013904223u;
        float f = (float)(x >> 8) / 8388608.0f - 1.0f;
        uint32_t u;
        memcpy(&u, &f, 4);
        h[i] = (uint16_t)(u >> 16);
    }
    CK(cudaMalloc(&s->A, na * 2));
    CK(cudaMalloc(&s->B, nb * 2));
    CK(cudaMalloc(&s->C, (size_t)s->m * s->n * 2));
    CK(cudaMemcpy(s->A, h, na * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(s->B, h, nb * 2, cudaMemcpyHostToDevice));
    free(h);

    cublasLtMatmulPreference_t pref;
    size_t wsb = WS_BYTES;
    uint32_t red = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    LK(cublasLtMatmulPreferenceCreate(&pref));
    LK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb));
    LK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &red, sizeof red));
    cublasLtMatmulHeuristicResult_t res[32];
    int nres = 0;
    LK(cublasLtMatmulAlgoGetHeuristic(lt, s->desc, s->la, s->lb, s->lc, s->lc, pref, 32, res, &nres));
    cublasLtMatmulPreferenceDestroy(pref);
    for (int i = 0; i < nres; i++) {
        char tag[16];
        snprintf(tag, sizeof tag, "heur#%d", i);
        add_candidate(s, &res[i].algo, res[i].wavesCount, tag);
    }
    /* the top algorithm forced to other tiles x cluster shapes (stages left to the library) */
    static const uint32_t tiles[] = {20, 23, 24, 31, 32, 29, 30, 19, 21};
    static const uint16_t clusters[] = {0, 2, 3, 5};
    int nrejected = 0;
    for (unsigned t = 0; t < sizeof tiles / sizeof *tiles; t++)
        for (unsigned c = 0; c < sizeof clusters / sizeof *clusters; c++) {
            cublasLtMatmulAlgo_t a = res[0].algo; /* keeps #0's stages, custom option and swizzle */
            uint32_t tile = tiles[t];
            uint16_t cl = clusters[c];
            cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile);
            if (cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cl, sizeof cl) !=
                CUBLAS_STATUS_SUCCESS)
                continue;
            cublasLtMatmulHeuristicResult_t chk;
            memset(&chk, 0, sizeof chk);
            cublasStatus_t cs = cublasLtMatmulAlgoCheck(lt, s->desc, s->la, s->lb, s->lc, s->lc, &a, &chk);
            if (cs != CUBLAS_STATUS_SUCCESS || chk.workspaceSize > WS_BYTES) {
                nrejected++;
                continue;
            }
            add_candidate(s, &a, chk.wavesCount, "forced");
        }
    printf("(%d forced configurations rejected by cublasLtMatmulAlgoCheck)\n", nrejected);
    return 0;
}

int main(int argc, char **argv) {
    int tokens = argc > 1 ? atoi(argv[1]) : 4128;
    Shape shapes[4] = {{"qkv", 11520, tokens, 3840}, {"out", 3840, tokens, 3840}, {"w13", 20480, tokens, 3840},
                       {"w2", 3840, tokens, 10240}};
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device %s, %d SMs; tokens %d\n", prop.name, prop.multiProcessorCount, tokens);
    LK(cublasLtCreate(&lt));
    CK(cudaMalloc(&ws, WS_BYTES));
    CK(cudaStreamCreate(&stream));
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int si = 0; si < 4; si++) {
        Shape *s = &shapes[si];
        if (setup(s)) return 1;
        double flop = 2.0 * s->m * s->n * s->k;
        printf("\n== %s: m=%d n=%d k=%d, %d configurations\n", s->name, s->m, s->n, s->k, s->ncand);
        float ref = 0;
        s->best = 0;
        for (int i = 0; i < s->ncand; i++) {
            s->burst_us[i] = time_us(s, &s->cand[i], 3, 10);
            if (s->burst_us[i] < 0) { s->sus_us[i] = -1; printf("  %-90s failed\n", s->label[i]); continue; }
            s->sus_us[i] = time_us(s, &s->cand[i], 20, sustained_calls(s->burst_us[i]));
            if (i % 8 == 7) ref = time_us(s, &s->cand[0], 20, sustained_calls(s->burst_us[0]));
            printf("  %-90s burst %7.1f us %4.0f TF/s  sustained %7.1f us %4.0f TF/s%s\n", s->label[i], s->burst_us[i],
                   flop / s->burst_us[i] / 1e6, s->sus_us[i], flop / s->sus_us[i] / 1e6, i % 8 == 7 ? "" : "");
            if (i % 8 == 7) printf("    (heur#0 sustained again: %.1f us)\n", ref);
            if (s->sus_us[i] > 0 && s->sus_us[i] < s->sus_us[s->best]) s->best = i;
        }
        printf("  best sustained: %s (%.1f us vs heur#0 %.1f us)\n", s->label[s->best], s->sus_us[s->best], s->sus_us[0]);
    }
    /* layer loop: the four GEMMs in block order (qkv, out, w13, w2), 60 layers, heuristic vs winners */
    for (int rep = 0; rep < 3; rep++)
        for (int pick = 0; pick < 2; pick++) {
            float ms = 0;
            for (int l = 0; l < 70; l++) {
                if (l == 10) cudaEventRecord(e0, stream);
                for (int si = 0; si < 4; si++) {
                    Shape *s = &shapes[si];
                    if (run(s, &s->cand[pick ? s->best : 0], 1)) return 1;
                }
            }
            cudaEventRecord(e1, stream);
            cudaEventSynchronize(e1);
            cudaEventElapsedTime(&ms, e0, e1);
            printf("layer loop (60 layers timed) with %s: %.1f us a layer\n", pick ? "sustained winners" : "heuristic #0",
                   1000 * ms / 60);
        }
    return 0;
}
