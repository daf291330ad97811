/*
 * json.c - recursive-descent JSON parser into a flat node array (see json.h).
 * Strings are decoded into one buffer no larger than the input, so it never moves.
 */
#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 256

typedef struct {
    JsonDoc *doc;
    const char *p, *beg, *end;
    char *out;           /* write cursor into doc->strbuf */
    const char *what;
} JsonParser;

static zi_status json_error(JsonParser *ps, const char *msg) {
    return zi_fail(ZI_ERR_FORMAT, "%s: invalid JSON at byte %zu: %s", ps->what, (size_t)(ps->p - ps->beg), msg);
}

static void skip_ws(JsonParser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\n' || *ps->p == '\r' || *ps->p == '\t')) ps->p++;
}

static zi_status new_node(JsonParser *ps, JsonType type, int32_t *idx) {
    JsonDoc *d = ps->doc;
    if (d->n == d->cap) {
        int32_t cap = d->cap ? d->cap * 2 : 256;
        JsonNode *nn = realloc(d->nodes, (size_t)cap * sizeof *nn);
        if (!nn) return zi_fail(ZI_ERR_NOMEM, "%s: out of memory parsing JSON", ps->what);
        d->nodes = nn;
        d->cap = cap;
    }
    JsonNode *n = &d->nodes[d->n];
    memset(n, 0, sizeof *n);
    n->type = type;
    n->next = n->child = -1;
    *idx = d->n++;
    return ZI_OK;
}

static int hex4(const char *s, unsigned *v) {
    unsigned r = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        r <<= 4;
        if (c >= '0' && c <= '9') r |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') r |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') r |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *v = r;
    return 1;
}

static char *put_utf8(char *o, unsigned cp) {
    if (cp < 0x80) { *o++ = (char)cp; }
    else if (cp < 0x800) { *o++ = (char)(0xc0 | (cp >> 6)); *o++ = (char)(0x80 | (cp & 0x3f)); }
    else if (cp < 0x10000) {
        *o++ = (char)(0xe0 | (cp >> 12)); *o++ = (char)(0x80 | ((cp >> 6) & 0x3f)); *o++ = (char)(0x80 | (cp & 0x3f));
    } else {
        *o++ = (char)(0xf0 | (cp >> 18)); *o++ = (char)(0x80 | ((cp >> 12) & 0x3f));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3f)); *o++ = (char)(0x80 | (cp & 0x3f));
    }
    return o;
}

/* Parse a string at ps->p (on the opening quote); returns its offset in strbuf and length. */
static zi_status parse_string(JsonParser *ps, size_t *off, size_t *len) {
    ps->p++; /* opening quote */
    char *start = ps->out, *o = ps->out;
    for (;;) {
        /* fast path: copy plain bytes */
        const char *q = ps->p;
        while (q < ps->end && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20) q++;
        memcpy(o, ps->p, (size_t)(q - ps->p));
        o += q - ps->p;
        ps->p = q;
        if (ps->p >= ps->end) return json_error(ps, "unterminated string");
        char c = *ps->p;
        if (c == '"') { ps->p++; break; }
        if ((unsigned char)c < 0x20) return json_error(ps, "control character in string");
        /* escape */
        if (ps->p + 1 >= ps->end) return json_error(ps, "unterminated escape");
        char e = ps->p[1];
        ps->p += 2;
        switch (e) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (ps->end - ps->p < 4 || !hex4(ps->p, &cp)) return json_error(ps, "bad \\u escape");
            ps->p += 4;
            if (cp >= 0xd800 && cp < 0xdc00) {
                if (ps->end - ps->p >= 6 && ps->p[0] == '\\' && ps->p[1] == 'u' && hex4(ps->p + 2, &lo) &&
                    lo >= 0xdc00 && lo < 0xe000) {
                    ps->p += 6;
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                } else {
                    cp = 0xfffd; /* lone high surrogate */
                }
            } else if (cp >= 0xdc00 && cp < 0xe000) {
                cp = 0xfffd; /* lone low surrogate */
            }
            o = put_utf8(o, cp);
            break;
        }
        default: return json_error(ps, "bad escape");
        }
    }
    *o++ = '\0';
    *off = (size_t)(start - ps->doc->strbuf);
    *len = (size_t)(o - start - 1);
    ps->out = o;
    return ZI_OK;
}

static zi_status parse_value(JsonParser *ps, int depth, int32_t *idx);

