/* AdamW against a hand-computed float64 step, and the global gradient-norm clip against a direct
 * float64 norm; both must give the same bits with 1 and 2 threads. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

/* Three AdamW steps computed in float64 from the definitions (Loshchilov & Hutter, decoupled). */
static void adamw_reference(double *p, const double *const *grads, int steps, int64_t n, double lr,
                            double b1, double b2, double eps, double wd) {
    double *m = test_alloc((size_t)n * sizeof(double)), *v = test_alloc((size_t)n * sizeof(double));
    for (int t = 1; t <= steps; t++) {
        for (int64_t i = 0; i < n; i++) {
            double g = grads[t - 1][i];
            m[i] = b1 * m[i] + (1 - b1) * g;
            v[i] = b2 * v[i] + (1 - b2) * g * g;
            double mhat = m[i] / (1 - pow(b1, t)), vhat = v[i] / (1 - pow(b2, t));
            p[i] -= lr * (mhat / (sqrt(vhat) + eps) + wd * p[i]);
        }
    }
    free(m);
    free(v);
}

static void test_adamw_against_reference(Backend *be) {
    const int64_t n = 1003; /* not a multiple of any vector width */
    const int steps = 3;
    AdamWConfig cfg = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};
    Tensor p, g, m, v;
    int64_t shape[1] = {n};
    CHECK_OK(be->alloc(be, &p, DT_F32, 1, shape));
    CHECK_OK(be->alloc(be, &g, DT_F32, 1, shape));
    CHECK_OK(be->alloc(be, &m, DT_F32, 1, shape));
    CHECK_OK(be->alloc(be, &v, DT_F32, 1, shape));
    fill_normal(tensor_f32(p), n, 1, 1.0f);
    double *p_ref = test_alloc((size_t)n * sizeof(double));
    copy_f32_to_f64(p_ref, tensor_f32(p), n);
    double *grads[3];
    for (int t = 0; t < steps; t++) {
        grads[t] = test_alloc((size_t)n * sizeof(double));
        fill_normal(tensor_f32(g), n, 10 + (uint64_t)t, 0.5f);
        copy_f32_to_f64(grads[t], tensor_f32(g), n);
        cfg.step = t + 1;
        CHECK_OK(be->ops.adamw_step(be, p, g, m, v, tensor_none(), cfg));
    }
    adamw_reference(p_ref, (const double *const *)grads, steps, n, cfg.lr, cfg.beta1, cfg.beta2,
                    cfg.eps, cfg.weight_decay);
    double err = max_abs_diff_f64(tensor_f32(p), p_ref, n);
    /* Each step moves a weight by about lr; float32 rounding of that is ~1e-9. */
    CHECK(err < 1e-6, "adamw 3 steps: max |p - p_ref| = %.3g", err);

    /* Decoupled decay: with a zero gradient and fresh moments the update is exactly -lr*wd*p. */
    float p0[4] = {1.0f, -2.0f, 0.5f, 0.0f}, zero[4] = {0};
    Tensor p4 = tensor_view(p0, DT_F32, 1, (int64_t[]){4}), z4 = tensor_view(zero, DT_F32, 1, (int64_t[]){4});
    float m4[4] = {0}, v4[4] = {0};
    AdamWConfig decay = {.lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.5f, .step = 1};
    CHECK_OK(be->ops.adamw_step(be, p4, z4, tensor_view(m4, DT_F32, 1, (int64_t[]){4}),
                                tensor_view(v4, DT_F32, 1, (int64_t[]){4}), tensor_none(), decay));
    CHECK(p0[0] == 1.0f - 0.1f * 0.5f * 1.0f && p0[1] == -2.0f - 0.1f * 0.5f * -2.0f && p0[3] == 0.0f,
          "adamw decoupled decay: got %.9g %.9g %.9g", p0[0], p0[1], p0[3]);

    /* Bias correction: at step 1 with wd 0 each weight moves by lr * g/(|g| + eps), i.e. ~lr*sign(g). */
    float p1[2] = {0.0f, 0.0f}, g1[2] = {3.0f, -1e-3f}, m1[2] = {0}, v1[2] = {0};
    AdamWConfig plain = {.lr = 0.01f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0, .step = 1};
    CHECK_OK(be->ops.adamw_step(be, tensor_view(p1, DT_F32, 1, (int64_t[]){2}),
                                tensor_view(g1, DT_F32, 1, (int64_t[]){2}),
                                tensor_view(m1, DT_F32, 1, (int64_t[]){2}),
                                tensor_view(v1, DT_F32, 1, (int64_t[]){2}), tensor_none(), plain));
    CHECK(fabs(p1[0] + 0.01) < 1e-7 && fabs(p1[1] - 0.01) < 1e-6,
          "adamw bias-corrected first step: got %.9g %.9g, expected -0.01 0.01", p1[0], p1[1]);

    AdamWConfig bad = cfg;
    bad.step = 0;
    CHECK_ERR(be->ops.adamw_step(be, p, g, m, v, tensor_none(), bad), "step must be >= 1");
    bad = cfg;
    bad.beta2 = 1.0f;
    CHECK_ERR(be->ops.adamw_step(be, p, g, m, v, tensor_none(), bad), "beta1 and beta2");
    Tensor short_m = m;
    short_m.shape[0] = n - 1;
    CHECK_ERR(be->ops.adamw_step(be, p, g, short_m, v, tensor_none(), cfg), "adamw_step: m has shape [1002]");

    for (int t = 0; t < steps; t++) free(grads[t]);
    free(p_ref);
    be->release(be, &p);
    be->release(be, &g);
    be->release(be, &m);
    be->release(be, &v);
}

