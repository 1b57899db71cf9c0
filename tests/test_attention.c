/* Tests of causal attention (GQA and MLA shapes): forward against a float64 reference, backward
 * against central finite differences of it, bitwise equality across thread counts, argument errors. */
#include "harness.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* One attention problem: sizes, float32 inputs for the op, their float64 copies for the reference. */
typedef struct {
    const char *name;
    int64_t B, T, H, Hk, Dk, Ds, Dv;
    double scale;
    float *q, *k, *ks, *v, *dout;       /* ks is NULL when Ds == 0 */
    double *q64, *k64, *ks64, *v64, *dout64;
    double *out_ref, *lse_ref;           /* scratch of the reference forward */
} Case;

static int64_t n_q(const Case *c) { return c->B * c->T * c->H * (c->Dk + c->Ds); }
static int64_t n_k(const Case *c) { return c->B * c->T * c->Hk * c->Dk; }
static int64_t n_ks(const Case *c) { return c->B * c->T * c->Ds; }
static int64_t n_v(const Case *c) { return c->B * c->T * c->Hk * c->Dv; }
static int64_t n_out(const Case *c) { return c->B * c->T * c->H * c->Dv; }
static int64_t n_lse(const Case *c) { return c->B * c->H * c->T; }

static Case case_make(const char *name, int64_t B, int64_t T, int64_t H, int64_t Hk, int64_t Dk, int64_t Ds,
                      int64_t Dv, float input_std, uint64_t stream) {
    Case c = {.name = name, .B = B, .T = T, .H = H, .Hk = Hk, .Dk = Dk, .Ds = Ds, .Dv = Dv};
    c.scale = 1.0 / sqrt((double)(Dk + Ds));
    c.q = test_alloc((size_t)n_q(&c) * sizeof(float));
    c.k = test_alloc((size_t)n_k(&c) * sizeof(float));
    c.ks = Ds ? test_alloc((size_t)n_ks(&c) * sizeof(float)) : NULL;
    c.v = test_alloc((size_t)n_v(&c) * sizeof(float));
    c.dout = test_alloc((size_t)n_out(&c) * sizeof(float));
    fill_normal(c.q, n_q(&c), stream + 0, input_std);
    fill_normal(c.k, n_k(&c), stream + 1, input_std);
    if (Ds) fill_normal(c.ks, n_ks(&c), stream + 2, input_std);
    fill_normal(c.v, n_v(&c), stream + 3, 1.0f);
    fill_normal(c.dout, n_out(&c), stream + 4, 1.0f);
    c.q64 = test_alloc((size_t)n_q(&c) * sizeof(double));
    c.k64 = test_alloc((size_t)n_k(&c) * sizeof(double));
    c.ks64 = Ds ? test_alloc((size_t)n_ks(&c) * sizeof(double)) : NULL;
    c.v64 = test_alloc((size_t)n_v(&c) * sizeof(double));
    c.dout64 = test_alloc((size_t)n_out(&c) * sizeof(double));
    copy_f32_to_f64(c.q64, c.q, n_q(&c));
    copy_f32_to_f64(c.k64, c.k, n_k(&c));
    if (Ds) copy_f32_to_f64(c.ks64, c.ks, n_ks(&c));
    copy_f32_to_f64(c.v64, c.v, n_v(&c));
    copy_f32_to_f64(c.dout64, c.dout, n_out(&c));
    c.out_ref = test_alloc((size_t)n_out(&c) * sizeof(double));
    c.lse_ref = test_alloc((size_t)n_lse(&c) * sizeof(double));
    return c;
}

static void case_free(Case *c) {
    free(c->q), free(c->k), free(c->ks), free(c->v), free(c->dout);
    free(c->q64), free(c->k64), free(c->ks64), free(c->v64), free(c->dout64);
    free(c->out_ref), free(c->lse_ref);
}

