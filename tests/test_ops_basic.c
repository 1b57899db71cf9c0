/* Tests of the CPU embedding, RMSNorm, linear and SwiGLU ops: forward against float64 references,
 * backward against central finite differences, accumulation, thread-count independence, errors. */
#include "harness.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static Backend *be;

/* Step of the central differences: the float64 losses below are O(10), so the rounding error of
 * a difference quotient is ~1e-15 / 1e-6 and its truncation error ~1e-12. */
static const double FD_EPS = 1e-6;

static Tensor f32_2d(float *p, int64_t rows, int64_t cols) {
    return tensor_view(p, DT_F32, 2, (int64_t[]){rows, cols});
}
static Tensor f32_1d(float *p, int64_t n) { return tensor_view(p, DT_F32, 1, (int64_t[]){n}); }
static Tensor i32_1d(int32_t *p, int64_t n) { return tensor_view(p, DT_I32, 1, (int64_t[]){n}); }

static float *new_f32(int64_t n) { return test_alloc((size_t)n * sizeof(float)); }
static double *new_f64(int64_t n) { return test_alloc((size_t)n * sizeof(double)); }

static double *f64_copy_of(const float *src, int64_t n) {
    double *d = new_f64(n);
    copy_f32_to_f64(d, src, n);
    return d;
}

/* Relative error of a float32 gradient against central differences of f with respect to x. */
static double fd_rel_error(double (*f)(void *), void *ctx, double *x, int64_t n, const float *grad) {
    double *numeric = new_f64(n);
    finite_difference(f, ctx, x, n, FD_EPS, numeric);
    double err = rel_error_f64(grad, numeric, n);
    free(numeric);
    return err;
}

static int bitwise_equal(const float *a, const float *b, int64_t n) {
    return memcmp(a, b, (size_t)n * sizeof(float)) == 0;
}

/* ---- embedding ------------------------------------------------------------------------------ */

typedef struct {
    int64_t N, V, D;
    const int32_t *ids;
    double *table, *dout;   /* (V, D), (N, D) */
} EmbeddingRef;

static double embedding_loss(void *ctx) {
    const EmbeddingRef *r = ctx;
    double s = 0;
    for (int64_t n = 0; n < r->N; n++)
        for (int64_t d = 0; d < r->D; d++) s += r->dout[n * r->D + d] * r->table[r->ids[n] * r->D + d];
    return s;
}

static void test_embedding(void) {
    enum { N = 9, V = 5, D = 13 };
    int32_t ids[N] = {3, 0, 4, 3, 3, 1, 0, 4, 2};   /* repeats: the backward must sum them */
    float *table = new_f32(V * D), *out = new_f32(N * D), *dout = new_f32(N * D);
    float *dtable = new_f32(V * D), *dtable2 = new_f32(V * D);
    fill_normal(table, V * D, 1, 1.0f);
    fill_normal(dout, N * D, 2, 1.0f);

    CHECK_OK(be->ops.embedding_forward(be, f32_2d(out, N, D), i32_1d(ids, N), f32_2d(table, V, D)));
    int rows_ok = 1;
    for (int n = 0; n < N; n++) rows_ok &= bitwise_equal(out + n * D, table + ids[n] * D, D);
    CHECK(rows_ok, "embedding forward copies the table rows exactly");

    CHECK_OK(be->ops.embedding_backward(be, f32_2d(dtable, V, D), f32_2d(dout, N, D), i32_1d(ids, N)));
    EmbeddingRef ref = {N, V, D, ids, f64_copy_of(table, V * D), f64_copy_of(dout, N * D)};
    double err = fd_rel_error(embedding_loss, &ref, ref.table, V * D, dtable);
    CHECK(err < 1e-6, "embedding backward dtable vs finite differences: rel error %.3g", err);

    /* A second call accumulates: twice the gradient. */
    memcpy(dtable2, dtable, V * D * sizeof(float));
    CHECK_OK(be->ops.embedding_backward(be, f32_2d(dtable2, V, D), f32_2d(dout, N, D), i32_1d(ids, N)));
    for (int i = 0; i < V * D; i++) dtable[i] *= 2;
    err = rel_error_f32(dtable2, dtable, V * D);
    CHECK(err < 1e-6, "embedding backward accumulates: rel error against 2x %.3g", err);

    /* One token. */
    int32_t one[1] = {V - 1};
    CHECK_OK(be->ops.embedding_forward(be, f32_2d(out, 1, D), i32_1d(one, 1), f32_2d(table, V, D)));
    CHECK(bitwise_equal(out, table + (V - 1) * D, D), "embedding forward, one token");

    /* Errors. */
    int32_t bad[N] = {3, 0, 5, 1, 1, 1, 1, 1, 1};
    CHECK_ERR(be->ops.embedding_forward(be, f32_2d(out, N, D), i32_1d(bad, N), f32_2d(table, V, D)),
              "ids[2] = 5");
    bad[2] = 0;
    bad[7] = -1;
    CHECK_ERR(be->ops.embedding_backward(be, f32_2d(dtable, V, D), f32_2d(dout, N, D), i32_1d(bad, N)),
              "embedding_backward: ids[7] = -1");
    CHECK_ERR(be->ops.embedding_forward(be, f32_2d(out, N, D + 1), i32_1d(ids, N), f32_2d(table, V, D)),
              "embedding_forward: out has shape [9, 14]");
    CHECK_ERR(be->ops.embedding_forward(be, f32_2d(out, N, D), tensor_view(ids, DT_F32, 1, (int64_t[]){N}),
                                        f32_2d(table, V, D)),
              "ids has dtype f32");
    CHECK_ERR(be->ops.embedding_backward(be, f32_2d(dtable, V, D), f32_2d(dout, N - 1, D), i32_1d(ids, N)),
              "embedding_backward: dout has shape");

    free(table), free(out), free(dout), free(dtable), free(dtable2), free(ref.table), free(ref.dout);
}

