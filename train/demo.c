/* The demo's two phases on the op interface: next-token training of a tiny GQA teacher on a
 * synthetic Markov language, then distillation (T^2 KL + CE) of a tiny MLA student from it. */
#include "train/demo.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/backend.h"
#include "core/rng.h"
#include "model/model.h"

enum { DEMO_VOCAB = 64, DEMO_BATCH = 8, DEMO_SEQ = 32, DEMO_SUCCESSORS = 3 };

/* The language (fixed by `language`): a token is followed by one of DEMO_SUCCESSORS tokens that
 * depend on it, with probabilities 0.6/0.3/0.1 in an order set by the token before it, so a model
 * must attend one step back; a perfect model's loss is the entropy, 0.898 nats per token. */
static int32_t next_token(uint64_t language, int32_t prev2, int32_t prev, uint64_t draw) {
    float u = rng_uniform(language, 1, draw);
    int rank = u < 0.6f ? 0 : u < 0.9f ? 1 : 2;
    int pick = (rank + prev2) % DEMO_SUCCESSORS;
    return (int32_t)rng_below(language, 2, (uint64_t)prev * DEMO_SUCCESSORS + (uint64_t)pick, DEMO_VOCAB);
}

/* Batch `index`: B sequences of T+1 tokens, inputs ids[:T], targets ids[1:]. */
static void make_batch(uint64_t language, int64_t index, int32_t *ids, int32_t *targets) {
    for (int b = 0; b < DEMO_BATCH; b++) {
        uint64_t base = ((uint64_t)index * DEMO_BATCH + (uint64_t)b) * (DEMO_SEQ + 1);
        int32_t prev2 = 0, tok = (int32_t)rng_below(language, 3, base, DEMO_VOCAB);
        for (int t = 0; t < DEMO_SEQ; t++) {
            ids[b * DEMO_SEQ + t] = tok;
            int32_t next = next_token(language, prev2, tok, base + (uint64_t)t + 1);
            prev2 = tok;
            tok = next;
            targets[b * DEMO_SEQ + t] = tok;
        }
    }
}

static ModelConfig demo_config(int mla) {
    ModelConfig c;
    memset(&c, 0, sizeof c);
    strcpy(c.architecture, mla ? "DeepseekV2ForCausalLM" : "LlamaForCausalLM");
    strcpy(c.model_type, mla ? "deepseek_v2" : "llama");
    c.vocab_size = DEMO_VOCAB;
    c.hidden_size = 64;
    c.intermediate_size = 128;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 16;
    c.max_position_embeddings = DEMO_SEQ;
    c.rms_norm_eps = 1e-5;
    c.rope.theta = 10000.0;
    c.tie_word_embeddings = 1;
    c.bos_token_id = -1;
    c.eos_token_id = -1;
    if (mla) {
        c.mla = (MlaDims){.kv_lora_rank = 16, .q_lora_rank = 0, .qk_nope_head_dim = 16,
                          .qk_rope_head_dim = 8, .v_head_dim = 16, .latent_norm = 1};
        for (int l = 0; l < c.num_hidden_layers; l++) c.layer_attention[l] = ATTENTION_MLA;
    }
    return c;
}

/* What one training run owns besides the model. */
typedef struct {
    Backend *be;
    Model *model;
    ForwardState *st;
    Tensor *m, *v;          /* AdamW moments per parameter */
    Tensor *grads;
    Tensor ids, targets, hidden, dhidden;
} Trainer;