/* The definition, in float64: full score rows, softmax, weighted sum of values. */
static void reference_forward(Case *c) {
    const int64_t B = c->B, T = c->T, H = c->H, Hk = c->Hk, Dk = c->Dk, Ds = c->Ds, Dv = c->Dv;
    const int64_t Dq = Dk + Ds;
    double *score = test_alloc((size_t)T * sizeof(double));
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            int64_t g = h / (H / Hk);
            for (int64_t i = 0; i < T; i++) {
                const double *qi = c->q64 + ((b * T + i) * H + h) * Dq;
                double m = -INFINITY;
                for (int64_t j = 0; j <= i; j++) {
                    const double *kj = c->k64 + ((b * T + j) * Hk + g) * Dk;
                    double s = 0;
                    for (int64_t d = 0; d < Dk; d++) s += qi[d] * kj[d];
                    for (int64_t d = 0; d < Ds; d++) s += qi[Dk + d] * c->ks64[(b * T + j) * Ds + d];
                    score[j] = c->scale * s;
                    if (score[j] > m) m = score[j];
                }
                double sum = 0;
                for (int64_t j = 0; j <= i; j++) sum += exp(score[j] - m);
                double *oi = c->out_ref + ((b * T + i) * H + h) * Dv;
                for (int64_t d = 0; d < Dv; d++) oi[d] = 0;
                for (int64_t j = 0; j <= i; j++) {
                    double p = exp(score[j] - m) / sum;
                    const double *vj = c->v64 + ((b * T + j) * Hk + g) * Dv;
                    for (int64_t d = 0; d < Dv; d++) oi[d] += p * vj[d];
                }
                c->lse_ref[(b * H + h) * T + i] = m + log(sum);
            }
        }
    free(score);
}

/* The scalar whose gradient the backward computes: L = <dout, out(q, k, k_shared, v)>. */
static double reference_loss(void *ctx) {
    Case *c = ctx;
    reference_forward(c);
    return dot_f64(c->dout64, c->out_ref, n_out(c));
}

static Tensor view4(float *p, int64_t a, int64_t b, int64_t c, int64_t d) {
    return tensor_view(p, DT_F32, 4, (int64_t[]){a, b, c, d});
}
static Tensor view3(float *p, int64_t a, int64_t b, int64_t c) {
    return tensor_view(p, DT_F32, 3, (int64_t[]){a, b, c});
}

/* Outputs and gradients of the op on one case. */
typedef struct {
    float *out, *lse, *dq, *dk, *dks, *dv;
} Results;

static Results results_alloc(const Case *c) {
    Results r;
    r.out = test_alloc((size_t)n_out(c) * sizeof(float));
    r.lse = test_alloc((size_t)n_lse(c) * sizeof(float));
    r.dq = test_alloc((size_t)n_q(c) * sizeof(float));
    r.dk = test_alloc((size_t)n_k(c) * sizeof(float));
    r.dks = test_alloc((size_t)(n_ks(c) ? n_ks(c) : 1) * sizeof(float));
    r.dv = test_alloc((size_t)n_v(c) * sizeof(float));
    return r;
}

static void results_free(Results *r) {
    free(r->out), free(r->lse), free(r->dq), free(r->dk), free(r->dks), free(r->dv);
}

/* Runs forward then backward with every gradient wanted; 1 when both calls succeeded. Gradient
 * buffers are first filled with garbage, so a gradient that is not overwritten shows. */
static int run_op(Backend *be, const Case *c, Results *r) {
    const int64_t B = c->B, T = c->T, H = c->H, Hk = c->Hk, Dq = c->Dk + c->Ds;
    Tensor q = view4(c->q, B, T, H, Dq), k = view4(c->k, B, T, Hk, c->Dk), v = view4(c->v, B, T, Hk, c->Dv);
    Tensor ks = c->Ds ? view3(c->ks, B, T, c->Ds) : tensor_none();
    Tensor out = view4(r->out, B, T, H, c->Dv), lse = view3(r->lse, B, H, T);
    for (int64_t i = 0; i < n_q(c); i++) r->dq[i] = NAN;
    for (int64_t i = 0; i < n_k(c); i++) r->dk[i] = NAN;
    for (int64_t i = 0; i < n_ks(c); i++) r->dks[i] = NAN;
    for (int64_t i = 0; i < n_v(c); i++) r->dv[i] = NAN;
    if (!CHECK_OK(be->ops.attention_forward(be, out, lse, q, k, ks, v, (float)c->scale))) return 0;
    Tensor dks = c->Ds ? view3(r->dks, B, T, c->Ds) : tensor_none();
    return CHECK_OK(be->ops.attention_backward(be, view4(r->dq, B, T, H, Dq), view4(r->dk, B, T, Hk, c->Dk),
                                               dks, view4(r->dv, B, T, Hk, c->Dv), view4(c->dout, B, T, H, c->Dv),
                                               out, lse, q, k, ks, v, (float)c->scale));
}

