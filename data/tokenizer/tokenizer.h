/* A teacher's own tokenizer, read from HuggingFace's tokenizer.json: byte-level BPE (GPT-2, Llama 3,
 * Qwen2, SmolLM) and SentencePiece-style BPE with byte fallback (Llama 2, Mistral). See docs/data.md. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct Tokenizer Tokenizer;

/* path: a tokenizer.json, or a folder holding one. Unsupported features are refused by name. */
Status tokenizer_load(const char *path, Tokenizer **out);
void tokenizer_free(Tokenizer *tok);
int64_t tokenizer_vocab_size(const Tokenizer *tok); /* ids are < this */

/* Encodes text[0..len) as HF tokenizers' encode(text, add_special_tokens=add_special) does.
 * The text must be valid UTF-8. *ids is malloc'ed, the caller frees it. One Tokenizer may encode
 * on several threads at once. */
Status tokenizer_encode(const Tokenizer *tok, const char *text, size_t len, int add_special, int32_t **ids,
                        int64_t *n);

/* Decodes ids to UTF-8 as HF's decode(ids, skip_special_tokens=skip_special); *text is malloc'ed,
 * NUL-terminated, *len excludes the NUL. Ids outside the vocabulary are skipped, as HF does. */
Status tokenizer_decode(const Tokenizer *tok, const int32_t *ids, int64_t n, int skip_special, char **text,
                        size_t *len);

/* The id of a token string (e.g. "<|im_end|>"), or -1. */
int32_t tokenizer_token_id(const Tokenizer *tok, const char *token);

#ifdef __cplusplus
}
#endif
