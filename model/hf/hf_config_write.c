/* config.json written for mlatrain's students: DeepSeek-V2 for MLA students, the teacher's own
 * family for GQA models, with the dtype written and the eos list as read. */
#include "model/hf/hf_config.h"

#include "core/file_io.h"
#include "model/hf/hf_families.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* An object under construction; the first failed insertion (out of memory) is remembered. */
typedef struct {
    cJSON *obj;
    int failed;
} JsonBuilder;

static void put(JsonBuilder *b, const char *key, cJSON *item) {
    if (!item || !b->obj || !cJSON_AddItemToObject(b->obj, key, item)) {
        cJSON_Delete(item);
        b->failed = 1;
    }
}
static void put_int(JsonBuilder *b, const char *key, int64_t v) {
    char text[32];
    snprintf(text, sizeof text, "%lld", (long long)v);
    put(b, key, cJSON_CreateRaw(text));
}
/* Floats keep a decimal point ("1.0", not cJSON's "1"), as Python writes them: transformers 5
 * refuses an integer where a field is typed float (routed_scaling_factor). */
static void put_float(JsonBuilder *b, const char *key, double v) {
    char text[40];
    hf_format_double(text, sizeof text, v);
    put(b, key, cJSON_CreateRaw(text));
}
static void put_bool(JsonBuilder *b, const char *key, int v) { put(b, key, cJSON_CreateBool(v)); }
static void put_string(JsonBuilder *b, const char *key, const char *v) { put(b, key, cJSON_CreateString(v)); }
static void put_token(JsonBuilder *b, const char *key, int64_t id) {
    if (id < 0) put(b, key, cJSON_CreateNull());
    else put_int(b, key, id);
}

/* eos_token_id as it was read: a list stays a list. */
static void put_eos(JsonBuilder *b, const ModelConfig *cfg) {
    if (cfg->n_eos_token_ids == 0) {
        put_token(b, "eos_token_id", cfg->eos_token_id);
        return;
    }
    cJSON *list = cJSON_CreateArray();
    for (int i = 0; list && i < cfg->n_eos_token_ids; i++)
        if (!cJSON_AddItemToArray(list, cJSON_CreateNumber((double)cfg->eos_token_ids[i]))) b->failed = 1;
    put(b, "eos_token_id", list);
}

/* torch_dtype names the dtype the safetensors hold: loaders given dtype="auto" (vLLM's default,
 * transformers 5's) build the model in it. */
static const char *torch_dtype_name(DType dtype) {
    return dtype == DT_BF16 ? "bfloat16" : dtype == DT_F16 ? "float16" : "float32";
}

static cJSON *rope_scaling_json(const RopeConfig *r, int *failed) {
    JsonBuilder b = {cJSON_CreateObject(), 0};
    put_string(&b, "rope_type", "llama3");
    put_float(&b, "factor", r->factor);
    put_float(&b, "low_freq_factor", r->low_freq_factor);
    put_float(&b, "high_freq_factor", r->high_freq_factor);
    put_int(&b, "original_max_position_embeddings", r->original_max_position_embeddings);
    if (b.failed) *failed = 1;
    return b.obj;
}

static Status finish(JsonBuilder *b, cJSON **out) {
    if (b->failed) {
        cJSON_Delete(b->obj);
        return errorf("out of memory building a config.json");
    }
    *out = b->obj;
    return STATUS_OK;
}

/* How many of the rope key's dr/2 frequencies, rope_theta^(-2i/dr) as DeepSeek loaders compute
 * them, Llama 3 scaling changes. Only the long wavelengths change, so a rope key that kept only
 * fast pairs exports exactly without it, and every loader agrees. */
static Status llama3_changed_pairs(const ModelConfig *cfg, int *changed) {
    *changed = 0;
    if (cfg->rope.scaling != ROPE_SCALING_LLAMA3) return STATUS_OK;
    int pairs = (int)(cfg->mla.qk_rope_head_dim / 2);
    float *scaled = malloc((size_t)pairs * sizeof(float)), *plain = malloc((size_t)pairs * sizeof(float));
    RopeConfig with = cfg->rope, without = cfg->rope;
    with.theta = without.theta = model_config_mla_rope_theta(cfg);
    without.scaling = ROPE_SCALING_NONE;
    Status st = scaled && plain ? STATUS_OK : errorf("out of memory");
    if (st == STATUS_OK) st = rope_inv_freq(&with, (int)cfg->mla.qk_rope_head_dim, scaled);
    if (st == STATUS_OK) st = rope_inv_freq(&without, (int)cfg->mla.qk_rope_head_dim, plain);
    for (int i = 0; st == STATUS_OK && i < pairs; i++) *changed += scaled[i] != plain[i];
    free(scaled);
    free(plain);
    return st;
}

