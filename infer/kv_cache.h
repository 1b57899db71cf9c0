/* The key/value cache of autoregressive decoding, per layer: a GQA layer's rotated keys and values
 * (2 K hd values per token), an MLA layer's normed latent and shared rope key (r + dr per token). */
#pragma once

#include <stdint.h>

#include "core/backend.h"
#include "model/config.h"

typedef struct {
    AttentionKind kind;
    /* GQA: keys [cap, K, hd] (after RoPE), values [cap, K, hd]. */
    Tensor k, v;
    /* MLA: latent [cap, r] (after kv_a_layernorm when the model has it), rope_key [cap, dr] (after
     * RoPE), the only state absorbed decoding reads. */
    Tensor latent, rope_key;
} LayerKv;

typedef struct {
    Backend *be;
    int n_layers;
    int64_t capacity;        /* tokens the cache has room for */
    int64_t length;          /* tokens written so far (positions 0 .. length-1) */
    LayerKv *layers;         /* [n_layers] */
    size_t bytes_allocated;  /* sum of the cache tensors' sizes, as allocated on the backend */
    size_t bytes_per_token;  /* what one token adds over all layers */
} KvCache;

/* Allocates room for `capacity` tokens of every layer of a model with this config, in dtype. */
Status kv_cache_create(KvCache **out, Backend *be, const ModelConfig *cfg, int64_t capacity, DType dtype);
void kv_cache_destroy(KvCache *kv);

/* Bytes holding the tokens written so far: length * bytes_per_token, counted from the tensors. */
size_t kv_cache_bytes_filled(const KvCache *kv);

/* Row `pos` (a [1, width] view) of a cache tensor [cap, ...], for an op to write in place. */
Tensor kv_cache_row(Tensor t, int64_t pos);
/* The first n rows of a cache tensor, as [n, heads, width] (heads 1 for the latent and rope key). */
Tensor kv_cache_rows(Tensor t, int64_t n, int64_t heads);
