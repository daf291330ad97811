/*
 * tokenizer.h - the Qwen2/Qwen3 byte-level BPE tokenizer (HF `tokenizers` semantics) read from
 * a `tokenizer/` folder: tokenizer.json (vocab, merges, added tokens, checked normalizer and
 * pre-tokenizer) and, if present, tokenizer_config.json (eos/pad/bos names). encode() gives
 * exactly the ids of HF tokenizers for any UTF-8 string; decode() inverts like HF's ByteLevel
 * decoder. A loaded tokenizer is immutable: any number of threads may use it at once.
 */
#ifndef ZI_TOKENIZER_H
#define ZI_TOKENIZER_H

#include "zi_common.h"

typedef struct ZiTokenizer ZiTokenizer;

/* Load from folder `dir` (holding tokenizer.json). Missing folder/file: ZI_ERR_NOTFOUND;
   malformed or unsupported content: ZI_ERR_FORMAT. */
zi_status zi_tokenizer_load(ZiTokenizer **out, const char *dir);
void zi_tokenizer_free(ZiTokenizer *tok);

/* Number of ids: max id + 1 over vocab and added tokens (151669 for Qwen3). */
int32_t zi_tokenizer_vocab_size(const ZiTokenizer *tok);
/* Ids of tokenizer_config.json's eos_token / pad_token / bos_token, -1 when not set. */
int32_t zi_tokenizer_eos_id(const ZiTokenizer *tok);
int32_t zi_tokenizer_pad_id(const ZiTokenizer *tok);
int32_t zi_tokenizer_bos_id(const ZiTokenizer *tok);

/* utf8[0..len) -> ids[0..*n) (malloc'ed, caller frees; may be non-NULL with *n == 0).
   Invalid UTF-8 is ZI_ERR_ARG. No BOS/EOS are added. */
zi_status zi_tokenizer_encode(const ZiTokenizer *tok, const char *utf8, size_t len, int32_t **ids, size_t *n);

/* ids[0..n) -> UTF-8 text[0..*len) (malloc'ed, NUL-terminated, caller frees). Byte sequences
   that are not valid UTF-8 become U+FFFD (Python errors="replace"). skip_special drops added
   tokens marked special. An id without a token (out of range) is ZI_ERR_ARG. */
zi_status zi_tokenizer_decode(const ZiTokenizer *tok, const int32_t *ids, size_t n, int skip_special, char **text,
                              size_t *len);

/* The pipeline's chat template (single user turn, generation prompt, no think block):
   "<|im_start|>user\n" + prompt + "<|im_end|>\n<|im_start|>assistant\n" (malloc'ed, NUL-terminated). */
zi_status zi_tokenizer_format_prompt(const char *prompt, size_t len, char **text, size_t *text_len);

/* format_prompt + encode + keep the first max_len ids (max_len >= 1), as the text encoder gets them. */
zi_status zi_tokenizer_encode_prompt(const ZiTokenizer *tok, const char *prompt, size_t len, size_t max_len,
                                     int32_t **ids, size_t *n);

#endif /* ZI_TOKENIZER_H */
