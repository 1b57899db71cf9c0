/* Resuming: train N steps straight vs stop at step k (as a preemption does), resume, and train to
 * N: the final weights and every logged figure are bitwise equal, for k at and between checkpoint
 * boundaries, in f32 and in bf16 (whose copies are rebuilt from the f32 masters); a truncated or corrupted checkpoint is refused and the previous one used; a resume
 * whose config changed what the run computes is refused. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/prepare.h"
#include "harness.h"
#include "model_fixtures.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

static char workdir[64];

static const char *ARCH =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 257, "
    "\"hidden_size\": 24, \"intermediate_size\": 40, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
    "\"num_key_value_heads\": 2, \"head_dim\": 6, \"rope_theta\": 10000.0, \"rms_norm_eps\": 1e-5, "
    "\"tie_word_embeddings\": false, \"max_position_embeddings\": 64}";

static void prepare_data(void) {
    char train[128], val[128], root[1024], inputs[3][1100];
    snprintf(train, sizeof train, "%s/train.h5", workdir);
    snprintf(val, sizeof val, "%s/val.h5", workdir);
    snprintf(root, sizeof root, "%.*s", (int)(strrchr(__FILE__, '/') - __FILE__), __FILE__);
    const char *names[3] = {"/../README.md", "/../docs/convert.md", "/../docs/config.md"};
    const char *ptrs[3];
    for (int i = 0; i < 3; i++) {
        snprintf(inputs[i], sizeof inputs[i], "%s%s", root, names[i]);
        ptrs[i] = inputs[i];
    }
    SplitOptions split = {.out_path = train, .val_path = val, .val_fraction = 0.15, .seed = 3};
    PrepareResult res;
    CHECK_OK(prepare_text(ptrs, 3, TEXT_DOCS_PARAGRAPH, &split, &res));
}

/* Distillation of an MLA student (converted at start) from a random teacher: 10 steps of 4
 * sequences in 2 micro-batches, checkpoints every 4 steps, evaluation every 5. */
static Config *config_precision(const char *run, int seed, const char *precision) {
    char json[4096];
    snprintf(json, sizeof json,
             "{\"run\": {\"dir\": \"%s/%s\", \"seed\": %d}, \"precision\": \"%s\","
             " \"teacher\": {\"arch\": %s, \"init\": \"random\", \"seed\": 4},"
             " \"student\": {\"init_from\": {\"arch\": %s, \"init\": \"random\", \"seed\": 9},"
             "   \"mla\": {\"kv_lora_rank\": 6, \"qk_rope_head_dim\": 2, \"qk_nope_head_dim\": 4, \"v_head_dim\": 6,"
             "             \"rope_select\": \"norm\", \"calibration_tokens\": 64}},"
             " \"data\": {\"train\": [\"%s/train.h5\"], \"val\": [\"%s/val.h5\"], \"seq_len\": 16},"
             " \"optim\": {\"lr\": 3e-3, \"warmup_steps\": 3},"
             " \"train\": {\"micro_batch\": 2, \"global_batch\": 4, \"max_steps\": 10},"
             " \"checkpoint\": {\"every_steps\": 4, \"keep_last\": 2},"
             " \"eval\": {\"every_steps\": 5, \"max_windows\": 4}, \"log\": {\"every_steps\": 1}}",
             workdir, run, seed, precision, ARCH, ARCH, workdir, workdir);
    Config *cfg = calloc(1, sizeof *cfg);
    CHECK_OK(config_parse_json(cfg, json, run, NULL, 0));
    return cfg;
}

static Config *config_for(const char *run, int seed) { return config_precision(run, seed, "fp32"); }

typedef struct {
    float *params;
    int64_t n;
    char *metrics;   /* metrics.jsonl without the timing fields */
} RunResult;

/* metrics.jsonl with "tok_s" and "elapsed" removed (wall-clock, not computed). */
static char *read_metrics(const char *run_dir) {
    char path[256];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    char *out = test_alloc(1 << 20), line[4096];
    size_t len = 0;
    while (fgets(line, sizeof line, f)) {
        for (const char *key = "\"tok_s\": "; key; key = strcmp(key, "\"tok_s\": ") == 0 ? "\"elapsed\": " : NULL) {
            char *p = strstr(line, key);
            if (!p) continue;
            char *end = p + strlen(key);
            while (*end && *end != ',' && *end != '}') end++;
            if (*end == ',') end += 2;
            memmove(p, end, strlen(end) + 1);
        }
        size_t n = strlen(line);
        memcpy(out + len, line, n);
        len += n;
    }
    fclose(f);
    out[len] = '\0';
    return out;
}

/* Runs to the end (or to stop_at, as if preempted); returns the trainer's preempted flag. */
static int run(Config *cfg, int64_t stop_at, int restart, RunResult *res) {
    Trainer *t = NULL;
    TrainerOptions o = {.random_batches = 0, .quiet = 1, .restart = restart, .stop_at_step = stop_at};
    if (!CHECK_OK(trainer_create(&t, cfg, o))) return -1;
    CHECK_OK(trainer_run(t));
    int preempted = t->preempted;
    if (res) {
        res->params = model_host_copy(t->student, 0, &res->n);
        res->metrics = read_metrics(cfg->run.dir);
    }
    trainer_destroy(t);
    return preempted;
}