static Status trainer_init(Trainer *t, Backend *be, const ModelConfig *cfg, uint64_t seed) {
    memset(t, 0, sizeof *t);
    t->be = be;
    TRY(model_create(&t->model, be, cfg, DEMO_SEQ));
    TRY(model_init_random(t->model, seed, 0.05f));
    TRY(model_alloc_grads(t->model));
    TRY(forward_state_create(&t->st, t->model, DEMO_BATCH, DEMO_SEQ, 1));
    int n = t->model->n_params;
    t->m = calloc((size_t)n, sizeof(Tensor));
    t->v = calloc((size_t)n, sizeof(Tensor));
    t->grads = calloc((size_t)n, sizeof(Tensor));
    if (!t->m || !t->v || !t->grads) return errorf("demo: out of memory");
    for (int i = 0; i < n; i++) {
        Tensor *p = t->model->params[i].value;
        TRY(be->alloc(be, &t->m[i], DT_F32, p->ndim, p->shape));
        TRY(be->alloc(be, &t->v[i], DT_F32, p->ndim, p->shape));
        t->grads[i] = *t->model->params[i].grad;
    }
    int64_t N = DEMO_BATCH * DEMO_SEQ, D = cfg->hidden_size;
    TRY(be->alloc(be, &t->ids, DT_I32, 1, &N));
    TRY(be->alloc(be, &t->targets, DT_I32, 1, &N));
    TRY(be->alloc(be, &t->hidden, DT_F32, 2, (int64_t[]){N, D}));
    TRY(be->alloc(be, &t->dhidden, DT_F32, 2, (int64_t[]){N, D}));
    return STATUS_OK;
}

static void trainer_free(Trainer *t) {
    Backend *be = t->be;
    if (!be) return;
    for (int i = 0; t->model && i < t->model->n_params; i++) {
        if (t->m && t->m[i].data) be->release(be, &t->m[i]);
        if (t->v && t->v[i].data) be->release(be, &t->v[i]);
    }
    free(t->m);
    free(t->v);
    free(t->grads);
    Tensor *bufs[] = {&t->ids, &t->targets, &t->hidden, &t->dhidden};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]->data) be->release(be, bufs[i]);
    forward_state_destroy(t->st);
    model_destroy(t->model);
}

/* Warmup then cosine decay to a tenth. */
static float learning_rate(float peak, int step, int total) {
    int warmup = total / 10 > 0 ? total / 10 : 1;
    if (step <= warmup) return peak * (float)step / (float)warmup;
    double progress = (double)(step - warmup) / (double)(total - warmup > 0 ? total - warmup : 1);
    return (float)(peak * (0.1 + 0.9 * 0.5 * (1.0 + cos(3.14159265358979323846 * progress))));
}

/* One optimizer step on batch `batch_offset + step`; with a teacher, its hidden state (`teacher_hidden`, from the
 * teacher's forward on the same ids) gives the KL term. */
static Status train_step(Trainer *t, int step, int total, float peak_lr, uint64_t language,
                         int64_t batch_offset, Model *teacher,
                         ForwardState *teacher_st, Tensor teacher_hidden, LossSums *sums, double *grad_norm) {
    Backend *be = t->be;
    int64_t N = DEMO_BATCH * DEMO_SEQ;
    int32_t ids[DEMO_BATCH * DEMO_SEQ], targets[DEMO_BATCH * DEMO_SEQ];
    make_batch(language, batch_offset + step, ids, targets);
    TRY(be->upload(be, t->ids, ids));
    TRY(be->upload(be, t->targets, targets));
    if (teacher) TRY(model_forward(teacher, teacher_st, t->ids, teacher_hidden));

    TRY(model_zero_grads(t->model));
    TRY(model_forward(t->model, t->st, t->ids, t->hidden));
    LossConfig lc = {.kl_weight = teacher ? 0.5f : 0.0f, .ce_weight = teacher ? 0.5f : 1.0f,
                     .temperature = 1.0f, .ignore_index = -100, .chunk_tokens = 0};
    memset(sums, 0, sizeof *sums);
    TRY(be->ops.lm_head_loss(be, sums, t->dhidden, t->model->grad_lm_head, t->hidden, t->model->lm_head,
                             teacher ? teacher_hidden : tensor_none(), teacher ? teacher->lm_head : tensor_none(),
                             t->targets, lc, 1.0f / (float)N));
    TRY(model_backward(t->model, t->st, t->dhidden));
    TRY(grad_norm_clip(be, t->grads, t->model->n_params, 1.0, grad_norm));
    for (int i = 0; i < t->model->n_params; i++) {
        AdamWConfig ac = {.lr = learning_rate(peak_lr, step, total), .beta1 = 0.9f, .beta2 = 0.95f,
                          .eps = 1e-8f, .weight_decay = t->model->params[i].decay ? 0.1f : 0.0f, .step = step};
        TRY(be->ops.adamw_step(be, *t->model->params[i].value, t->grads[i], t->m[i], t->v[i], ac));
    }
    return STATUS_OK;
}

