/* Activation recomputation (train.recompute = "layers": FORWARD_RECOMPUTE; "mlp":
 * FORWARD_RECOMPUTE_MLP): the same hidden states, gradient bits, gradient-ready hook order and
 * trained weights as keeping every activation, for less memory, on hybrid and all-MLA students in
 * f32 and bf16; and the config key's strict parsing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "model/layers.h"
#include "model/model.h"
#include "model_fixtures.h"
#include "train/config.h"
#include "train/trainer.h"

enum { B = 2, T = 7, N = B * T, LAYERS = 4, MAX_CALLS = 16 };

static Backend *be;

/* The fixture's student with LAYERS layers, MLA where mla_mask has bit l set. */
static ModelConfig student_of(unsigned mla_mask, int64_t q_lora, int norms) {
    ModelConfig c = tiny_student_config(mla_mask, q_lora, norms);
    c.num_hidden_layers = LAYERS;
    for (int l = 0; l < LAYERS; l++) c.layer_attention[l] = (mla_mask >> l) & 1 ? ATTENTION_MLA : ATTENTION_GQA;
    return c;
}

typedef struct {
    int layers[MAX_CALLS];
    int n;
} HookCalls;

static Status record_layer(void *ctx, int layer) {
    HookCalls *h = ctx;
    if (h->n < MAX_CALLS) h->layers[h->n] = layer;
    h->n++;
    return STATUS_OK;
}

typedef struct {
    unsigned char *hidden, *grads;   /* raw bytes: compared bit for bit */
    size_t hidden_bytes, grad_bytes;
    size_t state_bytes;              /* every tensor the forward state allocated */
    HookCalls hook;
} PassResult;

static size_t owned_bytes(const ForwardState *st) {
    size_t n = 0;
    for (int i = 0; i < st->n_owned; i++) n += tensor_bytes(*st->owned[i]);
    return n;
}

/* Forward and hooked backward of m on a fresh state of the given mode, from zeroed gradients. */
static PassResult forward_backward(Model *m, ForwardMode mode, Tensor ids, Tensor dhidden) {
    PassResult r;
    memset(&r, 0, sizeof r);
    ForwardState *st = NULL;
    Tensor hidden;
    if (!CHECK_OK(forward_state_create(&st, m, B, T, mode))) return r;
    CHECK_OK(be->alloc(be, &hidden, m->dtype, 2, (int64_t[]){N, m->cfg.hidden_size}));
    CHECK_OK(model_zero_grads(m));
    CHECK_OK(model_forward(m, st, ids, hidden));
    CHECK_OK(model_backward_hooked(m, st, dhidden, record_layer, &r.hook));
    r.state_bytes = owned_bytes(st);
    r.hidden_bytes = tensor_bytes(hidden);
    r.hidden = test_alloc(r.hidden_bytes);
    memcpy(r.hidden, hidden.data, r.hidden_bytes);
    for (int i = 0; i < m->n_params; i++) r.grad_bytes += tensor_bytes(*m->params[i].grad);
    r.grads = test_alloc(r.grad_bytes);
    size_t off = 0;
    for (int i = 0; i < m->n_params; i++) {
        size_t n = tensor_bytes(*m->params[i].grad);
        memcpy(r.grads + off, m->params[i].grad->data, n);
        off += n;
    }
    be->release(be, &hidden);
    forward_state_destroy(st);
    return r;
}

/* Bytes of one layer's activations other than its input x, for buffers of the given widths: what
 * keeping costs per layer beyond recompute, and what recompute's one work cache costs. */
static size_t layer_bytes_beyond_input(const ModelConfig *c, DType dt, int64_t q, int64_t k, int64_t k_rope,
                                       int64_t v, int64_t attn, int64_t latent, int64_t q_lora) {
    int64_t D = c->hidden_size, F = c->intermediate_size, H = c->num_attention_heads;
    int latent_norm = latent > 0 && c->mla.latent_norm, q_norm = q_lora > 0 && c->mla.q_norm;
    int64_t act = N * (q + k + k_rope + v + attn + (q_norm ? 2 : 1) * q_lora + (latent_norm ? 2 : 1) * latent + D +
                       2 * F);
    int64_t stats = 2 * N + (q_norm ? N : 0) + (latent_norm ? N : 0) + B * H * T;
    return (size_t)act * dtype_size(dt) + (size_t)stats * sizeof(float);
}