/* ---- RMSNorm -------------------------------------------------------------------------------- */

typedef struct {
    int64_t N, D;
    double eps;
    double *x, *w, *dy;     /* (N, D), (D), (N, D) */
} RmsnormRef;

static void rmsnorm_reference(const RmsnormRef *r, double *y, double *rstd) {
    for (int64_t n = 0; n < r->N; n++) {
        double ss = 0;
        for (int64_t d = 0; d < r->D; d++) ss += r->x[n * r->D + d] * r->x[n * r->D + d];
        double rs = 1.0 / sqrt(ss / (double)r->D + r->eps);
        if (rstd) rstd[n] = rs;
        for (int64_t d = 0; d < r->D; d++) y[n * r->D + d] = r->x[n * r->D + d] * rs * r->w[d];
    }
}

static double rmsnorm_loss(void *ctx) {
    const RmsnormRef *r = ctx;
    double *y = new_f64(r->N * r->D);
    rmsnorm_reference(r, y, NULL);
    double s = dot_f64(r->dy, y, r->N * r->D);
    free(y);
    return s;
}

static void check_rmsnorm(int64_t N, int64_t D) {
    const float eps = 1e-5f;
    float *x = new_f32(N * D), *w = new_f32(D), *y = new_f32(N * D), *rstd = new_f32(N);
    float *dy = new_f32(N * D), *dx = new_f32(N * D), *dw = new_f32(D), *dx2 = new_f32(N * D);
    fill_normal(x, N * D, 10, 1.0f);
    fill_normal(w, D, 11, 0.2f);
    for (int64_t d = 0; d < D; d++) w[d] += 1.0f;
    fill_normal(dy, N * D, 12, 1.0f);

    RmsnormRef ref = {N, D, eps, f64_copy_of(x, N * D), f64_copy_of(w, D), f64_copy_of(dy, N * D)};
    double *y_ref = new_f64(N * D), *rstd_ref = new_f64(N);
    rmsnorm_reference(&ref, y_ref, rstd_ref);

    CHECK_OK(be->ops.rmsnorm_forward(be, f32_2d(y, N, D), f32_1d(rstd, N), f32_2d(x, N, D), f32_1d(w, D), eps));
    double err_y = rel_error_f64(y, y_ref, N * D), err_r = rel_error_f64(rstd, rstd_ref, N);
    CHECK(err_y < 1e-6, "rmsnorm forward y [%lld, %lld]: rel error %.3g", (long long)N, (long long)D, err_y);
    CHECK(err_r < 1e-6, "rmsnorm forward rstd [%lld]: rel error %.3g", (long long)N, err_r);

    CHECK_OK(be->ops.rmsnorm_backward(be, f32_2d(dx, N, D), f32_1d(dw, D), f32_2d(dy, N, D), f32_2d(x, N, D),
                                      f32_1d(w, D), f32_1d(rstd, N)));
    double err_dx = fd_rel_error(rmsnorm_loss, &ref, ref.x, N * D, dx);
    double err_dw = fd_rel_error(rmsnorm_loss, &ref, ref.w, D, dw);
    CHECK(err_dx < 1e-4, "rmsnorm backward dx [%lld, %lld] vs finite differences: rel error %.3g", (long long)N,
          (long long)D, err_dx);
    CHECK(err_dw < 1e-4, "rmsnorm backward dw [%lld] vs finite differences: rel error %.3g", (long long)D, err_dw);

    /* dw accumulates; an absent dw leaves dx as it was. */
    float *dw_twice = new_f32(D);
    for (int64_t d = 0; d < D; d++) dw_twice[d] = 2 * dw[d];
    CHECK_OK(be->ops.rmsnorm_backward(be, f32_2d(dx2, N, D), f32_1d(dw, D), f32_2d(dy, N, D), f32_2d(x, N, D),
                                      f32_1d(w, D), f32_1d(rstd, N)));
    double err_acc = rel_error_f32(dw, dw_twice, D);
    CHECK(err_acc < 1e-6, "rmsnorm backward accumulates dw: rel error against 2x %.3g", err_acc);
    memset(dx2, 0, (size_t)(N * D) * sizeof(float));
    CHECK_OK(be->ops.rmsnorm_backward(be, f32_2d(dx2, N, D), tensor_none(), f32_2d(dy, N, D), f32_2d(x, N, D),
                                      f32_1d(w, D), f32_1d(rstd, N)));
    CHECK(bitwise_equal(dx, dx2, N * D), "rmsnorm backward without dw gives the same dx");

    /* With the residual branch's gradient: bitwise the backward then the add, dw the same. */
    float *dres = new_f32(N * D), *dx3 = new_f32(N * D), *dw3 = new_f32(D), *dw4 = new_f32(D);
    fill_normal(dres, N * D, 13, 1.0f);
    CHECK_OK(be->ops.rmsnorm_residual_backward(be, f32_2d(dx3, N, D), f32_1d(dw3, D), f32_2d(dy, N, D),
                                               f32_2d(x, N, D), f32_1d(w, D), f32_1d(rstd, N), f32_2d(dres, N, D)));
    CHECK_OK(be->ops.rmsnorm_backward(be, f32_2d(dx2, N, D), f32_1d(dw4, D), f32_2d(dy, N, D), f32_2d(x, N, D),
                                      f32_1d(w, D), f32_1d(rstd, N)));
    CHECK_OK(be->ops.accumulate(be, f32_2d(dx2, N, D), f32_2d(dres, N, D)));
    CHECK(bitwise_equal(dx3, dx2, N * D) && bitwise_equal(dw3, dw4, D),
          "rmsnorm_residual_backward: bitwise rmsnorm_backward then accumulate");
    CHECK_ERR(be->ops.rmsnorm_residual_backward(be, f32_2d(dres, N, D), tensor_none(), f32_2d(dy, N, D),
                                                f32_2d(x, N, D), f32_1d(w, D), f32_1d(rstd, N), f32_2d(dres, N, D)),
              "dx and dres must be different memory");
    CHECK_ERR(be->ops.rmsnorm_residual_backward(be, f32_2d(dx3, N, D), tensor_none(), f32_2d(dy, N, D),
                                                f32_2d(x, N, D), f32_1d(w, D), f32_1d(rstd, N), f32_1d(dres, N)),
              "rmsnorm_residual_backward: dres has shape");
    free(dres), free(dx3), free(dw3), free(dw4);

    free(x), free(w), free(y), free(rstd), free(dy), free(dx), free(dw), free(dx2), free(dw_twice);
    free(ref.x), free(ref.w), free(ref.dy), free(y_ref), free(rstd_ref);
}

