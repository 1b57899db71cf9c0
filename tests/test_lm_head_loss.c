/* Tests of the fused LM head + distillation loss, with the teacher's weights and with its cached
 * top-k: each divergence's sums against a float64 reference, gradients against the reference's
 * analytic gradient and central finite differences, chunking, gradient accumulation, bitwise
 * thread-count independence, the temperature applied once, and bad inputs and configs. */
#include "harness.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { IGNORE = -100 };

/* One problem: float32 inputs for the op and float64 copies for the reference (which finite
 * differences perturb). Dt == 0 means no teacher. */
typedef struct {
    int64_t N, D, Dt, V;
    float *h, *w, *ht, *wt;
    double *h64, *w64, *ht64, *wt64;
    int32_t *targets;
    LossConfig cfg;
    float grad_scale;
    /* the teacher as its top-k (k > 0): log-probs at the temperature and their ids, [N, k]; the
     * op then reads these instead of ht, wt, which only produced them */
    int64_t k;
    float *topk_logprobs;
    int32_t *topk_ids;
} Problem;

typedef struct {
    double loss, kl, ce;
    int64_t counted, top1_agree;
} RefSums;

/* Logits of std about 2, so softmaxes are neither flat nor one-hot. Every fourth token from the
 * third on is ignored when with_ignored is set. */
static Problem problem_make(int64_t N, int64_t D, int64_t Dt, int64_t V, uint64_t stream, int with_ignored) {
    Problem p = {.N = N, .D = D, .Dt = Dt, .V = V};
    p.h = test_alloc((size_t)(N * D) * sizeof(float));
    p.w = test_alloc((size_t)(V * D) * sizeof(float));
    p.h64 = test_alloc((size_t)(N * D) * sizeof(double));
    p.w64 = test_alloc((size_t)(V * D) * sizeof(double));
    fill_normal(p.h, N * D, stream, 1.0f);
    fill_normal(p.w, V * D, stream + 1, 2.0f / sqrtf((float)D));
    copy_f32_to_f64(p.h64, p.h, N * D);
    copy_f32_to_f64(p.w64, p.w, V * D);
    if (Dt > 0) {
        p.ht = test_alloc((size_t)(N * Dt) * sizeof(float));
        p.wt = test_alloc((size_t)(V * Dt) * sizeof(float));
        p.ht64 = test_alloc((size_t)(N * Dt) * sizeof(double));
        p.wt64 = test_alloc((size_t)(V * Dt) * sizeof(double));
        fill_normal(p.ht, N * Dt, stream + 2, 1.0f);
        fill_normal(p.wt, V * Dt, stream + 3, 2.0f / sqrtf((float)Dt));
        copy_f32_to_f64(p.ht64, p.ht, N * Dt);
        copy_f32_to_f64(p.wt64, p.wt, V * Dt);
    }
    p.targets = test_alloc((size_t)N * sizeof(int32_t));
    int64_t counted = 0;
    for (int64_t n = 0; n < N; n++) {
        p.targets[n] = with_ignored && n % 4 == 2 ? IGNORE : (int32_t)((n * 7 + 3) % V);
        counted += p.targets[n] != IGNORE;
    }
    p.cfg = (LossConfig){.kl_weight = 0.5f, .ce_weight = 0.5f, .temperature = 1.0f,
                         .ignore_index = IGNORE, .chunk_tokens = 0};
    p.grad_scale = counted ? 1.0f / (float)counted : 1.0f;
    return p;
}

static void problem_free(Problem *p) {
    free(p->h), free(p->w), free(p->ht), free(p->wt);
    free(p->h64), free(p->w64), free(p->ht64), free(p->wt64);
    free(p->targets);
    free(p->topk_logprobs), free(p->topk_ids);
}

/* The op on p, through the backend's table (lm_head_loss_topk when p->k > 0); dh, dw NULL = not
 * wanted. */
static Status run_op(Backend *be, const Problem *p, LossSums *sums, float *dh, float *dw) {
    Tensor h = tensor_view(p->h, DT_F32, 2, (int64_t[]){p->N, p->D});
    Tensor w = tensor_view(p->w, DT_F32, 2, (int64_t[]){p->V, p->D});
    Tensor tg = tensor_view(p->targets, DT_I32, 1, (int64_t[]){p->N});
    Tensor tdh = dh ? tensor_view(dh, DT_F32, 2, (int64_t[]){p->N, p->D}) : tensor_none();
    Tensor tdw = dw ? tensor_view(dw, DT_F32, 2, (int64_t[]){p->V, p->D}) : tensor_none();
    if (p->k > 0) {
        Tensor lp = tensor_view(p->topk_logprobs, DT_F32, 2, (int64_t[]){p->N, p->k});
        Tensor ids = tensor_view(p->topk_ids, DT_I32, 2, (int64_t[]){p->N, p->k});
        return be->ops.lm_head_loss_topk(be, sums, tdh, tdw, h, w, lp, ids, tg, p->cfg, p->grad_scale);
    }
    Tensor ht = p->Dt ? tensor_view(p->ht, DT_F32, 2, (int64_t[]){p->N, p->Dt}) : tensor_none();
    Tensor wt = p->Dt ? tensor_view(p->wt, DT_F32, 2, (int64_t[]){p->V, p->Dt}) : tensor_none();
    return be->ops.lm_head_loss(be, sums, tdh, tdw, h, w, ht, wt, tg, p->cfg, p->grad_scale);
}

/* The teacher's top-k as a cache holds it: log-softmax(teacher logits / T) in float64, rounded to
 * f32, at the k most likely ids in decreasing order (ties: lower id first). Needs a teacher (Dt > 0)
 * and the config's temperature. */
static void problem_set_topk(Problem *p, int64_t k) {
    const int64_t V = p->V, Dt = p->Dt;
    const double T = p->cfg.temperature;
    p->k = k;
    p->topk_logprobs = test_alloc((size_t)(p->N * k) * sizeof(float));
    p->topk_ids = test_alloc((size_t)(p->N * k) * sizeof(int32_t));
    double *lt = test_alloc((size_t)V * sizeof(double));
    int32_t *order = test_alloc((size_t)V * sizeof(int32_t));
    for (int64_t n = 0; n < p->N; n++) {
        double m = -INFINITY, sum = 0;
        for (int64_t v = 0; v < V; v++) {
            lt[v] = 0;
            for (int64_t d = 0; d < Dt; d++) lt[v] += p->wt64[v * Dt + d] * p->ht64[n * Dt + d];
            lt[v] /= T;
            m = fmax(m, lt[v]);
        }
        for (int64_t v = 0; v < V; v++) sum += exp(lt[v] - m);
        for (int64_t v = 0; v < V; v++) lt[v] -= m + log(sum);
        /* insertion sort by decreasing log-prob: V is small here */
        for (int64_t v = 0; v < V; v++) {
            int64_t j = v;
            while (j > 0 && lt[order[j - 1]] < lt[v]) order[j] = order[j - 1], j--;
            order[j] = (int32_t)v;
        }
        for (int64_t i = 0; i < k; i++) {
            p->topk_ids[n * k + i] = order[i];
            p->topk_logprobs[n * k + i] = (float)lt[order[i]];
        }
    }
    free(lt), free(order);
}

