/* Decoding with the KV cache: every position's logits equal the full forward's (GQA with biases,
 * MLA with and without the latent norm, the q bottleneck and dn = 0, a hybrid; prompts of one
 * token, several, and past the attention kernel's chunk), absorbed MLA equal to the expanded
 * formula, the decode attention kernel against a float64 reference and across thread counts, the
 * cache's measured bytes, greedy and seeded generation, and top-p on a distribution worked by hand.
 * Students with a Qwen2 teacher's biases (query, latent and rope-key rows) decode with them too. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "infer/decode.h"
#include "infer/generate.h"
#include "infer/sampling.h"
#include "model/model.h"
#include "decode_fixtures.h"
#include "model_fixtures.h"

/* Longer than one chunk of the CPU decode kernel (256 cached tokens). */
enum { LONG_SEQ = 300 };

/* The full forward's logits [n, V] over ids, the reference. */
static float *forward_logits(Model *m, const int32_t *ids, int64_t n) {
    Backend *be = m->be;
    const int64_t D = m->cfg.hidden_size, V = m->cfg.vocab_size;
    ForwardState *st = NULL;
    Tensor ids_t, hidden, logits;
    CHECK_OK(forward_state_create(&st, m, 1, n, FORWARD_INFERENCE));
    CHECK_OK(be->alloc(be, &ids_t, DT_I32, 1, (int64_t[]){n}));
    CHECK_OK(be->alloc(be, &hidden, DT_F32, 2, (int64_t[]){n, D}));
    CHECK_OK(be->alloc(be, &logits, DT_F32, 2, (int64_t[]){n, V}));
    CHECK_OK(be->upload(be, ids_t, ids));
    CHECK_OK(model_forward(m, st, ids_t, hidden));
    CHECK_OK(be->ops.linear_forward(be, logits, hidden, m->lm_head, tensor_none()));
    float *out = test_alloc((size_t)(n * V) * sizeof *out);
    CHECK_OK(be->download(be, out, logits));
    be->release(be, &ids_t);
    be->release(be, &hidden);
    be->release(be, &logits);
    forward_state_destroy(st);
    return out;
}

static int32_t *test_ids(int64_t n, int64_t V, int salt) {
    int32_t *ids = test_alloc((size_t)n * sizeof *ids);
    for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)((i * 7 + 3 + salt * (i / 5)) % V);
    return ids;
}

static void check_cached_equals_forward(Backend *be, const char *what, const ModelConfig *cfg, int64_t n) {
    Model *m = random_model(be, cfg, n, 11);
    const int64_t V = cfg->vocab_size;
    int32_t *ids = test_ids(n, V, 1);
    float *ref = forward_logits(m, ids, n);
    const int64_t prefills[] = {1, 3, n};
    for (size_t i = 0; i < sizeof prefills / sizeof prefills[0]; i++) {
        for (int mode = DECODE_MLA_ABSORBED; mode <= DECODE_MLA_EXPANDED; mode++) {
            if (mode == DECODE_MLA_EXPANDED && model_config_mla_layers(cfg) == 0) continue;
            float *got = decoded_logits(m, ids, n, prefills[i], (DecodeMlaMode)mode);
            int64_t at = -1;
            double err = worst_row_error(got, ref, n, V, &at);
            CHECK(err < 2e-5, "%s, %s, prefill %lld of %lld: logits rel error %.3g at position %lld", what,
                  mode == DECODE_MLA_ABSORBED ? "absorbed" : "expanded", (long long)prefills[i], (long long)n, err,
                  (long long)at);
            free(got);
        }
    }
    /* Absorbed against expanded: the same cache, two formulas for its attention. */
    if (model_config_mla_layers(cfg) > 0) {
        float *abs = decoded_logits(m, ids, n, 2, DECODE_MLA_ABSORBED);
        float *exp = decoded_logits(m, ids, n, 2, DECODE_MLA_EXPANDED);
        int64_t at = -1;
        double err = worst_row_error(abs, exp, n, V, &at);
        CHECK(err < 2e-5, "%s: absorbed against expanded logits rel error %.3g at position %lld", what, err,
              (long long)at);
        CHECK(err > 0 || n < 3, "%s: absorbed and expanded agree to the bit, so one of them is not what runs", what);
        free(abs);
        free(exp);
    }
    free(ref);
    free(ids);
    model_destroy(m);
}

