/* Gradient sums by layer (train/grad_sync_overlap.c) on the CPU, against a communicator that plays
 * two ranks holding the same gradients: every sum doubles its values, which is exact, so each path
 * must give 2 x the plain backward's gradients bit for bit. Checks that the groups are the layers,
 * last first, every tensor once; that overlap issues them during the last micro-batch's backward
 * only and without overlap after it, in the same groups; that these equal the bucketed CPU path;
 * that a failing sum stops backward with the layer named; and that whole trainer steps give the
 * same weights with overlap, without, and through the bucketed path. */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "model/model.h"
#include "model_fixtures.h"
#include "train/grad_sync.h"
#include "train/grad_sync_overlap.h"
#include "train/trainer.h"

enum { BATCH = 2, SEQ = 9, MICRO = 2, MAX_CALLS = 64, MAX_BUFS = 32 };

/* What the stream-ordered sums were asked, call by call. */
typedef struct {
    int n_calls, waits, fail_at_call;
    int n[MAX_CALLS];
    float *bufs[MAX_CALLS][MAX_BUFS];
    int64_t counts[MAX_CALLS][MAX_BUFS];
} TwinLog;

static void twice(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] += x[i];
}

static Status twin_sum_f32(Comm *c, float *buf, int64_t n) {
    twice(buf, n);
    return STATUS_OK;
}
static Status twin_sum_f64(Comm *c, double *buf, int64_t n) {
    for (int64_t i = 0; i < n; i++) buf[i] += buf[i];
    return STATUS_OK;
}
static Status twin_max_i32(Comm *c, int32_t *buf, int64_t n) { return STATUS_OK; }
static Status twin_broadcast(Comm *c, void *buf, size_t bytes, int root) { return STATUS_OK; }
static Status twin_barrier(Comm *c) { return STATUS_OK; }
static Status twin_reduce_scatter(Comm *c, const float *send, float *recv, int64_t count) {
    return errorf("not played by the twin communicator");
}
static Status twin_all_gather(Comm *c, const float *send, float *recv, int64_t count) {
    return errorf("not played by the twin communicator");
}
static void twin_abort(Comm *c, int status) { exit(status); }
static void twin_destroy(Comm *c) {}

/* On the CPU the "stream" is the host: the buffers are final when the call comes. */
static Status twin_sum_after(Comm *c, float *const *bufs, const int64_t *counts, int n, void *after) {
    TwinLog *log = c->impl;
    if (log->n_calls == log->fail_at_call) return errorf("rank 0: the peer is gone");
    if (log->n_calls == MAX_CALLS || n > MAX_BUFS) return errorf("twin: too many calls");
    int k = log->n_calls++;
    log->n[k] = n;
    for (int i = 0; i < n; i++) {
        log->bufs[k][i] = bufs[i];
        log->counts[k][i] = counts[i];
        twice(bufs[i], counts[i]);
    }
    return STATUS_OK;
}
static Status twin_wait(Comm *c, void *stream) {
    ((TwinLog *)c->impl)->waits++;
    return STATUS_OK;
}

/* Rank 0 of 2; with stream-ordered sums or (by_layer 0) without, like MPI. */
static Comm twin(TwinLog *log, int by_layer) {
    memset(log, 0, sizeof *log);
    log->fail_at_call = -1;
    Comm c = {.name = "twin", .impl = log, .timeout_s = 60};
    c.env.world = 2;
    strcpy(c.env.launcher, "env");
    c.all_reduce_sum_f32 = twin_sum_f32;
    c.all_reduce_sum_f64 = twin_sum_f64;
    c.all_reduce_max_i32 = twin_max_i32;
    c.reduce_scatter_sum_f32 = twin_reduce_scatter;
    c.all_gather_f32 = twin_all_gather;
    c.broadcast = twin_broadcast;
    c.barrier = twin_barrier;
    c.abort = twin_abort;
    c.destroy = twin_destroy;
    if (by_layer) {
        c.all_reduce_sum_f32_after = twin_sum_after;
        c.wait_issued = twin_wait;
    }
    return c;
}

/* ---- one model, MICRO micro-batches ---- */

typedef struct {
    Backend *be;
    Model *m;
    ForwardState *st;
    Tensor ids[MICRO], dhidden[MICRO], hidden, dhead[MICRO];
    int64_t total; /* gradient values */
} Fixture;

