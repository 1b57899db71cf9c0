/* Tests of config.json I/O: real Llama, Qwen2 and Mistral configs read field by field, refusals with
 * the key they name, and DeepSeek-V2 students written and read back unchanged. */
#include "harness.h"

#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/hf/hf_config.h"

/* ---- real configs (as published on the Hub; irrelevant keys kept, as they come) ---- */

static const char *LLAMA_3_2_1B =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": false, \"attention_dropout\": 0.0,"
    " \"bos_token_id\": 128000, \"eos_token_id\": [128001, 128008, 128009], \"head_dim\": 64,"
    " \"hidden_act\": \"silu\", \"hidden_size\": 2048, \"initializer_range\": 0.02, \"intermediate_size\": 8192,"
    " \"max_position_embeddings\": 131072, \"mlp_bias\": false, \"model_type\": \"llama\","
    " \"num_attention_heads\": 32, \"num_hidden_layers\": 16, \"num_key_value_heads\": 8, \"pretraining_tp\": 1,"
    " \"rms_norm_eps\": 1e-05, \"rope_scaling\": {\"factor\": 32.0, \"high_freq_factor\": 4.0,"
    " \"low_freq_factor\": 1.0, \"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"},"
    " \"rope_theta\": 500000.0, \"tie_word_embeddings\": true, \"torch_dtype\": \"bfloat16\","
    " \"transformers_version\": \"4.45.0.dev0\", \"use_cache\": true, \"vocab_size\": 128256}";

static const char *LLAMA_3_1_8B =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": false, \"attention_dropout\": 0.0,"
    " \"bos_token_id\": 128000, \"eos_token_id\": 128001, \"hidden_act\": \"silu\", \"hidden_size\": 4096,"
    " \"initializer_range\": 0.02, \"intermediate_size\": 14336, \"max_position_embeddings\": 131072,"
    " \"mlp_bias\": false, \"model_type\": \"llama\", \"num_attention_heads\": 32, \"num_hidden_layers\": 32,"
    " \"num_key_value_heads\": 8, \"pretraining_tp\": 1, \"rms_norm_eps\": 1e-05,"
    " \"rope_scaling\": {\"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0,"
    " \"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"}, \"rope_theta\": 500000.0,"
    " \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\", \"transformers_version\": \"4.43.0.dev0\","
    " \"use_cache\": true, \"vocab_size\": 128256}";

static const char *QWEN2_5_0_5B =
    "{\"architectures\": [\"Qwen2ForCausalLM\"], \"attention_dropout\": 0.0, \"bos_token_id\": 151643,"
    " \"eos_token_id\": 151643, \"hidden_act\": \"silu\", \"hidden_size\": 896, \"initializer_range\": 0.02,"
    " \"intermediate_size\": 4864, \"max_position_embeddings\": 32768, \"max_window_layers\": 24,"
    " \"model_type\": \"qwen2\", \"num_attention_heads\": 14, \"num_hidden_layers\": 24,"
    " \"num_key_value_heads\": 2, \"rms_norm_eps\": 1e-06, \"rope_theta\": 1000000.0, \"sliding_window\": 32768,"
    " \"tie_word_embeddings\": true, \"torch_dtype\": \"bfloat16\", \"transformers_version\": \"4.40.1\","
    " \"use_cache\": true, \"use_sliding_window\": false, \"vocab_size\": 151936}";

static const char *MISTRAL_7B_V0_3 =
    "{\"architectures\": [\"MistralForCausalLM\"], \"attention_dropout\": 0.0, \"bos_token_id\": 1,"
    " \"eos_token_id\": 2, \"head_dim\": 128, \"hidden_act\": \"silu\", \"hidden_size\": 4096,"
    " \"initializer_range\": 0.02, \"intermediate_size\": 14336, \"max_position_embeddings\": 32768,"
    " \"model_type\": \"mistral\", \"num_attention_heads\": 32, \"num_hidden_layers\": 32,"
    " \"num_key_value_heads\": 8, \"rms_norm_eps\": 1e-05, \"rope_theta\": 1000000.0, \"sliding_window\": null,"
    " \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\", \"transformers_version\": \"4.42.0.dev0\","
    " \"use_cache\": true, \"vocab_size\": 32768}";

static const char *MISTRAL_7B_V0_1 =
    "{\"architectures\": [\"MistralForCausalLM\"], \"bos_token_id\": 1, \"eos_token_id\": 2,"
    " \"hidden_act\": \"silu\", \"hidden_size\": 4096, \"initializer_range\": 0.02, \"intermediate_size\": 14336,"
    " \"max_position_embeddings\": 32768, \"model_type\": \"mistral\", \"num_attention_heads\": 32,"
    " \"num_hidden_layers\": 32, \"num_key_value_heads\": 8, \"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0,"
    " \"sliding_window\": 4096, \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\","
    " \"transformers_version\": \"4.34.0.dev0\", \"use_cache\": true, \"vocab_size\": 32000}";

