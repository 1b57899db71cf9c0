/* RoRoPE and the activation-aware latent: the rotations are orthogonal, a query that only attends
 * to itself needs no correction, keeping every slot (or every pair of an MQA teacher) reproduces
 * the teacher, the exportable choice keeps pairs DeepSeek's config can express, and the error
 * falls as the rank grows. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "harness.h"
#include "model/convert/convert.h"
#include "model/convert/rorope.h"
#include "model/model.h"
#include "convert_fixtures.h"
#include "model_fixtures.h"

enum { BATCH = 3, SEQ = 11 };

static ConvertOptions options(RopeSelect sel, LatentBasis basis, int64_t r, int64_t dn, int64_t dr, int64_t dv) {
    ConvertOptions o;
    memset(&o, 0, sizeof o);
    o.init = MLA_INIT_SVD;
    o.rope_select = sel;
    o.latent_basis = basis;
    o.dims = (MlaDims){.kv_lora_rank = r, .qk_nope_head_dim = dn, .qk_rope_head_dim = dr, .v_head_dim = dv};
    o.seed = 5;
    o.n_calib_seqs = BATCH;
    o.calib_seq = SEQ;
    return o;
}

/* Random host weights and inputs for rorope_fit. */
static float *random_matrix(int64_t n, uint64_t stream, float scale) {
    float *m = test_alloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) m[i] = scale * rng_normal(17, stream, (uint64_t)i);
    return m;
}

static void test_fit_identities(void) {
    int64_t D = 12, H = 6, K = 3, hd = 8, half = hd / 2, T = 7, B = 2;
    float *wq = random_matrix(H * hd * D, 1, 0.5f), *wk = random_matrix(K * hd * D, 2, 0.5f);
    float *a = random_matrix(B * T * D, 3, 1.0f), inv_freq[4] = {1.0f, 0.3f, 0.05f, 0.001f};
    GqaWeights g = {D, H, K, hd, wq, wk, NULL, NULL};
    RoropeFit f;
    double damage_seq = 0;
    if (CHECK_OK(rorope_fit(&g, inv_freq, a, B, T, B, &f))) {
        for (int64_t s = 0; s < half * K; s++) damage_seq += f.damage[s];
        double worst = 0;
        int descending = 1;
        for (int64_t i = 0; i < half; i++) {
            for (int64_t c = 0; c < K; c++)
                for (int64_t e = 0; e < K; e++) {
                    double dot = 0;
                    for (int64_t h = 0; h < K; h++) dot += f.R[(i * K + c) * K + h] * f.R[(i * K + e) * K + h];
                    worst = fmax(worst, fabs(dot - (c == e)));
                }
            for (int64_t c = 1; c < K; c++) descending &= f.energy[i * K + c] <= f.energy[i * K + c - 1];
        }
        CHECK(worst < 1e-12, "every pair's rotation is orthogonal (|R R^T - I| = %.3g)", worst);
        CHECK(descending, "each pair's first rotated components hold the most key energy");
        /* Rotated energies add up to the teacher's: the rotation only moves energy between heads. */
        double rotated = 0, plain = 0;
        for (int64_t s = 0; s < half * K; s++) rotated += f.energy[s];
        for (int64_t n = 0; n < B * T; n++)
            for (int64_t row = 0; row < K * hd; row++) {
                double k = 0;
                for (int64_t d = 0; d < D; d++) k += (double)a[n * D + d] * wk[row * D + d];
                plain += k * k;
            }
        plain /= (double)(B * T);
        CHECK(fabs(rotated - plain) < 1e-9 * plain, "rotation keeps the keys' energy (%.12g vs %.12g)", rotated, plain);
        int pair[8], comp[8];
        CHECK_OK(rorope_choose_slots(&f, 4, 1, pair, comp));
        CHECK(pair[0] == 0 && pair[1] == 1 && pair[3] == 3, "step 1 keeps pairs 0..3");
        CHECK_ERR(rorope_choose_slots(&f, 4, 2, pair, comp), "exceed the teacher's 4 frequency pairs");
        CHECK_OK(rorope_choose_slots(&f, 5, 0, pair, comp));
        int ascending = 1;
        for (int j = 1; j < 5; j++) ascending &= pair[j] * K + comp[j] > pair[j - 1] * K + comp[j - 1];
        CHECK(ascending, "free choice lists distinct slots in order");
        rorope_fit_free(&f);
    }
    /* One token per sequence: every query attends only to itself (distance 0, no rotation), so
     * dropping RoPE costs nothing and the fitted map is the identity. */
    if (CHECK_OK(rorope_fit(&g, inv_freq, a, B * T, 1, B * T, &f))) {
        double worst = 0, damage = 0;
        for (int64_t e = 0; e < H * half * K; e++)
            for (int j = 0; j < 4; j++) worst = fmax(worst, fabs(f.M[e * 4 + j] - (j == 0 || j == 3)));
        for (int64_t s = 0; s < half * K; s++) damage = fmax(damage, fabs(f.damage[s]));
        CHECK(worst < 1e-6, "self-attention only: the fitted maps are the identity (max deviation %.3g)", worst);
        CHECK(damage < 1e-5 * damage_seq, "self-attention only: losing RoPE costs nothing (%.3g, against %.3g over %lld "
              "tokens)", damage, damage_seq, (long long)T);
        rorope_fit_free(&f);
    }
    free(wq);
    free(wk);
    free(a);
}

