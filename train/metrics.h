/* Run metrics: one JSON object per line in run.dir/metrics.jsonl, and the progress a person
 * watches (a live line on a terminal, plain lines otherwise). */
#pragma once

#include <stdint.h>
#include <stdio.h>

#include "core/status.h"
#include "train/evaluate.h"

typedef struct {
    int64_t step, max_steps, tokens;
    double lr, loss, kl, ce, grad_norm, tok_s, elapsed;
    int has_teacher;
    int64_t kv_bytes_student, kv_bytes_teacher;   /* per token, bf16, all layers (written at step 0) */
} StepRecord;

typedef struct {
    FILE *file;            /* metrics.jsonl, appended and flushed per line */
    int tty;               /* stdout is a terminal: redraw one progress line */
    int line_open;         /* a progress line is on screen without its newline */
} Metrics;

Status metrics_open(Metrics *m, const char *run_dir);
void metrics_close(Metrics *m);

/* Appends a step's line (with the eval figures when eval is not NULL, and the teacher's once). */
Status metrics_write(Metrics *m, const StepRecord *r, const EvalFigures *eval, const TeacherFigures *teacher);

/* Shows progress: step/max, loss, tok/s, ETA. `plain` forces a full line (log cadence). */
void metrics_progress(Metrics *m, const StepRecord *r, int plain);

/* Prints an evaluation summary line. */
void metrics_print_eval(Metrics *m, int64_t step, const EvalFigures *e, const TeacherFigures *t);
