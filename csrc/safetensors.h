/*
 * safetensors.h - read-only access to .safetensors files and sharded checkpoints.
 * Files are mmapped; the header is validated as untrusted input (lengths, JSON, dtypes,
 * shapes vs byte sizes, offsets inside the data, no overlaps). A checkpoint is either one
 * file or the shards named by a `*.safetensors.index.json` weight_map.
 */
#ifndef ZI_SAFETENSORS_H
#define ZI_SAFETENSORS_H

#include "zi_common.h"

typedef enum {
    ZI_DT_F32, ZI_DT_BF16, ZI_DT_F16,          /* loadable                              */
    ZI_DT_F64, ZI_DT_I64, ZI_DT_I32, ZI_DT_I16, /* known, sized, but not loadable here   */
    ZI_DT_I8, ZI_DT_U8, ZI_DT_BOOL, ZI_DT_F8_E4M3, ZI_DT_F8_E5M2,
} ZiDtype;

#define ST_MAX_DIMS 8

typedef struct StTensor {
    const char *name;              /* NUL-terminated, owned by the archive */
    ZiDtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    size_t nbytes;
    const void *data;              /* points into the mmapped file        */
    int file;                      /* index into StArchive.files          */
} StTensor;

typedef struct StFile {
    char *path;
    void *map;
    size_t size;
} StFile;

typedef struct StArchive {
    StFile *files;
    int nfiles;
    StTensor *tensors;
    int ntensors, cap;
    int32_t *hash;                 /* open addressing over tensor indices, -1 = empty */
    uint32_t hash_mask;
    char *names;                   /* all names, one buffer per file appended */
    char **name_blocks;
    int nname_blocks;
} StArchive;

/* Open one .safetensors file. */
zi_status st_open_file(StArchive *ar, const char *path);
/* Open `<dir>/<stem>.safetensors` or, if absent, `<dir>/<stem>.safetensors.index.json` and its
   shards. Missing both: ZI_ERR_NOTFOUND naming what was looked for. */
zi_status st_open_dir(StArchive *ar, const char *dir, const char *stem);
const StTensor *st_find(const StArchive *ar, const char *name);
void st_close(StArchive *ar);

const char *st_dtype_name(ZiDtype dt);
size_t st_dtype_size(ZiDtype dt);

/* Convert `t` (F32/BF16/F16) to float32 into dst[0..numel). Other dtypes: ZI_ERR_FORMAT. */
zi_status st_read_f32(const StArchive *ar, const StTensor *t, float *dst);

#endif /* ZI_SAFETENSORS_H */
