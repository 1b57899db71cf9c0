/* Tests of the run config: DESIGN.md's example read field by field, defaults, every error with the
 * JSON path it names, --set overrides, inline architectures, and the effective config round trip. */
#include "harness.h"

#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "train/config.h"

/* DESIGN.md section 7, verbatim. */
static const char *DESIGN_EXAMPLE =
    "{\n"
    "  \"run\":     {\"dir\": \"runs/distill_1b\", \"seed\": 1234},\n"
    "  \"device\":  \"cuda\",\n"
    "  \"teacher\": {\"path\": \"models/Llama-3.1-8B-Instruct\"},\n"
    "  \"student\": {\n"
    "    \"init_from\": \"models/Llama-3.2-1B-Instruct\",\n"
    "    \"mla\": {\"kv_lora_rank\": 128, \"qk_rope_head_dim\": 32, \"qk_nope_head_dim\": 64,\n"
    "            \"v_head_dim\": 64, \"q_lora_rank\": 0, \"gqa_layers\": [], \"init\": \"svd\",\n"
    "            \"rope_select\": \"norm\"}\n"
    "  },\n"
    "  \"data\":    {\"train\": [\"data/train-*.h5\"], \"val\": [\"data/val.h5\"], \"seq_len\": 2048},\n"
    "  \"loss\":    {\"kl_weight\": 0.5, \"ce_weight\": 0.5, \"temperature\": 1.0},\n"
    "  \"optim\":   {\"lr\": 1e-4, \"min_lr\": 1e-5, \"warmup_steps\": 100, \"schedule\": \"cosine\",\n"
    "              \"weight_decay\": 0.1, \"beta1\": 0.9, \"beta2\": 0.95, \"eps\": 1e-8, \"grad_clip\": 1.0},\n"
    "  \"train\":   {\"micro_batch\": 4, \"global_batch\": 256, \"max_steps\": 7000},\n"
    "  \"checkpoint\": {\"every_steps\": 500, \"keep_last\": 3},\n"
    "  \"eval\":    {\"every_steps\": 250, \"max_windows\": 512, \"tasks\": []},\n"
    "  \"log\":     {\"every_steps\": 10}\n"
    "}\n";

static const char *MINIMAL = "{\"run\": {\"dir\": \"r\"}, \"student\": {\"init_from\": \"m\"}}";

static const char *TINY_LLAMA =
    "{\"model_type\": \"llama\", \"vocab_size\": 256, \"hidden_size\": 64, \"intermediate_size\": 128,"
    " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"rms_norm_eps\": 1e-05,"
    " \"rope_theta\": 500000.0}";

/* Everything away from its default: inline architectures, energy-chosen ranks, a hybrid, lists. */
static char INLINE_EVERYTHING[4096];
static void make_inline_everything(void) {
    snprintf(INLINE_EVERYTHING, sizeof INLINE_EVERYTHING,
             "{\"run\": {\"dir\": \"runs/a \\\"b\\\"\", \"seed\": 99, \"threads\": 2}, \"device\": \"cpu\","
             " \"teacher\": {\"arch\": %s, \"init\": \"random\", \"seed\": 7},"
             " \"student\": {\"init_from\": {\"arch\": %s},"
             "   \"mla\": {\"kv_lora_rank\": 0, \"energy\": 0.95, \"qk_rope_head_dim\": 8, \"qk_nope_head_dim\": 8,"
             "     \"v_head_dim\": 16, \"q_lora_rank\": 32, \"gqa_layers\": [1], \"init\": \"exact\","
             "     \"rope_select\": \"uniform\", \"latent_norm\": false, \"q_norm\": true, \"drop_biases\": true,"
             "     \"calibration_tokens\": 100, \"allow_rebase\": true,"
             "     \"latent_basis\": \"weights\", \"output_fit\": \"teacher_input\"}},"
             " \"data\": {\"train\": [\"a.h5\", \"b/*.h5\"], \"seq_len\": 64},"
             " \"loss\": {\"kl_weight\": 1, \"ce_weight\": 0.25, \"temperature\": 2.5, \"kind\": \"jsd\","
             "   \"jsd_beta\": 0.25, \"chunk_tokens\": 64},"
             " \"optim\": {\"lr\": 3e-4, \"warmup_steps\": 5, \"schedule\": \"linear\", \"weight_decay\": 0,"
             "   \"beta1\": 0, \"beta2\": 0.999, \"eps\": 1e-6, \"grad_clip\": 0, \"decay_norms_and_embeddings\": true},"
             " \"train\": {\"micro_batch\": 2, \"global_batch\": 8, \"max_steps\": 3},"
             " \"checkpoint\": {\"every_steps\": 0, \"keep_last\": 1},"
             " \"eval\": {\"every_steps\": 1, \"max_windows\": 0, \"tasks\": [\"ppl\", \"kv\"]},"
             " \"log\": {\"every_steps\": 1}}",
             TINY_LLAMA, TINY_LLAMA);
}

static Config *new_config(void) { return test_alloc(sizeof(Config)); }

static Status parse(Config *cfg, const char *json) { return config_parse_json(cfg, json, "t.json", NULL, 0); }

static Status parse_set(Config *cfg, const char *json, const char *set) {
    return config_parse_json(cfg, json, "t.json", &set, 1);
}

