/* Models in HuggingFace's on-disk layout: loading a GQA teacher (Llama, Qwen2, Mistral) or an
 * exported DeepSeek-V2 student into a Model, and exporting a student as DeepSeek-V2. */
#pragma once

#include "core/backend.h"
#include "model/model.h"

/* Loads <dir>/config.json and its safetensors (single or sharded; bf16/f16/f32, converted to f32)
 * into a new Model on `be`, for sequences up to max_seq tokens. Every tensor the config implies
 * must be present with its shape; a tensor the architecture does not use is an error too (a
 * wrong file is better refused than half-read). A DeepSeek-V2 student is read back in mlatrain's
 * layout: interleaved rope rows permuted back to rotate-half, kv_a_proj_with_mqa and kv_b_proj
 * split, its rope frequencies those of the config. */
Status hf_model_load(Model **out, Backend *be, const char *dir, int64_t max_seq);
/* The same, the weights held in weight_dtype (f32, or bf16 with bf16 compute for a frozen model),
 * rounded tensor by tensor as they are read, so a bf16 model never exists in f32 on the device. */
Status hf_model_load_as(Model **out, Backend *be, const char *dir, int64_t max_seq, DType weight_dtype);

/* The file beside config.json that keeps MLA rope frequencies DeepSeek's config cannot say. */
#define HF_ROPE_SIDECAR "mlatrain_rope.json"

typedef struct {
    DType dtype;               /* DT_BF16 (default for serving), DT_F16 or DT_F32 (bitwise round trip) */
    size_t max_shard_bytes;    /* 0: one model.safetensors */
    int allow_rebase;          /* export MLA rope frequencies that DeepSeek's config cannot express
                                  by re-basing them (changes the model; said on stderr) */
    int keep_rope;             /* frequencies the config cannot express are written beside it, in
                                  mlatrain_rope.json, which hf_model_load reads: an exact save for
                                  mlatrain (runs, evaluation), not for stock loaders */
} ExportOptions;

/* Writes `m` (a student with MLA layers) to <dir> in DeepSeek-V2's HF layout: config.json,
 * model.safetensors (or shards + index), lm_head written even when tied; atomically per file.
 * Refuses what the format cannot express exactly (see hf_model.c) unless opts allow it.
 * opts NULL: bf16, one file, no re-basing (a zeroed ExportOptions means f32). <dir> is created
 * when missing; its config.json is removed first and written last, so a directory with a
 * config.json holds a complete model (docs/export.md). */
Status hf_model_export(const Model *m, const char *dir, const ExportOptions *opts);

/* Writes a GQA-only model in its own family's layout (llama/qwen2/mistral): tests and tools. */
Status hf_model_save_gqa(const Model *m, const char *dir, DType dtype);
