/* Gradient sums by layer on the GPU (train/grad_sync_overlap.c over dist/comm_nccl.cu), one rank run
 * directly or N under mpirun (a GPU each), every rank with the same inputs:
 *   - the stream-ordered sums of a group of buffers against float64, the same bits on every rank,
 *     and (up to 2 ranks, where any order of summation is exact) the bits of the synchronous sum;
 *   - a tiny student's backward with the sums overlapped and not: the same bits, and world x the
 *     plain backward's gradients (bit for bit up to 2 ranks);
 *   - whole trainer steps on the NCCL communicator, overlapped and not: the same weights, and on
 *     one rank the weights of a run with no communicator at all.
 * "skipped: no CUDA device" where there is none. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "nccl_fixture.h"
#include "model/model.h"
#include "model_fixtures.h"
#include "train/grad_sync_overlap.h"
#include "train/trainer.h"

#ifdef MLATRAIN_HAVE_CUDA
#include "model/ops/cuda/cuda_backend.h"

enum { BATCH = 2, SEQ = 9, MICRO = 2 };

static Backend *gpu;
static int rank, world;

static Tensor device_f32(int64_t n, const float *host) {
    Tensor t;
    if (!CHECK_OK(gpu->alloc(gpu, &t, DT_F32, 1, &n))) exit(1);
    if (host) CHECK_OK(gpu->upload(gpu, t, host));
    return t;
}

/* A hash of this rank's bytes, gathered as exact small floats (host values through the
 * communicator's staging) and compared. */
static void check_same_bits(Comm *c, const char *what, const void *buf, size_t bytes) {
    const unsigned char *b = buf;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < bytes; i++) h = (h ^ b[i]) * 1099511628211ull;
    for (int k = 0; k < 4; k++) {
        int32_t part = (int32_t)((h >> (16 * k)) & 0xffff), lo = -part;
        if (!CHECK_OK(c->all_reduce_max_i32(c, &part, 1)) || !CHECK_OK(c->all_reduce_max_i32(c, &lo, 1))) return;
        CHECK(part == -lo, "%s: the result differs between ranks", what);
    }
}

/* ---- the communicator's stream-ordered sums ---- */

static void test_sums_after(Comm *c) {
    enum { N_BUFS = 3 };
    const int64_t counts[N_BUFS] = {1, 1001, 3000001};
    float *host[N_BUFS], *sync_bits[N_BUFS], *bufs[N_BUFS];
    Tensor d[N_BUFS], d_sync[N_BUFS];
    for (int i = 0; i < N_BUFS; i++) {
        host[i] = test_alloc((size_t)counts[i] * 4);
        sync_bits[i] = test_alloc((size_t)counts[i] * 4);
        fill_normal(host[i], counts[i], 500 + 10 * (uint64_t)rank + (uint64_t)i, 1.0f);
        d[i] = device_f32(counts[i], host[i]);
        d_sync[i] = device_f32(counts[i], host[i]);
        bufs[i] = tensor_f32(d[i]);
        CHECK_OK(c->all_reduce_sum_f32(c, tensor_f32(d_sync[i]), counts[i]));
        CHECK_OK(gpu->download(gpu, sync_bits[i], d_sync[i]));
    }
    void *compute = cuda_backend_stream(gpu);
    if (CHECK_OK(c->all_reduce_sum_f32_after(c, bufs, counts, N_BUFS, compute)) &&
        CHECK_OK(c->wait_issued(c, compute))) {
        for (int i = 0; i < N_BUFS; i++) {
            double *ref = calloc((size_t)counts[i], sizeof *ref);
            float *peer = test_alloc((size_t)counts[i] * 4), *got = test_alloc((size_t)counts[i] * 4);
            for (int r = 0; r < world; r++) {
                fill_normal(peer, counts[i], 500 + 10 * (uint64_t)r + (uint64_t)i, 1.0f);
                for (int64_t j = 0; j < counts[i]; j++) ref[j] += peer[j];
            }
            CHECK_OK(gpu->download(gpu, got, d[i]));
            double err = rel_error_f64(got, ref, counts[i]);
            CHECK(err < 1e-6, "all_reduce_sum_f32_after n=%lld: rel error %.3g", (long long)counts[i], err);
            check_same_bits(c, "all_reduce_sum_f32_after", got, (size_t)counts[i] * 4);
            if (world <= 2)
                CHECK(memcmp(got, sync_bits[i], (size_t)counts[i] * 4) == 0,
                      "all_reduce_sum_f32_after n=%lld: not the bits of all_reduce_sum_f32", (long long)counts[i]);
            free(ref);
            free(peer);
            free(got);
        }
    }
    /* Host buffers are refused, naming the call. */
    float on_host[4] = {0};
    float *host_bufs[1] = {on_host};
    int64_t four[1] = {4};
    CHECK_ERR(c->all_reduce_sum_f32_after(c, host_bufs, four, 1, compute), "host memory");
    for (int i = 0; i < N_BUFS; i++) {
        gpu->release(gpu, &d[i]);
        gpu->release(gpu, &d_sync[i]);
        free(host[i]);
        free(sync_bits[i]);
    }
}