static double seconds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static Status run_phases(Backend *be, const DemoOptions *o, Trainer *teacher, Trainer *student, ForwardState **tst,
                         Tensor *th) {
    ModelConfig tc = demo_config(0), sc = demo_config(1);
    TRY(trainer_init(teacher, be, &tc, o->seed + 1));
    printf("teacher: GQA, %lld layers, %lld heads over %lld kv heads, %lld parameters\n",
           (long long)tc.num_hidden_layers, (long long)tc.num_attention_heads,
           (long long)tc.num_key_value_heads, (long long)model_num_parameters(teacher->model));
    printf("phase 1: the teacher learns the synthetic language (its entropy, the best possible loss, is 0.898)\n");
    double t0 = seconds_now();
    for (int step = 1; step <= o->teacher_steps; step++) {
        LossSums s;
        double gn;
        TRY(train_step(teacher, step, o->teacher_steps, 3e-3f, o->seed, 0, NULL, NULL, tensor_none(), &s, &gn));
        if (step == 1 || step % 50 == 0 || step == o->teacher_steps)
            printf("  step %4d  ce %.4f  grad_norm %.3f  %.0f tok/s\n", step, s.ce / (double)s.counted, gn,
                   step * (double)(DEMO_BATCH * DEMO_SEQ) / (seconds_now() - t0));
    }

    TRY(trainer_init(student, be, &sc, o->seed + 2));
    int64_t kv_t = 0, kv_s = 0;
    for (int l = 0; l < tc.num_hidden_layers; l++) {
        kv_t += model_config_kv_values_per_token(&tc, l);
        kv_s += model_config_kv_values_per_token(&sc, l);
    }
    printf("student: MLA (r=%lld, dr=%lld), %lld parameters; KV cache %lld -> %lld values per token (%.1fx smaller)\n",
           (long long)sc.mla.kv_lora_rank, (long long)sc.mla.qk_rope_head_dim,
           (long long)model_num_parameters(student->model), (long long)kv_t, (long long)kv_s,
           (double)kv_t / (double)kv_s);
    printf("phase 2: the student learns from the teacher (0.5 KL + 0.5 CE)\n");
    TRY(forward_state_create(tst, teacher->model, DEMO_BATCH, DEMO_SEQ, 0));
    TRY(be->alloc(be, th, DT_F32, 2, (int64_t[]){DEMO_BATCH * DEMO_SEQ, tc.hidden_size}));
    t0 = seconds_now();
    for (int step = 1; step <= o->student_steps; step++) {
        LossSums s;
        double gn;
        /* The same language, in batches the teacher never saw. */
        TRY(train_step(student, step, o->student_steps, 3e-3f, o->seed, o->teacher_steps, teacher->model,
                       *tst, *th, &s, &gn));
        if (step == 1 || step % 50 == 0 || step == o->student_steps)
            printf("  step %4d  kl %.4f  ce %.4f  top1 agreement %.3f  %.0f tok/s\n", step,
                   s.kl / (double)s.counted, s.ce / (double)s.counted, (double)s.top1_agree / (double)s.counted,
                   step * (double)(DEMO_BATCH * DEMO_SEQ) / (seconds_now() - t0));
    }
    return STATUS_OK;
}

Status demo_run(const DemoOptions *o) {
    Backend *be = NULL;
    BackendOptions bo = {.threads = o->threads, .device = 0};
    TRY(backend_create(&be, o->device, bo));
    if (backend_check_ops(be) != STATUS_OK) {
        backend_destroy(be);
        return STATUS_ERROR;
    }
    Trainer teacher, student;
    memset(&teacher, 0, sizeof teacher);
    memset(&student, 0, sizeof student);
    ForwardState *tst = NULL;
    Tensor th = tensor_none();
    Status st = run_phases(be, o, &teacher, &student, &tst, &th);
    if (th.data) be->release(be, &th);
    forward_state_destroy(tst);
    trainer_free(&student);
    trainer_free(&teacher);
    backend_destroy(be);
    return st;
}
