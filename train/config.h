/* The run configuration (DESIGN.md section 7, version 1): a JSON file plus `--set key.path=value`
 * overrides, read strictly into typed fields; docs/config.md lists every key. */
#pragma once

#include <stdint.h>

#include "core/status.h"
#include "model/config.h"

enum {
    CONFIG_PATH_MAX = 512,        /* bytes of a path, glob or folder, with the terminating NUL */
    CONFIG_LIST_MAX = 64,         /* entries of data.train, data.val, eval.tasks */
    CONFIG_ARCH_JSON_MAX = 8192,  /* bytes of an inline arch, as compact JSON */
};

/* The file the trainer writes the effective config to, inside run.dir. */
#define CONFIG_EFFECTIVE_FILE "effective_config.json"

typedef enum { CONFIG_DEVICE_CPU = 0, CONFIG_DEVICE_CUDA } ConfigDevice;
typedef enum { CONFIG_PRECISION_AUTO = 0, CONFIG_PRECISION_FP32, CONFIG_PRECISION_BF16 } ConfigPrecision;
typedef enum { CONFIG_MODEL_INIT_RANDOM = 0 } ConfigModelInit;
typedef enum { CONFIG_MLA_INIT_SVD = 0, CONFIG_MLA_INIT_EXACT, CONFIG_MLA_INIT_RANDOM } ConfigMlaInit;
typedef enum {
    CONFIG_ROPE_SELECT_HIGH = 0,
    CONFIG_ROPE_SELECT_LOW,
    CONFIG_ROPE_SELECT_UNIFORM,
    CONFIG_ROPE_SELECT_NORM,
    CONFIG_ROPE_SELECT_ROROPE,
    CONFIG_ROPE_SELECT_ROROPE_FREE,
} ConfigRopeSelect;
typedef enum { CONFIG_LATENT_BASIS_ACTIVATIONS = 0, CONFIG_LATENT_BASIS_WEIGHTS } ConfigLatentBasis;
typedef enum { CONFIG_OUTPUT_FIT_STUDENT_INPUT = 0, CONFIG_OUTPUT_FIT_TEACHER_INPUT, CONFIG_OUTPUT_FIT_NONE } ConfigOutputFit;
/* loss.kind, in core/backend.h's LossKind order */
typedef enum { CONFIG_LOSS_FORWARD_KL = 0, CONFIG_LOSS_REVERSE_KL, CONFIG_LOSS_JSD } ConfigLossKind;
typedef enum { CONFIG_SCHEDULE_COSINE = 0, CONFIG_SCHEDULE_LINEAR, CONFIG_SCHEDULE_CONSTANT } ConfigSchedule;
/* What the student keeps for backward: every activation, or each layer's input only (the layer's
 * forward runs again in backward). */
typedef enum { CONFIG_RECOMPUTE_NONE = 0, CONFIG_RECOMPUTE_LAYERS, CONFIG_RECOMPUTE_MLP } ConfigRecompute;

/* The JSON spelling of each enum value ("cuda", "svd", "norm", "cosine", ...). */
const char *config_device_name(ConfigDevice d);
const char *config_mla_init_name(ConfigMlaInit m);
const char *config_rope_select_name(ConfigRopeSelect r);
const char *config_schedule_name(ConfigSchedule s);
const char *config_recompute_name(ConfigRecompute r);

typedef struct {
    int count;
    char items[CONFIG_LIST_MAX][CONFIG_PATH_MAX];
} ConfigPathList;

/* An architecture given inline as HF config.json keys, validated by hf_config_from_json. */
typedef struct {
    int present;
    ModelConfig model;
    char json[CONFIG_ARCH_JSON_MAX];   /* the object as given, compact; the effective config repeats it */
} ConfigArch;

/* Where a model's weights come from: an HF folder, or an inline architecture initialised at random.
 * Exactly one of path and arch. */
typedef struct {
    char path[CONFIG_PATH_MAX];   /* "" when arch is given */
    ConfigArch arch;
    ConfigModelInit init;         /* arch only */
    int64_t seed;                 /* arch only; default run.seed */
} ConfigModelSource;

