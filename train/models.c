/* Building a run's teacher and student from the config, shared by training, evaluation,
 * benchmarking and conversion. */
#include "train/models.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model/hf/hf_model.h"
#include "train/calibration.h"

/* weight_dtype: f32, or bf16 for a model that is only run forward (then computing in bf16 too). */
static Status build_from_source(const ConfigModelSource *src, const char *key, Backend *be, int64_t max_seq,
                                DType weight_dtype, Model **out) {
    *out = NULL;
    if (src->path[0]) {
        struct stat sb;
        if (stat(src->path, &sb) != 0 || !S_ISDIR(sb.st_mode))
            return errorf("%s: %s: %s (expected a model folder in HF layout; --set %s%s=DIR names another)", key,
                          src->path, stat(src->path, &sb) != 0 ? strerror(errno) : "not a folder", key,
                          strcmp(key, "teacher") == 0 ? ".path" : "");
        if (hf_model_load_as(out, be, src->path, max_seq, weight_dtype) != STATUS_OK)
            return error_context("%s: ", key);
        return STATUS_OK;
    }
    if (model_create_as(out, be, &src->arch.model, max_seq, weight_dtype) != STATUS_OK)
        return error_context("%s.arch: ", key);
    Status st = model_init_random(*out, (uint64_t)src->seed, 0.02f);
    if (st != STATUS_OK) {
        model_destroy(*out);
        *out = NULL;
    }
    return st;
}

DType config_compute_dtype(const Config *cfg) {
    if (cfg->precision == CONFIG_PRECISION_BF16) return DT_BF16;
    if (cfg->precision == CONFIG_PRECISION_FP32) return DT_F32;
    return cfg->device == CONFIG_DEVICE_CUDA ? DT_BF16 : DT_F32;
}

Status build_teacher(const Config *cfg, Backend *be, int64_t max_seq, Model **out) {
    *out = NULL;
    if (!cfg->has_teacher) return STATUS_OK;
    return build_from_source(&cfg->teacher, "teacher", be, max_seq, config_compute_dtype(cfg), out);
}

Status load_student_source(const Config *cfg, Backend *be, int64_t max_seq, Model **out) {
    return build_from_source(&cfg->student.init_from, "student.init_from", be, max_seq, DT_F32, out);
}

ConvertOptions convert_options_from_config(const Config *cfg) {
    const ConfigMla *m = &cfg->student.mla;
    ConvertOptions o;
    memset(&o, 0, sizeof o);
    static const MlaInit inits[] = {[CONFIG_MLA_INIT_SVD] = MLA_INIT_SVD, [CONFIG_MLA_INIT_EXACT] = MLA_INIT_EXACT,
                                    [CONFIG_MLA_INIT_RANDOM] = MLA_INIT_RANDOM};
    static const RopeSelect selects[] = {[CONFIG_ROPE_SELECT_HIGH] = ROPE_SELECT_HIGH,
                                         [CONFIG_ROPE_SELECT_LOW] = ROPE_SELECT_LOW,
                                         [CONFIG_ROPE_SELECT_UNIFORM] = ROPE_SELECT_UNIFORM,
                                         [CONFIG_ROPE_SELECT_NORM] = ROPE_SELECT_NORM,
                                         [CONFIG_ROPE_SELECT_ROROPE] = ROPE_SELECT_ROROPE,
                                         [CONFIG_ROPE_SELECT_ROROPE_FREE] = ROPE_SELECT_ROROPE_FREE};
    o.init = inits[m->init];
    o.rope_select = selects[m->rope_select];
    o.latent_basis = m->latent_basis == CONFIG_LATENT_BASIS_WEIGHTS ? LATENT_BASIS_WEIGHTS : LATENT_BASIS_ACTIVATIONS;
    static const OutputFit fits[] = {[CONFIG_OUTPUT_FIT_STUDENT_INPUT] = OUTPUT_FIT_STUDENT_INPUT,
                                     [CONFIG_OUTPUT_FIT_TEACHER_INPUT] = OUTPUT_FIT_TEACHER_INPUT,
                                     [CONFIG_OUTPUT_FIT_NONE] = OUTPUT_FIT_NONE};
    o.output_fit = fits[m->output_fit];
    o.output_fit_ridge = OUTPUT_FIT_RIDGE;
    o.dims = (MlaDims){.kv_lora_rank = m->kv_lora_rank, .q_lora_rank = m->q_lora_rank,
                       .qk_nope_head_dim = m->qk_nope_head_dim, .qk_rope_head_dim = m->qk_rope_head_dim,
                       .v_head_dim = m->v_head_dim, .latent_norm = m->latent_norm, .q_norm = m->q_norm};
    o.energy = m->energy;
    o.n_gqa_layers = m->n_gqa_layers;
    for (int i = 0; i < m->n_gqa_layers; i++) o.gqa_layers[i] = (int)m->gqa_layers[i];
    o.auto_gqa_layers = (int)m->auto_gqa_layers;
    o.drop_biases = m->drop_biases;
    o.seed = (uint64_t)cfg->run.seed;
    return o;
}

