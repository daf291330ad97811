/*
 * backend.c - picks the backend for a device (the CPU table, or a CUDA backend per GPU,
 * created once and kept for the process), and loads a model's weights from a name table
 * into one allocation on that backend, or into host memory for an offloaded model. Also the
 * entry points of the CUDA backend's memory accounting and cache release.
 */
#include "ops.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define ZI_PREFETCH_BYTES ((size_t)512 << 20) /* checkpoint bytes asked ahead of the tensor being read */

extern const ZiOps zi_ops_cpu;

#ifdef ZI_WITH_CUDA
/* ops_cuda.c */
zi_status zi_backend_cuda_create(int device, ZiBackend **out);
int zi_cuda_device_count_impl(void);
zi_status zi_cuda_mem_info_impl(int device, size_t *free_bytes, size_t *total_bytes);
zi_status zi_cuda_device_props_impl(int device, char *name, size_t name_len, int *sms, int *threads_per_sm,
                                    int *cc_major, int *cc_minor);
zi_status zi_cuda_memory_stats_impl(int device, ZiMemStats *s);
zi_status zi_cuda_reset_peak_memory_impl(int device);
zi_status zi_cuda_empty_cache_impl(ZiBackend *be);
#endif

#define ZI_MAX_DEVICES 16

static ZiBackend zi_cpu_backend = {&zi_ops_cpu, "cpu", -1, sizeof(float), sizeof(float), NULL};
#ifdef ZI_WITH_CUDA
static ZiBackend *zi_cuda_backends[ZI_MAX_DEVICES];
static pthread_mutex_t zi_backend_lock = PTHREAD_MUTEX_INITIALIZER; /* first use from two threads */
#endif

int zi_cuda_compiled(void) {
#ifdef ZI_WITH_CUDA
    return 1;
#else
    return 0;
#endif
}

int zi_cuda_device_count(void) {
#ifdef ZI_WITH_CUDA
    return zi_cuda_device_count_impl();
#else
    return 0;
#endif
}

zi_status zi_cuda_mem_info(int device, size_t *free_bytes, size_t *total_bytes) {
    *free_bytes = *total_bytes = 0;
#ifdef ZI_WITH_CUDA
    int n = zi_cuda_device_count_impl();
    if (device < 0 || device >= n) return zi_fail(ZI_ERR_ARG, "no CUDA device %d (%d visible)", device, n);
    return zi_cuda_mem_info_impl(device, free_bytes, total_bytes);
#else
    return zi_fail(ZI_ERR_STATE, "zimage was built without CUDA support");
#endif
}

zi_status zi_cuda_device_props(int device, char *name, size_t name_len, int *sms, int *threads_per_sm, int *cc_major,
                               int *cc_minor) {
#ifdef ZI_WITH_CUDA
    int n = zi_cuda_device_count_impl();
    if (device < 0 || device >= n) return zi_fail(ZI_ERR_ARG, "no CUDA device %d (%d visible)", device, n);
    return zi_cuda_device_props_impl(device, name, name_len, sms, threads_per_sm, cc_major, cc_minor);
#else
    (void)name, (void)name_len, (void)sms, (void)threads_per_sm, (void)cc_major, (void)cc_minor;
    return zi_fail(ZI_ERR_STATE, "zimage was built without CUDA support (device %d)", device);
#endif
}

zi_status zi_backend_get(int device, ZiBackend **out) {
    *out = NULL;
    if (device < 0) { *out = &zi_cpu_backend; return ZI_OK; }
#ifndef ZI_WITH_CUDA
    return zi_fail(ZI_ERR_STATE, "zimage was built without CUDA support (no nvcc at build time, or ZIMAGE_CUDA=0); "
                                 "only the CPU device is available");
#else
    int n = zi_cuda_device_count_impl();
    if (n <= 0) return zi_fail(ZI_ERR_STATE, "CUDA device %d requested but no CUDA GPU is available (%s)", device, zi_last_error());
    if (device >= n || device >= ZI_MAX_DEVICES)
        return zi_fail(ZI_ERR_ARG, "CUDA device %d requested but only %d device(s) exist", device, n);
    zi_status st = ZI_OK;
    pthread_mutex_lock(&zi_backend_lock);
    if (!zi_cuda_backends[device]) st = zi_backend_cuda_create(device, &zi_cuda_backends[device]);
    *out = zi_cuda_backends[device];
    pthread_mutex_unlock(&zi_backend_lock);
    return st;
#endif
}