static void test_rmsnorm(void) {
    check_rmsnorm(5, 13);
    check_rmsnorm(1, 7);
    check_rmsnorm(3, 130);   /* more than one column block */

    enum { N = 4, D = 6 };
    float x[N * D] = {0}, w[D] = {0}, y[N * D], rstd[N], dx[N * D], dw[D];
    CHECK_ERR(be->ops.rmsnorm_forward(be, f32_2d(y, N, D), f32_1d(rstd, N), f32_2d(x, N, D), f32_1d(w, D - 1),
                                      1e-5f),
              "rmsnorm_forward: w has shape [5], expected [6]");
    CHECK_ERR(be->ops.rmsnorm_forward(be, f32_2d(y, N, D), f32_1d(rstd, N + 1), f32_2d(x, N, D), f32_1d(w, D),
                                      1e-5f),
              "rmsnorm_forward: rstd has shape");
    CHECK_ERR(be->ops.rmsnorm_backward(be, tensor_none(), f32_1d(dw, D), f32_2d(y, N, D), f32_2d(x, N, D),
                                       f32_1d(w, D), f32_1d(rstd, N)),
              "rmsnorm_backward: dx is missing");
    CHECK_ERR(be->ops.rmsnorm_backward(be, f32_2d(dx, N, D), f32_1d(dw, D + 1), f32_2d(y, N, D), f32_2d(x, N, D),
                                       f32_1d(w, D), f32_1d(rstd, N)),
              "rmsnorm_backward: dw has shape");
}

