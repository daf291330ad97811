/*
 * png.c - minimal PNG writer: signature, IHDR, one zlib-compressed IDAT (each row prefixed by
 * its filter byte; the Sub filter, which suits photographic images), IEND; CRC-32 from zlib.
 */
#include "png.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

static void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

/* write one chunk: length, type, data, CRC over type + data */
static uint8_t *put_chunk(uint8_t *o, const char *type, const uint8_t *data, size_t len) {
    put_u32(o, (uint32_t)len);
    memcpy(o + 4, type, 4);
    if (len) memcpy(o + 8, data, len);
    uLong crc = crc32(0L, o + 4, (uInt)(len + 4));
    put_u32(o + 8 + len, (uint32_t)crc);
    return o + 12 + len;
}

zi_status zi_png_encode(const uint8_t *pixels, int H, int W, int channels, int level, uint8_t **png, size_t *len) {
    zi_status st = ZI_OK;
    uint8_t *raw = NULL, *z = NULL, *out = NULL;
    *png = NULL;
    *len = 0;
    if (H <= 0 || W <= 0 || H > (1 << 24) || W > (1 << 24))
        return zi_fail(ZI_ERR_ARG, "PNG: image size %dx%d is out of range", W, H);
    if (channels != 1 && channels != 3 && channels != 4)
        return zi_fail(ZI_ERR_ARG, "PNG: %d channels (1, 3 or 4 supported)", channels);
    size_t stride = (size_t)W * channels, raw_len = (size_t)H * (stride + 1);
    ZI_MALLOC(raw, raw_len);
    for (int y = 0; y < H; y++) {
        const uint8_t *row = pixels + (size_t)y * stride;
        uint8_t *r = raw + (size_t)y * (stride + 1);
        r[0] = 1; /* Sub: each byte minus the same channel of the pixel to its left */
        for (size_t i = 0; i < stride; i++) r[1 + i] = (uint8_t)(row[i] - (i >= (size_t)channels ? row[i - channels] : 0));
    }
    uLongf zlen = compressBound((uLong)raw_len);
    ZI_MALLOC(z, zlen);
    if (compress2(z, &zlen, raw, (uLong)raw_len, level) != Z_OK) { st = zi_fail(ZI_ERR_NOMEM, "PNG: zlib compression failed"); goto fail; }
    size_t total = 8 + (12 + 13) + (12 + zlen) + 12;
    ZI_MALLOC(out, total);
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    memcpy(out, sig, 8);
    uint8_t ihdr[13];
    put_u32(ihdr, (uint32_t)W);
    put_u32(ihdr + 4, (uint32_t)H);
    ihdr[8] = 8;                                                  /* bit depth                 */
    ihdr[9] = channels == 1 ? 0 : channels == 3 ? 2 : 6;          /* grey, RGB, RGBA           */
    ihdr[10] = ihdr[11] = ihdr[12] = 0;                           /* deflate, adaptive, no interlace */
    uint8_t *o = put_chunk(out + 8, "IHDR", ihdr, 13);
    o = put_chunk(o, "IDAT", z, zlen);
    o = put_chunk(o, "IEND", NULL, 0);
    *png = out;
    *len = (size_t)(o - out);
    out = NULL;
fail:
    free(raw);
    free(z);
    free(out);
    return st;
}

zi_status zi_png_write(const char *path, const uint8_t *pixels, int H, int W, int channels) {
    zi_status st = ZI_OK;
    uint8_t *png = NULL;
    size_t len = 0;
    char tmp[4096];
    FILE *f = NULL;
    ZI_TRY(zi_png_encode(pixels, H, W, channels, 6, &png, &len));
    if (snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid()) >= (int)sizeof tmp) {
        st = zi_fail(ZI_ERR_ARG, "path too long: %s", path);
        goto fail;
    }
    f = fopen(tmp, "wb");
    if (!f) {
        st = zi_fail(errno == ENOENT ? ZI_ERR_NOTFOUND : ZI_ERR_IO, "cannot write %s: %s", path, strerror(errno));
        goto fail;
    }
    if (fwrite(png, 1, len, f) != len || fclose(f) != 0) {
        f = NULL;
        remove(tmp);
        st = zi_fail(ZI_ERR_IO, "cannot write %s: %s", path, strerror(errno));
        goto fail;
    }
    f = NULL;
    if (rename(tmp, path) != 0) {
        remove(tmp);
        st = zi_fail(ZI_ERR_IO, "cannot write %s: %s", path, strerror(errno));
        goto fail;
    }
fail:
    if (f) { fclose(f); remove(tmp); }
    free(png);
    return st;
}
