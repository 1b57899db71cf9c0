/* The eval command: builds the models as a run would (converting the student when student.mla
 * says), evaluates on data.val by DESIGN.md's definition, prints the figures and writes --json. */
#include "train/cmd_eval.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/file_io.h"
#include "data/loader.h"
#include "train/evaluate.h"
#include "train/models.h"

enum { EVAL_MAX_SETS = 64, EVAL_BATCH = 4 };

void cmd_eval_usage(void) {
    printf("usage: mlatrain eval --config FILE [--set key.path=value ...] [--json OUT]\n"
           "\n"
           "Evaluates the config's student (student.init_from, converted to MLA when student.mla is\n"
           "given) and teacher on data.val: windows of seq_len + 1 tokens in order, up to\n"
           "eval.max_windows (0 = all), the mean loss over every predicted token, perplexity, and with\n"
           "a teacher the KL(teacher || student) at temperature 1 and the top-1 agreement.\n"
           "--json OUT writes {\"teacher\": {\"loss\", \"ppl\"}, \"student\": {\"loss\", \"ppl\", \"kl\",\n"
           "\"top1_agree\"}, \"windows\", \"tokens\", \"kv_bytes_per_token\": {\"teacher\", \"student\"}}.\n");
}

static int64_t kv_bytes_per_token(const ModelConfig *c) {
    int64_t values = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) values += model_config_kv_values_per_token(c, l);
    return 2 * values; /* bf16 */
}

static Status write_json(const char *path, const EvalFigures *s, const TeacherFigures *t, const Model *student,
                         const Model *teacher) {
    cJSON *root = cJSON_CreateObject();
    if (teacher) {
        cJSON *o = cJSON_AddObjectToObject(root, "teacher");
        cJSON_AddNumberToObject(o, "loss", t->loss);
        cJSON_AddNumberToObject(o, "ppl", t->ppl);
    }
    cJSON *o = cJSON_AddObjectToObject(root, "student");
    cJSON_AddNumberToObject(o, "loss", s->loss);
    cJSON_AddNumberToObject(o, "ppl", s->ppl);
    if (teacher) {
        cJSON_AddNumberToObject(o, "kl", s->kl);
        cJSON_AddNumberToObject(o, "top1_agree", s->top1_agree);
    }
    cJSON_AddNumberToObject(root, "windows", (double)s->windows);
    cJSON_AddNumberToObject(root, "tokens", (double)s->tokens);
    cJSON *kv = cJSON_AddObjectToObject(root, "kv_bytes_per_token");
    if (teacher) cJSON_AddNumberToObject(kv, "teacher", (double)kv_bytes_per_token(&teacher->cfg));
    cJSON_AddNumberToObject(kv, "student", (double)kv_bytes_per_token(&student->cfg));
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return errorf("%s: out of memory", path);
    Status st = file_write_atomic(path, text, strlen(text));
    free(text);
    return st;
}

static Status run_eval(const Config *cfg, const char *json_path) {
    if (cfg->data.val.count == 0) return errorf("%s: data.val: evaluation needs validation data", cfg->name);
    Backend *be = NULL;
    BackendOptions bo = {.threads = (int)cfg->run.threads, .device = 0};
    TRY(backend_create(&be, config_device_name(cfg->device), bo));
    Model *teacher = NULL, *student = NULL;
    Loader *val = NULL;
    Status st = backend_check_ops(be);
    int64_t T = cfg->data.seq_len;
    if (st == STATUS_OK) st = build_teacher(cfg, be, T, &teacher);
    if (st == STATUS_OK) st = build_student(cfg, be, T, &student, NULL, NULL);
    const char *patterns[CONFIG_LIST_MAX];
    for (int i = 0; i < cfg->data.val.count; i++) patterns[i] = cfg->data.val.items[i];
    LoaderOptions lo = {.patterns = patterns, .n_patterns = cfg->data.val.count, .seq_len = (int)T,
                        .seed = (uint64_t)cfg->run.seed, .rank = 0, .world = 1, .shuffle = 0};
    if (st == STATUS_OK && loader_open(&val, &lo) != STATUS_OK) st = error_context("%s: data.val: ", cfg->name);
    if (st == STATUS_OK && (int64_t)loader_vocab_size(val) > student->cfg.vocab_size)
        st = errorf("%s: data.val: vocab_size %u exceeds the student's %lld", cfg->name, loader_vocab_size(val),
                    (long long)student->cfg.vocab_size);
    if (st == STATUS_OK && teacher && teacher->cfg.vocab_size != student->cfg.vocab_size)
        st = errorf("%s: the teacher's vocab_size %lld differs from the student's %lld", cfg->name,
                    (long long)teacher->cfg.vocab_size, (long long)student->cfg.vocab_size);
    EvalFigures s;
    TeacherFigures t = {0};
    int64_t batch = cfg->train.micro_batch > 0 ? cfg->train.micro_batch : EVAL_BATCH;
    if (st == STATUS_OK && teacher) st = evaluate_teacher(teacher, val, cfg->eval.max_windows, batch, &t);
    if (st == STATUS_OK) st = evaluate_student(student, teacher, val, cfg->eval.max_windows, batch, &s);
    if (st == STATUS_OK) {
        if (teacher) printf("teacher: loss %.4f  ppl %.3f  KV %lld bytes/token\n", t.loss, t.ppl,
                            (long long)kv_bytes_per_token(&teacher->cfg));
        printf("student: loss %.4f  ppl %.3f", s.loss, s.ppl);
        if (teacher) printf("  kl %.4f  top-1 agreement %.3f", s.kl, s.top1_agree);
        printf("  KV %lld bytes/token\n", (long long)kv_bytes_per_token(&student->cfg));
        printf("%lld windows, %lld tokens\n", (long long)s.windows, (long long)s.tokens);
    }
    if (st == STATUS_OK && json_path) st = write_json(json_path, &s, &t, student, teacher);
    loader_close(val);
    model_destroy(student);
    model_destroy(teacher);
    backend_destroy(be);
    return st;
}

Status cmd_eval(int argc, char **argv, int *show_help) {
    const char *config_path = NULL, *json_path = NULL;
    const char *sets[EVAL_MAX_SETS];
    int n_sets = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            *show_help = 1;
            return STATUS_OK;
        }
        if (i + 1 >= argc) return errorf("eval: %s: unknown option or missing value (see mlatrain eval --help)", a);
        const char *v = argv[++i];
        if (strcmp(a, "--config") == 0) config_path = v;
        else if (strcmp(a, "--json") == 0) json_path = v;
        else if (strcmp(a, "--set") == 0) {
            if (n_sets == EVAL_MAX_SETS) return errorf("eval: more than %d --set options", EVAL_MAX_SETS);
            sets[n_sets++] = v;
        } else {
            return errorf("eval: unknown option %s (see mlatrain eval --help)", a);
        }
    }
    if (!config_path) return errorf("eval: --config FILE is required (see mlatrain eval --help)");
    Config *cfg = calloc(1, sizeof *cfg);
    if (!cfg) return errorf("eval: out of memory");
    Status st = config_load(cfg, config_path, sets, n_sets);
    if (st == STATUS_OK) st = run_eval(cfg, json_path);
    free(cfg);
    return st;
}