static size_t layer_bytes_of_kind(const ModelConfig *c, DType dt, AttentionKind kind) {
    int64_t H = c->num_attention_heads, hd = c->head_dim, K = c->num_key_value_heads;
    const MlaDims *a = &c->mla;
    if (kind == ATTENTION_GQA) return layer_bytes_beyond_input(c, dt, H * hd, K * hd, 0, K * hd, H * hd, 0, 0);
    return layer_bytes_beyond_input(c, dt, H * (a->qk_nope_head_dim + a->qk_rope_head_dim), H * a->qk_nope_head_dim,
                                    a->qk_rope_head_dim, H * a->v_head_dim, H * a->v_head_dim, a->kv_lora_rank,
                                    a->q_lora_rank);
}

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* keep - recompute: every layer's activations beyond x, less one work cache of the widest widths
 * and the [N, D] scratch the re-run MLP writes to. */
static size_t expected_saving(const ModelConfig *c, DType dt) {
    size_t kept = 0;
    int has_gqa = 0, has_mla = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        kept += layer_bytes_of_kind(c, dt, c->layer_attention[l]);
        if (c->layer_attention[l] == ATTENTION_GQA) has_gqa = 1;
        else has_mla = 1;
    }
    int64_t H = c->num_attention_heads, hd = c->head_dim, K = c->num_key_value_heads;
    const MlaDims *a = &c->mla;
    int64_t q = 0, k = 0, v = 0, attn = 0;
    if (has_gqa) q = H * hd, k = v = K * hd, attn = H * hd;
    if (has_mla) {
        q = max64(q, H * (a->qk_nope_head_dim + a->qk_rope_head_dim));
        k = max64(k, H * a->qk_nope_head_dim);
        v = max64(v, H * a->v_head_dim);
        attn = max64(attn, H * a->v_head_dim);
    }
    size_t work = layer_bytes_beyond_input(c, dt, q, k, has_mla ? a->qk_rope_head_dim : 0, v, attn,
                                           has_mla ? a->kv_lora_rank : 0, has_mla ? a->q_lora_rank : 0);
    size_t scratch = (size_t)(N * c->hidden_size) * dtype_size(dt);
    return kept - work - scratch;
}