/* Forward against the reference; with fd set, every gradient against finite differences. */
static void check_case(Backend *be, Case *c, int fd) {
    Results r = results_alloc(c);
    if (!run_op(be, c, &r)) {
        results_free(&r);
        return;
    }
    reference_forward(c);
    double e_out = rel_error_f64(r.out, c->out_ref, n_out(c));
    double e_lse = rel_error_f64(r.lse, c->lse_ref, n_lse(c));
    CHECK(e_out < 1e-5, "%s: forward out rel error %.3g", c->name, e_out);
    CHECK(e_lse < 1e-5, "%s: forward lse rel error %.3g", c->name, e_lse);
    if (fd) {
        struct {
            const char *what;
            double *x;
            const float *grad;
            int64_t n;
        } wrt[] = {{"dq", c->q64, r.dq, n_q(c)}, {"dk", c->k64, r.dk, n_k(c)},
                   {"dk_shared", c->ks64, r.dks, n_ks(c)}, {"dv", c->v64, r.dv, n_v(c)}};
        for (size_t w = 0; w < sizeof wrt / sizeof wrt[0]; w++) {
            if (wrt[w].n == 0) continue;
            double *numeric = test_alloc((size_t)wrt[w].n * sizeof(double));
            finite_difference(reference_loss, c, wrt[w].x, wrt[w].n, 1e-5, numeric);
            double err = rel_error_f64(wrt[w].grad, numeric, wrt[w].n);
            CHECK(err < 1e-5, "%s: backward %s rel error %.3g (vs finite differences)", c->name, wrt[w].what, err);
            free(numeric);
        }
    }
    results_free(&r);
}

/* Gradients that are not wanted are skipped without changing the wanted ones. */
static void check_partial_gradients(Backend *be) {
    Case c = case_make("mla partial", 2, 11, 3, 3, 5, 3, 7, 1.0f, 700);
    const int64_t B = c.B, T = c.T, H = c.H, Hk = c.Hk, Dq = c.Dk + c.Ds;
    Results full = results_alloc(&c);
    if (run_op(be, &c, &full)) {
        Tensor q = view4(c.q, B, T, H, Dq), k = view4(c.k, B, T, Hk, c.Dk), v = view4(c.v, B, T, Hk, c.Dv);
        Tensor ks = view3(c.ks, B, T, c.Ds), dout = view4(c.dout, B, T, H, c.Dv);
        Tensor out = view4(full.out, B, T, H, c.Dv), lse = view3(full.lse, B, H, T);
        float *dv = test_alloc((size_t)n_v(&c) * sizeof(float));
        float *dks = test_alloc((size_t)n_ks(&c) * sizeof(float));
        CHECK_OK(be->ops.attention_backward(be, tensor_none(), tensor_none(), tensor_none(),
                                            view4(dv, B, T, Hk, c.Dv), dout, out, lse, q, k, ks, v,
                                            (float)c.scale));
        CHECK(memcmp(dv, full.dv, (size_t)n_v(&c) * sizeof(float)) == 0, "dv alone equals dv of the full backward");
        CHECK_OK(be->ops.attention_backward(be, tensor_none(), tensor_none(), view3(dks, B, T, c.Ds),
                                            tensor_none(), dout, out, lse, q, k, ks, v, (float)c.scale));
        CHECK(memcmp(dks, full.dks, (size_t)n_ks(&c) * sizeof(float)) == 0,
              "dk_shared alone equals dk_shared of the full backward");
        free(dv);
        free(dks);
    }
    results_free(&full);
    case_free(&c);
}

