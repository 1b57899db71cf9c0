/* The HF model families config.json is read from and written as: model_type, architecture and the
 * defaults HF's config class fills in, shared by hf_config.c (reading) and hf_config_write.c. */
#pragma once

#include <stdint.h>

typedef enum { FAMILY_LLAMA, FAMILY_QWEN2, FAMILY_MISTRAL, FAMILY_DEEPSEEK_V2 } Family;

typedef struct {
    const char *model_type;
    const char *architecture;
    int64_t max_position_embeddings;   /* the HF class's default */
    int64_t default_kv_heads;          /* HF's default when the key is absent; 0 = num_attention_heads */
} FamilyInfo;

static const FamilyInfo FAMILIES[] __attribute__((unused)) = {
    [FAMILY_LLAMA] = {"llama", "LlamaForCausalLM", 2048, 0},
    [FAMILY_QWEN2] = {"qwen2", "Qwen2ForCausalLM", 32768, 32},
    [FAMILY_MISTRAL] = {"mistral", "MistralForCausalLM", 131072, 8},
    [FAMILY_DEEPSEEK_V2] = {"deepseek_v2", "DeepseekV2ForCausalLM", 2048, 0},
};
enum { N_FAMILIES = sizeof FAMILIES / sizeof FAMILIES[0] };