/* D over M outcomes with student and teacher probabilities ps, pt, straight from the definitions. */
static double ref_divergence(LossConfig cfg, const double *ps, const double *pt, int64_t M) {
    double d = 0, beta = cfg.jsd_beta;
    for (int64_t j = 0; j < M; j++) {
        if (cfg.kind == LOSS_FORWARD_KL) d += pt[j] * log(pt[j] / ps[j]);
        if (cfg.kind == LOSS_REVERSE_KL) d += ps[j] * log(ps[j] / pt[j]);
        if (cfg.kind == LOSS_JSD) {
            double m = beta * pt[j] + (1 - beta) * ps[j];
            d += beta * pt[j] * log(pt[j] / m) + (1 - beta) * ps[j] * log(ps[j] / m);
        }
    }
    return d;
}

/* The float64 reference, straight from the definitions: full logits per token, softmaxes, the
 * divergence, CE. With a top-k teacher (p->k > 0) the divergence runs over the k ids and, when
 * k < V, a tail outcome of mass 1 - sum (the teacher's at least LOSS_TEACHER_TAIL_MIN). Fills the
 * sums, and when dh/dw are given (forward KL with the teacher's logits only) the gradient of
 * grad_scale * sum(loss) (dw += ). */
static void reference(const Problem *p, RefSums *out, double *dh, double *dw) {
    const int64_t V = p->V, D = p->D, Dt = p->Dt, K = p->k;
    const double T = p->cfg.temperature, klw = p->cfg.kl_weight, cew = p->cfg.ce_weight;
    const int has_teacher = Dt > 0 || K > 0;
    double *z = test_alloc((size_t)V * sizeof(double)), *zt = test_alloc((size_t)V * sizeof(double));
    double *ps = test_alloc((size_t)V * sizeof(double)), *ps1 = test_alloc((size_t)V * sizeof(double));
    double *pt = test_alloc((size_t)V * sizeof(double));
    double *os = test_alloc((size_t)(K + 1) * sizeof(double)), *ot = test_alloc((size_t)(K + 1) * sizeof(double));
    RefSums s = {0};
    for (int64_t n = 0; n < p->N; n++) {
        if (dh) memset(dh + n * D, 0, (size_t)D * sizeof(double));
        int32_t target = p->targets[n];
        if (target == p->cfg.ignore_index) continue;
        for (int64_t v = 0; v < V; v++) {
            z[v] = 0;
            for (int64_t d = 0; d < D; d++) z[v] += p->w64[v * D + d] * p->h64[n * D + d];
            zt[v] = 0;
            for (int64_t d = 0; d < Dt; d++) zt[v] += p->wt64[v * Dt + d] * p->ht64[n * Dt + d];
        }
        double lse1 = 0, lse_s = 0, lse_t = 0;
        {
            double m = z[0], mt = zt[0];
            for (int64_t v = 0; v < V; v++) m = fmax(m, z[v]), mt = fmax(mt, zt[v]);
            double s1 = 0, s_s = 0, s_t = 0;
            for (int64_t v = 0; v < V; v++) {
                s1 += exp(z[v] - m);
                s_s += exp((z[v] - m) / T);
                s_t += exp((zt[v] - mt) / T);
            }
            lse1 = m + log(s1);
            lse_s = m / T + log(s_s);
            lse_t = mt / T + log(s_t);
        }
        int64_t arg = 0, arg_t = 0;
        for (int64_t v = 0; v < V; v++) {
            ps1[v] = exp(z[v] - lse1);
            ps[v] = exp(z[v] / T - lse_s);
            pt[v] = exp(zt[v] / T - lse_t);
            if (z[v] > z[arg]) arg = v;
            if (zt[v] > zt[arg_t]) arg_t = v;
        }
        double kl = 0;
        if (K > 0) {
            const float *lp = p->topk_logprobs + n * K;
            const int32_t *ids = p->topk_ids + n * K;
            double t_mass = 0;
            int64_t best = 0;
            for (int64_t i = 0; i < K; i++) {
                os[i] = ps[ids[i]];
                ot[i] = exp((double)lp[i]);
                t_mass += ot[i];
                if (lp[i] > lp[best]) best = i;
            }
            /* the student's tail summed over the other tokens: 1 - s_mass would lose a tail below
             * double's rounding of 1 */
            os[K] = 0;
            for (int64_t v = 0; v < V; v++) {
                int listed = 0;
                for (int64_t i = 0; i < K; i++) listed |= ids[i] == v;
                if (!listed) os[K] += ps[v];
            }
            ot[K] = fmax(1 - t_mass, LOSS_TEACHER_TAIL_MIN);
            kl = ref_divergence(p->cfg, os, ot, K < V ? K + 1 : K);
            arg_t = ids[best];
        } else if (Dt) {
            kl = ref_divergence(p->cfg, ps, pt, V);
        }
        double ce = lse1 - z[target];
        s.loss += has_teacher ? klw * T * T * kl + cew * ce : cew * ce;
        s.kl += kl;
        s.ce += ce;
        s.counted++;
        s.top1_agree += has_teacher && arg == arg_t;
        if (!dh && !dw) continue;
        for (int64_t v = 0; v < V; v++) {
            double g = cew * (ps1[v] - (v == target));
            if (Dt) g += klw * T * (ps[v] - pt[v]);
            g *= p->grad_scale;
            for (int64_t d = 0; d < D; d++) {
                if (dh) dh[n * D + d] += g * p->w64[v * D + d];
                if (dw) dw[v * D + d] += g * p->h64[n * D + d];
            }
        }
    }
    *out = s;
    free(z), free(zt), free(ps), free(ps1), free(pt), free(os), free(ot);
}

static double reference_scaled_loss(void *ctx) {
    const Problem *p = ctx;
    RefSums s;
    reference(p, &s, NULL, NULL);
    return p->grad_scale * s.loss;
}

static double rel_diff(double a, double b) { return fabs(a - b) / fmax(fabs(b), 1e-30); }

