/* GQA -> MLA conversion: the exact cases reproduce the teacher's logits, the attention error falls
 * as the rank grows for every RoPE selection, and bad options are refused with a clear error. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "model/convert/convert.h"
#include "model/model.h"
#include "convert_fixtures.h"
#include "model_fixtures.h"

enum { BATCH = 2, SEQ = 9 };

static ConvertOptions options(MlaInit init, RopeSelect sel, int64_t r, int64_t dn, int64_t dr, int64_t dv, int norm) {
    ConvertOptions o;
    memset(&o, 0, sizeof o);
    o.init = init;
    o.rope_select = sel;
    o.dims = (MlaDims){.kv_lora_rank = r, .q_lora_rank = 0, .qk_nope_head_dim = dn, .qk_rope_head_dim = dr,
                       .v_head_dim = dv, .latent_norm = norm};
    o.seed = 5;
    o.n_calib_seqs = BATCH;
    o.calib_seq = SEQ;
    return o;
}

static void test_exact_cases(Backend *be) {
    ConvertReport rep;
    /* TransMLA's lossless form, K = 2 (keys in a K*hd shared rope key), latent norm off. */
    Model *t2 = convert_make_teacher(be, convert_teacher_config(2), SEQ, 11);
    ConvertOptions ex = options(MLA_INIT_EXACT, ROPE_SELECT_HIGH, 0, 0, 2, 1, 0);
    double err = convert_and_compare(be, t2, &ex, &rep);
    CHECK(err < 1e-5, "exact conversion (K=2, latent norm off): logits rel error %.3g", err);
    CHECK(rep.dims.kv_lora_rank == 16 && rep.dims.qk_rope_head_dim == 16 && rep.dims.qk_nope_head_dim == 0,
          "exact conversion dims: r %lld, dr %lld, dn %lld", (long long)rep.dims.kv_lora_rank,
          (long long)rep.dims.qk_rope_head_dim, (long long)rep.dims.qk_nope_head_dim);
    CHECK(rep.kv_bytes_student == rep.kv_bytes_teacher, "exact conversion keeps the cache size (%lld vs %lld)",
          (long long)rep.kv_bytes_student, (long long)rep.kv_bytes_teacher);
    /* With the latent norm on the exact form is close, not exact. */
    ex.dims.latent_norm = 1;
    double err_norm = convert_and_compare(be, t2, &ex, &rep);
    CHECK(err_norm > 1e-5 && err_norm < 0.5, "exact conversion with the latent norm: logits rel error %.3g", err_norm);
    model_destroy(t2);

    /* The SVD at full rank on an MQA teacher with every pair keeping RoPE and no latent norm. */
    Model *t1 = convert_make_teacher(be, convert_teacher_config(1), SEQ, 12);
    RopeSelect sels[3] = {ROPE_SELECT_HIGH, ROPE_SELECT_NORM, ROPE_SELECT_UNIFORM};
    for (int i = 0; i < 3; i++) {
        ConvertOptions sv = options(MLA_INIT_SVD, sels[i], 8, 3, 8, 8, 0);
        err = convert_and_compare(be, t1, &sv, &rep);
        CHECK(err < 1e-5, "svd, full rank, K=1, all pairs, no latent norm (select %d): logits rel error %.3g", i, err);
        CHECK(fabs(rep.layers[0].kept_energy - 1.0) < 1e-12, "full rank keeps all the energy (%.17g)", rep.layers[0].kept_energy);
    }
    /* Wider value heads than the teacher's (padding) stay exact too. */
    ConvertOptions wide = options(MLA_INIT_SVD, ROPE_SELECT_HIGH, 12, 5, 8, 11, 0);
    err = convert_and_compare(be, t1, &wide, &rep);
    CHECK(err < 1e-5, "svd exact case with dv > hd and dn > hd - dr: logits rel error %.3g", err);
    model_destroy(t1);
}

