/* Greedy and nucleus sampling on the host, in double, from one Philox draw per token (so a seed
 * reproduces a generation whatever ran before). */
#include "infer/sampling.h"

#include <math.h>
#include <stdlib.h>

#include "core/rng.h"

/* The RNG stream of token sampling (other streams initialise weights and shuffle data). */
static const uint64_t SAMPLING_STREAM = 0x5a4d504cULL;

Status sampling_check(const SamplingOptions *o) {
    if (o->greedy) return STATUS_OK;
    if (!(o->temperature > 0) || !isfinite(o->temperature))
        return errorf("--temperature must be a positive number, got %g", (double)o->temperature);
    if (!(o->top_p > 0 && o->top_p <= 1)) return errorf("--top-p must be in (0, 1], got %g", (double)o->top_p);
    return STATUS_OK;
}

int32_t sample_argmax(const float *logits, int64_t V) {
    int64_t best = 0;
    for (int64_t i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    return (int32_t)best;
}

typedef struct {
    double p;
    int32_t id;
} Ranked;

/* Decreasing probability, lower id first among equals: a total order, so the sort is deterministic. */
static int by_prob_desc(const void *a, const void *b) {
    const Ranked *x = a, *y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

Status sample_nucleus(const float *logits, int64_t V, float temperature, float top_p, double *probs) {
    SamplingOptions o = {.temperature = temperature, .top_p = top_p};
    TRY(sampling_check(&o));
    if (V < 1) return errorf("sampling: no logits");
    double m = -INFINITY;
    for (int64_t i = 0; i < V; i++) {
        if (isnan(logits[i])) return errorf("sampling: logit %lld is NaN", (long long)i);
        m = logits[i] > m ? logits[i] : m;
    }
    if (!isfinite(m)) return errorf("sampling: the largest logit is %g", m);
    double z = 0;
    for (int64_t i = 0; i < V; i++) z += probs[i] = exp(((double)logits[i] - m) / temperature);
    for (int64_t i = 0; i < V; i++) probs[i] /= z;
    if (top_p >= 1) return STATUS_OK;

    Ranked *order = malloc((size_t)V * sizeof *order);
    if (!order) return errorf("sampling: out of memory for %lld probabilities", (long long)V);
    for (int64_t i = 0; i < V; i++) order[i] = (Ranked){probs[i], (int32_t)i};
    qsort(order, (size_t)V, sizeof *order, by_prob_desc);
    double kept = 0;
    int64_t n = 0;
    while (n < V && kept < top_p) kept += order[n++].p;
    for (int64_t i = n; i < V; i++) probs[order[i].id] = 0;
    for (int64_t i = 0; i < n; i++) probs[order[i].id] /= kept;
    free(order);
    return STATUS_OK;
}

Status sample_token(const float *logits, int64_t V, const SamplingOptions *o, uint64_t draw, double *probs,
                    int32_t *out) {
    if (o->greedy) {
        *out = sample_argmax(logits, V);
        return STATUS_OK;
    }
    TRY(sample_nucleus(logits, V, o->temperature, o->top_p, probs));
    /* Inverse CDF over ids in order; the last id with any mass takes what rounding leaves. */
    double u = rng_uniform(o->seed, SAMPLING_STREAM, draw), acc = 0;
    int64_t last = 0;
    for (int64_t i = 0; i < V; i++) {
        if (probs[i] <= 0) continue;
        last = i;
        acc += probs[i];
        if (u < acc) break;
    }
    *out = (int32_t)last;
    return STATUS_OK;
}