/* ---- linear --------------------------------------------------------------------------------- */

typedef struct {
    int64_t N, I, O;
    double *x, *w, *b, *dy;   /* (N, I), (O, I), (O) or NULL, (N, O) */
} LinearRef;

static void linear_reference(const LinearRef *r, double *y) {
    for (int64_t n = 0; n < r->N; n++)
        for (int64_t o = 0; o < r->O; o++) {
            double s = r->b ? r->b[o] : 0;
            for (int64_t i = 0; i < r->I; i++) s += r->x[n * r->I + i] * r->w[o * r->I + i];
            y[n * r->O + o] = s;
        }
}

static double linear_loss(void *ctx) {
    const LinearRef *r = ctx;
    double *y = new_f64(r->N * r->O);
    linear_reference(r, y);
    double s = dot_f64(r->dy, y, r->N * r->O);
    free(y);
    return s;
}

static void check_linear(int64_t N, int64_t I, int64_t O, int with_bias) {
    float *x = new_f32(N * I), *w = new_f32(O * I), *b = new_f32(O), *y = new_f32(N * O), *dy = new_f32(N * O);
    float *dx = new_f32(N * I), *dw = new_f32(O * I), *db = new_f32(O);
    fill_normal(x, N * I, 20, 1.0f);
    fill_normal(w, O * I, 21, 0.5f);
    fill_normal(b, O, 22, 1.0f);
    fill_normal(dy, N * O, 23, 1.0f);
    Tensor tb = with_bias ? f32_1d(b, O) : tensor_none();
    Tensor tdb = with_bias ? f32_1d(db, O) : tensor_none();

    LinearRef ref = {N, I, O, f64_copy_of(x, N * I), f64_copy_of(w, O * I), with_bias ? f64_copy_of(b, O) : NULL,
                     f64_copy_of(dy, N * O)};
    double *y_ref = new_f64(N * O);
    linear_reference(&ref, y_ref);
    CHECK_OK(be->ops.linear_forward(be, f32_2d(y, N, O), f32_2d(x, N, I), f32_2d(w, O, I), tb));
    double err = rel_error_f64(y, y_ref, N * O);
    CHECK(err < 1e-6, "linear forward N=%lld I=%lld O=%lld bias=%d: rel error %.3g", (long long)N, (long long)I,
          (long long)O, with_bias, err);

    CHECK_OK(be->ops.linear_backward(be, f32_2d(dx, N, I), f32_2d(dw, O, I), tdb, f32_2d(dy, N, O),
                                     f32_2d(x, N, I), f32_2d(w, O, I)));
    double err_dx = fd_rel_error(linear_loss, &ref, ref.x, N * I, dx);
    double err_dw = fd_rel_error(linear_loss, &ref, ref.w, O * I, dw);
    CHECK(err_dx < 1e-4, "linear backward dx N=%lld I=%lld O=%lld: rel error %.3g", (long long)N, (long long)I,
          (long long)O, err_dx);
    CHECK(err_dw < 1e-4, "linear backward dw N=%lld I=%lld O=%lld: rel error %.3g", (long long)N, (long long)I,
          (long long)O, err_dw);
    if (with_bias) {
        double err_db = fd_rel_error(linear_loss, &ref, ref.b, O, db);
        CHECK(err_db < 1e-4, "linear backward db O=%lld: rel error %.3g", (long long)O, err_db);
    }

    /* Without dx, dw and db still accumulate, to twice the gradient. */
    float *dw_twice = new_f32(O * I), *db_twice = new_f32(O);
    for (int64_t i = 0; i < O * I; i++) dw_twice[i] = 2 * dw[i];
    for (int64_t o = 0; o < O; o++) db_twice[o] = 2 * db[o];
    CHECK_OK(be->ops.linear_backward(be, tensor_none(), f32_2d(dw, O, I), tdb, f32_2d(dy, N, O), f32_2d(x, N, I),
                                     f32_2d(w, O, I)));
    double err_acc = rel_error_f32(dw, dw_twice, O * I);
    CHECK(err_acc < 1e-6, "linear backward accumulates dw: rel error against 2x %.3g", err_acc);
    if (with_bias) {
        err_acc = rel_error_f32(db, db_twice, O);
        CHECK(err_acc < 1e-6, "linear backward accumulates db: rel error against 2x %.3g", err_acc);
    }
    /* dx alone. */
    float *dx_alone = new_f32(N * I);
    CHECK_OK(be->ops.linear_backward(be, f32_2d(dx_alone, N, I), tensor_none(), tensor_none(), f32_2d(dy, N, O),
                                     f32_2d(x, N, I), f32_2d(w, O, I)));
    CHECK(bitwise_equal(dx_alone, dx, N * I), "linear backward: dx alone equals dx with dw and db");

    free(x), free(w), free(b), free(y), free(dy), free(dx), free(dw), free(db), free(dw_twice), free(db_twice);
    free(dx_alone), free(ref.x), free(ref.w), free(ref.b), free(ref.dy), free(y_ref);
}