/* The op's sums against the reference's; returns the largest relative error seen. */
static double check_sums(const char *what, LossSums got, RefSums want, int has_teacher) {
    double err = fmax(rel_diff(got.loss, want.loss), rel_diff(got.ce, want.ce));
    if (has_teacher) err = fmax(err, rel_diff(got.kl, want.kl));
    CHECK(err < 2e-6, "%s: sums rel error %.3g (loss %.9g vs %.9g, kl %.9g vs %.9g, ce %.9g vs %.9g)", what,
          err, got.loss, want.loss, got.kl, want.kl, got.ce, want.ce);
    if (!has_teacher) CHECK(got.kl == 0 && got.top1_agree == 0, "%s: no teacher, yet kl %g top1 %lld", what,
                            got.kl, (long long)got.top1_agree);
    CHECK(got.counted == want.counted, "%s: counted %lld, expected %lld", what, (long long)got.counted,
          (long long)want.counted);
    CHECK(got.top1_agree == want.top1_agree, "%s: top1_agree %lld, expected %lld", what,
          (long long)got.top1_agree, (long long)want.top1_agree);
    return err;
}

static double worst_sums_err = 0, worst_grad_err = 0, worst_fd_err = 0;

/* A case's divergence and teacher source: forward KL with the teacher's weights when zeroed. */
typedef struct {
    LossKind kind;
    float beta;
    int64_t k; /* > 0: the teacher's top-k instead of its weights */
} CaseLoss;

/* One configuration against the reference: sums; dh and dw against the analytic float64 gradient
 * (forward KL from the teacher's weights) and against finite differences when with_fd (keep those
 * problems small). */
static void check_case_kind(Backend *be, const char *what, int64_t N, int64_t D, int64_t Dt, int64_t V, float T,
                            float klw, float cew, int with_ignored, int64_t chunk, int with_fd, CaseLoss div) {
    Problem p = problem_make(N, D, Dt, V, 10 + (uint64_t)(N * 131 + D * 17 + V), with_ignored);
    p.cfg.temperature = T, p.cfg.kl_weight = klw, p.cfg.ce_weight = cew, p.cfg.chunk_tokens = chunk;
    p.cfg.kind = div.kind, p.cfg.jsd_beta = div.beta;
    if (div.k) problem_set_topk(&p, div.k);
    const int analytic = div.kind == LOSS_FORWARD_KL && div.k == 0;
    float *dh = test_alloc((size_t)(N * D) * sizeof(float));
    float *dw = test_alloc((size_t)(V * D) * sizeof(float));
    for (int64_t i = 0; i < N * D; i++) dh[i] = 1e3f; /* overwritten, including ignored rows */
    LossSums sums = {0};
    if (!CHECK_OK(run_op(be, &p, &sums, dh, dw))) goto out;

    RefSums want;
    double *dh_ref = test_alloc((size_t)(N * D) * sizeof(double));
    double *dw_ref = test_alloc((size_t)(V * D) * sizeof(double));
    reference(&p, &want, analytic ? dh_ref : NULL, analytic ? dw_ref : NULL);
    worst_sums_err = fmax(worst_sums_err, check_sums(what, sums, want, Dt > 0));
    if (analytic) {
        double e_dh = rel_error_f64(dh, dh_ref, N * D), e_dw = rel_error_f64(dw, dw_ref, V * D);
        worst_grad_err = fmax(worst_grad_err, fmax(e_dh, e_dw));
        CHECK(e_dh < 5e-6 && e_dw < 5e-6, "%s: dh rel error %.3g, dw rel error %.3g (analytic float64)", what,
              e_dh, e_dw);
    }
    for (int64_t n = 0; n < N; n++)
        if (p.targets[n] == IGNORE)
            for (int64_t d = 0; d < D; d++)
                if (dh[n * D + d] != 0) {
                    CHECK(0, "%s: dh of ignored token %lld is %g, expected 0", what, (long long)n, dh[n * D + d]);
                    break;
                }

    if (with_fd) {
        double *fd_dh = test_alloc((size_t)(N * D) * sizeof(double));
        double *fd_dw = test_alloc((size_t)(V * D) * sizeof(double));
        finite_difference(reference_scaled_loss, &p, p.h64, N * D, 1e-5, fd_dh);
        finite_difference(reference_scaled_loss, &p, p.w64, V * D, 1e-5, fd_dw);
        double f_dh = rel_error_f64(dh, fd_dh, N * D), f_dw = rel_error_f64(dw, fd_dw, V * D);
        worst_fd_err = fmax(worst_fd_err, fmax(f_dh, f_dw));
        CHECK(f_dh < 1e-5 && f_dw < 1e-5, "%s: dh rel error %.3g, dw rel error %.3g (finite differences)",
              what, f_dh, f_dw);
        free(fd_dh), free(fd_dw);
    }
    free(dh_ref), free(dw_ref);
out:
    free(dh), free(dw);
    problem_free(&p);
}

static void check_case(Backend *be, const char *what, int64_t N, int64_t D, int64_t Dt, int64_t V, float T,
                       float klw, float cew, int with_ignored, int64_t chunk, int with_fd) {
    check_case_kind(be, what, N, D, Dt, V, T, klw, cew, with_ignored, chunk, with_fd,
                    (CaseLoss){LOSS_FORWARD_KL, 0, 0});
}

static void test_against_reference(Backend *be) {
    /* finite differences: small problems, V = 11 */
    check_case(be, "fd T=2.5 mix", 5, 4, 6, 11, 2.5f, 0.7f, 0.3f, 1, 2, 1);
    check_case(be, "fd T=1 kl only", 5, 4, 4, 11, 1.0f, 1.0f, 0.0f, 1, 0, 1);
    check_case(be, "fd T=2.5 ce only", 5, 4, 3, 11, 2.5f, 0.0f, 1.0f, 0, 3, 1);
    check_case(be, "fd no teacher", 5, 4, 0, 11, 1.0f, 0.5f, 1.0f, 1, 0, 1);
    check_case(be, "fd N=1", 1, 4, 6, 11, 2.5f, 0.5f, 0.5f, 0, 0, 1);
    /* awkward sizes against the analytic float64 gradient, every chunking */
    const int64_t chunks[] = {0, 1, 3, 9, 50};
    for (int i = 0; i < 5; i++) {
        char what[96];
        snprintf(what, sizeof what, "V=37 Dt!=D chunk %lld", (long long)chunks[i]);
        check_case(be, what, 9, 8, 5, 37, 2.5f, 0.6f, 0.4f, 1, chunks[i], 0);
        snprintf(what, sizeof what, "V=37 T=1 chunk %lld", (long long)chunks[i]);
        check_case(be, what, 9, 6, 13, 37, 1.0f, 1.0f, 1.0f, 0, chunks[i], 0);
        snprintf(what, sizeof what, "V=37 no teacher chunk %lld", (long long)chunks[i]);
        check_case(be, what, 9, 7, 0, 37, 1.0f, 0.3f, 1.0f, 1, chunks[i], 0);
    }
    check_case(be, "N=1 V=37", 1, 16, 24, 37, 2.5f, 0.5f, 0.5f, 0, 0, 0);
    check_case(be, "larger V=1001", 33, 40, 56, 1001, 2.0f, 0.5f, 0.5f, 1, 7, 0);
}