static void test_grad_norm_clip(Backend *be) {
    int64_t sizes[3] = {7, 5000, 1};
    Tensor grads[3];
    double direct = 0;
    for (int i = 0; i < 3; i++) {
        CHECK_OK(be->alloc(be, &grads[i], DT_F32, 1, &sizes[i]));
        fill_normal(tensor_f32(grads[i]), sizes[i], 20 + (uint64_t)i, 1.0f);
        for (int64_t j = 0; j < sizes[i]; j++) direct += (double)tensor_f32(grads[i])[j] * tensor_f32(grads[i])[j];
    }
    direct = sqrt(direct);
    double norm = 0;
    CHECK_OK(grad_norm_clip(be, grads, 3, 0.0, &norm));
    CHECK(fabs(norm - direct) <= 1e-12 * direct, "grad norm %.17g vs direct %.17g", norm, direct);

    /* Clipping to max_norm leaves a norm of max_norm (to float rounding). */
    double max_norm = direct / 4;
    CHECK_OK(grad_norm_clip(be, grads, 3, max_norm, &norm));
    double after = 0;
    CHECK_OK(grad_norm_clip(be, grads, 3, 0.0, &after));
    CHECK(fabs(after - max_norm) < 1e-5 * max_norm, "clipped norm %.9g vs max_norm %.9g", after, max_norm);
    /* No clipping below the threshold. */
    double again = 0;
    CHECK_OK(grad_norm_clip(be, grads, 3, max_norm * 2, &again));
    CHECK(again == after, "a norm below max_norm is left alone: %.17g vs %.17g", again, after);

    tensor_f32(grads[1])[17] = NAN;
    CHECK_ERR(grad_norm_clip(be, grads, 3, 1.0, &norm), "NaN or Inf");
    for (int i = 0; i < 3; i++) be->release(be, &grads[i]);
}

/* adamw_step_multi is bitwise the scale op followed by adamw_step per parameter, with each
 * parameter's own decay flag and bf16 copy; sum_squares_multi is the per-tensor sums added in
 * order. Errors name the parameter. */
