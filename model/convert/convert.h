/* GQA -> MLA conversion: builds a DeepSeek-V2-style student from a pretrained GQA teacher (joint
 * SVD as X-EcoMLA, partial-RoPE selection as MHA2MLA, the lossless form as TransMLA) and reports
 * what each layer kept. */
#pragma once

#include <stdint.h>
#include <stdio.h>

#include "model/model.h"

typedef enum {
    MLA_INIT_SVD = 0,   /* joint SVD of [W_K_nope ; W_V] over the query heads (X-EcoMLA) */
    MLA_INIT_EXACT,     /* GQA written as MLA with no loss: keys in the shared rope part, latent = V */
    MLA_INIT_RANDOM,    /* attention from scratch; embeddings, norms and MLPs from the teacher */
} MlaInit;

typedef enum {
    ROPE_SELECT_HIGH = 0,   /* the dr/2 fastest-rotating pairs */
    ROPE_SELECT_LOW,        /* the dr/2 slowest */
    ROPE_SELECT_UNIFORM,    /* every (hd/dr)-th pair from the fastest */
    ROPE_SELECT_NORM,       /* the pairs carrying most of |q| x |k| (MHA2MLA's 2-norm criterion) */
    ROPE_SELECT_ROROPE,     /* RoRoPE (TransMLA) on pairs DeepSeek's config can express, fitted maps for the rest */
    ROPE_SELECT_ROROPE_FREE,/* RoRoPE keeping whichever slots cost most to lose (export needs a re-base) */
} RopeSelect;

typedef enum {
    LATENT_BASIS_WEIGHTS = 0,   /* SVD of the stacked weights (X-EcoMLA) */
    LATENT_BASIS_ACTIVATIONS,   /* principal directions of the projected calibration activations, weighted */
} LatentBasis;

typedef enum {
    OUTPUT_FIT_STUDENT_INPUT = 0, /* o_proj refitted on the student's own stream, layer after layer */
    OUTPUT_FIT_TEACHER_INPUT,     /* o_proj refitted with each layer fed the teacher's input */
    OUTPUT_FIT_NONE,              /* o_proj as the conversion made it */
} OutputFit;

/* The ridge of the o_proj fit, relative to the mean square of the heads' outputs: on SmolLM2-135M
 * at 6x (docs/convert.md) 0.1 left the held-out perplexity lowest of the ridges tried (0.1 to 10
 * fitted on the student's stream, 0.01 to 1 on the teacher's input), with 4096 and 8192 tokens. */
#define OUTPUT_FIT_RIDGE 0.1

typedef struct {
    MlaInit init;
    RopeSelect rope_select;
    LatentBasis latent_basis;
    MlaDims dims;               /* r, q_lora, dn, dr, dv, latent_norm; exact sets its own (see .c) */
    double energy;              /* > 0: each layer's rank is the smallest keeping this share of the
                                   spectrum, rounded up to 8; the student uses the largest, capped
                                   by dims.kv_lora_rank when that is > 0 */
    int gqa_layers[MODEL_MAX_LAYERS];   /* layers that keep the teacher's GQA attention */
    int n_gqa_layers;
    int auto_gqa_layers;        /* > 0: this many more layers keep GQA, those whose conversion moves the
                                   residual stream most (measured by a first conversion pass) */
    OutputFit output_fit;       /* svd only: each layer's o_proj refitted to the student's own attention
                                   (output_fit.h) */
    double output_fit_ridge;    /* that fit's ridge (> 0; OUTPUT_FIT_RIDGE) */
    int drop_biases;            /* a teacher with q/k/v biases: drop them (else refused) */
    uint64_t seed;              /* random init, padding rows */
    /* Calibration tokens (i32 host array, n_calib_seqs x calib_seq): pair norms for rope_select =
     * norm when from_data, the latent-norm scales, and the report. */
    const int32_t *calib_ids;
    int64_t n_calib_seqs, calib_seq;
    int calib_from_data;        /* tokens are real text; otherwise norm selection uses weight norms */
} ConvertOptions;

typedef struct {
    AttentionKind kind;
    int64_t rank_chosen;        /* by energy, before taking the largest over layers */
    double kept_energy;         /* sum of kept sigma^2 / total, at the rank used */
    double attn_rel_error;      /* ||o_student - o_teacher|| / ||o_teacher|| on the calibration tokens,
                                   each layer fed the teacher's own input */
    double stream_error;        /* ||o_student - o_teacher|| / ||x||: the same error against the residual
                                   stream it is added to (what a hybrid's choice of layers weighs) */
    int auto_gqa;               /* kept as GQA by auto_gqa_layers */
    int rope_pairs[MODEL_MAX_LAYERS];  /* teacher pair index behind each student rope pair */
    int rope_comps[MODEL_MAX_LAYERS];  /* RoRoPE: the rotated component of that pair (else 0) */
    int n_rope_pairs;
} LayerReport;

typedef struct {
    int n_layers;
    LayerReport layers[MODEL_MAX_LAYERS];
    MlaDims dims;                       /* what the student got */
    int64_t kv_bytes_teacher;           /* per token, all layers, bf16 */
    int64_t kv_bytes_student;
    int64_t calib_tokens;
    char method[160];
    /* Training-free quality, when the caller measured it on held-out tokens (eval_tokens > 0). */
    double source_ppl, student_ppl, kl, top1_agree;
    int64_t eval_windows, eval_tokens;
} ConvertReport;

/* Builds the student on the teacher's backend. The teacher is read, not changed. */
Status mla_convert(Model **student, Model *teacher, const ConvertOptions *opts, ConvertReport *report);

/* The per-layer table and the totals, human-readable. */
void convert_report_print(const ConvertReport *r, FILE *out);
/* The report as JSON, written atomically. */
Status convert_report_write_json(const ConvertReport *r, const char *path);

/* The teacher pair indices (P = dr/2 of them, ascending) a selection keeps, from hd/2 pairs.
 * importance[i] (hd/2 values) is read by ROPE_SELECT_NORM only. */
Status rope_select_pairs(RopeSelect how, int head_dim, int rope_dim, const double *importance, int *pairs);
