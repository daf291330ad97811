/*
 * zi_error.c - the thread-local "last error" message behind zi_fail(), status names, the
 * interrupt flag polled between steps, and the f16 conversion that needs a function body.
 */
#include "zi_common.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char zi_error_msg[2048];
static volatile int *zi_interrupt_flag;

zi_status zi_fail(zi_status code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(zi_error_msg, sizeof zi_error_msg, fmt, ap);
    va_end(ap);
    return code;
}

zi_status zi_fail_context(zi_status code, const char *fmt, ...) {
    char prefix[1024], old[sizeof zi_error_msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, zi_error_msg, sizeof old);
    snprintf(zi_error_msg, sizeof zi_error_msg, "%.1000s: %.1000s", prefix, old);
    return code;
}

const char *zi_last_error(void) { return zi_error_msg[0] ? zi_error_msg : "unknown error"; }

const char *zi_status_name(zi_status s) {
    switch (s) {
    case ZI_OK: return "ok";
    case ZI_ERR_NOMEM: return "out of host memory";
    case ZI_ERR_GPU_NOMEM: return "out of GPU memory";
    case ZI_ERR_NOTFOUND: return "not found";
    case ZI_ERR_IO: return "I/O error";
    case ZI_ERR_FORMAT: return "bad file format";
    case ZI_ERR_ARG: return "bad argument";
    case ZI_ERR_CUDA: return "CUDA error";
    case ZI_ERR_CUBLAS: return "cuBLAS error";
    case ZI_ERR_STATE: return "bad state";
    case ZI_ERR_INTERRUPTED: return "interrupted";
    }
    return "unknown status";
}

void zi_set_interrupt_flag(volatile int *flag) { zi_interrupt_flag = flag; }
int zi_interrupt_requested(void) { return zi_interrupt_flag && *zi_interrupt_flag; }

float zi_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400u)) { man <<= 1; exp--; }
            man &= 0x3ffu;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    union { uint32_t u; float f; } v;
    v.u = bits;
    return v.f;
}
