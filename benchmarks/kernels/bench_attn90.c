/*
 * bench_attn90.c - the sm_90a attention kernel's tile shapes timed in one process, per call and sustained,
 * at the Z-Image DiT's attention shapes (HD = 128, non-causal, NH = 30): S = 4128 (1024^2 main layers),
 * 4096 (refiners), 1056 (512^2), 16416 (2048^2). Variants: "prev", the kernel of an earlier commit linked in
 * under renamed symbols (zi_attention_sm90_prev_cuda, built by attn90_lab.sh), and the current kernel with
 * BM = 128, BM = 192 and its own choice (zi_attention_sm90_force_bm).
 *   per call:  median of 21 calls, each between two events with a synchronize after it (lab clocks);
 *   sustained: the calls of ~0.15 s back to back between two events (300 at S = 4128), variants taking
 *              turns for 3 rounds after a ~0.5 s warm-up, so that the card runs at the clock it holds under
 *              load (the pipeline sits at its power cap); median and min of the rounds; then one ~1 s loop
 *              per variant at S = 4128.
 * Each variant's output is compared with prev's (max |diff|; bf16, so ~1e-2 of the output scale is rounding).
 * Usage: bench_attn90 [S]   (only that sequence length)
 */
#include "bench_util.h"
#include "zi_kernels.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

cudaError_t zi_attention_sm90_prev_cuda(void *out, const void *q, const void *k, const void *v, int S, int NH, int NKV,
                                        int HD, int causal, float scale, cudaStream_t stream, int *taken);

#define CK(x)                                                                                                 \
    do {                                                                                                      \
        cudaError_t e_ = (x);                                                                                 \
        if (e_ != cudaSuccess) {                                                                              \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));               \
            exit(1);                                                                                          \
        }                                                                                                     \
    } while (0)

typedef struct { const char *name; int bm, prev; } Variant;
static const Variant variants[] = {{"prev", 0, 1}, {"BM=128", 128, 0}, {"BM=192", 192, 0}, {"auto", 0, 0}};
#define NV (int)(sizeof variants / sizeof variants[0])

static void *rand_bf16(size_t n, uint64_t seed) {
    uint16_t *h = malloc(n * 2);
    uint64_t s = 0x243F6A8885A308D3ULL ^ seed;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        float f = 1.7f * ((float)(s >> 40) / 8388608.0f - 1.0f);
        uint32_t u;
        memcpy(&u, &f, 4);
        h[i] = (uint16_t)(u >> 16);
    }
    void *d = NULL;
    CK(cudaMalloc(&d, n * 2));
    CK(cudaMemcpy(d, h, n * 2, cudaMemcpyHostToDevice));
    free(h);
    return d;
}

static void call(const Variant *v, void *o, void *q, void *k, void *vv, int S, int NH) {
    int taken = 0;
    float scale = 0.08838834764831845f; /* 1 / sqrt(128) */
    if (v->prev) {
        CK(zi_attention_sm90_prev_cuda(o, q, k, vv, S, NH, NH, 128, 0, scale, 0, &taken));
    } else {
        zi_attention_sm90_force_bm(v->bm);
        CK(zi_attention_sm90_cuda(o, q, k, vv, 0, S, NH, NH, 128, 0, scale, 0, &taken));
    }
    if (!taken) {
        fprintf(stderr, "%s: the sm_90a kernel did not take S=%d\n", v->name, S);
        exit(1);
    }
}

static float bf16_to_f(uint16_t x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* runs n calls of variant v back to back between two events; us per call */
static double loop_us(const Variant *v, int n, void *o, void *q, void *k, void *vv, int S, int NH) {
    cudaEvent_t e0, e1;
    float ms = 0;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaEventRecord(e0, 0));
    for (int i = 0; i < n; i++) call(v, o, q, k, vv, S, NH);
    CK(cudaEventRecord(e1, 0));
    CK(cudaEventSynchronize(e1));
    CK(cudaEventElapsedTime(&ms, e0, e1));
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return ms * 1e3 / n;
}

int main(int argc, char **argv) {
    int only = argc > 1 ? atoi(argv[1]) : 0;
    double t_start = now();
    static const int shapes[][2] = {{4128, 30}, {4096, 30}, {1056, 30}, {16416, 30}};
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int S = shapes[si][0], NH = shapes[si][1];
        if (only && S != only) continue;
        size_t n = (size_t)S * NH * 128;
        void *q = rand_bf16(n, 1), *k = rand_bf16(n, 2), *v = rand_bf16(n, 3), *o[NV];
        uint16_t *ref = malloc(n * 2), *got = malloc(n * 2);
        double flop = 4.0 * S * (double)S * 128 * NH;
        for (int j = 0; j < NV; j++) CK(cudaMalloc(&o[j], n * 2));
        printf("\nS=%d NH=%d HD=128 (%.1f GFLOP a call)\n", S, NH, flop * 1e-9);
        double med[NV];
        for (int j = 0; j < NV; j++) {
            const Variant *var = &variants[j];
            double t[21];
            for (int r = 0; r < 3; r++) call(var, o[j], q, k, v, S, NH);
            CK(cudaDeviceSynchronize());
            for (int r = 0; r < 21; r++) t[r] = loop_us(var, 1, o[j], q, k, v, S, NH);
            qsort(t, 21, sizeof t[0], cmp);
            med[j] = t[10];
            CK(cudaMemcpy(j ? got : ref, o[j], n * 2, cudaMemcpyDeviceToHost));
            double md = 0;
            for (size_t i = 0; j && i < n; i++) md = fmax(md, fabs(bf16_to_f(got[i]) - bf16_to_f(ref[i])));
            printf("  per call   %-8s %9.1f us %7.1f TFLOP/s   max|diff vs prev| %.3g\n", var->name, med[j],
                   flop / med[j] * 1e-6, md);
        }
        int calls = (int)(0.15e6 / med[0]) + 1;
        loop_us(&variants[0], (int)(0.5e6 / med[0]) + 1, o[0], q, k, v, S, NH); /* warm-up to the loaded clock */
        double rs[NV][3];
        for (int r = 0; r < 3; r++)
            for (int j = 0; j < NV; j++) rs[j][r] = loop_us(&variants[j], calls, o[j], q, k, v, S, NH);
        for (int j = 0; j < NV; j++) {
            qsort(rs[j], 3, sizeof rs[j][0], cmp);
            printf("  sustained  %-8s %9.1f us %7.1f TFLOP/s   (min %.1f, %d calls x 3 rounds)\n", variants[j].name,
                   rs[j][1], flop / rs[j][1] * 1e-6, rs[j][0], calls);
        }
        if (S == 4128) {
            int lc = (int)(1.0e6 / med[0]) + 1;
            for (int j = 0; j < NV; j++) {
                double us = loop_us(&variants[j], lc, o[j], q, k, v, S, NH);
                printf("  long loop  %-8s %9.1f us %7.1f TFLOP/s   (%d calls)\n", variants[j].name, us, flop / us * 1e-6,
                       lc);
            }
        }
        fflush(stdout);
        for (int j = 0; j < NV; j++) cudaFree(o[j]);
        cudaFree(q), cudaFree(k), cudaFree(v), free(ref), free(got);
    }
    zi_attention_sm90_force_bm(0);
    printf("\n(%.1f s)\n", now() - t_start);
    return 0;
}
