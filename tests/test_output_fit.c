/* The o_proj fit after conversion: the ridge solution is stationary for its objective, exact data
 * gives back the converted weights, the fit never raises a layer's error on what it was fitted to,
 * and on a one-layer model fitting on the student's stream is fitting on the teacher's input. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "model/convert/convert.h"
#include "model/convert/output_fit.h"
#include "model/model.h"
#include "convert_fixtures.h"
#include "model_fixtures.h"

enum { N = 300, F = 12, D = 7, BATCH = 2, SEQ = 9 };

/* mean_n ||Y_n - W Z_n||^2 */
static double fit_error(const float *Z, const float *Y, const float *W) {
    double s = 0;
    for (int n = 0; n < N; n++)
        for (int d = 0; d < D; d++) {
            double r = Y[n * D + d];
            for (int f = 0; f < F; f++) r -= (double)W[d * F + f] * Z[n * F + f];
            s += r * r;
        }
    return s / N;
}

static void test_ridge_solution(void) {
    float *Z = test_alloc(N * F * 4), *Y = test_alloc(N * D * 4), *Wt = test_alloc(D * F * 4);
    float *W0 = test_alloc(D * F * 4), *W = test_alloc(D * F * 4), *noise = test_alloc(N * D * 4);
    fill_normal(Z, N * F, 1, 1.0f);
    fill_normal(Wt, D * F, 2, 0.5f);
    fill_normal(W0, D * F, 3, 0.5f);
    fill_normal(noise, N * D, 4, 0.1f);
    for (int n = 0; n < N; n++)
        for (int d = 0; d < D; d++) {
            double y = noise[n * D + d];
            for (int f = 0; f < F; f++) y += (double)Wt[d * F + f] * Z[n * F + f];
            Y[n * D + d] = (float)y;
        }
    double mean_sq = 0;
    for (int i = 0; i < N * F; i++) mean_sq += (double)Z[i] * Z[i];
    mean_sq /= N * F;
    const double ridges[] = {1e-3, 0.3, 10};
    for (int k = 0; k < 3; k++) {
        memcpy(W, W0, D * F * 4);
        CHECK_OK(output_projection_fit(Z, Y, N, F, D, ridges[k], W));
        /* Stationarity: -(2/N) sum_n (Y_n - W Z_n) Z_n^T + 2 lambda (W - W0) = 0. */
        double lambda = ridges[k] * mean_sq, worst = 0, scale = 0;
        for (int d = 0; d < D; d++)
            for (int f = 0; f < F; f++) {
                double g = 0;
                for (int n = 0; n < N; n++) {
                    double r = Y[n * D + d];
                    for (int j = 0; j < F; j++) r -= (double)W[d * F + j] * Z[n * F + j];
                    g -= r * Z[n * F + f] / N;
                    scale += fabs(r * Z[n * F + f]) / N;
                }
                g += lambda * ((double)W[d * F + f] - W0[d * F + f]);
                worst = fmax(worst, fabs(g));
            }
        scale /= D * F;
        CHECK(worst < 1e-4 * scale, "ridge %g: the gradient of the objective at the fit is %.3g (scale %.3g)", ridges[k],
              worst, scale);
        CHECK(fit_error(Z, Y, W) <= fit_error(Z, Y, W0), "ridge %g: the fit's error %.4g above the start's %.4g", ridges[k],
              fit_error(Z, Y, W), fit_error(Z, Y, W0));
    }
    /* A large ridge keeps the start; a small one finds the generating weights up to the noise. */
    memcpy(W, W0, D * F * 4);
    CHECK_OK(output_projection_fit(Z, Y, N, F, D, 1e9, W));
    CHECK(rel_error_f32(W, W0, D * F) < 1e-6, "ridge 1e9: %.3g from the start", rel_error_f32(W, W0, D * F));
    memcpy(W, W0, D * F * 4);
    CHECK_OK(output_projection_fit(Z, Y, N, F, D, 1e-6, W));
    CHECK(rel_error_f32(W, Wt, D * F) < 0.05, "ridge 1e-6: %.3g from the generating weights", rel_error_f32(W, Wt, D * F));

    /* Data the start already explains exactly: the fit keeps it. */
    for (int n = 0; n < N; n++)
        for (int d = 0; d < D; d++) {
            double y = 0;
            for (int f = 0; f < F; f++) y += (double)W0[d * F + f] * Z[n * F + f];
            Y[n * D + d] = (float)y;
        }
    memcpy(W, W0, D * F * 4);
    CHECK_OK(output_projection_fit(Z, Y, N, F, D, 0.3, W));
    CHECK(rel_error_f32(W, W0, D * F) < 1e-6, "exact data: %.3g from the start", rel_error_f32(W, W0, D * F));

    /* Refused by name. */
    CHECK(output_projection_fit(Z, Y, N, F, D, 0, W) != STATUS_OK, "a zero ridge is refused");
    CHECK(strstr(error_message(), "ridge") != NULL, "the message names the ridge: %s", error_message());
    Z[5] = NAN;
    CHECK(output_projection_fit(Z, Y, N, F, D, 0.3, W) != STATUS_OK, "a NaN in the data is refused");
    CHECK(strstr(error_message(), "NaN") != NULL, "the message names the NaN: %s", error_message());
    free(Z), free(Y), free(Wt), free(W0), free(W), free(noise);
}

