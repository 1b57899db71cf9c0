/* Choosing the next token from a model's logits: greedy, or a seeded draw from the softmax at a
 * temperature restricted to the top-p nucleus. */
#pragma once

#include <stdint.h>

#include "core/status.h"

typedef struct {
    int greedy;          /* argmax; the rest is ignored */
    float temperature;   /* > 0 */
    float top_p;         /* (0, 1]: the smallest set of most likely tokens whose mass reaches top_p */
    uint64_t seed;       /* draw i of a generation uses (seed, i): the same seed, the same tokens */
} SamplingOptions;

/* Checks temperature and top_p; the error names the option. */
Status sampling_check(const SamplingOptions *o);

/* The id of the largest logit (the lowest id among equals). */
int32_t sample_argmax(const float *logits, int64_t V);

/* probs [V] = softmax(logits / temperature) restricted to the top-p nucleus and renormalised: the
 * tokens in order of decreasing probability (lower id first among equals), up to and including the
 * first whose cumulative probability reaches top_p; zero elsewhere. */
Status sample_nucleus(const float *logits, int64_t V, float temperature, float top_p, double *probs);

/* The next token for draw number `draw`; probs [V] is scratch (unused when greedy). */
Status sample_token(const float *logits, int64_t V, const SamplingOptions *o, uint64_t draw, double *probs,
                    int32_t *out);