/* dw accumulates: a call onto random dw adds the gradient; two calls from zero give twice one. */
static void test_accumulation(Backend *be) {
    Problem p = problem_make(7, 6, 5, 37, 300, 1);
    p.cfg.temperature = 2.5f, p.cfg.chunk_tokens = 3;
    const int64_t n_dw = p.V * p.D;
    float *dw_once = test_alloc((size_t)n_dw * sizeof(float));
    float *dw_twice = test_alloc((size_t)n_dw * sizeof(float));
    float *dw_onto = test_alloc((size_t)n_dw * sizeof(float));
    float *start = test_alloc((size_t)n_dw * sizeof(float));
    double *want = test_alloc((size_t)n_dw * sizeof(double));
    fill_normal(start, n_dw, 301, 1e-2f);
    memcpy(dw_onto, start, (size_t)n_dw * sizeof(float));
    LossSums once = {0}, twice = {0}, onto = {0};
    CHECK_OK(run_op(be, &p, &once, NULL, dw_once));
    CHECK_OK(run_op(be, &p, &twice, NULL, dw_twice));
    CHECK_OK(run_op(be, &p, &twice, NULL, dw_twice));
    CHECK_OK(run_op(be, &p, &onto, NULL, dw_onto));

    for (int64_t i = 0; i < n_dw; i++) want[i] = 2.0 * dw_once[i];
    double err = rel_error_f64(dw_twice, want, n_dw);
    CHECK(err < 1e-6, "dw after two calls vs twice one call: rel error %.3g", err);
    RefSums ref;
    memset(want, 0, (size_t)n_dw * sizeof(double));
    reference(&p, &ref, NULL, want);
    for (int64_t i = 0; i < n_dw; i++) want[i] += start[i];
    err = rel_error_f64(dw_onto, want, n_dw);
    CHECK(err < 1e-6, "dw accumulated onto a random start: rel error %.3g", err);
    CHECK(twice.counted == 2 * once.counted && rel_diff(twice.loss, 2 * once.loss) < 1e-12,
          "sums add up over calls: counted %lld vs 2 x %lld, loss %.9g vs 2 x %.9g", (long long)twice.counted,
          (long long)once.counted, twice.loss, once.loss);
    free(dw_once), free(dw_twice), free(dw_onto), free(start), free(want);
    problem_free(&p);
}

/* Without dh and dw only the sums are formed, and they are the same bits as with gradients. */
static void test_sums_only_and_all_ignored(Backend *be) {
    Problem p = problem_make(11, 8, 9, 37, 400, 1);
    p.cfg.temperature = 2.5f;
    float *dh = test_alloc((size_t)(p.N * p.D) * sizeof(float));
    float *dw = test_alloc((size_t)(p.V * p.D) * sizeof(float));
    LossSums with_grad = {0}, sums_only = {0};
    CHECK_OK(run_op(be, &p, &with_grad, dh, dw));
    CHECK_OK(run_op(be, &p, &sums_only, NULL, NULL));
    CHECK(memcmp(&with_grad, &sums_only, sizeof with_grad) == 0,
          "sums without gradients differ from sums with them: loss %.17g vs %.17g", sums_only.loss,
          with_grad.loss);

    for (int64_t n = 0; n < p.N; n++) p.targets[n] = IGNORE;
    for (int64_t i = 0; i < p.N * p.D; i++) dh[i] = 5.0f;
    memset(dw, 0, (size_t)(p.V * p.D) * sizeof(float));
    LossSums none = {0};
    CHECK_OK(run_op(be, &p, &none, dh, dw));
    int zero = none.loss == 0 && none.kl == 0 && none.ce == 0 && none.counted == 0 && none.top1_agree == 0;
    for (int64_t i = 0; i < p.N * p.D; i++) zero &= dh[i] == 0;
    for (int64_t i = 0; i < p.V * p.D; i++) zero &= dw[i] == 0;
    CHECK(zero, "all targets ignored: sums, dh and dw must be 0 (counted %lld, loss %g)",
          (long long)none.counted, none.loss);
    free(dh), free(dw);
    problem_free(&p);
}

/* The same call with 1, 2 and 3 threads gives the same bytes. The shapes include those where
 * OpenBLAS's own threading is not bitwise stable (one-row products, a long inner dimension). */
static void test_thread_count_independence(void) {
    Problem p = problem_make(70, 129, 65, 2003, 500, 1);
    p.cfg.temperature = 2.5f;
    const int64_t chunks[] = {0, 16, 1};
    const int64_t n_dh = p.N * p.D, n_dw = p.V * p.D;
    for (int c = 0; c < 3; c++) {
        p.cfg.chunk_tokens = chunks[c];
        float *dh[3], *dw[3];
        LossSums sums[3] = {{0}};
        for (int t = 0; t < 3; t++) {
            dh[t] = test_alloc((size_t)n_dh * sizeof(float));
            dw[t] = test_alloc((size_t)n_dw * sizeof(float));
            fill_normal(dw[t], n_dw, 501, 1e-2f);
            Backend *be = test_cpu_backend(t + 1);
            CHECK_OK(run_op(be, &p, &sums[t], dh[t], dw[t]));
            backend_destroy(be);
        }
        for (int t = 1; t < 3; t++) {
            int same = memcmp(dh[0], dh[t], (size_t)n_dh * sizeof(float)) == 0 &&
                       memcmp(dw[0], dw[t], (size_t)n_dw * sizeof(float)) == 0 &&
                       memcmp(&sums[0], &sums[t], sizeof sums[0]) == 0;
            CHECK(same, "chunk %lld: %d threads differ from 1 thread (dh rel %.3g, dw rel %.3g, loss %.17g vs %.17g)",
                  (long long)chunks[c], t + 1, rel_error_f32(dh[t], dh[0], n_dh), rel_error_f32(dw[t], dw[0], n_dw),
                  sums[t].loss, sums[0].loss);
        }
        for (int t = 0; t < 3; t++) free(dh[t]), free(dw[t]);
    }
    problem_free(&p);
}