static Status check_student(const ModelConfig *cfg) {
    TRY(model_config_validate(cfg));
    if (model_config_mla_layers(cfg) == 0)
        return errorf("no layer has MLA attention: write a GQA model with hf_config_write_gqa");
    if (!cfg->mla.latent_norm)
        return errorf("the student has no latent norm (kv_a_layernorm), which every DeepSeek-V2 loader applies");
    if (cfg->mla.q_lora_rank > 0 && !cfg->mla.q_norm)
        return errorf("the student's q bottleneck has no norm (q_a_layernorm), which every DeepSeek-V2 loader applies");
    return STATUS_OK;
}

/*
 * Dense MLPs everywhere, for every loader: HF transformers builds MoE where layer_idx >=
 * first_k_dense_replace; vLLM, SGLang and DeepSeek's own code where n_routed_experts is not null,
 * layer_idx >= first_k_dense_replace and layer_idx % moe_layer_freq == 0. So first_k_dense_replace
 * = num_hidden_layers. The expert fields are still integers: transformers 5 type-checks
 * n_routed_experts/n_shared_experts as int, and vLLM adds to n_routed_experts while loading
 * weights. n_routed_experts = 0 makes vLLM's ModelConfig see a dense model (its expert count).
 */
Status hf_config_deepseek_v2_json(const ModelConfig *cfg, DType dtype, cJSON **out) {
    *out = NULL;
    TRY(check_student(cfg));
    int changed, hybrid = model_config_mla_layers(cfg) < cfg->num_hidden_layers;
    TRY(llama3_changed_pairs(cfg, &changed));
    const MlaDims *a = &cfg->mla;
    JsonBuilder b = {cJSON_CreateObject(), 0};
    const char *architecture = "DeepseekV2ForCausalLM";
    put(&b, "architectures", cJSON_CreateStringArray(&architecture, 1));
    put_string(&b, "model_type", "deepseek_v2");
    put_int(&b, "vocab_size", cfg->vocab_size);
    put_int(&b, "hidden_size", cfg->hidden_size);
    put_int(&b, "intermediate_size", cfg->intermediate_size);
    put_int(&b, "num_hidden_layers", cfg->num_hidden_layers);
    put_int(&b, "num_attention_heads", cfg->num_attention_heads);
    put_int(&b, "num_key_value_heads", cfg->num_attention_heads);
    put_int(&b, "kv_lora_rank", a->kv_lora_rank);
    if (a->q_lora_rank > 0) put_int(&b, "q_lora_rank", a->q_lora_rank);
    else put(&b, "q_lora_rank", cJSON_CreateNull());
    put_int(&b, "qk_nope_head_dim", a->qk_nope_head_dim);
    put_int(&b, "qk_rope_head_dim", a->qk_rope_head_dim);
    put_int(&b, "v_head_dim", a->v_head_dim);
    put_int(&b, "first_k_dense_replace", cfg->num_hidden_layers);
    put_int(&b, "moe_layer_freq", 1);
    put_int(&b, "n_routed_experts", 0);
    put_int(&b, "n_shared_experts", 0);
    put_int(&b, "num_experts_per_tok", 0);
    put_int(&b, "moe_intermediate_size", cfg->intermediate_size);
    put_string(&b, "topk_method", "greedy");
    put_int(&b, "n_group", 1);
    put_int(&b, "topk_group", 1);
    put_float(&b, "routed_scaling_factor", 1.0); /* vLLM divides fp16 activations by it */
    put_bool(&b, "norm_topk_prob", 0);
    put_string(&b, "scoring_func", "softmax");
    put_float(&b, "aux_loss_alpha", 0.0);
    put_bool(&b, "seq_aux", 1);
    put_string(&b, "hidden_act", "silu");
    put_int(&b, "max_position_embeddings", cfg->max_position_embeddings);
    put_float(&b, "rms_norm_eps", cfg->rms_norm_eps);
    put_float(&b, "rope_theta", model_config_mla_rope_theta(cfg));
    if (cfg->rope.scaling == ROPE_SCALING_LLAMA3 && (hybrid || changed > 0))
        put(&b, "rope_scaling", rope_scaling_json(&cfg->rope, &b.failed));
    else put(&b, "rope_scaling", cJSON_CreateNull());
    put_bool(&b, "attention_bias", a->attention_bias);
    put_float(&b, "attention_dropout", 0.0);
    put_bool(&b, "mlp_bias", 0);
    put_bool(&b, "tie_word_embeddings", cfg->tie_word_embeddings);
    put_token(&b, "bos_token_id", cfg->bos_token_id);
    put_eos(&b, cfg);
    put_float(&b, "initializer_range", 0.02);
    put_bool(&b, "use_cache", 1);
    put_string(&b, "torch_dtype", torch_dtype_name(dtype));
    if (cfg->rms_norm_eps_trained > 0) put_float(&b, "mlatrain_rms_norm_eps", cfg->rms_norm_eps_trained);

    /* mlatrain's own keys: the GQA attention of hybrid layers (for an all-MLA student, of the
     * teacher it was converted from), which stock loaders ignore. */
    cJSON *layers = cJSON_CreateArray();
    for (int l = 0; layers && l < cfg->num_hidden_layers; l++)
        if (cfg->layer_attention[l] == ATTENTION_GQA && !cJSON_AddItemToArray(layers, cJSON_CreateNumber(l)))
            b.failed = 1;
    put(&b, "mlatrain_gqa_layers", layers);
    put_int(&b, "mlatrain_gqa_num_key_value_heads", cfg->num_key_value_heads);
    put_int(&b, "mlatrain_gqa_head_dim", cfg->head_dim);
    put_bool(&b, "mlatrain_gqa_qkv_bias", cfg->qkv_bias);
    if (hybrid) put_float(&b, "mlatrain_gqa_rope_theta", cfg->rope.theta);
    if (cfg->sliding_window > 0) put_int(&b, "mlatrain_sliding_window", cfg->sliding_window);
    return finish(&b, out);
}