/* ---------------------------------------------------------------------------------------- */
/* weights */

zi_status zi_weights_add(ZiWeightList *wl, void **slot, int ndim, const int64_t *shape, const char *fmt, ...) {
    if (wl->n == wl->cap) {
        int cap = wl->cap ? wl->cap * 2 : 64;
        ZiWeightSpec *ns = realloc(wl->specs, (size_t)cap * sizeof *ns);
        if (!ns) return zi_fail(ZI_ERR_NOMEM, "out of host memory building the weight table");
        wl->specs = ns;
        wl->cap = cap;
    }
    ZiWeightSpec *s = &wl->specs[wl->n++];
    memset(s, 0, sizeof *s);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->name, sizeof s->name, fmt, ap);
    va_end(ap);
    s->ndim = ndim;
    s->slot = slot;
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) { s->shape[i] = shape[i]; numel *= (size_t)shape[i]; }
    wl->total += numel;
    return ZI_OK;
}

void zi_weights_list_free(ZiWeightList *wl) {
    free(wl->specs);
    memset(wl, 0, sizeof *wl);
}

static void shape_str(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && o < n; i++) o += (size_t)snprintf(buf + o, n - o, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
}

/* the tensor for a spec: prefix + name first, then the bare name */
const StTensor *zi_weights_find(const StArchive *ar, const ZiWeightSpec *s, const char *prefix) {
    const StTensor *t = NULL;
    if (prefix) {
        char full[ZI_WEIGHT_NAME_MAX + 64];
        snprintf(full, sizeof full, "%s%s", prefix, s->name);
        t = st_find(ar, full);
    }
    return t ? t : st_find(ar, s->name);
}

zi_status zi_weights_check(const StArchive *ar, const ZiWeightList *wl, const char *prefix) {
    for (int i = 0; i < wl->n; i++) {
        const ZiWeightSpec *s = &wl->specs[i];
        const StTensor *t = zi_weights_find(ar, s, prefix);
        const char *where = ar->nfiles ? ar->files[0].path : "checkpoint";
        if (!t) return zi_fail(ZI_ERR_FORMAT, "%s: missing tensor '%s'", where, s->name);
        int same = t->ndim == s->ndim;
        for (int d = 0; same && d < s->ndim; d++) same = t->shape[d] == s->shape[d];
        if (!same) {
            char want[96], got[96];
            shape_str(want, sizeof want, s->ndim, s->shape);
            shape_str(got, sizeof got, t->ndim, t->shape);
            return zi_fail(ZI_ERR_FORMAT, "%s: tensor '%s' has shape %s, the config needs %s", ar->files[t->file].path,
                           t->name, got, want);
        }
        if (t->dtype != ZI_DT_F32 && t->dtype != ZI_DT_BF16 && t->dtype != ZI_DT_F16)
            return zi_fail(ZI_ERR_FORMAT, "%s: tensor '%s' has dtype %s; only F32, BF16 and F16 can be loaded",
                           ar->files[t->file].path, t->name, st_dtype_name(t->dtype));
    }
    return ZI_OK;
}

/* Ask the kernel to read a tensor's pages ahead when they are not in the page cache (a cold
   checkpoint): the copies then find the reads in flight instead of faulting the mapping in at
   the read-around size. A tensor whose first and last pages are resident is left alone, so a
   warm load pays two mincore calls per tensor. */
void zi_prefetch(const void *data, size_t bytes) {
    static size_t page;
    if (!bytes) return;
    if (!page) page = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t first = (uintptr_t)data & ~(uintptr_t)(page - 1), last = ((uintptr_t)data + bytes - 1) & ~(uintptr_t)(page - 1);
    unsigned char in_a = 0, in_b = 0;
    if (mincore((void *)first, 1, &in_a) == 0 && mincore((void *)last, 1, &in_b) == 0 && (in_a & in_b & 1)) return;
    posix_madvise((void *)first, (uintptr_t)data + bytes - first, POSIX_MADV_WILLNEED);
}