static void check_recompute_matches_keep(const char *what, const ModelConfig *cfg, DType dtype) {
    Model *m = NULL;
    if (!CHECK_OK(model_create(&m, be, cfg, T))) return;
    CHECK_OK(model_init_random(m, 11, 0.3f));
    CHECK_OK(model_set_precision(m, DT_F32, dtype));
    CHECK_OK(model_alloc_grads(m));
    int64_t n = N, D = cfg->hidden_size;
    Tensor ids, dhidden;
    CHECK_OK(be->alloc(be, &ids, DT_I32, 1, &n));
    CHECK_OK(be->alloc(be, &dhidden, dtype, 2, (int64_t[]){N, D}));
    for (int64_t i = 0; i < N; i++) tensor_i32(ids)[i] = (int32_t)((i * 5 + 2) % cfg->vocab_size);
    float *dh = test_alloc((size_t)(N * D) * sizeof(float));
    fill_normal(dh, N * D, 31, 1.0f);
    CHECK_OK(backend_upload_f32(be, dhidden, dh));

    PassResult keep = forward_backward(m, FORWARD_KEEP, ids, dhidden);
    PassResult rec = forward_backward(m, FORWARD_RECOMPUTE, ids, dhidden);
    const char *dt = dtype_name(dtype);
    CHECK(keep.hidden && rec.hidden && keep.hidden_bytes == rec.hidden_bytes &&
              memcmp(keep.hidden, rec.hidden, keep.hidden_bytes) == 0,
          "%s, %s: final hidden states bitwise equal with recompute", what, dt);
    int grads_equal = keep.grads && rec.grads && keep.grad_bytes == rec.grad_bytes;
    size_t off = 0;
    for (int i = 0; grads_equal && i < m->n_params; i++) {
        size_t b = tensor_bytes(*m->params[i].grad);
        CHECK(memcmp(keep.grads + off, rec.grads + off, b) == 0, "%s, %s: gradient of %s bitwise equal with recompute",
              what, dt, m->params[i].name);
        off += b;
    }
    CHECK(grads_equal, "%s, %s: both passes produced gradients of the same size", what, dt);

    int L = (int)cfg->num_hidden_layers, order_ok = keep.hook.n == L + 1 && rec.hook.n == L + 1;
    for (int i = 0; order_ok && i <= L; i++)
        order_ok = keep.hook.layers[i] == L - 1 - i && rec.hook.layers[i] == keep.hook.layers[i];
    CHECK(order_ok, "%s, %s: gradients-ready hook called for layers %d..0 then -1 in both modes (%d and %d calls)",
          what, dt, L - 1, keep.hook.n, rec.hook.n);

    size_t want = expected_saving(cfg, dtype);
    size_t saved = keep.state_bytes > rec.state_bytes ? keep.state_bytes - rec.state_bytes : 0;
    CHECK(saved >= want && want > 0, "%s, %s: recompute state %zu bytes, keep %zu: saves %zu, expected %zu", what, dt,
          rec.state_bytes, keep.state_bytes, saved, want);
    printf("%s, %s: forward state %zu bytes keeping activations, %zu recomputing (%zu saved)\n", what, dt,
           keep.state_bytes, rec.state_bytes, saved);

    /* Only the MLP's gate and up recomputed: the same bits, one [N, F] pair instead of L. */
    PassResult mlp = forward_backward(m, FORWARD_RECOMPUTE_MLP, ids, dhidden);
    CHECK(mlp.hidden && memcmp(keep.hidden, mlp.hidden, keep.hidden_bytes) == 0 && mlp.grads &&
              mlp.grad_bytes == keep.grad_bytes && memcmp(keep.grads, mlp.grads, keep.grad_bytes) == 0,
          "%s, %s: hidden states and every gradient bitwise equal with the MLP recomputed", what, dt);
    CHECK(mlp.hook.n == keep.hook.n, "%s, %s: the hook is called as often with the MLP recomputed", what, dt);
    size_t want_mlp = (size_t)(L - 1) * 2 * (size_t)(N * cfg->intermediate_size) * dtype_size(dtype);
    CHECK(keep.state_bytes - mlp.state_bytes == want_mlp, "%s, %s: recomputing the MLP saves %zu bytes, expected %zu",
          what, dt, keep.state_bytes - mlp.state_bytes, want_mlp);
    free(mlp.hidden), free(mlp.grads);

    free(keep.hidden), free(keep.grads), free(rec.hidden), free(rec.grads), free(dh);
    be->release(be, &ids);
    be->release(be, &dhidden);
    model_destroy(m);
}

/* A training run's weights after 3 steps (2 micro-batches each) with the given train.recompute. */
static float *trained_weights(const char *recompute, const char *precision, int64_t *n_out) {
    static const char *ARCH =
        "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 61, "
        "\"hidden_size\": 24, \"intermediate_size\": 40, \"num_hidden_layers\": 3, \"num_attention_heads\": 4, "
        "\"num_key_value_heads\": 2, \"head_dim\": 6, \"rope_theta\": 10000.0, \"rms_norm_eps\": 1e-5, "
        "\"tie_word_embeddings\": false, \"max_position_embeddings\": 64}";
    char json[4096], set[64];
    snprintf(json, sizeof json,
             "{\"run\": {\"dir\": \"recompute-unused\", \"seed\": 3}, \"precision\": \"%s\","
             " \"teacher\": {\"arch\": %s, \"init\": \"random\", \"seed\": 4},"
             " \"student\": {\"init_from\": {\"arch\": %s, \"init\": \"random\", \"seed\": 9},"
             "   \"mla\": {\"kv_lora_rank\": 6, \"qk_rope_head_dim\": 2, \"qk_nope_head_dim\": 4, \"v_head_dim\": 6,"
             "             \"q_lora_rank\": 8, \"gqa_layers\": [1], \"calibration_tokens\": 64}},"
             " \"data\": {\"seq_len\": 12}, \"optim\": {\"lr\": 3e-3, \"warmup_steps\": 0},"
             " \"train\": {\"micro_batch\": 2, \"global_batch\": 4, \"max_steps\": 3}}",
             precision, ARCH, ARCH);
    snprintf(set, sizeof set, "train.recompute=%s", recompute);
    const char *sets[] = {set};
    Config *cfg = calloc(1, sizeof *cfg);
    float *w = NULL;
    Trainer *t = NULL;
    TrainerOptions opts = {.random_batches = 1, .quiet = 1};
    if (cfg && CHECK_OK(config_parse_json(cfg, json, "recompute", sets, 1)) &&
        CHECK_OK(trainer_create(&t, cfg, opts))) {
        StepRecord r;
        for (int s = 0; s < 3; s++) CHECK_OK(trainer_step(t, &r));
        w = model_host_copy(t->student, 0, n_out);
    }
    trainer_destroy(t);
    free(cfg);
    return w;
}

