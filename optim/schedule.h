/* The learning-rate schedule: linear warmup from 0, then cosine, linear or constant decay to
 * min_lr at max_steps. Steps are 1-based (the first optimizer step is step 1). */
#pragma once

#include <stdint.h>

typedef enum { LR_COSINE = 0, LR_LINEAR, LR_CONSTANT } LrDecay;

typedef struct {
    double lr, min_lr;
    int64_t warmup_steps, max_steps;
    LrDecay decay;
} LrSchedule;

double lr_at(const LrSchedule *s, int64_t step);
