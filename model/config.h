/* The architecture of a model, teacher or student, in HuggingFace's terms (config.json keys), plus
 * the MLA dimensions of a DeepSeek-V2-style student and which of its layers keep GQA attention. */
#pragma once

#include <stdint.h>

#include "core/status.h"
#include "model/rope.h"

enum { MODEL_MAX_LAYERS = 256, MODEL_NAME_MAX = 64, MODEL_EOS_IDS_MAX = 16 };

typedef enum { ATTENTION_GQA = 0, ATTENTION_MLA = 1 } AttentionKind;

/* DeepSeek-V2's attention widths (config.json names). */
typedef struct {
    int64_t kv_lora_rank;       /* r: latent width, what the cache holds per token (plus the rope key) */
    int64_t q_lora_rank;        /* 0 = full-rank q_proj; else q_a_proj -> (q_a_layernorm) -> q_b_proj */
    int64_t qk_nope_head_dim;   /* dn */
    int64_t qk_rope_head_dim;   /* dr: the rope key shared by all heads */
    int64_t v_head_dim;         /* dv */
    int latent_norm;            /* kv_a_layernorm present (stock DeepSeek loaders require it) */
    int q_norm;                 /* with q_lora_rank: q_a_layernorm present (stock loaders require it);
                                   0 = a linear bottleneck, q = W_qb W_qa a, the norm written at export */
    int attention_bias;         /* biases on q_proj (q_a_proj with q_lora_rank) and on the latent and
                                   rope rows of kv_a_proj_with_mqa: a Qwen2 teacher's q/k/v biases */
    /* Base of the rope key's frequencies as DeepSeek loaders compute them, rope_theta^(-2i/dr) before
     * rope's scaling; 0 = rope.theta. Export sets it when the pairs conversion kept need a re-based
     * theta; a hybrid student read back keeps its GQA layers' base in rope.theta and this one here. */
    double rope_theta;
} MlaDims;

typedef struct {
    char architecture[MODEL_NAME_MAX];   /* "LlamaForCausalLM", "Qwen2ForCausalLM", ... */
    char model_type[MODEL_NAME_MAX];     /* "llama", "qwen2", "mistral", "deepseek_v2" */
    int64_t vocab_size;
    int64_t hidden_size;                 /* D */
    int64_t intermediate_size;           /* F, SwiGLU width */
    int64_t num_hidden_layers;           /* L */
    int64_t num_attention_heads;         /* H */
    int64_t num_key_value_heads;         /* K (GQA layers) */
    int64_t head_dim;                    /* hd (GQA layers); HF default hidden_size / H */
    int64_t max_position_embeddings;
    double rms_norm_eps;
    RopeConfig rope;
    int tie_word_embeddings;
    int qkv_bias;                        /* q/k/v projections carry a bias (Qwen2) */
    /* 0, except between hf_config and hf_model on an epsilon-independent DeepSeek-V2 export
     * (docs/export.md): the rms_norm_eps the model was trained with, rms_norm_eps being then 1e-6
     * and the residual stream scaled by sqrt(1e-6 / rms_norm_eps_trained). */
    double rms_norm_eps_trained;
    int64_t bos_token_id, eos_token_id;  /* -1 when absent; the first of a list */
    /* config.json's eos_token_id when it is a list (an instruct model stops on end-of-text and on
     * end-of-turn alike), kept whole to be written back; eos_token_ids[0] == eos_token_id. 0: a
     * single id, or none. */
    int n_eos_token_ids;
    int64_t eos_token_ids[MODEL_EOS_IDS_MAX];
    int64_t sliding_window;              /* 0 = none; else Mistral's window: our full causal attention
                                            equals it only up to that length (model_config_check_seq_len) */

    /* Student only: layers whose attention is MLA (the rest keep the teacher's GQA). */
    MlaDims mla;
    AttentionKind layer_attention[MODEL_MAX_LAYERS];
} ModelConfig;

/* Checks every dimension for sense (positive, divisible where it must be, within limits); the
 * error names the offending key. */
Status model_config_validate(const ModelConfig *cfg);

/* Number of MLA layers. */
int model_config_mla_layers(const ModelConfig *cfg);

/* KV-cache values per token per layer for layer l: 2*K*hd (GQA) or r + dr (MLA); 0 for a layer
 * index outside the model. */
int64_t model_config_kv_values_per_token(const ModelConfig *cfg, int layer);

/* The base of the MLA rope key's frequencies: mla.rope_theta when set, else rope.theta. */
double model_config_mla_rope_theta(const ModelConfig *cfg);

/* Refuses sequences the model would attend differently from our full causal attention: longer
 * than a sliding window. */
Status model_config_check_seq_len(const ModelConfig *cfg, int64_t seq_len);
