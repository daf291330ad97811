/*
 * test_tokenizer.c - standalone C check of csrc/tokenizer.c against the HF golden file, plus
 * the error paths; no Python needed (meant to run under valgrind too).
 *
 *   gcc -std=c11 -O2 -Icsrc csrc/tokenizer.c csrc/json.c csrc/zi_error.c tests/c/test_tokenizer.c -lm -o /tmp/tt
 *   xz -dc tests/fixtures/qwen3-tokenizer/tokenizer.json.xz > DIR/tokenizer.json   (+ tokenizer_config.json)
 *   xz -dc tests/fixtures/tokenizer_golden.json.xz > golden.json
 *   /tmp/tt DIR golden.json [max_cases]
 */
#define _POSIX_C_SOURCE 200809L /* mkdtemp */
#include "json.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int n_pass, n_fail;

static void check(int ok, const char *what, long idx) {
    if (ok) { n_pass++; return; }
    n_fail++;
    if (n_fail <= 20) fprintf(stderr, "FAIL: %s (case %ld)\n", what, idx);
}

static int same_ids(const int32_t *a, size_t na, const JsonDoc *d, const JsonNode *arr) {
    if (!arr || arr->type != JSON_ARRAY || (size_t)arr->count != na) return 0;
    size_t i = 0;
    for (const JsonNode *e = json_first(d, arr); e; e = json_next(d, e), i++)
        if ((int32_t)e->num != a[i]) return 0;
    return 1;
}

static int32_t *ids_of(const JsonDoc *d, const JsonNode *arr, size_t *n) {
    int32_t *ids = malloc(((size_t)arr->count + 1) * sizeof *ids);
    size_t i = 0;
    for (const JsonNode *e = json_first(d, arr); e; e = json_next(d, e)) ids[i++] = (int32_t)e->num;
    *n = i;
    return ids;
}