static ConvertOptions lossy_options(OutputFit fit) {
    ConvertOptions o;
    memset(&o, 0, sizeof o);
    o.init = MLA_INIT_SVD;
    o.rope_select = ROPE_SELECT_ROROPE;
    o.latent_basis = LATENT_BASIS_ACTIVATIONS;
    o.output_fit = fit;
    o.dims = (MlaDims){.kv_lora_rank = 6, .qk_nope_head_dim = 8, .qk_rope_head_dim = 2, .v_head_dim = 8};
    o.seed = 5;
    o.n_calib_seqs = BATCH;
    o.calib_seq = SEQ;
    return o;
}

static void test_conversion(Backend *be) {
    ConvertReport none, teacher_in, own;
    /* Two layers: fitted to the teacher's input, no layer's error (measured on that input) rises. */
    Model *t = convert_make_teacher(be, convert_teacher_config(2), SEQ, 21);
    ConvertOptions o = lossy_options(OUTPUT_FIT_NONE);
    double e_none = convert_and_compare(be, t, &o, &none);
    o.output_fit = OUTPUT_FIT_TEACHER_INPUT;
    double e_fit = convert_and_compare(be, t, &o, &teacher_in);
    for (int l = 0; l < none.n_layers; l++)
        CHECK(teacher_in.layers[l].attn_rel_error <= none.layers[l].attn_rel_error + 1e-6,
              "layer %d: error %.4g after the fit, %.4g before", l, teacher_in.layers[l].attn_rel_error,
              none.layers[l].attn_rel_error);
    CHECK(convert_total_error(&teacher_in) < convert_total_error(&none), "the fit lowers the total error: %.4g vs %.4g",
          convert_total_error(&teacher_in), convert_total_error(&none));
    CHECK(isfinite(e_none) && isfinite(e_fit), "both students run");
    CHECK(strstr(teacher_in.method, "teacher's input") && !strstr(none.method, "o_proj"), "the report names the fit: %s",
          teacher_in.method);
    model_destroy(t);

    /* One layer: the student's stream into it is the teacher's, so both fits give the same student. */
    ModelConfig c = convert_teacher_config(2);
    c.num_hidden_layers = 1;
    t = convert_make_teacher(be, c, SEQ, 22);
    o = lossy_options(OUTPUT_FIT_TEACHER_INPUT);
    double a = convert_and_compare(be, t, &o, &teacher_in);
    o.output_fit = OUTPUT_FIT_STUDENT_INPUT;
    double b = convert_and_compare(be, t, &o, &own);
    CHECK(a == b && teacher_in.layers[0].attn_rel_error == own.layers[0].attn_rel_error,
          "one layer: logits error %.6g vs %.6g, attention error %.6g vs %.6g", a, b, teacher_in.layers[0].attn_rel_error,
          own.layers[0].attn_rel_error);
    model_destroy(t);

    /* A conversion with nothing lost stays exact through the fit: K = 1, full rank, every pair kept. */
    t = convert_make_teacher(be, convert_teacher_config(1), SEQ, 23);
    o = lossy_options(OUTPUT_FIT_STUDENT_INPUT);
    o.rope_select = ROPE_SELECT_HIGH;
    o.dims = (MlaDims){.kv_lora_rank = 8, .qk_nope_head_dim = 0, .qk_rope_head_dim = 8, .v_head_dim = 8};
    double exact = convert_and_compare(be, t, &o, &own);
    CHECK(exact < 1e-5, "full rank through the fit: logits rel error %.3g", exact);
    model_destroy(t);
}

int main(void) {
    Backend *be = test_cpu_backend(0);
    test_ridge_solution();
    test_conversion(be);
    backend_destroy(be);
    return test_finish("test_output_fit");
}
