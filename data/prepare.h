/* Data preparation: text (byte tokenizer or a tokenizer.json), llm.c .bin shards and JSON lines of
 * token ids into token files, with an optional document-level train/val split. Behind `mlatrain data`. */
#pragma once

#include <stdint.h>

#include "core/status.h"
#include "data/tokenizer/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Where documents end in text input; the byte tokenizer writes eos after each. */
typedef enum {
    TEXT_DOCS_FILE,      /* each input file is one document, byte for byte */
    TEXT_DOCS_PARAGRAPH, /* blocks of lines separated by blank lines (the last newline dropped) */
    TEXT_DOCS_LINE,      /* each non-blank line, without its newline */
} TextDocs;

typedef struct {
    const char *out_path;   /* the training file */
    const char *val_path;   /* the validation file; needed when val_fraction > 0 */
    double val_fraction;    /* each document goes to val with this probability */
    uint64_t seed;          /* which documents: a Philox draw per document index */
} SplitOptions;

typedef struct {
    uint64_t documents, tokens;
} SplitCounts;

typedef struct {
    uint32_t vocab_size, eos_id;
    uint64_t inputs;        /* input files read */
    SplitCounts train, val;
} PrepareResult;

Status prepare_text(const char *const *inputs, int n_inputs, TextDocs docs, const SplitOptions *split,
                    PrepareResult *result);

/* Text through a teacher's tokenizer (data/tokenizer): each document is encoded whole as HF's
 * encode(text) does (with the post-processor's special tokens), then eos_id follows unless the
 * encoding ends with it. vocab_size is the tokenizer's. Input must be UTF-8. */
Status prepare_text_tokenized(const char *const *inputs, int n_inputs, TextDocs docs, const Tokenizer *tok,
                              uint32_t eos_id, const SplitOptions *split, PrepareResult *result);

/* llm.c shards: a header of 256 little-endian int32 (magic, version, token count), then the
 * tokens: magic 20240520 version 1 holds uint16 (GPT-2, default vocab 50257, eos 50256), magic
 * 20240801 version 7 holds uint32 (Llama 3, default vocab 128256, eos 128000, which llm.c writes
 * before each document). Tokens are copied as they are. vocab_size or eos_id < 0: the default. */
Status prepare_llmc_bin(const char *const *inputs, int n_inputs, int64_t vocab_size, int64_t eos_id,
                        const SplitOptions *split, PrepareResult *result);

/* One document per line: a JSON array of integers, or an object whose "tokens" or "input_ids"
 * is one; eos_id is appended unless the array already ends with it; blank lines are skipped. */
Status prepare_jsonl(const char *const *inputs, int n_inputs, uint32_t vocab_size, uint32_t eos_id,
                     const SplitOptions *split, PrepareResult *result);

#ifdef __cplusplus
}
#endif