Status hf_config_deepseek_v2_check_stock(const ModelConfig *cfg) {
    TRY(check_student(cfg));
    int mla = model_config_mla_layers(cfg);
    if (mla < cfg->num_hidden_layers)
        return errorf("%lld of %lld layers keep GQA attention (mlatrain_gqa_layers): stock DeepSeek-V2 loaders "
                      "build MLA in every layer, so only mlatrain reads this export",
                      (long long)(cfg->num_hidden_layers - mla), (long long)cfg->num_hidden_layers);
    int changed;
    TRY(llama3_changed_pairs(cfg, &changed));
    if (changed > 0)
        return errorf("llama3 rope_scaling changes %d of the %lld rope frequencies: HF transformers applies it, "
                      "but vLLM and SGLang read any rope_scaling as DeepSeek's YaRN (other frequencies, and cos/sin "
                      "scaled by YaRN's mscale) and DeepSeek's own modeling code refuses it",
                      changed, (long long)(cfg->mla.qk_rope_head_dim / 2));
    if (cfg->hidden_size % cfg->num_attention_heads != 0)
        return errorf("hidden_size = %lld is not a multiple of num_attention_heads = %lld, which HF transformers' "
                      "DeepseekV2Config refuses",
                      (long long)cfg->hidden_size, (long long)cfg->num_attention_heads);
    if (cfg->mla.attention_bias)
        return errorf("attention_bias = true: HF transformers applies the biases of q_a_proj and kv_a_proj_with_mqa, "
                      "but vLLM and SGLang build DeepSeek-V2's projections without biases (convert with "
                      "student.mla.drop_biases for a student they compute)");
    return STATUS_OK;
}