static zi_status parse_container(JsonParser *ps, int depth, int32_t self, int is_object) {
    char close = is_object ? '}' : ']';
    ps->p++; /* opening bracket */
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) { ps->p++; return ZI_OK; }
    int32_t prev = -1, count = 0;
    for (;;) {
        size_t koff = 0, klen = 0;
        int has_key = 0;
        skip_ws(ps);
        if (is_object) {
            if (ps->p >= ps->end || *ps->p != '"') return json_error(ps, "expected member name");
            zi_status st = parse_string(ps, &koff, &klen);
            if (st) return st;
            has_key = 1;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') return json_error(ps, "expected ':'");
            ps->p++;
        }
        int32_t ci;
        zi_status st = parse_value(ps, depth + 1, &ci);
        if (st) return st;
        JsonNode *child = &ps->doc->nodes[ci];
        if (has_key) { child->key = (const char *)(uintptr_t)(koff + 1); child->key_len = klen; }
        if (prev < 0) ps->doc->nodes[self].child = ci;
        else ps->doc->nodes[prev].next = ci;
        prev = ci;
        count++;
        skip_ws(ps);
        if (ps->p >= ps->end) return json_error(ps, "unterminated container");
        if (*ps->p == ',') { ps->p++; continue; }
        if (*ps->p == close) { ps->p++; break; }
        return json_error(ps, is_object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
    ps->doc->nodes[self].count = count;
    return ZI_OK;
}

static zi_status parse_value(JsonParser *ps, int depth, int32_t *idx) {
    zi_status st;
    if (depth > JSON_MAX_DEPTH) return json_error(ps, "nesting too deep");
    skip_ws(ps);
    if (ps->p >= ps->end) return json_error(ps, "unexpected end of input");
    char c = *ps->p;
    if (c == '{' || c == '[') {
        if ((st = new_node(ps, c == '{' ? JSON_OBJECT : JSON_ARRAY, idx))) return st;
        return parse_container(ps, depth, *idx, c == '{');
    }
    if (c == '"') {
        size_t off, len;
        if ((st = new_node(ps, JSON_STRING, idx))) return st;
        if ((st = parse_string(ps, &off, &len))) return st;
        ps->doc->nodes[*idx].str = (const char *)(uintptr_t)(off + 1);
        ps->doc->nodes[*idx].len = len;
        return ZI_OK;
    }
    static const struct { const char *word; JsonType type; } words[] = {
        {"null", JSON_NULL}, {"true", JSON_TRUE}, {"false", JSON_FALSE}};
    for (int i = 0; i < 3; i++) {
        size_t wl = strlen(words[i].word);
        if ((size_t)(ps->end - ps->p) >= wl && memcmp(ps->p, words[i].word, wl) == 0) {
            ps->p += wl;
            return new_node(ps, words[i].type, idx);
        }
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        /* validate the RFC grammar, then convert with strtod on a bounded copy */
        const char *q = ps->p;
        if (*q == '-') q++;
        if (q >= ps->end || !(*q >= '0' && *q <= '9')) return json_error(ps, "bad number");
        if (*q == '0') q++;
        else while (q < ps->end && *q >= '0' && *q <= '9') q++;
        if (q < ps->end && *q == '.') {
            q++;
            if (q >= ps->end || !(*q >= '0' && *q <= '9')) return json_error(ps, "bad number");
            while (q < ps->end && *q >= '0' && *q <= '9') q++;
        }
        if (q < ps->end && (*q == 'e' || *q == 'E')) {
            q++;
            if (q < ps->end && (*q == '+' || *q == '-')) q++;
            if (q >= ps->end || !(*q >= '0' && *q <= '9')) return json_error(ps, "bad number");
            while (q < ps->end && *q >= '0' && *q <= '9') q++;
        }
        char buf[64];
        size_t nl = (size_t)(q - ps->p);
        if (nl >= sizeof buf) return json_error(ps, "number too long");
        memcpy(buf, ps->p, nl);
        buf[nl] = '\0';
        if ((st = new_node(ps, JSON_NUMBER, idx))) return st;
        JsonNode *n = &ps->doc->nodes[*idx];
        n->num = strtod(buf, NULL);
        /* keep the number's text too: copy into strbuf (it came from the input, so it fits) */
        memcpy(ps->out, buf, nl + 1);
        n->str = (const char *)(uintptr_t)((size_t)(ps->out - ps->doc->strbuf) + 1);
        n->len = nl;
        ps->out += nl + 1;
        ps->p = q;
        return ZI_OK;
    }
    return json_error(ps, "unexpected character");
}

zi_status json_parse(JsonDoc *doc, const char *text, size_t len, const char *what) {
    memset(doc, 0, sizeof *doc);
    /* Every decoded string plus its NUL is no longer than its quoted source (a number's copy
       plus NUL fits its text plus one separator or the end), so len + 2 bytes always suffice. */
    doc->strbuf = malloc(len + 2);
    if (!doc->strbuf) return zi_fail(ZI_ERR_NOMEM, "%s: out of memory parsing JSON (%zu bytes)", what, len);
    JsonParser ps = {doc, text, text, text + len, doc->strbuf, what};
    int32_t root;
    zi_status st = parse_value(&ps, 0, &root);
    if (st == ZI_OK) {
        skip_ws(&ps);
        if (ps.p != ps.end) st = json_error(&ps, "trailing characters after the value");
    }
    if (st != ZI_OK) { json_free(doc); return st; }
    /* offsets (stored +1 so NULL stays NULL) -> pointers, now that nothing moves */
    for (int32_t i = 0; i < doc->n; i++) {
        JsonNode *n = &doc->nodes[i];
        if (n->key) n->key = doc->strbuf + ((uintptr_t)n->key - 1);
        if (n->str) n->str = doc->strbuf + ((uintptr_t)n->str - 1);
    }
    return ZI_OK;
}

zi_status json_parse_file(JsonDoc *doc, const char *path) {
    memset(doc, 0, sizeof *doc);
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT) return zi_fail(ZI_ERR_NOTFOUND, "file not found: %s", path);
        return zi_fail(ZI_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    }
    zi_status st = ZI_OK;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) != 0) { st = zi_fail(ZI_ERR_IO, "cannot seek %s", path); goto fail; }
    long sz = ftell(f);
    if (sz < 0) { st = zi_fail(ZI_ERR_IO, "cannot size %s", path); goto fail; }
    rewind(f);
    ZI_MALLOC(buf, (size_t)sz + 1);
    if (fread(buf, 1, (size_t)sz, f) != (size_t)sz) { st = zi_fail(ZI_ERR_IO, "short read on %s", path); goto fail; }
    st = json_parse(doc, buf, (size_t)sz, path);
