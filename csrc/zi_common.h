/*
 * zi_common.h - status codes, the recorded error message, and small helpers shared by the
 * whole C core. Every fallible function returns a zi_status; on failure it has recorded a
 * message with zi_fail() first. The Python binding maps status -> exception in one place.
 * The library never exits or aborts.
 */
#ifndef ZI_COMMON_H
#define ZI_COMMON_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    ZI_OK = 0,
    ZI_ERR_NOMEM,       /* host allocation failed                -> MemoryError        */
    ZI_ERR_GPU_NOMEM,   /* device allocation failed              -> MemoryError        */
    ZI_ERR_NOTFOUND,    /* missing file or tensor                -> FileNotFoundError  */
    ZI_ERR_IO,          /* read/mmap failure                     -> OSError            */
    ZI_ERR_FORMAT,      /* malformed file content                -> ValueError         */
    ZI_ERR_ARG,         /* bad argument (shape, size, id)        -> ValueError         */
    ZI_ERR_CUDA,        /* CUDA runtime error                    -> zimage.ZImageError */
    ZI_ERR_CUBLAS,      /* cuBLAS / cuBLASLt error               -> zimage.ZImageError */
    ZI_ERR_STATE,       /* object unusable / wrong device        -> zimage.ZImageError */
    ZI_ERR_INTERRUPTED, /* stopped between steps by a signal     -> KeyboardInterrupt  */
} zi_status;

/* Record a printf-style message for the calling thread and return `code`. */
zi_status zi_fail(zi_status code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Prefix the recorded message with more context ("loading x: <old message>"); returns code. */
zi_status zi_fail_context(zi_status code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
const char *zi_last_error(void);
const char *zi_status_name(zi_status s);

/* Propagate a failing status to the enclosing function's `fail:` label. */
#define ZI_TRY(expr)                  \
    do {                              \
        st = (expr);                  \
        if (st != ZI_OK) goto fail;   \
    } while (0)

/* Allocate `n` bytes or record NOMEM and jump to `fail:` (st must exist). */
#define ZI_MALLOC(ptr, n)                                                              \
    do {                                                                               \
        size_t zi_n_ = (size_t)(n);                                                    \
        (ptr) = malloc(zi_n_ ? zi_n_ : 1);                                             \
        if (!(ptr)) { st = zi_fail(ZI_ERR_NOMEM, "out of host memory allocating %zu bytes (%s:%d)", \
                                   zi_n_, __FILE__, __LINE__); goto fail; }           \
    } while (0)

#define ZI_CALLOC(ptr, count, size)                                                    \
    do {                                                                               \
        size_t zi_c_ = (size_t)(count), zi_s_ = (size_t)(size);                        \
        (ptr) = calloc(zi_c_ ? zi_c_ : 1, zi_s_ ? zi_s_ : 1);                          \
        if (!(ptr)) { st = zi_fail(ZI_ERR_NOMEM, "out of host memory allocating %zu x %zu bytes (%s:%d)", \
                                   zi_c_, zi_s_, __FILE__, __LINE__); goto fail; }    \
    } while (0)

#define ZI_CEIL_DIV(a, b) (((a) + (b) - 1) / (b))

/* Interrupt hook: the binding sets a flag from a signal check; long loops poll it. */
int zi_interrupt_requested(void);
void zi_set_interrupt_flag(volatile int *flag);

/* bf16 <-> f32 (round to nearest even, NaN kept quiet) */
static inline float zi_bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}
static inline uint16_t zi_f32_to_bf16(float f) {
    union { uint32_t u; float f; } v;
    v.f = f;
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40);
    v.u += 0x7fffu + ((v.u >> 16) & 1u);
    return (uint16_t)(v.u >> 16);
}
float zi_f16_to_f32(uint16_t h);

#endif /* ZI_COMMON_H */
