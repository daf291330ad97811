/*
 * bench_util.h - timing helpers shared by the kernel-lab benchmarks (bench_ops.c, bench_vae.c):
 * a monotonic host clock and a comparator for taking medians with qsort.
 */
#ifndef ZI_BENCH_UTIL_H
#define ZI_BENCH_UTIL_H

#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#endif /* ZI_BENCH_UTIL_H */
