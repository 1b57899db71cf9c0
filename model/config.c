/* Sense checks on a ModelConfig, whoever filled it (config.json, an inline "arch", conversion), and
 * the per-layer quantities derived from it. Every error names the config.json key at fault. */
#include "model/config.h"

#include <math.h>
#include <stdio.h>

/* Widths and head counts stay far below what a product of three of them needs to overflow int64,
 * and within the int the kernels index with. */
static const int64_t MODEL_DIM_MAX = (int64_t)1 << 20;
/* Token ids are int32. */
static const int64_t MODEL_VOCAB_MAX = (int64_t)1 << 31;
static const int64_t MODEL_POSITIONS_MAX = INT32_MAX;

static Status check_positive(const char *key, int64_t value, int64_t max) {
    if (value <= 0) return errorf("%s = %lld must be positive", key, (long long)value);
    if (value > max) return errorf("%s = %lld exceeds the limit of %lld", key, (long long)value, (long long)max);
    return STATUS_OK;
}

static Status check_token(const char *key, int64_t id, int64_t vocab) {
    if (id == -1) return STATUS_OK;
    if (id < 0 || id >= vocab)
        return errorf("%s = %lld is outside the vocabulary (vocab_size = %lld)", key, (long long)id,
                      (long long)vocab);
    return STATUS_OK;
}

static Status check_rope(const RopeConfig *r) {
    if (!(r->theta > 0) || !isfinite(r->theta)) return errorf("rope_theta = %g must be positive and finite", r->theta);
    switch (r->scaling) {
    case ROPE_SCALING_NONE: return STATUS_OK;
    case ROPE_SCALING_LLAMA3:
        if (!(r->factor >= 1) || !isfinite(r->factor))
            return errorf("rope_scaling.factor = %g must be >= 1", r->factor);
        if (!(r->low_freq_factor > 0) || !isfinite(r->low_freq_factor))
            return errorf("rope_scaling.low_freq_factor = %g must be positive", r->low_freq_factor);
        if (!(r->high_freq_factor > r->low_freq_factor) || !isfinite(r->high_freq_factor))
            return errorf("rope_scaling.high_freq_factor = %g must be greater than low_freq_factor = %g",
                          r->high_freq_factor, r->low_freq_factor);
        return check_positive("rope_scaling.original_max_position_embeddings", r->original_max_position_embeddings,
                              MODEL_POSITIONS_MAX);
    }
    return errorf("rope_scaling: unknown scaling kind %d", (int)r->scaling);
}

static Status check_mla(const MlaDims *a) {
    TRY(check_positive("kv_lora_rank", a->kv_lora_rank, MODEL_DIM_MAX));
    TRY(check_positive("qk_rope_head_dim", a->qk_rope_head_dim, MODEL_DIM_MAX));
    if (a->qk_rope_head_dim % 2 != 0)
        return errorf("qk_rope_head_dim = %lld must be even (RoPE rotates pairs)", (long long)a->qk_rope_head_dim);
    if (a->qk_nope_head_dim < 0 || a->qk_nope_head_dim > MODEL_DIM_MAX)
        return errorf("qk_nope_head_dim = %lld must be between 0 and %lld", (long long)a->qk_nope_head_dim,
                      (long long)MODEL_DIM_MAX);
    TRY(check_positive("v_head_dim", a->v_head_dim, MODEL_DIM_MAX));
    if (a->q_lora_rank < 0 || a->q_lora_rank > MODEL_DIM_MAX)
        return errorf("q_lora_rank = %lld must be 0 (full-rank q_proj) or a width up to %lld",
                      (long long)a->q_lora_rank, (long long)MODEL_DIM_MAX);
    if (a->rope_theta < 0 || !isfinite(a->rope_theta))
        return errorf("MLA rope_theta = %g must be positive (or 0: the model's rope_theta)", a->rope_theta);
    return STATUS_OK;
}

