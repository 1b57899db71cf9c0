/* Evaluation by DESIGN.md's definition: data.val read in order as non-overlapping windows of
 * seq_len + 1 tokens (up to max_windows), the mean loss over every predicted token; with a teacher
 * also its loss, the KL from teacher to student at temperature 1 and the top-1 agreement. */
#pragma once

#include <stdint.h>

#include "data/loader.h"
#include "model/model.h"
#include "train/tasks.h"

typedef struct {
    double loss, ppl;                 /* student: mean CE, exp(mean CE) */
    double kl, top1_agree;            /* mean KL(p_teacher || p_student), share of argmax matches */
    int has_teacher;
    int64_t windows, tokens;
    TaskScores tasks;                 /* eval.tasks (tasks_evaluate); none from evaluate_student */
} EvalFigures;

typedef struct {
    double loss, ppl;
    int64_t windows, tokens;
} TeacherFigures;

/* Student figures (and KL/agreement when teacher is not NULL) over the first max_windows windows
 * (0 = all) of the validation loader, `batch` windows at a time. */
Status evaluate_student(Model *student, Model *teacher, Loader *val, int64_t max_windows, int64_t batch,
                        EvalFigures *out);

/* The teacher's own loss on the same windows. */
Status evaluate_teacher(Model *teacher, Loader *val, int64_t max_windows, int64_t batch, TeacherFigures *out);