/* Mistral-Nemo: head_dim 128 where hidden_size / heads would be 160. */
static const char *MISTRAL_NEMO =
    "{\"architectures\": [\"MistralForCausalLM\"], \"bos_token_id\": 1, \"eos_token_id\": 2, \"head_dim\": 128,"
    " \"hidden_act\": \"silu\", \"hidden_size\": 5120, \"intermediate_size\": 14336,"
    " \"max_position_embeddings\": 1024000, \"model_type\": \"mistral\", \"num_attention_heads\": 32,"
    " \"num_hidden_layers\": 40, \"num_key_value_heads\": 8, \"rms_norm_eps\": 1e-05, \"rope_theta\": 1000000.0,"
    " \"sliding_window\": null, \"tie_word_embeddings\": false, \"vocab_size\": 131072}";

/* Llama 3.1 as transformers 5 saves it: rope_theta inside rope_parameters, integers as floats. */
static const char *LLAMA_3_1_TRANSFORMERS_5 =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 4096.0,"
    " \"intermediate_size\": 14336, \"num_attention_heads\": 32, \"num_hidden_layers\": 32,"
    " \"num_key_value_heads\": 8, \"vocab_size\": 128256, \"rms_norm_eps\": 1e-05,"
    " \"rope_parameters\": {\"rope_type\": \"llama3\", \"rope_theta\": 500000, \"factor\": 8,"
    " \"low_freq_factor\": 1, \"high_freq_factor\": 4, \"original_max_position_embeddings\": 8192}}";

/* A hybrid student exported by mlatrain (layer 3 GQA, MLA rope re-based to 500000^(1/2)), loaded and
 * saved again by transformers 5.24: rope moved into rope_parameters, head_dim = qk_rope_head_dim. */
static const char *HYBRID_RESAVED_BY_TRANSFORMERS_5 =
    "{\"architectures\": [\"DeepseekV2ForCausalLM\"], \"attention_bias\": false, \"attention_dropout\": 0.0,"
    " \"aux_loss_alpha\": 0.0, \"bos_token_id\": 128000, \"dtype\": \"bfloat16\", \"eos_token_id\": 128001,"
    " \"first_k_dense_replace\": 16, \"head_dim\": 32, \"hidden_act\": \"silu\", \"hidden_size\": 2048,"
    " \"initializer_range\": 0.02, \"intermediate_size\": 8192, \"kv_lora_rank\": 128,"
    " \"max_position_embeddings\": 131072, \"mlatrain_gqa_head_dim\": 64, \"mlatrain_gqa_layers\": [3],"
    " \"mlatrain_gqa_num_key_value_heads\": 8, \"mlatrain_gqa_qkv_bias\": false,"
    " \"mlatrain_gqa_rope_theta\": 500000.0, \"mlp_bias\": false, \"model_type\": \"deepseek_v2\","
    " \"moe_intermediate_size\": 8192, \"moe_layer_freq\": 1, \"n_group\": 1, \"n_routed_experts\": 0,"
    " \"n_shared_experts\": 0, \"norm_topk_prob\": false, \"num_attention_heads\": 32,"
    " \"num_experts_per_tok\": 0, \"num_hidden_layers\": 16, \"num_key_value_heads\": 32,"
    " \"output_router_logits\": false, \"pad_token_id\": null, \"pretraining_tp\": 1, \"q_lora_rank\": null,"
    " \"qk_head_dim\": 96, \"qk_nope_head_dim\": 64, \"qk_rope_head_dim\": 32, \"rms_norm_eps\": 1e-05,"
    " \"rope_parameters\": {\"factor\": 32.0, \"high_freq_factor\": 4.0, \"low_freq_factor\": 1.0,"
    " \"original_max_position_embeddings\": 8192, \"rope_theta\": 707.1067811865476,"
    " \"rope_type\": \"llama3\"}, \"routed_scaling_factor\": 1.0, \"scoring_func\": \"softmax\","
    " \"seq_aux\": true, \"tie_word_embeddings\": true, \"topk_group\": 1, \"topk_method\": \"greedy\","
    " \"transformers_version\": \"5.24.0\", \"use_cache\": true, \"v_head_dim\": 64, \"vocab_size\": 128256}";

/* DeepSeek-V2-Lite: mixture-of-experts from layer 1 on, YaRN rope. */
static const char *DEEPSEEK_V2_LITE =
    "{\"architectures\": [\"DeepseekV2ForCausalLM\"], \"model_type\": \"deepseek_v2\", \"hidden_size\": 2048,"
    " \"intermediate_size\": 10944, \"moe_intermediate_size\": 1408, \"num_hidden_layers\": 27,"
    " \"num_attention_heads\": 16, \"num_key_value_heads\": 16, \"n_routed_experts\": 64, \"n_shared_experts\": 2,"
    " \"num_experts_per_tok\": 6, \"first_k_dense_replace\": 1, \"moe_layer_freq\": 1, \"kv_lora_rank\": 512,"
    " \"q_lora_rank\": null, \"qk_nope_head_dim\": 128, \"qk_rope_head_dim\": 64, \"v_head_dim\": 128,"
    " \"rope_scaling\": {\"beta_fast\": 32, \"beta_slow\": 1, \"factor\": 40, \"mscale\": 0.707,"
    " \"mscale_all_dim\": 0.707, \"original_max_position_embeddings\": 4096, \"type\": \"yarn\"},"
    " \"rope_theta\": 10000, \"vocab_size\": 102400, \"max_position_embeddings\": 163840}";