fail:
    free(buf);
    fclose(f);
    return st;
}

void json_free(JsonDoc *doc) {
    free(doc->nodes);
    free(doc->strbuf);
    memset(doc, 0, sizeof *doc);
}

const JsonNode *json_get(const JsonDoc *d, const JsonNode *obj, const char *key) {
    if (!obj || obj->type != JSON_OBJECT) return NULL;
    size_t kl = strlen(key);
    for (const JsonNode *c = json_first(d, obj); c; c = json_next(d, c))
        if (c->key_len == kl && memcmp(c->key, key, kl) == 0) return c;
    return NULL;
}

const JsonNode *json_at(const JsonDoc *d, const JsonNode *arr, int32_t i) {
    if (!arr || arr->type != JSON_ARRAY || i < 0 || i >= arr->count) return NULL;
    const JsonNode *c = json_first(d, arr);
    while (i-- > 0) c = json_next(d, c);
    return c;
}

zi_status json_get_double(const JsonDoc *d, const JsonNode *obj, const char *key, double dflt, double *out,
                          const char *what) {
    const JsonNode *n = json_get(d, obj, key);
    if (!n || n->type == JSON_NULL) { *out = dflt; return ZI_OK; }
    if (n->type != JSON_NUMBER) return zi_fail(ZI_ERR_FORMAT, "%s: \"%s\" must be a number", what, key);
    *out = n->num;
    return ZI_OK;
}

zi_status json_get_int(const JsonDoc *d, const JsonNode *obj, const char *key, int64_t dflt, int64_t *out,
                       const char *what) {
    const JsonNode *n = json_get(d, obj, key);
    if (!n || n->type == JSON_NULL) { *out = dflt; return ZI_OK; }
    if (n->type != JSON_NUMBER || n->num != floor(n->num) || fabs(n->num) > 9.0e15)
        return zi_fail(ZI_ERR_FORMAT, "%s: \"%s\" must be an integer", what, key);
    *out = (int64_t)n->num;
    return ZI_OK;
}

zi_status json_get_bool(const JsonDoc *d, const JsonNode *obj, const char *key, int dflt, int *out, const char *what) {
    const JsonNode *n = json_get(d, obj, key);
    if (!n || n->type == JSON_NULL) { *out = dflt; return ZI_OK; }
    if (n->type != JSON_TRUE && n->type != JSON_FALSE)
        return zi_fail(ZI_ERR_FORMAT, "%s: \"%s\" must be true or false", what, key);
    *out = n->type == JSON_TRUE;
    return ZI_OK;
}

zi_status json_get_int_array(const JsonDoc *d, const JsonNode *obj, const char *key, int64_t *out, int max,
                             int *n_out, const char *what) {
    const JsonNode *n = json_get(d, obj, key);
    *n_out = 0;
    if (!n || n->type == JSON_NULL) return ZI_OK;
    if (n->type != JSON_ARRAY) return zi_fail(ZI_ERR_FORMAT, "%s: \"%s\" must be a list", what, key);
    if (n->count > max) return zi_fail(ZI_ERR_FORMAT, "%s: \"%s\" has %d entries, at most %d allowed", what, key, n->count, max);
    int i = 0;
    for (const JsonNode *c = json_first(d, n); c; c = json_next(d, c), i++) {
        if (c->type != JSON_NUMBER || c->num != floor(c->num) || fabs(c->num) > 9.0e15)
            return zi_fail(ZI_ERR_FORMAT, "%s: \"%s\" must hold integers", what, key);
        out[i] = (int64_t)c->num;
    }
    *n_out = i;
    return ZI_OK;
}