Status model_config_validate(const ModelConfig *cfg) {
    TRY(check_positive("num_hidden_layers", cfg->num_hidden_layers, MODEL_MAX_LAYERS));
    TRY(check_positive("vocab_size", cfg->vocab_size, MODEL_VOCAB_MAX));
    TRY(check_positive("hidden_size", cfg->hidden_size, MODEL_DIM_MAX));
    TRY(check_positive("intermediate_size", cfg->intermediate_size, MODEL_DIM_MAX));
    TRY(check_positive("num_attention_heads", cfg->num_attention_heads, MODEL_DIM_MAX));
    TRY(check_positive("num_key_value_heads", cfg->num_key_value_heads, MODEL_DIM_MAX));
    if (cfg->num_attention_heads % cfg->num_key_value_heads != 0)
        return errorf("num_key_value_heads = %lld does not divide num_attention_heads = %lld",
                      (long long)cfg->num_key_value_heads, (long long)cfg->num_attention_heads);
    TRY(check_positive("head_dim", cfg->head_dim, MODEL_DIM_MAX));
    /* head_dim shapes GQA layers only; an all-MLA model never rotates it. */
    if (cfg->head_dim % 2 != 0 && model_config_mla_layers(cfg) < cfg->num_hidden_layers)
        return errorf("head_dim = %lld must be even (RoPE rotates pairs)", (long long)cfg->head_dim);
    TRY(check_positive("max_position_embeddings", cfg->max_position_embeddings, MODEL_POSITIONS_MAX));
    if (!(cfg->rms_norm_eps > 0) || !isfinite(cfg->rms_norm_eps))
        return errorf("rms_norm_eps = %g must be positive and finite", cfg->rms_norm_eps);
    TRY(check_rope(&cfg->rope));
    TRY(check_token("bos_token_id", cfg->bos_token_id, cfg->vocab_size));
    TRY(check_token("eos_token_id", cfg->eos_token_id, cfg->vocab_size));
    if (cfg->n_eos_token_ids < 0 || cfg->n_eos_token_ids > MODEL_EOS_IDS_MAX)
        return errorf("eos_token_id: %d ids, expected at most %d", cfg->n_eos_token_ids, MODEL_EOS_IDS_MAX);
    if (cfg->n_eos_token_ids > 0 && cfg->eos_token_ids[0] != cfg->eos_token_id)
        return errorf("eos_token_id = %lld is not the first of the eos list (%lld)", (long long)cfg->eos_token_id,
                      (long long)cfg->eos_token_ids[0]);
    for (int i = 0; i < cfg->n_eos_token_ids; i++) {
        char name[32];
        snprintf(name, sizeof name, "eos_token_id[%d]", i);
        TRY(check_token(name, cfg->eos_token_ids[i], cfg->vocab_size));
    }
    if (cfg->sliding_window < 0 || cfg->sliding_window > MODEL_POSITIONS_MAX)
        return errorf("sliding_window = %lld must be positive (or absent)", (long long)cfg->sliding_window);

    for (int l = 0; l < cfg->num_hidden_layers; l++)
        if (cfg->layer_attention[l] != ATTENTION_GQA && cfg->layer_attention[l] != ATTENTION_MLA)
            return errorf("layer %d: unknown attention kind %d", l, (int)cfg->layer_attention[l]);
    if (model_config_mla_layers(cfg) > 0) TRY(check_mla(&cfg->mla));
    return STATUS_OK;
}

int model_config_mla_layers(const ModelConfig *cfg) {
    int64_t layers = cfg->num_hidden_layers < MODEL_MAX_LAYERS ? cfg->num_hidden_layers : MODEL_MAX_LAYERS;
    int n = 0;
    for (int64_t l = 0; l < layers; l++) n += cfg->layer_attention[l] == ATTENTION_MLA;
    return n;
}

int64_t model_config_kv_values_per_token(const ModelConfig *cfg, int layer) {
    if (layer < 0 || layer >= cfg->num_hidden_layers || layer >= MODEL_MAX_LAYERS) return 0;
    if (cfg->layer_attention[layer] == ATTENTION_MLA) return cfg->mla.kv_lora_rank + cfg->mla.qk_rope_head_dim;
    return 2 * cfg->num_key_value_heads * cfg->head_dim;
}

double model_config_mla_rope_theta(const ModelConfig *cfg) {
    return cfg->mla.rope_theta > 0 ? cfg->mla.rope_theta : cfg->rope.theta;
}

Status model_config_check_seq_len(const ModelConfig *cfg, int64_t seq_len) {
    if (seq_len <= 0) return errorf("sequence length %lld must be positive", (long long)seq_len);
    if (cfg->sliding_window > 0 && seq_len > cfg->sliding_window)
        return errorf("sequences of %lld tokens exceed sliding_window = %lld: the model attends to the last "
                      "%lld tokens only, and mlatrain's attention is full causal, which matches it only up to "
                      "the window",
                      (long long)seq_len, (long long)cfg->sliding_window, (long long)cfg->sliding_window);
    return STATUS_OK;
}