/* For each selection, the attention-output error on calibration tokens falls as r grows. */
static void test_error_falls_with_rank(Backend *be) {
    Model *t = convert_make_teacher(be, convert_teacher_config(2), SEQ, 13);
    RopeSelect sels[4] = {ROPE_SELECT_HIGH, ROPE_SELECT_LOW, ROPE_SELECT_UNIFORM, ROPE_SELECT_NORM};
    const char *names[4] = {"high", "low", "uniform", "norm"};
    int64_t ranks[4] = {2, 6, 12, 24}; /* 24 = K * ((hd - dr) + hd): full */
    for (int s = 0; s < 4; s++)
        for (int norm = 0; norm < 2; norm++) {
            double prev = INFINITY;
            int falls = 1;
            double errs[4];
            for (int i = 0; i < 4; i++) {
                ConvertOptions o = options(MLA_INIT_SVD, sels[s], ranks[i], 4, 4, 8, norm);
                /* The conversion alone, on the teacher's input the error is measured on (the o_proj
                 * fit on the student's stream is tested in test_output_fit). */
                o.output_fit = OUTPUT_FIT_NONE;
                ConvertReport rep;
                Model *student = NULL;
                if (!CHECK_OK(mla_convert(&student, t, &o, &rep))) continue;
                errs[i] = convert_total_error(&rep);
                if (!(errs[i] < prev)) falls = 0;
                prev = errs[i];
                model_destroy(student);
            }
            CHECK(falls, "rope_select %s, latent norm %d: error falls with r: %.4g %.4g %.4g %.4g", names[s], norm,
                  errs[0], errs[1], errs[2], errs[3]);
        }
    /* Narrower query/key and value heads than the teacher's: the per-head product SVD. Error falls
     * as the widths grow back. */
    double e_narrow, e_wide;
    ConvertReport rep;
    ConvertOptions narrow = options(MLA_INIT_SVD, ROPE_SELECT_HIGH, 24, 1, 4, 2, 0);
    ConvertOptions wider = options(MLA_INIT_SVD, ROPE_SELECT_HIGH, 24, 3, 4, 6, 0);
    Model *student = NULL;
    CHECK_OK(mla_convert(&student, t, &narrow, &rep));
    e_narrow = convert_total_error(&rep);
    model_destroy(student);
    CHECK_OK(mla_convert(&student, t, &wider, &rep));
    e_wide = convert_total_error(&rep);
    model_destroy(student);
    CHECK(e_wide < e_narrow, "narrow heads: error %.4g at dn=1, dv=2 falls to %.4g at dn=3, dv=6", e_narrow, e_wide);

    /* Random attention is far off; the SVD at full rank is off only by the shared rope key. */
    ConvertOptions rnd = options(MLA_INIT_RANDOM, ROPE_SELECT_HIGH, 6, 4, 4, 8, 1);
    CHECK_OK(mla_convert(&student, t, &rnd, &rep));
    double e_random = convert_total_error(&rep);
    model_destroy(student);
    ConvertOptions svd_full = options(MLA_INIT_SVD, ROPE_SELECT_HIGH, 24, 4, 4, 8, 1);
    CHECK_OK(mla_convert(&student, t, &svd_full, &rep));
    CHECK(convert_total_error(&rep) < 0.5 * e_random, "svd at full rank (%.4g) beats random attention (%.4g)", convert_total_error(&rep), e_random);
    model_destroy(student);
    model_destroy(t);
}

