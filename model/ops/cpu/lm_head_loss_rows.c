/* The two reductions every row of the CPU's fused LM-head loss starts with, whichever the teacher
 * (lm_head_loss.c's logits or lm_head_loss_topk.c's cached top-k): the row's max and its exponentials. */
#include "lm_head_loss_rows.h"
#include "vector_math.h"

#include <float.h>
#include <math.h>
#include <stdint.h>

/* Lanes of the max reduction: independent running maxima, so that no compare waits on the one
 * before it (the scalar form is a chain through one variable). */
enum { MAX_LANES = 16 };

int cpu_loss_row_max(const float *restrict x, int64_t V, float *max_out, int64_t *argmax_out) {
    float lane[MAX_LANES];
    int finite = 1;
    int64_t v = 0;
    for (int l = 0; l < MAX_LANES; l++) lane[l] = x[0];
    for (; v + MAX_LANES <= V; v += MAX_LANES)
        for (int l = 0; l < MAX_LANES; l++) {
            float xv = x[v + l];
            finite &= fabsf(xv) <= FLT_MAX;
            lane[l] = xv > lane[l] ? xv : lane[l];
        }
    float max = x[0];
    for (; v < V; v++) {
        finite &= fabsf(x[v]) <= FLT_MAX;
        max = x[v] > max ? x[v] : max;
    }
    if (!finite) return 0;
    for (int l = 0; l < MAX_LANES; l++) max = lane[l] > max ? lane[l] : max;
    int64_t argmax = 0;
    while (x[argmax] != max) argmax++;
    *max_out = max;
    *argmax_out = argmax;
    return 1;
}

/* Each exponential of a row is taken once and kept, for the loss and the gradient alike. */
float cpu_loss_row_exp(float *restrict e, const float *restrict x, int64_t V, float max, float T) {
    if (T == 1.0f)
        for (int64_t v = 0; v < V; v++) e[v] = cpu_expf(x[v] - max);
    else
        for (int64_t v = 0; v < V; v++) e[v] = cpu_expf((x[v] - max) / T);
    return cpu_sum(e, V);
}