/* ---- files ---- */

static char tmp_dir[] = "/tmp/mlatrain_test_hf_config_XXXXXX";

static const char *write_file(const char *name, const char *text) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmp_dir, name);
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    return path;
}

static Status read_text(const char *text, ModelConfig *cfg) {
    return hf_config_read(write_file("config.json", text), cfg);
}

/* A config text with `from` replaced by `to` (once; the pattern must occur). */
static const char *edited(const char *text, const char *from, const char *to) {
    static char buf[8192];
    const char *at = strstr(text, from);
    if (!at) {
        fprintf(stderr, "pattern %s not in the config\n", from);
        exit(1);
    }
    snprintf(buf, sizeof buf, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
    return buf;
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = test_alloc(1 << 16);
    size_t n = fread(buf, 1, (1 << 16) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static int leftover_temp_files(void) {
    int n = 0;
    DIR *d = opendir(tmp_dir);
    for (struct dirent *e; d && (e = readdir(d));) n += strstr(e->d_name, ".tmp.") != NULL;
    if (d) closedir(d);
    return n;
}

/* ---- comparing configs field by field ---- */

static const char *config_difference(const ModelConfig *a, const ModelConfig *b) {
#define SAME(field) \
    if (a->field != b->field) return #field
    if (strcmp(a->architecture, b->architecture) != 0) return "architecture";
    if (strcmp(a->model_type, b->model_type) != 0) return "model_type";
    SAME(vocab_size); SAME(hidden_size); SAME(intermediate_size); SAME(num_hidden_layers);
    SAME(num_attention_heads); SAME(num_key_value_heads); SAME(head_dim); SAME(max_position_embeddings);
    SAME(rms_norm_eps); SAME(rope.theta); SAME(rope.scaling); SAME(tie_word_embeddings); SAME(qkv_bias);
    SAME(bos_token_id); SAME(eos_token_id); SAME(sliding_window); SAME(n_eos_token_ids);
    for (int i = 0; i < a->n_eos_token_ids; i++) SAME(eos_token_ids[i]);
    if (a->rope.scaling == ROPE_SCALING_LLAMA3) {
        SAME(rope.factor); SAME(rope.low_freq_factor); SAME(rope.high_freq_factor);
        SAME(rope.original_max_position_embeddings);
    }
    if (model_config_mla_layers(a) > 0) {
        SAME(mla.kv_lora_rank); SAME(mla.q_lora_rank); SAME(mla.qk_nope_head_dim); SAME(mla.qk_rope_head_dim);
        SAME(mla.v_head_dim); SAME(mla.latent_norm); SAME(mla.rope_theta);
        if (a->mla.q_lora_rank > 0) SAME(mla.q_norm);
    }
    for (int l = 0; l < a->num_hidden_layers; l++) SAME(layer_attention[l]);
#undef SAME
    return NULL;
}

#define CHECK_SAME(a, b, what)                                                         \
    do {                                                                               \
        const char *diff = config_difference(a, b);                                    \
        CHECK(diff == NULL, "%s: read back differs in %s", what, diff ? diff : "");    \
    } while (0)

/* ---- reading real configs ---- */

static void test_llama_3_2_1b(void) {
    ModelConfig c;
    if (!CHECK_OK(read_text(LLAMA_3_2_1B, &c))) return;
    CHECK(strcmp(c.model_type, "llama") == 0 && strcmp(c.architecture, "LlamaForCausalLM") == 0,
          "llama names: %s %s", c.model_type, c.architecture);
    CHECK(c.vocab_size == 128256 && c.hidden_size == 2048 && c.intermediate_size == 8192, "llama 1B widths");
    CHECK(c.num_hidden_layers == 16 && c.num_attention_heads == 32 && c.num_key_value_heads == 8, "llama 1B heads");
    CHECK(c.head_dim == 64, "llama 1B head_dim %lld", (long long)c.head_dim);
    CHECK(c.max_position_embeddings == 131072, "llama 1B max_position_embeddings");
    CHECK(c.rms_norm_eps == 1e-5, "llama 1B rms_norm_eps %g", c.rms_norm_eps);
    CHECK(c.rope.theta == 500000.0 && c.rope.scaling == ROPE_SCALING_LLAMA3, "llama 1B rope");
    CHECK(c.rope.factor == 32.0 && c.rope.low_freq_factor == 1.0 && c.rope.high_freq_factor == 4.0 &&
              c.rope.original_max_position_embeddings == 8192,
          "llama 1B llama3 scaling");
    CHECK(c.tie_word_embeddings == 1 && c.qkv_bias == 0, "llama 1B tied, no bias");
    CHECK(c.bos_token_id == 128000 && c.eos_token_id == 128001, "llama 1B bos/eos %lld/%lld",
          (long long)c.bos_token_id, (long long)c.eos_token_id);
    CHECK(c.n_eos_token_ids == 3 && c.eos_token_ids[0] == 128001 && c.eos_token_ids[1] == 128008 &&
              c.eos_token_ids[2] == 128009,
          "llama 1B keeps its eos list whole (%d ids)", c.n_eos_token_ids);
    CHECK(c.sliding_window == 0 && model_config_mla_layers(&c) == 0, "llama 1B: no window, no MLA");
    CHECK(model_config_kv_values_per_token(&c, 0) == 1024 && model_config_kv_values_per_token(&c, 15) == 1024,
          "llama 1B kv values per token: 2*8*64 = 1024");
    CHECK(model_config_kv_values_per_token(&c, 16) == 0, "a layer past the model has no cache");
    CHECK_OK(model_config_check_seq_len(&c, 131072));
}

static void test_llama_3_1_8b(void) {
    ModelConfig c;
    if (!CHECK_OK(read_text(LLAMA_3_1_8B, &c))) return;
    CHECK(c.hidden_size == 4096 && c.intermediate_size == 14336 && c.num_hidden_layers == 32, "llama 8B widths");
    CHECK(c.num_attention_heads == 32 && c.num_key_value_heads == 8, "llama 8B heads");
    CHECK(c.head_dim == 128, "llama 8B head_dim from hidden_size / heads: %lld", (long long)c.head_dim);
    CHECK(c.rope.scaling == ROPE_SCALING_LLAMA3 && c.rope.factor == 8.0 && c.rope.theta == 500000.0,
          "llama 8B rope: factor %g", c.rope.factor);
    CHECK(c.tie_word_embeddings == 0 && c.eos_token_id == 128001 && c.bos_token_id == 128000, "llama 8B tokens");
    CHECK(model_config_kv_values_per_token(&c, 3) == 2 * 8 * 128, "llama 8B kv values per token");

    ModelConfig t5;
    if (CHECK_OK(read_text(LLAMA_3_1_TRANSFORMERS_5, &t5))) {
        CHECK(t5.hidden_size == 4096 && t5.rope.theta == 500000.0 && t5.rope.scaling == ROPE_SCALING_LLAMA3 &&
                  t5.rope.factor == 8.0 && t5.rope.original_max_position_embeddings == 8192,
              "transformers 5 rope_parameters read as rope_theta + rope_scaling");
        CHECK(t5.max_position_embeddings == 2048 && t5.rms_norm_eps == 1e-5 && t5.tie_word_embeddings == 0,
              "LlamaConfig defaults for absent keys");
        CHECK(t5.bos_token_id == -1 && t5.eos_token_id == -1, "absent token ids are -1");
    }
}

static void test_qwen2_5_0_5b(void) {
    ModelConfig c;
    if (!CHECK_OK(read_text(QWEN2_5_0_5B, &c))) return;
    CHECK(strcmp(c.model_type, "qwen2") == 0 && strcmp(c.architecture, "Qwen2ForCausalLM") == 0, "qwen2 names");
    CHECK(c.vocab_size == 151936 && c.hidden_size == 896 && c.intermediate_size == 4864, "qwen2 widths");
    CHECK(c.num_hidden_layers == 24 && c.num_attention_heads == 14 && c.num_key_value_heads == 2, "qwen2 heads");
    CHECK(c.head_dim == 64 && c.max_position_embeddings == 32768 && c.rms_norm_eps == 1e-6, "qwen2 dims");
    CHECK(c.rope.theta == 1000000.0 && c.rope.scaling == ROPE_SCALING_NONE, "qwen2 rope");
    CHECK(c.tie_word_embeddings == 1 && c.qkv_bias == 1, "qwen2 tied, q/k/v bias");
    CHECK(c.bos_token_id == 151643 && c.eos_token_id == 151643, "qwen2 tokens");
    CHECK(c.sliding_window == 0, "qwen2's sliding_window is off without use_sliding_window");
    CHECK(model_config_kv_values_per_token(&c, 0) == 2 * 2 * 64, "qwen2 kv values per token");
}

static void test_mistral(void) {
    ModelConfig c;
    if (CHECK_OK(read_text(MISTRAL_7B_V0_3, &c))) {
        CHECK(strcmp(c.model_type, "mistral") == 0 && strcmp(c.architecture, "MistralForCausalLM") == 0,
              "mistral names");
        CHECK(c.vocab_size == 32768 && c.hidden_size == 4096 && c.intermediate_size == 14336, "mistral widths");
        CHECK(c.num_hidden_layers == 32 && c.num_attention_heads == 32 && c.num_key_value_heads == 8 &&
                  c.head_dim == 128,
              "mistral heads");
        CHECK(c.max_position_embeddings == 32768 && c.rms_norm_eps == 1e-5, "mistral dims");
        CHECK(c.rope.theta == 1000000.0 && c.rope.scaling == ROPE_SCALING_NONE, "mistral rope");
        CHECK(c.tie_word_embeddings == 0 && c.qkv_bias == 0 && c.bos_token_id == 1 && c.eos_token_id == 2,
              "mistral tokens");
        CHECK(c.sliding_window == 0, "sliding_window null: no window");
        CHECK_OK(model_config_check_seq_len(&c, 32768));
    }
    if (CHECK_OK(read_text(MISTRAL_7B_V0_1, &c))) {
        CHECK(c.sliding_window == 4096, "v0.1 window %lld", (long long)c.sliding_window);
        CHECK_OK(model_config_check_seq_len(&c, 4096));
        CHECK_ERR(model_config_check_seq_len(&c, 4097), "exceed sliding_window = 4096");
    }
    if (CHECK_OK(read_text(edited(MISTRAL_7B_V0_1, " \"sliding_window\": 4096,", ""), &c)))
        CHECK(c.sliding_window == 4096, "absent sliding_window takes MistralConfig's 4096");
    if (CHECK_OK(read_text(MISTRAL_NEMO, &c)))
        CHECK(c.head_dim == 128 && c.hidden_size == 5120, "explicit head_dim 128 kept over 5120/32");
    CHECK_ERR(read_text(edited(MISTRAL_7B_V0_1, "\"sliding_window\": 4096", "\"sliding_window\": 0"), &c),
              "sliding_window = 0 must be positive");
}

/* ---- refusals ---- */

static void test_errors(void) {
    ModelConfig c;
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "\"hidden_size\": 2048,", ""), &c), "hidden_size is missing");
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "\"hidden_size\"", "\"Hidden_Size\""), &c), "hidden_size is missing");
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "\"num_key_value_heads\": 8", "\"num_key_value_heads\": 3"), &c),
              "num_key_value_heads = 3 does not divide num_attention_heads = 32");
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "\"num_hidden_layers\": 16", "\"num_hidden_layers\": 16.5"), &c),
              "num_hidden_layers = 16.5 is not an integer");
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "\"num_hidden_layers\": 16", "\"num_hidden_layers\": \"16\""), &c),
              "num_hidden_layers must be an integer, got a string");
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "\"rope_type\": \"llama3\"", "\"rope_type\": \"yarn\""), &c),
              "rope_scaling.rope_type = \"yarn\" is not supported");
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "\"rope_type\": \"llama3\"", "\"type\": \"linear\""), &c),
              "rope_scaling.type = \"linear\" is not supported");
    const char *both_types = "\"rope_type\": \"llama3\", \"type\": \"dynamic\"";
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "\"rope_type\": \"llama3\"", both_types), &c), "disagree");
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "\"factor\": 32.0, ", ""), &c), "rope_scaling.factor is missing");
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "\"factor\": 32.0", "\"factor\": 0.5"), &c),
              "rope_scaling.factor = 0.5 must be >= 1");
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\""), &c),
              "hidden_act = \"gelu\" is not supported");
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "\"attention_bias\": false", "\"attention_bias\": true"), &c),
              "attention_bias = true is not supported");
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "\"mlp_bias\": false", "\"mlp_bias\": true"), &c),
              "mlp_bias = true is not supported");
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "\"intermediate_size\": 8192", "\"intermediate_size\": -8192"), &c),
              "intermediate_size = -8192 must be positive");
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "\"head_dim\": 64", "\"head_dim\": 63"), &c),
              "head_dim = 63 must be even");
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "\"num_hidden_layers\": 16", "\"num_hidden_layers\": 300"), &c),
              "num_hidden_layers = 300 exceeds the limit of 256");
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "\"vocab_size\": 128256", "\"vocab_size\": 4294967296"), &c),
              "vocab_size = 4294967296 exceeds");
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "\"bos_token_id\": 128000", "\"bos_token_id\": 128256"), &c),
              "bos_token_id = 128256 is outside the vocabulary");
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "[128001, 128008, 128009]", "[128001, \"x\"]"), &c),
              "eos_token_id[1] must be an integer");
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "\"model_type\": \"llama\"", "\"model_type\": \"gemma\""), &c),
              "model_type = \"gemma\" is not supported");
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "\"model_type\": \"llama\",", ""), &c), "model_type is missing");
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "LlamaForCausalLM", "LlamaForSequenceClassification"), &c),
              "is not a causal language model");
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "\"use_cache\": true", "\"use_cache\": true, \"hidden_size\": 4096"), &c),
              "hidden_size appears twice");
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "\"pretraining_tp\": 1", "\"partial_rotary_factor\": 0.5"), &c),
              "partial_rotary_factor = 0.5 is not supported");
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "\"use_cache\": true",
                               "\"use_cache\": true, \"quantization_config\": {\"quant_method\": \"awq\"}"), &c),
              "quantization_config is set");
    const char *second_theta = "\"rope_theta\": 10000.0, \"rms_norm_eps\"";
    CHECK_ERR(read_text(edited(LLAMA_3_1_TRANSFORMERS_5, "\"rms_norm_eps\"", second_theta), &c),
              "rope_theta = 10000 and rope_parameters.rope_theta = 500000 disagree");
    CHECK_ERR(read_text(edited(QWEN2_5_0_5B, "\"num_key_value_heads\": 2,", ""), &c),
              "num_key_value_heads is missing (HF's qwen2 config would take 32");
    CHECK_ERR(read_text(edited(QWEN2_5_0_5B, "\"use_sliding_window\": false", "\"use_sliding_window\": true"), &c),
              "use_sliding_window = true is not supported");
    CHECK_ERR(read_text(DEEPSEEK_V2_LITE, &c), "makes layers 1..26 mixture-of-experts");
    CHECK_ERR(read_text(edited(DEEPSEEK_V2_LITE, "\"first_k_dense_replace\": 1", "\"first_k_dense_replace\": 27"), &c),
              "rope_scaling.mscale_all_dim = 0.707 is not supported");

    const char *path = write_file("broken.json", "{\"model_type\": \"llama\",\n \"hidden_size\": 2048,,}");
    CHECK_ERR(hf_config_read(path, &c), "broken.json: invalid JSON at line 2");
    CHECK_ERR(hf_config_read(write_file("empty.json", ""), &c), "empty.json: invalid JSON");
    CHECK_ERR(hf_config_read(write_file("list.json", "[1, 2]"), &c), "must be a JSON object");
    CHECK_ERR(hf_config_read("/nonexistent/config.json", &c), "/nonexistent/config.json: cannot open");
    CHECK_ERR(read_text(edited(LLAMA_3_2_1B, "\"hidden_size\": 2048", "\"hidden_size\": 2048.5"), &c),
              "config.json: hidden_size = 2048.5 is not an integer");
}