static void test_bad_inputs(Backend *be) {
    Problem p = problem_make(6, 4, 5, 11, 600, 1);
    float *dh = test_alloc((size_t)(p.N * p.D) * sizeof(float));
    float *dw = test_alloc((size_t)(p.V * p.D) * sizeof(float));
    LossSums sums = {.loss = 1.5, .kl = 2.5, .ce = 3.5, .counted = 4, .top1_agree = 5};
    const LossSums before = sums;

    p.targets[3] = (int32_t)p.V;
    CHECK_ERR(run_op(be, &p, &sums, dh, dw), "token 3");
    p.targets[3] = -1;
    CHECK_ERR(run_op(be, &p, &sums, dh, dw), "target -1 of token 3");
    p.targets[3] = 0;

    LossConfig good = p.cfg;
    p.cfg.temperature = 0;
    CHECK_ERR(run_op(be, &p, &sums, dh, dw), "temperature");
    p.cfg.temperature = NAN;
    CHECK_ERR(run_op(be, &p, &sums, dh, dw), "temperature");
    p.cfg = good, p.cfg.kl_weight = -1;
    CHECK_ERR(run_op(be, &p, &sums, dh, dw), "kl_weight");
    p.cfg = good, p.cfg.ce_weight = INFINITY;
    CHECK_ERR(run_op(be, &p, &sums, dh, dw), "ce_weight");
    p.cfg = good, p.cfg.chunk_tokens = -2;
    CHECK_ERR(run_op(be, &p, &sums, dh, dw), "chunk_tokens");
    p.cfg = good;

    Tensor h = tensor_view(p.h, DT_F32, 2, (int64_t[]){p.N, p.D});
    Tensor w = tensor_view(p.w, DT_F32, 2, (int64_t[]){p.V, p.D});
    Tensor ht = tensor_view(p.ht, DT_F32, 2, (int64_t[]){p.N, p.Dt});
    Tensor wt = tensor_view(p.wt, DT_F32, 2, (int64_t[]){p.V, p.Dt});
    Tensor tg = tensor_view(p.targets, DT_I32, 1, (int64_t[]){p.N});
    Tensor tdh = tensor_view(dh, DT_F32, 2, (int64_t[]){p.N, p.D});
    Tensor tdw = tensor_view(dw, DT_F32, 2, (int64_t[]){p.V, p.D});
    Tensor wt_short = tensor_view(p.wt, DT_F32, 2, (int64_t[]){p.V - 1, p.Dt});
    Tensor wt_narrow = tensor_view(p.wt, DT_F32, 2, (int64_t[]){p.V, p.Dt - 1});
    Tensor dh_wrong = tensor_view(dh, DT_F32, 2, (int64_t[]){p.N, p.D + 1});
    Tensor tg_f32 = tensor_view(p.targets, DT_F32, 1, (int64_t[]){p.N});
    float gs = p.grad_scale;
    Status (*op)(Backend *, LossSums *, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, LossConfig,
                 float) = be->ops.lm_head_loss;
    CHECK_ERR(op(be, &sums, tdh, tdw, h, w, ht, wt_short, tg, p.cfg, gs), "lm_head_loss: wt has shape [10, 5]");
    CHECK_ERR(op(be, &sums, tdh, tdw, h, w, ht, wt_narrow, tg, p.cfg, gs), "wt has shape");
    CHECK_ERR(op(be, &sums, tdh, tdw, h, w, tensor_none(), wt, tg, p.cfg, gs), "ht is missing");
    CHECK_ERR(op(be, &sums, dh_wrong, tdw, h, w, ht, wt, tg, p.cfg, gs), "dh has shape");
    CHECK_ERR(op(be, &sums, tdh, tdw, h, w, ht, wt, tg_f32, p.cfg, gs), "targets has dtype");
    CHECK_ERR(op(be, NULL, tdh, tdw, h, w, ht, wt, tg, p.cfg, gs), "sums");
    CHECK_ERR(op(be, &sums, tdh, tdw, h, w, ht, wt, tg, p.cfg, NAN), "grad_scale");

    /* a NaN in a hidden state is named by its token, for the student and for the teacher */
    p.h[1 * p.D + 1] = NAN;
    CHECK_ERR(run_op(be, &p, &sums, dh, dw), "student logits of token 1 are not finite");
    p.h[1 * p.D + 1] = 0;
    /* an ignored token's hidden state would reach dw through a zero gradient: 0 * NaN */
    CHECK(p.targets[2] == IGNORE, "token 2 is ignored in this problem");
    p.h[2 * p.D + 3] = -INFINITY;
    CHECK_ERR(run_op(be, &p, &sums, dh, dw), "hidden state of token 2 (ignored) is not finite");
    p.h[2 * p.D + 3] = 0;
    p.ht[4 * p.Dt] = INFINITY;
    CHECK_ERR(run_op(be, &p, &sums, dh, dw), "teacher logits of token 4 are not finite");
    p.ht[4 * p.Dt] = 0;
    CHECK(memcmp(&sums, &before, sizeof sums) == 0, "a failed call must leave the sums as they were");
    CHECK_OK(run_op(be, &p, &sums, dh, dw));

    free(dh), free(dw);
    problem_free(&p);
}

static const struct {
    const char *name;
    LossKind kind;
    float beta;
} KINDS[] = {{"forward_kl", LOSS_FORWARD_KL, 0}, {"reverse_kl", LOSS_REVERSE_KL, 0}, {"jsd 0.5", LOSS_JSD, 0.5f},
             {"jsd 0.1", LOSS_JSD, 0.1f}, {"jsd 0.9", LOSS_JSD, 0.9f}};
enum { KIND_COUNT = sizeof KINDS / sizeof KINDS[0] };

/* Every divergence, from the teacher's weights and from its top-k (k = V, k = V - 1, small k, k = 1),
 * against the reference and finite differences. */
static void test_kinds_against_reference(Backend *be) {
    for (int i = 0; i < KIND_COUNT; i++) {
        char what[128];
        const LossKind kd = KINDS[i].kind;
        const float b = KINDS[i].beta;
#define CASE(label, N, D, Dt, V, T, klw, cew, ign, chunk, k)                                              \
    snprintf(what, sizeof what, "%s: %s", KINDS[i].name, label);                                     \
    check_case_kind(be, what, N, D, Dt, V, T, klw, cew, ign, chunk, 1, (CaseLoss){kd, b, k})
        CASE("fd T=2.5 mix", 5, 4, 6, 11, 2.5f, 0.7f, 0.3f, 1, 2, 0);
        CASE("fd T=1 divergence only", 5, 4, 4, 11, 1.0f, 1.0f, 0.0f, 1, 0, 0);
        CASE("fd V=37 T=2 chunk 3", 9, 8, 5, 37, 2.0f, 0.6f, 0.4f, 1, 3, 0);
        CASE("fd top-k k=V", 5, 4, 6, 11, 2.5f, 0.7f, 0.3f, 1, 2, 11);
        CASE("fd top-k k=V-1", 5, 4, 6, 11, 2.5f, 0.7f, 0.3f, 1, 0, 10);
        CASE("fd top-k k=3", 5, 4, 6, 11, 2.5f, 0.7f, 0.3f, 0, 0, 3);
        CASE("fd top-k k=1 divergence only", 5, 4, 6, 11, 1.0f, 1.0f, 0.0f, 1, 0, 1);
        CASE("fd top-k V=37 k=5 chunk 4", 9, 8, 5, 37, 1.5f, 0.5f, 0.5f, 1, 4, 5);
#undef CASE
        snprintf(what, sizeof what, "%s: V=1001 top-k k=20", KINDS[i].name);
        check_case_kind(be, what, 13, 24, 16, 1001, 2.0f, 0.5f, 0.5f, 1, 5, 0, (CaseLoss){kd, b, 20});
        snprintf(what, sizeof what, "%s: V=1001", KINDS[i].name);
        check_case_kind(be, what, 13, 24, 16, 1001, 2.0f, 0.5f, 0.5f, 1, 5, 0, (CaseLoss){kd, b, 0});
    }
}

