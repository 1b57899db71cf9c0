/* The HF loader and the DeepSeek-V2 exporter: GQA and MLA round trips (bitwise in f32), the rope
 * row permutation and the kv layouts in the raw file, bf16 rounding, rope bases, and refusals. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/half.h"
#include "harness.h"
#include "model/hf/hf_config.h"
#include "model/hf/hf_model.h"
#include "model/hf/linear_latent_norm.h"
#include "model/hf/safetensors.h"
#include "model_fixtures.h"

enum { BATCH = 2, SEQ = 5 };

static const ExportOptions EXPORT_F32 = {.dtype = DT_F32};

/* A call that must fail with one line containing `needle`. */
#define CHECK_ERR_LINE(call, needle)                                                                   \
    do {                                                                                               \
        Status s_ = (call);                                                                            \
        CHECK(s_ == STATUS_OK || strchr(error_message(), '\n') == NULL, "one line: %s", error_message()); \
        test_check_err(s_, needle, __FILE__, __LINE__, #call);                                         \
    } while (0)

/* ---- files ---- */

static int file_exists(const char *dir, const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

static cJSON *read_json(const char *dir, const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    static char text[1 << 16];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    return cJSON_Parse(text);
}

static double config_rope_theta(const char *dir) {
    cJSON *json = read_json(dir, "config.json");
    const cJSON *v = json ? cJSON_GetObjectItemCaseSensitive(json, "rope_theta") : NULL;
    double theta = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    cJSON_Delete(json);
    return theta;
}

/* ---- models ---- */

/* A student at the epsilon an export writes (1e-6), whose export needs no residual rescale and so
 * reads back bit for bit; test_export_eps covers students trained with another epsilon. */
static ModelConfig export_student_config(unsigned mla_mask, int64_t q_lora, int latent_norm) {
    ModelConfig c = tiny_student_config(mla_mask, q_lora, latent_norm);
    c.rms_norm_eps = 1e-6;
    return c;
}

/* Every parameter random, norms around 1 and biases non-zero, so a misplaced row shows. */
static Model *random_model(Backend *be, const ModelConfig *cfg, uint64_t seed) {
    Model *m = NULL;
    if (!CHECK_OK(model_create(&m, be, cfg, SEQ))) exit(1);
    for (int i = 0; i < m->n_params; i++) {
        Param *p = &m->params[i];
        int64_t n = tensor_numel(*p->value);
        float *host = test_alloc((size_t)n * sizeof(float));
        fill_normal(host, n, seed * 1000 + (uint64_t)i, 0.3f);
        if (strstr(p->name, "norm")) for (int64_t j = 0; j < n; j++) host[j] += 1.0f;
        CHECK_OK(be->upload(be, *p->value, host));
        free(host);
    }
    return m;
}

static float *download(const Model *m, Tensor t) {
    float *host = test_alloc((size_t)tensor_numel(t) * sizeof(float));
    CHECK_OK(m->be->download(m->be, host, t));
    return host;
}

/* Every parameter of a has a namesake in b with the same shape and, rounded by `round` (NULL:
 * none), the same bits. */
static void check_params_equal(Model *a, Model *b, float (*round)(float), const char *what) {
    CHECK(a->n_params == b->n_params, "%s: %d parameters, read back %d", what, a->n_params, b->n_params);
    int differing = 0;
    for (int i = 0; i < a->n_params; i++) {
        Param *p = &a->params[i], *q = model_find_param(b, p->name);
        if (!q || tensor_numel(*q->value) != tensor_numel(*p->value)) {
            CHECK(0, "%s: %s is missing or resized after the round trip", what, p->name);
            continue;
        }
        int64_t n = tensor_numel(*p->value);
        float *x = download(a, *p->value), *y = download(b, *q->value);
        if (round)
            for (int64_t j = 0; j < n; j++) x[j] = round(x[j]);
        if (memcmp(x, y, (size_t)n * sizeof(float)) != 0) {
            differing++;
            CHECK(0, "%s: %s differs after the round trip", what, p->name);
        }
        free(x);
        free(y);
    }
    CHECK(differing == 0, "%s: every parameter read back bitwise (%d differ)", what, differing);
}

/* The final hidden states of a fixed batch. */
static float *hidden_states(Model *m) {
    Backend *be = m->be;
    int64_t N = BATCH * SEQ, D = m->cfg.hidden_size;
    ForwardState *st = NULL;
    Tensor ids, hidden;
    CHECK_OK(forward_state_create(&st, m, BATCH, SEQ, 0));
    CHECK_OK(be->alloc(be, &ids, DT_I32, 1, &N));
    CHECK_OK(be->alloc(be, &hidden, DT_F32, 2, (int64_t[]){N, D}));
    int32_t *host_ids = test_alloc((size_t)N * sizeof(int32_t));
    for (int64_t i = 0; i < N; i++) host_ids[i] = (int32_t)((i * 7 + 3) % m->cfg.vocab_size);
    CHECK_OK(be->upload(be, ids, host_ids));
    CHECK_OK(model_forward(m, st, ids, hidden));
    float *out = download(m, hidden);
    free(host_ids);
    be->release(be, &ids);
    be->release(be, &hidden);
    forward_state_destroy(st);
    return out;
}

static void check_same_forward(Model *a, Model *b, const char *what) {
    int64_t n = BATCH * SEQ * a->cfg.hidden_size;
    float *x = hidden_states(a), *y = hidden_states(b);
    CHECK(memcmp(x, y, (size_t)n * sizeof(float)) == 0, "%s: the model read back gives the same hidden states, "
          "bitwise (rel error %.3g)", what, rel_error_f32(y, x, n));
    free(x);
    free(y);
}

static float bf16_round(float x) { return bf16_to_f32(f32_to_bf16(x)); }

/* ---- round trips ---- */

static void test_gqa_round_trip(Backend *be, int qkv_bias, int tied) {
    char what[64], dir[64];
    snprintf(what, sizeof what, "gqa%s%s", qkv_bias ? "+bias" : "", tied ? "+tied" : "");
    ModelConfig cfg = tiny_teacher_config(qkv_bias);
    cfg.tie_word_embeddings = tied;
    if (qkv_bias) {
        strcpy(cfg.model_type, "qwen2");
        strcpy(cfg.architecture, "Qwen2ForCausalLM");
    }
    Model *m = random_model(be, &cfg, 11), *back = NULL;
    test_make_tmp_dir(dir, "hf");
    CHECK_OK(hf_model_save_gqa(m, dir, DT_F32));
    SafetensorsSet *s = NULL;
    if (CHECK_OK(safetensors_open(&s, dir))) {
        CHECK((safetensors_find(s, "lm_head.weight") != NULL) == !tied, "%s: lm_head.weight %s", what,
              tied ? "omitted, as HF omits a tied head" : "written");
        CHECK((safetensors_find(s, "model.layers.1.self_attn.k_proj.bias") != NULL) == qkv_bias,
              "%s: k_proj.bias %s", what, qkv_bias ? "written" : "absent");
        safetensors_close(s);
    }
    if (CHECK_OK(hf_model_load(&back, be, dir, SEQ))) {
        CHECK(strcmp(back->cfg.model_type, cfg.model_type) == 0, "%s: model_type %s", what, back->cfg.model_type);
        check_params_equal(m, back, NULL, what);
        check_same_forward(m, back, what);
        model_destroy(back);
    }
    test_remove_tree(dir);
    model_destroy(m);
}

static void test_mla_round_trip(Backend *be, unsigned mla_mask, int64_t q_lora, int qkv_bias, int tied,
                                size_t shard_bytes) {
    char what[96], dir[64], out[96];
    snprintf(what, sizeof what, "mla mask 0x%x q_lora %lld%s%s%s", mla_mask, (long long)q_lora,
             qkv_bias ? " +bias" : "", tied ? " +tied" : "", shard_bytes ? " sharded" : "");
    ModelConfig cfg = export_student_config(mla_mask, q_lora, 1);
    cfg.qkv_bias = qkv_bias;
    cfg.tie_word_embeddings = tied;
    Model *m = random_model(be, &cfg, 23), *back = NULL;
    test_make_tmp_dir(dir, "hf");
    snprintf(out, sizeof out, "%s/a/b", dir); /* created as mkdir -p would */
    ExportOptions opts = EXPORT_F32;
    opts.max_shard_bytes = shard_bytes;
    CHECK_OK(hf_model_export(m, out, &opts));
    CHECK(file_exists(out, shard_bytes ? "model.safetensors.index.json" : "model.safetensors"),
          "%s: %s written", what, shard_bytes ? "a shard index" : "one model.safetensors");
    SafetensorsSet *s = NULL;
    if (CHECK_OK(safetensors_open(&s, out))) {
        CHECK(safetensors_find(s, "lm_head.weight") != NULL, "%s: lm_head.weight written", what);
        int gqa0 = !(mla_mask & 1);
        CHECK((safetensors_find(s, "model.layers.0.self_attn.k_proj.weight") != NULL) == gqa0,
              "%s: a GQA layer is stored under Llama's names", what);
        CHECK((safetensors_find(s, "model.layers.0.self_attn.q_proj.bias") != NULL) == (gqa0 && qkv_bias),
              "%s: a GQA layer's q/k/v biases are stored under Llama's names", what);
        safetensors_close(s);
    }
    if (CHECK_OK(hf_model_load(&back, be, out, SEQ))) {
        check_params_equal(m, back, NULL, what);
        int pairs = (int)(cfg.mla.qk_rope_head_dim / 2);
        CHECK(memcmp(m->mla_inv_freq, back->mla_inv_freq, (size_t)(cfg.num_hidden_layers * pairs) * sizeof(float)) == 0,
              "%s: MLA rope frequencies read back bitwise", what);
        check_same_forward(m, back, what);
        Status stock = hf_config_deepseek_v2_check_stock(&back->cfg);
        if (mla_mask == 0x3) CHECK_OK(stock);
        else CHECK_ERR(stock, "GQA attention");
        model_destroy(back);
    }
    test_remove_tree(dir);
    model_destroy(m);
}

/* ---- the raw file ---- */

static const float *row_of(const SafetensorsTensor *t, int64_t row) {
    return (const float *)t->data + row * t->shape[1];
}

static int rows_equal(const float *a, const float *b, int64_t cols) { return memcmp(a, b, (size_t)cols * 4) == 0; }

static void test_file_layout(Backend *be, int64_t q_lora) {
    char what[64], dir[64];
    snprintf(what, sizeof what, "file layout, q_lora %lld", (long long)q_lora);
    ModelConfig cfg = export_student_config(0x3, q_lora, 1);
    cfg.tie_word_embeddings = 1;
    const int64_t H = cfg.num_attention_heads, D = cfg.hidden_size, r = cfg.mla.kv_lora_rank;
    const int64_t dn = cfg.mla.qk_nope_head_dim, dr = cfg.mla.qk_rope_head_dim, dv = cfg.mla.v_head_dim;
    Model *m = random_model(be, &cfg, 31);
    test_make_tmp_dir(dir, "hf");
    CHECK_OK(hf_model_export(m, dir, &EXPORT_F32));
    SafetensorsSet *s = NULL;
    if (!CHECK_OK(safetensors_open(&s, dir))) goto done;
    const LayerWeights *w = &m->layers[1];
    const SafetensorsTensor *kv_a = safetensors_find(s, "model.layers.1.self_attn.kv_a_proj_with_mqa.weight");
    const SafetensorsTensor *kv_b = safetensors_find(s, "model.layers.1.self_attn.kv_b_proj.weight");
    const SafetensorsTensor *q = safetensors_find(
        s, q_lora ? "model.layers.1.self_attn.q_b_proj.weight" : "model.layers.1.self_attn.q_proj.weight");
    const SafetensorsTensor *head = safetensors_find(s, "lm_head.weight");
    CHECK(kv_a && kv_a->dtype == DT_F32 && kv_a->shape[0] == r + dr && kv_a->shape[1] == D,
          "%s: kv_a_proj_with_mqa is f32 [r + dr, D]", what);
    CHECK(kv_b && kv_b->shape[0] == H * (dn + dv) && kv_b->shape[1] == r, "%s: kv_b_proj is [H*(dn+dv), r]", what);
    CHECK(q != NULL, "%s: the query projection is stored", what);
    CHECK(safetensors_find(s, "model.layers.1.self_attn.kv_a_proj_latent.weight") == NULL &&
          safetensors_find(s, "model.layers.1.self_attn.kv_b_proj_k.weight") == NULL,
          "%s: mlatrain's split tensors are not stored", what);
    if (!kv_a || !kv_b || !q || !head) goto close;

    float *latent = download(m, w->kv_a_latent), *kr = download(m, w->kv_a_rope);
    float *uk = download(m, w->kv_b_k), *uv = download(m, w->kv_b_v);
    float *wq = download(m, q_lora ? w->q_b_proj : w->q_proj), *embed = download(m, m->embed);
    int64_t qcols = q->shape[1];
    int ok = 1;
    for (int64_t i = 0; i < r; i++) ok &= rows_equal(row_of(kv_a, i), latent + i * D, D);
    CHECK(ok, "%s: kv_a_proj_with_mqa rows [0, r) are W_dkv", what);
    ok = 1;
    for (int64_t j = 0; j < dr / 2; j++) {
        ok &= rows_equal(row_of(kv_a, r + 2 * j), kr + j * D, D);
        ok &= rows_equal(row_of(kv_a, r + 2 * j + 1), kr + (dr / 2 + j) * D, D);
    }
    CHECK(ok, "%s: kv_a_proj_with_mqa row r+2j is W_kr row j, row r+2j+1 is W_kr row dr/2+j", what);
    int nope_ok = 1, rope_ok = 1;
    for (int64_t h = 0; h < H; h++) {
        int64_t base = h * (dn + dr);
        for (int64_t i = 0; i < dn; i++) nope_ok &= rows_equal(row_of(q, base + i), wq + (base + i) * qcols, qcols);
        for (int64_t j = 0; j < dr / 2; j++) {
            rope_ok &= rows_equal(row_of(q, base + dn + 2 * j), wq + (base + dn + j) * qcols, qcols);
            rope_ok &= rows_equal(row_of(q, base + dn + 2 * j + 1), wq + (base + dn + dr / 2 + j) * qcols, qcols);
        }
    }
    CHECK(nope_ok, "%s: each query head's nope rows are stored in place", what);
    CHECK(rope_ok, "%s: each query head's rope rows are interleaved (2j <- j, 2j+1 <- dr/2+j)", what);
    ok = 1;
    for (int64_t h = 0; h < H; h++) {
        for (int64_t i = 0; i < dn; i++) ok &= rows_equal(row_of(kv_b, h * (dn + dv) + i), uk + (h * dn + i) * r, r);
        for (int64_t i = 0; i < dv; i++)
            ok &= rows_equal(row_of(kv_b, h * (dn + dv) + dn + i), uv + (h * dv + i) * r, r);
    }
    CHECK(ok, "%s: kv_b_proj holds per head dn rows of W_uk then dv rows of W_uv", what);
    CHECK(memcmp(head->data, embed, head->bytes) == 0, "%s: the tied lm_head.weight is a copy of the embedding", what);
    free(latent), free(kr), free(uk), free(uv), free(wq), free(embed);

    /* The header the Python library writes. */
    char path[512], header[4096] = {0};
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "rb");
    uint64_t len = 0;
    if (f && fread(&len, 8, 1, f) == 1 && fread(header, 1, len < sizeof header - 1 ? len : sizeof header - 1, f) > 0)
        CHECK(strstr(header, "\"__metadata__\":{\"format\":\"pt\"}") != NULL, "%s: __metadata__ format pt", what);
    else CHECK(0, "%s: cannot read the header of %s", what, path);
    if (f) fclose(f);
close:
    safetensors_close(s);
done:
    test_remove_tree(dir);
    model_destroy(m);
}

static void test_bf16_export(Backend *be) {
    char dir[64];
    ModelConfig cfg = export_student_config(0x3, 6, 1);
    Model *m = random_model(be, &cfg, 41), *back = NULL;
    test_make_tmp_dir(dir, "hf");
    CHECK_OK(hf_model_export(m, dir, NULL));
    SafetensorsSet *s = NULL;
    if (CHECK_OK(safetensors_open(&s, dir))) {
        int all_bf16 = 1;
        for (int64_t i = 0; i < safetensors_count(s); i++) all_bf16 &= safetensors_tensor(s, i)->dtype == DT_BF16;
        CHECK(all_bf16, "bf16 export: the default dtype is bf16");
        safetensors_close(s);
    }
    if (CHECK_OK(hf_model_load(&back, be, dir, SEQ))) {
        check_params_equal(m, back, bf16_round, "bf16 export");
        model_destroy(back);
    }
    test_remove_tree(dir);
    model_destroy(m);
}

/* ---- rope bases ---- */

/* Gives every MLA layer the teacher's frequencies for the given pairs of its head_dim. */
static void set_teacher_pairs(Model *m, const int *pairs_kept) {
    int hd = (int)m->cfg.head_dim, dr = (int)m->cfg.mla.qk_rope_head_dim;
    float teacher[64], kept[32];
    CHECK_OK(rope_inv_freq(&m->cfg.rope, hd, teacher));
    for (int i = 0; i < dr / 2; i++) kept[i] = teacher[pairs_kept[i]];
    for (int l = 0; l < m->cfg.num_hidden_layers; l++)
        if (m->cfg.layer_attention[l] == ATTENTION_MLA) CHECK_OK(model_set_mla_rope(m, l, kept));
}

/* Export, check config.json's rope_theta, read back: the rope frequencies within float32 rounding
 * of the student's (bitwise when they come out equal), and the forward likewise. */
static void check_rope_export(Backend *be, Model *m, const ExportOptions *opts, double theta, int rebased,
                              const char *what) {
    char dir[64];
    test_make_tmp_dir(dir, "hf");
    Model *back = NULL;
    if (!CHECK_OK(hf_model_export(m, dir, opts))) goto done;
    double written = config_rope_theta(dir);
    CHECK(written == theta, "%s: config.json rope_theta = %.17g, expected %.17g", what, written, theta);
    if (!CHECK_OK(hf_model_load(&back, be, dir, SEQ))) goto done;
    int pairs = (int)(m->cfg.mla.qk_rope_head_dim / 2), n = (int)m->cfg.num_hidden_layers * pairs;
    double worst = 0;
    for (int i = 0; i < n; i++)
        worst = fmax(worst, fabs((double)back->mla_inv_freq[i] - m->mla_inv_freq[i]) / fabs((double)m->mla_inv_freq[i]));
    int bitwise = memcmp(back->mla_inv_freq, m->mla_inv_freq, (size_t)n * sizeof(float)) == 0;
    if (rebased) {
        CHECK(worst > 1e-3, "%s: re-basing changed the rope frequencies (rel %.3g)", what, worst);
    } else {
        CHECK(worst <= 1e-6, "%s: rope frequencies read back within float32 rounding (rel %.3g, %s)", what, worst,
              bitwise ? "bitwise" : "not bitwise");
        int64_t N = BATCH * SEQ * m->cfg.hidden_size;
        float *x = hidden_states(m), *y = hidden_states(back);
        double err = rel_error_f32(y, x, N);
        if (bitwise)
            CHECK(memcmp(x, y, (size_t)N * 4) == 0, "%s: same rope tables, bitwise the same hidden states", what);
        else
            CHECK(err < 1e-6, "%s: hidden states within 1e-6 (rel error %.3g; rope tables differ by rounding)", what, err);
        if (getenv("MLATRAIN_TEST_VERBOSE"))
            fprintf(stderr, "%s: rope read back %s, hidden states rel error %.3g\n", what,
                    bitwise ? "bitwise" : "within rounding", err);
        free(x);
        free(y);
    }
    model_destroy(back);
done:
    test_remove_tree(dir);
}

static void test_rope_bases(Backend *be, int llama3) {
    ModelConfig cfg = export_student_config(0x3, 0, 1);
    if (llama3) { /* long wavelengths (above 64 positions) divided by 8: changes the second pair */
        cfg.rope.scaling = ROPE_SCALING_LLAMA3;
        cfg.rope.factor = 8;
        cfg.rope.low_freq_factor = 1;
        cfg.rope.high_freq_factor = 4;
        cfg.rope.original_max_position_embeddings = 64;
    }
    const char *tag = llama3 ? " (llama3 scaling)" : "";
    char what[96];
    double theta = cfg.rope.theta;
    double high_theta = pow(theta, (double)cfg.mla.qk_rope_head_dim / (double)cfg.head_dim);
    Model *m = random_model(be, &cfg, 51);

    snprintf(what, sizeof what, "DeepSeek's default rope%s", tag);
    check_rope_export(be, m, &EXPORT_F32, theta, 0, what);

    int high[] = {0, 1};
    set_teacher_pairs(m, high);
    snprintf(what, sizeof what, "'high' pairs%s", tag);
    check_rope_export(be, m, &EXPORT_F32, high_theta, 0, what);

    int norm_like[] = {1, 2};
    set_teacher_pairs(m, norm_like);
    char dir[64];
    test_make_tmp_dir(dir, "hf");
    CHECK_ERR_LINE(hf_model_export(m, dir, &EXPORT_F32), "allow_rebase");
    CHECK(!file_exists(dir, "model.safetensors") && !file_exists(dir, "config.json"),
          "a refused export writes nothing");
    test_remove_tree(dir);
    ExportOptions rebase = EXPORT_F32;
    rebase.allow_rebase = 1;
    snprintf(what, sizeof what, "arbitrary pairs, re-based%s", tag);
    check_rope_export(be, m, &rebase, high_theta, 1, what);

    /* keep_rope: an exact save for mlatrain; the frequencies go beside the config and read back
     * bit for bit, and a later save with expressible frequencies removes the file. */
    ExportOptions keep = EXPORT_F32;
    keep.keep_rope = 1;
    test_make_tmp_dir(dir, "hf");
    CHECK_OK(hf_model_export(m, dir, &keep));
    CHECK(file_exists(dir, HF_ROPE_SIDECAR), "keep_rope writes %s%s", HF_ROPE_SIDECAR, tag);
    Model *back = NULL;
    if (CHECK_OK(hf_model_load(&back, be, dir, m->max_seq))) {
        int64_t n = m->cfg.num_hidden_layers * m->cfg.mla.qk_rope_head_dim / 2;
        CHECK(memcmp(back->mla_inv_freq, m->mla_inv_freq, (size_t)n * sizeof(float)) == 0,
              "keep_rope: the frequencies read back bit for bit%s", tag);
        check_same_forward(m, back, "keep_rope round trip");
        model_destroy(back);
    }
    set_teacher_pairs(m, high);
    CHECK_OK(hf_model_export(m, dir, &keep));
    CHECK(!file_exists(dir, HF_ROPE_SIDECAR), "an expressible rope leaves no %s%s", HF_ROPE_SIDECAR, tag);
    test_remove_tree(dir);

    /* Layers that disagree: layer 0 DeepSeek's default, layer 1 the 'high' pairs. */
    float deepseek[2];
    RopeConfig r = cfg.rope;
    CHECK_OK(rope_inv_freq(&r, (int)cfg.mla.qk_rope_head_dim, deepseek));
    set_teacher_pairs(m, high);
    CHECK_OK(model_set_mla_rope(m, 0, deepseek));
    test_make_tmp_dir(dir, "hf");
    CHECK_ERR_LINE(hf_model_export(m, dir, &EXPORT_F32), "MLA layer 0's rope frequencies are DeepSeek's for rope_theta = 10000 and MLA layer 1's for 464.159");
    test_remove_tree(dir);
    model_destroy(m);
}

/* ---- refusals ---- */

typedef struct {
    const char *drop;        /* leave this tensor out */
    const char *transpose;   /* store this matrix with its shape swapped */
    const char *add;         /* add a tensor of this name ... */
    int add_ndim;
    int64_t add_shape[2];
    const float *add_data;   /* ... with these values */
} FileEdit;

/* Rewrites <dir>/model.safetensors (f32) with one edit. */
static void edit_model_file(const char *dir, const FileEdit *edit) {
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    SafetensorsSet *s = NULL;
    if (!CHECK_OK(safetensors_open(&s, path))) return;
    int64_t n = safetensors_count(s), k = 0;
    SafetensorsEntry *e = test_alloc((size_t)(n + 1) * sizeof *e);
    for (int64_t i = 0; i < n; i++) {
        const SafetensorsTensor *t = safetensors_tensor(s, i);
        if (edit->drop && strcmp(t->name, edit->drop) == 0) continue;
        e[k] = (SafetensorsEntry){.name = t->name, .ndim = t->ndim, .data = t->data};
        memcpy(e[k].shape, t->shape, sizeof t->shape);
        if (edit->transpose && strcmp(t->name, edit->transpose) == 0) {
            e[k].shape[0] = t->shape[1];
            e[k].shape[1] = t->shape[0];
        }
        k++;
    }
    if (edit->add) {
        e[k] = (SafetensorsEntry){.name = edit->add, .ndim = edit->add_ndim, .data = edit->add_data};
        memcpy(e[k].shape, edit->add_shape, sizeof edit->add_shape);
        k++;
    }
    CHECK_OK(safetensors_write_file(path, e, k, DT_F32));
    free(e);
    safetensors_close(s);
}

static void test_refusals(Backend *be) {
    char dir[64];
    Model *m = NULL;
    test_make_tmp_dir(dir, "hf");
    CHECK_ERR_LINE(hf_model_load(&m, be, dir, SEQ), "config.json");
    test_remove_tree(dir);

    ModelConfig cfg = tiny_teacher_config(0);
    Model *teacher = random_model(be, &cfg, 61);
    float values[23 * 12];
    fill_normal(values, 23 * 12, 62, 1.0f);
    const FileEdit missing = {.drop = "model.layers.1.mlp.up_proj.weight"};
    const FileEdit transposed = {.transpose = "model.layers.1.mlp.up_proj.weight"};
    const FileEdit extra = {.add = "model.layers.0.self_attn.extra.weight", .add_ndim = 1, .add_shape = {12}, .add_data = values};
    const FileEdit inv_freq = {.add = "model.layers.0.self_attn.rotary_emb.inv_freq", .add_ndim = 1, .add_shape = {3},
                               .add_data = values};
    const struct {
        const FileEdit *edit;
        const char *needle;   /* NULL: loads */
    } cases[] = {
        {&missing, "tensor 'model.layers.1.mlp.up_proj.weight' is missing"},
        {&transposed, "'model.layers.1.mlp.up_proj.weight' has shape [12, 20], expected [20, 12]"},
        {&extra, "tensor 'model.layers.0.self_attn.extra.weight' is not part of the llama model"},
        {&inv_freq, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        test_make_tmp_dir(dir, "hf");
        CHECK_OK(hf_model_save_gqa(teacher, dir, DT_F32));
        edit_model_file(dir, cases[i].edit);
        m = NULL;
        if (cases[i].needle) CHECK_ERR_LINE(hf_model_load(&m, be, dir, SEQ), cases[i].needle);
        else CHECK_OK(hf_model_load(&m, be, dir, SEQ));
        CHECK(cases[i].needle ? m == NULL : m != NULL, "case %zu: a model only on success", i);
        model_destroy(m);
        test_remove_tree(dir);
    }
    model_destroy(teacher);

    /* A tied model whose file has a head anyway: it must be the embedding. */
    cfg.tie_word_embeddings = 1;
    teacher = random_model(be, &cfg, 63);
    float *embed = download(teacher, teacher->embed);
    const FileEdit same_head = {.add = "lm_head.weight", .add_ndim = 2, .add_shape = {23, 12}, .add_data = embed};
    const FileEdit other_head = {.add = "lm_head.weight", .add_ndim = 2, .add_shape = {23, 12}, .add_data = values};
    for (int differ = 0; differ < 2; differ++) {
        test_make_tmp_dir(dir, "hf");
        CHECK_OK(hf_model_save_gqa(teacher, dir, DT_F32));
        edit_model_file(dir, differ ? &other_head : &same_head);
        m = NULL;
        if (differ) CHECK_ERR_LINE(hf_model_load(&m, be, dir, SEQ), "'lm_head.weight' differs from model.embed_tokens.weight");
        else if (CHECK_OK(hf_model_load(&m, be, dir, SEQ))) check_params_equal(teacher, m, NULL, "tied, head in the file");
        model_destroy(m);
        test_remove_tree(dir);
    }
    free(embed);

    /* Export refuses what stock DeepSeek-V2 loaders cannot read. */
    test_make_tmp_dir(dir, "hf");
    CHECK_ERR_LINE(hf_model_export(teacher, dir, &EXPORT_F32), "no MLA layer");
    ModelConfig no_norm = export_student_config(0x3, 0, 0);
    Model *student = random_model(be, &no_norm, 64);
    CHECK_ERR_LINE(hf_model_export(student, dir, &(ExportOptions){.dtype = DT_F16}), "f16 cannot hold");
    CHECK(!file_exists(dir, "config.json") && !file_exists(dir, "model.safetensors"), "refused exports write nothing");
    model_destroy(student);

    /* A student trained without the latent norm exports with one in its linear regime: the same
     * function, and read back it is folded away to the very weights it was trained as. */
    for (int bf16 = 0; bf16 < 2; bf16++) {
        char ldir[64];
        test_make_tmp_dir(ldir, "hf");
        student = random_model(be, &no_norm, 66);
        Model *with_norm = NULL;
        if (CHECK_OK(model_with_linear_latent_norm(student, &with_norm))) {
            CHECK(with_norm->cfg.mla.latent_norm == 1, "the export's model has kv_a_layernorm");
            int64_t n = BATCH * SEQ * student->cfg.hidden_size;
            float *x = hidden_states(student), *y = hidden_states(with_norm);
            double err = rel_error_f32(y, x, n);
            CHECK(err < 1e-5, "the linear-regime norm leaves the hidden states as they were (rel error %.3g)", err);
            free(x);
            free(y);
        }
        model_destroy(with_norm);
        Model *back = NULL;
        if (CHECK_OK(hf_model_export(student, ldir, bf16 ? &(ExportOptions){.dtype = DT_BF16} : &EXPORT_F32)) &&
            CHECK_OK(hf_model_load(&back, be, ldir, SEQ))) {
            CHECK(back->cfg.mla.latent_norm == 0, "read back, the linear norm is folded away");
            check_params_equal(student, back, bf16 ? bf16_round : NULL, bf16 ? "linear latent norm, bf16" : "linear latent norm, f32");
        }
        model_destroy(back);
        model_destroy(student);
        test_remove_tree(ldir);
    }
    ModelConfig ok_cfg = export_student_config(0x3, 0, 1);
    student = random_model(be, &ok_cfg, 65);
    char below_file[128];
    snprintf(below_file, sizeof below_file, "%s/config.json/out", dir);
    CHECK_OK(hf_model_export(student, dir, NULL));
    CHECK_ERR_LINE(hf_model_export(student, below_file, NULL), "is not a directory");
    CHECK_ERR_LINE(hf_model_save_gqa(student, dir, DT_F32), "export the student with hf_model_export");
    model_destroy(student);
    test_remove_tree(dir);
    model_destroy(teacher);
}

/* A q bottleneck trained without its norm exports with q_a_layernorm in its linear regime: the same
 * function, the norm written with one power-of-two weight, and read back it is folded away to the
 * very weights trained (beside a trained latent norm, and beside a linear one). */
static void test_linear_q_norm(Backend *be, int latent_norm, int bf16) {
    char what[96], dir[64];
    snprintf(what, sizeof what, "linear q norm, latent norm %d, %s", latent_norm, bf16 ? "bf16" : "f32");
    ModelConfig cfg = export_student_config(0x3, 6, latent_norm);
    cfg.mla.q_norm = 0;
    Model *student = random_model(be, &cfg, 67), *with_norm = NULL, *back = NULL;
    if (CHECK_OK(model_with_linear_q_norm(student, &with_norm))) {
        CHECK(with_norm->cfg.mla.q_norm == 1 && with_norm->cfg.mla.latent_norm == latent_norm,
              "%s: the export's model has q_a_layernorm, the latent as it was", what);
        float *g = download(with_norm, with_norm->layers[1].q_a_norm);
        int one_power = 1;
        for (int64_t i = 0; i < cfg.mla.q_lora_rank; i++) {
            int e;
            one_power &= g[i] == g[0] && fabs(frexp(g[i] / sqrt(1e-6), &e) - 0.5) < 1e-6;
        }
        CHECK(one_power && g[0] > 1, "%s: one weight on every channel, sqrt(eps)/s (%g)", what, g[0]);
        free(g);
        int64_t n = BATCH * SEQ * student->cfg.hidden_size;
        float *x = hidden_states(student), *y = hidden_states(with_norm);
        double err = rel_error_f32(y, x, n);
        CHECK(err < 1e-5, "%s: the linear-regime q norm leaves the hidden states as they were (rel error %.3g)", what,
              err);
        free(x);
        free(y);
    }
    model_destroy(with_norm);
    test_make_tmp_dir(dir, "hf");
    CHECK_ERR_LINE(hf_model_export(student, dir, &(ExportOptions){.dtype = DT_F16}), "f16 cannot hold");
    if (CHECK_OK(hf_model_export(student, dir, bf16 ? &(ExportOptions){.dtype = DT_BF16} : &EXPORT_F32))) {
        SafetensorsSet *s = NULL;
        if (CHECK_OK(safetensors_open(&s, dir))) {
            CHECK(safetensors_find(s, "model.layers.0.self_attn.q_a_layernorm.weight") != NULL,
                  "%s: q_a_layernorm written, as stock loaders need", what);
            safetensors_close(s);
        }
        if (CHECK_OK(hf_model_load(&back, be, dir, SEQ))) {
            CHECK(back->cfg.mla.q_norm == 0 && back->cfg.mla.latent_norm == latent_norm,
                  "%s: read back, the linear q norm is folded away (q_norm %d, latent_norm %d)", what,
                  back->cfg.mla.q_norm, back->cfg.mla.latent_norm);
            check_params_equal(student, back, bf16 ? bf16_round : NULL, what);
        }
    }
    model_destroy(back);
    model_destroy(student);
    test_remove_tree(dir);
}

int main(void) {
    Backend *be = test_cpu_backend(0);

    for (int bias = 0; bias < 2; bias++)
        for (int tied = 0; tied < 2; tied++) test_gqa_round_trip(be, bias, tied);

    test_mla_round_trip(be, 0x3, 0, 0, 0, 0);
    test_mla_round_trip(be, 0x3, 6, 0, 1, 0);
    test_mla_round_trip(be, 0x3, 6, 1, 0, 1500);   /* a Qwen2 teacher's student, sharded */
    test_mla_round_trip(be, 0x2, 5, 1, 0, 0);      /* hybrid: layer 0 keeps GQA with its biases */
    test_mla_round_trip(be, 0x1, 0, 0, 1, 0);

    test_file_layout(be, 0);
    test_file_layout(be, 6);
    test_bf16_export(be);
    test_rope_bases(be, 0);
    test_rope_bases(be, 1);
    test_refusals(be);
    for (int latent_norm = 0; latent_norm < 2; latent_norm++)
        for (int bf16 = 0; bf16 < 2; bf16++) test_linear_q_norm(be, latent_norm, bf16);

    backend_destroy(be);
    return test_finish("test_hf_model");
}
