/* A Qwen2 teacher's q/k/v biases through conversion (exact where the conversion is) and DeepSeek-V2's
 * attention_bias on export and import. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "model/convert/convert.h"
#include "model/hf/export_eps.h"
#include "model/hf/hf_model.h"
#include "model/hf/safetensors.h"
#include "convert_fixtures.h"
#include "model_fixtures.h"

enum { BATCH = 2, SEQ = 9 };

static Model *qwen_teacher(Backend *be, int K, uint64_t seed) {
    ModelConfig c = convert_teacher_config(K);
    c.qkv_bias = 1;
    strcpy(c.model_type, "qwen2");
    strcpy(c.architecture, "Qwen2ForCausalLM");
    Model *t = convert_make_teacher(be, c, SEQ, seed);
    randomize_biases(t, seed * 7, 0.5f);
    return t;
}

static ConvertOptions options(MlaInit init, RopeSelect sel, int64_t r, int64_t dn, int64_t dr, int64_t dv) {
    ConvertOptions o;
    memset(&o, 0, sizeof o);
    o.init = init;
    o.rope_select = sel;
    o.dims = (MlaDims){.kv_lora_rank = r, .qk_nope_head_dim = dn, .qk_rope_head_dim = dr, .v_head_dim = dv};
    o.seed = 5;
    o.n_calib_seqs = BATCH;
    o.calib_seq = SEQ;
    return o;
}

/* The exact cases stay exact with biases, which the dropped biases break. */
static void test_conversion_exact(Backend *be) {
    ConvertReport rep;
    Model *t2 = qwen_teacher(be, 2, 11);
    ConvertOptions ex = options(MLA_INIT_EXACT, ROPE_SELECT_HIGH, 0, 0, 2, 1);
    double err = convert_and_compare(be, t2, &ex, &rep);
    CHECK(err < 1e-5, "exact conversion of a biased teacher (K=2): logits rel error %.3g", err);
    ex.drop_biases = 1;
    double dropped = convert_and_compare(be, t2, &ex, &rep);
    CHECK(dropped > 1e-2, "the same with the biases dropped is not exact: rel error %.3g", dropped);
    model_destroy(t2);

    Model *t1 = qwen_teacher(be, 1, 12);
    RopeSelect sels[2] = {ROPE_SELECT_HIGH, ROPE_SELECT_UNIFORM};
    for (int i = 0; i < 2; i++) {
        ConvertOptions sv = options(MLA_INIT_SVD, sels[i], 8, 3, 8, 8);
        err = convert_and_compare(be, t1, &sv, &rep);
        CHECK(err < 1e-5, "svd, full rank, K=1, biased (select %d): logits rel error %.3g", i, err);
    }
    /* The activation-weighted basis reads the calibration input with its column of ones. */
    ConvertOptions act = options(MLA_INIT_SVD, ROPE_SELECT_HIGH, 8, 3, 8, 8);
    act.latent_basis = LATENT_BASIS_ACTIVATIONS;
    err = convert_and_compare(be, t1, &act, &rep);
    CHECK(err < 1e-5, "svd from activations, full rank, K=1, biased: logits rel error %.3g", err);
    model_destroy(t1);
}

