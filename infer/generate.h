/* Generating tokens from a prompt: prefill, then sample and feed one token at a time until
 * max_new_tokens or an end-of-sequence id; with the timings and the cache's measured size. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "infer/decode.h"
#include "infer/sampling.h"
#include "model/model.h"

enum { GENERATE_MAX_EOS = 16 };

typedef struct {
    int64_t max_new_tokens;      /* >= 1 */
    SamplingOptions sampling;
    int32_t eos[GENERATE_MAX_EOS];
    int n_eos;                   /* generation stops after emitting one of these (0: never) */
    DecodeMlaMode mla_mode;
} GenerateOptions;

typedef struct {
    int32_t *ids;                /* the new tokens, [n_new] (malloc'd; generate_result_free) */
    int64_t n_new;
    int stopped_at_eos;
    int64_t prompt_tokens;
    double prefill_seconds;      /* the prompt's forward pass and its logits */
    int64_t decode_tokens;       /* tokens fed one at a time */
    double decode_seconds;
    size_t kv_bytes_allocated;   /* the cache tensors as allocated on the backend */
    size_t kv_bytes_filled;      /* the part holding the tokens fed */
    size_t kv_bytes_per_token;
    int64_t kv_tokens;           /* tokens in the cache at the end */
} GenerateResult;

/* Generates from prompt [n_prompt] with `m` (whose rope tables must cover n_prompt +
 * max_new_tokens - 1 positions). The cache is allocated for exactly the tokens that may be fed. */
Status generate(Model *m, const int32_t *prompt, int64_t n_prompt, const GenerateOptions *o, GenerateResult *r);
void generate_result_free(GenerateResult *r);