static void test_linear(void) {
    check_linear(5, 7, 11, 1);
    check_linear(5, 7, 11, 0);
    check_linear(1, 13, 3, 1);
    check_linear(3, 1, 1, 1);
    check_linear(9, 300, 5, 1);   /* an input width past one tile */

    enum { N = 3, I = 4, O = 5 };
    float x[N * I] = {0}, w[O * I] = {0}, b[O] = {0}, y[N * O], dx[N * I], dw[O * I], db[O];
    CHECK_ERR(be->ops.linear_forward(be, f32_2d(y, N, O), f32_2d(x, N, I + 1), f32_2d(w, O, I), tensor_none()),
              "linear_forward: x has shape [3, 5]");
    CHECK_ERR(be->ops.linear_forward(be, f32_2d(y, N, O), f32_2d(x, N, I), f32_2d(w, O, I), f32_1d(b, O - 1)),
              "linear_forward: b has shape [4], expected [5]");
    CHECK_ERR(be->ops.linear_forward(be, f32_2d(y, N, O + 1), f32_2d(x, N, I), f32_2d(w, O, I), tensor_none()),
              "linear_forward: y has shape");
    CHECK_ERR(be->ops.linear_backward(be, f32_2d(dx, N, I), f32_2d(dw, I, O), f32_1d(db, O), f32_2d(y, N, O),
                                      f32_2d(x, N, I), f32_2d(w, O, I)),
              "linear_backward: dw has shape [4, 5], expected [5, 4]");
    CHECK_ERR(be->ops.linear_backward(be, f32_2d(dx, N, I), f32_2d(dw, O, I), f32_1d(db, O), f32_2d(y, N + 1, O),
                                      f32_2d(x, N, I), f32_2d(w, O, I)),
              "linear_backward: dy has shape");
}

/* linear_residual_forward: y = x w^T + r against the float64 reference, and bitwise the
 * linear_forward then accumulate it stands for on the CPU. */
static void test_linear_residual(int64_t N, int64_t I, int64_t O) {
    float *x = new_f32(N * I), *w = new_f32(O * I), *r = new_f32(N * O), *y = new_f32(N * O), *y2 = new_f32(N * O);
    fill_normal(x, N * I, 24, 1.0f);
    fill_normal(w, O * I, 25, 0.5f);
    fill_normal(r, N * O, 26, 1.0f);
    LinearRef ref = {N, I, O, f64_copy_of(x, N * I), f64_copy_of(w, O * I), NULL, NULL};
    double *y_ref = new_f64(N * O);
    linear_reference(&ref, y_ref);
    for (int64_t i = 0; i < N * O; i++) y_ref[i] += r[i];
    CHECK_OK(be->ops.linear_residual_forward(be, f32_2d(y, N, O), f32_2d(x, N, I), f32_2d(w, O, I), f32_2d(r, N, O)));
    double err = rel_error_f64(y, y_ref, N * O);
    CHECK(err < 1e-6, "linear_residual_forward N=%lld I=%lld O=%lld: rel error %.3g", (long long)N, (long long)I,
          (long long)O, err);
    CHECK_OK(be->ops.linear_forward(be, f32_2d(y2, N, O), f32_2d(x, N, I), f32_2d(w, O, I), tensor_none()));
    CHECK_OK(be->ops.accumulate(be, f32_2d(y2, N, O), f32_2d(r, N, O)));
    CHECK(bitwise_equal(y, y2, N * O), "linear_residual_forward: bitwise linear_forward then accumulate");
    CHECK_ERR(be->ops.linear_residual_forward(be, f32_2d(r, N, O), f32_2d(x, N, I), f32_2d(w, O, I), f32_2d(r, N, O)),
              "y and r must be different memory");
    CHECK_ERR(be->ops.linear_residual_forward(be, f32_2d(y, N, O), f32_2d(x, N, I), f32_2d(w, O, I),
                                              f32_2d(r, N, O - 1)),
              "linear_residual_forward: r has shape");
    free(x), free(w), free(r), free(y), free(y2), free(ref.x), free(ref.w), free(y_ref);
}

