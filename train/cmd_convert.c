/* The convert command: config -> the GQA model to upcycle -> calibration tokens -> mla_convert ->
 * report.json and the exported student (plus the tokenizer files beside the source model). */
#include "train/cmd_convert.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core/backend.h"
#include "core/clock.h"
#include "core/file_io.h"
#include "data/loader.h"
#include "model/convert/convert.h"
#include "model/hf/hf_model.h"
#include "train/calibration.h"
#include "train/config.h"
#include "train/evaluate.h"
#include "train/models.h"
#include "train/tokenizer_files.h"

enum { CONVERT_MAX_SETS = 64, CALIBRATION_SEQ_MAX = 512 };

void cmd_convert_usage(void) {
    printf("usage: mlatrain convert --config FILE --out DIR [--set key.path=value ...] [--dtype bf16|f16|f32]\n"
           "\n"
           "Converts student.init_from (a GQA model: an HF folder or an inline arch) into an MLA student\n"
           "as student.mla says (init svd|exact|random, rope_select, ranks or energy), prints a per-layer\n"
           "report (kept energy, attention-output error on calibration tokens, KV bytes per token) and\n"
           "writes DIR/report.json and the student in DeepSeek-V2's HF layout (default bf16). With\n"
           "data.val it also prints the source's and the student's perplexity there (windows of the\n"
           "calibration length, up to eval.max_windows): the student's training-free quality.\n"
           "Calibration tokens come from data.train (else data.val) when given, else are drawn at random.\n");
}

/* The source's and the student's perplexity on data.val, windows of the calibration length (the
 * models' rope tables cover that much), up to eval.max_windows: training-free quality in one number. */
static Status training_free_quality(const Config *cfg, Model *source, Model *student, int64_t seq, ConvertReport *r) {
    const char *patterns[CONFIG_LIST_MAX];
    for (int i = 0; i < cfg->data.val.count; i++) patterns[i] = cfg->data.val.items[i];
    LoaderOptions lo = {.patterns = patterns, .n_patterns = cfg->data.val.count, .seq_len = (int)seq,
                        .seed = (uint64_t)cfg->run.seed, .rank = 0, .world = 1, .shuffle = 0};
    Loader *val = NULL;
    if (loader_open(&val, &lo) != STATUS_OK) return error_context("%s: data.val: ", cfg->name);
    int64_t batch = cfg->train.micro_batch > 0 ? cfg->train.micro_batch : 1;
    TeacherFigures tf;
    EvalFigures ef;
    Status st = evaluate_teacher(source, val, cfg->eval.max_windows, batch, &tf);
    if (st == STATUS_OK) st = evaluate_student(student, source, val, cfg->eval.max_windows, batch, &ef);
    if (st == STATUS_OK) {
        r->source_ppl = tf.ppl;
        r->student_ppl = ef.ppl;
        r->kl = ef.kl;
        r->top1_agree = ef.top1_agree;
        r->eval_windows = ef.windows;
        r->eval_tokens = ef.tokens;
    }
    loader_close(val);
    return st;
}

