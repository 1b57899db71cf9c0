/* The decoder written on the op interface: backward against finite differences of forward for GQA,
 * MLA (with and without the q bottleneck, its norm, the latent norm and biases) and hybrid models,
 * and inference (no activations kept) giving the same bits as training forward. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "model/model.h"
#include "model_fixtures.h"

enum { BATCH = 2, SEQ = 5 };

typedef struct {
    Model *m;
    ForwardState *st;
    Tensor ids, hidden;
    float *probe;     /* [N, D] random weights of the scalar L = <probe, hidden> */
} Setup;

static double loss_of(Setup *s) {
    if (model_forward(s->m, s->st, s->ids, s->hidden) != STATUS_OK) return NAN;
    const float *h = tensor_f32(s->hidden);
    int64_t n = tensor_numel(s->hidden);
    double l = 0;
    for (int64_t i = 0; i < n; i++) l += (double)s->probe[i] * h[i];
    return l;
}

static void setup(Setup *s, Backend *be, const ModelConfig *cfg) {
    memset(s, 0, sizeof *s);
    CHECK_OK(model_create(&s->m, be, cfg, SEQ));
    CHECK_OK(model_init_random(s->m, 7, 0.3f));
    /* Biases non-zero (random init leaves them zero), so their effect on the rest is checked too. */
    for (int i = 0; i < s->m->n_params; i++) {
        Param *p = &s->m->params[i];
        if (!strstr(p->name, ".bias")) continue;
        fill_normal(tensor_f32(*p->value), tensor_numel(*p->value), 300 + (uint64_t)i, 0.3f);
    }
    CHECK_OK(model_alloc_grads(s->m));
    CHECK_OK(forward_state_create(&s->st, s->m, BATCH, SEQ, 1));
    int64_t N = BATCH * SEQ, D = cfg->hidden_size;
    CHECK_OK(be->alloc(be, &s->ids, DT_I32, 1, &N));
    CHECK_OK(be->alloc(be, &s->hidden, DT_F32, 2, (int64_t[]){N, D}));
    for (int64_t i = 0; i < N; i++) tensor_i32(s->ids)[i] = (int32_t)((i * 7 + 3) % cfg->vocab_size);
    s->probe = test_alloc((size_t)(N * D) * sizeof(float));
    fill_normal(s->probe, N * D, 99, 1.0f);
}

static void teardown(Setup *s, Backend *be) {
    be->release(be, &s->ids);
    be->release(be, &s->hidden);
    forward_state_destroy(s->st);
    model_destroy(s->m);
    free(s->probe);
}

/* For every parameter tensor: <grad, u> against (L(w + eps u) - L(w - eps u)) / 2 eps for a random
 * direction u. Directions over a whole tensor keep the float32 forward's rounding small against
 * the signal. */
static void check_gradients(const char *what, Backend *be, const ModelConfig *cfg) {
    Setup s;
    setup(&s, be, cfg);
    Tensor probe = tensor_view(s.probe, DT_F32, 2, s.hidden.shape);
    CHECK_OK(model_zero_grads(s.m));
    CHECK_OK(model_forward(s.m, s.st, s.ids, s.hidden));
    CHECK_OK(model_backward(s.m, s.st, probe));
    for (int i = 0; i < s.m->n_params; i++) {
        Param *p = &s.m->params[i];
        int64_t n = tensor_numel(*p->value);
        float *w = tensor_f32(*p->value), *saved = test_alloc((size_t)n * 4), *u = test_alloc((size_t)n * 4);
        memcpy(saved, w, (size_t)n * 4);
        fill_normal(u, n, 1000 + (uint64_t)i, 1.0f);
        double analytic = 0;
        for (int64_t j = 0; j < n; j++) analytic += (double)tensor_f32(*p->grad)[j] * u[j];
        const double eps = 2e-3;
        for (int64_t j = 0; j < n; j++) w[j] = saved[j] + (float)eps * u[j];
        double lp = loss_of(&s);
        for (int64_t j = 0; j < n; j++) w[j] = saved[j] - (float)eps * u[j];
        double lm = loss_of(&s);
        memcpy(w, saved, (size_t)n * 4);
        double numeric = (lp - lm) / (2 * eps);
        /* eps balances the float32 forward's rounding (~1e-5 of L, over 2 eps) against the
         * truncation error (eps^2); what remains is ~1e-2 of small directional derivatives. */
        double err = fabs(analytic - numeric) / (fabs(numeric) + 0.05);
        CHECK(err < 2e-2, "%s: %s: <grad, u> = %.6g, finite difference %.6g (rel %.2g)", what, p->name,
              analytic, numeric, err);
        free(saved);
        free(u);
    }
    teardown(&s, be);
}