/* ---- SwiGLU --------------------------------------------------------------------------------- */

typedef struct {
    int64_t n;
    double *gate, *up, *dout;
} SwigluRef;

static double silu_f64(double g) { return g / (1.0 + exp(-g)); }

static double swiglu_loss(void *ctx) {
    const SwigluRef *r = ctx;
    double s = 0;
    for (int64_t i = 0; i < r->n; i++) s += r->dout[i] * silu_f64(r->gate[i]) * r->up[i];
    return s;
}

static void test_swiglu(void) {
    enum { N = 3, F = 13 };
    float *gate = new_f32(N * F), *up = new_f32(N * F), *out = new_f32(N * F), *dout = new_f32(N * F);
    float *dgate = new_f32(N * F), *dup = new_f32(N * F);
    fill_normal(gate, N * F, 30, 3.0f);
    gate[0] = -30.0f, gate[1] = 30.0f, gate[2] = -100.0f;   /* saturated sigmoid; exp(100) overflows */
    fill_normal(up, N * F, 31, 1.0f);
    fill_normal(dout, N * F, 32, 1.0f);
    SwigluRef ref = {N * F, f64_copy_of(gate, N * F), f64_copy_of(up, N * F), f64_copy_of(dout, N * F)};

    double *out_ref = new_f64(N * F);
    for (int i = 0; i < N * F; i++) out_ref[i] = silu_f64(ref.gate[i]) * ref.up[i];
    CHECK_OK(be->ops.swiglu_forward(be, f32_2d(out, N, F), f32_2d(gate, N, F), f32_2d(up, N, F)));
    double err = rel_error_f64(out, out_ref, N * F);
    CHECK(err < 1e-6, "swiglu forward: rel error %.3g", err);
    int finite = 1;
    for (int i = 0; i < N * F; i++) finite &= isfinite(out[i]) != 0;
    CHECK(finite, "swiglu forward is finite for saturated gates");

    CHECK_OK(be->ops.swiglu_backward(be, f32_2d(dgate, N, F), f32_2d(dup, N, F), f32_2d(dout, N, F),
                                     f32_2d(gate, N, F), f32_2d(up, N, F)));
    double err_dg = fd_rel_error(swiglu_loss, &ref, ref.gate, N * F, dgate);
    double err_du = fd_rel_error(swiglu_loss, &ref, ref.up, N * F, dup);
    CHECK(err_dg < 1e-4, "swiglu backward dgate vs finite differences: rel error %.3g", err_dg);
    CHECK(err_du < 1e-4, "swiglu backward dup vs finite differences: rel error %.3g", err_du);

    CHECK_ERR(be->ops.swiglu_forward(be, f32_2d(out, N, F), f32_2d(gate, N, F), f32_2d(up, N, F - 1)),
              "swiglu_forward: up has shape [3, 12], expected [3, 13]");
    CHECK_ERR(be->ops.swiglu_backward(be, f32_2d(dgate, N, F), tensor_none(), f32_2d(dout, N, F),
                                      f32_2d(gate, N, F), f32_2d(up, N, F)),
              "swiglu_backward: dup is missing");

    free(gate), free(up), free(out), free(dout), free(dgate), free(dup), free(out_ref);
    free(ref.gate), free(ref.up), free(ref.dout);
}

/* ---- the same bits whatever the thread count ------------------------------------------------ */

/* Every output of the four op families on inputs large enough to split across threads: several
 * reduction blocks, several column blocks, and the linear shapes where OpenBLAS's own threading
 * changes the bits. */