static void check_trainer(const char *precision) {
    int64_t n_none = 0, n_layers = 0;
    float *none = trained_weights("none", precision, &n_none);
    float *layers = trained_weights("layers", precision, &n_layers);
    int64_t n_mlp = 0;
    float *mlp = trained_weights("mlp", precision, &n_mlp);
    CHECK(none && layers && n_none == n_layers && memcmp(none, layers, (size_t)n_none * sizeof(float)) == 0,
          "%s: weights after 3 training steps bitwise equal with train.recompute \"layers\" and \"none\"", precision);
    CHECK(none && mlp && n_none == n_mlp && memcmp(none, mlp, (size_t)n_none * sizeof(float)) == 0,
          "%s: weights after 3 training steps bitwise equal with train.recompute \"mlp\" and \"none\"", precision);
    free(none);
    free(layers);
    free(mlp);
}

static void check_config(void) {
    const char *base = "{\"run\": {\"dir\": \"r\"}, \"student\": {\"init_from\": {\"arch\": "
                       "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 61, "
                       "\"hidden_size\": 24, \"intermediate_size\": 40, \"num_hidden_layers\": 2, "
                       "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 6}}}}";
    Config *cfg = calloc(1, sizeof *cfg);
    if (!cfg) return;
    if (CHECK_OK(config_parse_json(cfg, base, "c.json", NULL, 0)))
        CHECK(cfg->train.recompute == CONFIG_RECOMPUTE_NONE, "train.recompute defaults to \"none\"");
    const char *layers[] = {"train.recompute=layers"};
    if (CHECK_OK(config_parse_json(cfg, base, "c.json", layers, 1)))
        CHECK(cfg->train.recompute == CONFIG_RECOMPUTE_LAYERS, "train.recompute = \"layers\" is read");
    char *text = NULL;
    if (CHECK_OK(config_effective_json(cfg, &text)))
        CHECK(strstr(text, "\"recompute\": \"layers\"") != NULL, "the effective config repeats train.recompute");
    free(text);
    const char *mlp[] = {"train.recompute=mlp"};
    if (CHECK_OK(config_parse_json(cfg, base, "c.json", mlp, 1)))
        CHECK(cfg->train.recompute == CONFIG_RECOMPUTE_MLP, "train.recompute = \"mlp\" is read");
    const char *bogus[] = {"train.recompute=bogus"};
    CHECK_ERR(config_parse_json(cfg, base, "c.json", bogus, 1), "train.recompute: expected \"none\", \"layers\" or \"mlp\"");
    const char *number[] = {"train.recompute=1"};
    CHECK_ERR(config_parse_json(cfg, base, "c.json", number, 1), "train.recompute");
    free(cfg);
}

int main(void) {
    be = test_cpu_backend(0);
    ModelConfig hybrid = student_of(0xA, 5, 1);        /* GQA, MLA, GQA, MLA; q bottleneck, latent norm */
    ModelConfig mla = student_of(0xF, 0, 0);           /* every layer MLA, full-rank queries, no norms */
    ModelConfig mla_qlora = student_of(0xF, 6, 1);
    ModelConfig mla_qlora_linear = student_of(0xF, 6, 0); /* neither norm: the q bottleneck linear */
    ModelConfig gqa = student_of(0x0, 0, 1);
    for (int i = 0; i < 2; i++) {
        DType dt = i == 0 ? DT_F32 : DT_BF16;
        check_recompute_matches_keep("hybrid", &hybrid, dt);
        check_recompute_matches_keep("mla", &mla, dt);
        check_recompute_matches_keep("mla+q_lora", &mla_qlora, dt);
        check_recompute_matches_keep("mla+q_lora, no norms", &mla_qlora_linear, dt);
        check_recompute_matches_keep("gqa", &gqa, dt);
    }

    Model *m = NULL;
    ForwardState *st = NULL;
    if (CHECK_OK(model_create(&m, be, &hybrid, T)))
        CHECK_ERR(forward_state_create(&st, m, B, T, (ForwardMode)4), "forward state: unknown mode 4");
    model_destroy(m);

    check_trainer("fp32");
    check_trainer("bf16");
    check_config();
    return test_finish("test_recompute");
}
