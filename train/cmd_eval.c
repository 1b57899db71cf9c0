/* The eval command: the student of a config, of a checkpoint, or of every checkpoint of one or more
 * runs (the sweep), against the config's teacher on data.val and eval.tasks; figures on stdout,
 * --json, and for a sweep sweep.jsonl, sweep.csv and an aligned table. */
#include "train/cmd_eval.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/file_io.h"
#include "data/loader.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#include "model/hf/hf_model.h"
#include "train/models.h"

enum { EVAL_MAX_SETS = 64, EVAL_MAX_RUNS = 256, EVAL_BATCH = 4, EVAL_PATH = 4096 };

void cmd_eval_usage(void) {
    printf("usage: mlatrain eval --config FILE [--checkpoint PATH] [--set key.path=value ...] [--json OUT]\n"
           "       mlatrain eval --sweep RUN_DIR [RUN_DIR ...] [--config FILE] [--set ...] [--out DIR]\n"
           "\n"
           "Evaluates a student against the config's teacher on data.val: windows of seq_len + 1 tokens\n"
           "in order, up to eval.max_windows (0 = all), the mean loss over every predicted token,\n"
           "perplexity, and with a teacher the KL(teacher || student) at temperature 1 and the top-1\n"
           "agreement; and the accuracy on each multiple-choice task of eval.tasks (docs/eval.md).\n"
           "The student is the config's (student.init_from, converted to MLA when student.mla is\n"
           "given), or with --checkpoint the one PATH holds: a checkpoint folder\n"
           "(run.dir/checkpoints/step_N), a run directory (its newest valid checkpoint) or a model\n"
           "folder in HF layout (run.dir/final, an export, convert's output).\n"
           "--json OUT writes {\"teacher\": {\"loss\", \"ppl\"}, \"student\": {\"loss\", \"ppl\", \"kl\",\n"
           "\"top1_agree\"}, \"windows\", \"tokens\", \"kv_bytes_per_token\": {\"teacher\", \"student\"},\n"
           "\"tasks\": {NAME: {\"acc\", \"acc_norm\", \"n\"}}}, with --checkpoint also \"checkpoint\" (and for\n"
           "a checkpoint \"step\" and \"train_tokens\").\n"
           "\n"
           "--sweep evaluates, for each run directory, the converted student at init (step 0) and every\n"
           "checkpoint in it, oldest first, and writes sweep.jsonl (one --json object per line, with\n"
           "\"run\"), sweep.csv and a table (run, step, tokens, ppl, KL, top-1, KV bytes/token) to stdout.\n"
           "Each run is read from its effective_config.json; --config FILE instead supplies what the\n"
           "evaluation uses (teacher, data.val, seq_len, eval.*, device, threads, micro_batch) for\n"
           "every run, so that runs are compared on the same data and teacher. --set applies to\n"
           "that config. --out DIR (default .) is where the two files go.\n");
}

static int64_t kv_bytes_per_token(const ModelConfig *c) {
    int64_t values = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) values += model_config_kv_values_per_token(c, l);
    return 2 * values; /* bf16 */
}

static int64_t eval_batch(const Config *cfg) {
    return cfg->train.micro_batch > 0 ? cfg->train.micro_batch : EVAL_BATCH;
}

/* What evaluating a student needs besides it: the backend, the teacher, data.val and the teacher's
 * own figures. A sweep builds it once per distinct setting and shares it across checkpoints. */
typedef struct {
    Config *cfg;                  /* a copy: the evaluation settings */
    Backend *be;
    Model *teacher;
    Loader *val;
    TeacherFigures tf;
    TaskScores teacher_tasks;
    int64_t T, batch;
    int id;                       /* which setup a sweep row used */
} EvalSetup;

static void setup_close(EvalSetup *s) {
    loader_close(s->val);
    model_destroy(s->teacher);
    backend_destroy(s->be);
    free(s->cfg);
    memset(s, 0, sizeof *s);
}

