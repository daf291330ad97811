/*
 * safetensors.c - mmap + validated header parse for safetensors files and sharded
 * checkpoints (see safetensors.h). Format: 8-byte little-endian header length N, N bytes of
 * JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then data;
 * offsets are relative to the first byte after the header.
 */
#include "safetensors.h"
#include "json.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct { const char *name; ZiDtype dt; size_t size; } st_dtypes[] = {
    {"F32", ZI_DT_F32, 4},  {"BF16", ZI_DT_BF16, 2}, {"F16", ZI_DT_F16, 2},   {"F64", ZI_DT_F64, 8},
    {"I64", ZI_DT_I64, 8},  {"I32", ZI_DT_I32, 4},   {"I16", ZI_DT_I16, 2},   {"I8", ZI_DT_I8, 1},
    {"U8", ZI_DT_U8, 1},    {"BOOL", ZI_DT_BOOL, 1}, {"F8_E4M3", ZI_DT_F8_E4M3, 1}, {"F8_E5M2", ZI_DT_F8_E5M2, 1},
};

const char *st_dtype_name(ZiDtype dt) {
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (st_dtypes[i].dt == dt) return st_dtypes[i].name;
    return "?";
}

size_t st_dtype_size(ZiDtype dt) {
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (st_dtypes[i].dt == dt) return st_dtypes[i].size;
    return 0;
}

static uint32_t hash_name(const char *s) {
    uint32_t h = 2166136261u; /* FNV-1a */
    while (*s) { h ^= (unsigned char)*s++; h *= 16777619u; }
    return h;
}

static zi_status rebuild_hash(StArchive *ar) {
    uint32_t cap = 16;
    while (cap < (uint32_t)ar->ntensors * 2u) cap <<= 1;
    int32_t *h = malloc(cap * sizeof *h);
    if (!h) return zi_fail(ZI_ERR_NOMEM, "out of memory indexing tensors");
    memset(h, 0xff, cap * sizeof *h);
    for (int i = 0; i < ar->ntensors; i++) {
        uint32_t j = hash_name(ar->tensors[i].name) & (cap - 1);
        while (h[j] >= 0) j = (j + 1) & (cap - 1);
        h[j] = i;
    }
    free(ar->hash);
    ar->hash = h;
    ar->hash_mask = cap - 1;
    return ZI_OK;
}

const StTensor *st_find(const StArchive *ar, const char *name) {
    if (!ar->hash) return NULL;
    uint32_t j = hash_name(name) & ar->hash_mask;
    while (ar->hash[j] >= 0) {
        const StTensor *t = &ar->tensors[ar->hash[j]];
        if (strcmp(t->name, name) == 0) return t;
        j = (j + 1) & ar->hash_mask;
    }
    return NULL;
}

static int cmp_by_offset(const void *a, const void *b) {
    const StTensor *x = *(const StTensor *const *)a, *y = *(const StTensor *const *)b;
    const char *px = x->data, *py = y->data;
    return px < py ? -1 : px > py;
}