/* Lossy conversions: keeping the biases beats dropping them, for each method, layer by layer. */
static void test_conversion_lossy(Backend *be) {
    Model *t = qwen_teacher(be, 2, 13);
    struct {
        RopeSelect sel;
        LatentBasis basis;
        int64_t q_lora;
        int norms;   /* both of DeepSeek's norms trained (and fitted), or neither */
    } cases[] = {{ROPE_SELECT_HIGH, LATENT_BASIS_WEIGHTS, 0, 0},
                 {ROPE_SELECT_NORM, LATENT_BASIS_ACTIVATIONS, 0, 0},
                 {ROPE_SELECT_ROROPE, LATENT_BASIS_ACTIVATIONS, 0, 0},
                 {ROPE_SELECT_HIGH, LATENT_BASIS_WEIGHTS, 16, 1},
                 {ROPE_SELECT_ROROPE, LATENT_BASIS_ACTIVATIONS, 16, 0}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ConvertReport kept, dropped;
        ConvertOptions o = options(MLA_INIT_SVD, cases[i].sel, 8, 4, 4, 8);
        o.latent_basis = cases[i].basis;
        o.dims.q_lora_rank = cases[i].q_lora;
        o.dims.latent_norm = o.dims.q_norm = cases[i].norms;
        /* What the conversion's own linear algebra does with the biases: the o_proj fit after it
         * (tested in test_output_fit) would blur the comparison on a random teacher. */
        o.output_fit = OUTPUT_FIT_NONE;
        /* Each layer's error on the teacher's own input: the logits of a random teacher this far from
         * full rank say little. */
        convert_and_compare(be, t, &o, &kept);
        o.drop_biases = 1;
        convert_and_compare(be, t, &o, &dropped);
        CHECK(convert_total_error(&kept) < convert_total_error(&dropped),
              "case %zu: attention error with the biases %.4g, without %.4g", i, convert_total_error(&kept),
              convert_total_error(&dropped));
    }
    model_destroy(t);
}

/* A biased student of a biased teacher, through export and import (f32): same parameters, same
 * logits; the file in DeepSeek-V2's attention_bias layout. */
