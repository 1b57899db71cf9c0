/* The decoding KV cache: one pair of backend tensors per layer, shaped by the layer's attention
 * kind, allocated once for the whole generation so that decoding never reallocates. */
#include "infer/kv_cache.h"

#include <stdlib.h>

static int64_t row_width(Tensor t) {
    int64_t w = 1;
    for (int d = 1; d < t.ndim; d++) w *= t.shape[d];
    return w;
}

Tensor kv_cache_row(Tensor t, int64_t pos) {
    int64_t w = row_width(t);
    return tensor_view((char *)t.data + (size_t)(pos * w) * dtype_size(t.dtype), t.dtype, 2, (int64_t[]){1, w});
}

Tensor kv_cache_rows(Tensor t, int64_t n, int64_t heads) {
    int64_t w = row_width(t);
    return tensor_view(t.data, t.dtype, 3, (int64_t[]){n, heads, w / heads});
}

static Status cache_alloc(KvCache *kv, Tensor *t, DType dtype, int64_t d1, int64_t d2) {
    int64_t shape[3] = {kv->capacity, d1, d2};
    TRY(kv->be->alloc(kv->be, t, dtype, 3, shape));
    kv->bytes_allocated += tensor_bytes(*t);
    kv->bytes_per_token += tensor_bytes(*t) / (size_t)kv->capacity;
    return STATUS_OK;
}

static Status layer_alloc(KvCache *kv, LayerKv *lk, const ModelConfig *cfg, int l, DType dtype) {
    lk->kind = cfg->layer_attention[l];
    if (lk->kind == ATTENTION_GQA) {
        TRY(cache_alloc(kv, &lk->k, dtype, cfg->num_key_value_heads, cfg->head_dim));
        TRY(cache_alloc(kv, &lk->v, dtype, cfg->num_key_value_heads, cfg->head_dim));
    } else {
        TRY(cache_alloc(kv, &lk->latent, dtype, 1, cfg->mla.kv_lora_rank));
        TRY(cache_alloc(kv, &lk->rope_key, dtype, 1, cfg->mla.qk_rope_head_dim));
    }
    return STATUS_OK;
}

Status kv_cache_create(KvCache **out, Backend *be, const ModelConfig *cfg, int64_t capacity, DType dtype) {
    *out = NULL;
    if (capacity < 1) return errorf("kv cache: capacity must be >= 1 token, got %lld", (long long)capacity);
    if (dtype != DT_F32 && dtype != DT_BF16)
        return errorf("kv cache: dtype %s, expected f32 or bf16", dtype_name(dtype));
    KvCache *kv = calloc(1, sizeof *kv);
    if (kv) kv->layers = calloc((size_t)cfg->num_hidden_layers, sizeof *kv->layers);
    if (!kv || !kv->layers) {
        free(kv);
        return errorf("kv cache: out of memory");
    }
    kv->be = be;
    kv->n_layers = (int)cfg->num_hidden_layers;
    kv->capacity = capacity;
    for (int l = 0; l < kv->n_layers; l++) {
        if (layer_alloc(kv, &kv->layers[l], cfg, l, dtype) != STATUS_OK) {
            kv_cache_destroy(kv);
            return error_context("kv cache: layer %d (%lld tokens): ", l, (long long)capacity);
        }
    }
    *out = kv;
    return STATUS_OK;
}

void kv_cache_destroy(KvCache *kv) {
    if (!kv) return;
    for (int l = 0; l < kv->n_layers; l++) {
        LayerKv *lk = &kv->layers[l];
        Tensor *ts[] = {&lk->k, &lk->v, &lk->latent, &lk->rope_key};
        for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
            if (tensor_present(*ts[i])) kv->be->release(kv->be, ts[i]);
    }
    free(kv->layers);
    free(kv);
}

size_t kv_cache_bytes_filled(const KvCache *kv) { return (size_t)kv->length * kv->bytes_per_token; }