/* The cache's bytes, measured from its tensors, against 4 bytes x the per-layer KV values. */
static void check_cache_bytes(Backend *be, const char *what, const ModelConfig *cfg) {
    Model *m = random_model(be, cfg, 16, 3);
    Decoder *d = NULL;
    int64_t values = 0;
    for (int l = 0; l < cfg->num_hidden_layers; l++) values += model_config_kv_values_per_token(cfg, l);
    if (CHECK_OK(decoder_create(&d, m, 16, DECODE_MLA_ABSORBED))) {
        int32_t ids[5] = {1, 2, 3, 4, 5};
        float *logits = test_alloc((size_t)cfg->vocab_size * sizeof *logits);
        CHECK_OK(decoder_prefill(d, ids, 4, logits, NULL));
        CHECK_OK(decoder_step(d, ids[4], logits));
        const KvCache *kv = decoder_cache(d);
        CHECK(kv->bytes_per_token == (size_t)(4 * values), "%s: %zu cache bytes per token, expected 4 x %lld", what,
              kv->bytes_per_token, (long long)values);
        CHECK(kv->bytes_allocated == 16 * kv->bytes_per_token, "%s: %zu bytes allocated for 16 tokens", what,
              kv->bytes_allocated);
        CHECK(kv_cache_bytes_filled(kv) == 5 * kv->bytes_per_token, "%s: %zu bytes filled by 5 tokens", what,
              kv_cache_bytes_filled(kv));
        free(logits);
    }
    decoder_destroy(d);
    model_destroy(m);
}

/* The kernel alone: H = 6 over Hk = 2 with a shared key part, 600 cached tokens (three chunks),
 * against float64, and bitwise the same on 1 and 2 threads. */
