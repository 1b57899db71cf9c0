/* config.json in HuggingFace's terms, read: Llama, Qwen2 and Mistral teachers and mlatrain's
 * DeepSeek-V2 students into a ModelConfig (hf_config_write.c writes students back out). */
#include "model/hf/hf_config.h"

#include "core/file_io.h"
#include "model/hf/hf_families.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/*
 * What is read, and what HF's classes would do differently:
 * - vocab_size, hidden_size, intermediate_size, num_hidden_layers and num_attention_heads are
 *   required (HF would fill a missing one with a Llama-2-7B-sized default, never what was meant).
 * - num_key_value_heads: absent or null -> num_attention_heads for llama and deepseek_v2, as HF does;
 *   absent is an error for qwen2 and mistral, whose HF defaults (32 and 8) are not the head count.
 * - head_dim: absent or null -> hidden_size / num_attention_heads (an error if that is not exact).
 * - tie_word_embeddings false, rope_theta 10000, rms_norm_eps 1e-6 when absent: the defaults of
 *   LlamaConfig, Qwen2Config, MistralConfig and DeepseekV2Config alike (the true of PretrainedConfig
 *   is overridden by all four). max_position_embeddings: 2048 (llama, deepseek_v2), 32768 (qwen2),
 *   131072 (mistral).
 * - bos/eos_token_id: an integer, a list or null; absent -> -1, not the 1/2 that LlamaConfig and
 *   MistralConfig inherit from Llama 2's tokenizer. Of a bos list the first is kept; an eos list
 *   (Llama 3 Instruct's [128001, 128008, 128009]) is kept whole and written back as read, since
 *   generation stops on any of its ids.
 * - rope_scaling (or transformers 5's rope_parameters), by "rope_type" or the older "type":
 *   "default" and "llama3" only.
 * - Mistral's sliding_window (absent -> 4096 as in MistralConfig, null -> none) is recorded; our
 *   attention is full causal, equal to the windowed one for sequences up to the window, and
 *   model_config_check_seq_len refuses longer ones.
 * Keys that change the computation in ways mlatrain does not implement, refused when set:
 *   hidden_act other than "silu"; attention_bias (llama: biases on q/k/v and o_proj; deepseek_v2:
 *   on q_a_proj, kv_a_proj_with_mqa, o_proj); mlp_bias; rope types other than default and llama3
 *   (linear, dynamic, yarn, longrope, ...); partial_rotary_factor != 1; quantization_config;
 *   Qwen2's use_sliding_window and sliding layer_types; deepseek_v2 mixture-of-experts layers
 *   (n_routed_experts set and first_k_dense_replace < num_hidden_layers), mscale_all_dim in its
 *   rope_scaling, and num_key_value_heads != num_attention_heads.
 * Any other key is ignored (HF_KEYS_IGNORE_UNKNOWN) or refused (HF_KEYS_REJECT_UNKNOWN).
 */

/* Every key read or checked here, and the ones mlatrain writes; HF_KEYS_REJECT_UNKNOWN refuses others. */
static const char *const KNOWN_KEYS[] = {
    "architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
    "rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor", "tie_word_embeddings",
    "bos_token_id", "eos_token_id", "hidden_act", "attention_bias", "attention_dropout", "mlp_bias",
    "quantization_config", "sliding_window", "use_sliding_window", "max_window_layers", "layer_types",
    "torch_dtype", "initializer_range", "use_cache",
    "kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
    "moe_intermediate_size", "n_routed_experts", "n_shared_experts", "num_experts_per_tok",
    "first_k_dense_replace", "moe_layer_freq", "topk_method", "n_group", "topk_group",
    "routed_scaling_factor", "norm_topk_prob", "scoring_func", "aux_loss_alpha", "seq_aux",
    "mlatrain_gqa_layers", "mlatrain_gqa_num_key_value_heads", "mlatrain_gqa_head_dim",
    "mlatrain_gqa_qkv_bias", "mlatrain_gqa_rope_theta", "mlatrain_sliding_window", "mlatrain_rms_norm_eps",
};

static const double ROPE_THETA_DEFAULT = 10000.0;
static const double RMS_NORM_EPS_DEFAULT = 1e-6;
static const int64_t MISTRAL_SLIDING_WINDOW_DEFAULT = 4096;
/* Integers beyond 2^53 cannot be told apart in a JSON double. */
static const double JSON_INT_MAX = 9007199254740992.0;
/* A config.json is a few kilobytes; anything this large is not one. */
static const long CONFIG_FILE_MAX = 16L << 20;

/* ---- reading values ---- */

enum { KEY_NAME_MAX = 128 };

/* "rope_scaling.factor" from a scope ("" at the top level) and a key. */
static const char *qualify(char buf[KEY_NAME_MAX], const char *scope, const char *key) {
    snprintf(buf, KEY_NAME_MAX, "%s%s%s", scope, *scope ? "." : "", key);
    return buf;
}

void hf_format_double(char *buf, size_t n, double x) {
    if (x == floor(x) && fabs(x) < 1e16) {
        snprintf(buf, n, "%.1f", x);
        return;
    }
    for (int digits = 1; digits <= 17; digits++) {
        snprintf(buf, n, "%.*g", digits, x);
        if (strtod(buf, NULL) == x) return;
    }
}

static const char *json_kind(const cJSON *v) {
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v) ? "true" : "false";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "a list";
    if (cJSON_IsObject(v)) return "an object";
    return "a number";
}

/* The value of key, or NULL when absent or null: HF treats an explicit null as "use the default". */
static const cJSON *value_of(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

static Status to_int(const cJSON *v, const char *name, int64_t *out) {
    if (!cJSON_IsNumber(v)) return errorf("%s must be an integer, got %s", name, json_kind(v));
    double x = v->valuedouble;
    char text[40];
    hf_format_double(text, sizeof text, x);
    if (!isfinite(x) || x != floor(x)) return errorf("%s = %s is not an integer", name, text);
    if (fabs(x) > JSON_INT_MAX) return errorf("%s = %s is out of range", name, text);
    *out = (int64_t)x;
    return STATUS_OK;
}

/* An integer key; absent or null gives dflt, or an error when required. */
static Status get_int(const cJSON *obj, const char *scope, const char *key, int required, int64_t dflt,
                      int64_t *out) {
    char name[KEY_NAME_MAX];
    const cJSON *v = value_of(obj, key);
    *out = dflt;
    if (!v) return required ? errorf("%s is missing", qualify(name, scope, key)) : STATUS_OK;
    return to_int(v, qualify(name, scope, key), out);
}

static Status get_double(const cJSON *obj, const char *scope, const char *key, int required, double dflt,
                         double *out) {
    char name[KEY_NAME_MAX];
    const cJSON *v = value_of(obj, key);
    *out = dflt;
    qualify(name, scope, key);
    if (!v) return required ? errorf("%s is missing", name) : STATUS_OK;
    if (!cJSON_IsNumber(v)) return errorf("%s must be a number, got %s", name, json_kind(v));
    if (!isfinite(v->valuedouble)) return errorf("%s must be finite", name);
    *out = v->valuedouble;
    return STATUS_OK;
}

static Status get_bool(const cJSON *obj, const char *key, int dflt, int *out) {
    const cJSON *v = value_of(obj, key);
    *out = dflt;
    if (!v) return STATUS_OK;
    if (!cJSON_IsBool(v)) return errorf("%s must be true or false, got %s", key, json_kind(v));
    *out = cJSON_IsTrue(v);
    return STATUS_OK;
}

/* A string key; *out is NULL when absent or null. */
static Status get_string(const cJSON *obj, const char *scope, const char *key, const char **out) {
    char name[KEY_NAME_MAX];
    const cJSON *v = value_of(obj, key);
    *out = NULL;
    if (!v) return STATUS_OK;
    if (!cJSON_IsString(v)) return errorf("%s must be a string, got %s", qualify(name, scope, key), json_kind(v));
    *out = v->valuestring;
    return STATUS_OK;
}

/* A token id written as an integer, a list of integers (the first is kept) or null (-1). */
/* An id, or a list whose first entry is *out; list (may be NULL) receives up to MODEL_EOS_IDS_MAX
 * entries, *n_list their count (0 when the value is not a list). */
static Status get_token_ids(const cJSON *obj, const char *key, int64_t *out, int64_t *list, int *n_list) {
    *out = -1;
    if (n_list) *n_list = 0;
    const cJSON *v = value_of(obj, key);
    if (!v) return STATUS_OK;
    if (!cJSON_IsArray(v)) return to_int(v, key, out);
    int i = 0;
    for (const cJSON *e = v->child; e; e = e->next, i++) {
        char name[KEY_NAME_MAX];
        int64_t id;
        snprintf(name, sizeof name, "%s[%d]", key, i);
        TRY(to_int(e, name, &id));
        if (i == 0) *out = id;
        if (!list) continue;
        if (i >= MODEL_EOS_IDS_MAX)
            return errorf("%s lists %d ids, more than the %d mlatrain keeps", key, cJSON_GetArraySize(v),
                          MODEL_EOS_IDS_MAX);
        list[i] = id;
        *n_list = i + 1;
    }
    return STATUS_OK;
}

/* cJSON reads the first of two equal keys and Python's json the last: a duplicate is ambiguous. */
static Status check_duplicates(const cJSON *obj, const char *scope) {
    for (const cJSON *a = obj->child; a; a = a->next)
        for (const cJSON *b = a->next; b; b = b->next)
            if (a->string && b->string && strcmp(a->string, b->string) == 0) {
                char name[KEY_NAME_MAX];
                return errorf("%s appears twice", qualify(name, scope, a->string));
            }
    return STATUS_OK;
}

static Status check_known_keys(const cJSON *obj) {
    for (const cJSON *e = obj->child; e; e = e->next) {
        size_t k = 0;
        while (k < sizeof KNOWN_KEYS / sizeof KNOWN_KEYS[0] && strcmp(KNOWN_KEYS[k], e->string) != 0) k++;
        if (k == sizeof KNOWN_KEYS / sizeof KNOWN_KEYS[0]) return errorf("unknown key \"%s\"", e->string);
    }
    return STATUS_OK;
}

/* ---- reading the parts of a config ---- */

static Status read_family(const cJSON *obj, Family *family, ModelConfig *cfg) {
    const char *model_type;
    TRY(get_string(obj, "", "model_type", &model_type));
    if (!model_type) return errorf("model_type is missing (llama, qwen2, mistral or deepseek_v2)");
    int f = 0;
    while (f < N_FAMILIES && strcmp(FAMILIES[f].model_type, model_type) != 0) f++;
    if (f == N_FAMILIES)
        return errorf("model_type = \"%s\" is not supported (llama, qwen2, mistral or deepseek_v2)", model_type);
    *family = (Family)f;
    snprintf(cfg->model_type, sizeof cfg->model_type, "%s", model_type);

    const char *architecture = FAMILIES[f].architecture;
    const cJSON *list = value_of(obj, "architectures");
    if (list) {
        if (!cJSON_IsArray(list) || !list->child || !cJSON_IsString(list->child))
            return errorf("architectures must be a list of class names");
        architecture = list->child->valuestring;
    }
    size_t n = strlen(architecture);
    const char *suffix = "ForCausalLM";
    if (n < strlen(suffix) || strcmp(architecture + n - strlen(suffix), suffix) != 0)
        return errorf("architectures[0] = \"%s\" is not a causal language model (*ForCausalLM)", architecture);
    if (n >= sizeof cfg->architecture)
        return errorf("architectures[0] = \"%s\" is longer than %d characters", architecture, MODEL_NAME_MAX - 1);
    snprintf(cfg->architecture, sizeof cfg->architecture, "%s", architecture);
    return STATUS_OK;
}

static Status check_partial_rotary(const cJSON *obj, const char *scope) {
    double factor;
    char name[KEY_NAME_MAX];
    TRY(get_double(obj, scope, "partial_rotary_factor", 0, 1.0, &factor));
    if (factor != 1.0)
        return errorf("%s = %g is not supported: mlatrain rotates every dimension of a head",
                      qualify(name, scope, "partial_rotary_factor"), factor);
    return STATUS_OK;
}

/* rope_theta and rope_scaling; transformers 5 writes both inside "rope_parameters" instead. */
static Status read_rope(const cJSON *obj, Family family, RopeConfig *rope) {
    double theta;
    TRY(get_double(obj, "", "rope_theta", 0, ROPE_THETA_DEFAULT, &theta));
    TRY(check_partial_rotary(obj, ""));
    const char *scope = value_of(obj, "rope_scaling") ? "rope_scaling" : "rope_parameters";
    const cJSON *sc = value_of(obj, scope);
    *rope = (RopeConfig){.theta = theta, .scaling = ROPE_SCALING_NONE};
    if (!sc) return STATUS_OK;
    if (!cJSON_IsObject(sc)) return errorf("%s must be an object or null, got %s", scope, json_kind(sc));
    TRY(check_duplicates(sc, scope));

    if (value_of(sc, "rope_theta")) {
        double inner;
        TRY(get_double(sc, scope, "rope_theta", 1, 0, &inner));
        if (value_of(obj, "rope_theta") && inner != theta)
            return errorf("rope_theta = %g and %s.rope_theta = %g disagree", theta, scope, inner);
        rope->theta = inner;
    }
    TRY(check_partial_rotary(sc, scope));

    const char *type, *old_type;
    TRY(get_string(sc, scope, "rope_type", &type));
    TRY(get_string(sc, scope, "type", &old_type));
    if (type && old_type && strcmp(type, old_type) != 0)
        return errorf("%s.rope_type = \"%s\" and %s.type = \"%s\" disagree", scope, type, scope, old_type);
    const char *type_key = type || !old_type ? "rope_type" : "type";
    if (!type) type = old_type ? old_type : "default";

    if (family == FAMILY_DEEPSEEK_V2) {
        double mscale_all_dim;
        TRY(get_double(sc, scope, "mscale_all_dim", 0, 0, &mscale_all_dim));
        if (mscale_all_dim != 0)
            return errorf("%s.mscale_all_dim = %g is not supported: it rescales DeepSeek's attention scores",
                          scope, mscale_all_dim);
    }
    if (strcmp(type, "default") == 0) return STATUS_OK;
    if (strcmp(type, "llama3") != 0)
        return errorf("%s.%s = \"%s\" is not supported: mlatrain computes \"default\" and \"llama3\" RoPE only",
                      scope, type_key, type);
    rope->scaling = ROPE_SCALING_LLAMA3;
    TRY(get_double(sc, scope, "factor", 1, 0, &rope->factor));
    TRY(get_double(sc, scope, "low_freq_factor", 1, 0, &rope->low_freq_factor));
    TRY(get_double(sc, scope, "high_freq_factor", 1, 0, &rope->high_freq_factor));
    return get_int(sc, scope, "original_max_position_embeddings", 1, 0, &rope->original_max_position_embeddings);
}

static Status read_refused(const cJSON *obj, Family family) {
    const char *act;
    TRY(get_string(obj, "", "hidden_act", &act));
    if (act && strcmp(act, "silu") != 0)
        return errorf("hidden_act = \"%s\" is not supported: mlatrain's MLP is SwiGLU (silu)", act);
    if (value_of(obj, "quantization_config"))
        return errorf("quantization_config is set: mlatrain reads unquantized bf16/f16/f32 weights only");
    int flag;
    if (family == FAMILY_LLAMA || family == FAMILY_DEEPSEEK_V2) {
        /* DeepSeek-V2's attention_bias (q_a_proj, kv_a_proj_with_mqa, o_proj) is read with its dims;
         * the loader then requires o_proj's bias to be zero. */
        TRY(get_bool(obj, "attention_bias", 0, &flag));
        if (flag && family == FAMILY_LLAMA)
            return errorf("attention_bias = true is not supported: it puts a bias on o_proj as well, and "
                          "mlatrain supports q/k/v biases only (Qwen2)");
        TRY(get_bool(obj, "mlp_bias", 0, &flag));
        if (flag) return errorf("mlp_bias = true is not supported: mlatrain's MLP has no biases");
    }
    if (family == FAMILY_QWEN2) {
        TRY(get_bool(obj, "use_sliding_window", 0, &flag));
        if (flag) return errorf("use_sliding_window = true is not supported: mlatrain's attention is full causal");
        const cJSON *types = value_of(obj, "layer_types");
        if (types) {
            if (!cJSON_IsArray(types)) return errorf("layer_types must be a list, got %s", json_kind(types));
            int i = 0;
            for (const cJSON *t = types->child; t; t = t->next, i++)
                if (!cJSON_IsString(t) || strcmp(t->valuestring, "full_attention") != 0)
                    return errorf("layer_types[%d] = %s is not supported: mlatrain's attention is full causal", i,
                                  cJSON_IsString(t) ? t->valuestring : json_kind(t));
        }
    }
    return STATUS_OK;
}

static Status read_dims(const cJSON *obj, Family family, ModelConfig *cfg) {
    const FamilyInfo *info = &FAMILIES[family];
    TRY(get_int(obj, "", "vocab_size", 1, 0, &cfg->vocab_size));
    TRY(get_int(obj, "", "hidden_size", 1, 0, &cfg->hidden_size));
    TRY(get_int(obj, "", "intermediate_size", 1, 0, &cfg->intermediate_size));
    TRY(get_int(obj, "", "num_hidden_layers", 1, 0, &cfg->num_hidden_layers));
    TRY(get_int(obj, "", "num_attention_heads", 1, 0, &cfg->num_attention_heads));
    int64_t H = cfg->num_attention_heads;

    if (family == FAMILY_DEEPSEEK_V2) {
        int64_t kv_heads;
        TRY(get_int(obj, "", "num_key_value_heads", 0, H, &kv_heads));
        if (kv_heads != H)
            return errorf("num_key_value_heads = %lld must equal num_attention_heads = %lld in a deepseek_v2 config "
                          "(hybrid GQA layers give theirs in mlatrain_gqa_num_key_value_heads)",
                          (long long)kv_heads, (long long)H);
        TRY(get_int(obj, "", "mlatrain_gqa_num_key_value_heads", 0, H, &cfg->num_key_value_heads));
    } else if (!cJSON_GetObjectItemCaseSensitive(obj, "num_key_value_heads") && info->default_kv_heads) {
        return errorf("num_key_value_heads is missing (HF's %s config would take %lld, not num_attention_heads)",
                      info->model_type, (long long)info->default_kv_heads);
    } else {
        TRY(get_int(obj, "", "num_key_value_heads", 0, H, &cfg->num_key_value_heads));
    }

    const char *head_dim_key = family == FAMILY_DEEPSEEK_V2 ? "mlatrain_gqa_head_dim" : "head_dim";
    if (value_of(obj, head_dim_key)) {
        TRY(get_int(obj, "", head_dim_key, 1, 0, &cfg->head_dim));
    } else {
        if (H <= 0) return errorf("num_attention_heads = %lld must be positive", (long long)H);
        if (cfg->hidden_size % H != 0)
            return errorf("%s is absent and hidden_size = %lld is not a multiple of num_attention_heads = %lld",
                          head_dim_key, (long long)cfg->hidden_size, (long long)H);
        cfg->head_dim = cfg->hidden_size / H;
    }

    TRY(get_int(obj, "", "max_position_embeddings", 0, info->max_position_embeddings, &cfg->max_position_embeddings));
    TRY(get_double(obj, "", "rms_norm_eps", 0, RMS_NORM_EPS_DEFAULT, &cfg->rms_norm_eps));
    TRY(get_bool(obj, "tie_word_embeddings", 0, &cfg->tie_word_embeddings));
    TRY(get_token_ids(obj, "bos_token_id", &cfg->bos_token_id, NULL, NULL));
    TRY(get_token_ids(obj, "eos_token_id", &cfg->eos_token_id, cfg->eos_token_ids, &cfg->n_eos_token_ids));

    cfg->qkv_bias = family == FAMILY_QWEN2;
    if (family == FAMILY_MISTRAL) {
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(obj, "sliding_window");
        TRY(get_int(obj, "", "sliding_window", 0, w ? 0 : MISTRAL_SLIDING_WINDOW_DEFAULT, &cfg->sliding_window));
        if (w && !cJSON_IsNull(w) && cfg->sliding_window <= 0)
            return errorf("sliding_window = %lld must be positive (or null)", (long long)cfg->sliding_window);
    }
    return STATUS_OK;
}

/* DeepSeek's loaders build mixture-of-experts MLPs from layer first_k_dense_replace on, unless
 * n_routed_experts is null (DeepSeek's own code and vLLM). */
static Status check_dense_mlp(const cJSON *obj, int64_t L) {
    int64_t first_dense, experts = 0;
    TRY(get_int(obj, "", "first_k_dense_replace", 0, 0, &first_dense));
    if (!value_of(obj, "n_routed_experts")) return STATUS_OK;
    TRY(get_int(obj, "", "n_routed_experts", 1, 0, &experts));
    if (first_dense < L)
        return errorf("first_k_dense_replace = %lld < num_hidden_layers = %lld makes layers %lld..%lld "
                      "mixture-of-experts (n_routed_experts = %lld): mlatrain supports dense MLPs only",
                      (long long)first_dense, (long long)L, (long long)(first_dense > 0 ? first_dense : 0),
                      (long long)(L - 1), (long long)experts);
    return STATUS_OK;
}

/* mlatrain's own students: MLA widths and the layers that keep GQA attention. */
static Status read_deepseek_v2(const cJSON *obj, ModelConfig *cfg) {
    int64_t L = cfg->num_hidden_layers;
    MlaDims *a = &cfg->mla;
    TRY(get_int(obj, "", "kv_lora_rank", 1, 0, &a->kv_lora_rank));
    if (!cJSON_GetObjectItemCaseSensitive(obj, "q_lora_rank"))
        return errorf("q_lora_rank is missing (null for a full-rank q_proj)");
    TRY(get_int(obj, "", "q_lora_rank", 0, 0, &a->q_lora_rank));
    if (value_of(obj, "q_lora_rank") && a->q_lora_rank <= 0)
        return errorf("q_lora_rank = %lld must be positive (null for a full-rank q_proj)", (long long)a->q_lora_rank);
    TRY(get_int(obj, "", "qk_nope_head_dim", 1, 0, &a->qk_nope_head_dim));
    TRY(get_int(obj, "", "qk_rope_head_dim", 1, 0, &a->qk_rope_head_dim));
    TRY(get_int(obj, "", "v_head_dim", 1, 0, &a->v_head_dim));
    a->latent_norm = 1; /* every DeepSeek-V2 loader applies kv_a_layernorm, */
    a->q_norm = 1;      /* and q_a_layernorm with a q bottleneck */

    for (int64_t l = 0; l < L && l < MODEL_MAX_LAYERS; l++) cfg->layer_attention[l] = ATTENTION_MLA;
    const cJSON *gqa = value_of(obj, "mlatrain_gqa_layers");
    if (gqa) {
        if (!cJSON_IsArray(gqa)) return errorf("mlatrain_gqa_layers must be a list of layer indices");
        int i = 0;
        for (const cJSON *e = gqa->child; e; e = e->next, i++) {
            char name[KEY_NAME_MAX];
            int64_t layer;
            snprintf(name, sizeof name, "mlatrain_gqa_layers[%d]", i);
            TRY(to_int(e, name, &layer));
            if (layer < 0 || layer >= L || layer >= MODEL_MAX_LAYERS)
                return errorf("%s = %lld is not a layer (num_hidden_layers = %lld)", name, (long long)layer,
                              (long long)L);
            if (cfg->layer_attention[layer] == ATTENTION_GQA)
                return errorf("%s = %lld is listed twice", name, (long long)layer);
            cfg->layer_attention[layer] = ATTENTION_GQA;
        }
    }
    TRY(get_bool(obj, "mlatrain_gqa_qkv_bias", 0, &cfg->qkv_bias));
    TRY(get_int(obj, "", "mlatrain_sliding_window", 0, 0, &cfg->sliding_window));
    TRY(get_bool(obj, "attention_bias", 0, &a->attention_bias));
    TRY(get_double(obj, "", "mlatrain_rms_norm_eps", 0, 0, &cfg->rms_norm_eps_trained));

    /* rope_theta is the MLA layers' base (what stock loaders use); GQA layers keep theirs apart. */
    if (model_config_mla_layers(cfg) < L) {
        double mla_theta = cfg->rope.theta;
        TRY(get_double(obj, "", "mlatrain_gqa_rope_theta", 0, mla_theta, &cfg->rope.theta));
        a->rope_theta = mla_theta != cfg->rope.theta ? mla_theta : 0;
    }
    return STATUS_OK;
}

static Status from_json(const cJSON *obj, HfKeyPolicy policy, ModelConfig *cfg) {
    memset(cfg, 0, sizeof *cfg);
    if (!cJSON_IsObject(obj)) return errorf("a model config must be a JSON object, got %s", json_kind(obj));
    TRY(check_duplicates(obj, ""));
    if (policy == HF_KEYS_REJECT_UNKNOWN) TRY(check_known_keys(obj));
    Family family = FAMILY_LLAMA;
    TRY(read_family(obj, &family, cfg));
    TRY(read_refused(obj, family));
    TRY(read_dims(obj, family, cfg));
    if (family == FAMILY_DEEPSEEK_V2) TRY(check_dense_mlp(obj, cfg->num_hidden_layers));
    TRY(read_rope(obj, family, &cfg->rope));
    if (family == FAMILY_DEEPSEEK_V2) TRY(read_deepseek_v2(obj, cfg));
    return model_config_validate(cfg);
}

Status hf_config_from_json(const cJSON *obj, const char *where, HfKeyPolicy policy, ModelConfig *cfg) {
    if (from_json(obj, policy, cfg) != STATUS_OK) return error_context("%s: ", where);
    return STATUS_OK;
}

static Status read_text_file(const char *path, char **out, size_t *len) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return errorf("%s: cannot open: %s", path, strerror(errno));
    Status st = STATUS_OK;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) st = errorf("%s: cannot read: %s", path, strerror(errno));
    else if (size > CONFIG_FILE_MAX) st = errorf("%s: %ld bytes is too large for a config.json", path, size);
    char *text = st == STATUS_OK ? malloc((size_t)size + 1) : NULL;
    if (st == STATUS_OK && !text) st = errorf("%s: out of memory", path);
    if (st == STATUS_OK && fread(text, 1, (size_t)size, f) != (size_t)size)
        st = errorf("%s: read failed: %s", path, ferror(f) ? strerror(errno) : "the file shrank while reading");
    fclose(f);
    if (st != STATUS_OK) {
        free(text);
        return st;
    }
    text[size] = '\0';
    *out = text;
    *len = (size_t)size;
    return STATUS_OK;
}

Status hf_config_read(const char *path, ModelConfig *cfg) {
    char *text;
    size_t len = 0;
    TRY(read_text_file(path, &text, &len));
    const char *end = NULL;
    cJSON *json = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!json) {
        int line = 1, column = 1;
        for (const char *p = text; end && p < end && *p; p++) {
            if (*p == '\n') line++, column = 1;
            else column++;
        }
        free(text);
        return errorf("%s: invalid JSON at line %d, column %d", path, line, column);
    }
    free(text);
    Status st = hf_config_from_json(json, path, HF_KEYS_IGNORE_UNKNOWN, cfg);
    cJSON_Delete(json);
    return st;
}
