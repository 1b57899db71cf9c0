/* The distillation divergences of the fused LM-head loss (forward KL, reverse KL, generalized JSD),
 * one outcome at a time, written once for the CPU ops and the CUDA kernels alike. */
#pragma once

#include <math.h>

#include "core/backend.h"

#ifdef __CUDACC__
#define LOSS_HD __host__ __device__
#else
#define LOSS_HD
#endif

/* The divergence's constants, taken once per call: the JSD's mixture weights in log space. */
typedef struct {
    LossKind kind;
    float beta, log_beta, log_1m_beta;
} Divergence;

static inline Divergence divergence_of(LossConfig cfg) {
    Divergence d = {cfg.kind, 0.0f, 0.0f, 0.0f};
    if (cfg.kind == LOSS_JSD) {
        d.beta = cfg.jsd_beta;
        d.log_beta = (float)log((double)cfg.jsd_beta);
        d.log_1m_beta = (float)log1p(-(double)cfg.jsd_beta);
    }
    return d;
}

/* The vocabulary is split into outcomes (one per token, or the top-k tokens and a tail); P_j, Q_j
 * are the student's and the teacher's probabilities of outcome j. Each function below gives
 * outcome j's term (D is their sum) and h_j = dD/d(log P_j), the teacher held fixed. With u = z / T
 * the student's tempered logits and o(v) the outcome of token v, the chain rule through the
 * softmax gives
 *     dD/du_v = (p_v / P_o(v)) h_o(v) - p_v sum_j h_j,
 * where p_v / P_o(v) = 1 for a one-token outcome. Every log passed in is finite (computed from
 * logits in log space, or clamped), so a vanishing probability contributes 0 and never 0 * inf. */
typedef struct {
    float term, h;
} DivergenceTerm;

/* KL(Q || P): Q (log Q - log P); h = -Q. */
static inline LOSS_HD DivergenceTerm divergence_forward_kl(float p, float log_p, float q, float log_q) {
    (void)p;
    DivergenceTerm r = {q * (log_q - log_p), -q};
    return r;
}

/* KL(P || Q): P (log P - log Q); h = P (log P - log Q + 1). */
static inline LOSS_HD DivergenceTerm divergence_reverse_kl(float p, float log_p, float q, float log_q) {
    (void)q;
    const float t = p * (log_p - log_q);
    DivergenceTerm r = {t, t + p};
    return r;
}

/* beta KL(Q || M) + (1 - beta) KL(P || M), M = beta Q + (1 - beta) P, log M by log-add-exp of the
 * finite logs (M itself can underflow); h = (1 - beta) P (log P - log M): the terms through M
 * cancel, since d/dP of beta Q log M + (1 - beta) P log M is (1 - beta) (log M + 1). */
static inline LOSS_HD DivergenceTerm divergence_jsd(Divergence d, float p, float log_p, float q, float log_q) {
    const float a = d.log_beta + log_q, b = d.log_1m_beta + log_p;
    const float log_m = fmaxf(a, b) + log1pf(expf(-fabsf(a - b)));
    const float hp = (1.0f - d.beta) * p * (log_p - log_m);
    DivergenceTerm r = {d.beta * q * (log_q - log_m) + hp, hp};
    return r;
}

static inline LOSS_HD DivergenceTerm divergence_term(Divergence d, float p, float log_p, float q, float log_q) {
    if (d.kind == LOSS_REVERSE_KL) return divergence_reverse_kl(p, log_p, q, log_q);
    if (d.kind == LOSS_JSD) return divergence_jsd(d, p, log_p, q, log_q);
    return divergence_forward_kl(p, log_p, q, log_q);
}