/* decode(ids) must equal `want` (or `fallback` when want is absent) */
static void check_decode(const ZiTokenizer *tok, const int32_t *ids, size_t n, int skip, const JsonNode *want,
                         const JsonNode *fallback, const char *what, long idx) {
    char *text = NULL;
    size_t len = 0;
    const JsonNode *w = want ? want : fallback;
    zi_status st = zi_tokenizer_decode(tok, ids, n, skip, &text, &len);
    check(st == ZI_OK && w && w->len == len && memcmp(w->str, text, len) == 0, what, idx);
    free(text);
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (f) { fputs(text, f); fclose(f); }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s TOKENIZER_DIR GOLDEN.json [max_cases]\n", argv[0]);
        return 2;
    }
    long max_cases = argc > 3 ? atol(argv[3]) : -1;
    ZiTokenizer *tok = NULL;
    clock_t t0 = clock();
    zi_status st = zi_tokenizer_load(&tok, argv[1]);
    if (st) { fprintf(stderr, "load failed: %s\n", zi_last_error()); return 1; }
    printf("loaded in %.3f s, vocab_size %d, eos %d, pad %d\n", (double)(clock() - t0) / CLOCKS_PER_SEC,
           zi_tokenizer_vocab_size(tok), zi_tokenizer_eos_id(tok), zi_tokenizer_pad_id(tok));

    JsonDoc doc;
    if (json_parse_file(&doc, argv[2])) { fprintf(stderr, "golden: %s\n", zi_last_error()); return 1; }
    const JsonNode *root = json_root(&doc);
    check(zi_tokenizer_vocab_size(tok) == (int32_t)json_get(&doc, root, "vocab_size")->num, "vocab_size", -1);

    /* every golden string: encode == HF ids, decode == HF decode (both skip modes) */
    long idx = 0;
    double enc_s = 0;
    for (const JsonNode *c = json_first(&doc, json_get(&doc, root, "cases")); c && idx != max_cases;
         c = json_next(&doc, c), idx++) {
        const JsonNode *text = json_get(&doc, c, "text"), *want = json_get(&doc, c, "ids");
        const JsonNode *dec = json_get(&doc, c, "decoded"), *dec_skip = json_get(&doc, c, "decoded_skip");
        int32_t *ids = NULL;
        size_t n = 0;
        clock_t t1 = clock();
        st = zi_tokenizer_encode(tok, text->str, text->len, &ids, &n);
        enc_s += (double)(clock() - t1) / CLOCKS_PER_SEC;
        int ok = st == ZI_OK && same_ids(ids, n, &doc, want);
        check(ok, "encode", idx);
        if (!ok && n_fail <= 5) {
            fprintf(stderr, "  text (%zu bytes): %.200s\n  got:", text->len, text->str);
            for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", ids[i]);
            fprintf(stderr, "\n");
        }
        if (ok) {
            check_decode(tok, ids, n, 0, dec, text, "decode", idx);
            check_decode(tok, ids, n, 1, dec_skip, dec ? dec : text, "decode skip_special", idx);
        }
        free(ids);
    }
    printf("%ld golden strings encoded in %.3f s\n", idx, enc_s);
    idx = 0;
    for (const JsonNode *c = json_first(&doc, json_get(&doc, root, "decode_cases")); c; c = json_next(&doc, c), idx++) {
        size_t n;
        int32_t *ids = ids_of(&doc, json_get(&doc, c, "ids"), &n);
        check_decode(tok, ids, n, 0, json_get(&doc, c, "decoded"), NULL, "decode_cases", idx);
        check_decode(tok, ids, n, 1, json_get(&doc, c, "decoded_skip"), NULL, "decode_cases skip", idx);
        free(ids);
    }
    json_free(&doc);

    /* prompt template and truncation, checked against plain encode of the template */
    {
        char *text;
        size_t tl, n1, n2;
        int32_t *a, *b;
        st = zi_tokenizer_format_prompt("A cat", 5, &text, &tl);
        check(st == ZI_OK && strcmp(text, "<|im_start|>user\nA cat<|im_end|>\n<|im_start|>assistant\n") == 0,
              "format_prompt", -1);
        zi_tokenizer_encode(tok, text, tl, &a, &n1);
        zi_tokenizer_encode_prompt(tok, "A cat", 5, 512, &b, &n2);
        check(n1 == n2 && memcmp(a, b, n1 * sizeof *a) == 0, "encode_prompt", -1);
        free(b);
        zi_tokenizer_encode_prompt(tok, "A cat", 5, 3, &b, &n2);
        check(n2 == 3 && memcmp(a, b, 3 * sizeof *a) == 0, "encode_prompt truncation", -1);
        free(a);
        free(b);
        free(text);
        check(zi_tokenizer_encode_prompt(tok, "x", 1, 0, &b, &n2) == ZI_ERR_ARG, "max_len 0", -1);
    }

    /* error paths */
    {
        int32_t *ids;
        size_t n;
        char *text;
        int32_t bad[] = {0, 151669};
        int32_t neg[] = {-1};
        check(zi_tokenizer_encode(tok, "a\xff", 2, &ids, &n) == ZI_ERR_ARG && !ids, "invalid UTF-8", -1);
        check(zi_tokenizer_encode(tok, "\xed\xa0\x80", 3, &ids, &n) == ZI_ERR_ARG, "UTF-8 surrogate", -1);
        check(zi_tokenizer_encode(tok, "\xc0\xaf", 2, &ids, &n) == ZI_ERR_ARG, "overlong UTF-8", -1);
        check(zi_tokenizer_encode(tok, "", 0, &ids, &n) == ZI_OK && n == 0, "empty", -1);
        free(ids);
        check(zi_tokenizer_decode(tok, bad, 2, 0, &text, &n) == ZI_ERR_ARG && !text, "bad id", -1);
        check(zi_tokenizer_decode(tok, neg, 1, 0, &text, &n) == ZI_ERR_ARG, "negative id", -1);
        check(zi_tokenizer_decode(tok, NULL, 0, 0, &text, &n) == ZI_OK && n == 0 && text[0] == 0, "decode empty", -1);
        free(text);
    }
    zi_tokenizer_free(tok);

    /* load failures: missing folder, missing file, corrupt and unsupported tokenizer.json */
    {
        ZiTokenizer *t2 = (ZiTokenizer *)1;
        char dir[] = "/tmp/zi_tok_testXXXXXX", path[256];
        check(zi_tokenizer_load(&t2, "/nonexistent/zi_tokenizer") == ZI_ERR_NOTFOUND && !t2, "missing folder", -1);
        if (mkdtemp(dir)) {
            check(zi_tokenizer_load(&t2, dir) == ZI_ERR_NOTFOUND, "missing tokenizer.json", -1);
            snprintf(path, sizeof path, "%s/tokenizer.json", dir);
            write_file(path, "{\"model\": {\"vocab\": {\"a\": 0}");
            check(zi_tokenizer_load(&t2, dir) == ZI_ERR_FORMAT, "truncated json", -1);
            write_file(path, "{\"normalizer\": {\"type\": \"NFKC\"}}");
            check(zi_tokenizer_load(&t2, dir) == ZI_ERR_FORMAT, "wrong normalizer", -1);
            write_file(path, "[]");
            check(zi_tokenizer_load(&t2, dir) == ZI_ERR_FORMAT, "not an object", -1);
            remove(path);
            rmdir(dir);
        }
    }
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