/* An inline "arch" object in an mlatrain config: the same keys, misspellings refused. */
static void test_inline_arch(void) {
    const char *text = "{\"model_type\": \"llama\", \"vocab_size\": 256, \"hidden_size\": 64,"
                       " \"intermediate_size\": 160, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
                       " \"num_key_value_heads\": 2}";
    cJSON *arch = cJSON_Parse(text);
    ModelConfig c;
    if (CHECK_OK(hf_config_from_json(arch, "teacher.arch", HF_KEYS_REJECT_UNKNOWN, &c)))
        CHECK(c.head_dim == 16 && c.rope.theta == 10000.0 && strcmp(c.architecture, "LlamaForCausalLM") == 0,
              "inline arch defaults");
    cJSON_AddNumberToObject(arch, "num_hiden_layers", 4);
    CHECK_ERR(hf_config_from_json(arch, "teacher.arch", HF_KEYS_REJECT_UNKNOWN, &c),
              "teacher.arch: unknown key \"num_hiden_layers\"");
    CHECK_OK(hf_config_from_json(arch, "teacher.arch", HF_KEYS_IGNORE_UNKNOWN, &c));
    cJSON_Delete(arch);
}

/* ---- writing ---- */

/* A DeepSeek-V2 student converted from `teacher`: every layer MLA except those in gqa_layers. */
static ModelConfig student_of(const ModelConfig *teacher, int64_t r, int64_t dr, int64_t q_lora, const int *gqa_layers,
                              int n_gqa) {
    ModelConfig s = *teacher;
    snprintf(s.model_type, sizeof s.model_type, "deepseek_v2");
    snprintf(s.architecture, sizeof s.architecture, "DeepseekV2ForCausalLM");
    s.mla = (MlaDims){.kv_lora_rank = r, .q_lora_rank = q_lora, .qk_nope_head_dim = teacher->head_dim,
                      .qk_rope_head_dim = dr, .v_head_dim = teacher->head_dim, .latent_norm = 1, .q_norm = 1};
    for (int l = 0; l < s.num_hidden_layers; l++) s.layer_attention[l] = ATTENTION_MLA;
    for (int i = 0; i < n_gqa; i++) s.layer_attention[gqa_layers[i]] = ATTENTION_GQA;
    return s;
}

