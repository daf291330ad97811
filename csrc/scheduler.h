/*
 * scheduler.h - FlowMatchEulerDiscreteScheduler as ZImagePipeline configures it (static shift,
 * no dynamic shifting): the sigma / timestep tables, bit for bit as diffusers computes them.
 */
#ifndef ZI_SCHEDULER_H
#define ZI_SCHEDULER_H

#include "zi_common.h"

typedef struct ZiSchedule {
    int steps;           /* N                                               */
    float *sigmas;       /* [N + 1], shifted, terminal 0 appended          */
    float *timesteps;    /* [N] = sigmas[:N] * num_train_timesteps         */
    float *t_model;      /* [N] = f32(f32(1000 - timestep) * f32(0.001)), what the DiT receives */
} ZiSchedule;

/* sigmas_in: NULL for the pipeline default torch.linspace(1, 1/N, N) (f32), else N raw sigmas.
   shift: scheduler_config "shift"; num_train_timesteps: usually 1000. */
zi_status zi_schedule_make(ZiSchedule *s, int steps, const float *sigmas_in, float shift, int num_train_timesteps);
void zi_schedule_free(ZiSchedule *s);

#endif /* ZI_SCHEDULER_H */
