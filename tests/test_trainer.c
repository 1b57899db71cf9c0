/* The trainer: one micro-batch of 8 gives the gradients of 8 micro-batches of 1 (the loss is
 * normalised over the whole global batch), evaluation figures equal an independent float64
 * computation from the logits, and the loss falls when training on real text. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/prepare.h"
#include "harness.h"
#include "model_fixtures.h"
#include "train/trainer.h"

static char workdir[64];

static const char *ARCH =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 257, "
    "\"hidden_size\": 32, \"intermediate_size\": 48, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
    "\"num_key_value_heads\": 2, \"head_dim\": 8, \"rope_theta\": 10000.0, \"rms_norm_eps\": 1e-5, "
    "\"tie_word_embeddings\": true, \"max_position_embeddings\": 64}";

/* Real text: this repository's own documentation, byte-tokenized into train and val files. */
static void prepare_data(void) {
    char train[128], val[128];
    snprintf(train, sizeof train, "%s/train.h5", workdir);
    snprintf(val, sizeof val, "%s/val.h5", workdir);
    const char *here = __FILE__;
    char root[1024];
    snprintf(root, sizeof root, "%.*s", (int)(strrchr(here, '/') - here), here); /* tests/ */
    char inputs[4][1100];
    const char *names[4] = {"/../README.md", "/../docs/convert.md", "/../docs/export.md", "/../docs/config.md"};
    const char *ptrs[4];
    for (int i = 0; i < 4; i++) {
        snprintf(inputs[i], sizeof inputs[i], "%s%s", root, names[i]);
        ptrs[i] = inputs[i];
    }
    SplitOptions split = {.out_path = train, .val_path = val, .val_fraction = 0.15, .seed = 3};
    PrepareResult res;
    CHECK_OK(prepare_text(ptrs, 4, TEXT_DOCS_PARAGRAPH, &split, &res));
    CHECK(res.train.tokens > 20000 && res.val.tokens > 2000, "prepared %llu train and %llu val tokens",
          (unsigned long long)res.train.tokens, (unsigned long long)res.val.tokens);
}

static Config *config_of(const char *extra_sets[], int n_sets, int with_teacher, int micro, int global) {
    char json[4096];
    snprintf(json, sizeof json,
             "{\"run\": {\"dir\": \"%s/run\", \"seed\": 5, \"threads\": 2},"
             " %s%s%s"
             " \"student\": {\"init_from\": {\"arch\": %s, \"init\": \"random\", \"seed\": 9}},"
             " \"data\": {\"train\": [\"%s/train.h5\"], \"val\": [\"%s/val.h5\"], \"seq_len\": 24},"
             " \"optim\": {\"lr\": 3e-3, \"warmup_steps\": 0, \"grad_clip\": 0},"
             " \"train\": {\"micro_batch\": %d, \"global_batch\": %d, \"max_steps\": 40},"
             " \"eval\": {\"every_steps\": 0, \"max_windows\": 12}}",
             workdir, with_teacher ? "\"teacher\": {\"arch\": " : "", with_teacher ? ARCH : "",
             with_teacher ? ", \"init\": \"random\", \"seed\": 4}," : "", ARCH, workdir, workdir, micro, global);
    Config *cfg = calloc(1, sizeof *cfg);
    CHECK_OK(config_parse_json(cfg, json, "test", extra_sets, n_sets));
    return cfg;
}

/* Gradients after one step with lr 0 (so the step leaves them, and the weights, as computed). */
static float *step_gradients(Config *cfg, int64_t *n, StepRecord *r) {
    Trainer *t = NULL;
    TrainerOptions opts = {.random_batches = 0, .quiet = 1};
    if (!CHECK_OK(trainer_create(&t, cfg, opts))) return NULL;
    t->sched.lr = 0;
    t->sched.min_lr = 0;
    CHECK_OK(trainer_step(t, r));
    float *g = model_host_copy(t->student, 1, n);
    trainer_destroy(t);
    return g;
}

static void test_micro_batch_equivalence(void) {
    for (int teacher = 0; teacher < 2; teacher++) {
        Config *one = config_of(NULL, 0, teacher, 8, 8), *eight = config_of(NULL, 0, teacher, 1, 8);
        StepRecord r1, r8;
        int64_t n1 = 0, n8 = 0;
        float *g1 = step_gradients(one, &n1, &r1), *g8 = step_gradients(eight, &n8, &r8);
        if (g1 && g8 && n1 == n8) {
            double err = rel_error_f32(g8, g1, n1);
            CHECK(err < 1e-5, "%s: gradients of 8 micro-batches of 1 vs 1 of 8: rel error %.3g",
                  teacher ? "distillation" : "next-token", err);
            CHECK(fabs(r1.loss - r8.loss) < 1e-6 * fabs(r1.loss) && fabs(r1.grad_norm - r8.grad_norm) < 1e-5 * r1.grad_norm,
                  "loss %.9g vs %.9g, grad norm %.9g vs %.9g", r1.loss, r8.loss, r1.grad_norm, r8.grad_norm);
        }
        free(g1);
        free(g8);
        free(one);
        free(eight);
    }
}

