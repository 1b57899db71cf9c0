/* The teacher's top-k at a temperature from rows of its logits: log-softmax(logits / T) computed
 * over the whole vocabulary, then the k most likely ids, most likely first. */
#pragma once

#include <stdint.h>

#include "core/status.h"

/* For each of `rows` rows of logits [rows, V]: logprobs[r, i] = log-softmax(logits[r] / T) at
 * ids[r, i], i < k, sorted by log-prob descending (ties: the lower id first). The log-sum-exp is
 * taken in double. A non-finite logit is an error naming the row and id. */
Status teacher_topk_rows(const float *logits, int64_t rows, int64_t V, float T, int64_t k, float *logprobs,
                         int32_t *ids);