static Status run_convert(const Config *cfg, const char *out_dir, DType dtype) {
    if (!cfg->student.has_mla) return errorf("%s: student.mla: required by convert (it says what to build)", cfg->name);
    Backend *be = NULL;
    BackendOptions bo = {.threads = (int)cfg->run.threads, .device = 0};
    TRY(backend_create(&be, config_device_name(cfg->device), bo));
    Model *source = NULL, *student = NULL;
    Calibration cal;
    memset(&cal, 0, sizeof cal);
    ConvertReport *report = calloc(1, sizeof *report);
    Status st = report ? backend_check_ops(be) : errorf("convert: out of memory");

    double t0 = monotonic_seconds();
    int64_t seq = cfg->data.seq_len < CALIBRATION_SEQ_MAX ? cfg->data.seq_len : CALIBRATION_SEQ_MAX;
    if (st == STATUS_OK) st = load_student_source(cfg, be, seq, &source);
    if (st == STATUS_OK) st = config_check_layers(cfg, source->cfg.num_hidden_layers);
    if (st == STATUS_OK)
        printf("source: %s, %lld layers, %lld parameters (%.1f s)\n", source->cfg.architecture,
               (long long)source->cfg.num_hidden_layers, (long long)model_num_parameters(source), monotonic_seconds() - t0);
    if (st == STATUS_OK) st = calibration_tokens(cfg, source->cfg.vocab_size, seq, &cal);
    ConvertOptions o = convert_options_from_config(cfg);
    o.calib_ids = cal.ids;
    o.n_calib_seqs = cal.n_seqs;
    o.calib_seq = cal.seq;
    o.calib_from_data = cal.from_data;

    double t1 = monotonic_seconds();
    if (st == STATUS_OK) st = mla_convert(&student, source, &o, report);
    if (st == STATUS_OK && cfg->data.val.count > 0) st = training_free_quality(cfg, source, student, seq, report);
    if (st == STATUS_OK) {
        printf("calibration: %lld sequences of %lld tokens (%s)\n", (long long)cal.n_seqs, (long long)cal.seq,
               cal.source);
        convert_report_print(report, stdout);
        printf("converted in %.1f s\n", monotonic_seconds() - t1);
        fflush(stdout);
    }
    char path[4096];
    if (st == STATUS_OK) st = make_dirs(out_dir);
    if (st == STATUS_OK) {
        snprintf(path, sizeof path, "%s/report.json", out_dir);
        st = convert_report_write_json(report, path);
    }
    double t2 = monotonic_seconds();
    ExportOptions eo = {.dtype = dtype, .max_shard_bytes = (size_t)5 << 30, .allow_rebase = cfg->student.mla.allow_rebase};
    if (st == STATUS_OK && hf_model_export(student, out_dir, &eo) != STATUS_OK)
        st = error_context("export to %s: ", out_dir);
    const char *tokenizer = tokenizer_files_source(cfg);
    int copied = 0;
    if (st == STATUS_OK && tokenizer) st = tokenizer_files_copy(tokenizer, out_dir, &copied);
    if (st == STATUS_OK) printf("wrote %s (%s, %.1f s)\n", out_dir, dtype_name(dtype), monotonic_seconds() - t2);
    if (st == STATUS_OK && copied) printf("copied %d tokenizer files from %s\n", copied, tokenizer);

    calibration_free(&cal);
    model_destroy(student);
    model_destroy(source);
    free(report);
    backend_destroy(be);
    return st;
}

Status cmd_convert(int argc, char **argv, int *show_help) {
    const char *config_path = NULL, *out_dir = NULL;
    const char *sets[CONVERT_MAX_SETS];
    int n_sets = 0;
    DType dtype = DT_BF16;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            *show_help = 1;
            return STATUS_OK;
        }
        if (i + 1 >= argc) return errorf("convert: %s: unknown option or missing value (see mlatrain convert --help)", a);
        const char *v = argv[++i];
        if (strcmp(a, "--config") == 0) config_path = v;
        else if (strcmp(a, "--out") == 0) out_dir = v;
        else if (strcmp(a, "--set") == 0) {
            if (n_sets == CONVERT_MAX_SETS) return errorf("convert: more than %d --set options", CONVERT_MAX_SETS);
            sets[n_sets++] = v;
        } else if (strcmp(a, "--dtype") == 0) {
            if (strcmp(v, "bf16") == 0) dtype = DT_BF16;
            else if (strcmp(v, "f16") == 0) dtype = DT_F16;
            else if (strcmp(v, "f32") == 0) dtype = DT_F32;
            else return errorf("convert: --dtype: expected bf16, f16 or f32, got \"%s\"", v);
        } else {
            return errorf("convert: unknown option %s (see mlatrain convert --help)", a);
        }
    }
    if (!config_path) return errorf("convert: --config FILE is required (see mlatrain convert --help)");
    if (!out_dir) return errorf("convert: --out DIR is required (see mlatrain convert --help)");
    Config *cfg = calloc(1, sizeof *cfg);
    if (!cfg) return errorf("convert: out of memory");
    Status st = config_load(cfg, config_path, sets, n_sets);
    if (st == STATUS_OK) st = run_convert(cfg, out_dir, dtype);
    free(cfg);
    return st;
}