/* Host values through the staging buffers: a sum larger than one staging piece, a broadcast. */
static void test_host_values(Comm *c) {
    int64_t n = 40000; /* 320 KB of doubles: five pieces */
    double *x = test_alloc((size_t)n * 8);
    for (int64_t i = 0; i < n; i++) x[i] = (double)(i % 1000) + 0.25 * rank;
    if (CHECK_OK(c->all_reduce_sum_f64(c, x, n))) {
        int64_t bad = 0;
        for (int64_t i = 0; i < n; i++)
            bad += x[i] != (double)world * (double)(i % 1000) + 0.25 * (double)world * (world - 1) / 2;
        CHECK(bad == 0, "all_reduce_sum_f64 of host values: %lld wrong", (long long)bad);
    }
    char path[4096];
    snprintf(path, sizeof path, "rank %d's path", rank);
    if (CHECK_OK(c->broadcast(c, path, sizeof path, 0)))
        CHECK(strcmp(path, "rank 0's path") == 0, "broadcast of host bytes: got '%s'", path);
    float send[64] = {0}, recv[1]; /* one value from each of up to 64 ranks */
    if (world <= 64) CHECK_ERR(c->reduce_scatter_sum_f32(c, send, recv, 1), "host memory");
    free(x);
}

/* ---- a tiny student's backward ---- */

typedef struct {
    Model *m;
    ForwardState *st;
    Tensor ids[MICRO], dhidden[MICRO], hidden;
    int64_t total;
} Fixture;

static Fixture fixture(void) {
    Fixture f = {0};
    ModelConfig c = tiny_student_config(1u, 0, 1);
    c.num_hidden_layers = 3;
    c.layer_attention[1] = c.layer_attention[2] = ATTENTION_MLA;
    CHECK_OK(model_create(&f.m, gpu, &c, SEQ));
    CHECK_OK(model_init_random(f.m, 7, 0.3f));
    CHECK_OK(model_alloc_grads(f.m));
    CHECK_OK(forward_state_create(&f.st, f.m, BATCH, SEQ, 1));
    int64_t N = BATCH * SEQ, D = c.hidden_size;
    CHECK_OK(gpu->alloc(gpu, &f.hidden, DT_F32, 2, (int64_t[]){N, D}));
    for (int a = 0; a < MICRO; a++) {
        int32_t ids[BATCH * SEQ];
        for (int64_t i = 0; i < N; i++) ids[i] = (int32_t)((i * 7 + 3 + 5 * a) % c.vocab_size);
        float *dh = test_alloc((size_t)(N * D) * 4);
        fill_normal(dh, N * D, 10 + (uint64_t)a, 0.1f);
        CHECK_OK(gpu->alloc(gpu, &f.ids[a], DT_I32, 1, &N));
        CHECK_OK(gpu->alloc(gpu, &f.dhidden[a], DT_F32, 2, (int64_t[]){N, D}));
        CHECK_OK(gpu->upload(gpu, f.ids[a], ids));
        CHECK_OK(gpu->upload(gpu, f.dhidden[a], dh));
        free(dh);
    }
    for (int i = 0; i < f.m->n_params; i++) f.total += tensor_numel(*f.m->params[i].grad);
    return f;
}

