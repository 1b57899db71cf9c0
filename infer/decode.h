/* Autoregressive decoding with a KV cache: the prompt in one forward pass (prefill), then one token
 * at a time. MLA layers decode with absorbed weights, as DeepSeek's inference does: each head's
 * W_uk maps its no-rope query into the latent space, W_uv is folded into o_proj, and the cache holds
 * only the latent and the shared rope key; GQA layers (teachers, a hybrid's kept layers) cache K/V. */
#pragma once

#include <stdint.h>

#include "infer/kv_cache.h"
#include "model/model.h"

typedef enum {
    DECODE_MLA_ABSORBED = 0,   /* attention in the latent space (what serving uses) */
    DECODE_MLA_EXPANDED = 1,   /* k_nope and v re-expanded from the cached latent at every step:
                                  the model's own formula, the reference absorption is checked against */
} DecodeMlaMode;

typedef struct Decoder Decoder;

/* A decoder over `m` (not owned) with cache room for `capacity` tokens. Absorbed weights are built
 * here, once, from the model's current weights. */
Status decoder_create(Decoder **out, Model *m, int64_t capacity, DecodeMlaMode mode);
void decoder_destroy(Decoder *d);

/* Runs the n prompt tokens through the model at once (positions 0..n-1) and fills the cache; the
 * cache must be empty. logits [V] receives the last position's logits; all_logits [n, V], when not
 * NULL, every position's. */
Status decoder_prefill(Decoder *d, const int32_t *ids, int64_t n, float *logits, float *all_logits);

/* Feeds one token at the next position; logits [V] receives its logits. */
Status decoder_step(Decoder *d, int32_t id, float *logits);

/* The cache (its length is the number of tokens fed so far). */
const KvCache *decoder_cache(const Decoder *d);