/* Evaluation against log-softmax computed here in float64 from the logits of both models. */
static void test_eval_figures(void) {
    Config *cfg = config_of(NULL, 0, 1, 4, 4);
    Trainer *t = NULL;
    TrainerOptions opts = {.random_batches = 0, .quiet = 1};
    if (!CHECK_OK(trainer_create(&t, cfg, opts))) return;
    EvalFigures e;
    CHECK_OK(trainer_evaluate(t, &e));
    Backend *be = t->be;
    int64_t T = cfg->data.seq_len, V = 257, D = 32, W = (int64_t)e.windows;
    CHECK(W == 12, "eval read eval.max_windows = 12 windows (%lld)", (long long)W);
    ForwardState *ss = NULL, *ts = NULL;
    CHECK_OK(forward_state_create(&ss, t->student, 1, T, 0));
    CHECK_OK(forward_state_create(&ts, t->teacher, 1, T, 0));
    int32_t *window = test_alloc((size_t)(T + 1) * 4);
    float *hs = test_alloc((size_t)(T * D) * 4), *ht = test_alloc((size_t)(T * D) * 4);
    float *zs = test_alloc((size_t)(T * V) * 4), *zt = test_alloc((size_t)(T * V) * 4);
    double ce = 0, ce_t = 0, kl = 0;
    int64_t agree = 0, tokens = 0;
    for (int64_t w = 0; w < W; w++) {
        CHECK_OK(loader_read_window(t->val, (uint64_t)w, window));
        Tensor ids = tensor_view(window, DT_I32, 1, &T);
        CHECK_OK(model_forward(t->student, ss, ids, tensor_view(hs, DT_F32, 2, (int64_t[]){T, D})));
        CHECK_OK(model_forward(t->teacher, ts, ids, tensor_view(ht, DT_F32, 2, (int64_t[]){T, D})));
        CHECK_OK(be->ops.linear_forward(be, tensor_view(zs, DT_F32, 2, (int64_t[]){T, V}),
                                        tensor_view(hs, DT_F32, 2, (int64_t[]){T, D}), t->student->lm_head, tensor_none()));
        CHECK_OK(be->ops.linear_forward(be, tensor_view(zt, DT_F32, 2, (int64_t[]){T, V}),
                                        tensor_view(ht, DT_F32, 2, (int64_t[]){T, D}), t->teacher->lm_head, tensor_none()));
        for (int64_t i = 0; i < T; i++) {
            const float *a = zs + i * V, *b = zt + i * V;
            double ma = -INFINITY, mb = -INFINITY, sa = 0, sb = 0;
            int64_t arga = 0, argb = 0;
            for (int64_t v = 0; v < V; v++) {
                if (a[v] > ma) ma = a[v], arga = v;
                if (b[v] > mb) mb = b[v], argb = v;
            }
            for (int64_t v = 0; v < V; v++) sa += exp(a[v] - ma), sb += exp(b[v] - mb);
            double lsa = ma + log(sa), lsb = mb + log(sb);
            int32_t target = window[i + 1];
            ce += lsa - a[target];
            ce_t += lsb - b[target];
            for (int64_t v = 0; v < V; v++) {
                double pt = exp(b[v] - lsb);
                kl += pt * ((b[v] - lsb) - (a[v] - lsa));
            }
            agree += arga == argb;
            tokens++;
        }
    }
    CHECK(e.tokens == tokens, "eval tokens %lld vs %lld", (long long)e.tokens, (long long)tokens);
    CHECK(fabs(e.loss - ce / tokens) < 1e-5 * (ce / tokens), "student loss %.9g vs %.9g", e.loss, ce / tokens);
    CHECK(fabs(e.ppl - exp(ce / tokens)) < 1e-4 * e.ppl, "student ppl %.9g vs %.9g", e.ppl, exp(ce / tokens));
    CHECK(fabs(e.kl - kl / tokens) < 1e-4 * (kl / tokens) + 1e-7, "kl %.9g vs %.9g", e.kl, kl / tokens);
    CHECK(fabs(e.top1_agree - (double)agree / tokens) < 1e-12, "top-1 agreement %.9g vs %.9g", e.top1_agree,
          (double)agree / tokens);
    CHECK(fabs(t->teacher_eval.loss - ce_t / tokens) < 1e-5 * (ce_t / tokens), "teacher loss %.9g vs %.9g",
          t->teacher_eval.loss, ce_t / tokens);
    free(window), free(hs), free(ht), free(zs), free(zt);
    forward_state_destroy(ss);
    forward_state_destroy(ts);
    trainer_destroy(t);
    free(cfg);
}

/* 40 steps of next-token training on real text: the validation loss falls well below its start. */
static void test_loss_falls_on_text(void) {
    Config *cfg = config_of(NULL, 0, 0, 4, 8);
    Trainer *t = NULL;
    TrainerOptions opts = {.random_batches = 0, .quiet = 1};
    if (!CHECK_OK(trainer_create(&t, cfg, opts))) return;
    EvalFigures before, after;
    CHECK_OK(trainer_evaluate(t, &before));
    StepRecord r;
    for (int i = 0; i < 40; i++) CHECK_OK(trainer_step(t, &r));
    CHECK_OK(trainer_evaluate(t, &after));
    CHECK(after.loss < before.loss - 1.5, "validation loss falls: %.4f -> %.4f (train loss %.4f)", before.loss,
          after.loss, r.loss);
    trainer_destroy(t);
    free(cfg);
}

static void remove_workdir(void) {
    const char *files[] = {"train.h5", "val.h5"};
    char p[128];
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/%s", workdir, files[i]);
        unlink(p);
    }
    rmdir(workdir);
}

int main(void) {
    snprintf(workdir, sizeof workdir, "/tmp/mlatrain_trainer_XXXXXX");
    if (!mkdtemp(workdir)) return 1;
    prepare_data();
    test_micro_batch_equivalence();
    test_eval_figures();
    test_loss_falls_on_text();
    remove_workdir();
    return test_finish("test_trainer");
}