static void fixture_free(Fixture *f) {
    for (int a = 0; a < MICRO; a++) {
        gpu->release(gpu, &f->ids[a]);
        gpu->release(gpu, &f->dhidden[a]);
    }
    gpu->release(gpu, &f->hidden);
    forward_state_destroy(f->st);
    model_destroy(f->m);
}

/* The step's gradients: plain backward (c NULL), or through GradSync on c. */
static float *step_gradients(Fixture *f, Comm *c, int overlap, int *issued_during) {
    CHECK_OK(model_zero_grads(f->m));
    GradSync s = {0};
    if (c) s = grad_sync_start(c, f->m, overlap);
    for (int a = 0; a < MICRO; a++) {
        CHECK_OK(model_forward(f->m, f->st, f->ids[a], f->hidden));
        if (c)
            CHECK_OK(grad_sync_backward(&s, f->st, f->dhidden[a], a + 1 == MICRO));
        else
            CHECK_OK(model_backward(f->m, f->st, f->dhidden[a]));
    }
    if (c) {
        *issued_during = s.issued;
        CHECK_OK(grad_sync_finish(&s, NULL));
    }
    float *out = test_alloc((size_t)f->total * 4);
    int64_t off = 0;
    for (int i = 0; i < f->m->n_params; i++) {
        CHECK_OK(backend_download_f32(gpu, out + off, *f->m->params[i].grad));
        off += tensor_numel(*f->m->params[i].grad);
    }
    return out;
}

static void test_backward(Comm *c) {
    Fixture f = fixture();
    int L = (int)f.m->cfg.num_hidden_layers, during_overlap = -1, during_after = -1;
    float *plain = step_gradients(&f, NULL, 0, NULL);
    float *overlapped = step_gradients(&f, c, 1, &during_overlap);
    float *after = step_gradients(&f, c, 0, &during_after);
    CHECK(during_overlap == L + 1, "overlap: the last backward issued %d groups, expected %d", during_overlap, L + 1);
    CHECK(during_after == 0, "no overlap: backward issued %d groups", during_after);
    CHECK(memcmp(overlapped, after, (size_t)f.total * 4) == 0, "backward: overlapped and not, the sums differ");
    check_same_bits(c, "backward's sums", overlapped, (size_t)f.total * 4);
    double *want = calloc((size_t)f.total, sizeof *want);
    for (int64_t i = 0; i < f.total; i++) want[i] = (double)world * plain[i];
    double err = rel_error_f64(overlapped, want, f.total);
    CHECK(err < 1e-6, "backward: the sums are not %d x the plain gradients (rel error %.3g)", world, err);
    if (world <= 2) { /* x + x is exact */
        int64_t bad = 0;
        for (int64_t i = 0; i < f.total; i++) bad += overlapped[i] != (float)want[i];
        CHECK(bad == 0, "backward: %lld sums are not exactly %d x the plain gradient", (long long)bad, world);
    }
    free(plain);
    free(overlapped);
    free(after);
    free(want);
    fixture_free(&f);
}

/* ---- whole trainer steps ---- */

static const char *ARCH =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 61, "
    "\"hidden_size\": 16, \"intermediate_size\": 24, \"num_hidden_layers\": 3, \"num_attention_heads\": 4, "
    "\"num_key_value_heads\": 2, \"head_dim\": 4, \"rope_theta\": 10000.0, \"rms_norm_eps\": 1e-5, "
    "\"tie_word_embeddings\": true, \"max_position_embeddings\": 64}";

