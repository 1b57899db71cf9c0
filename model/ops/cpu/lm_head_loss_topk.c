/* The CPU's loss rows with the teacher given by its cached top-k: the divergence over the k ids and
 * one tail outcome holding each model's remaining mass, and the checks of the teacher's rows. */
#include "cpu_ops.h"
#include "lm_head_loss_rows.h"
#include "vector_math.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A student tail sum (relative to the row's max) below this is recomputed relative to the tail's
 * own max: its terms would be near or in the subnormal range, and it may even be 0. */
#define TAIL_SUM_MIN 0x1p-64f

/* How far the teacher's top-k mass may exceed 1 before its log-probs are refused as not normalised:
 * above the rounding of f32 log-softmax (about 1e-6) and of log-probs stored in f16 (2^-11 relative
 * each, a few 1e-3 of mass at a high entropy), far below the mass of logits passed by mistake. */
#define TEACHER_MASS_SLACK 1e-2

/* The student's mass outside the top-k, as log P_tail, from the sum of its exponentials over those
 * tokens (positives only, no 1 - sum cancellation). On return tail_e[v] / *tail_sum is
 * p_v / P_tail for every token v outside the top-k: tail_e is eT itself, or e.kl holding the
 * exponentials relative to the tail's own max when the sum underflowed relative to the row's. */
static float student_log_tail(float *z, float *eT, const int32_t *ids, int64_t k, int64_t V, float z_max, float T,
                              float log_sum_t, RowScratch e, const float **tail_e, float *tail_sum) {
    for (int64_t i = 0; i < k; i++) {
        e.top[i] = eT[ids[i]];
        eT[ids[i]] = 0.0f;
    }
    float sum = cpu_sum(eT, V);
    for (int64_t i = 0; i < k; i++) eT[ids[i]] = e.top[i];
    float shift = z_max;
    *tail_e = eT;
    if (!(sum >= TAIL_SUM_MIN)) {
        for (int64_t i = 0; i < k; i++) {
            e.top[i] = z[ids[i]];
            z[ids[i]] = -INFINITY;
        }
        shift = -INFINITY;
        for (int64_t v = 0; v < V; v++) shift = z[v] > shift ? z[v] : shift;
        for (int64_t v = 0; v < V; v++) e.kl[v] = cpu_expf((z[v] - shift) / T);
        for (int64_t i = 0; i < k; i++) z[ids[i]] = e.top[i];
        sum = cpu_sum(e.kl, V);
        *tail_e = e.kl;
    }
    *tail_sum = sum;
    return (shift - z_max) / T + logf(sum) - log_sum_t;
}

/* The teacher's mass outside its top-k, 1 - sum exp(logprobs), as -expm1(logsumexp) in double:
 * exact to rounding even when the top-k hold nearly all of it, and never below the floor. */
static double teacher_tail(const float *logprobs, int64_t k) {
    double m = logprobs[0];
    for (int64_t i = 1; i < k; i++) m = logprobs[i] > m ? logprobs[i] : m;
    double s = 0;
    for (int64_t i = 0; i < k; i++) s += exp((double)logprobs[i] - m);
    double tail = -expm1(m + log(s));
    return tail > LOSS_TEACHER_TAIL_MIN ? tail : LOSS_TEACHER_TAIL_MIN;
}

