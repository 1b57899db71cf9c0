/* Whole distillation steps on the CUDA backend against the CPU backend: teacher forward, student
 * forward, the fused LM-head loss, backward, gradient clipping and AdamW on tiny hybrid and all-MLA
 * students, in f32 and in bf16 (bf16 teacher, f32 master weights with bf16 copies written by AdamW);
 * two GPU runs give the same bits, and so do GPU runs with activations recomputed (per layer, or the
 * MLP's gate and up). Reports "skipped: no CUDA device" where there is none. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "model/model.h"
#include "model_fixtures.h"

enum { BATCH = 2, SEQ = 37, STEPS = 2 };

typedef struct {
    float *params;        /* the student's parameters after the steps, concatenated */
    float *grads;         /* its gradients of step 1 (after clipping), concatenated */
    int64_t *offsets;     /* where each parameter starts in both, [n_params + 1] */
    int n_params;
    double losses[STEPS];
} StepResult;

static StepResult train(Backend *be, ModelConfig tc, ModelConfig sc, DType dtype, ForwardMode mode) {
    StepResult r = {0};
    Model *teacher = NULL, *student = NULL;
    ForwardState *tst = NULL, *sst = NULL;
    CHECK_OK(model_create(&teacher, be, &tc, SEQ));
    CHECK_OK(model_create(&student, be, &sc, SEQ));
    CHECK_OK(model_init_random(teacher, 1, 0.2f));
    CHECK_OK(model_init_random(student, 2, 0.2f));
    CHECK_OK(model_set_precision(teacher, dtype, dtype));
    CHECK_OK(model_set_precision(student, DT_F32, dtype));
    CHECK_OK(model_alloc_grads(student));
    CHECK_OK(forward_state_create(&tst, teacher, BATCH, SEQ, 0));
    CHECK_OK(forward_state_create(&sst, student, BATCH, SEQ, mode));

    int64_t N = BATCH * SEQ, D = sc.hidden_size, Dt = tc.hidden_size;
    Tensor ids, targets, th, sh, dh;
    CHECK_OK(be->alloc(be, &ids, DT_I32, 1, &N));
    CHECK_OK(be->alloc(be, &targets, DT_I32, 1, &N));
    CHECK_OK(be->alloc(be, &th, dtype, 2, (int64_t[]){N, Dt}));
    CHECK_OK(be->alloc(be, &sh, dtype, 2, (int64_t[]){N, D}));
    CHECK_OK(be->alloc(be, &dh, dtype, 2, (int64_t[]){N, D}));
    int32_t *ids_h = test_alloc((size_t)N * 4), *tg_h = test_alloc((size_t)N * 4);
    for (int64_t i = 0; i < N; i++) {
        ids_h[i] = (int32_t)((i * 131 + 17) % sc.vocab_size);
        tg_h[i] = i % 9 == 0 ? -100 : (int32_t)((i * 131 + 148) % sc.vocab_size);
    }
    CHECK_OK(be->upload(be, ids, ids_h));
    CHECK_OK(be->upload(be, targets, tg_h));

    r.n_params = student->n_params;
    r.offsets = test_alloc((size_t)(r.n_params + 1) * sizeof(int64_t));
    r.offsets[0] = 0;
    for (int i = 0; i < r.n_params; i++) r.offsets[i + 1] = r.offsets[i] + tensor_numel(*student->params[i].value);

    const size_t tensors_bytes = (size_t)(r.n_params > 0 ? r.n_params : 1) * sizeof(Tensor);
    Tensor *m = test_alloc(tensors_bytes), *v = test_alloc(tensors_bytes), *grads = test_alloc(tensors_bytes);
    for (int i = 0; i < r.n_params; i++) {
        Tensor *p = student->params[i].value;
        CHECK_OK(be->alloc(be, &m[i], DT_F32, p->ndim, p->shape));
        CHECK_OK(be->alloc(be, &v[i], DT_F32, p->ndim, p->shape));
        grads[i] = *student->params[i].grad;
    }
    LossConfig lc = {.kl_weight = 0.5f, .ce_weight = 0.5f, .temperature = 2.0f, .ignore_index = -100, .chunk_tokens = 0};
    const int64_t counted = N - (N + 8) / 9;
    for (int step = 1; step <= STEPS; step++) {
        CHECK_OK(model_zero_grads(student));
        CHECK_OK(model_forward(teacher, tst, ids, th));
        CHECK_OK(model_forward(student, sst, ids, sh));
        LossSums sums = {0};
        CHECK_OK(be->ops.lm_head_loss(be, &sums, dh, student->grad_lm_head, sh, model_compute_lm_head(student), th,
                                      model_compute_lm_head(teacher), targets, lc, 1.0f / (float)counted));
        CHECK(sums.counted == counted, "%s: counted %lld tokens, expected %lld", be->name, (long long)sums.counted,
              (long long)counted);
        r.losses[step - 1] = sums.loss / (double)counted;
        CHECK_OK(model_backward(student, sst, dh));
        double norm = 0;
        CHECK_OK(grad_norm_clip(be, grads, r.n_params, 1.0, &norm));
        int64_t n_values = 0;
        if (step == 1) r.grads = model_host_copy(student, 1, &n_values);
        /* lr small enough that an element whose gradient is zero up to roundoff, where Adam's
         * normalised step can take either sign, moves the parameters by less than the tolerance */
        for (int i = 0; i < r.n_params; i++) {
            AdamWConfig ac = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f,
                              .weight_decay = student->params[i].decay ? 0.1f : 0.0f, .step = step};
            Tensor copy = student->params[i].compute ? *student->params[i].compute : tensor_none();
            CHECK_OK(be->ops.adamw_step(be, *student->params[i].value, grads[i], m[i], v[i], copy, ac));
        }
    }
    int64_t n_values = 0;
    r.params = model_host_copy(student, 0, &n_values);
    for (int i = 0; i < r.n_params; i++) {
        be->release(be, &m[i]);
        be->release(be, &v[i]);
    }
    free(m);
    free(v);
    free(grads);
    free(ids_h);
    free(tg_h);
    Tensor *all[] = {&ids, &targets, &th, &sh, &dh};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) be->release(be, all[i]);
    forward_state_destroy(tst);
    forward_state_destroy(sst);
    model_destroy(teacher);
    model_destroy(student);
    return r;
}