typedef struct {
    int64_t kv_lora_rank;         /* r; with energy > 0, a cap on the chosen rank (0 = none) */
    int64_t qk_rope_head_dim;     /* dr, even */
    int64_t qk_nope_head_dim;     /* dn */
    int64_t v_head_dim;           /* dv */
    int64_t q_lora_rank;          /* 0 = full-rank queries */
    int n_gqa_layers;
    int64_t gqa_layers[MODEL_MAX_LAYERS];   /* distinct, in the order given */
    ConfigMlaInit init;
    ConfigRopeSelect rope_select;
    ConfigLatentBasis latent_basis;
    ConfigOutputFit output_fit;
    int64_t auto_gqa_layers;
    double energy;                /* 0 = fixed kv_lora_rank; else the share of sum sigma^2 to keep */
    int latent_norm;
    int q_norm;                   /* q_a_layernorm in training (with q_lora_rank) */
    int drop_biases;
    int64_t calibration_tokens;
    int allow_rebase;
} ConfigMla;

typedef struct {
    /* The config file's name, which errors found after loading start with; "" when parsed from text
     * without one. Not part of the JSON. */
    char name[CONFIG_PATH_MAX];

    struct {
        char dir[CONFIG_PATH_MAX];
        int64_t seed;
        int64_t threads;          /* 0 = every core */
    } run;
    ConfigDevice device;
    ConfigPrecision precision;

    int has_teacher;              /* 0: plain next-token training of the student */
    ConfigModelSource teacher;
    char teacher_cache[CONFIG_PATH_MAX]; /* teacher.cache: its top-k read from this folder instead
                                            of a forward; "" = run the teacher */

    struct {
        ConfigModelSource init_from;
        int has_mla;              /* 0: the student keeps GQA attention everywhere */
        ConfigMla mla;
    } student;

    struct {
        ConfigPathList train;     /* files or globs; may be empty outside training */
        ConfigPathList val;
        int64_t seq_len;
    } data;

    struct {
        double kl_weight;
        double ce_weight;
        double temperature;
        ConfigLossKind kind;
        double jsd_beta;          /* read with kind = jsd only */
        int64_t chunk_tokens;     /* tokens per logits chunk of the fused head; 0 = the backend's choice */
    } loss;

    struct {
        double lr;
        double min_lr;
        int64_t warmup_steps;
        ConfigSchedule schedule;
        double weight_decay;
        double beta1, beta2;
        double eps;
        double grad_clip;         /* 0 = off */
        int decay_norms_and_embeddings;
    } optim;

    struct {
        int64_t micro_batch;      /* sequences per rank per micro-step */
        int64_t global_batch;     /* sequences per optimizer step, across ranks and micro-steps */
        int64_t max_steps;
        ConfigRecompute recompute;
    } train;

    struct {
        int64_t every_steps;      /* 0 = at the end only */
        int64_t keep_last;
    } checkpoint;

    struct {
        int64_t every_steps;      /* 0 = never */
        int64_t max_windows;      /* 0 = every window */
        ConfigPathList tasks;     /* multiple-choice task files (docs/eval.md) */
    } eval;

    struct {
        int64_t every_steps;
    } log;

    struct {
        int zero1;                /* shard the optimizer state across ranks (ZeRO-1) */
        double timeout_s;         /* a collective not done by then aborts the job */
        int overlap;              /* GPU: sum each layer's gradients while backward goes on */
    } dist;
} Config;

/* Reads the config file at path, applies the overrides ("key.path=value", in order) and validates
 * the result into *out. Every error is one line starting with path and naming the JSON path. */
Status config_load(Config *out, const char *path, const char *const *sets, int n_sets);

/* The same from JSON text; name (may be NULL) starts the error messages. */
Status config_parse_json(Config *out, const char *json_text, const char *name, const char *const *sets,
                         int n_sets);

/* The effective config: every key with its value, defaults filled in, as pretty JSON that parses
 * back into the same Config. The caller frees *out_text. */
Status config_effective_json(const Config *cfg, char **out_text);

/* Writes config_effective_json(cfg) to path atomically (temporary file in the same folder, fsync,
 * rename). */
Status config_write_effective(const Config *cfg, const char *path);

/* Checks made once more is known. Each error names the key at fault. */
/* Training needs data.train. */
Status config_check_train(const Config *cfg);
/* train.global_batch must be a multiple of micro_batch * world_size. */
Status config_check_world(const Config *cfg, int world_size);
/* Every student.mla.gqa_layers entry must be a layer of a model with num_layers layers. */
Status config_check_layers(const Config *cfg, int64_t num_layers);