/* The op's sums, dh and dw (each freshly allocated) on p. */
typedef struct {
    LossSums sums;
    float *dh, *dw;
} OpResult;

static OpResult op_result(Backend *be, const Problem *p) {
    OpResult r = {{0}, test_alloc((size_t)(p->N * p->D) * sizeof(float)),
                  test_alloc((size_t)(p->V * p->D) * sizeof(float))};
    CHECK_OK(run_op(be, p, &r.sums, r.dh, r.dw));
    return r;
}

/* a against b: the largest relative difference of the sums, dh and dw */
static double op_result_diff(const OpResult *a, const OpResult *b, const Problem *p) {
    double d = fmax(rel_diff(a->sums.loss, b->sums.loss), rel_diff(a->sums.kl, b->sums.kl));
    d = fmax(d, rel_diff(a->sums.ce, b->sums.ce));
    d = fmax(d, rel_error_f32(a->dh, b->dh, p->N * p->D));
    return fmax(d, rel_error_f32(a->dw, b->dw, p->V * p->D));
}

static void op_result_free(OpResult *r) { free(r->dh), free(r->dw); }

/* At k = V the top-k op is the full op: the same sums, dh and dw up to the rounding of the teacher's
 * log-probs (computed in f32 by the one, given rounded from float64 to the other), the ids in the
 * cache's order (by probability), not the vocabulary's. */
static void test_topk_at_full_vocabulary(Backend *be) {
    for (int i = 0; i < KIND_COUNT; i++) {
        Problem p = problem_make(17, 12, 9, 61, 700 + (uint64_t)i, 1);
        p.cfg.temperature = 1.7f, p.cfg.kind = KINDS[i].kind, p.cfg.jsd_beta = KINDS[i].beta, p.cfg.chunk_tokens = 5;
        OpResult full = op_result(be, &p);
        problem_set_topk(&p, p.V);
        OpResult topk = op_result(be, &p);
        double d = op_result_diff(&topk, &full, &p);
        CHECK(d < 2e-6, "%s: top-k at k = V vs the full op: rel difference %.3g (loss %.9g vs %.9g)", KINDS[i].name,
              d, topk.sums.loss, full.sums.loss);
        CHECK(topk.sums.counted == full.sums.counted && topk.sums.top1_agree == full.sums.top1_agree,
              "%s: top-k at k = V: counted %lld/%lld, top1 %lld/%lld", KINDS[i].name, (long long)topk.sums.counted,
              (long long)full.sums.counted, (long long)topk.sums.top1_agree, (long long)full.sums.top1_agree);
        op_result_free(&full), op_result_free(&topk);
        problem_free(&p);
    }
}

/* The temperature divides both models' logits once and the divergence is scaled by T^2 once: the
 * op's divergence is the reference's at T and far from the reference's at T^2 (logits divided
 * twice), and its loss is kl_weight T^2 D + ce_weight CE of its own sums. */
static void test_temperature_applied_once(Backend *be) {
    const float T = 2.0f;
    for (int i = 0; i < KIND_COUNT; i++)
        for (int64_t k = 0; k <= 4; k += 4) {
            Problem p = problem_make(9, 8, 6, 37, 800 + (uint64_t)i, 0);
            p.cfg.temperature = T, p.cfg.kind = KINDS[i].kind, p.cfg.jsd_beta = KINDS[i].beta;
            p.cfg.kl_weight = 0.6f, p.cfg.ce_weight = 0.4f;
            if (k) problem_set_topk(&p, k);
            LossSums got = {0};
            CHECK_OK(run_op(be, &p, &got, NULL, NULL));
            RefSums once, twice;
            reference(&p, &once, NULL, NULL);
            Problem q = p;
            q.cfg.temperature = T * T;
            if (k) {
                /* the cache's log-probs divided by T once more: what a second division would give */
                q.topk_logprobs = NULL, q.topk_ids = NULL;
                problem_set_topk(&q, k);
            }
            reference(&q, &twice, NULL, NULL);
            const double want_loss = 0.6 * T * T * got.kl + 0.4 * got.ce;
            CHECK(rel_diff(got.kl, once.kl) < 2e-6 && rel_diff(got.kl, twice.kl) > 1e-2,
                  "%s k=%lld: divergence %.9g, reference at T %.9g, at T^2 %.9g", KINDS[i].name, (long long)k, got.kl,
                  once.kl, twice.kl);
            CHECK(rel_diff(got.loss, want_loss) < 1e-6, "%s k=%lld: loss %.9g, expected 0.6 T^2 D + 0.4 CE = %.9g",
                  KINDS[i].name, (long long)k, got.loss, want_loss);
            if (k) free(q.topk_logprobs), free(q.topk_ids);
            problem_free(&p);
        }
}

/* The chunk size changes nothing but the order of float additions: every chunking of one problem
 * gives the same sums, dh and dw to float rounding, for every divergence and both teacher sources. */
static void test_chunking_independence(Backend *be) {
    const int64_t chunks[] = {1, 2, 5, 23, 1000};
    for (int i = 0; i < KIND_COUNT; i++)
        for (int64_t k = 0; k <= 6; k += 6) {
            Problem p = problem_make(23, 9, 7, 53, 900 + (uint64_t)i, 1);
            p.cfg.temperature = 1.5f, p.cfg.kind = KINDS[i].kind, p.cfg.jsd_beta = KINDS[i].beta;
            if (k) problem_set_topk(&p, k);
            OpResult whole = op_result(be, &p); /* chunk_tokens 0: one chunk at this size */
            for (int c = 0; c < 5; c++) {
                p.cfg.chunk_tokens = chunks[c];
                OpResult part = op_result(be, &p);
                double d = op_result_diff(&part, &whole, &p);
                CHECK(d < 1e-6 && part.sums.counted == whole.sums.counted &&
                          part.sums.top1_agree == whole.sums.top1_agree,
                      "%s k=%lld: chunk_tokens %lld vs one chunk: rel difference %.3g", KINDS[i].name, (long long)k,
                      (long long)chunks[c], d);
                op_result_free(&part);
            }
            op_result_free(&whole);
            problem_free(&p);
        }
}

/* JSD(beta) / beta -> KL(p_t || p_s) as beta -> 0 and JSD(beta) / (1 - beta) -> KL(p_s || p_t) as
 * beta -> 1, the error shrinking with the distance to the limit. */
