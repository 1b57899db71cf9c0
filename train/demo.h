/* `mlatrain demo`: a small end-to-end distillation on the CPU with nothing to download: a GQA
 * teacher learns a synthetic language, then an MLA student learns from the teacher. */
#pragma once

#include <stdint.h>

#include "core/status.h"

typedef struct {
    const char *device;   /* "cpu" or "cuda" */
    int threads;          /* 0 = all cores */
    int teacher_steps;
    int student_steps;
    uint64_t seed;
} DemoOptions;

Status demo_run(const DemoOptions *opts);