static void test_deepseek_round_trip(void) {
    ModelConfig llama, qwen, back;
    if (!CHECK_OK(read_text(LLAMA_3_2_1B, &llama)) || !CHECK_OK(read_text(QWEN2_5_0_5B, &qwen))) return;
    char path[512];
    snprintf(path, sizeof path, "%s/student.json", tmp_dir);

    /* X-EcoMLA's 6.4x student of Llama-3.2-1B: r = 128, dr = 32, full-rank q. */
    ModelConfig s = student_of(&llama, 128, 32, 0, NULL, 0);
    CHECK(model_config_kv_values_per_token(&s, 0) == 160, "MLA kv values per token: r + dr = 160, got %lld",
          (long long)model_config_kv_values_per_token(&s, 0));
    CHECK(model_config_kv_values_per_token(&llama, 0) / (double)model_config_kv_values_per_token(&s, 0) == 6.4,
          "6.4x smaller cache");
    if (CHECK_OK(hf_config_write_deepseek_v2(&s, DT_F32, path)) && CHECK_OK(hf_config_read(path, &back)))
        CHECK_SAME(&back, &s, "all-MLA llama3 student, q_lora_rank null");
    char *text = slurp(path);
    cJSON *json = text ? cJSON_Parse(text) : NULL;
    CHECK(json != NULL, "the written config parses");
    if (json) {
        const cJSON *q = cJSON_GetObjectItemCaseSensitive(json, "q_lora_rank");
        CHECK(q && cJSON_IsNull(q), "q_lora_rank null for a full-rank q_proj");
        const cJSON *kv = cJSON_GetObjectItemCaseSensitive(json, "num_key_value_heads");
        CHECK(kv && kv->valuedouble == 32, "num_key_value_heads = num_attention_heads");
        const cJSON *dense = cJSON_GetObjectItemCaseSensitive(json, "first_k_dense_replace");
        CHECK(dense && dense->valuedouble == 16, "first_k_dense_replace = num_hidden_layers");
        const char *ints[] = {"n_routed_experts", "n_shared_experts", "moe_layer_freq", "n_group", "topk_group"};
        for (int i = 0; i < 5; i++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(json, ints[i]);
            CHECK(v && cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble), "%s is an integer", ints[i]);
        }
        const cJSON *sc = cJSON_GetObjectItemCaseSensitive(json, "rope_scaling");
        CHECK(sc && cJSON_IsObject(sc), "llama3 scaling kept: it changes the student's slow frequencies");
        CHECK(strstr(text, "\"rope_theta\":\t500000.0") && strstr(text, "\"routed_scaling_factor\":\t1.0") &&
                  strstr(text, "\"rms_norm_eps\":\t1e-05"),
              "floats written as Python writes them");
        const cJSON *eos = cJSON_GetObjectItemCaseSensitive(json, "eos_token_id");
        CHECK(cJSON_IsArray(eos) && cJSON_GetArraySize(eos) == 3 && cJSON_GetArrayItem(eos, 2)->valuedouble == 128009,
              "the eos list is written whole");
    }
    cJSON_Delete(json);
    free(text);
    /* torch_dtype says what the weights beside the config are. */
    const DType dtypes[] = {DT_F32, DT_BF16, DT_F16};
    const char *const torch_names[] = {"float32", "bfloat16", "float16"};
    for (int i = 0; i < 3; i++) {
        if (!CHECK_OK(hf_config_write_deepseek_v2(&s, dtypes[i], path))) continue;
        text = slurp(path);
        json = text ? cJSON_Parse(text) : NULL;
        const cJSON *td = json ? cJSON_GetObjectItemCaseSensitive(json, "torch_dtype") : NULL;
        CHECK(cJSON_IsString(td) && strcmp(td->valuestring, torch_names[i]) == 0, "%s weights: torch_dtype %s, got %s",
              dtype_name(dtypes[i]), torch_names[i], cJSON_IsString(td) ? td->valuestring : "none");
        cJSON_Delete(json);
        free(text);
    }
    CHECK_ERR(hf_config_write_deepseek_v2(&s, DT_I32, path), "not a dtype of HF weights");
    CHECK_ERR(hf_config_deepseek_v2_check_stock(&s), "vLLM and SGLang read any rope_scaling as DeepSeek's YaRN");

    /* Qwen2 student with a q_lora_rank bottleneck: stock loaders compute the same model. */
    s = student_of(&qwen, 256, 32, 384, NULL, 0);
    if (CHECK_OK(hf_config_write_deepseek_v2(&s, DT_F32, path)) && CHECK_OK(hf_config_read(path, &back)))
        CHECK_SAME(&back, &s, "all-MLA qwen2 student, q_lora_rank 384");
    CHECK_OK(hf_config_deepseek_v2_check_stock(&s));

    /* Hybrid: two GQA layers, the MLA rope re-based, llama3 scaling, a sliding window. */
    int gqa[] = {0, 5};
    s = student_of(&llama, 64, 16, 0, gqa, 2);
    s.mla.rope_theta = sqrt(500000.0);
    s.mla.qk_nope_head_dim = 0;
    s.sliding_window = 8192;
    if (CHECK_OK(hf_config_write_deepseek_v2(&s, DT_F32, path)) && CHECK_OK(hf_config_read(path, &back))) {
        CHECK_SAME(&back, &s, "hybrid student");
        CHECK(back.layer_attention[0] == ATTENTION_GQA && back.layer_attention[1] == ATTENTION_MLA &&
                  model_config_mla_layers(&back) == 14,
              "hybrid layers");
        CHECK(model_config_kv_values_per_token(&back, 5) == 1024 && model_config_kv_values_per_token(&back, 6) == 80,
              "hybrid kv values per token");
        CHECK(model_config_mla_rope_theta(&back) == sqrt(500000.0) && back.rope.theta == 500000.0,
              "GQA and MLA rope bases kept apart");
    }
    CHECK_ERR(hf_config_deepseek_v2_check_stock(&s), "2 of 16 layers keep GQA attention");

    /* The same kind of export after transformers 5 loaded and saved it again. */
    if (CHECK_OK(read_text(HYBRID_RESAVED_BY_TRANSFORMERS_5, &back))) {
        int gqa3[] = {3};
        s = student_of(&llama, 128, 32, 0, gqa3, 1);
        s.mla.rope_theta = 707.1067811865476;
        s.n_eos_token_ids = 0; /* that file's eos_token_id is the single id 128001 */
        CHECK_SAME(&back, &s, "hybrid export re-saved by transformers 5");
    }

    /* Llama 3 scaling that changes none of the exported frequencies is left out, exactly. */
    ModelConfig fast = student_of(&llama, 64, 4, 0, NULL, 0);
    fast.rope.theta = 10000.0;
    fast.rope.factor = 8.0;
    if (CHECK_OK(hf_config_write_deepseek_v2(&fast, DT_F32, path)) && CHECK_OK(hf_config_read(path, &back))) {
        CHECK(back.rope.scaling == ROPE_SCALING_NONE, "scaling that changes no exported frequency is dropped");
        float f1[2], f2[2];
        CHECK_OK(rope_inv_freq(&fast.rope, 4, f1));
        CHECK_OK(rope_inv_freq(&back.rope, 4, f2));
        CHECK(memcmp(f1, f2, sizeof f1) == 0, "the frequencies read back are the student's, bit for bit");
    }
    CHECK_OK(hf_config_deepseek_v2_check_stock(&fast));

    s = student_of(&qwen, 256, 32, 0, NULL, 0);
    s.hidden_size = 900;
    CHECK_ERR(hf_config_deepseek_v2_check_stock(&s), "hidden_size = 900 is not a multiple of num_attention_heads = 14");
    CHECK_ERR(hf_config_write_deepseek_v2(&llama, DT_F32, path), "no layer has MLA attention");
    s = student_of(&qwen, 256, 32, 0, NULL, 0);
    s.mla.latent_norm = 0;
    CHECK_ERR(hf_config_write_deepseek_v2(&s, DT_F32, path), "no latent norm");
    s = student_of(&qwen, 256, 32, 384, NULL, 0);
    s.mla.q_norm = 0;
    CHECK_ERR(hf_config_write_deepseek_v2(&s, DT_F32, path), "q bottleneck has no norm (q_a_layernorm)");
    s = student_of(&qwen, 256, 31, 0, NULL, 0);
    CHECK_ERR(hf_config_write_deepseek_v2(&s, DT_F32, path), "qk_rope_head_dim = 31 must be even");
    s = student_of(&qwen, 0, 32, 0, NULL, 0);
    CHECK_ERR(model_config_validate(&s), "kv_lora_rank = 0 must be positive");

    s = student_of(&qwen, 256, 32, 0, NULL, 0);
    CHECK_ERR(hf_config_write_deepseek_v2(&s, DT_F32, "/nonexistent/dir/config.json"), "cannot create a temporary file");
    /* A failed rename (the target is a folder) leaves the old target and no temporary file. */
    snprintf(path, sizeof path, "%s/folder", tmp_dir);
    CHECK(mkdir(path, 0755) == 0, "mkdir %s", path);
    CHECK_ERR(hf_config_write_deepseek_v2(&s, DT_F32, path), "rename from");
    rmdir(path);
    CHECK(leftover_temp_files() == 0, "no temporary file left behind");
}

