/*
 * png.h - PNG encoding of 8-bit RGB / RGBA / grey images (zlib deflate), for Image.save()
 * and notebooks' _repr_png_ without Pillow.
 */
#ifndef ZI_PNG_H
#define ZI_PNG_H

#include "zi_common.h"

/* pixels[H, W, channels] (channels 1, 3 or 4) -> PNG bytes (malloc'ed, caller frees). */
zi_status zi_png_encode(const uint8_t *pixels, int H, int W, int channels, int level, uint8_t **png, size_t *len);
/* Encode and write to path (the file is replaced; on failure nothing partial is left). */
zi_status zi_png_write(const char *path, const uint8_t *pixels, int H, int W, int channels);

#endif /* ZI_PNG_H */