static void test_export_round_trip(Backend *be, int latent_norm) {
    char what[64], dir[64];
    snprintf(what, sizeof what, "bias round trip, latent norm %d", latent_norm);
    ModelConfig cfg = tiny_student_config(0x3, 6, latent_norm);
    cfg.rms_norm_eps = EXPORT_RMS_NORM_EPS;
    cfg.mla.attention_bias = 1;
    Model *m = NULL;
    CHECK_OK(model_create(&m, be, &cfg, SEQ));
    CHECK_OK(model_init_random(m, 3, 0.3f));
    randomize_biases(m, 17, 0.4f);
    CHECK(tensor_present(m->layers[1].q_a_bias) && tensor_present(m->layers[1].kv_a_rope_bias),
          "%s: the student has q_a_proj and kv_a_proj biases", what);
    test_make_tmp_dir(dir, "bias");
    ExportOptions opts = {.dtype = DT_F32};
    CHECK_OK(hf_model_export(m, dir, &opts));
    SafetensorsSet *s = NULL;
    if (CHECK_OK(safetensors_open(&s, dir))) {
        const SafetensorsTensor *kv = safetensors_find(s, "model.layers.1.self_attn.kv_a_proj_with_mqa.bias");
        const SafetensorsTensor *o = safetensors_find(s, "model.layers.1.self_attn.o_proj.bias");
        const SafetensorsTensor *qa = safetensors_find(s, "model.layers.1.self_attn.q_a_proj.bias");
        int64_t r = cfg.mla.kv_lora_rank, dr = cfg.mla.qk_rope_head_dim;
        CHECK(kv && kv->ndim == 1 && kv->shape[0] == r + dr, "%s: kv_a_proj_with_mqa.bias [r + dr]", what);
        CHECK(qa && qa->shape[0] == cfg.mla.q_lora_rank, "%s: q_a_proj.bias [q_lora]", what);
        int zero = o && o->shape[0] == cfg.hidden_size;
        for (int64_t i = 0; zero && i < o->shape[0]; i++) zero &= ((const float *)o->data)[i] == 0.0f;
        CHECK(zero, "%s: o_proj.bias is written, all zeros", what);
        if (kv && latent_norm) {
            float *rope = test_alloc((size_t)dr * sizeof(float));
            CHECK_OK(backend_download_f32(be, rope, m->layers[1].kv_a_rope_bias));
            const float *f = (const float *)kv->data + r;
            int ok = 1;
            for (int64_t j = 0; j < dr / 2; j++) ok &= f[2 * j] == rope[j] && f[2 * j + 1] == rope[dr / 2 + j];
            CHECK(ok, "%s: the rope part of the bias is interleaved like W_kr's rows", what);
            free(rope);
        }
        safetensors_close(s);
    }
    Model *back = NULL;
    if (CHECK_OK(hf_model_load(&back, be, dir, SEQ))) {
        CHECK(back->cfg.mla.attention_bias == 1 && back->cfg.mla.latent_norm == latent_norm,
              "%s: attention_bias read back (latent norm %d)", what, back->cfg.mla.latent_norm);
        int64_t na = 0, nb = 0;
        float *pa = model_host_copy(m, 0, &na), *pb = model_host_copy(back, 0, &nb);
        CHECK(na == nb && (latent_norm ? memcmp(pa, pb, (size_t)na * 4) == 0 : rel_error_f32(pb, pa, na) < 1e-7),
              "%s: parameters read back (%lld vs %lld values)", what, (long long)na, (long long)nb);
        int64_t n = BATCH * SEQ * cfg.vocab_size;
        float *la = convert_logits_of(be, m, BATCH, SEQ), *lb = convert_logits_of(be, back, BATCH, SEQ);
        double err = rel_error_f32(lb, la, n);
        CHECK(err < (latent_norm ? 1e-7 : 2e-6), "%s: logits read back: rel error %.3g", what, err);
        free(pa), free(pb), free(la), free(lb);
        model_destroy(back);
    }
    test_remove_tree(dir);

    /* DeepSeek-V2's q_proj has no bias: a full-rank q with a bias is written through a linear-regime
     * q bottleneck (q_b_proj the identity) and read back as it was. */
    ModelConfig full_q = cfg;
    full_q.mla.q_lora_rank = 0;
    Model *fq = NULL, *fq_back = NULL;
    CHECK_OK(model_create(&fq, be, &full_q, SEQ));
    CHECK_OK(model_init_random(fq, 4, 0.3f));
    randomize_biases(fq, 23, 0.4f);
    test_make_tmp_dir(dir, "bias");
    CHECK_OK(hf_model_export(fq, dir, &opts));
    if (CHECK_OK(safetensors_open(&s, dir))) {
        const SafetensorsTensor *qb = safetensors_find(s, "model.layers.0.self_attn.q_b_proj.weight");
        int64_t Q = full_q.num_attention_heads * (full_q.mla.qk_nope_head_dim + full_q.mla.qk_rope_head_dim);
        CHECK(qb && qb->shape[0] == Q && qb->shape[1] == Q && !safetensors_find(s, "model.layers.0.self_attn.q_proj.bias"),
              "%s: the q bias rides on a [%lld, %lld] q bottleneck", what, (long long)Q, (long long)Q);
        safetensors_close(s);
    }
    if (CHECK_OK(hf_model_load(&fq_back, be, dir, SEQ))) {
        CHECK(fq_back->cfg.mla.q_lora_rank == 0 && tensor_present(fq_back->layers[0].q_bias),
              "%s: read back with q_proj and its bias (q_lora_rank %lld)", what, (long long)fq_back->cfg.mla.q_lora_rank);
        int64_t n = BATCH * SEQ * cfg.vocab_size;
        float *la = convert_logits_of(be, fq, BATCH, SEQ), *lb = convert_logits_of(be, fq_back, BATCH, SEQ);
        double err = rel_error_f32(lb, la, n);
        CHECK(err < 2e-6, "%s: q bias through the bottleneck, logits read back: rel error %.3g", what, err);
        free(la), free(lb);
        model_destroy(fq_back);
    }
    test_remove_tree(dir);
    model_destroy(fq);
    model_destroy(m);
}

int main(void) {
    Backend *be = test_cpu_backend(0);
    test_conversion_exact(be);
    test_conversion_lossy(be);
    test_export_round_trip(be, 1);
    test_export_round_trip(be, 0);
    backend_destroy(be);
    return test_finish("test_mla_bias");
}