static void test_energy_hybrid_qlora(Backend *be) {
    Model *t = convert_make_teacher(be, convert_teacher_config(2), SEQ, 14);
    ConvertReport rep;
    Model *student = NULL;
    ConvertOptions o = options(MLA_INIT_SVD, ROPE_SELECT_HIGH, 0, 4, 4, 8, 1);
    o.energy = 0.5;
    o.dims.kv_lora_rank = 0;
    CHECK_OK(mla_convert(&student, t, &o, &rep));
    int64_t rmax = 0;
    for (int l = 0; l < rep.n_layers; l++) {
        CHECK(rep.layers[l].rank_chosen % 8 == 0 && rep.layers[l].rank_chosen > 0, "layer %d energy rank %lld is a multiple of 8",
              l, (long long)rep.layers[l].rank_chosen);
        if (rep.layers[l].rank_chosen > rmax) rmax = rep.layers[l].rank_chosen;
        CHECK(rep.layers[l].kept_energy >= 0.5, "layer %d keeps %.3f >= 0.5 of the energy", l, rep.layers[l].kept_energy);
    }
    CHECK(student && student->cfg.mla.kv_lora_rank == rmax, "the student's rank is the largest layer's (%lld)", (long long)rmax);
    model_destroy(student);

    /* Hybrid: layer 1 keeps the teacher's GQA attention, copied. */
    ConvertOptions h = options(MLA_INIT_SVD, ROPE_SELECT_NORM, 8, 4, 4, 8, 1);
    h.gqa_layers[0] = 1;
    h.n_gqa_layers = 1;
    CHECK_OK(mla_convert(&student, t, &h, &rep));
    CHECK(rep.layers[1].kind == ATTENTION_GQA && rep.layers[1].attn_rel_error == 0.0, "hybrid: layer 1 is kept GQA");
    CHECK(student->layers[1].kind == ATTENTION_GQA &&
              memcmp(student->layers[1].k_proj.data, t->layers[1].k_proj.data, tensor_bytes(t->layers[1].k_proj)) == 0,
          "hybrid: layer 1's k_proj is the teacher's");
    CHECK(rep.kv_bytes_student == 2 * (8 + 4) + 2 * 2 * 2 * 8, "hybrid KV bytes %lld", (long long)rep.kv_bytes_student);
    model_destroy(student);

    /* A q bottleneck at full rank: with its norm (the weights' SVD, the norm fitted per channel)
     * close to the plain student; linear (fitted to the scores) the plain student itself. */
    ConvertOptions q = options(MLA_INIT_SVD, ROPE_SELECT_HIGH, 24, 4, 4, 8, 0);
    CHECK_OK(mla_convert(&student, t, &q, &rep));
    double e_plain = convert_total_error(&rep);
    model_destroy(student);
    q.dims.q_lora_rank = 32;
    q.dims.q_norm = 1;
    CHECK_OK(mla_convert(&student, t, &q, &rep));
    CHECK(convert_total_error(&rep) < e_plain + 0.3, "q_lora at full rank, q norm: error %.4g vs %.4g without",
          convert_total_error(&rep), e_plain);
    model_destroy(student);
    q.dims.q_norm = 0;
    CHECK_OK(mla_convert(&student, t, &q, &rep));
    CHECK(fabs(convert_total_error(&rep) - e_plain) < 1e-4 * e_plain,
          "q_lora at full rank, linear: error %.6g vs %.6g without", convert_total_error(&rep), e_plain);
    model_destroy(student);
    model_destroy(t);
}

static void test_bad_options(Backend *be) {
    Model *t = convert_make_teacher(be, convert_teacher_config(2), SEQ, 15), *student = NULL;
    ConvertReport rep;
    ConvertOptions o = options(MLA_INIT_SVD, ROPE_SELECT_HIGH, 8, 4, 4, 8, 1);
    o.gqa_layers[0] = 7;
    o.n_gqa_layers = 1;
    CHECK_ERR(mla_convert(&student, t, &o, &rep), "gqa_layers: layer 7 does not exist");
    o = options(MLA_INIT_SVD, ROPE_SELECT_HIGH, 8, 4, 10, 8, 1);
    CHECK_ERR(mla_convert(&student, t, &o, &rep), "keeps more pairs than the teacher's head_dim");
    o = options(MLA_INIT_SVD, ROPE_SELECT_UNIFORM, 8, 4, 6, 8, 1);
    CHECK_ERR(mla_convert(&student, t, &o, &rep), "must divide head_dim");
    o = options(MLA_INIT_EXACT, ROPE_SELECT_HIGH, 8, 4, 4, 8, 0);
    o.dims.q_lora_rank = 4;
    CHECK_ERR(mla_convert(&student, t, &o, &rep), "exact conversion needs 0");
    CHECK(student == NULL, "a failed conversion leaves no student");
    model_destroy(t);

    ModelConfig qwen = convert_teacher_config(2);
    qwen.qkv_bias = 1;
    Model *tq = convert_make_teacher(be, qwen, SEQ, 16);
    o = options(MLA_INIT_SVD, ROPE_SELECT_HIGH, 8, 4, 4, 8, 1);
    o.drop_biases = 1;
    CHECK_OK(mla_convert(&student, tq, &o, &rep));
    CHECK(!student->cfg.mla.attention_bias && !tensor_present(student->layers[0].kv_a_latent_bias),
          "drop_biases: the student has no attention biases");
    model_destroy(student);
    model_destroy(tq);
}