static void test_jsd_beta_limits(Backend *be) {
    Problem p = problem_make(9, 8, 6, 37, 1000, 1);
    p.cfg.temperature = 1.5f, p.cfg.kl_weight = 1, p.cfg.ce_weight = 0;
    for (int64_t k = 0; k <= 5; k += 5) {
        if (k) problem_set_topk(&p, k);
        LossSums fwd = {0}, rev = {0};
        p.cfg.kind = LOSS_FORWARD_KL;
        CHECK_OK(run_op(be, &p, &fwd, NULL, NULL));
        p.cfg.kind = LOSS_REVERSE_KL;
        CHECK_OK(run_op(be, &p, &rev, NULL, NULL));
        p.cfg.kind = LOSS_JSD;
        double err_fwd[2], err_rev[2];
        const float betas[2] = {0.1f, 0.01f};
        for (int j = 0; j < 2; j++) {
            LossSums lo = {0}, hi = {0};
            p.cfg.jsd_beta = betas[j];
            CHECK_OK(run_op(be, &p, &lo, NULL, NULL));
            p.cfg.jsd_beta = 1 - betas[j];
            CHECK_OK(run_op(be, &p, &hi, NULL, NULL));
            err_fwd[j] = rel_diff(lo.kl / betas[j], fwd.kl);
            err_rev[j] = rel_diff(hi.kl / (double)(1 - p.cfg.jsd_beta), rev.kl);
        }
        CHECK(err_fwd[1] < 0.05 && err_fwd[1] < err_fwd[0] / 3,
              "k=%lld: JSD(beta)/beta vs forward KL: rel error %.3g at beta 0.1, %.3g at 0.01", (long long)k,
              err_fwd[0], err_fwd[1]);
        CHECK(err_rev[1] < 0.05 && err_rev[1] < err_rev[0] / 3,
              "k=%lld: JSD(beta)/(1-beta) vs reverse KL: rel error %.3g at beta 0.9, %.3g at 0.99", (long long)k,
              err_rev[0], err_rev[1]);
    }
    problem_free(&p);
}

/* A student so sure of the teacher's listed ids that the rest of its row sums below 2^-64 of its
 * max (those ids' logits lifted by 100 through one hidden unit, their spread kept): the tail's log
 * comes from the tail's own max, and the divergence and its gradient match the reference. */
static void test_topk_vanishing_student_tail(Backend *be) {
    const int32_t listed[4] = {30, 3, 20, 11};
    for (int i = 0; i < KIND_COUNT; i++) {
        Problem p = problem_make(5, 4, 6, 37, 1200 + (uint64_t)i, 0);
        p.cfg.kl_weight = 1, p.cfg.ce_weight = 0, p.cfg.kind = KINDS[i].kind, p.cfg.jsd_beta = KINDS[i].beta;
        const int64_t K = 4, V = p.V, D = p.D;
        for (int64_t n = 0; n < p.N; n++) p.h[n * D] = 1.0f, p.h64[n * D] = 1.0;
        for (int64_t j = 0; j < K; j++) p.w[listed[j] * D] = 100.0f, p.w64[listed[j] * D] = 100.0;
        problem_set_topk(&p, V); /* the teacher's log-probs of every id, to pick the listed ones from */
        float *lp = test_alloc((size_t)(p.N * K) * sizeof(float));
        int32_t *ids = test_alloc((size_t)(p.N * K) * sizeof(int32_t));
        for (int64_t n = 0; n < p.N; n++)
            for (int64_t j = 0; j < K; j++) {
                ids[n * K + j] = listed[j];
                for (int64_t m = 0; m < V; m++)
                    if (p.topk_ids[n * V + m] == listed[j]) lp[n * K + j] = p.topk_logprobs[n * V + m];
            }
        free(p.topk_logprobs), free(p.topk_ids);
        p.topk_logprobs = lp, p.topk_ids = ids, p.k = K;
        /* the student's tail relative to its max, in float64 */
        double largest_share = 0;
        for (int64_t n = 0; n < p.N; n++) {
            double z[37], top = -INFINITY, rest = 0;
            for (int64_t v = 0; v < V; v++) {
                z[v] = 0;
                for (int64_t d = 0; d < D; d++) z[v] += p.w64[v * D + d] * p.h64[n * D + d];
            }
            for (int64_t j = 0; j < K; j++) top = fmax(top, z[listed[j]]), z[listed[j]] = -INFINITY;
            for (int64_t v = 0; v < V; v++) rest += exp(z[v] - top);
            largest_share = fmax(largest_share, rest);
        }
        CHECK(largest_share < 0x1p-64, "%s: the student's tail should sum below 2^-64 of its max, got %.3g",
              KINDS[i].name, largest_share);

        float *dh = test_alloc((size_t)(p.N * D) * sizeof(float)), *dw = test_alloc((size_t)(V * D) * sizeof(float));
        LossSums got = {0};
        RefSums want;
        CHECK_OK(run_op(be, &p, &got, dh, dw));
        reference(&p, &want, NULL, NULL);
        CHECK(isfinite(got.kl) && rel_diff(got.kl, want.kl) < 1e-5, "%s: vanishing tail: divergence %.9g, reference %.9g",
              KINDS[i].name, got.kl, want.kl);
        double *fd_dh = test_alloc((size_t)(p.N * D) * sizeof(double));
        double *fd_dw = test_alloc((size_t)(V * D) * sizeof(double));
        finite_difference(reference_scaled_loss, &p, p.h64, p.N * D, 1e-6, fd_dh);
        finite_difference(reference_scaled_loss, &p, p.w64, V * D, 1e-6, fd_dw);
        double f_dh = rel_error_f64(dh, fd_dh, p.N * D), f_dw = rel_error_f64(dw, fd_dw, V * D);
        /* dh's lifting unit is 100 x a sum over the row of gradient terms that cancel to nearly 0
         * (a softmax's gradient sums to 0), each carrying the f32 rounding of logits near 100
         * (6e-6): 1e-3 for this problem, where the others hold 1e-5 */
        CHECK(f_dh < 1e-3 && f_dw < 1e-4, "%s: vanishing tail: dh rel error %.3g, dw rel error %.3g (finite differences)",
              KINDS[i].name, f_dh, f_dw);
        free(dh), free(dw), free(fd_dh), free(fd_dw);
        problem_free(&p);
    }
}