static void test_adamw_multi(Backend *be) {
    enum { P = 5 };
    int64_t sizes[P] = {7, 5000, 1, 0, 300};
    Tensor p[2][P], g[2][P], m[2][P], v[2][P], copy[2][P];
    for (int r = 0; r < 2; r++)
        for (int i = 0; i < P; i++) {
            Tensor *all[] = {&p[r][i], &g[r][i], &m[r][i], &v[r][i]};
            for (int k = 0; k < 4; k++) CHECK_OK(be->alloc(be, all[k], DT_F32, 1, &sizes[i]));
            CHECK_OK(be->alloc(be, &copy[r][i], DT_BF16, 1, &sizes[i]));
            fill_normal(tensor_f32(p[r][i]), sizes[i], 40 + (uint64_t)i, 1.0f);
            fill_normal(tensor_f32(g[r][i]), sizes[i], 50 + (uint64_t)i, 0.1f);
        }
    const float grad_scale = 0.37f;
    AdamWConfig cfg = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f, .step = 1};
    for (int step = 1; step <= 2; step++) {
        cfg.step = step;
        AdamWParam list[P];
        for (int i = 0; i < P; i++)
            list[i] = (AdamWParam){p[0][i], g[0][i], m[0][i], v[0][i], i % 2 ? copy[0][i] : tensor_none(), i != 2};
        CHECK_OK(be->ops.adamw_step_multi(be, list, P, cfg, grad_scale));
        for (int i = 0; i < P; i++) {
            AdamWConfig one = cfg;
            one.weight_decay = i != 2 ? cfg.weight_decay : 0.0f;
            if (step == 1) CHECK_OK(be->ops.scale(be, g[1][i], grad_scale)); /* then kept scaled */
            CHECK_OK(be->ops.adamw_step(be, p[1][i], g[1][i], m[1][i], v[1][i], i % 2 ? copy[1][i] : tensor_none(),
                                        one));
        }
    }
    for (int i = 0; i < P; i++) {
        size_t b = (size_t)sizes[i] * 4;
        CHECK(memcmp(p[0][i].data, p[1][i].data, b) == 0 && memcmp(m[0][i].data, m[1][i].data, b) == 0 &&
                  memcmp(v[0][i].data, v[1][i].data, b) == 0 && memcmp(copy[0][i].data, copy[1][i].data, b / 2) == 0,
              "adamw_step_multi == scale + adamw_step, bitwise: parameter %d (%lld values)", i, (long long)sizes[i]);
    }
    double multi = 0, sum = 0;
    CHECK_OK(be->ops.sum_squares_multi(be, &multi, p[0], P));
    for (int i = 0; i < P; i++) {
        double one = 0;
        if (sizes[i] > 0) CHECK_OK(be->ops.sum_squares(be, &one, p[0][i]));
        sum += one;
    }
    CHECK(memcmp(&multi, &sum, sizeof sum) == 0, "sum_squares_multi %.17g == per-tensor sums %.17g", multi, sum);

    AdamWParam list[P];
    for (int i = 0; i < P; i++) list[i] = (AdamWParam){p[0][i], g[0][i], m[0][i], v[0][i], tensor_none(), 1};
    CHECK_ERR(be->ops.adamw_step_multi(be, list, P, cfg, 0.0f), "grad_scale must be finite and > 0");
    CHECK_ERR(be->ops.adamw_step_multi(be, list, P, cfg, NAN), "grad_scale must be finite and > 0");
    list[4].grad = g[0][1];
    CHECK_ERR(be->ops.adamw_step_multi(be, list, P, cfg, 1.0f), "parameter 4: adamw_step_multi: grad");
    for (int r = 0; r < 2; r++)
        for (int i = 0; i < P; i++) {
            Tensor *all[] = {&p[r][i], &g[r][i], &m[r][i], &v[r][i], &copy[r][i]};
            for (int k = 0; k < 5; k++) be->release(be, all[k]);
        }
}

/* The same AdamW steps and norm with 1 and 2 threads give identical bits. */
static void test_thread_count_independence(void) {
    const int64_t n = 70001;
    float *out[2];
    double norms[2];
    for (int run = 0; run < 2; run++) {
        Backend *be = test_cpu_backend(run + 1);
        Tensor p, g, m, v;
        CHECK_OK(be->alloc(be, &p, DT_F32, 1, &n));
        CHECK_OK(be->alloc(be, &g, DT_F32, 1, &n));
        CHECK_OK(be->alloc(be, &m, DT_F32, 1, &n));
        CHECK_OK(be->alloc(be, &v, DT_F32, 1, &n));
        fill_normal(tensor_f32(p), n, 30, 1.0f);
        fill_normal(tensor_f32(g), n, 31, 1.0f);
        AdamWConfig cfg = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f, .step = 1};
        CHECK_OK(be->ops.adamw_step(be, p, g, m, v, tensor_none(), cfg));
        CHECK_OK(be->ops.sum_squares(be, &norms[run], p));
        out[run] = test_alloc((size_t)n * sizeof(float));
        memcpy(out[run], tensor_f32(p), (size_t)n * sizeof(float));
        be->release(be, &p);
        be->release(be, &g);
        be->release(be, &m);
        be->release(be, &v);
        backend_destroy(be);
    }
    CHECK(memcmp(out[0], out[1], (size_t)n * sizeof(float)) == 0, "adamw: 1 and 2 threads give the same bits");
    CHECK(memcmp(&norms[0], &norms[1], sizeof(double)) == 0, "sum_squares: 1 and 2 threads give the same bits (%.17g vs %.17g)", norms[0], norms[1]);
    free(out[0]);
    free(out[1]);
}

int main(void) {
    Backend *be = test_cpu_backend(0);
    CHECK_OK(backend_check_ops(be));
    test_adamw_against_reference(be);
    test_grad_norm_clip(be);
    test_adamw_multi(be);
    backend_destroy(be);
    test_thread_count_independence();

    Backend *none = NULL;
    BackendOptions opts = {0, 0};
    CHECK_ERR(backend_create(&none, "tpu", opts), "unknown backend");
    return test_finish("test_adamw");
}