/* Whether two configs evaluate the same way (same teacher, data, windows, tasks and backend). */
static int same_setup(const Config *a, const Config *b) {
    return a->device == b->device && a->run.threads == b->run.threads && a->has_teacher == b->has_teacher &&
           strcmp(a->teacher.path, b->teacher.path) == 0 && strcmp(a->teacher.arch.json, b->teacher.arch.json) == 0 &&
           a->teacher.seed == b->teacher.seed && a->data.seq_len == b->data.seq_len &&
           memcmp(&a->data.val, &b->data.val, sizeof a->data.val) == 0 && a->eval.max_windows == b->eval.max_windows &&
           memcmp(&a->eval.tasks, &b->eval.tasks, sizeof a->eval.tasks) == 0 && eval_batch(a) == eval_batch(b);
}

static Status setup_open(EvalSetup *s, const Config *cfg, int id) {
    memset(s, 0, sizeof *s);
    if (cfg->data.val.count == 0) return errorf("%s: data.val: evaluation needs validation data", cfg->name);
    s->cfg = malloc(sizeof *s->cfg);
    if (!s->cfg) return errorf("eval: out of memory");
    memcpy(s->cfg, cfg, sizeof *cfg);
    s->id = id;
    s->T = cfg->data.seq_len;
    s->batch = eval_batch(cfg);
    BackendOptions bo = {.threads = (int)cfg->run.threads, .device = 0};
    Status st = backend_create(&s->be, config_device_name(cfg->device), bo);
    if (st == STATUS_OK) st = backend_check_ops(s->be);
    if (st == STATUS_OK) st = build_teacher(cfg, s->be, s->T, &s->teacher);
    const char *patterns[CONFIG_LIST_MAX];
    for (int i = 0; i < cfg->data.val.count; i++) patterns[i] = cfg->data.val.items[i];
    LoaderOptions lo = {.patterns = patterns, .n_patterns = cfg->data.val.count, .seq_len = (int)s->T,
                        .seed = (uint64_t)cfg->run.seed, .rank = 0, .world = 1, .shuffle = 0};
    if (st == STATUS_OK && loader_open(&s->val, &lo) != STATUS_OK) st = error_context("%s: data.val: ", cfg->name);
    if (st == STATUS_OK && s->teacher) {
        st = evaluate_teacher(s->teacher, s->val, cfg->eval.max_windows, s->batch, &s->tf);
        if (st == STATUS_OK) st = tasks_evaluate(s->teacher, &cfg->eval.tasks, s->batch, &s->teacher_tasks);
    }
    if (st != STATUS_OK) setup_close(s);
    return st;
}

static Status evaluate_with(EvalSetup *s, Model *student, EvalFigures *e) {
    const Config *cfg = s->cfg;
    TRY(model_set_precision(student, DT_F32, config_compute_dtype(cfg)));
    if ((int64_t)loader_vocab_size(s->val) > student->cfg.vocab_size)
        return errorf("%s: data.val: vocab_size %u exceeds the student's %lld", cfg->name, loader_vocab_size(s->val),
                      (long long)student->cfg.vocab_size);
    if (s->teacher && s->teacher->cfg.vocab_size != student->cfg.vocab_size)
        return errorf("%s: the teacher's vocab_size %lld differs from the student's %lld", cfg->name,
                      (long long)s->teacher->cfg.vocab_size, (long long)student->cfg.vocab_size);
    TRY(evaluate_student(student, s->teacher, s->val, cfg->eval.max_windows, s->batch, e));
    return tasks_evaluate(student, &cfg->eval.tasks, s->batch, &e->tasks);
}

/* ---- one evaluation's record, as --json, a sweep.jsonl line and a sweep.csv row ---- */

typedef struct {
    const char *run;              /* NULL outside a sweep */
    int from_checkpoint;          /* a checkpoint (step and tokens known) or, with from_model, a model folder */
    int from_model;
    char checkpoint[EVAL_PATH];
    int64_t step, train_tokens;
    EvalFigures e;
    int has_teacher;
    TeacherFigures t;
    TaskScores teacher_tasks;
    int64_t kv_student, kv_teacher;
    int setup_id;
} EvalRecord;

static void record_fill(EvalRecord *r, const EvalSetup *s, const Model *student) {
    r->has_teacher = s->teacher != NULL;
    r->t = s->tf;
    r->teacher_tasks = s->teacher_tasks;
    r->kv_student = kv_bytes_per_token(&student->cfg);
    r->kv_teacher = s->teacher ? kv_bytes_per_token(&s->teacher->cfg) : 0;
    r->setup_id = s->id;
}

