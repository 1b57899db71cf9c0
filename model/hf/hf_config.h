/* HuggingFace config.json I/O: reading Llama, Qwen2, Mistral and mlatrain's own DeepSeek-V2 exports
 * into a ModelConfig, and writing a student as DeepSeek-V2 (or a GQA model in its own family). */
#pragma once

#include <cjson/cJSON.h>

#include "core/status.h"
#include "core/tensor.h"
#include "model/config.h"

/* What an HF config.json may hold beyond the keys mlatrain reads. Both policies refuse keys that
 * change the computation in a way mlatrain does not implement (hf_config.c lists them). */
typedef enum {
    HF_KEYS_IGNORE_UNKNOWN = 0,   /* a config.json from the Hub: it carries many irrelevant keys */
    HF_KEYS_REJECT_UNKNOWN,       /* an inline "arch" in an mlatrain config: a misspelt key is an error */
} HfKeyPolicy;

/* Reads <path> (a config.json file) into *cfg and validates it; errors start with the path. */
Status hf_config_read(const char *path, ModelConfig *cfg);

/* The same from an already-parsed JSON object; errors start with `where` (a file name, or the
 * JSON path of an inline arch, e.g. "teacher.arch"). */
Status hf_config_from_json(const cJSON *obj, const char *where, HfKeyPolicy policy, ModelConfig *cfg);

/* The DeepSeek-V2 config.json of an MLA student (at least one MLA layer; the latent norm on):
 * dense MLPs in every layer, num_key_value_heads = num_attention_heads, rope_theta =
 * model_config_mla_rope_theta(cfg). Llama 3 rope scaling is kept for a hybrid and whenever it
 * changes one of the rope key's frequencies; otherwise it is left out, which is exact and what
 * every loader reads alike. mlatrain's own keys, which stock loaders ignore:
 *   mlatrain_gqa_layers               the layers that keep GQA attention ([] = all MLA)
 *   mlatrain_gqa_num_key_value_heads  their kv heads, head dim and q/k/v bias (for an all-MLA
 *   mlatrain_gqa_head_dim             student, those of the teacher it was converted from)
 *   mlatrain_gqa_qkv_bias
 *   mlatrain_gqa_rope_theta           hybrids: the GQA layers' rope base (rope_theta is the MLA one)
 *   mlatrain_sliding_window           the teacher's sliding window, when it had one
 * torch_dtype names `dtype`, the dtype of the weights beside it (f32, bf16 or f16), and
 * eos_token_id is a list when the source's was. The caller owns the object (cJSON_Delete). */
Status hf_config_deepseek_v2_json(const ModelConfig *cfg, DType dtype, cJSON **out);

/* Writes hf_config_deepseek_v2_json(cfg, dtype) to path atomically (temporary file in the same
 * folder, fsync, rename). */
Status hf_config_write_deepseek_v2(const ModelConfig *cfg, DType dtype, const char *path);

/* Succeeds when stock DeepSeek-V2 loaders (HF transformers, vLLM, SGLang) build and compute the
 * model the exported config.json describes; otherwise the error says which loader differs and why
 * (GQA layers, Llama 3 rope scaling on the exported frequencies, a hidden size HF refuses). The
 * export step decides whether that is a warning or an error. */
Status hf_config_deepseek_v2_check_stock(const ModelConfig *cfg);

/* The config.json of a model with GQA attention in every layer, in its own family (model_type
 * "llama", "qwen2" or "mistral"), e.g. a teacher-shaped model created for tests. */
Status hf_config_gqa_json(const ModelConfig *cfg, DType dtype, cJSON **out);
Status hf_config_write_gqa(const ModelConfig *cfg, DType dtype, const char *path);

/* The shortest decimal that reads back as x, written as Python's repr writes floats (so a value
 * read from a config.json is written back as it was). */
void hf_format_double(char *buf, size_t n, double x);
