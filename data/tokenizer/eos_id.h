/* Which token ends a document for a tokenizer: the model folder's own setting where there is one,
 * else the tokenizer's end-of-text token. Used to write token files (eos_id). */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "data/tokenizer/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* path: what tokenizer_load was given. Looks at, in order: config.json's eos_token_id (the first
 * when a list), tokenizer_config.json's eos_token, generation_config.json's eos_token_id (all in
 * the folder of the tokenizer.json), then the tokens <|endoftext|>, <|end_of_text|> and </s>.
 * `source` (room for n bytes) says which one gave the id. */
Status tokenizer_eos_id(const char *path, const Tokenizer *tok, int32_t *eos, char *source, size_t n);

#ifdef __cplusplus
}
#endif
