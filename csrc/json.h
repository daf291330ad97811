/*
 * json.h - a small, fast JSON reader (RFC 8259) for config.json, safetensors headers,
 * *.index.json and the 11 MB tokenizer.json. Parses into one node array plus one string
 * buffer (escapes decoded to UTF-8, NUL-terminated). Object members keep file order.
 * Input is untrusted: depth is bounded, every error is a ZI_ERR_FORMAT with the byte offset.
 */
#ifndef ZI_JSON_H
#define ZI_JSON_H

#include "zi_common.h"

typedef enum { JSON_NULL, JSON_FALSE, JSON_TRUE, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } JsonType;

typedef struct JsonNode {
    JsonType type;
    int32_t next;      /* index of the next sibling, -1 at the end            */
    int32_t child;     /* first child (array element / object value), -1 none */
    int32_t count;     /* number of children of an array or object            */
    const char *key;   /* member name when the parent is an object, else NULL */
    size_t key_len;
    const char *str;   /* decoded string (NUL-terminated) or the number's text */
    size_t len;
    double num;        /* value of a number                                    */
} JsonNode;

typedef struct JsonDoc {
    JsonNode *nodes;   /* nodes[0] is the root */
    int32_t n, cap;
    char *strbuf;      /* decoded strings */
} JsonDoc;

/* Parse `len` bytes. `what` names the source in error messages. On failure doc is empty. */
zi_status json_parse(JsonDoc *doc, const char *text, size_t len, const char *what);
/* Read a whole file and parse it. Missing file: ZI_ERR_NOTFOUND. */
zi_status json_parse_file(JsonDoc *doc, const char *path);
void json_free(JsonDoc *doc);

static inline const JsonNode *json_root(const JsonDoc *d) { return d->n ? &d->nodes[0] : NULL; }
static inline const JsonNode *json_first(const JsonDoc *d, const JsonNode *n) {
    return (n && n->child >= 0) ? &d->nodes[n->child] : NULL;
}
static inline const JsonNode *json_next(const JsonDoc *d, const JsonNode *n) {
    return (n && n->next >= 0) ? &d->nodes[n->next] : NULL;
}
/* Member of an object by name (linear scan), NULL if absent or obj is not an object. */
const JsonNode *json_get(const JsonDoc *d, const JsonNode *obj, const char *key);
/* Element i of an array, NULL if out of range. */
const JsonNode *json_at(const JsonDoc *d, const JsonNode *arr, int32_t i);

/* Typed lookups on an object with a default when the member is absent or null.
   A member of the wrong type is a ZI_ERR_FORMAT naming `what` and the key. */
zi_status json_get_int(const JsonDoc *d, const JsonNode *obj, const char *key, int64_t dflt, int64_t *out, const char *what);
zi_status json_get_double(const JsonDoc *d, const JsonNode *obj, const char *key, double dflt, double *out, const char *what);
zi_status json_get_bool(const JsonDoc *d, const JsonNode *obj, const char *key, int dflt, int *out, const char *what);
/* Reads an array of integers into out[0..max); *n_out gets the count (error if > max). */
zi_status json_get_int_array(const JsonDoc *d, const JsonNode *obj, const char *key, int64_t *out, int max,
                             int *n_out, const char *what);

#endif /* ZI_JSON_H */