static Fixture fixture(void) {
    Fixture f = {0};
    f.be = test_cpu_backend(1);
    ModelConfig c = tiny_student_config(1u, 0, 1);
    c.num_hidden_layers = 3; /* GQA, MLA, MLA */
    c.layer_attention[1] = c.layer_attention[2] = ATTENTION_MLA;
    CHECK_OK(model_create(&f.m, f.be, &c, SEQ));
    CHECK_OK(model_init_random(f.m, 7, 0.3f));
    CHECK_OK(model_alloc_grads(f.m));
    CHECK_OK(forward_state_create(&f.st, f.m, BATCH, SEQ, 1));
    int64_t N = BATCH * SEQ, D = c.hidden_size, V = c.vocab_size;
    CHECK_OK(f.be->alloc(f.be, &f.hidden, DT_F32, 2, (int64_t[]){N, D}));
    for (int a = 0; a < MICRO; a++) {
        int32_t ids[BATCH * SEQ];
        for (int64_t i = 0; i < N; i++) ids[i] = (int32_t)((i * 7 + 3 + 5 * a) % V);
        float *dh = test_alloc((size_t)(N * D) * 4), *dw = test_alloc((size_t)(V * D) * 4);
        fill_normal(dh, N * D, 10 + (uint64_t)a, 0.1f);
        fill_normal(dw, V * D, 20 + (uint64_t)a, 0.1f);
        CHECK_OK(f.be->alloc(f.be, &f.ids[a], DT_I32, 1, &N));
        CHECK_OK(f.be->alloc(f.be, &f.dhidden[a], DT_F32, 2, (int64_t[]){N, D}));
        CHECK_OK(f.be->alloc(f.be, &f.dhead[a], DT_F32, 2, (int64_t[]){V, D}));
        CHECK_OK(f.be->upload(f.be, f.ids[a], ids));
        CHECK_OK(f.be->upload(f.be, f.dhidden[a], dh));
        CHECK_OK(f.be->upload(f.be, f.dhead[a], dw));
        free(dh);
        free(dw);
    }
    for (int i = 0; i < f.m->n_params; i++) f.total += tensor_numel(*f.m->params[i].grad);
    return f;
}

static void fixture_free(Fixture *f) {
    for (int a = 0; a < MICRO; a++) {
        f->be->release(f->be, &f->ids[a]);
        f->be->release(f->be, &f->dhidden[a]);
        f->be->release(f->be, &f->dhead[a]);
    }
    f->be->release(f->be, &f->hidden);
    forward_state_destroy(f->st);
    model_destroy(f->m);
    backend_destroy(f->be);
}

/* The head's gradient as the loss would leave it (added, as micro-batches accumulate). */
static void add_head_grad(Fixture *f, int a) {
    Tensor *g = &f->m->grad_lm_head;
    float *x = tensor_f32(*g), *d = tensor_f32(f->dhead[a]);
    for (int64_t i = 0; i < tensor_numel(*g); i++) x[i] += d[i];
}

static float *gradients(Fixture *f) {
    float *out = test_alloc((size_t)f->total * 4);
    int64_t off = 0;
    for (int i = 0; i < f->m->n_params; i++) {
        Tensor *g = f->m->params[i].grad;
        memcpy(out + off, g->data, tensor_bytes(*g));
        off += tensor_numel(*g);
    }
    return out;
}

/* The step's backward through GradSync; `issued_during` gets how many groups the last backward
 * issued by itself. NULL comm: plain model_backward, no sums. */
static Status run_step(Fixture *f, Comm *c, int overlap, int *issued_during) {
    TRY(model_zero_grads(f->m));
    GradSync s = {0};
    if (c) s = grad_sync_start(c, f->m, overlap);
    for (int a = 0; a < MICRO; a++) {
        TRY(model_forward(f->m, f->st, f->ids[a], f->hidden));
        add_head_grad(f, a);
        if (!c) {
            TRY(model_backward(f->m, f->st, f->dhidden[a]));
            continue;
        }
        TRY(grad_sync_backward(&s, f->st, f->dhidden[a], a + 1 == MICRO));
        if (a + 1 < MICRO) CHECK(s.issued == 0, "overlap %d: %d groups issued before the last micro-batch", overlap, s.issued);
    }
    if (!c) return STATUS_OK;
    if (issued_during) *issued_during = s.issued;
    float *bucket = test_alloc((size_t)GRAD_BUCKET_VALUES * sizeof(float));
    Status st = grad_sync_finish(&s, bucket);
    free(bucket);
    return st;
}