static void check_inference_matches_training(Backend *be, const ModelConfig *cfg, const char *what) {
    Setup s;
    setup(&s, be, cfg);
    int64_t N = BATCH * SEQ, D = cfg->hidden_size;
    CHECK_OK(model_forward(s.m, s.st, s.ids, s.hidden));
    float *train = test_alloc((size_t)(N * D) * 4);
    memcpy(train, s.hidden.data, (size_t)(N * D) * 4);
    ForwardState *inf = NULL;
    CHECK_OK(forward_state_create(&inf, s.m, BATCH, SEQ, 0));
    CHECK_OK(model_forward(s.m, inf, s.ids, s.hidden));
    CHECK(memcmp(train, s.hidden.data, (size_t)(N * D) * 4) == 0,
          "%s: inference forward (buffers reused) gives the training forward's bits", what);
    CHECK_ERR(model_backward(s.m, inf, s.hidden), "keeps no activations");
    forward_state_destroy(inf);

    /* A sequence's output depends only on its own tokens (positions restart, attention is causal):
     * sequence 0 alone gives the bits it had in the batch. */
    ForwardState *one = NULL;
    Tensor ids1 = tensor_view(s.ids.data, DT_I32, 1, (int64_t[]){SEQ});
    float *hid1 = test_alloc((size_t)(SEQ * D) * 4);
    CHECK_OK(forward_state_create(&one, s.m, 1, SEQ, 0));
    CHECK_OK(model_forward(s.m, one, ids1, tensor_view(hid1, DT_F32, 2, (int64_t[]){SEQ, D})));
    double err = rel_error_f32(hid1, train, SEQ * D);
    CHECK(err < 1e-6, "%s: sequence 0 alone vs in the batch: rel error %.3g", what, err);
    forward_state_destroy(one);
    free(hid1);
    free(train);
    teardown(&s, be);
}

int main(void) {
    Backend *be = test_cpu_backend(0);
    ModelConfig teacher = tiny_teacher_config(0), teacher_bias = tiny_teacher_config(1);
    teacher_bias.tie_word_embeddings = 1;
    ModelConfig mla = tiny_student_config(0x3, 0, 1);
    ModelConfig mla_qlora = tiny_student_config(0x3, 6, 1);
    ModelConfig mla_nonorm = tiny_student_config(0x3, 0, 0);
    ModelConfig hybrid = tiny_student_config(0x2, 5, 1);
    ModelConfig mla_rope_only = tiny_student_config(0x3, 0, 0);
    mla_rope_only.mla.qk_nope_head_dim = 0; /* every key dim in the shared rope part */
    ModelConfig mla_qlora_linear = tiny_student_config(0x3, 6, 1);
    mla_qlora_linear.mla.q_norm = 0; /* the linear q bottleneck beside a normed latent */
    ModelConfig mla_bias = tiny_student_config(0x3, 0, 1), mla_bias_qlora = tiny_student_config(0x3, 6, 0);
    mla_bias.mla.attention_bias = mla_bias_qlora.mla.attention_bias = 1;
    ModelConfig hybrid_bias = tiny_student_config(0x2, 5, 1);
    hybrid_bias.qkv_bias = hybrid_bias.mla.attention_bias = 1;

    check_gradients("gqa", be, &teacher);
    check_gradients("gqa+bias+tied", be, &teacher_bias);
    check_gradients("mla", be, &mla);
    check_gradients("mla+q_lora", be, &mla_qlora);
    check_gradients("mla+q_lora, no q norm", be, &mla_qlora_linear);
    check_gradients("mla, no latent norm", be, &mla_nonorm);
    check_gradients("hybrid", be, &hybrid);
    check_gradients("mla, dn = 0", be, &mla_rope_only);
    check_gradients("mla+bias", be, &mla_bias);
    check_gradients("mla+bias+q_lora, no norms", be, &mla_bias_qlora);
    check_gradients("hybrid+bias", be, &hybrid_bias);

    check_inference_matches_training(be, &teacher, "gqa");
    check_inference_matches_training(be, &hybrid, "hybrid");
    check_inference_matches_training(be, &mla_bias_qlora, "mla+bias+q_lora, no norms");

    /* Sizes: the registry holds each tensor once. */
    Model *m = NULL;
    CHECK_OK(model_create(&m, be, &teacher, SEQ));
    int64_t D = 12, F = 20, V = 23, H = 4, K = 2, hd = 6;
    int64_t per_layer = 2 * D + (H * hd + 2 * K * hd) * D + D * H * hd + 3 * F * D;
    int64_t expected = 2 * V * D + D + 2 * per_layer;
    CHECK(model_num_parameters(m) == expected, "gqa parameter count %lld, expected %lld",
          (long long)model_num_parameters(m), (long long)expected);
    CHECK(model_find_param(m, "model.layers.1.self_attn.k_proj.weight") != NULL, "k_proj of layer 1 is registered");
    CHECK(model_find_param(m, "lm_head.weight") != NULL, "an untied head is registered");
    ForwardState *st = NULL;
    CHECK_ERR(forward_state_create(&st, m, 1, SEQ + 1, 0), "exceed the model's rope tables");
    model_destroy(m);

    backend_destroy(be);
    return test_finish("test_model");
}