enum {
    DET_N = 2500, DET_V = 50, DET_D = 200,                 /* embedding, rmsnorm, swiglu */
    DET_LN = 513, DET_LI = 700, DET_LO = 300,              /* linear, many tokens */
    DET_GI = 3000, DET_GO = 512,                           /* linear, one token */
};

typedef struct {
    float *emb_out, *emb_dtable;
    float *norm_y, *norm_rstd, *norm_dx, *norm_dw;
    float *lin_y, *lin_dx, *lin_dw, *lin_db;
    float *tok_y, *tok_dx, *tok_dw, *tok_db;
    float *glu_out, *glu_dgate, *glu_dup;
} DetOutputs;

static void det_alloc(DetOutputs *o) {
    o->emb_out = new_f32(DET_N * DET_D), o->emb_dtable = new_f32(DET_V * DET_D);
    o->norm_y = new_f32(DET_N * DET_D), o->norm_rstd = new_f32(DET_N);
    o->norm_dx = new_f32(DET_N * DET_D), o->norm_dw = new_f32(DET_D);
    o->lin_y = new_f32(DET_LN * DET_LO), o->lin_dx = new_f32(DET_LN * DET_LI);
    o->lin_dw = new_f32(DET_LO * DET_LI), o->lin_db = new_f32(DET_LO);
    o->tok_y = new_f32(DET_GO), o->tok_dx = new_f32(DET_GI), o->tok_dw = new_f32(DET_GO * DET_GI);
    o->tok_db = new_f32(DET_GO);
    o->glu_out = new_f32(DET_N * DET_D), o->glu_dgate = new_f32(DET_N * DET_D), o->glu_dup = new_f32(DET_N * DET_D);
}

static void det_free(DetOutputs *o) {
    free(o->emb_out), free(o->emb_dtable), free(o->norm_y), free(o->norm_rstd), free(o->norm_dx);
    free(o->norm_dw), free(o->lin_y), free(o->lin_dx), free(o->lin_dw), free(o->lin_db), free(o->tok_y);
    free(o->tok_dx), free(o->tok_dw), free(o->tok_db), free(o->glu_out), free(o->glu_dgate), free(o->glu_dup);
}