static void result_free(StepResult *r) {
    free(r->params);
    free(r->grads);
    free(r->offsets);
}

/* CUDA against CPU, and CUDA against itself. Float32 on both sides: the losses agree to roundoff
 * (1e-5); each gradient tensor within 1e-3 (a tensor with a small gradient carries the absolute
 * roundoff of the large ones upstream of it); the parameters after the steps within 1e-4. bf16: the
 * GPU rounds to bf16 where the CPU reference keeps f32 (attention's probabilities before P V, as
 * flash attention does; the logits' gradient before its products), and every later activation
 * gradient is rounded again from slightly different values: losses within 1e-3, each gradient
 * tensor within 5e-2 (1-2% seen for the small tensors under a CPU emulation of the kernels),
 * parameters (moved by Adam's normalised steps of lr = 1e-3) 1e-3. */
static void compare_backends(Backend *gpu, Backend *cpu, const char *name, ModelConfig tc, ModelConfig sc,
                             DType dtype) {
    const int bf16 = dtype == DT_BF16;
    const double loss_tol = bf16 ? 1e-3 : 1e-5, grad_tol = bf16 ? 5e-2 : 1e-3, param_tol = bf16 ? 1e-3 : 1e-4;
    StepResult c = train(cpu, tc, sc, dtype, FORWARD_KEEP), g = train(gpu, tc, sc, dtype, FORWARD_KEEP);
    StepResult g2 = train(gpu, tc, sc, dtype, FORWARD_KEEP);
    CHECK(c.n_params == g.n_params, "%s: %d parameters on cpu, %d on cuda", name, c.n_params, g.n_params);
    if (c.n_params != g.n_params) return;
    for (int s = 0; s < STEPS; s++)
        CHECK(fabs(g.losses[s] - c.losses[s]) <= loss_tol * fabs(c.losses[s]),
              "%s [%s]: step %d loss cuda %.9g cpu %.9g", name, dtype_name(dtype), s + 1, g.losses[s], c.losses[s]);
    for (int i = 0; i < c.n_params; i++) {
        int64_t off = c.offsets[i], n = c.offsets[i + 1] - off;
        double err = rel_error_f32(g.grads + off, c.grads + off, n);
        CHECK(err < grad_tol, "%s [%s]: step 1 gradient of parameter %d (%lld values): cuda vs cpu rel error %.3g",
              name, dtype_name(dtype), i, (long long)n, err);
    }
    int64_t total = c.offsets[c.n_params];
    double err = rel_error_f32(g.params, c.params, total);
    CHECK(err < param_tol, "%s [%s]: parameters after %d steps: cuda vs cpu rel error %.3g", name, dtype_name(dtype),
          STEPS, err);
    CHECK(memcmp(g.params, g2.params, (size_t)total * sizeof(float)) == 0 &&
              memcmp(g.losses, g2.losses, sizeof g.losses) == 0,
          "%s [%s]: two cuda runs give the same bits", name, dtype_name(dtype));
    /* Recomputation re-runs the same kernels on the same inputs (cuBLASLt's plans are keyed on the
     * shapes and the pointers' alignment, which the shared buffers keep): the same bits. */
    static const ForwardMode modes[] = {FORWARD_RECOMPUTE, FORWARD_RECOMPUTE_MLP};
    for (int k = 0; k < 2; k++) {
        StepResult rc = train(gpu, tc, sc, dtype, modes[k]);
        CHECK(rc.n_params == g.n_params && memcmp(g.params, rc.params, (size_t)total * sizeof(float)) == 0 &&
                  memcmp(g.grads, rc.grads, (size_t)total * sizeof(float)) == 0 &&
                  memcmp(g.losses, rc.losses, sizeof g.losses) == 0,
              "%s [%s]: cuda with %s recomputed gives the bits of keeping every activation", name, dtype_name(dtype),
              k ? "the MLP's gate and up" : "every layer");
        result_free(&rc);
    }
    result_free(&c);
    result_free(&g);
    result_free(&g2);
}

