/* The distillation trainer: teacher forward (nothing kept), student forward and backward, the fused
 * KL + CE loss normalised by the tokens counted in the whole global batch, gradient accumulation,
 * clipping, AdamW on a warmup + decay schedule, periodic evaluation and metrics. */
#pragma once

#include <stdint.h>

#include "core/backend.h"
#include "data/loader.h"
#include "dist/comm.h"
#include "model/convert/convert.h"
#include "model/model.h"
#include "optim/optimizer.h"
#include "optim/schedule.h"
#include "optim/zero1.h"
#include "train/cached_teacher.h"
#include "train/config.h"
#include "train/evaluate.h"
#include "train/metrics.h"

typedef struct {
    int random_batches;   /* draw token ids at random instead of reading data.train (bench) */
    int quiet;            /* print nothing (bench, tests) */
    int restart;          /* ignore run.dir's checkpoints and metrics: start over (--restart) */
    int64_t stop_at_step; /* > 0: behave as if preempted after this step (tests) */
    Comm *comm;           /* the job's communicator, owned by the caller; NULL: one made from the
                             environment and owned by the trainer */
} TrainerOptions;

typedef struct {
    const Config *cfg;
    TrainerOptions opts;
    Backend *be;
    Model *teacher, *student;
    CachedTeacher *cached;        /* teacher.cache: the teacher's top-k read instead of a teacher forward */
    ForwardState *tst, *sst;
    Comm *comm;                   /* the data-parallel job (a single process: world 1) */
    int owns_comm;
    int zero1;                    /* dist.zero1: moments sharded (zero) instead of replicated (opt) */
    Optimizer opt;
    Zero1 zero;
    float *grad_bucket;           /* [GRAD_BUCKET_VALUES]: gradient all-reduce without ZeRO */
    LrSchedule sched;
    Loader *train, *val;
    int rank, world;
    int64_t B, T, accum;          /* micro-batch rows, sequence length, micro-steps per step */
    int32_t *windows;             /* [accum][B][T + 1]: one optimizer step's windows on this rank */
    int32_t *host_ids, *host_targets;
    Tensor ids, targets, teacher_hidden, hidden, dhidden;
    Tensor *grads;                /* the student's gradients, for the global norm */
    int64_t step, tokens;
    int teacher_evaluated;
    TeacherFigures teacher_eval;
    int converted;
    ConvertReport *convert_report;
    int resumed;                  /* started from a checkpoint */
    char resumed_from[4096];
    int preempted;                /* trainer_run stopped on a signal after writing a checkpoint */
} Trainer;

/* Asks a running trainer_run to stop after the current step, write a checkpoint and return with
 * preempted set. Async-signal-safe: the SIGTERM/SIGUSR1 handler calls it. */
void trainer_request_stop(void);

/* Builds the backend, models, optimizer and data. When run.dir holds a complete checkpoint (and
 * opts.restart is not set) the student, optimizer, data cursor and counters continue from it;
 * otherwise the student is built from student.init_from (converted when student.mla says). */
Status trainer_create(Trainer **out, const Config *cfg, TrainerOptions opts);
void trainer_destroy(Trainer *t);

/* One optimizer step over train.global_batch sequences. */
Status trainer_step(Trainer *t, StepRecord *r);

/* Student figures on data.val (and the teacher's, computed once). */
Status trainer_evaluate(Trainer *t, EvalFigures *e);

/* The whole run: run.dir, the effective config, steps to max_steps with metrics, evaluation and
 * checkpoints (checkpoint.every_steps and at the end), and the final model in run.dir/final (HF
 * layout, float32). A stop request ends it early with a checkpoint and t->preempted set. */
Status trainer_run(Trainer *t);