/* Every output and gradient, bit for bit, at 1, 2 and 3 threads. */
static void check_thread_counts(void) {
    Case c = case_make("threads", 2, 70, 4, 2, 12, 5, 9, 1.0f, 800);
    Results r[3];
    int ok = 1;
    for (int t = 0; t < 3; t++) {
        Backend *be = test_cpu_backend(t + 1);
        r[t] = results_alloc(&c);
        ok &= run_op(be, &c, &r[t]);
        backend_destroy(be);
    }
    if (ok)
        for (int t = 1; t < 3; t++) {
            int same = memcmp(r[0].out, r[t].out, (size_t)n_out(&c) * sizeof(float)) == 0 &&
                       memcmp(r[0].lse, r[t].lse, (size_t)n_lse(&c) * sizeof(float)) == 0 &&
                       memcmp(r[0].dq, r[t].dq, (size_t)n_q(&c) * sizeof(float)) == 0 &&
                       memcmp(r[0].dk, r[t].dk, (size_t)n_k(&c) * sizeof(float)) == 0 &&
                       memcmp(r[0].dks, r[t].dks, (size_t)n_ks(&c) * sizeof(float)) == 0 &&
                       memcmp(r[0].dv, r[t].dv, (size_t)n_v(&c) * sizeof(float)) == 0;
            CHECK(same, "out, lse, dq, dk, dk_shared, dv bitwise equal at 1 and %d threads", t + 1);
        }
    for (int t = 0; t < 3; t++) results_free(&r[t]);
    case_free(&c);
}

static void check_errors(Backend *be) {
    enum { B = 1, T = 3, H = 3, Hk = 3, Dk = 2, Ds = 1, Dv = 2 };
    float q[B * T * H * (Dk + Ds)] = {0}, k[B * T * (Hk + 1) * Dk] = {0}, ks[B * T * Ds] = {0};
    float v[B * T * (Hk + 1) * Dv] = {0}, out[B * T * H * Dv] = {0}, lse[B * H * T] = {0};
    float dout[B * T * H * Dv] = {0}, dks[B * T * Ds] = {0};
    Tensor tq = view4(q, B, T, H, Dk + Ds), tk = view4(k, B, T, Hk, Dk), tks = view3(ks, B, T, Ds);
    Tensor tv = view4(v, B, T, Hk, Dv), tout = view4(out, B, T, H, Dv), tlse = view3(lse, B, H, T);
    Tensor tdout = view4(dout, B, T, H, Dv);
    Ops *ops = &be->ops;

    CHECK_OK(ops->attention_forward(be, tout, tlse, tq, tk, tks, tv, 1.0f));
    CHECK_ERR(ops->attention_forward(be, tout, tlse, tq, view4(k, B, T, 2, Dk), tks, view4(v, B, T, 2, Dv), 1.0f),
              "not a multiple of the 2 kv heads");
    CHECK_ERR(ops->attention_forward(be, tout, tlse, tq, tk, tks, view4(v, B, T, Hk + 1, Dv), 1.0f),
              "attention_forward: v has shape [1, 3, 4, 2], expected [1, 3, 3, *]");
    CHECK_ERR(ops->attention_forward(be, tout, tensor_none(), tq, tk, tks, tv, 1.0f),
              "attention_forward: lse is missing");
    CHECK_ERR(ops->attention_forward(be, tout, view3(lse, B, H, T - 1), tq, tk, tks, tv, 1.0f),
              "attention_forward: lse has shape");
    CHECK_ERR(ops->attention_forward(be, tout, tlse, tq, tk, tensor_none(), tv, 1.0f),
              "attention_forward: q has head width 3, expected Dk + Ds = 2 + 0");
    CHECK_ERR(ops->attention_forward(be, view4(out, B, T, H, Dv - 1), tlse, tq, tk, tks, tv, 1.0f),
              "attention_forward: out has shape");
    CHECK_ERR(ops->attention_forward(be, tout, tlse, tq, tk, tks, tv, NAN), "attention_forward: scale is nan");
    CHECK_ERR(ops->attention_forward(be, tout, tlse, tq, tk, tks, tv, INFINITY), "expected a finite number");
    Tensor k_bf16 = tk;
    k_bf16.dtype = DT_BF16;
    CHECK_ERR(ops->attention_forward(be, tout, tlse, tq, k_bf16, tks, tv, 1.0f),
              "attention_forward: k is bf16 but the call's other storage tensors are f32");
    Tensor lse_bf16 = tlse;
    lse_bf16.dtype = DT_BF16;
    CHECK_ERR(ops->attention_forward(be, tout, lse_bf16, tq, tk, tks, tv, 1.0f),
              "attention_forward: lse has dtype bf16, expected f32");

    CHECK_OK(ops->attention_backward(be, tensor_none(), tensor_none(), view3(dks, B, T, Ds), tensor_none(), tdout,
                                     tout, tlse, tq, tk, tks, tv, 1.0f));
    CHECK_ERR(ops->attention_backward(be, tensor_none(), tensor_none(), tensor_none(), tv, tdout, tout,
                                      tensor_none(), tq, tk, tks, tv, 1.0f),
              "attention_backward: lse is missing");
    CHECK_ERR(ops->attention_backward(be, tensor_none(), tensor_none(), view3(dks, B, T, Ds), tensor_none(), tdout,
                                      tout, tlse, view4(q, B, T, H, Dk), tk, tensor_none(), tv, 1.0f),
              "attention_backward: dk_shared is given but k_shared is absent");
    CHECK_ERR(ops->attention_backward(be, tensor_none(), tensor_none(), view3(dks, B, Ds, T), tensor_none(), tdout,
                                      tout, tlse, tq, tk, tks, tv, 1.0f),
              "attention_backward: dk_shared has shape");
    CHECK_ERR(ops->attention_backward(be, tensor_none(), view4(k, B, T, Hk + 1, Dk), tensor_none(), tensor_none(),
                                      tdout, tout, tlse, tq, tk, tks, tv, 1.0f),
              "attention_backward: dk has shape");
    CHECK_ERR(ops->attention_backward(be, tensor_none(), tensor_none(), tensor_none(), tv, tdout, tensor_none(),
                                      tlse, tq, tk, tks, tv, 1.0f),
              "attention_backward: out is missing");
}