/* The call must fail with exactly this message. */
static void expect_message(Status s, const char *message, int line) {
    int ok = s != STATUS_OK && strcmp(error_message(), message) == 0;
    test_check(ok, __FILE__, line, "expected error '%s'; got %s", message, s == STATUS_OK ? "success" : error_message());
    error_clear();
}
#define EXPECT_MESSAGE(call, message) expect_message((call), (message), __LINE__)

/* A config text with `from` replaced by `to` (once; the pattern must occur). */
static const char *edited(const char *text, const char *from, const char *to) {
    static char buf[8192];
    const char *at = strstr(text, from);
    if (!at) {
        fprintf(stderr, "pattern %s not in the config\n", from);
        exit(1);
    }
    snprintf(buf, sizeof buf, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
    return buf;
}

/* ---- field-by-field comparison ---- */

static int source_equal(const ConfigModelSource *a, const ConfigModelSource *b) {
    const ModelConfig *ma = &a->arch.model, *mb = &b->arch.model;
    return strcmp(a->path, b->path) == 0 && a->arch.present == b->arch.present &&
           strcmp(a->arch.json, b->arch.json) == 0 && a->init == b->init && a->seed == b->seed &&
           ma->vocab_size == mb->vocab_size && ma->hidden_size == mb->hidden_size &&
           ma->intermediate_size == mb->intermediate_size && ma->num_hidden_layers == mb->num_hidden_layers &&
           ma->num_attention_heads == mb->num_attention_heads && ma->num_key_value_heads == mb->num_key_value_heads &&
           ma->head_dim == mb->head_dim && ma->rms_norm_eps == mb->rms_norm_eps && ma->rope.theta == mb->rope.theta;
}

static int lists_equal(const ConfigPathList *a, const ConfigPathList *b) {
    if (a->count != b->count) return 0;
    for (int i = 0; i < a->count; i++)
        if (strcmp(a->items[i], b->items[i]) != 0) return 0;
    return 1;
}

static void check_same(const Config *a, const Config *b, const char *what) {
    const ConfigMla *ma = &a->student.mla, *mb = &b->student.mla;
    int gqa_same = ma->n_gqa_layers == mb->n_gqa_layers;
    for (int i = 0; gqa_same && i < ma->n_gqa_layers; i++) gqa_same = ma->gqa_layers[i] == mb->gqa_layers[i];
    int tasks_same = a->eval.tasks.count == b->eval.tasks.count;
    for (int i = 0; tasks_same && i < a->eval.tasks.count; i++) tasks_same = strcmp(a->eval.tasks.items[i], b->eval.tasks.items[i]) == 0;
    CHECK(strcmp(a->run.dir, b->run.dir) == 0 && a->run.seed == b->run.seed && a->run.threads == b->run.threads,
          "%s: run", what);
    CHECK(a->device == b->device, "%s: device", what);
    CHECK(a->has_teacher == b->has_teacher && (!a->has_teacher || source_equal(&a->teacher, &b->teacher)),
          "%s: teacher", what);
    CHECK(source_equal(&a->student.init_from, &b->student.init_from), "%s: student.init_from", what);
    CHECK(a->student.has_mla == b->student.has_mla, "%s: student.mla presence", what);
    CHECK(ma->kv_lora_rank == mb->kv_lora_rank && ma->qk_rope_head_dim == mb->qk_rope_head_dim &&
              ma->qk_nope_head_dim == mb->qk_nope_head_dim && ma->v_head_dim == mb->v_head_dim &&
              ma->q_lora_rank == mb->q_lora_rank && gqa_same && ma->init == mb->init &&
              ma->rope_select == mb->rope_select && ma->energy == mb->energy && ma->latent_norm == mb->latent_norm &&
              ma->q_norm == mb->q_norm && ma->drop_biases == mb->drop_biases && ma->calibration_tokens == mb->calibration_tokens &&
              ma->allow_rebase == mb->allow_rebase && ma->latent_basis == mb->latent_basis &&
              ma->output_fit == mb->output_fit,
          "%s: student.mla", what);
    CHECK(lists_equal(&a->data.train, &b->data.train) && lists_equal(&a->data.val, &b->data.val) &&
              a->data.seq_len == b->data.seq_len,
          "%s: data", what);
    CHECK(a->loss.kl_weight == b->loss.kl_weight && a->loss.ce_weight == b->loss.ce_weight &&
              a->loss.temperature == b->loss.temperature && a->loss.kind == b->loss.kind &&
              a->loss.jsd_beta == b->loss.jsd_beta && a->loss.chunk_tokens == b->loss.chunk_tokens,
          "%s: loss", what);
    CHECK(a->optim.lr == b->optim.lr && a->optim.min_lr == b->optim.min_lr &&
              a->optim.warmup_steps == b->optim.warmup_steps && a->optim.schedule == b->optim.schedule &&
              a->optim.weight_decay == b->optim.weight_decay && a->optim.beta1 == b->optim.beta1 &&
              a->optim.beta2 == b->optim.beta2 && a->optim.eps == b->optim.eps &&
              a->optim.grad_clip == b->optim.grad_clip &&
              a->optim.decay_norms_and_embeddings == b->optim.decay_norms_and_embeddings,
          "%s: optim", what);
    CHECK(a->train.micro_batch == b->train.micro_batch && a->train.global_batch == b->train.global_batch &&
              a->train.max_steps == b->train.max_steps,
          "%s: train", what);
    CHECK(a->checkpoint.every_steps == b->checkpoint.every_steps && a->checkpoint.keep_last == b->checkpoint.keep_last,
          "%s: checkpoint", what);
    CHECK(a->eval.every_steps == b->eval.every_steps && a->eval.max_windows == b->eval.max_windows && tasks_same,
          "%s: eval", what);
    CHECK(a->log.every_steps == b->log.every_steps, "%s: log", what);
}

/* ---- tests ---- */

static void test_design_example(void) {
    Config *c = new_config();
    if (!CHECK_OK(parse(c, DESIGN_EXAMPLE))) return free(c);
    CHECK(strcmp(c->name, "t.json") == 0, "name %s", c->name);
    CHECK(strcmp(c->run.dir, "runs/distill_1b") == 0 && c->run.seed == 1234 && c->run.threads == 0, "run");
    CHECK(c->device == CONFIG_DEVICE_CUDA, "device %d", c->device);
    CHECK(c->has_teacher && strcmp(c->teacher.path, "models/Llama-3.1-8B-Instruct") == 0 && !c->teacher.arch.present,
          "teacher %s", c->teacher.path);
    CHECK(strcmp(c->student.init_from.path, "models/Llama-3.2-1B-Instruct") == 0 && !c->student.init_from.arch.present,
          "student.init_from %s", c->student.init_from.path);
    const ConfigMla *m = &c->student.mla;
    CHECK(c->student.has_mla && m->kv_lora_rank == 128 && m->qk_rope_head_dim == 32 && m->qk_nope_head_dim == 64 &&
              m->v_head_dim == 64 && m->q_lora_rank == 0 && m->n_gqa_layers == 0,
          "mla dims");
    CHECK(m->init == CONFIG_MLA_INIT_SVD && m->rope_select == CONFIG_ROPE_SELECT_NORM &&
              m->latent_basis == CONFIG_LATENT_BASIS_ACTIVATIONS,
          "mla init/rope_select/latent_basis");
    CHECK(m->energy == 0 && m->latent_norm == 0 && m->q_norm == 0 && m->drop_biases == 0 && m->calibration_tokens == 16384 &&
              m->allow_rebase == 0 && m->output_fit == CONFIG_OUTPUT_FIT_STUDENT_INPUT,
          "mla defaults");
    CHECK(c->data.train.count == 1 && strcmp(c->data.train.items[0], "data/train-*.h5") == 0, "data.train");
    CHECK(c->data.val.count == 1 && strcmp(c->data.val.items[0], "data/val.h5") == 0, "data.val");
    CHECK(c->data.seq_len == 2048, "seq_len");
    CHECK(c->loss.kl_weight == 0.5 && c->loss.ce_weight == 0.5 && c->loss.temperature == 1.0, "loss");
    CHECK(c->optim.lr == 1e-4 && c->optim.min_lr == 1e-5 && c->optim.warmup_steps == 100 &&
              c->optim.schedule == CONFIG_SCHEDULE_COSINE && c->optim.weight_decay == 0.1 && c->optim.beta1 == 0.9 &&
              c->optim.beta2 == 0.95 && c->optim.eps == 1e-8 && c->optim.grad_clip == 1.0 &&
              !c->optim.decay_norms_and_embeddings,
          "optim");
    CHECK(c->train.micro_batch == 4 && c->train.global_batch == 256 && c->train.max_steps == 7000, "train");
    CHECK(c->checkpoint.every_steps == 500 && c->checkpoint.keep_last == 3, "checkpoint");
    CHECK(c->eval.every_steps == 250 && c->eval.max_windows == 512 && c->eval.tasks.count == 0, "eval");
    CHECK(c->log.every_steps == 10, "log");
    CHECK_OK(config_check_train(c));
    CHECK(strcmp(config_device_name(c->device), "cuda") == 0 && strcmp(config_mla_init_name(m->init), "svd") == 0 &&
              strcmp(config_rope_select_name(m->rope_select), "norm") == 0 &&
              strcmp(config_schedule_name(c->optim.schedule), "cosine") == 0,
          "enum names");
    free(c);
}

static void test_defaults(void) {
    Config *c = new_config();
    if (CHECK_OK(parse(c, MINIMAL))) {
        CHECK(c->run.seed == 1234 && c->run.threads == 0 && c->device == CONFIG_DEVICE_CPU, "run defaults");
        CHECK(!c->has_teacher && !c->student.has_mla && strcmp(c->student.init_from.path, "m") == 0, "models");
        CHECK(c->data.train.count == 0 && c->data.val.count == 0 && c->data.seq_len == 2048, "data defaults");
        /* no teacher: cross-entropy alone */
        CHECK(c->loss.kl_weight == 0 && c->loss.ce_weight == 1 && c->loss.temperature == 1, "loss defaults");
        CHECK(c->optim.lr == 1e-4 && c->optim.min_lr == 1e-5 && c->optim.warmup_steps == 0 &&
                  c->optim.schedule == CONFIG_SCHEDULE_COSINE && c->optim.weight_decay == 0.1 &&
                  c->optim.beta1 == 0.9 && c->optim.beta2 == 0.95 && c->optim.eps == 1e-8 &&
                  c->optim.grad_clip == 1.0 && !c->optim.decay_norms_and_embeddings,
              "optim defaults (min_lr %g)", c->optim.min_lr);
        CHECK(c->train.micro_batch == 1 && c->train.global_batch == 1 && c->train.max_steps == 1000, "train defaults");
        CHECK(c->checkpoint.every_steps == 500 && c->checkpoint.keep_last == 3, "checkpoint defaults");
        CHECK(c->eval.every_steps == 0 && c->eval.max_windows == 512 && c->eval.tasks.count == 0, "eval defaults");
        CHECK(c->log.every_steps == 10, "log defaults");
        CHECK_ERR(config_check_train(c), "t.json: data.train: required for training");
    }
    /* With a teacher the loss weights are 0.5 each; global_batch follows micro_batch; min_lr follows lr. */
    const char *with_teacher = "{\"run\": {\"dir\": \"r\"}, \"teacher\": {\"path\": \"t\"}, \"student\": {\"init_from\": "
                               "\"m\"}, \"train\": {\"micro_batch\": 3}, \"optim\": {\"lr\": 2e-3}}";
    if (CHECK_OK(parse(c, with_teacher))) {
        CHECK(c->loss.kl_weight == 0.5 && c->loss.ce_weight == 0.5, "loss defaults with a teacher");
        CHECK(c->train.global_batch == 3, "global_batch default %lld", (long long)c->train.global_batch);
        CHECK(c->optim.min_lr == 2e-4, "min_lr default %g", c->optim.min_lr);
    }
    /* kv_lora_rank may be left out when the rank comes from the energy */
    const char *energy = "{\"run\": {\"dir\": \"r\"}, \"student\": {\"init_from\": \"m\", \"mla\": {\"energy\": 0.9,"
                         " \"qk_rope_head_dim\": 16, \"qk_nope_head_dim\": 0, \"v_head_dim\": 64}}}";
    if (CHECK_OK(parse(c, energy)))
        CHECK(c->student.mla.energy == 0.9 && c->student.mla.kv_lora_rank == 0 && c->student.mla.qk_nope_head_dim == 0,
              "energy-chosen rank");
    free(c);
}

static void test_errors(void) {
    Config *c = new_config();
    const char *D = DESIGN_EXAMPLE;
    EXPECT_MESSAGE(parse(c, edited(D, "\"kv_lora_rank\"", "\"kv_lora_rnk\"")),
                   "t.json: student.mla.kv_lora_rnk: unknown key (did you mean \"kv_lora_rank\"?)");
    EXPECT_MESSAGE(parse(c, edited(D, "\"optim\"", "\"optm\"")), "t.json: optm: unknown key (did you mean \"optim\"?)");
    EXPECT_MESSAGE(parse(c, edited(D, "\"seed\": 1234", "\"seed\": 1234, \"colour\": 3")), "t.json: run.colour: unknown key");
    EXPECT_MESSAGE(parse(c, edited(D, "\"temperature\": 1.0", "\"temprature\": 1.0")),
                   "t.json: loss.temprature: unknown key (did you mean \"temperature\"?)");
    EXPECT_MESSAGE(parse(c, edited(D, "\"lr\": 1e-4", "\"lr\": \"1e-4\"")),
                   "t.json: optim.lr: expected a number, got a string");
    EXPECT_MESSAGE(parse(c, edited(D, "\"temperature\": 1.0", "\"temperature\": 0")),
                   "t.json: loss.temperature: must be > 0, got 0");
    EXPECT_MESSAGE(parse(c, edited(D, "\"temperature\": 1.0", "\"temperature\": 1.0, \"kind\": \"js\"")),
                   "t.json: loss.kind: expected \"forward_kl\", \"reverse_kl\" or \"jsd\", got \"js\" (did you mean \"jsd\"?)");
    EXPECT_MESSAGE(parse(c, edited(D, "\"temperature\": 1.0", "\"temperature\": 1.0, \"jsd_beta\": 1")),
                   "t.json: loss.jsd_beta: must be in (0, 1), got 1");
    EXPECT_MESSAGE(parse(c, edited(D, "\"temperature\": 1.0", "\"temperature\": 1.0, \"jsd_beta\": 0")),
                   "t.json: loss.jsd_beta: must be in (0, 1), got 0");
    EXPECT_MESSAGE(parse(c, edited(D, "\"temperature\": 1.0", "\"temperature\": 1.0, \"chunk_tokens\": -1")),
                   "t.json: loss.chunk_tokens: must be >= 0, got -1");
    EXPECT_MESSAGE(parse(c, edited(D, "\"max_steps\": 7000", "\"max_steps\": 10.5")),
                   "t.json: train.max_steps: expected an integer, got 10.5");
    EXPECT_MESSAGE(parse(c, edited(D, "\"max_steps\": 7000", "\"max_steps\": true")),
                   "t.json: train.max_steps: expected an integer, got true");
    EXPECT_MESSAGE(parse(c, edited(D, "\"dir\": \"runs/distill_1b\", ", "")), "t.json: run.dir: required key is missing");
    EXPECT_MESSAGE(parse(c, "{\"student\": {\"init_from\": \"m\"}}"), "t.json: run.dir: required key is missing");
    EXPECT_MESSAGE(parse(c, "{\"run\": {\"dir\": \"r\"}}"), "t.json: student.init_from: required key is missing");
    EXPECT_MESSAGE(parse(c, edited(D, "\"lr\": 1e-4", "\"lr\": 1e-4, \"lr\": 2e-4")), "t.json: optim.lr: key given twice");
    EXPECT_MESSAGE(parse(c, "{\n  \"run\": {\"dir\": \"x\"\n    \"seed\": 1}\n}"), "t.json: invalid JSON at line 3, column 5");
    EXPECT_MESSAGE(parse(c, "{\"run\": {\"dir\": \"x\"}} extra"), "t.json: invalid JSON at line 1, column 23");
    EXPECT_MESSAGE(parse(c, ""), "t.json: invalid JSON at line 1, column 1");
    EXPECT_MESSAGE(parse(c, "{\"run\": {\"dir\": \"\xff\"}}"), "t.json: invalid UTF-8 at line 1, column 18");
    EXPECT_MESSAGE(parse(c, "[1]"), "t.json: a config is a JSON object, got a list");
    EXPECT_MESSAGE(config_load(c, "/nonexistent/cfg.json", NULL, 0),
                   "/nonexistent/cfg.json: cannot read: No such file or directory");
    EXPECT_MESSAGE(config_parse_json(c, "{\"run\": {}}", NULL, NULL, 0), "run.dir: required key is missing");
    EXPECT_MESSAGE(config_load(c, "/", NULL, 0), "/: cannot read: Is a directory");

    /* ranges and types of every kind */
    EXPECT_MESSAGE(parse(c, edited(D, "\"beta1\": 0.9", "\"beta1\": 1")), "t.json: optim.beta1: must be in [0, 1), got 1");
    EXPECT_MESSAGE(parse(c, edited(D, "\"warmup_steps\": 100", "\"warmup_steps\": -1")),
                   "t.json: optim.warmup_steps: must be >= 0, got -1");
    EXPECT_MESSAGE(parse(c, edited(D, "\"micro_batch\": 4", "\"micro_batch\": 0")),
                   "t.json: train.micro_batch: must be >= 1, got 0");
    EXPECT_MESSAGE(parse(c, edited(D, "\"max_steps\": 7000", "\"max_steps\": 1e300")),
                   "t.json: train.max_steps: must be <= 9007199254740992, got 1e+300");
    EXPECT_MESSAGE(parse(c, edited(D, "\"lr\": 1e-4", "\"lr\": 1e999")), "t.json: optim.lr: must be finite, got inf");
    EXPECT_MESSAGE(parse(c, edited(D, "\"device\":  \"cuda\"", "\"device\": \"gpu\"")),
                   "t.json: device: expected \"cpu\" or \"cuda\", got \"gpu\"");
    EXPECT_MESSAGE(parse(c, edited(D, "\"device\":  \"cuda\"", "\"device\": \"cdua\"")),
                   "t.json: device: expected \"cpu\" or \"cuda\", got \"cdua\" (did you mean \"cuda\"?)");
    EXPECT_MESSAGE(parse(c, edited(D, "\"init\": \"svd\"", "\"init\": 1")),
                   "t.json: student.mla.init: expected \"svd\", \"exact\" or \"random\", got a number");
    EXPECT_MESSAGE(parse(c, edited(D, "\"qk_rope_head_dim\": 32", "\"qk_rope_head_dim\": 31")),
                   "t.json: student.mla.qk_rope_head_dim: must be even, got 31");
    EXPECT_MESSAGE(parse(c, edited(D, "\"gqa_layers\": []", "\"gqa_layers\": [3, 1, 3]")),
                   "t.json: student.mla.gqa_layers[2]: 3 is listed twice");
    EXPECT_MESSAGE(parse(c, edited(D, "\"gqa_layers\": []", "\"gqa_layers\": [-1]")),
                   "t.json: student.mla.gqa_layers[0]: must be in [0, 255], got -1");
    EXPECT_MESSAGE(parse(c, edited(D, "\"gqa_layers\": []", "\"gqa_layers\": 3")),
                   "t.json: student.mla.gqa_layers: expected a list of integers, got a number");
    EXPECT_MESSAGE(parse(c, edited(D, "\"rope_select\": \"norm\"", "\"latent_norm\": \"yes\"")),
                   "t.json: student.mla.latent_norm: expected true or false, got a string");
    EXPECT_MESSAGE(parse(c, edited(D, "[\"data/train-*.h5\"]", "\"data/train-*.h5\"")),
                   "t.json: data.train: expected a list of strings, got a string");
    EXPECT_MESSAGE(parse(c, edited(D, "[\"data/val.h5\"]", "[\"data/val.h5\", 7]")),
                   "t.json: data.val[1]: expected a string, got a number");
    EXPECT_MESSAGE(parse(c, edited(D, "\"runs/distill_1b\"", "\"\"")), "t.json: run.dir: must not be empty");
    EXPECT_MESSAGE(parse(c, edited(D, "\"optim\":   {", "\"optim\": 3, \"x\": {")),
                   "t.json: optim: expected an object, got a number");
    EXPECT_MESSAGE(parse(c, edited(D, "\"models/Llama-3.2-1B-Instruct\"", "5")),
                   "t.json: student.init_from: expected a model folder (a string) or an object with \"arch\", got a number");
    EXPECT_MESSAGE(parse(c, edited(D, "\"ce_weight\": 0.5", "\"ce_weight\": null")),
                   "t.json: loss.ce_weight: expected a number, got null");
    char long_dir[700] = "\"";
    memset(long_dir + 1, 'x', 600);
    strcpy(long_dir + 601, "\"");
    EXPECT_MESSAGE(parse(c, edited(D, "\"runs/distill_1b\"", long_dir)), "t.json: run.dir: is 600 bytes long, at most 511");

    /* checks across keys */
    EXPECT_MESSAGE(parse(c, edited(D, "\"kl_weight\": 0.5, \"ce_weight\": 0.5", "\"kl_weight\": 0, \"ce_weight\": 0")),
                   "t.json: loss: kl_weight and ce_weight are both 0: there is nothing to train on");
    EXPECT_MESSAGE(parse(c, edited(D, "\"teacher\": {\"path\": \"models/Llama-3.1-8B-Instruct\"},", "")),
                   "t.json: loss.kl_weight: must be 0 without a teacher, got 0.5");
    EXPECT_MESSAGE(parse(c, edited(D, "\"min_lr\": 1e-5", "\"min_lr\": 1e-3")),
                   "t.json: optim.min_lr: must be <= optim.lr = 0.0001, got 0.001");
    EXPECT_MESSAGE(parse(c, edited(D, "\"global_batch\": 256", "\"global_batch\": 250")),
                   "t.json: train.global_batch: must be a multiple of train.micro_batch = 4, got 250");
    EXPECT_MESSAGE(parse(c, edited(D, "\"global_batch\": 256", "\"global_batch\": 2")),
                   "t.json: train.global_batch: must be a multiple of train.micro_batch = 4, got 2");
    EXPECT_MESSAGE(parse(c, edited(D, "\"kv_lora_rank\": 128, ", "")),
                   "t.json: student.mla.kv_lora_rank: required key is missing (or give student.mla.energy)");
    EXPECT_MESSAGE(parse(c, edited(D, "\"kv_lora_rank\": 128", "\"kv_lora_rank\": 0")),
                   "t.json: student.mla.kv_lora_rank: must be >= 1 (or 0 with student.mla.energy > 0), got 0");
    EXPECT_MESSAGE(parse(c, edited(D, "\"kv_lora_rank\": 128", "\"kv_lora_rank\": 128, \"energy\": 1.5")),
                   "t.json: student.mla.energy: must be in [0, 1], got 1.5");
    EXPECT_MESSAGE(parse(c, edited(D, "\"qk_nope_head_dim\": 64,", "")),
                   "t.json: student.mla.qk_nope_head_dim: required key is missing");
    EXPECT_MESSAGE(parse(c, edited(D, "{\"path\": \"models/Llama-3.1-8B-Instruct\"}", "{}")),
                   "t.json: teacher: give \"path\" (an HF model folder) or \"arch\" (an inline architecture)");
    EXPECT_MESSAGE(parse(c, edited(D, "\"path\": \"models/Llama-3.1-8B-Instruct\"",
                                   "\"path\": \"models/Llama-3.1-8B-Instruct\", \"seed\": 3")),
                   "t.json: teacher.seed: given without teacher.arch");
    free(c);
}

static void test_inline_arch(void) {
    Config *c = new_config(), *d = new_config();
    make_inline_everything();
    if (CHECK_OK(parse(c, INLINE_EVERYTHING))) {
        const ModelConfig *t = &c->teacher.arch.model;
        CHECK(c->has_teacher && c->teacher.arch.present && !c->teacher.path[0] && c->teacher.seed == 7 &&
                  c->teacher.init == CONFIG_MODEL_INIT_RANDOM,
              "teacher arch source");
        CHECK(t->vocab_size == 256 && t->hidden_size == 64 && t->num_hidden_layers == 2 && t->num_attention_heads == 4 &&
                  t->num_key_value_heads == 2 && t->head_dim == 16 && t->rope.theta == 500000.0,
              "teacher arch through hf_config_from_json");
        CHECK(c->student.init_from.arch.present && c->student.init_from.seed == 99, "student seed defaults to run.seed");
        CHECK(strcmp(c->run.dir, "runs/a \"b\"") == 0, "escaped string %s", c->run.dir);
        CHECK(c->student.mla.n_gqa_layers == 1 && c->student.mla.gqa_layers[0] == 1, "gqa_layers");
        CHECK(c->student.mla.latent_basis == CONFIG_LATENT_BASIS_WEIGHTS &&
                  c->student.mla.output_fit == CONFIG_OUTPUT_FIT_TEACHER_INPUT,
              "latent_basis and output_fit");
        CHECK(c->eval.tasks.count == 2 && strcmp(c->eval.tasks.items[1], "kv") == 0, "tasks");
        CHECK(c->optim.min_lr == 3e-5, "min_lr");
    }
    char text[4096];
    snprintf(text, sizeof text, "%s", INLINE_EVERYTHING);
    EXPECT_MESSAGE(parse(d, edited(text, "\"hidden_size\": 64", "\"hiden_size\": 64")),
                   "t.json: teacher.arch: unknown key \"hiden_size\"");
    EXPECT_MESSAGE(parse(d, edited(text, "\"arch\": {", "\"path\": \"x\", \"arch\": {")),
                   "t.json: teacher: give \"path\" or \"arch\", not both");
    EXPECT_MESSAGE(parse(d, edited(text, "\"init\": \"random\"", "\"init\": \"zeros\"")),
                   "t.json: teacher.init: expected \"random\", got \"zeros\"");
    EXPECT_MESSAGE(parse(d, edited(text, "\"gqa_layers\": [1]", "\"gqa_layers\": [5]")),
                   "t.json: student.mla.gqa_layers[0]: layer 5 does not exist: the student has 2 layers");
    EXPECT_MESSAGE(parse(d, edited(text, "\"teacher\": {\"arch\"", "\"teacher\": {\"arc\"")),
                   "t.json: teacher.arc: unknown key (did you mean \"arch\"?)");
    EXPECT_MESSAGE(parse(d, "{\"run\": {\"dir\": \"r\"}, \"teacher\": {\"arch\": 5}, \"student\": {\"init_from\": \"m\"}}"),
                   "t.json: teacher.arch: expected an object of HF config.json keys, got a number");
    EXPECT_MESSAGE(parse(d, "{\"run\": {\"dir\": \"r\"}, \"student\": {\"init_from\": {\"seed\": 3}}}"),
                   "t.json: student.init_from.arch: required key is missing");
    free(c);
    free(d);
}

static void test_set(void) {
    Config *c = new_config();
    const char *D = DESIGN_EXAMPLE;
    if (CHECK_OK(parse_set(c, D, "optim.lr=3e-4"))) CHECK(c->optim.lr == 3e-4, "--set number: %g", c->optim.lr);
    if (CHECK_OK(parse_set(c, D, "device=cpu"))) CHECK(c->device == CONFIG_DEVICE_CPU, "--set bare string");
    if (CHECK_OK(parse_set(c, D, "run.dir=\"runs/x y\""))) CHECK(strcmp(c->run.dir, "runs/x y") == 0, "--set quoted");
    if (CHECK_OK(parse_set(c, D, "run.dir=runs/bare=1"))) CHECK(strcmp(c->run.dir, "runs/bare=1") == 0, "--set bare '='");
    if (CHECK_OK(parse_set(c, D, "student.mla.latent_norm=false"))) CHECK(c->student.mla.latent_norm == 0, "--set bool");
    if (CHECK_OK(parse_set(c, D, "data.train=[\"a.h5\", \"b.h5\"]")))
        CHECK(c->data.train.count == 2 && strcmp(c->data.train.items[1], "b.h5") == 0, "--set list");
    if (CHECK_OK(parse_set(c, D, "data.val=x.h5")))
        CHECK(c->data.val.count == 1 && strcmp(c->data.val.items[0], "x.h5") == 0, "--set one string to a list");
    if (CHECK_OK(parse_set(c, D, "run.dir=2024"))) CHECK(strcmp(c->run.dir, "2024") == 0, "--set unquoted number to a string");
    if (CHECK_OK(parse_set(c, D, "student.init_from=1e3")))
        CHECK(strcmp(c->student.init_from.path, "1e3") == 0, "--set unquoted number to a model folder");
    if (CHECK_OK(parse_set(c, D, "student.mla.gqa_layers=[0,5]")))
        CHECK(c->student.mla.n_gqa_layers == 2 && c->student.mla.gqa_layers[1] == 5, "--set int list");
    if (CHECK_OK(parse_set(c, D, "student.mla.energy=0.99")))
        CHECK(c->student.mla.energy == 0.99 && c->student.mla.kv_lora_rank == 128, "--set creates a key");
    if (CHECK_OK(parse_set(c, MINIMAL, "teacher.path=models/t")))
        CHECK(c->has_teacher && strcmp(c->teacher.path, "models/t") == 0 && c->loss.kl_weight == 0.5,
              "--set creates a section");
    if (CHECK_OK(parse_set(c, MINIMAL, "student.mla={\"kv_lora_rank\": 64, \"qk_rope_head_dim\": 16,"
                                       " \"qk_nope_head_dim\": 32, \"v_head_dim\": 32}")))
        CHECK(c->student.has_mla && c->student.mla.kv_lora_rank == 64, "--set an object");
    const char *no_teacher[] = {"teacher=null", "loss.kl_weight=0"};
    if (CHECK_OK(config_parse_json(c, D, "t.json", no_teacher, 2)))
        CHECK(!c->has_teacher && c->loss.ce_weight == 0.5, "--set null removes");
    EXPECT_MESSAGE(parse_set(c, D, "teacher=null"), "t.json: loss.kl_weight: must be 0 without a teacher, got 0.5");
    if (CHECK_OK(parse_set(c, MINIMAL, "teacher.path=null"))) CHECK(!c->has_teacher, "--set null of an absent key");
    const char *two[] = {"optim.lr=1", "optim.lr=0.5"};
    if (CHECK_OK(config_parse_json(c, D, "t.json", two, 2))) CHECK(c->optim.lr == 0.5, "the last --set wins");
    make_inline_everything();
    if (CHECK_OK(parse_set(c, INLINE_EVERYTHING, "teacher.arch.num_hidden_layers=3")))
        CHECK(c->teacher.arch.model.num_hidden_layers == 3 && c->student.init_from.arch.model.num_hidden_layers == 2,
              "--set inside an arch");

    EXPECT_MESSAGE(parse_set(c, D, "optim.lrr=1"), "t.json: --set optim.lrr: unknown key (did you mean \"lr\"?)");
    EXPECT_MESSAGE(parse_set(c, D, "optm.lr=1"), "t.json: --set optm.lr: unknown key \"optm\" (did you mean \"optim\"?)");
    EXPECT_MESSAGE(parse_set(c, D, "whatever=1"), "t.json: --set whatever: unknown key");
    EXPECT_MESSAGE(parse_set(c, D, "optim.lr"), "t.json: --set optim.lr: expected key.path=value");
    EXPECT_MESSAGE(parse_set(c, D, "optim..lr=1"), "t.json: --set optim..lr: expected key.path=value");
    EXPECT_MESSAGE(parse_set(c, D, "optim.lr.x=1"), "t.json: --set optim.lr.x: optim.lr is not an object");
    EXPECT_MESSAGE(parse_set(c, D, "student.init_from.arch.vocab_size=5"),
                   "t.json: --set student.init_from.arch.vocab_size: student.init_from is a string, not an object");
    EXPECT_MESSAGE(parse_set(c, D, "optim.lr=abc"), "t.json: optim.lr: expected a number, got a string");
    EXPECT_MESSAGE(parse_set(c, D, "run.dir=null"), "t.json: run.dir: required key is missing");
    EXPECT_MESSAGE(parse_set(c, INLINE_EVERYTHING, "teacher.arch.hidden_sise=5"),
                   "t.json: teacher.arch: unknown key \"hidden_sise\"");
    free(c);
}

static char tmp_dir[] = "/tmp/mlatrain_test_config_XXXXXX";

static void round_trip(const char *json, const char *what) {
    Config *a = new_config(), *b = new_config(), *c = new_config();
    char *text_a = NULL, *text_b = NULL;
    if (CHECK_OK(parse(a, json)) && CHECK_OK(config_effective_json(a, &text_a)) && CHECK_OK(parse(b, text_a))) {
        check_same(a, b, what);
        if (CHECK_OK(config_effective_json(b, &text_b)))
            CHECK(strcmp(text_a, text_b) == 0, "%s: effective text changes on a second round:\n%s\n---\n%s", what,
                  text_a, text_b);
        char path[600];
        snprintf(path, sizeof path, "%s/%s", tmp_dir, CONFIG_EFFECTIVE_FILE);
        if (CHECK_OK(config_write_effective(a, path)) && CHECK_OK(config_load(c, path, NULL, 0))) {
            check_same(a, c, what);
            CHECK(strcmp(c->name, path) == 0, "loaded name %s", c->name);
        }
        unlink(path);
    }
    free(text_a);
    free(text_b);
    free(a);
    free(b);
    free(c);
}

static void test_effective(void) {
    round_trip(DESIGN_EXAMPLE, "DESIGN example");
    round_trip(MINIMAL, "minimal");
    make_inline_everything();
    round_trip(INLINE_EVERYTHING, "inline everything");

    Config *c = new_config();
    char *text = NULL;
    if (CHECK_OK(parse(c, MINIMAL)) && CHECK_OK(config_effective_json(c, &text))) {
        CHECK(strstr(text, "\"temperature\": 1.0,\n") && strstr(text, "\"kind\": \"forward_kl\",\n") && strstr(text, "\"max_steps\": 1000") &&
                  strstr(text, "\"train\": []") && strstr(text, "\"kl_weight\": 0.0,") &&
                  strstr(text, "\"global_batch\": 1,") && !strstr(text, "\"teacher\"") && !strstr(text, "\"mla\""),
              "effective config of the minimal one:\n%s", text);
        if (getenv("MLATRAIN_TEST_VERBOSE")) printf("%s", text);
    }
    free(text);
    text = NULL;
    make_inline_everything();
    if (CHECK_OK(parse(c, INLINE_EVERYTHING)) && CHECK_OK(config_effective_json(c, &text))) {
        CHECK(strstr(text, "\"seed\": 99") && strstr(text, "\"init_from\": {\n      \"arch\": {") &&
                  strstr(text, "\"gqa_layers\": [1]") && strstr(text, "\"tasks\": [\"ppl\", \"kv\"]") &&
                  !strstr(text, "\"path\""),
              "effective config with inline architectures:\n%s", text);
        if (getenv("MLATRAIN_TEST_VERBOSE")) printf("%s", text);
    }
    free(text);
    CHECK_ERR(config_write_effective(c, "/nonexistent/dir/effective_config.json"),
              "/nonexistent/dir/effective_config.json.tmp.");
    free(c);
}

static void test_world(void) {
    Config *c = new_config();
    if (CHECK_OK(parse(c, DESIGN_EXAMPLE))) {   /* micro_batch 4, global_batch 256 */
        CHECK_OK(config_check_world(c, 1));
        CHECK_OK(config_check_world(c, 8));
        CHECK_OK(config_check_world(c, 64));
        EXPECT_MESSAGE(config_check_world(c, 3),
                       "t.json: train.global_batch: must be a multiple of train.micro_batch x ranks = 4 x 3 = 12, got 256");
        CHECK_ERR(config_check_world(c, 128), "t.json: train.global_batch: must be a multiple");
        CHECK_ERR(config_check_world(c, 0), "world size");
        CHECK_OK(config_check_layers(c, 16));
    }
    if (CHECK_OK(parse_set(c, DESIGN_EXAMPLE, "student.mla.gqa_layers=[0, 15]"))) {
        CHECK_OK(config_check_layers(c, 16));
        EXPECT_MESSAGE(config_check_layers(c, 15),
                       "t.json: student.mla.gqa_layers[1]: layer 15 does not exist: the student has 15 layers");
    }
    free(c);
}

int main(void) {
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_design_example();
    test_defaults();
    test_errors();
    test_inline_arch();
    test_set();
    test_effective();
    test_world();
    DIR *d = opendir(tmp_dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        char p[600];
        snprintf(p, sizeof p, "%s/%s", tmp_dir, e->d_name);
        if (e->d_name[0] != '.') unlink(p);
    }
    if (d) closedir(d);
    rmdir(tmp_dir);
    return test_finish("test_config");
}