Status build_student(const Config *cfg, Backend *be, int64_t max_seq, Model **out, ConvertReport *report,
                     int *converted) {
    *out = NULL;
    if (converted) *converted = 0;
    Model *source = NULL;
    TRY(load_student_source(cfg, be, max_seq, &source));
    if (!cfg->student.has_mla) {
        *out = source;
        return STATUS_OK;
    }
    if (model_config_mla_layers(&source->cfg) > 0) {
        model_destroy(source);
        return errorf("%s: student.mla: student.init_from already has MLA layers (an exported student); drop "
                      "student.mla to continue from it as it is", cfg->name);
    }
    Status st = config_check_layers(cfg, source->cfg.num_hidden_layers);
    Calibration cal;
    memset(&cal, 0, sizeof cal);
    if (st == STATUS_OK) st = calibration_tokens(cfg, source->cfg.vocab_size, max_seq < 512 ? max_seq : 512, &cal);
    ConvertOptions o = convert_options_from_config(cfg);
    o.calib_ids = cal.ids;
    o.n_calib_seqs = cal.n_seqs;
    o.calib_seq = cal.seq;
    o.calib_from_data = cal.from_data;
    ConvertReport local;
    if (st == STATUS_OK) st = mla_convert(out, source, &o, report ? report : &local);
    if (st == STATUS_OK && converted) *converted = 1;
    calibration_free(&cal);
    model_destroy(source);
    return st;
}

static int exists(const char *dir, const char *name, int want_dir) {
    char path[4096];
    struct stat sb;
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path || stat(path, &sb) != 0) return 0;
    return want_dir ? S_ISDIR(sb.st_mode) : S_ISREG(sb.st_mode);
}

int is_checkpoint_path(const char *path) {
    return exists(path, "manifest.json", 0) || exists(path, "model.h5", 0) || exists(path, "checkpoints", 1) ||
           exists(path, CONFIG_EFFECTIVE_FILE, 0);
}

int is_model_folder(const char *path) { return exists(path, "config.json", 0); }

Status not_a_student_path(const char *option, const char *path) {
    struct stat sb;
    if (stat(path, &sb) != 0) return errorf("%s %s: %s", option, path, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return errorf("%s %s: not a folder", option, path);
    return errorf("%s %s: not a checkpoint folder (step_<N> with manifest.json), a run directory (with checkpoints/) "
                  "nor a model folder (with config.json)", option, path);
}

/* The checkpoint folder path names: itself, verified, or a run directory's newest valid one. */
static Status resolve_checkpoint(const char *path, char *dir, size_t n) {
    if (exists(path, "manifest.json", 0) || exists(path, "model.h5", 0)) {
        if (snprintf(dir, n, "%s", path) >= (int)n) return errorf("%s: path too long", path);
        return checkpoint_verify(path);
    }
    if (exists(path, "checkpoints", 1) || exists(path, CONFIG_EFFECTIVE_FILE, 0)) {
        int found = 0;
        TRY(checkpoint_find(path, dir, n, &found));
        if (!found) return errorf("%s: the run holds no complete checkpoint (in %s/checkpoints)", path, path);
        return STATUS_OK;
    }
    return errorf("%s: not a checkpoint folder (step_<N> with manifest.json) nor a run directory (with checkpoints/)",
                  path);
}

Status load_student_checkpoint(const char *path, Backend *be, int64_t max_seq, Model **out, char *dir_out, size_t n,
                               CheckpointState *state) {
    *out = NULL;
    char dir[4096];
    TRY(resolve_checkpoint(path, dir, sizeof dir));
    ModelConfig mc;
    CheckpointState cs;
    char *saved = NULL;
    TRY(checkpoint_read_header(dir, &mc, &cs, &saved));
    free(saved);
    if (model_config_check_seq_len(&mc, max_seq) != STATUS_OK) return error_context("%s: ", dir);
    Model *m = NULL;
    if (model_create(&m, be, &mc, max_seq) != STATUS_OK) return error_context("%s: ", dir);
    if (checkpoint_load(dir, m) != STATUS_OK) {
        model_destroy(m);
        return STATUS_ERROR;
    }
    if (dir_out && snprintf(dir_out, n, "%s", dir) >= (int)n) {
        model_destroy(m);
        return errorf("%s: path too long", dir);
    }
    if (state) *state = cs;
    *out = m;
    return STATUS_OK;
}