RowLoss cpu_loss_row_topk(float *z, const float *logprobs, const int32_t *ids, int64_t k, int64_t V,
                          int32_t target, const RowParams *rp, RowScratch e) {
    RowLoss r = {0};
    const LossConfig cfg = rp->cfg;
    if (target == cfg.ignore_index) {
        if (rp->grad_wanted) memset(z, 0, (size_t)V * sizeof(float));
        return r;
    }
    r.counted = 1;
    const float T = cfg.temperature;

    float z_max;
    int64_t z_argmax;
    if (!cpu_loss_row_max(z, V, &z_max, &z_argmax)) {
        r.fault = ROW_STUDENT_NOT_FINITE;
        return r;
    }
    const float sum1 = cpu_loss_row_exp(e.s1, z, V, z_max, 1.0f);
    float *eT = T == 1.0f ? e.s1 : e.sT;
    const float sum_t = T == 1.0f ? sum1 : cpu_loss_row_exp(e.sT, z, V, z_max, T);
    const float log_sum_t = logf(sum_t), inv_sum_t = 1.0f / sum_t;
    r.ce = logf(sum1) - (z[target] - z_max);

    int64_t best = 0;
    for (int64_t i = 1; i < k; i++) best = logprobs[i] > logprobs[best] ? i : best;
    r.top1_agree = ids[best] == z_argmax;

    /* The tail outcome exists only when some token is outside the top-k: at k = V the divergence
     * is the full one, term for term. */
    const int has_tail = k < V;
    const float *tail_e = eT;
    float tail_sum = 1.0f, h_tail = 0.0f;
    double kl = 0, h_sum = 0;
    if (has_tail) {
        const float log_p_tail = student_log_tail(z, eT, ids, k, V, z_max, T, log_sum_t, e, &tail_e, &tail_sum);
        const double q_tail = teacher_tail(logprobs, k);
        const DivergenceTerm d = divergence_term(rp->div, expf(log_p_tail), log_p_tail, (float)q_tail,
                                                 (float)log(q_tail));
        kl += d.term;
        h_sum += d.h;
        h_tail = d.h;
    }
    for (int64_t i = 0; i < k; i++) {
        const int32_t v = ids[i];
        const DivergenceTerm d = divergence_term(rp->div, eT[v] * inv_sum_t, (z[v] - z_max) / T - log_sum_t,
                                                 expf(logprobs[i]), logprobs[i]);
        kl += d.term;
        h_sum += d.h;
        e.top[i] = d.h;
    }
    r.kl = (float)kl;
    r.loss = cfg.kl_weight * T * T * r.kl + cfg.ce_weight * r.ce;
    if (!isfinite(r.loss)) {
        r.fault = ROW_LOSS_NOT_FINITE;
        return r;
    }

    if (rp->grad_wanted) {
        /* dD/du_v = (p_v / P_o(v)) h_o(v) - p_v sum h (loss_divergence.h): the tail's share for every
         * token first, then the k ids' own. */
        const float g_kl = rp->grad_scale * cfg.kl_weight * T, g_ce = rp->grad_scale * cfg.ce_weight;
        const float inv_sum1 = 1.0f / sum1, inv_tail_sum = 1.0f / tail_sum, hs = (float)h_sum;
        for (int64_t v = 0; v < V; v++)
            z[v] = g_ce * (e.s1[v] * inv_sum1) +
                   g_kl * (tail_e[v] * inv_tail_sum * h_tail - eT[v] * inv_sum_t * hs);
        for (int64_t i = 0; i < k; i++) {
            const int32_t v = ids[i];
            z[v] = g_ce * (e.s1[v] * inv_sum1) + g_kl * (e.top[i] - eT[v] * inv_sum_t * hs);
        }
        z[target] -= g_ce;
    }
    return r;
}

Status cpu_loss_check_topk_teacher(const char *op, const float *logprobs, const int32_t *ids, int64_t N,
                                   int64_t k, int64_t V, const int32_t *targets, int32_t ignore_index) {
    uint8_t *seen = calloc((size_t)V, 1);
    if (!seen) return errorf("%s: out of memory checking the teacher's ids (%lld bytes)", op, (long long)V);
    Status st = STATUS_OK;
    for (int64_t n = 0; n < N && st == STATUS_OK; n++) {
        if (targets[n] == ignore_index) continue;
        const int32_t *row = ids + n * k;
        const float *lp = logprobs + n * k;
        double mass = 0;
        int64_t i = 0;
        for (; i < k; i++) {
            if (row[i] < 0 || row[i] >= V) {
                st = errorf("%s: teacher_ids: id %d of token %lld (position %lld) is outside the vocabulary "
                            "[0, %lld)", op, row[i], (long long)n, (long long)i, (long long)V);
                break;
            }
            if (seen[row[i]]) {
                int64_t first = 0;
                while (row[first] != row[i]) first++;
                st = errorf("%s: teacher_ids: token %lld lists id %d twice (positions %lld and %lld); the "
                            "top-k ids must be distinct", op, (long long)n, row[i], (long long)first,
                            (long long)i);
                break;
            }
            seen[row[i]] = 1;
            if (!isfinite(lp[i])) {
                st = errorf("%s: teacher_logprobs of token %lld (position %lld) is %g: log-probs must be finite",
                            op, (long long)n, (long long)i, lp[i]);
                break;
            }
            mass += exp((double)lp[i]);
        }
        for (int64_t j = 0; j < i && j < k; j++) seen[row[j]] = 0;
        if (st == STATUS_OK && mass > 1.0 + TEACHER_MASS_SLACK)
            st = errorf("%s: teacher_logprobs of token %lld hold a probability mass of %.6g > 1: they are not "
                        "log-probs normalised over the vocabulary", op, (long long)n, mass);
    }
    free(seen);
    return st;
}
