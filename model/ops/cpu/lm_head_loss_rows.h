/* The per-token rows of the CPU's fused LM-head loss, shared by its two teacher sources (the
 * teacher's weights, lm_head_loss.c; the teacher's cached top-k, lm_head_loss_topk.c). */
#pragma once

#include <stdint.h>

#include "core/backend.h"
#include "model/ops/loss_divergence.h"

/* What went wrong in a row, reported after the parallel loop (errorf's message is per thread). */
typedef enum { ROW_OK, ROW_STUDENT_NOT_FINITE, ROW_TEACHER_NOT_FINITE, ROW_LOSS_NOT_FINITE } RowFault;

typedef struct {
    float loss, kl, ce;
    uint8_t counted, top1_agree, fault;
} RowLoss;

/* Per-thread rows of V floats: exponentials of the student at temperature 1 (s1), of the student at
 * T (sT, unused when T = 1), of the teacher at T (t), the divergence's terms (kl) and h (h); and k
 * floats (top) for the top-k teacher's outcomes. */
typedef struct {
    float *s1, *sT, *t, *kl, *h, *top;
} RowScratch;

/* The loss's parameters for every row of one call. */
typedef struct {
    LossConfig cfg;
    Divergence div;
    float grad_scale;
    int grad_wanted;
} RowParams;

/* Max and argmax (lowest index on ties) of a row; 0 when some value is NaN or Inf. */
int cpu_loss_row_max(const float *x, int64_t V, float *max_out, int64_t *argmax_out);

/* e[v] = exp((x[v] - max) / T); returns the sum of e (cpu_sum's order). */
float cpu_loss_row_exp(float *e, const float *x, int64_t V, float max, float T);

/* One token's terms with the teacher given by its top-k: logprobs[k] at ids[k]. z[V] holds the
 * student's logits, overwritten by d(grad_scale * loss)/dz when p.grad_wanted. */
RowLoss cpu_loss_row_topk(float *z, const float *logprobs, const int32_t *ids, int64_t k, int64_t V,
                          int32_t target, const RowParams *p, RowScratch e);

/* lm_head_loss_topk's checks of the teacher's rows (those of counted tokens): ids in range and
 * distinct, log-probs finite and of total mass at most 1 (to rounding). */
Status cpu_loss_check_topk_teacher(const char *op, const float *logprobs, const int32_t *ids, int64_t N,
                                   int64_t k, int64_t V, const int32_t *targets, int32_t ignore_index);