static void test_gqa_round_trip(void) {
    const char *texts[] = {LLAMA_3_2_1B, LLAMA_3_1_8B, QWEN2_5_0_5B, MISTRAL_7B_V0_3, MISTRAL_7B_V0_1, MISTRAL_NEMO};
    char path[512];
    snprintf(path, sizeof path, "%s/teacher.json", tmp_dir);
    for (int i = 0; i < 6; i++) {
        ModelConfig c, back;
        if (!CHECK_OK(read_text(texts[i], &c))) continue;
        if (CHECK_OK(hf_config_write_gqa(&c, DT_F32, path)) && CHECK_OK(hf_config_read(path, &back)))
            CHECK_SAME(&back, &c, c.model_type);
    }
    ModelConfig c;
    if (CHECK_OK(read_text(LLAMA_3_2_1B, &c))) {
        c.qkv_bias = 1;
        CHECK_ERR(hf_config_write_gqa(&c, DT_F32, path), "only qwen2 has them");
    }
    CHECK(leftover_temp_files() == 0, "no temporary file left behind");
}

int main(void) {
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_llama_3_2_1b();
    test_llama_3_1_8b();
    test_qwen2_5_0_5b();
    test_mistral();
    test_errors();
    test_inline_arch();
    test_deepseek_round_trip();
    test_gqa_round_trip();

    DIR *d = opendir(tmp_dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        char p[600];
        snprintf(p, sizeof p, "%s/%s", tmp_dir, e->d_name);
        if (e->d_name[0] != '.') unlink(p);
    }
    if (d) closedir(d);
    rmdir(tmp_dir);
    return test_finish("test_hf_config");
}
