/*
 * scheduler.c - sigma schedule of diffusers' FlowMatchEulerDiscreteScheduler.set_timesteps
 * for ZImagePipeline (diffusers >= 0.39): sigmas = linspace(1, 1/N, N) in torch's f32
 * linspace arithmetic; shifted in f32 as numpy does it: shift*s / (1 + (shift-1)*s);
 * timesteps = sigmas * 1000; terminal sigma 0 appended. The pipeline then hands the DiT
 * t = (1000 - timestep) / 1000, which torch evaluates as a multiply by f32(0.001).
 */
#include "scheduler.h"

#include <stdlib.h>
#include <string.h>

/* torch.linspace(start, end, steps) for float32 on the CPU: the first half counts up from
   start, the second half down from end, both with the f32 step (avoids drift at the end). */
static void linspace_f32(float *out, float start, float end, int steps) {
    if (steps == 1) { out[0] = start; return; }
    float step = (end - start) / (float)(steps - 1);
    int half = steps / 2;
    for (int i = 0; i < steps; i++) {
        volatile float prod; /* keep mul and add separately rounded, as torch's scalar path does */
        if (i < half) { prod = step * (float)i; out[i] = start + prod; }
        else { prod = step * (float)(steps - 1 - i); out[i] = end - prod; }
    }
}

zi_status zi_schedule_make(ZiSchedule *s, int steps, const float *sigmas_in, float shift, int num_train_timesteps) {
    zi_status st = ZI_OK;
    memset(s, 0, sizeof *s);
    if (steps < 1 || steps > 100000) return zi_fail(ZI_ERR_ARG, "num_inference_steps must be >= 1, got %d", steps);
    if (!(shift > 0.0f)) return zi_fail(ZI_ERR_ARG, "scheduler shift must be positive, got %g", (double)shift);
    s->steps = steps;
    ZI_MALLOC(s->sigmas, (size_t)(steps + 1) * sizeof(float));
    ZI_MALLOC(s->timesteps, (size_t)steps * sizeof(float));
    ZI_MALLOC(s->t_model, (size_t)steps * sizeof(float));
    if (sigmas_in) memcpy(s->sigmas, sigmas_in, (size_t)steps * sizeof(float));
    else linspace_f32(s->sigmas, 1.0f, 1.0f / (float)steps, steps);
    for (int i = 0; i < steps; i++) {
        volatile float num = shift * s->sigmas[i];           /* numpy: each op rounded to f32 */
        volatile float prod = (shift - 1.0f) * s->sigmas[i];
        volatile float den = 1.0f + prod;
        s->sigmas[i] = num / den;
        volatile float ts = s->sigmas[i] * (float)num_train_timesteps;
        s->timesteps[i] = ts;
        volatile float diff = 1000.0f - ts;
        s->t_model[i] = diff * 0.001f;
    }
    s->sigmas[steps] = 0.0f;
    return ZI_OK;
fail:
    zi_schedule_free(s);
    return st;
}

void zi_schedule_free(ZiSchedule *s) {
    free(s->sigmas);
    free(s->timesteps);
    free(s->t_model);
    memset(s, 0, sizeof *s);
}