zi_status zi_weights_fill(ZiBackend *be, const StArchive *ar, ZiWeightList *wl, const char *prefix, void *block,
                          int host) {
    zi_status st = ZI_OK;
    size_t off = 0, ahead = 0; /* bytes asked ahead and not yet read */
    int next = 0;              /* specs [0, next) asked for */
    for (int i = 0; i < wl->n; i++) {
        ZiWeightSpec *s = &wl->specs[i];
        const StTensor *t = zi_weights_find(ar, s, prefix);
        if (!t) return zi_fail(ZI_ERR_FORMAT, "checkpoint: missing tensor '%s'", s->name);
        for (; next < wl->n && (next <= i || ahead < ZI_PREFETCH_BYTES); next++) {
            const StTensor *u = zi_weights_find(ar, &wl->specs[next], prefix);
            if (!u) break;
            zi_prefetch(u->data, u->nbytes);
            ahead += u->nbytes;
        }
        ahead = ahead > t->nbytes ? ahead - t->nbytes : 0;
        void *dst = zi_wt(be, block, off);
        if (host) ZI_TRY(be->ops->weight_to_host(be, dst, t->data, t->dtype, (size_t)t->numel));
        else ZI_TRY(be->ops->upload_weight(be, dst, t->data, t->dtype, (size_t)t->numel));
        *s->slot = dst;
        off += (size_t)t->numel;
    }
fail:
    return st;
}

/* check, allocate (on the backend, or in host memory), fill; on failure nothing is kept */
static zi_status weights_load_into(ZiBackend *be, const StArchive *ar, ZiWeightList *wl, const char *prefix,
                                   void **block, int host) {
    zi_status st = ZI_OK;
    void *mem = NULL;
    *block = NULL;
    ZI_TRY(zi_weights_check(ar, wl, prefix));
    if (host) ZI_TRY(be->ops->host_alloc(be, &mem, wl->total * be->weight_size));
    else ZI_TRY(be->ops->alloc(be, &mem, wl->total * be->weight_size));
    ZI_TRY(zi_weights_fill(be, ar, wl, prefix, mem, host));
    *block = mem;
    return ZI_OK;
fail:
    if (host) be->ops->host_free(be, mem);
    else be->ops->free(be, mem);
    for (int i = 0; i < wl->n; i++) *wl->specs[i].slot = NULL;
    return st;
}

zi_status zi_weights_load(ZiBackend *be, const StArchive *ar, ZiWeightList *wl, const char *prefix, void **block) {
    return weights_load_into(be, ar, wl, prefix, block, 0);
}

/* ---------------------------------------------------------------------------------------- */
/* offload: weights in host memory, device memory accounting */

zi_status zi_weights_load_host(ZiBackend *be, const StArchive *ar, ZiWeightList *wl, const char *prefix, void **block) {
    return weights_load_into(be, ar, wl, prefix, block, 1);
}

void zi_weights_place(const ZiBackend *be, ZiWeightList *wl, void *block) {
    size_t off = 0;
    for (int i = 0; i < wl->n; i++) {
        ZiWeightSpec *s = &wl->specs[i];
        size_t numel = 1;
        for (int d = 0; d < s->ndim; d++) numel *= (size_t)s->shape[d];
        *s->slot = zi_wt(be, block, off);
        off += numel;
    }
}

zi_status zi_cuda_memory_stats(int device, ZiMemStats *s) {
    memset(s, 0, sizeof *s);
#ifdef ZI_WITH_CUDA
    return zi_cuda_memory_stats_impl(device, s);
#else
    (void)device;
    return ZI_OK;
#endif
}

zi_status zi_cuda_reset_peak_memory(int device) {
#ifdef ZI_WITH_CUDA
    return zi_cuda_reset_peak_memory_impl(device);
#else
    (void)device;
    return ZI_OK;
#endif
}

zi_status zi_cuda_empty_cache(int device) {
#ifdef ZI_WITH_CUDA
    ZiBackend *be = NULL;
    if (device < 0 || device >= ZI_MAX_DEVICES) return ZI_OK;
    pthread_mutex_lock(&zi_backend_lock);
    be = zi_cuda_backends[device];
    pthread_mutex_unlock(&zi_backend_lock);
    return be ? zi_cuda_empty_cache_impl(be) : ZI_OK;
#else
    (void)device;
    return ZI_OK;
#endif
}