/* Map one file and append its tensors to the archive. */
static zi_status add_file(StArchive *ar, const char *path) {
    zi_status st = ZI_OK;
    JsonDoc doc = {0};
    const StTensor **sorted = NULL;
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        if (errno == ENOENT) return zi_fail(ZI_ERR_NOTFOUND, "file not found: %s", path);
        return zi_fail(ZI_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) { close(fd); return zi_fail(ZI_ERR_IO, "cannot stat %s: %s", path, strerror(errno)); }
    if (!S_ISREG(sb.st_mode)) { close(fd); return zi_fail(ZI_ERR_FORMAT, "%s: not a regular file", path); }
    size_t size = (size_t)sb.st_size;
    if (size < 8) { close(fd); return zi_fail(ZI_ERR_FORMAT, "%s: truncated safetensors file (%zu bytes, no header)", path, size); }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return zi_fail(ZI_ERR_IO, "cannot mmap %s: %s", path, strerror(errno));

    StFile *nf = realloc(ar->files, (size_t)(ar->nfiles + 1) * sizeof *nf);
    if (!nf) { munmap(map, size); return zi_fail(ZI_ERR_NOMEM, "out of memory opening %s", path); }
    ar->files = nf;
    int fi = ar->nfiles++;
    ar->files[fi].map = map;
    ar->files[fi].size = size;
    ar->files[fi].path = strdup(path);
    if (!ar->files[fi].path) return zi_fail(ZI_ERR_NOMEM, "out of memory opening %s", path);

    const unsigned char *bytes = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | bytes[i];
    if (hlen > size - 8)
        return zi_fail(ZI_ERR_FORMAT, "%s: header length %llu runs past the end of the file (%zu bytes)", path,
                       (unsigned long long)hlen, size);
    if (hlen < 2) return zi_fail(ZI_ERR_FORMAT, "%s: header too short (%llu bytes)", path, (unsigned long long)hlen);
    const char *data = (const char *)bytes + 8 + hlen;
    size_t data_size = size - 8 - (size_t)hlen;

    ZI_TRY(json_parse(&doc, (const char *)bytes + 8, (size_t)hlen, path));
    const JsonNode *root = json_root(&doc);
    if (root->type != JSON_OBJECT) { st = zi_fail(ZI_ERR_FORMAT, "%s: header is not a JSON object", path); goto fail; }

    /* names live in one block per file */
    size_t names_len = 0;
    for (const JsonNode *e = json_first(&doc, root); e; e = json_next(&doc, e)) names_len += e->key_len + 1;
    char *names = malloc(names_len ? names_len : 1);
    if (!names) { st = zi_fail(ZI_ERR_NOMEM, "out of memory reading %s", path); goto fail; }
    char **nb = realloc(ar->name_blocks, (size_t)(ar->nname_blocks + 1) * sizeof *nb);
    if (!nb) { free(names); st = zi_fail(ZI_ERR_NOMEM, "out of memory reading %s", path); goto fail; }
    ar->name_blocks = nb;
    ar->name_blocks[ar->nname_blocks++] = names;

    int first = ar->ntensors;
    for (const JsonNode *e = json_first(&doc, root); e; e = json_next(&doc, e)) {
        if (e->key_len == 12 && memcmp(e->key, "__metadata__", 12) == 0) continue;
        if (memchr(e->key, '\0', e->key_len)) { st = zi_fail(ZI_ERR_FORMAT, "%s: tensor name with a NUL byte", path); goto fail; }
        memcpy(names, e->key, e->key_len);
        names[e->key_len] = '\0';
        const char *tname = names;
        names += e->key_len + 1;
        if (e->type != JSON_OBJECT) { st = zi_fail(ZI_ERR_FORMAT, "%s: tensor '%s': entry is not an object", path, tname); goto fail; }
        if (st_find(ar, tname) || 0) { st = zi_fail(ZI_ERR_FORMAT, "%s: tensor '%s' appears twice", path, tname); goto fail; }
        const JsonNode *dt = json_get(&doc, e, "dtype"), *shp = json_get(&doc, e, "shape"),
                       *off = json_get(&doc, e, "data_offsets");
        if (!dt || dt->type != JSON_STRING) { st = zi_fail(ZI_ERR_FORMAT, "%s: tensor '%s': missing dtype", path, tname); goto fail; }
        if (!shp || shp->type != JSON_ARRAY) { st = zi_fail(ZI_ERR_FORMAT, "%s: tensor '%s': missing shape", path, tname); goto fail; }
        if (!off || off->type != JSON_ARRAY || off->count != 2) {
            st = zi_fail(ZI_ERR_FORMAT, "%s: tensor '%s': data_offsets must be [begin, end]", path, tname); goto fail;
        }
        StTensor t = {0};
        t.name = tname;
        t.file = fi;
        size_t esize = 0;
        for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
            if (strcmp(dt->str, st_dtypes[i].name) == 0) { t.dtype = st_dtypes[i].dt; esize = st_dtypes[i].size; }
        if (!esize) { st = zi_fail(ZI_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%.32s'", path, tname, dt->str); goto fail; }
        if (shp->count > ST_MAX_DIMS) { st = zi_fail(ZI_ERR_FORMAT, "%s: tensor '%s': %d dimensions (max %d)", path, tname, shp->count, ST_MAX_DIMS); goto fail; }
        t.ndim = shp->count;
        uint64_t numel = 1;
        int i = 0;
        for (const JsonNode *d = json_first(&doc, shp); d; d = json_next(&doc, d), i++) {
            if (d->type != JSON_NUMBER || d->num < 0 || d->num != (double)(int64_t)d->num || d->num > 9.0e15) {
                st = zi_fail(ZI_ERR_FORMAT, "%s: tensor '%s': bad shape entry", path, tname); goto fail;
            }
            t.shape[i] = (int64_t)d->num;
            if (t.shape[i] && numel > UINT64_MAX / (uint64_t)t.shape[i]) {
                st = zi_fail(ZI_ERR_FORMAT, "%s: tensor '%s': shape overflows", path, tname); goto fail;
            }
            numel *= (uint64_t)t.shape[i];
        }
        const JsonNode *b = json_at(&doc, off, 0), *en = json_at(&doc, off, 1);
        if (b->type != JSON_NUMBER || en->type != JSON_NUMBER || b->num < 0 || en->num < b->num ||
            b->num != (double)(uint64_t)b->num || en->num != (double)(uint64_t)en->num || en->num > 1.8e19) {
            st = zi_fail(ZI_ERR_FORMAT, "%s: tensor '%s': bad data_offsets", path, tname); goto fail;
        }
        uint64_t ob = (uint64_t)b->num, oe = (uint64_t)en->num;
        if (oe > data_size) {
            st = zi_fail(ZI_ERR_FORMAT, "%s: tensor '%s': data [%llu, %llu) outside the %zu data bytes (truncated file?)",
                         path, tname, (unsigned long long)ob, (unsigned long long)oe, data_size);
            goto fail;
        }
        if (numel > UINT64_MAX / esize || numel * esize != oe - ob) {
            st = zi_fail(ZI_ERR_FORMAT, "%s: tensor '%s': shape needs %llu bytes of %s but data_offsets give %llu", path,
                         tname, (unsigned long long)(numel * esize), dt->str, (unsigned long long)(oe - ob));
            goto fail;
        }
        t.numel = (int64_t)numel;
        t.nbytes = (size_t)(oe - ob);
        t.data = data + ob;
        if (ar->ntensors == ar->cap) {
            int cap = ar->cap ? ar->cap * 2 : 64;
            StTensor *nt = realloc(ar->tensors, (size_t)cap * sizeof *nt);
            if (!nt) { st = zi_fail(ZI_ERR_NOMEM, "out of memory reading %s", path); goto fail; }
            ar->tensors = nt;
            ar->cap = cap;
        }
        ar->tensors[ar->ntensors++] = t;
        /* the duplicate check above needs the index; keep it current (cheap at these counts) */
        if (ar->ntensors * 2 > (int)ar->hash_mask || !ar->hash) ZI_TRY(rebuild_hash(ar));
        else {
            uint32_t j = hash_name(t.name) & ar->hash_mask;
            while (ar->hash[j] >= 0) j = (j + 1) & ar->hash_mask;
            ar->hash[j] = ar->ntensors - 1;
        }
    }

    /* overlapping tensors would alias each other's bytes: reject */
    int nnew = ar->ntensors - first;
    if (nnew > 1) {
        ZI_MALLOC(sorted, (size_t)nnew * sizeof *sorted);
        for (int i = 0; i < nnew; i++) sorted[i] = &ar->tensors[first + i];
        qsort(sorted, (size_t)nnew, sizeof *sorted, cmp_by_offset);
        for (int i = 1; i < nnew; i++) {
            const char *prev_end = (const char *)sorted[i - 1]->data + sorted[i - 1]->nbytes;
            if ((const char *)sorted[i]->data < prev_end && sorted[i]->nbytes && sorted[i - 1]->nbytes) {
                st = zi_fail(ZI_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap", path, sorted[i - 1]->name, sorted[i]->name);
                goto fail;
            }
        }
    }
fail:
    free(sorted);
    json_free(&doc);
    return st;
}

zi_status st_open_file(StArchive *ar, const char *path) {
    memset(ar, 0, sizeof *ar);
    zi_status st = add_file(ar, path);
    if (st == ZI_OK && !ar->hash) st = rebuild_hash(ar);
    if (st != ZI_OK) st_close(ar);
    return st;
}

static int file_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

zi_status st_open_dir(StArchive *ar, const char *dir, const char *stem) {
    zi_status st = ZI_OK;
    JsonDoc doc = {0};
    char path[4096], index[4096];
    char **seen = NULL;
    int nseen = 0;
    memset(ar, 0, sizeof *ar);
    snprintf(path, sizeof path, "%s/%s.safetensors", dir, stem);
    snprintf(index, sizeof index, "%s/%s.safetensors.index.json", dir, stem);
    if (file_exists(path)) return st_open_file(ar, path);
    if (!file_exists(index))
        return zi_fail(ZI_ERR_NOTFOUND, "no weights in %s: neither %s.safetensors nor %s.safetensors.index.json exists",
                       dir, stem, stem);
    ZI_TRY(json_parse_file(&doc, index));
    const JsonNode *wm = json_get(&doc, json_root(&doc), "weight_map");
    if (!wm || wm->type != JSON_OBJECT) { st = zi_fail(ZI_ERR_FORMAT, "%s: no \"weight_map\" object", index); goto fail; }
    ZI_CALLOC(seen, (size_t)wm->count + 1, sizeof *seen);
    for (const JsonNode *e = json_first(&doc, wm); e; e = json_next(&doc, e)) {
        if (e->type != JSON_STRING) { st = zi_fail(ZI_ERR_FORMAT, "%s: weight_map values must be file names", index); goto fail; }
        if (strchr(e->str, '/') || strchr(e->str, '\\') || strcmp(e->str, "..") == 0 || e->len == 0) {
            st = zi_fail(ZI_ERR_FORMAT, "%s: shard name '%s' is not a plain file name", index, e->str); goto fail;
        }
        int known = 0;
        for (int i = 0; i < nseen; i++) if (strcmp(seen[i], e->str) == 0) known = 1;
        if (known) continue;
        seen[nseen++] = (char *)e->str;
        snprintf(path, sizeof path, "%s/%s", dir, e->str);
        if (!file_exists(path)) { st = zi_fail(ZI_ERR_NOTFOUND, "shard %s listed in %s is missing", path, index); goto fail; }
        ZI_TRY(add_file(ar, path));
    }
    if (!ar->hash) ZI_TRY(rebuild_hash(ar));
    /* every mapped name must be in the shard the index says */
    for (const JsonNode *e = json_first(&doc, wm); e; e = json_next(&doc, e)) {
        char key[1024];
        snprintf(key, sizeof key, "%.*s", (int)(e->key_len < 1023 ? e->key_len : 1023), e->key);
        const StTensor *t = st_find(ar, key);
        const char *base = t ? strrchr(ar->files[t->file].path, '/') + 1 : NULL;
        if (!t || strcmp(base, e->str) != 0) {
            st = zi_fail(ZI_ERR_FORMAT, "%s: tensor '%s' is not in shard %s as the index says", index, key, e->str);
            goto fail;
        }
    }
fail:
    free(seen);
    json_free(&doc);
    if (st != ZI_OK) st_close(ar);
    return st;
}

void st_close(StArchive *ar) {
    for (int i = 0; i < ar->nfiles; i++) {
        if (ar->files[i].map) munmap(ar->files[i].map, ar->files[i].size);
        free(ar->files[i].path);
    }
    for (int i = 0; i < ar->nname_blocks; i++) free(ar->name_blocks[i]);
    free(ar->name_blocks);
    free(ar->files);
    free(ar->tensors);
    free(ar->hash);
    memset(ar, 0, sizeof *ar);
}

zi_status st_read_f32(const StArchive *ar, const StTensor *t, float *dst) {
    const unsigned char *src = t->data;
    switch (t->dtype) {
    case ZI_DT_F32: memcpy(dst, src, t->nbytes); return ZI_OK;
    case ZI_DT_BF16:
        for (int64_t i = 0; i < t->numel; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            dst[i] = zi_bf16_to_f32(h);
        }
        return ZI_OK;
    case ZI_DT_F16:
        for (int64_t i = 0; i < t->numel; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            dst[i] = zi_f16_to_f32(h);
        }
        return ZI_OK;
    default:
        return zi_fail(ZI_ERR_FORMAT, "%s: tensor '%s' has dtype %s; only F32, BF16 and F16 can be loaded",
                       ar->files[t->file].path, t->name, st_dtype_name(t->dtype));
    }
}