static void add_tasks(cJSON *parent, const TaskScores *ts) {
    if (ts->count == 0) return;
    cJSON *o = cJSON_AddObjectToObject(parent, "tasks");
    for (int i = 0; i < ts->count; i++) {
        cJSON *k = cJSON_AddObjectToObject(o, ts->task[i].name);
        cJSON_AddNumberToObject(k, "acc", ts->task[i].acc);
        cJSON_AddNumberToObject(k, "acc_norm", ts->task[i].acc_norm);
        cJSON_AddNumberToObject(k, "n", (double)ts->task[i].n);
    }
}

static cJSON *record_json(const EvalRecord *r) {
    cJSON *root = cJSON_CreateObject();
    if (r->run) cJSON_AddStringToObject(root, "run", r->run);
    if (r->from_model) {
        cJSON_AddStringToObject(root, "checkpoint", r->checkpoint);
    } else if (r->run || r->from_checkpoint) {
        cJSON_AddNumberToObject(root, "step", (double)r->step);
        cJSON_AddNumberToObject(root, "train_tokens", (double)r->train_tokens);
        if (r->from_checkpoint) cJSON_AddStringToObject(root, "checkpoint", r->checkpoint);
        else cJSON_AddNullToObject(root, "checkpoint");
    }
    if (r->has_teacher) {
        cJSON *o = cJSON_AddObjectToObject(root, "teacher");
        cJSON_AddNumberToObject(o, "loss", r->t.loss);
        cJSON_AddNumberToObject(o, "ppl", r->t.ppl);
        add_tasks(o, &r->teacher_tasks);
    }
    cJSON *o = cJSON_AddObjectToObject(root, "student");
    cJSON_AddNumberToObject(o, "loss", r->e.loss);
    cJSON_AddNumberToObject(o, "ppl", r->e.ppl);
    if (r->has_teacher) {
        cJSON_AddNumberToObject(o, "kl", r->e.kl);
        cJSON_AddNumberToObject(o, "top1_agree", r->e.top1_agree);
    }
    cJSON_AddNumberToObject(root, "windows", (double)r->e.windows);
    cJSON_AddNumberToObject(root, "tokens", (double)r->e.tokens);
    cJSON *kv = cJSON_AddObjectToObject(root, "kv_bytes_per_token");
    if (r->has_teacher) cJSON_AddNumberToObject(kv, "teacher", (double)r->kv_teacher);
    cJSON_AddNumberToObject(kv, "student", (double)r->kv_student);
    add_tasks(root, &r->e.tasks);
    return root;
}

/* Pretty JSON ending in a newline, as text files do. */
static Status write_json(const char *path, const EvalRecord *r) {
    cJSON *root = record_json(r);
    char *text = root ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    size_t n = text ? strlen(text) : 0;
    char *line = text ? malloc(n + 2) : NULL;
    Status st = line ? STATUS_OK : errorf("%s: out of memory", path);
    if (st == STATUS_OK) {
        memcpy(line, text, n);
        line[n] = '\n';
        st = file_write_atomic(path, line, n + 1);
    }
    free(line);
    free(text);
    return st;
}

static void print_record(const EvalRecord *r) {
    if (r->from_model) printf("model %s\n", r->checkpoint);
    else if (r->from_checkpoint)
        printf("checkpoint %s: step %lld, %lld tokens trained\n", r->checkpoint, (long long)r->step,
               (long long)r->train_tokens);
    if (r->has_teacher)
        printf("teacher: loss %.4f  ppl %.3f  KV %lld bytes/token\n", r->t.loss, r->t.ppl, (long long)r->kv_teacher);
    printf("student: loss %.4f  ppl %.3f", r->e.loss, r->e.ppl);
    if (r->has_teacher) printf("  kl %.4f  top-1 agreement %.3f", r->e.kl, r->e.top1_agree);
    printf("  KV %lld bytes/token\n", (long long)r->kv_student);
    printf("%lld windows, %lld tokens\n", (long long)r->e.windows, (long long)r->e.tokens);
    for (int i = 0; i < r->e.tasks.count; i++) {
        const TaskScore *k = &r->e.tasks.task[i];
        printf("task %s (%lld items): student accuracy %.4f, per-token %.4f", k->name, (long long)k->n, k->acc,
               k->acc_norm);
        if (r->has_teacher && i < r->teacher_tasks.count)
            printf("; teacher %.4f, per-token %.4f", r->teacher_tasks.task[i].acc, r->teacher_tasks.task[i].acc_norm);
        printf("\n");
    }
}