int main(void) {
    Backend *be = test_cpu_backend(0);

    /* Small enough for finite differences (a few hundred inputs), awkward in every dimension. */
    struct {
        const char *name;
        int64_t B, T, H, Hk, Dk, Ds, Dv;
    } fd_cases[] = {
        {"gqa H/Hk=1", 2, 7, 3, 3, 5, 0, 5},
        {"gqa H/Hk=2", 1, 9, 4, 2, 6, 0, 6},
        {"gqa H/Hk=4", 2, 6, 4, 1, 3, 0, 3},
        {"mla Dk=5 Ds=3 Dv=7", 2, 6, 3, 3, 5, 3, 7},
        {"mla one token", 2, 1, 2, 2, 4, 2, 3},
        {"gqa one token", 1, 1, 4, 2, 3, 0, 3},
        {"gqa T=37 > head dim 6", 1, 37, 2, 1, 6, 0, 6},
        {"grouped with shared key", 1, 10, 4, 2, 3, 2, 4},
    };
    for (size_t i = 0; i < sizeof fd_cases / sizeof fd_cases[0]; i++) {
        Case c = case_make(fd_cases[i].name, fd_cases[i].B, fd_cases[i].T, fd_cases[i].H, fd_cases[i].Hk,
                           fd_cases[i].Dk, fd_cases[i].Ds, fd_cases[i].Dv, 1.0f, 100 * (i + 1));
        check_case(be, &c, 1);
        case_free(&c);
    }

    /* Forward only: longer sequences and realistic head widths; and scores far beyond expf's range
     * (|score| in the hundreds), which only a max-subtracted softmax survives. */
    {
        Case c = case_make("mla T=200 dn=64 dr=32 dv=64", 1, 200, 2, 2, 64, 32, 64, 1.0f, 2000);
        check_case(be, &c, 0);
        case_free(&c);
    }
    {
        Case c = case_make("gqa T=130 d=128", 2, 130, 4, 2, 128, 0, 128, 1.0f, 2100);
        check_case(be, &c, 0);
        case_free(&c);
    }
    {
        Case c = case_make("large scores", 1, 40, 2, 1, 16, 0, 8, 6.0f, 2200);
        c.scale = 1.0;
        check_case(be, &c, 0);
        case_free(&c);
    }
    {
        Case c = case_make("large scores fd", 1, 8, 2, 1, 3, 2, 4, 3.0f, 2300);
        c.scale = 2.0;
        check_case(be, &c, 1);
        case_free(&c);
    }

    check_partial_gradients(be);
    check_errors(be);
    backend_destroy(be);
    check_thread_counts();
    return test_finish("test_attention");
}
