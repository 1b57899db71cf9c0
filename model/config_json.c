/* ModelConfig <-> JSON. Every field is written and every field is required on reading, so a
 * format change is an error, not a silent default; the exceptions are fields absent from files
 * written before they existed, read as what those files meant: eos_token_ids (a single eos id),
 * mla_attention_bias (none) and q_norm (q_a_layernorm, which every q bottleneck had). */
#include "model/config_json.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

cJSON *model_config_to_json(const ModelConfig *c) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "architecture", c->architecture);
    cJSON_AddStringToObject(o, "model_type", c->model_type);
    cJSON_AddNumberToObject(o, "vocab_size", (double)c->vocab_size);
    cJSON_AddNumberToObject(o, "hidden_size", (double)c->hidden_size);
    cJSON_AddNumberToObject(o, "intermediate_size", (double)c->intermediate_size);
    cJSON_AddNumberToObject(o, "num_hidden_layers", (double)c->num_hidden_layers);
    cJSON_AddNumberToObject(o, "num_attention_heads", (double)c->num_attention_heads);
    cJSON_AddNumberToObject(o, "num_key_value_heads", (double)c->num_key_value_heads);
    cJSON_AddNumberToObject(o, "head_dim", (double)c->head_dim);
    cJSON_AddNumberToObject(o, "max_position_embeddings", (double)c->max_position_embeddings);
    cJSON_AddNumberToObject(o, "rms_norm_eps", c->rms_norm_eps);
    cJSON_AddNumberToObject(o, "rope_theta", c->rope.theta);
    cJSON_AddNumberToObject(o, "rope_scaling", (double)c->rope.scaling);
    cJSON_AddNumberToObject(o, "rope_factor", c->rope.factor);
    cJSON_AddNumberToObject(o, "rope_low_freq_factor", c->rope.low_freq_factor);
    cJSON_AddNumberToObject(o, "rope_high_freq_factor", c->rope.high_freq_factor);
    cJSON_AddNumberToObject(o, "rope_original_max_position_embeddings", (double)c->rope.original_max_position_embeddings);
    cJSON_AddNumberToObject(o, "tie_word_embeddings", c->tie_word_embeddings);
    cJSON_AddNumberToObject(o, "qkv_bias", c->qkv_bias);
    cJSON_AddNumberToObject(o, "bos_token_id", (double)c->bos_token_id);
    cJSON_AddNumberToObject(o, "eos_token_id", (double)c->eos_token_id);
    if (c->n_eos_token_ids > 0) {
        cJSON *ids = cJSON_AddArrayToObject(o, "eos_token_ids");
        for (int i = 0; ids && i < c->n_eos_token_ids; i++)
            cJSON_AddItemToArray(ids, cJSON_CreateNumber((double)c->eos_token_ids[i]));
    }
    cJSON_AddNumberToObject(o, "sliding_window", (double)c->sliding_window);
    cJSON_AddNumberToObject(o, "kv_lora_rank", (double)c->mla.kv_lora_rank);
    cJSON_AddNumberToObject(o, "q_lora_rank", (double)c->mla.q_lora_rank);
    cJSON_AddNumberToObject(o, "qk_nope_head_dim", (double)c->mla.qk_nope_head_dim);
    cJSON_AddNumberToObject(o, "qk_rope_head_dim", (double)c->mla.qk_rope_head_dim);
    cJSON_AddNumberToObject(o, "v_head_dim", (double)c->mla.v_head_dim);
    cJSON_AddNumberToObject(o, "latent_norm", c->mla.latent_norm);
    cJSON_AddNumberToObject(o, "q_norm", c->mla.q_norm);
    if (c->mla.attention_bias) cJSON_AddNumberToObject(o, "mla_attention_bias", 1);
    cJSON_AddNumberToObject(o, "mla_rope_theta", c->mla.rope_theta);
    cJSON *kinds = cJSON_AddArrayToObject(o, "layer_attention");
    for (int l = 0; l < c->num_hidden_layers && l < MODEL_MAX_LAYERS; l++)
        cJSON_AddItemToArray(kinds, cJSON_CreateNumber(c->layer_attention[l]));
    return o;
}

static Status get_number(const cJSON *o, const char *where, const char *key, double *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v)) return errorf("%s: model config: %s is missing or not a number", where, key);
    *out = v->valuedouble;
    return STATUS_OK;
}

static Status get_int(const cJSON *o, const char *where, const char *key, int64_t *out) {
    double d = 0;
    TRY(get_number(o, where, key, &d));
    if (d != floor(d) || fabs(d) > 9007199254740992.0)
        return errorf("%s: model config: %s = %g is not an integer", where, key, d);
    *out = (int64_t)d;
    return STATUS_OK;
}

static Status get_string(const cJSON *o, const char *where, const char *key, char *out, size_t n) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v) || strlen(v->valuestring) >= n)
        return errorf("%s: model config: %s is missing or not a string of < %zu bytes", where, key, n);
    strcpy(out, v->valuestring);
    return STATUS_OK;
}