/* ---- mlatrain eval --config FILE [--checkpoint PATH] ---- */

static Status run_eval(const Config *cfg, const char *checkpoint, const char *json_path) {
    EvalSetup s;
    TRY(setup_open(&s, cfg, 0));
    Model *student = NULL;
    EvalRecord *r = calloc(1, sizeof *r);
    Status st = r ? STATUS_OK : errorf("eval: out of memory");
    if (st == STATUS_OK && checkpoint && !is_checkpoint_path(checkpoint)) {
        /* A model folder: run.dir/final, an export, convert's output. */
        st = hf_model_load(&student, s.be, checkpoint, s.T);
        r->from_model = 1;
        snprintf(r->checkpoint, sizeof r->checkpoint, "%s", checkpoint);
    } else if (st == STATUS_OK && checkpoint) {
        CheckpointState cs;
        st = load_student_checkpoint(checkpoint, s.be, s.T, &student, r->checkpoint, sizeof r->checkpoint, &cs);
        r->from_checkpoint = 1;
        r->step = cs.step;
        r->train_tokens = cs.tokens;
    } else if (st == STATUS_OK) {
        st = build_student(cfg, s.be, s.T, &student, NULL, NULL);
    }
    if (st == STATUS_OK) st = evaluate_with(&s, student, &r->e);
    if (st == STATUS_OK) {
        record_fill(r, &s, student);
        print_record(r);
    }
    if (st == STATUS_OK && json_path) st = write_json(json_path, r);
    free(r);
    model_destroy(student);
    setup_close(&s);
    return st;
}

/* ---- the sweep ---- */

typedef struct {
    EvalRecord *rows;
    int n, cap;
    FILE *jsonl;
    char jsonl_path[EVAL_PATH], csv_path[EVAL_PATH];
} Sweep;

static Status sweep_add(Sweep *sw, const EvalRecord *r) {
    if (sw->n == sw->cap) {
        int cap = sw->cap ? 2 * sw->cap : 16;
        EvalRecord *grown = realloc(sw->rows, (size_t)cap * sizeof *grown);
        if (!grown) return errorf("eval: out of memory");
        sw->rows = grown;
        sw->cap = cap;
    }
    sw->rows[sw->n++] = *r;
    cJSON *root = record_json(r);
    char *text = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!text) return errorf("%s: out of memory", sw->jsonl_path);
    /* A line per evaluation as it completes: a long sweep shows its progress in the file. */
    int bad = fprintf(sw->jsonl, "%s\n", text) < 0 || fflush(sw->jsonl) != 0;
    free(text);
    return bad ? errorf("%s: write failed: %s", sw->jsonl_path, strerror(errno)) : STATUS_OK;
}

/* Every task name of the rows, in the order first seen: the CSV's and the table's task columns. */
static int task_columns(const Sweep *sw, const char *names[TASKS_MAX]) {
    int n = 0;
    for (int i = 0; i < sw->n; i++)
        for (int k = 0; k < sw->rows[i].e.tasks.count; k++) {
            const char *name = sw->rows[i].e.tasks.task[k].name;
            int seen = 0;
            for (int j = 0; j < n && !seen; j++) seen = strcmp(names[j], name) == 0;
            if (!seen && n < TASKS_MAX) names[n++] = name;
        }
    return n;
}

static const TaskScore *find_task(const EvalRecord *r, const char *name) {
    for (int k = 0; k < r->e.tasks.count; k++)
        if (strcmp(r->e.tasks.task[k].name, name) == 0) return &r->e.tasks.task[k];
    return NULL;
}