static void det_run(int threads, DetOutputs *o) {
    Backend *b = test_cpu_backend(threads);
    int32_t *ids = test_alloc(DET_N * sizeof(int32_t));
    for (int n = 0; n < DET_N; n++) ids[n] = (int32_t)((n * 7 + n / 13) % DET_V);
    float *a = new_f32(DET_N * DET_D), *g = new_f32(DET_N * DET_D), *w = new_f32(DET_D);
    float *table = new_f32(DET_V * DET_D);
    fill_normal(a, DET_N * DET_D, 40, 1.0f);
    fill_normal(g, DET_N * DET_D, 41, 1.0f);
    fill_normal(w, DET_D, 42, 1.0f);
    fill_normal(table, DET_V * DET_D, 43, 1.0f);

    CHECK_OK(b->ops.embedding_forward(b, f32_2d(o->emb_out, DET_N, DET_D), i32_1d(ids, DET_N),
                                      f32_2d(table, DET_V, DET_D)));
    CHECK_OK(b->ops.embedding_backward(b, f32_2d(o->emb_dtable, DET_V, DET_D), f32_2d(g, DET_N, DET_D),
                                       i32_1d(ids, DET_N)));
    CHECK_OK(b->ops.rmsnorm_forward(b, f32_2d(o->norm_y, DET_N, DET_D), f32_1d(o->norm_rstd, DET_N),
                                    f32_2d(a, DET_N, DET_D), f32_1d(w, DET_D), 1e-6f));
    CHECK_OK(b->ops.rmsnorm_backward(b, f32_2d(o->norm_dx, DET_N, DET_D), f32_1d(o->norm_dw, DET_D),
                                     f32_2d(g, DET_N, DET_D), f32_2d(a, DET_N, DET_D), f32_1d(w, DET_D),
                                     f32_1d(o->norm_rstd, DET_N)));
    CHECK_OK(b->ops.swiglu_forward(b, f32_2d(o->glu_out, DET_N, DET_D), f32_2d(a, DET_N, DET_D),
                                   f32_2d(g, DET_N, DET_D)));
    CHECK_OK(b->ops.swiglu_backward(b, f32_2d(o->glu_dgate, DET_N, DET_D), f32_2d(o->glu_dup, DET_N, DET_D),
                                    f32_2d(a, DET_N, DET_D), f32_2d(g, DET_N, DET_D), f32_2d(a, DET_N, DET_D)));

    float *lx = new_f32(DET_LN * DET_LI), *lw = new_f32(DET_LO * DET_LI), *ldy = new_f32(DET_LN * DET_LO);
    float *lb = new_f32(DET_LO), *gx = new_f32(DET_GI), *gw = new_f32(DET_GO * DET_GI), *gdy = new_f32(DET_GO);
    float *gb = new_f32(DET_GO);
    fill_normal(lx, DET_LN * DET_LI, 44, 1.0f);
    fill_normal(lw, DET_LO * DET_LI, 45, 1.0f);
    fill_normal(ldy, DET_LN * DET_LO, 46, 1.0f);
    fill_normal(lb, DET_LO, 47, 1.0f);
    fill_normal(gx, DET_GI, 48, 1.0f);
    fill_normal(gw, DET_GO * DET_GI, 49, 1.0f);
    fill_normal(gdy, DET_GO, 50, 1.0f);
    fill_normal(gb, DET_GO, 51, 1.0f);
    CHECK_OK(b->ops.linear_forward(b, f32_2d(o->lin_y, DET_LN, DET_LO), f32_2d(lx, DET_LN, DET_LI),
                                   f32_2d(lw, DET_LO, DET_LI), f32_1d(lb, DET_LO)));
    CHECK_OK(b->ops.linear_backward(b, f32_2d(o->lin_dx, DET_LN, DET_LI), f32_2d(o->lin_dw, DET_LO, DET_LI),
                                    f32_1d(o->lin_db, DET_LO), f32_2d(ldy, DET_LN, DET_LO),
                                    f32_2d(lx, DET_LN, DET_LI), f32_2d(lw, DET_LO, DET_LI)));
    CHECK_OK(b->ops.linear_forward(b, f32_2d(o->tok_y, 1, DET_GO), f32_2d(gx, 1, DET_GI),
                                   f32_2d(gw, DET_GO, DET_GI), f32_1d(gb, DET_GO)));
    CHECK_OK(b->ops.linear_backward(b, f32_2d(o->tok_dx, 1, DET_GI), f32_2d(o->tok_dw, DET_GO, DET_GI),
                                    f32_1d(o->tok_db, DET_GO), f32_2d(gdy, 1, DET_GO), f32_2d(gx, 1, DET_GI),
                                    f32_2d(gw, DET_GO, DET_GI)));
    free(lx), free(lw), free(ldy), free(lb), free(gx), free(gw), free(gdy), free(gb);
    free(ids), free(a), free(g), free(w), free(table);
    backend_destroy(b);
}

static void test_thread_count_independence(void) {
    DetOutputs one, other;
    det_alloc(&one);
    det_run(1, &one);
    const int counts[] = {2, 3};
    for (int c = 0; c < 2; c++) {
        int t = counts[c];
        det_alloc(&other);
        det_run(t, &other);
#define SAME(field, n) \
    CHECK(bitwise_equal(one.field, other.field, (n)), #field ": 1 and %d threads agree bit for bit", t)
        SAME(emb_out, DET_N * DET_D);
        SAME(emb_dtable, DET_V * DET_D);
        SAME(norm_y, DET_N * DET_D);
        SAME(norm_rstd, DET_N);
        SAME(norm_dx, DET_N * DET_D);
        SAME(norm_dw, DET_D);
        SAME(glu_out, DET_N * DET_D);
        SAME(glu_dgate, DET_N * DET_D);
        SAME(glu_dup, DET_N * DET_D);
        SAME(lin_y, DET_LN * DET_LO);
        SAME(lin_dx, DET_LN * DET_LI);
        SAME(lin_dw, DET_LO * DET_LI);
        SAME(lin_db, DET_LO);
        SAME(tok_y, DET_GO);
        SAME(tok_dx, DET_GI);
        SAME(tok_dw, DET_GO * DET_GI);
        SAME(tok_db, DET_GO);
#undef SAME
        det_free(&other);
    }
    det_free(&one);
}

int main(void) {
    be = test_cpu_backend(0);
    test_embedding();
    test_rmsnorm();
    test_linear();
    test_linear_residual(5, 7, 11);
    test_linear_residual(1, 300, 3);
    test_swiglu();
    test_thread_count_independence();
    backend_destroy(be);
    return test_finish("test_ops_basic");
}