/* Configs and top-k teachers every backend refuses, each by name; the sums stay as they were. */
static void test_bad_configs_and_topk(Backend *be) {
    Problem p = problem_make(6, 4, 5, 11, 1100, 1);
    float *dh = test_alloc((size_t)(p.N * p.D) * sizeof(float));
    float *dw = test_alloc((size_t)(p.V * p.D) * sizeof(float));
    LossSums sums = {.loss = 1.5, .kl = 2.5, .ce = 3.5, .counted = 4, .top1_agree = 5};
    const LossSums before = sums;
    const LossConfig good = p.cfg;
    for (int topk = 0; topk < 2; topk++) {
        if (topk) problem_set_topk(&p, 4);
        p.cfg.kind = (LossKind)3;
        CHECK_ERR(run_op(be, &p, &sums, dh, dw), "unknown loss kind 3");
        p.cfg = good, p.cfg.kind = LOSS_JSD;
        const float bad_betas[] = {0.0f, 1.0f, -0.25f, 1.5f, NAN};
        for (int i = 0; i < 5; i++) {
            p.cfg.jsd_beta = bad_betas[i];
            CHECK_ERR(run_op(be, &p, &sums, dh, dw), "jsd_beta must lie in (0, 1)");
        }
        p.cfg.jsd_beta = 0.5f;
        CHECK_OK(run_op(be, &p, &sums, NULL, NULL));
        p.cfg = good;
    }
    sums = before;
    const int64_t k = p.k;
    int32_t *ids = p.topk_ids;
    float *lp = p.topk_logprobs;
    int32_t *ids0 = test_alloc((size_t)(p.N * k) * sizeof(int32_t));
    float *lp0 = test_alloc((size_t)(p.N * k) * sizeof(float));
    memcpy(ids0, ids, (size_t)(p.N * k) * sizeof(int32_t));
    memcpy(lp0, lp, (size_t)(p.N * k) * sizeof(float));
#define RESTORE() memcpy(ids, ids0, (size_t)(p.N * k) * sizeof(int32_t)), memcpy(lp, lp0, (size_t)(p.N * k) * sizeof(float))
    ids[1 * k + 2] = (int32_t)p.V;
    CHECK_ERR(run_op(be, &p, &sums, dh, dw), "teacher_ids: id 11 of token 1 (position 2) is outside the vocabulary");
    ids[1 * k + 2] = -1;
    CHECK_ERR(run_op(be, &p, &sums, dh, dw), "id -1 of token 1");
    RESTORE();
    ids[3 * k + 3] = ids[3 * k + 1];
    char needle[128];
    snprintf(needle, sizeof needle, "token 3 lists id %d twice (positions 1 and 3)", ids[3 * k + 1]);
    CHECK_ERR(run_op(be, &p, &sums, dh, dw), needle);
    RESTORE();
    lp[4 * k + 1] = INFINITY;
    CHECK_ERR(run_op(be, &p, &sums, dh, dw), "teacher_logprobs of token 4 (position 1) is inf");
    lp[4 * k + 1] = -INFINITY;
    CHECK_ERR(run_op(be, &p, &sums, dh, dw), "must be finite");
    RESTORE();
    lp[5 * k] = 0, lp[5 * k + 1] = -0.5f; /* logits where log-probs belong: a mass above 1.6 */
    CHECK_ERR(run_op(be, &p, &sums, dh, dw), "teacher_logprobs of token 5 hold a probability mass of");
    RESTORE();
    CHECK(memcmp(&sums, &before, sizeof sums) == 0, "a failed call must leave the sums as they were");
    /* an ignored token's teacher row is not read */
    CHECK(p.targets[2] == IGNORE, "token 2 is ignored in this problem");
    ids[2 * k + 0] = 99, ids[2 * k + 1] = 99, lp[2 * k] = NAN;
    CHECK_OK(run_op(be, &p, &sums, NULL, NULL));
    RESTORE();
#undef RESTORE
    free(ids0), free(lp0);
    sums = before;

    Tensor h = tensor_view(p.h, DT_F32, 2, (int64_t[]){p.N, p.D});
    Tensor w = tensor_view(p.w, DT_F32, 2, (int64_t[]){p.V, p.D});
    Tensor tg = tensor_view(p.targets, DT_I32, 1, (int64_t[]){p.N});
    Tensor tdh = tensor_view(dh, DT_F32, 2, (int64_t[]){p.N, p.D});
    Tensor tdw = tensor_view(dw, DT_F32, 2, (int64_t[]){p.V, p.D});
    float *wide_lp = test_alloc((size_t)(p.N * (p.V + 1)) * sizeof(float));
    int32_t *wide_ids = test_alloc((size_t)(p.N * (p.V + 1)) * sizeof(int32_t));
    for (int64_t i = 0; i < p.N * (p.V + 1); i++) wide_lp[i] = -5, wide_ids[i] = (int32_t)(i % (p.V + 1));
    Tensor lp_wide = tensor_view(wide_lp, DT_F32, 2, (int64_t[]){p.N, p.V + 1});
    Tensor ids_wide = tensor_view(wide_ids, DT_I32, 2, (int64_t[]){p.N, p.V + 1});
    Tensor lp_t = tensor_view(lp, DT_F32, 2, (int64_t[]){p.N, k});
    Tensor ids_t = tensor_view(ids, DT_I32, 2, (int64_t[]){p.N, k});
    Tensor ids_short = tensor_view(ids, DT_I32, 2, (int64_t[]){p.N, k - 1});
    Tensor ids_f32 = tensor_view(ids, DT_F32, 2, (int64_t[]){p.N, k});
    float gs = p.grad_scale;
    CHECK_ERR(be->ops.lm_head_loss_topk(be, &sums, tdh, tdw, h, w, lp_wide, ids_wide, tg, p.cfg, gs),
              "lm_head_loss_topk: teacher top-k of 12 ids per token: k must lie in [1, vocabulary size 11]");
    CHECK_ERR(be->ops.lm_head_loss_topk(be, &sums, tdh, tdw, h, w, lp_t, ids_short, tg, p.cfg, gs),
              "teacher_ids has shape");
    CHECK_ERR(be->ops.lm_head_loss_topk(be, &sums, tdh, tdw, h, w, lp_t, ids_f32, tg, p.cfg, gs),
              "teacher_ids has dtype");
    CHECK(memcmp(&sums, &before, sizeof sums) == 0, "a failed call must leave the sums as they were");
    CHECK_OK(be->ops.lm_head_loss_topk(be, &sums, tdh, tdw, h, w, lp_t, ids_t, tg, p.cfg, gs));
    free(wide_lp), free(wide_ids), free(dh), free(dw);
    problem_free(&p);
}

int main(void) {
    Backend *be = test_cpu_backend(0);
    test_against_reference(be);
    test_accumulation(be);
    test_sums_only_and_all_ignored(be);
    test_bad_inputs(be);
    test_kinds_against_reference(be);
    test_topk_at_full_vocabulary(be);
    test_temperature_applied_once(be);
    test_chunking_independence(be);
    test_jsd_beta_limits(be);
    test_topk_vanishing_student_tail(be);
    test_bad_configs_and_topk(be);
    backend_destroy(be);
    test_thread_count_independence();
    printf("lm_head_loss: worst rel error: sums %.3g, gradients vs float64 %.3g, vs finite differences %.3g\n",
           worst_sums_err, worst_grad_err, worst_fd_err);
    return test_finish("test_lm_head_loss");
}