/* A CSV field: quoted when it holds a comma, a quote or a line break. */
static void csv_text(FILE *f, const char *s) {
    if (!strpbrk(s, ",\"\n\r")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static Status write_csv(const Sweep *sw) {
    const char *names[TASKS_MAX];
    int nt = task_columns(sw, names);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return errorf("%s: out of memory", sw->csv_path);
    fprintf(f, "run,step,tokens,loss,ppl,kl,top1_agree,kv_bytes_per_token,teacher_loss,teacher_ppl,"
               "teacher_kv_bytes_per_token,windows,eval_tokens,checkpoint");
    for (int j = 0; j < nt; j++) fprintf(f, ",%s_acc,%s_acc_norm,%s_n", names[j], names[j], names[j]);
    fputc('\n', f);
    for (int i = 0; i < sw->n; i++) {
        const EvalRecord *r = &sw->rows[i];
        csv_text(f, r->run);
        fprintf(f, ",%lld,%lld,%.9g,%.9g,", (long long)r->step, (long long)r->train_tokens, r->e.loss, r->e.ppl);
        if (r->has_teacher) fprintf(f, "%.9g,%.9g", r->e.kl, r->e.top1_agree);
        else fputc(',', f);
        fprintf(f, ",%lld,", (long long)r->kv_student);
        if (r->has_teacher) fprintf(f, "%.9g,%.9g,%lld", r->t.loss, r->t.ppl, (long long)r->kv_teacher);
        else fputs(",,", f);
        fprintf(f, ",%lld,%lld,", (long long)r->e.windows, (long long)r->e.tokens);
        if (r->from_checkpoint) csv_text(f, r->checkpoint);
        for (int j = 0; j < nt; j++) {
            const TaskScore *k = find_task(r, names[j]);
            if (k) fprintf(f, ",%.9g,%.9g,%lld", k->acc, k->acc_norm, (long long)k->n);
            else fputs(",,,", f);
        }
        fputc('\n', f);
    }
    if (fclose(f) != 0 || !buf) {
        free(buf);
        return errorf("%s: out of memory", sw->csv_path);
    }
    Status st = file_write_atomic(sw->csv_path, buf, len);
    free(buf);
    return st;
}

/* The width of a task's column: its name, or "0.000/0.000". */
static int task_width(const char *name) {
    int n = (int)strlen(name);
    return n > 11 ? n : 11;
}

static void print_task_cells(const TaskScores *ts, const char *const *names, int nt) {
    for (int j = 0; j < nt; j++) {
        const TaskScore *k = NULL;
        for (int i = 0; i < ts->count && !k; i++)
            if (strcmp(ts->task[i].name, names[j]) == 0) k = &ts->task[i];
        char cell[64] = "-";
        if (k) snprintf(cell, sizeof cell, "%.3f/%.3f", k->acc, k->acc_norm);
        printf("  %*s", task_width(names[j]), cell);
    }
}

/* The aligned table: a teacher line wherever the evaluation setup changes, then a line per row. */
static void print_table(const Sweep *sw) {
    const char *names[TASKS_MAX];
    int nt = task_columns(sw, names);
    int w = (int)strlen("(teacher)");
    for (int i = 0; i < sw->n; i++)
        if ((int)strlen(sw->rows[i].run) > w) w = (int)strlen(sw->rows[i].run);
    printf("\n%-*s %8s %12s %12s %9s %7s %13s", w, "run", "step", "tokens", "student ppl", "KL", "top-1",
           "KV bytes/tok");
    for (int j = 0; j < nt; j++) printf("  %*s", task_width(names[j]), names[j]);
    printf("\n");
    int last_setup = -1;
    for (int i = 0; i < sw->n; i++) {
        const EvalRecord *r = &sw->rows[i];
        if (r->has_teacher && r->setup_id != last_setup) {
            printf("%-*s %8s %12s %12.3f %9s %7s %13lld", w, "(teacher)", "-", "-", r->t.ppl, "-", "-",
                   (long long)r->kv_teacher);
            print_task_cells(&r->teacher_tasks, names, nt);
            printf("\n");
        }
        last_setup = r->setup_id;
        printf("%-*s %8lld %12lld %12.3f", w, r->run, (long long)r->step, (long long)r->train_tokens, r->e.ppl);
        if (r->has_teacher) printf(" %9.4f %7.3f", r->e.kl, r->e.top1_agree);
        else printf(" %9s %7s", "-", "-");
        printf(" %13lld", (long long)r->kv_student);
        print_task_cells(&r->e.tasks, names, nt);
        printf("\n");
    }
    printf("(tokens: trained on; KL and top-1 agreement: against the teacher on data.val%s)\n",
           nt ? "; tasks: accuracy by summed / per-token log-likelihood" : "");
}

/* Evaluates one student and records it: a row for the table and CSV, a line of sweep.jsonl at once. */
static Status sweep_row(Sweep *sw, EvalSetup *s, const char *run, Model *student, int64_t step, int64_t tokens,
                        const char *checkpoint) {
    EvalRecord *r = calloc(1, sizeof *r);
    if (!r) return errorf("eval: out of memory");
    r->run = run;
    r->step = step;
    r->train_tokens = tokens;
    r->from_checkpoint = checkpoint != NULL;
    if (checkpoint) snprintf(r->checkpoint, sizeof r->checkpoint, "%s", checkpoint);
    Status st = evaluate_with(s, student, &r->e);
    if (st == STATUS_OK) {
        record_fill(r, s, student);
        st = sweep_add(sw, r);
    }
    if (st == STATUS_OK)
        fprintf(stderr, "sweep: %s step %lld: ppl %.3f\n", run, (long long)step, r->e.ppl);
    free(r);
    return st;
}

static Status sweep_run(Sweep *sw, EvalSetup *s, int *next_id, const char *run, const Config *eval_cfg,
                        const char *const *sets, int n_sets) {
    char path[EVAL_PATH];
    if (snprintf(path, sizeof path, "%s/%s", run, CONFIG_EFFECTIVE_FILE) >= (int)sizeof path)
        return errorf("%s: path too long", run);
    Config *run_cfg = calloc(1, sizeof *run_cfg);
    if (!run_cfg) return errorf("eval: out of memory");
    /* Without --config the run's own config evaluates it, and --set applies to it. */
    Status st = config_load(run_cfg, path, eval_cfg ? NULL : sets, eval_cfg ? 0 : n_sets);
    if (st != STATUS_OK) st = error_context("sweep: %s: ", run);
    const Config *use = eval_cfg ? eval_cfg : run_cfg;
    if (st == STATUS_OK && (!s->cfg || !same_setup(s->cfg, use))) {
        if (s->cfg) setup_close(s);
        st = setup_open(s, use, (*next_id)++);
    }

    /* Step 0: the student as the run built it, at the run's own sequence length (conversion
     * calibrates on windows of that length), its rope tables covering the evaluation's too. */
    if (st == STATUS_OK) {
        int64_t T = run_cfg->data.seq_len > s->T ? run_cfg->data.seq_len : s->T;
        if (run_cfg->student.has_mla && run_cfg->data.seq_len < s->T && run_cfg->data.seq_len < 512)
            fprintf(stderr, "sweep: %s: note: the student at init is converted for seq_len %lld where the run used "
                            "%lld: its calibration windows, and so its weights, may differ from the run's\n", run,
                    (long long)s->T, (long long)run_cfg->data.seq_len);
        Model *student = NULL;
        if (build_student(run_cfg, s->be, T, &student, NULL, NULL) != STATUS_OK) {
            fprintf(stderr, "sweep: %s: the student at init is skipped: %s\n", run, error_message());
        } else {
            st = sweep_row(sw, s, run, student, 0, 0, NULL);
        }
        model_destroy(student);
    }

    int64_t *steps = NULL;
    int n = 0;
    if (st == STATUS_OK) st = checkpoint_list(run, &steps, &n);
    if (st == STATUS_OK && n == 0) fprintf(stderr, "sweep: %s: no checkpoints\n", run);
    for (int i = 0; st == STATUS_OK && i < n; i++) {
        char dir[EVAL_PATH];
        st = checkpoint_step_dir(run, steps[i], dir, sizeof dir);
        if (st != STATUS_OK) break;
        Model *student = NULL;
        CheckpointState cs;
        if (load_student_checkpoint(dir, s->be, s->T, &student, NULL, 0, &cs) != STATUS_OK) {
            fprintf(stderr, "sweep: %s: skipping %s: %s\n", run, dir, error_message());
            continue;
        }
        st = sweep_row(sw, s, run, student, cs.step, cs.tokens, dir);
        model_destroy(student);
    }
    free(steps);
    free(run_cfg);
    return st;
}

static Status run_sweep(const char *const *runs, int n_runs, const char *config_path, const char *const *sets,
                        int n_sets, const char *out_dir) {
    Config *eval_cfg = NULL;
    if (config_path) {
        eval_cfg = calloc(1, sizeof *eval_cfg);
        if (!eval_cfg) return errorf("eval: out of memory");
        if (config_load(eval_cfg, config_path, sets, n_sets) != STATUS_OK) {
            free(eval_cfg);
            return STATUS_ERROR;
        }
    }
    Sweep sw;
    memset(&sw, 0, sizeof sw);
    Status st = STATUS_OK;
    if (mkdir(out_dir, 0755) != 0 && errno != EEXIST)
        st = errorf("eval: --out %s: cannot create: %s", out_dir, strerror(errno));
    if (st == STATUS_OK && (snprintf(sw.jsonl_path, sizeof sw.jsonl_path, "%s/sweep.jsonl", out_dir) >= EVAL_PATH ||
                            snprintf(sw.csv_path, sizeof sw.csv_path, "%s/sweep.csv", out_dir) >= EVAL_PATH))
        st = errorf("eval: --out %s: path too long", out_dir);
    if (st == STATUS_OK && !(sw.jsonl = fopen(sw.jsonl_path, "w")))
        st = errorf("%s: cannot open for writing: %s", sw.jsonl_path, strerror(errno));
    EvalSetup s;
    memset(&s, 0, sizeof s);
    int next_id = 0;
    for (int i = 0; st == STATUS_OK && i < n_runs; i++)
        st = sweep_run(&sw, &s, &next_id, runs[i], eval_cfg, sets, n_sets);
    if (s.cfg) setup_close(&s);
    if (sw.jsonl && fclose(sw.jsonl) != 0 && st == STATUS_OK)
        st = errorf("%s: write failed: %s", sw.jsonl_path, strerror(errno));
    if (st == STATUS_OK) st = write_csv(&sw);
    if (st == STATUS_OK) {
        print_table(&sw);
        printf("wrote %s and %s (%d evaluations)\n", sw.jsonl_path, sw.csv_path, sw.n);
    }
    free(sw.rows);
    free(eval_cfg);
    return st;
}

Status cmd_eval(int argc, char **argv, int *show_help) {
    const char *config_path = NULL, *json_path = NULL, *checkpoint = NULL, *out_dir = NULL;
    const char *sets[EVAL_MAX_SETS], *runs[EVAL_MAX_RUNS];
    int n_sets = 0, n_runs = 0, sweep = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            *show_help = 1;
            return STATUS_OK;
        }
        if (strcmp(a, "--sweep") == 0) {
            sweep = 1;
            while (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) {
                if (n_runs == EVAL_MAX_RUNS) return errorf("eval: more than %d run directories", EVAL_MAX_RUNS);
                runs[n_runs++] = argv[++i];
            }
            continue;
        }
        if (i + 1 >= argc) return errorf("eval: %s: unknown option or missing value (see mlatrain eval --help)", a);
        const char *v = argv[++i];
        if (strcmp(a, "--config") == 0) config_path = v;
        else if (strcmp(a, "--json") == 0) json_path = v;
        else if (strcmp(a, "--checkpoint") == 0) checkpoint = v;
        else if (strcmp(a, "--out") == 0) out_dir = v;
        else if (strcmp(a, "--set") == 0) {
            if (n_sets == EVAL_MAX_SETS) return errorf("eval: more than %d --set options", EVAL_MAX_SETS);
            sets[n_sets++] = v;
        } else {
            return errorf("eval: unknown option %s (see mlatrain eval --help)", a);
        }
    }
    if (sweep) {
        if (n_runs == 0) return errorf("eval: --sweep needs at least one run directory");
        if (checkpoint)
            return errorf("eval: --checkpoint and --sweep do not go together (a sweep reads every checkpoint)");
        if (json_path) return errorf("eval: --json is for one evaluation; a sweep writes sweep.jsonl into --out DIR");
        return run_sweep(runs, n_runs, config_path, sets, n_sets, out_dir ? out_dir : ".");
    }
    if (out_dir) return errorf("eval: --out is for --sweep (one evaluation writes --json OUT)");
    if (!config_path) return errorf("eval: --config FILE is required (see mlatrain eval --help)");
    if (checkpoint && !is_checkpoint_path(checkpoint) && !is_model_folder(checkpoint))
        return not_a_student_path("eval: --checkpoint", checkpoint);
    Config *cfg = calloc(1, sizeof *cfg);
    if (!cfg) return errorf("eval: out of memory");
    Status st = config_load(cfg, config_path, sets, n_sets);
    if (st == STATUS_OK) st = run_eval(cfg, checkpoint, json_path);
    free(cfg);
    return st;
}