Status model_config_from_json(const cJSON *o, const char *where, ModelConfig *c) {
    memset(c, 0, sizeof *c);
    if (!cJSON_IsObject(o)) return errorf("%s: model config: expected an object", where);
    int64_t i;
    TRY(get_string(o, where, "architecture", c->architecture, sizeof c->architecture));
    TRY(get_string(o, where, "model_type", c->model_type, sizeof c->model_type));
    TRY(get_int(o, where, "vocab_size", &c->vocab_size));
    TRY(get_int(o, where, "hidden_size", &c->hidden_size));
    TRY(get_int(o, where, "intermediate_size", &c->intermediate_size));
    TRY(get_int(o, where, "num_hidden_layers", &c->num_hidden_layers));
    TRY(get_int(o, where, "num_attention_heads", &c->num_attention_heads));
    TRY(get_int(o, where, "num_key_value_heads", &c->num_key_value_heads));
    TRY(get_int(o, where, "head_dim", &c->head_dim));
    TRY(get_int(o, where, "max_position_embeddings", &c->max_position_embeddings));
    TRY(get_number(o, where, "rms_norm_eps", &c->rms_norm_eps));
    TRY(get_number(o, where, "rope_theta", &c->rope.theta));
    TRY(get_int(o, where, "rope_scaling", &i));
    c->rope.scaling = (RopeScaling)i;
    TRY(get_number(o, where, "rope_factor", &c->rope.factor));
    TRY(get_number(o, where, "rope_low_freq_factor", &c->rope.low_freq_factor));
    TRY(get_number(o, where, "rope_high_freq_factor", &c->rope.high_freq_factor));
    TRY(get_int(o, where, "rope_original_max_position_embeddings", &c->rope.original_max_position_embeddings));
    TRY(get_int(o, where, "tie_word_embeddings", &i));
    c->tie_word_embeddings = (int)i;
    TRY(get_int(o, where, "qkv_bias", &i));
    c->qkv_bias = (int)i;
    TRY(get_int(o, where, "bos_token_id", &c->bos_token_id));
    TRY(get_int(o, where, "eos_token_id", &c->eos_token_id));
    const cJSON *eos = cJSON_GetObjectItemCaseSensitive(o, "eos_token_ids");
    if (eos) {
        if (!cJSON_IsArray(eos) || cJSON_GetArraySize(eos) > MODEL_EOS_IDS_MAX)
            return errorf("%s: model config: eos_token_ids must be a list of at most %d ids", where, MODEL_EOS_IDS_MAX);
        for (const cJSON *e = eos->child; e; e = e->next) {
            if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble))
                return errorf("%s: model config: eos_token_ids[%d] is not an integer", where, c->n_eos_token_ids);
            c->eos_token_ids[c->n_eos_token_ids++] = (int64_t)e->valuedouble;
        }
    }
    TRY(get_int(o, where, "sliding_window", &c->sliding_window));
    TRY(get_int(o, where, "kv_lora_rank", &c->mla.kv_lora_rank));
    TRY(get_int(o, where, "q_lora_rank", &c->mla.q_lora_rank));
    TRY(get_int(o, where, "qk_nope_head_dim", &c->mla.qk_nope_head_dim));
    TRY(get_int(o, where, "qk_rope_head_dim", &c->mla.qk_rope_head_dim));
    TRY(get_int(o, where, "v_head_dim", &c->mla.v_head_dim));
    TRY(get_int(o, where, "latent_norm", &i));
    c->mla.latent_norm = (int)i;
    /* A checkpoint from before the linear q bottleneck existed had q_a_layernorm. */
    const cJSON *q_norm = cJSON_GetObjectItemCaseSensitive(o, "q_norm");
    if (q_norm && !cJSON_IsNumber(q_norm)) return errorf("%s: model config: q_norm must be a number", where);
    c->mla.q_norm = q_norm ? q_norm->valuedouble != 0 : 1;
    /* Written only when set: a model config from before MLA biases existed has none. */
    const cJSON *mla_bias = cJSON_GetObjectItemCaseSensitive(o, "mla_attention_bias");
    if (mla_bias && !cJSON_IsNumber(mla_bias))
        return errorf("%s: model config: mla_attention_bias must be a number", where);
    c->mla.attention_bias = mla_bias && mla_bias->valuedouble != 0;
    TRY(get_number(o, where, "mla_rope_theta", &c->mla.rope_theta));
    const cJSON *kinds = cJSON_GetObjectItemCaseSensitive(o, "layer_attention");
    if (!cJSON_IsArray(kinds) || cJSON_GetArraySize(kinds) != c->num_hidden_layers ||
        c->num_hidden_layers > MODEL_MAX_LAYERS)
        return errorf("%s: model config: layer_attention must list the %lld layers", where, (long long)c->num_hidden_layers);
    int l = 0;
    for (const cJSON *k = kinds->child; k; k = k->next, l++) {
        if (!cJSON_IsNumber(k) || (k->valueint != ATTENTION_GQA && k->valueint != ATTENTION_MLA))
            return errorf("%s: model config: layer_attention[%d] is not 0 (GQA) or 1 (MLA)", where, l);
        c->layer_attention[l] = (AttentionKind)k->valueint;
    }
    if (model_config_validate(c) != STATUS_OK) return error_context("%s: model config: ", where);
    return STATUS_OK;
}