static int same_bits(const float *a, const float *b, int64_t n) { return memcmp(a, b, (size_t)n * 4) == 0; }

/* The groups logged are the layers, last first, then the rest; each in parameter order, every
 * tensor once, whole. */
static void check_groups(Fixture *f, const TwinLog *log, const char *what) {
    Model *m = f->m;
    int L = (int)m->cfg.num_hidden_layers;
    CHECK(log->n_calls == L + 1, "%s: %d groups issued, expected %d", what, log->n_calls, L + 1);
    int seen = 0;
    for (int k = 0; k < log->n_calls && k <= L; k++) {
        int layer = k < L ? L - 1 - k : -1;
        int j = 0;
        for (int i = 0; i < m->n_params; i++) {
            Tensor *g = m->params[i].grad;
            int in_layer = layer >= 0 ? (char *)g >= (char *)&m->grad_layers[layer] &&
                                            (char *)g < (char *)&m->grad_layers[layer + 1]
                                      : (char *)g < (char *)m->grad_layers ||
                                            (char *)g >= (char *)&m->grad_layers[L];
            if (!in_layer) continue;
            int ok = j < log->n[k] && log->bufs[k][j] == tensor_f32(*g) && log->counts[k][j] == tensor_numel(*g);
            CHECK(ok, "%s: group %d (layer %d): tensor %d is not %s", what, k, layer, j, m->params[i].name);
            j++;
            seen++;
        }
        CHECK(j == log->n[k], "%s: group %d (layer %d) has %d tensors, expected %d", what, k, layer, log->n[k], j);
    }
    CHECK(seen == m->n_params, "%s: %d of %d tensors summed", what, seen, m->n_params);
    CHECK(log->waits == 1, "%s: waited %d times for the sums", what, log->waits);
}

static void test_model_level(void) {
    Fixture f = fixture();
    TwinLog log_overlap, log_after, log_buckets;
    int L = (int)f.m->cfg.num_hidden_layers, during = -1;

    CHECK_OK(run_step(&f, NULL, 0, NULL));
    float *plain = gradients(&f), *want = test_alloc((size_t)f.total * 4);
    memcpy(want, plain, (size_t)f.total * 4);
    twice(want, f.total);

    Comm c = twin(&log_overlap, 1);
    CHECK_OK(run_step(&f, &c, 1, &during));
    CHECK(during == L + 1, "overlap: the last backward issued %d groups, expected all %d", during, L + 1);
    float *overlapped = gradients(&f);
    CHECK(same_bits(overlapped, want, f.total), "overlap: the gradients are not 2 x the plain backward's");
    check_groups(&f, &log_overlap, "overlap");

    c = twin(&log_after, 1);
    CHECK_OK(run_step(&f, &c, 0, &during));
    CHECK(during == 0, "no overlap: backward issued %d groups", during);
    float *after = gradients(&f);
    CHECK(same_bits(after, want, f.total), "no overlap: the gradients are not 2 x the plain backward's");
    check_groups(&f, &log_after, "no overlap");
    int same_calls = log_after.n_calls == log_overlap.n_calls;
    for (int k = 0; same_calls && k < log_after.n_calls; k++)
        same_calls = log_after.n[k] == log_overlap.n[k] &&
                     memcmp(log_after.bufs[k], log_overlap.bufs[k], (size_t)log_after.n[k] * sizeof(float *)) == 0 &&
                     memcmp(log_after.counts[k], log_overlap.counts[k], (size_t)log_after.n[k] * 8) == 0;
    CHECK(same_calls, "overlapped and not, the groups differ");

    c = twin(&log_buckets, 0); /* MPI-like: no stream-ordered sums, the bucketed path */
    CHECK_OK(run_step(&f, &c, 1, NULL));
    float *buckets = gradients(&f);
    CHECK(log_buckets.n_calls == 0, "the bucketed path used stream-ordered sums");
    CHECK(same_bits(buckets, want, f.total), "the bucketed path: the gradients are not 2 x the plain backward's");

    Comm *single = NULL;
    CHECK_OK(comm_single_create(&single));
    CHECK_OK(run_step(&f, single, 1, NULL));
    float *alone = gradients(&f);
    CHECK(same_bits(alone, plain, f.total), "one process: the gradients changed");
    comm_destroy(single);

    /* A sum failing (a peer gone) stops backward, naming the layer. */
    TwinLog log_fail;
    c = twin(&log_fail, 1);
    log_fail.fail_at_call = 1; /* the second group: layer L-2 */
    char needle[64];
    snprintf(needle, sizeof needle, "summing layer %d's gradients: rank 0: the peer is gone", L - 2);
    CHECK_ERR(run_step(&f, &c, 1, NULL), needle);

    free(plain);
    free(want);
    free(overlapped);
    free(after);
    free(buckets);
    free(alone);
    fixture_free(&f);
}