static void check_decode_attention_kernel(void) {
    const int64_t H = 6, Hk = 2, Dk = 5, Ds = 3, Dv = 7, n = 600;
    float *q = test_alloc(H * (Dk + Ds) * sizeof(float)), *k = test_alloc(n * Hk * Dk * sizeof(float));
    float *ks = test_alloc(n * Ds * sizeof(float)), *v = test_alloc(n * Hk * Dv * sizeof(float));
    float *out1 = test_alloc(H * Dv * sizeof(float)), *out2 = test_alloc(H * Dv * sizeof(float));
    double *ref = test_alloc(H * Dv * sizeof(double)), *s = test_alloc(n * sizeof(double));
    fill_normal(q, H * (Dk + Ds), 1, 1.0f);
    fill_normal(k, n * Hk * Dk, 2, 1.0f);
    fill_normal(ks, n * Ds, 3, 1.0f);
    fill_normal(v, n * Hk * Dv, 4, 1.0f);
    const float scale = 0.8f;
    for (int64_t h = 0; h < H; h++) {
        int64_t g = h / (H / Hk);
        double m = -INFINITY, l = 0;
        for (int64_t j = 0; j < n; j++) {
            double d = 0;
            for (int64_t i = 0; i < Dk; i++) d += (double)q[h * (Dk + Ds) + i] * k[(j * Hk + g) * Dk + i];
            for (int64_t i = 0; i < Ds; i++) d += (double)q[h * (Dk + Ds) + Dk + i] * ks[j * Ds + i];
            s[j] = scale * d;
            m = s[j] > m ? s[j] : m;
        }
        for (int64_t e = 0; e < Dv; e++) ref[h * Dv + e] = 0;
        for (int64_t j = 0; j < n; j++) {
            double p = exp(s[j] - m);
            l += p;
            for (int64_t e = 0; e < Dv; e++) ref[h * Dv + e] += p * v[(j * Hk + g) * Dv + e];
        }
        for (int64_t e = 0; e < Dv; e++) ref[h * Dv + e] /= l;
    }
    Tensor tq = tensor_view(q, DT_F32, 2, (int64_t[]){H, Dk + Ds});
    Tensor tk = tensor_view(k, DT_F32, 3, (int64_t[]){n, Hk, Dk});
    Tensor tks = tensor_view(ks, DT_F32, 2, (int64_t[]){n, Ds}), tv = tensor_view(v, DT_F32, 3, (int64_t[]){n, Hk, Dv});
    Backend *one = test_cpu_backend(1);
    CHECK_OK(one->ops.attention_decode(one, tensor_view(out1, DT_F32, 2, (int64_t[]){H, Dv}), tq, tk, tks, tv, scale));
    backend_destroy(one);
    Backend *two = test_cpu_backend(2);
    CHECK_OK(two->ops.attention_decode(two, tensor_view(out2, DT_F32, 2, (int64_t[]){H, Dv}), tq, tk, tks, tv, scale));
    double err = rel_error_f64(out1, ref, H * Dv);
    CHECK(err < 1e-6, "attention_decode against float64: rel error %.3g", err);
    CHECK(memcmp(out1, out2, H * Dv * sizeof(float)) == 0, "attention_decode differs between 1 and 2 threads");
    /* bf16 storage: the f32 kernel on widened copies, the output rounded once. */
    Tensor bq, bk, bks, bv, bout;
    CHECK_OK(two->alloc(two, &bq, DT_BF16, 2, tq.shape));
    CHECK_OK(two->alloc(two, &bk, DT_BF16, 3, tk.shape));
    CHECK_OK(two->alloc(two, &bks, DT_BF16, 2, tks.shape));
    CHECK_OK(two->alloc(two, &bv, DT_BF16, 3, tv.shape));
    CHECK_OK(two->alloc(two, &bout, DT_BF16, 2, (int64_t[]){H, Dv}));
    CHECK_OK(backend_upload_f32(two, bq, q));
    CHECK_OK(backend_upload_f32(two, bk, k));
    CHECK_OK(backend_upload_f32(two, bks, ks));
    CHECK_OK(backend_upload_f32(two, bv, v));
    CHECK_OK(two->ops.attention_decode(two, bout, bq, bk, bks, bv, scale));
    CHECK_OK(backend_download_f32(two, out2, bout));
    err = rel_error_f64(out2, ref, H * Dv);
    CHECK(err < 2e-2 && err > 0, "attention_decode in bf16 storage against float64: rel error %.3g", err);
    CHECK_ERR(two->ops.attention_decode(two, bout, bq, tk, bks, bv, scale), "one storage dtype per call");
    Tensor *bts[] = {&bq, &bk, &bks, &bv, &bout};
    for (int i = 0; i < 5; i++) two->release(two, bts[i]);
    Tensor tout = tensor_view(out2, DT_F32, 2, (int64_t[]){H, Dv});
    CHECK_ERR(two->ops.attention_decode(two, tout, tq, tk, tensor_none(), tv, scale),
              "head width");
    backend_destroy(two);
    free(q), free(k), free(ks), free(v), free(out1), free(out2), free(ref), free(s);
}

/* Greedy generation: the same tokens twice, each the argmax of the full forward's logits over the
 * prompt and the tokens before it; a seed reproduces a sampled generation, another seed does not. */
