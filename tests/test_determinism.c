/* Whole distillation steps on the CPU give the same bits with 1 and 2 threads: teacher forward,
 * student forward, fused LM-head loss, backward, gradient clipping and AdamW, three times over,
 * at sizes where every parallel loop and every tiled matrix product splits across threads. */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "model/model.h"
#include "model_fixtures.h"

enum { BATCH = 2, SEQ = 70, STEPS = 3 };

static ModelConfig medium(int mla) {
    ModelConfig c = tiny_student_config(mla ? 0x1 : 0x0, mla ? 24 : 0, 1);
    c.vocab_size = 301;
    c.hidden_size = 40;
    c.intermediate_size = 150;
    c.num_attention_heads = 5;
    c.num_key_value_heads = 1;
    c.head_dim = 8;
    c.mla.kv_lora_rank = 17;
    c.mla.qk_nope_head_dim = 9;
    c.mla.qk_rope_head_dim = 6;
    c.mla.v_head_dim = 11;
    return c;
}

/* Runs the steps with `threads` threads; returns the student's parameters, concatenated, and the
 * three losses. */
static float *train(int threads, int64_t *n_out, double losses[STEPS]) {
    Backend *be = test_cpu_backend(threads);
    ModelConfig tc = medium(0), sc = medium(1);
    Model *teacher = NULL, *student = NULL;
    ForwardState *tst = NULL, *sst = NULL;
    CHECK_OK(model_create(&teacher, be, &tc, SEQ));
    CHECK_OK(model_create(&student, be, &sc, SEQ));
    CHECK_OK(model_init_random(teacher, 1, 0.2f));
    CHECK_OK(model_init_random(student, 2, 0.2f));
    CHECK_OK(model_alloc_grads(student));
    CHECK_OK(forward_state_create(&tst, teacher, BATCH, SEQ, 0));
    CHECK_OK(forward_state_create(&sst, student, BATCH, SEQ, 1));

    int64_t N = BATCH * SEQ, D = sc.hidden_size;
    Tensor ids, targets, th, sh, dh;
    CHECK_OK(be->alloc(be, &ids, DT_I32, 1, &N));
    CHECK_OK(be->alloc(be, &targets, DT_I32, 1, &N));
    CHECK_OK(be->alloc(be, &th, DT_F32, 2, (int64_t[]){N, D}));
    CHECK_OK(be->alloc(be, &sh, DT_F32, 2, (int64_t[]){N, D}));
    CHECK_OK(be->alloc(be, &dh, DT_F32, 2, (int64_t[]){N, D}));
    for (int64_t i = 0; i < N; i++) {
        tensor_i32(ids)[i] = (int32_t)((i * 131 + 17) % sc.vocab_size);
        tensor_i32(targets)[i] = i % 9 == 0 ? -100 : (int32_t)((i * 131 + 148) % sc.vocab_size);
    }
    /* Moments for every parameter. */
    Tensor *m = calloc((size_t)student->n_params, sizeof(Tensor)), *v = calloc((size_t)student->n_params, sizeof(Tensor));
    Tensor *grads = calloc((size_t)student->n_params, sizeof(Tensor));
    for (int i = 0; i < student->n_params; i++) {
        Tensor *p = student->params[i].value;
        CHECK_OK(be->alloc(be, &m[i], DT_F32, p->ndim, p->shape));
        CHECK_OK(be->alloc(be, &v[i], DT_F32, p->ndim, p->shape));
        grads[i] = *student->params[i].grad;
    }
    LossConfig lc = {.kl_weight = 0.5f, .ce_weight = 0.5f, .temperature = 2.0f, .ignore_index = -100, .chunk_tokens = 0};
    for (int step = 1; step <= STEPS; step++) {
        CHECK_OK(model_zero_grads(student));
        CHECK_OK(model_forward(teacher, tst, ids, th));
        CHECK_OK(model_forward(student, sst, ids, sh));
        LossSums sums = {0};
        /* counted tokens are known before the call: every target but the ignored ones */
        int64_t counted = N - (N + 8) / 9;
        CHECK_OK(be->ops.lm_head_loss(be, &sums, dh, student->grad_lm_head, sh, student->lm_head, th,
                                      teacher->lm_head, targets, lc, 1.0f / (float)counted));
        CHECK(sums.counted == counted, "counted %lld tokens, expected %lld", (long long)sums.counted, (long long)counted);
        losses[step - 1] = sums.loss / (double)sums.counted;
        CHECK_OK(model_backward(student, sst, dh));
        double norm = 0;
        CHECK_OK(grad_norm_clip(be, grads, student->n_params, 1.0, &norm));
        for (int i = 0; i < student->n_params; i++) {
            AdamWConfig ac = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f,
                              .weight_decay = student->params[i].decay ? 0.1f : 0.0f, .step = step};
            CHECK_OK(be->ops.adamw_step(be, *student->params[i].value, grads[i], m[i], v[i], tensor_none(), ac));
        }
    }
    int64_t total = model_num_parameters(student), off = 0;
    float *out = test_alloc((size_t)total * sizeof(float));
    for (int i = 0; i < student->n_params; i++) {
        Tensor *p = student->params[i].value;
        memcpy(out + off, p->data, tensor_bytes(*p));
        off += tensor_numel(*p);
        be->release(be, &m[i]);
        be->release(be, &v[i]);
    }
    *n_out = total;
    free(m);
    free(v);
    free(grads);
    be->release(be, &ids);
    be->release(be, &targets);
    be->release(be, &th);
    be->release(be, &sh);
    be->release(be, &dh);
    forward_state_destroy(tst);
    forward_state_destroy(sst);
    model_destroy(teacher);
    model_destroy(student);
    backend_destroy(be);
    return out;
}

int main(void) {
    int64_t n1 = 0, n2 = 0;
    double l1[STEPS], l2[STEPS];
    float *p1 = train(1, &n1, l1);
    float *p2 = train(2, &n2, l2);
    CHECK(n1 == n2 && memcmp(p1, p2, (size_t)n1 * sizeof(float)) == 0,
          "three distillation steps: parameters with 1 and 2 threads are bitwise identical");
    CHECK(memcmp(l1, l2, sizeof l1) == 0, "losses with 1 and 2 threads are bitwise identical (%.9g %.9g %.9g)",
          l1[0], l1[1], l1[2]);
    CHECK(l1[2] < l1[0], "the loss falls over three steps: %.6g -> %.6g", l1[0], l1[2]);
    free(p1);
    free(p2);
    return test_finish("test_determinism");
}