int main(void) {
    if (backend_cuda_device_count() == 0) {
        printf("skipped: no CUDA device\n");
        return TEST_SKIPPED;
    }
    Backend *gpu = NULL, *cpu = test_cpu_backend(0);
    if (!CHECK_OK(backend_create(&gpu, "cuda", (BackendOptions){0, 0}))) return test_finish("test_gpu_step");
    CHECK_OK(backend_check_ops(gpu));

    /* A Qwen2-style teacher (q/k/v biases); a hybrid student (layer 0 MLA, layer 1 GQA), an all-MLA
     * student with a q bottleneck and no latent norm, and one that keeps the teacher's biases. */
    for (int bf16 = 0; bf16 < 2; bf16++) {
        DType dt = bf16 ? DT_BF16 : DT_F32;
        compare_backends(gpu, cpu, "hybrid student", tiny_teacher_config(1), tiny_student_config(0x1, 0, 1), dt);
        compare_backends(gpu, cpu, "all-MLA student", tiny_teacher_config(1), tiny_student_config(0x3, 6, 0), dt);
        ModelConfig biased = tiny_student_config(0x3, 0, 1);
        biased.mla.attention_bias = 1; /* the teacher's biases kept: q_proj and kv_a_proj biases */
        compare_backends(gpu, cpu, "all-MLA student with biases", tiny_teacher_config(1), biased, dt);
    }

    backend_destroy(gpu);
    backend_destroy(cpu);
    return test_finish("test_gpu_step");
}