static void test_exact_cases(Backend *be) {
    ConvertReport rep;
    /* Every slot kept: the rope key holds all K*hd key dims (rotated), the latent is V. */
    Model *t = convert_make_teacher(be, convert_teacher_config(2), SEQ, 21);
    for (int basis = 0; basis < 2; basis++) {
        ConvertOptions o = options(ROPE_SELECT_ROROPE_FREE, basis, 16, 8, 16, 8);
        double err = convert_and_compare(be, t, &o, &rep);
        CHECK(err < 1e-5, "rorope_free with every slot kept, latent from %s: logits rel error %.3g",
              basis ? "activations" : "weights", err);
    }
    model_destroy(t);
    /* MQA teacher, all pairs: the exportable choice (step 1) is exact too, for either basis. */
    t = convert_make_teacher(be, convert_teacher_config(1), SEQ, 22);
    for (int basis = 0; basis < 2; basis++) {
        ConvertOptions o = options(ROPE_SELECT_ROROPE, basis, 8, 8, 8, 8);
        double err = convert_and_compare(be, t, &o, &rep);
        CHECK(err < 1e-5, "rorope on an MQA teacher with every pair, latent from %s: logits rel error %.3g",
              basis ? "activations" : "weights", err);
    }
    /* The activation basis with the teacher's own pairs (no rotation) is exact at full rank too. */
    ConvertOptions o = options(ROPE_SELECT_HIGH, LATENT_BASIS_ACTIVATIONS, 8, 8, 8, 8);
    double err = convert_and_compare(be, t, &o, &rep);
    CHECK(err < 1e-5, "high pairs, latent from activations, MQA, full rank: logits rel error %.3g", err);
    model_destroy(t);
}

static void test_error_falls_with_rank(Backend *be) {
    Model *t = convert_make_teacher(be, convert_teacher_config(2), SEQ, 23);
    RopeSelect sels[3] = {ROPE_SELECT_ROROPE, ROPE_SELECT_ROROPE_FREE, ROPE_SELECT_HIGH};
    const char *names[3] = {"rorope", "rorope_free", "high"};
    int64_t ranks[4] = {2, 6, 12, 28}; /* 28 = (K*hd - dr) + K*hd: full */
    for (int s = 0; s < 3; s++) {
        double errs[4], prev = INFINITY;
        int falls = 1;
        for (int i = 0; i < 4; i++) {
            ConvertOptions o = options(sels[s], LATENT_BASIS_ACTIVATIONS, ranks[i], 8, 4, 8);
            ConvertReport rep;
            Model *student = NULL;
            errs[i] = INFINITY;
            if (CHECK_OK(mla_convert(&student, t, &o, &rep))) errs[i] = convert_total_error(&rep);
            falls &= errs[i] < prev;
            prev = errs[i];
            model_destroy(student);
        }
        CHECK(falls, "%s, latent from activations: error falls with r: %.4g %.4g %.4g %.4g", names[s], errs[0], errs[1],
              errs[2], errs[3]);
    }
    /* The exportable choice: pairs 0, s, 2s, ... with one s in every layer. */
    ConvertOptions o = options(ROPE_SELECT_ROROPE, LATENT_BASIS_ACTIVATIONS, 12, 8, 4, 8);
    ConvertReport rep;
    Model *student = NULL;
    if (CHECK_OK(mla_convert(&student, t, &o, &rep))) {
        int step = rep.layers[0].rope_pairs[1], same = step > 0;
        for (int l = 0; l < rep.n_layers; l++)
            same &= rep.layers[l].rope_pairs[0] == 0 && rep.layers[l].rope_pairs[1] == step;
        CHECK(same, "every layer keeps pairs 0, %d", step);
    }
    model_destroy(student);
    /* Ranks by energy are the teacher-pair methods'; with rorope the rank is given. */
    o.energy = 0.9;
    student = NULL;
    CHECK_ERR(mla_convert(&student, t, &o, &rep), "ranks by energy need rope_select high, low, uniform or norm");
    CHECK(student == NULL, "a refused conversion leaves no student");
    model_destroy(t);
}

/* The report names every layer whose attention-output error is above 1, and only those. */
static void test_report_warning(void) {
    ConvertReport rep;
    memset(&rep, 0, sizeof rep);
    rep.n_layers = 4;
    double errs[4] = {0.3, 1.5, 0.99, 2.0};
    for (int l = 0; l < 4; l++) rep.layers[l] = (LayerReport){.kind = ATTENTION_MLA, .attn_rel_error = errs[l]};
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    convert_report_print(&rep, f);
    fclose(f);
    CHECK(strstr(text, "warning: 2 layers (1, 3) have an attention-output error above 1") != NULL,
          "the report warns of layers 1 and 3: %s", text);
    free(text);
    rep.layers[1].attn_rel_error = rep.layers[3].attn_rel_error = 0.5;
    f = open_memstream(&text, &len);
    convert_report_print(&rep, f);
    fclose(f);
    CHECK(strstr(text, "warning") == NULL, "no warning when every layer is below 1");
    free(text);
}

int main(void) {
    Backend *be = test_cpu_backend(0);
    test_fit_identities();
    test_report_warning();
    test_exact_cases(be);
    test_error_falls_with_rank(be);
    backend_destroy(be);
    return test_finish("test_rorope");
}