/* ---- whole trainer steps ---- */

static const char *ARCH =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 61, "
    "\"hidden_size\": 16, \"intermediate_size\": 24, \"num_hidden_layers\": 3, \"num_attention_heads\": 4, "
    "\"num_key_value_heads\": 2, \"head_dim\": 4, \"rope_theta\": 10000.0, \"rms_norm_eps\": 1e-5, "
    "\"tie_word_embeddings\": true, \"max_position_embeddings\": 64}";

/* The student's weights after 3 steps of random batches on the twin communicator. */
static float *train_weights(int by_layer, int overlap, int64_t *n, double *loss) {
    char json[4096];
    snprintf(json, sizeof json,
             "{\"run\": {\"dir\": \"unused\", \"seed\": 5, \"threads\": 1},"
             " \"teacher\": {\"arch\": %s, \"init\": \"random\", \"seed\": 4},"
             " \"student\": {\"init_from\": {\"arch\": %s, \"init\": \"random\", \"seed\": 9},"
             "   \"mla\": {\"kv_lora_rank\": 6, \"qk_rope_head_dim\": 2, \"qk_nope_head_dim\": 2, \"v_head_dim\": 4,"
             "     \"init\": \"random\", \"gqa_layers\": [1]}},"
             " \"data\": {\"seq_len\": 12},"
             " \"optim\": {\"lr\": 3e-3, \"warmup_steps\": 0},"
             " \"train\": {\"micro_batch\": 2, \"global_batch\": 8, \"max_steps\": 3},"
             " \"dist\": {\"overlap\": %s}}",
             ARCH, ARCH, overlap ? "true" : "false");
    Config *cfg = calloc(1, sizeof *cfg);
    TwinLog log;
    Comm c = twin(&log, by_layer);
    Trainer *t = NULL;
    float *w = NULL;
    *n = 0;
    if (CHECK_OK(config_parse_json(cfg, json, "test", NULL, 0)) &&
        CHECK_OK(trainer_create(&t, cfg, (TrainerOptions){.random_batches = 1, .quiet = 1, .comm = &c}))) {
        CHECK(t->accum == 2, "2 micro-batches a step on each of 2 ranks, got %lld", (long long)t->accum);
        StepRecord r;
        for (int s = 0; s < 3; s++) CHECK_OK(trainer_step(t, &r));
        *loss = r.loss;
        CHECK(log.n_calls == (by_layer ? 3 * (3 + 1) : 0), "by_layer %d: %d groups issued in 3 steps", by_layer,
              log.n_calls);
        w = model_host_copy(t->student, 0, n);
    }
    trainer_destroy(t);
    free(cfg);
    return w;
}

static void test_trainer_steps(void) {
    int64_t n1 = 0, n2 = 0, n3 = 0;
    double l1 = 0, l2 = 0, l3 = 0;
    float *overlapped = train_weights(1, 1, &n1, &l1);
    float *after = train_weights(1, 0, &n2, &l2);
    float *buckets = train_weights(0, 1, &n3, &l3);
    if (overlapped && after && buckets && n1 == n2 && n1 == n3) {
        CHECK(same_bits(overlapped, after, n1), "trainer: overlapped and not, the weights differ after 3 steps");
        CHECK(same_bits(overlapped, buckets, n1), "trainer: by layer and bucketed, the weights differ after 3 steps");
        CHECK(l1 == l2 && l1 == l3, "trainer: losses %.9g, %.9g, %.9g differ", l1, l2, l3);
    } else {
        CHECK(0, "trainer: a run failed");
    }
    free(overlapped);
    free(after);
    free(buckets);
}

int main(void) {
    test_model_level();
    test_trainer_steps();
    return test_finish("test_dist_grad_sync");
}