Status hf_config_gqa_json(const ModelConfig *cfg, DType dtype, cJSON **out) {
    *out = NULL;
    TRY(model_config_validate(cfg));
    int f = 0;
    while (f < FAMILY_DEEPSEEK_V2 && strcmp(FAMILIES[f].model_type, cfg->model_type) != 0) f++;
    if (f == FAMILY_DEEPSEEK_V2)
        return errorf("model_type = \"%s\": a GQA config is written as llama, qwen2 or mistral", cfg->model_type);
    if (model_config_mla_layers(cfg) > 0)
        return errorf("%d layers have MLA attention: write the student with hf_config_write_deepseek_v2",
                      model_config_mla_layers(cfg));
    if (cfg->qkv_bias != (f == FAMILY_QWEN2))
        return errorf("%s q/k/v biases cannot be written as model_type \"%s\" (only qwen2 has them, always)",
                      cfg->qkv_bias ? "with" : "without", cfg->model_type);
    if (cfg->sliding_window > 0 && f != FAMILY_MISTRAL)
        return errorf("sliding_window = %lld can only be written for mistral", (long long)cfg->sliding_window);

    JsonBuilder b = {cJSON_CreateObject(), 0};
    const char *architecture = cfg->architecture[0] ? cfg->architecture : FAMILIES[f].architecture;
    put(&b, "architectures", cJSON_CreateStringArray(&architecture, 1));
    put_string(&b, "model_type", FAMILIES[f].model_type);
    put_int(&b, "vocab_size", cfg->vocab_size);
    put_int(&b, "hidden_size", cfg->hidden_size);
    put_int(&b, "intermediate_size", cfg->intermediate_size);
    put_int(&b, "num_hidden_layers", cfg->num_hidden_layers);
    put_int(&b, "num_attention_heads", cfg->num_attention_heads);
    put_int(&b, "num_key_value_heads", cfg->num_key_value_heads);
    put_int(&b, "head_dim", cfg->head_dim);
    put_string(&b, "hidden_act", "silu");
    put_int(&b, "max_position_embeddings", cfg->max_position_embeddings);
    put_float(&b, "rms_norm_eps", cfg->rms_norm_eps);
    put_float(&b, "rope_theta", cfg->rope.theta);
    if (cfg->rope.scaling == ROPE_SCALING_LLAMA3) put(&b, "rope_scaling", rope_scaling_json(&cfg->rope, &b.failed));
    else put(&b, "rope_scaling", cJSON_CreateNull());
    if (f == FAMILY_LLAMA) {
        put_bool(&b, "attention_bias", 0);
        put_bool(&b, "mlp_bias", 0);
    }
    if (f == FAMILY_MISTRAL) {
        if (cfg->sliding_window > 0) put_int(&b, "sliding_window", cfg->sliding_window);
        else put(&b, "sliding_window", cJSON_CreateNull());
    }
    if (f == FAMILY_QWEN2) put_bool(&b, "use_sliding_window", 0);
    put_float(&b, "attention_dropout", 0.0);
    put_bool(&b, "tie_word_embeddings", cfg->tie_word_embeddings);
    put_token(&b, "bos_token_id", cfg->bos_token_id);
    put_eos(&b, cfg);
    put_float(&b, "initializer_range", 0.02);
    put_bool(&b, "use_cache", 1);
    put_string(&b, "torch_dtype", torch_dtype_name(dtype));
    return finish(&b, out);
}

/* The JSON text, pretty-printed with a final newline, replacing path whole (core/file_io.h). */
static Status write_json_atomic(const cJSON *json, const char *path) {
    char *text = cJSON_Print(json);
    if (!text) return errorf("%s: out of memory", path);
    size_t n = strlen(text);
    char *with_newline = malloc(n + 2);
    Status st = with_newline ? STATUS_OK : errorf("%s: out of memory", path);
    if (st == STATUS_OK) {
        memcpy(with_newline, text, n);
        with_newline[n] = '\n';
        st = file_write_atomic(path, with_newline, n + 1);
    }
    free(with_newline);
    cJSON_free(text);
    return st;
}

static Status write_config(Status (*build)(const ModelConfig *, DType, cJSON **), const ModelConfig *cfg,
                           DType dtype, const char *path) {
    if (dtype != DT_F32 && dtype != DT_BF16 && dtype != DT_F16)
        return errorf("%s: torch_dtype: %s is not a dtype of HF weights (f32, bf16 or f16)", path, dtype_name(dtype));
    cJSON *json;
    if (build(cfg, dtype, &json) != STATUS_OK) return error_context("%s: ", path);
    Status st = write_json_atomic(json, path);
    cJSON_Delete(json);
    return st;
}

Status hf_config_write_deepseek_v2(const ModelConfig *cfg, DType dtype, const char *path) {
    return write_config(hf_config_deepseek_v2_json, cfg, dtype, path);
}

Status hf_config_write_gqa(const ModelConfig *cfg, DType dtype, const char *path) {
    return write_config(hf_config_gqa_json, cfg, dtype, path);
}