/* The student's weights after 3 steps on random batches (the same on every rank). */
static float *train_weights_with(Comm *c, int overlap, int zero1, int64_t *n) {
    char json[4096];
    snprintf(json, sizeof json,
             "{\"run\": {\"dir\": \"unused\", \"seed\": 5}, \"device\": \"cuda\","
             " \"teacher\": {\"arch\": %s, \"init\": \"random\", \"seed\": 4},"
             " \"student\": {\"init_from\": {\"arch\": %s, \"init\": \"random\", \"seed\": 9},"
             "   \"mla\": {\"kv_lora_rank\": 6, \"qk_rope_head_dim\": 2, \"qk_nope_head_dim\": 2, \"v_head_dim\": 4,"
             "     \"init\": \"random\", \"gqa_layers\": [1]}},"
             " \"data\": {\"seq_len\": 12},"
             " \"optim\": {\"lr\": 3e-3, \"warmup_steps\": 0},"
             " \"train\": {\"micro_batch\": 2, \"global_batch\": %d, \"max_steps\": 3},"
             " \"dist\": {\"overlap\": %s, \"zero1\": %s}}",
             ARCH, ARCH, 2 * 2 * c->env.world, overlap ? "true" : "false", zero1 ? "true" : "false");
    Config *cfg = calloc(1, sizeof *cfg);
    Trainer *t = NULL;
    float *w = NULL;
    *n = 0;
    if (CHECK_OK(config_parse_json(cfg, json, "test", NULL, 0)) &&
        CHECK_OK(trainer_create(&t, cfg, (TrainerOptions){.random_batches = 1, .quiet = 1, .comm = c}))) {
        StepRecord r;
        for (int s = 0; s < 3; s++) CHECK_OK(trainer_step(t, &r));
        w = model_host_copy(t->student, 0, n);
    }
    trainer_destroy(t);
    free(cfg);
    return w;
}

static float *train_weights(Comm *c, int overlap, int64_t *n) { return train_weights_with(c, overlap, 0, n); }

static void test_trainer_steps(Comm *c) {
    int64_t n1 = 0, n2 = 0, n3 = 0;
    float *overlapped = train_weights(c, 1, &n1), *after = train_weights(c, 0, &n2), *alone = NULL;
    if (overlapped && after && n1 == n2) {
        CHECK(memcmp(overlapped, after, (size_t)n1 * 4) == 0, "trainer: overlapped and not, the weights differ");
        check_same_bits(c, "trainer's weights", overlapped, (size_t)n1 * 4);
    } else {
        CHECK(0, "trainer: a run failed");
    }
    if (world == 1) { /* a sum over one rank changes nothing */
        Comm *single = NULL;
        CHECK_OK(comm_single_create(&single));
        alone = train_weights(single, 1, &n3);
        comm_destroy(single);
        CHECK(alone && overlapped && n3 == n1 && memcmp(alone, overlapped, (size_t)n1 * 4) == 0,
              "trainer: the NCCL communicator of one rank changed the weights");
    }
    /* ZeRO-1 on the GPU (reduce-scatter, shard update, all-gather over NCCL): the same AdamW on the
     * same summed gradients; only the clipping norm is summed in another grouping (a last-bit
     * difference of the scale at most), so within 1e-6 of the replicated optimizer, and the same
     * bits on every rank. */
    int64_t n4 = 0;
    float *sharded = train_weights_with(c, 1, 1, &n4);
    double err = sharded && overlapped && n4 == n1 ? rel_error_f32(sharded, overlapped, n1) : 1.0;
    CHECK(err < 1e-6, "trainer: ZeRO-1 on the GPU against the replicated optimizer: rel error %.3g", err);
    if (sharded) check_same_bits(c, "ZeRO-1 trainer's weights", sharded, (size_t)n4 * 4);
    free(sharded);
    free(overlapped);
    free(after);
    free(alone);
}

int main(void) {
    Comm *c = NULL;
    switch (nccl_fixture_open(&c, &gpu)) {
    case NCCL_FIXTURE_SKIPPED: return TEST_SKIPPED;
    case NCCL_FIXTURE_FAILED: return test_finish("test_gpu_dist_grad_sync");
    case NCCL_FIXTURE_READY: break;
    }
    rank = c->env.rank;
    world = c->env.world;
    CHECK(c->all_reduce_sum_f32_after && c->wait_issued, "the NCCL communicator has no stream-ordered sums");

    test_sums_after(c);
    test_host_values(c);
    test_backward(c);
    test_trainer_steps(c);

    backend_destroy(gpu);
    comm_destroy(c);
    char name[64];
    snprintf(name, sizeof name, "test_gpu_dist_grad_sync rank %d of %d", rank, world);
    return test_finish(name);
}

#else

int main(void) {
    printf("skipped: this build has no CUDA\n");
    return TEST_SKIPPED;
}

#endif