static void check_generation(Backend *be, const char *what, const ModelConfig *cfg) {
    enum { PROMPT = 4, NEW = 12 };
    Model *m = random_model(be, cfg, PROMPT + NEW, 5);
    const int64_t V = cfg->vocab_size;
    int32_t prompt[PROMPT] = {3, 9, 1, 17};
    GenerateOptions o = {.max_new_tokens = NEW, .sampling = {.greedy = 1}};
    GenerateResult a, b;
    CHECK_OK(generate(m, prompt, PROMPT, &o, &a));
    CHECK_OK(generate(m, prompt, PROMPT, &o, &b));
    CHECK(a.n_new == NEW && b.n_new == NEW, "%s: greedy generated %lld and %lld tokens, expected %d", what,
          (long long)a.n_new, (long long)b.n_new, NEW);
    CHECK(a.n_new == b.n_new && memcmp(a.ids, b.ids, (size_t)a.n_new * sizeof *a.ids) == 0,
          "%s: greedy generation differs between two runs", what);
    CHECK(a.decode_tokens == NEW - 1 && a.kv_tokens == PROMPT + NEW - 1,
          "%s: %lld tokens fed one at a time, %lld cached", what, (long long)a.decode_tokens, (long long)a.kv_tokens);
    int32_t all[PROMPT + NEW];
    memcpy(all, prompt, sizeof prompt);
    memcpy(all + PROMPT, a.ids, NEW * sizeof *a.ids);
    float *ref = forward_logits(m, all, PROMPT + NEW - 1);
    for (int i = 0; i < NEW; i++) {
        int32_t want = sample_argmax(ref + (PROMPT - 1 + i) * V, V);
        CHECK(a.ids[i] == want, "%s: greedy token %d is %d, the full forward's argmax is %d", what, i, (int)a.ids[i],
              (int)want);
    }
    free(ref);

    /* Stopping at an end-of-sequence id: make the third greedy token one. */
    GenerateOptions stop = o;
    stop.eos[0] = a.ids[2];
    stop.n_eos = 1;
    GenerateResult c;
    CHECK_OK(generate(m, prompt, PROMPT, &stop, &c));
    int first = 0;
    while (a.ids[first] != a.ids[2]) first++;
    CHECK(c.stopped_at_eos && c.n_new == first + 1, "%s: stopped at eos after %lld tokens (expected %d)", what,
          (long long)c.n_new, first + 1);
    generate_result_free(&c);

    GenerateOptions s = {.max_new_tokens = NEW, .sampling = {.temperature = 2.0f, .top_p = 0.95f, .seed = 42}};
    GenerateResult s1, s2, s3;
    CHECK_OK(generate(m, prompt, PROMPT, &s, &s1));
    CHECK_OK(generate(m, prompt, PROMPT, &s, &s2));
    s.sampling.seed = 43;
    CHECK_OK(generate(m, prompt, PROMPT, &s, &s3));
    CHECK(s1.n_new == s2.n_new && memcmp(s1.ids, s2.ids, (size_t)s1.n_new * sizeof *s1.ids) == 0,
          "%s: the same seed sampled different tokens", what);
    CHECK(s1.n_new != s3.n_new || memcmp(s1.ids, s3.ids, (size_t)s1.n_new * sizeof *s1.ids) != 0,
          "%s: seeds 42 and 43 sampled the same %lld tokens", what, (long long)s1.n_new);
    generate_result_free(&a);
    generate_result_free(&b);
    generate_result_free(&s1);
    generate_result_free(&s2);
    generate_result_free(&s3);
    model_destroy(m);
}

/* p = (0.5, 0.2, 0.2, 0.1): top-p 0.6 keeps 0.5 and the first 0.2 (ties by id), so (5/7, 2/7, 0, 0);
 * 0.45 keeps only the first; 1 keeps all; temperature 2 takes square roots. */
static void check_top_p(void) {
    const double p[4] = {0.5, 0.2, 0.2, 0.1};
    float logits[4];
    for (int i = 0; i < 4; i++) logits[i] = (float)log(p[i]) + 3.0f;
    double probs[4];
    struct {
        float temperature, top_p;
        double want[4];
    } cases[] = {
        {1.0f, 0.6f, {5.0 / 7, 2.0 / 7, 0, 0}},
        {1.0f, 0.45f, {1, 0, 0, 0}},
        {1.0f, 1.0f, {0.5, 0.2, 0.2, 0.1}},
        {2.0f, 1.0f, {0}},
    };
    double z = 0;
    for (int i = 0; i < 4; i++) z += sqrt(p[i]);
    for (int i = 0; i < 4; i++) cases[3].want[i] = sqrt(p[i]) / z;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        CHECK_OK(sample_nucleus(logits, 4, cases[c].temperature, cases[c].top_p, probs));
        double err = 0;
        for (int i = 0; i < 4; i++) err = fmax(err, fabs(probs[i] - cases[c].want[i]));
        CHECK(err < 1e-6, "top-p %.2f at temperature %.1f: max error %.3g against the hand-computed probabilities",
              (double)cases[c].top_p, (double)cases[c].temperature, err);
    }
    /* Draws follow the nucleus: 20000 draws at top-p 0.6. */
    SamplingOptions o = {.temperature = 1.0f, .top_p = 0.6f, .seed = 9};
    int counts[4] = {0};
    for (uint64_t i = 0; i < 20000; i++) {
        int32_t id = -1;
        CHECK_OK(sample_token(logits, 4, &o, i, probs, &id));
        if (id >= 0 && id < 4) counts[id]++;
    }
    CHECK(fabs(counts[0] / 20000.0 - 5.0 / 7) < 0.015 && counts[2] == 0 && counts[3] == 0,
          "top-p 0.6 draws: %d %d %d %d of 20000, expected about 14286 5714 0 0", counts[0], counts[1], counts[2],
          counts[3]);
    SamplingOptions bad = {.temperature = 0.0f, .top_p = 0.9f};
    CHECK_ERR(sampling_check(&bad), "--temperature");
    bad.temperature = 1.0f;
    bad.top_p = 1.5f;
    CHECK_ERR(sampling_check(&bad), "--top-p");
    CHECK(sample_argmax((float[]){1, 3, 3, 2}, 4) == 1, "argmax takes the lowest id among equals");
}