static void check_same(const RunResult *a, const RunResult *b, const char *what) {
    CHECK(a->n == b->n && memcmp(a->params, b->params, (size_t)a->n * sizeof(float)) == 0,
          "%s: final weights bitwise equal to the uninterrupted run", what);
    CHECK(a->metrics && b->metrics && strcmp(a->metrics, b->metrics) == 0,
          "%s: every logged figure equal to the uninterrupted run", what);
}

static void free_result(RunResult *r) {
    free(r->params);
    free(r->metrics);
}

static void corrupt(const char *path, long offset, int cut) {
    if (cut) {
        CHECK(truncate(path, offset) == 0, "truncate %s", path);
        return;
    }
    FILE *f = fopen(path, "r+b");
    CHECK(f != NULL, "open %s", path);
    if (!f) return;
    fseek(f, offset, SEEK_SET);
    int c = fgetc(f);
    fseek(f, offset, SEEK_SET);
    fputc(c ^ 0x10, f);
    fclose(f);
}

int main(void) {
    snprintf(workdir, sizeof workdir, "/tmp/mlatrain_resume_XXXXXX");
    if (!mkdtemp(workdir)) return 1;
    prepare_data();

    Config *straight = config_for("straight", 1);
    RunResult ref = {0};
    CHECK(run(straight, 0, 0, &ref) == 0, "the straight run completes");

    /* k = 4: at a checkpoint boundary; k = 1 and 7: between them (each stop writes its own). */
    int64_t ks[3] = {4, 1, 7};
    for (int i = 0; i < 3; i++) {
        char name[32], what[64];
        snprintf(name, sizeof name, "stop_at_%lld", (long long)ks[i]);
        Config *cfg = config_for(name, 1);
        CHECK(run(cfg, ks[i], 0, NULL) == 1, "%s: the run stops as preempted", name);
        RunResult res = {0};
        CHECK(run(cfg, 0, 0, &res) == 0, "%s: the resumed run completes", name);
        snprintf(what, sizeof what, "stopped at %lld, resumed", (long long)ks[i]);
        check_same(&ref, &res, what);
        free_result(&res);
        free(cfg);
    }

    /* A broken newest checkpoint falls back to the previous complete one, with the same result. */
    const char *breakage[2] = {"truncated", "a flipped byte"};
    for (int b = 0; b < 2; b++) {
        char name[32], path[256];
        snprintf(name, sizeof name, "broken_%d", b);
        Config *cfg = config_for(name, 1);
        CHECK(run(cfg, 7, 0, NULL) == 1, "%s: stops at 7", name);
        snprintf(path, sizeof path, "%s/%s/checkpoints/step_000000007/%s", workdir, name,
                 b ? "optimizer_rank00000.h5" : "model.h5");
        corrupt(path, 3000, b == 0);
        char found[4096];
        int ok = 0;
        snprintf(path, sizeof path, "%s/%s", workdir, name);
        CHECK_OK(checkpoint_find(path, found, sizeof found, &ok));
        CHECK(ok && strstr(found, "step_000000004"), "%s checkpoint 7: falls back to %s", breakage[b], ok ? found : "none");
        RunResult res = {0};
        CHECK(run(cfg, 0, 0, &res) == 0, "%s: resumes from step 4", name);
        check_same(&ref, &res, breakage[b]);
        free_result(&res);
        free(cfg);
    }

    /* A changed seed would compute another run: refused, and --restart starts over. */
    Config *reseeded = config_for("stop_at_4", 2);
    Trainer *t = NULL;
    TrainerOptions o = {.random_batches = 0, .quiet = 1, .restart = 0, .stop_at_step = 0};
    CHECK_ERR(trainer_create(&t, reseeded, o), "run.seed differs from the run's");
    free(reseeded);
    Config *again = config_for("stop_at_4", 1);
    RunResult fresh = {0};
    CHECK(run(again, 0, 1, &fresh) == 0, "--restart runs to the end");
    check_same(&ref, &fresh, "restarted");
    free_result(&fresh);
    free(again);

    /* bf16: a resumed run rebuilds the bf16 copies from the checkpoint's f32 masters, which is what
     * AdamW wrote into them: bitwise the uninterrupted run. It did compute in bf16 (its weights are
     * not the f32 run's), and stayed near it. */
    Config *bf16_straight = config_precision("bf16_straight", 1, "bf16");
    RunResult bref = {0};
    CHECK(run(bf16_straight, 0, 0, &bref) == 0, "the bf16 straight run completes");
    Config *bf16_stop = config_precision("bf16_stop_at_7", 1, "bf16");
    CHECK(run(bf16_stop, 7, 0, NULL) == 1, "bf16: the run stops as preempted at 7");
    RunResult bres = {0};
    CHECK(run(bf16_stop, 0, 0, &bres) == 0, "bf16: the resumed run completes");
    check_same(&bref, &bres, "bf16, stopped at 7, resumed");
    double drift = rel_error_f32(bref.params, ref.params, ref.n);
    CHECK(bref.n == ref.n && drift > 0 && drift < 1e-2, "bf16 weights near the f32 run's but not equal: rel %.3g", drift);
    free_result(&bref);
    free_result(&bres);
    free(bf16_straight);
    free(bf16_stop);

    free_result(&ref);
    free(straight);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", workdir);
    CHECK(system(cmd) == 0, "clean up %s", workdir);
    return test_finish("test_resume");
}