static void test_rope_selection(void) {
    int pairs[4];
    double imp[8] = {0.1, 5, 0.2, 4, 0.3, 3, 0.05, 2};
    CHECK_OK(rope_select_pairs(ROPE_SELECT_HIGH, 16, 8, NULL, pairs));
    CHECK(pairs[0] == 0 && pairs[3] == 3, "high keeps pairs 0..3");
    CHECK_OK(rope_select_pairs(ROPE_SELECT_LOW, 16, 8, NULL, pairs));
    CHECK(pairs[0] == 4 && pairs[3] == 7, "low keeps pairs 4..7");
    CHECK_OK(rope_select_pairs(ROPE_SELECT_UNIFORM, 16, 8, NULL, pairs));
    CHECK(pairs[0] == 0 && pairs[1] == 2 && pairs[3] == 6, "uniform keeps every second pair");
    CHECK_OK(rope_select_pairs(ROPE_SELECT_NORM, 16, 8, imp, pairs));
    CHECK(pairs[0] == 1 && pairs[1] == 3 && pairs[2] == 5 && pairs[3] == 7, "norm keeps the largest, ascending: %d %d %d %d",
          pairs[0], pairs[1], pairs[2], pairs[3]);
}

/* auto_gqa_layers: the layers kept as GQA are those with the largest error against the residual
 * stream, measured with o_proj fitted on the teacher's input; given gqa_layers are kept besides. */
static void test_auto_gqa_layers(Backend *be) {
    ModelConfig c = convert_teacher_config(2);
    c.num_hidden_layers = 3;
    Model *t = convert_make_teacher(be, c, SEQ, 17);
    ConvertOptions o = options(MLA_INIT_SVD, ROPE_SELECT_ROROPE, 4, 8, 2, 8, 0);
    o.latent_basis = LATENT_BASIS_ACTIVATIONS;
    o.output_fit = OUTPUT_FIT_TEACHER_INPUT;
    ConvertReport measured, rep;
    Model *student = NULL;
    if (!CHECK_OK(mla_convert(&student, t, &o, &measured))) return model_destroy(t);
    model_destroy(student);
    int order[3] = {0, 1, 2};
    for (int i = 0; i < 3; i++)
        for (int j = i + 1; j < 3; j++)
            if (measured.layers[order[j]].stream_error > measured.layers[order[i]].stream_error) {
                int tmp = order[i];
                order[i] = order[j];
                order[j] = tmp;
            }
    CHECK(measured.layers[order[0]].stream_error > measured.layers[order[1]].stream_error, "distinct errors: %.4g %.4g",
          measured.layers[order[0]].stream_error, measured.layers[order[1]].stream_error);

    o.output_fit = OUTPUT_FIT_STUDENT_INPUT;
    o.auto_gqa_layers = 1;
    if (CHECK_OK(mla_convert(&student, t, &o, &rep))) {
        for (int l = 0; l < 3; l++) {
            int gqa = l == order[0];
            CHECK(rep.layers[l].kind == (gqa ? ATTENTION_GQA : ATTENTION_MLA) && rep.layers[l].auto_gqa == gqa,
                  "auto 1: layer %d %s (errors %.4g %.4g %.4g)", l, gqa ? "kept as GQA" : "converted",
                  measured.layers[0].stream_error, measured.layers[1].stream_error, measured.layers[2].stream_error);
        }
        CHECK(rep.layers[order[0]].attn_rel_error == 0, "the GQA layer is the teacher's");
        CHECK(rep.kv_bytes_student == 2 * (2 * 2 * 8) + 2 * (2 * (4 + 2)), "KV bytes %lld", (long long)rep.kv_bytes_student);
        model_destroy(student);
    }
    /* The worst layer given by hand: the measurement picks the next. */
    o.n_gqa_layers = 1;
    o.gqa_layers[0] = order[0];
    if (CHECK_OK(mla_convert(&student, t, &o, &rep))) {
        CHECK(rep.layers[order[0]].kind == ATTENTION_GQA && !rep.layers[order[0]].auto_gqa &&
                  rep.layers[order[1]].kind == ATTENTION_GQA && rep.layers[order[1]].auto_gqa &&
                  rep.layers[order[2]].kind == ATTENTION_MLA,
              "given layer %d, auto picks %d", order[0], order[1]);
        model_destroy(student);
    }
    o.auto_gqa_layers = 2;
    CHECK(mla_convert(&student, t, &o, &rep) != STATUS_OK && strstr(error_message(), "auto_gqa_layers") &&
              strstr(error_message(), "would leave no MLA layer"),
          "auto_gqa_layers taking every layer is refused by name: %s", error_message());
    model_destroy(t);
}

int main(void) {
    Backend *be = test_cpu_backend(0);
    test_rope_selection();
    test_exact_cases(be);
    test_error_falls_with_rank(be);
    test_energy_hybrid_qlora(be);
    test_bad_options(be);
    test_auto_gqa_layers(be);
    backend_destroy(be);
    return test_finish("test_convert");
}