static void check_errors(Backend *be) {
    ModelConfig cfg = tiny_teacher_config(0);
    Model *m = random_model(be, &cfg, 8, 1);
    Decoder *d = NULL;
    float logits[23];
    CHECK_ERR(decoder_create(&d, m, 9, DECODE_MLA_ABSORBED), "rope tables");
    if (CHECK_OK(decoder_create(&d, m, 3, DECODE_MLA_ABSORBED))) {
        CHECK_ERR(decoder_prefill(d, (int32_t[]){1, 23}, 2, logits, NULL), "outside the vocabulary");
        CHECK_ERR(decoder_prefill(d, (int32_t[]){1, 2, 3, 4}, 4, logits, NULL), "cache's room");
        CHECK_OK(decoder_prefill(d, (int32_t[]){1, 2}, 2, logits, NULL));
        CHECK_ERR(decoder_prefill(d, (int32_t[]){1}, 1, logits, NULL), "empty cache");
        CHECK_ERR(decoder_step(d, -1, logits), "outside the vocabulary");
        CHECK_OK(decoder_step(d, 4, logits));
        CHECK_ERR(decoder_step(d, 4, logits), "cache is full");
    }
    decoder_destroy(d);
    model_destroy(m);
}

int main(void) {
    Backend *be = test_cpu_backend(0);
    ModelConfig teacher = tiny_teacher_config(1);
    ModelConfig mla = tiny_student_config(0x3, 0, 1);
    ModelConfig mla_qlora = tiny_student_config(0x3, 6, 0);
    ModelConfig hybrid = tiny_student_config(0x2, 0, 1);
    ModelConfig rope_only = tiny_student_config(0x3, 0, 0);
    rope_only.mla.qk_nope_head_dim = 0;
    ModelConfig mla_bias = tiny_student_config(0x3, 0, 1), mla_qlora_bias = tiny_student_config(0x1, 6, 1);
    mla_bias.mla.attention_bias = mla_qlora_bias.mla.attention_bias = 1;
    mla_qlora_bias.qkv_bias = 1;

    check_decode_attention_kernel();
    check_cached_equals_forward(be, "gqa with q/k/v bias", &teacher, 13);
    check_cached_equals_forward(be, "mla", &mla, 13);
    check_cached_equals_forward(be, "mla with q_lora, no latent norm", &mla_qlora, 11);
    check_cached_equals_forward(be, "hybrid", &hybrid, 12);
    check_cached_equals_forward(be, "mla, dn = 0", &rope_only, 9);
    check_cached_equals_forward(be, "mla with q and latent biases", &mla_bias, 10);
    check_cached_equals_forward(be, "hybrid with q_lora and biases in both kinds", &mla_qlora_bias, 10);
    check_cached_equals_forward(be, "gqa, long", &teacher, LONG_SEQ);
    check_cached_equals_forward(be, "mla, long", &mla, LONG_SEQ);

    check_cache_bytes(be, "gqa", &teacher);
    check_cache_bytes(be, "mla", &mla);
    check_cache_bytes(be, "hybrid", &hybrid);

    check_generation(be, "gqa", &teacher);
    check_generation(be, "hybrid", &hybrid);
    check_top_p();
    check_errors(be);
    backend_destroy(be);
    return test_finish("test_decode");
}
