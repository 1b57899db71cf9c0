/* The trainer's setup and its step. The loss of a step is normalised by the tokens counted in the
 * whole global batch, counted before any gradient is computed, so accumulating micro-batches is
 * exactly one large batch (not a mean of per-micro-batch means). */
#include "train/trainer.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core/clock.h"
#include "core/rng.h"
#include "train/cached_teacher.h"
#include "train/checkpoint.h"
#include "train/config_loss.h"
#include "train/grad_sync.h"
#include "train/grad_sync_overlap.h"
#include "train/models.h"

static Status open_loader(const Config *cfg, const ConfigPathList *list, const char *key, int shuffle, int rank,
                          int world, Loader **out) {
    const char *patterns[CONFIG_LIST_MAX];
    for (int i = 0; i < list->count; i++) patterns[i] = list->items[i];
    LoaderOptions lo = {.patterns = patterns, .n_patterns = list->count, .seq_len = (int)cfg->data.seq_len,
                        .seed = (uint64_t)cfg->run.seed, .rank = rank, .world = world, .shuffle = shuffle};
    if (loader_open(out, &lo) != STATUS_OK) return error_context("%s: %s: ", cfg->name, key);
    return STATUS_OK;
}

static Status check_vocab(const Config *cfg, const Trainer *t, const Loader *L, const char *key) {
    int64_t v = t->student->cfg.vocab_size;
    if ((int64_t)loader_vocab_size(L) > v)
        return errorf("%s: %s holds token ids up to vocab_size %u, more than the student's vocab_size %lld", cfg->name,
                      key, loader_vocab_size(L), (long long)v);
    return STATUS_OK;
}

/* A resumed run must compute what the interrupted one would have: the keys that decide the model,
 * the data order and the loss may not change (max_steps, evaluation, logging, checkpointing and the
 * optimizer's settings may). */
static Status check_resume_compatible(const Config *cfg, const char *saved_json, const char *ckpt) {
    Config *old = calloc(1, sizeof *old);
    if (!old) return errorf("trainer: out of memory");
    Status st = config_parse_json(old, saved_json, ckpt, NULL, 0);
    if (st != STATUS_OK) {
        free(old);
        return error_context("the checkpoint's config: ");
    }
    const char *changed = NULL;
    if (old->run.seed != cfg->run.seed) changed = "run.seed";
    else if (old->data.seq_len != cfg->data.seq_len) changed = "data.seq_len";
    else if (old->train.global_batch != cfg->train.global_batch) changed = "train.global_batch";
    else if (memcmp(&old->data.train, &cfg->data.train, sizeof cfg->data.train) != 0) changed = "data.train";
    else if (memcmp(&old->loss, &cfg->loss, sizeof cfg->loss) != 0) changed = "loss";
    else if (old->has_teacher != cfg->has_teacher || strcmp(old->teacher.path, cfg->teacher.path) != 0 ||
             strcmp(old->teacher.arch.json, cfg->teacher.arch.json) != 0 || old->teacher.seed != cfg->teacher.seed)
        changed = "teacher";
    else if (!old->teacher_cache[0] != !cfg->teacher_cache[0])
        changed = "teacher.cache (a cached teacher's loss is not the live teacher's)";
    else if (old->student.has_mla != cfg->student.has_mla ||
             memcmp(&old->student.mla, &cfg->student.mla, sizeof cfg->student.mla) != 0)
        changed = "student.mla";
    else if (strcmp(old->student.init_from.path, cfg->student.init_from.path) != 0 ||
             strcmp(old->student.init_from.arch.json, cfg->student.init_from.arch.json) != 0)
        changed = "student.init_from";
    free(old);
    if (changed)
        return errorf("%s: cannot resume from %s: %s differs from the run's (resuming must keep it; --restart "
                      "starts over)", cfg->name, ckpt, changed);
    return STATUS_OK;
}

/* This rank's moments from a checkpoint written by any number of ranks, with or without ZeRO-1. */
static Status load_optimizer_state(Trainer *t) {
    int64_t n = optimizer_flat_size(t->student);
    if (t->zero1) {
        int64_t len = t->zero.hi - t->zero.lo;
        OptimizerShard sh = {.n_total = n, .lo = t->zero.lo, .hi = t->zero.hi};
        sh.m = malloc((size_t)(len > 0 ? len : 1) * sizeof(float));
        sh.v = malloc((size_t)(len > 0 ? len : 1) * sizeof(float));
        Status st = sh.m && sh.v ? checkpoint_load_optimizer(t->resumed_from, &sh) : errorf("out of memory");
        if (st == STATUS_OK) st = zero1_set_moments(&t->zero, sh.m, sh.v);
        t->zero.step = sh.adamw_step;
        free(sh.m);
        free(sh.v);
        return st;
    }
    OptimizerShard sh = {.n_total = n, .lo = 0, .hi = n};
    sh.m = malloc((size_t)n * sizeof(float));
    sh.v = malloc((size_t)n * sizeof(float));
    Status st = sh.m && sh.v ? checkpoint_load_optimizer(t->resumed_from, &sh) : errorf("out of memory");
    if (st == STATUS_OK) st = optimizer_set_flat_moments(&t->opt, sh.m, sh.v);
    t->opt.step = sh.adamw_step;
    free(sh.m);
    free(sh.v);
    return st;
}

static Status setup(Trainer *t, const Config *cfg) {
    t->cfg = cfg;
    if (t->opts.comm) {
        t->comm = t->opts.comm;
    } else {
        TRY(comm_create(&t->comm, config_device_name(cfg->device), cfg->dist.timeout_s));
        t->owns_comm = 1;
    }
    t->rank = t->comm->env.rank;
    t->world = t->comm->env.world;
    if (t->rank != 0) t->opts.quiet = 1; /* rank 0 speaks for the job */
    TRY(config_check_world(cfg, t->world));
    BackendOptions bo = {.threads = (int)cfg->run.threads, .device = 0};
    TRY(backend_create(&t->be, config_device_name(cfg->device), bo));
    TRY(backend_check_ops(t->be));
    t->T = cfg->data.seq_len;
    t->B = cfg->train.micro_batch;
    t->accum = cfg->train.global_batch / (t->B * t->world);

    t->convert_report = calloc(1, sizeof *t->convert_report);
    if (!t->convert_report) return errorf("trainer: out of memory");
    int found = 0;
    CheckpointState resume = {0};
    /* Rank 0 chooses the checkpoint and tells the others, so all resume from the same one. */
    if (!t->opts.restart && !t->opts.random_batches && t->rank == 0)
        TRY(checkpoint_find(cfg->run.dir, t->resumed_from, sizeof t->resumed_from, &found));
    int32_t found32 = found;
    TRY(t->comm->all_reduce_max_i32(t->comm, &found32, 1));
    found = found32;
    if (found) TRY(t->comm->broadcast(t->comm, t->resumed_from, sizeof t->resumed_from, 0));
    ModelConfig mc;
    if (found) {
        char *saved = NULL;
        Status st = checkpoint_read_header(t->resumed_from, &mc, &resume, &saved);
        if (st == STATUS_OK) st = check_resume_compatible(cfg, saved, t->resumed_from);
        free(saved);
        TRY(st);
    }
    /* With teacher.cache the teacher's rows come from disk, and a run already at max_steps trains
     * nothing (trainer_run says so): neither loads the teacher's weights. */
    if (!cfg->teacher_cache[0] && !(found && resume.step >= cfg->train.max_steps))
        TRY(build_teacher(cfg, t->be, t->T, &t->teacher));
    if (found) {
        /* The student as the checkpoint holds it: no conversion, weights loaded below. */
        TRY(model_create(&t->student, t->be, &mc, t->T));
        t->resumed = 1;
    } else {
        TRY(build_student(cfg, t->be, t->T, &t->student, t->convert_report, &t->converted));
    }
    const ModelConfig *sc = &t->student->cfg;
    if (t->teacher && t->teacher->cfg.vocab_size != sc->vocab_size)
        return errorf("%s: the teacher's vocab_size %lld differs from the student's %lld (KL needs one vocabulary)",
                      cfg->name, (long long)t->teacher->cfg.vocab_size, (long long)sc->vocab_size);
    TRY(model_config_check_seq_len(sc, t->T));
    /* float32 master weights, gradients and moments; forward in the configured precision. */
    TRY(model_set_precision(t->student, DT_F32, config_compute_dtype(cfg)));

    TRY(model_alloc_grads(t->student));
    t->grads = calloc((size_t)t->student->n_params, sizeof(Tensor));
    if (!t->grads) return errorf("trainer: out of memory");
    for (int i = 0; i < t->student->n_params; i++) t->grads[i] = *t->student->params[i].grad;
    OptimizerConfig oc = {.beta1 = cfg->optim.beta1, .beta2 = cfg->optim.beta2, .eps = cfg->optim.eps,
                          .weight_decay = cfg->optim.weight_decay,
                          .decay_norms_and_embeddings = cfg->optim.decay_norms_and_embeddings};
    t->zero1 = cfg->dist.zero1;
    if (t->zero1) {
        TRY(zero1_create(&t->zero, t->student, oc, t->comm));
    } else {
        TRY(optimizer_create(&t->opt, t->student, oc));
        /* The host bucket is for communicators that sum host memory (MPI); NCCL sums the gradients
         * in place, layer by layer (grad_sync_overlap.c). */
        if (t->world > 1 && !(t->comm->all_reduce_sum_f32_after && t->comm->wait_issued)) {
            t->grad_bucket = malloc((size_t)GRAD_BUCKET_VALUES * sizeof(float));
            if (!t->grad_bucket) return errorf("trainer: out of memory for the gradient bucket");
        }
    }
    if (t->resumed) {
        if (checkpoint_load(t->resumed_from, t->student) != STATUS_OK || load_optimizer_state(t) != STATUS_OK)
            return error_context("resuming from %s: ", t->resumed_from);
        t->step = resume.step;
        t->tokens = resume.tokens;
    }
    static const LrDecay decays[] = {[CONFIG_SCHEDULE_COSINE] = LR_COSINE, [CONFIG_SCHEDULE_LINEAR] = LR_LINEAR,
                                     [CONFIG_SCHEDULE_CONSTANT] = LR_CONSTANT};
    t->sched = (LrSchedule){.lr = cfg->optim.lr, .min_lr = cfg->optim.min_lr, .warmup_steps = cfg->optim.warmup_steps,
                            .max_steps = cfg->train.max_steps, .decay = decays[cfg->optim.schedule]};

    if (!t->opts.random_batches) {
        TRY(config_check_train(cfg));
        TRY(open_loader(cfg, &cfg->data.train, "data.train", 1, t->rank, t->world, &t->train));
        TRY(check_vocab(cfg, t, t->train, "data.train"));
        if (t->resumed && resume.has_cursor && loader_seek(t->train, resume.cursor) != STATUS_OK)
            return error_context("resuming from %s: data.train: ", t->resumed_from);
        if (cfg->teacher_cache[0])
            TRY(cached_teacher_open(&t->cached, cfg, t->be, t->train, sc->vocab_size, t->B, t->T, t->accum, t->rank,
                                    t->world));
    } else if (cfg->teacher_cache[0]) {
        return errorf("%s: teacher.cache: the cached teacher's rows belong to data.train's windows; random batches "
                      "have none (time it with real data)", cfg->name);
    }
    if (cfg->data.val.count > 0) {
        TRY(open_loader(cfg, &cfg->data.val, "data.val", 0, 0, 1, &t->val));
        TRY(check_vocab(cfg, t, t->val, "data.val"));
    }

    int64_t N = t->B * t->T, D = sc->hidden_size;
    static const ForwardMode modes[] = {[CONFIG_RECOMPUTE_NONE] = FORWARD_KEEP,
                                        [CONFIG_RECOMPUTE_LAYERS] = FORWARD_RECOMPUTE,
                                        [CONFIG_RECOMPUTE_MLP] = FORWARD_RECOMPUTE_MLP};
    ForwardMode student_mode = modes[cfg->train.recompute];
    TRY(forward_state_create(&t->sst, t->student, t->B, t->T, student_mode));
    if (t->teacher) TRY(forward_state_create(&t->tst, t->teacher, t->B, t->T, 0));
    TRY(t->be->alloc(t->be, &t->ids, DT_I32, 1, &N));
    TRY(t->be->alloc(t->be, &t->targets, DT_I32, 1, &N));
    TRY(t->be->alloc(t->be, &t->hidden, t->student->dtype, 2, (int64_t[]){N, D}));
    TRY(t->be->alloc(t->be, &t->dhidden, t->student->dtype, 2, (int64_t[]){N, D}));
    if (t->teacher)
        TRY(t->be->alloc(t->be, &t->teacher_hidden, t->teacher->dtype, 2,
                         (int64_t[]){N, t->teacher->cfg.hidden_size}));
    t->windows = malloc((size_t)(t->accum * t->B * (t->T + 1)) * sizeof(int32_t));
    t->host_ids = malloc((size_t)N * sizeof(int32_t));
    t->host_targets = malloc((size_t)N * sizeof(int32_t));
    if (!t->windows || !t->host_ids || !t->host_targets) return errorf("trainer: out of memory for batches");
    return STATUS_OK;
}

Status trainer_create(Trainer **out, const Config *cfg, TrainerOptions opts) {
    *out = NULL;
    Trainer *t = calloc(1, sizeof *t);
    if (!t) return errorf("trainer: out of memory");
    t->opts = opts;
    if (setup(t, cfg) != STATUS_OK) {
        trainer_destroy(t);
        return STATUS_ERROR;
    }
    *out = t;
    return STATUS_OK;
}

void trainer_destroy(Trainer *t) {
    if (!t) return;
    Backend *be = t->be;
    if (be) {
        Tensor *ts[] = {&t->ids, &t->targets, &t->hidden, &t->dhidden, &t->teacher_hidden};
        for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
            if (ts[i]->data) be->release(be, ts[i]);
    }
    optimizer_destroy(&t->opt);
    zero1_destroy(&t->zero);
    free(t->grad_bucket);
    forward_state_destroy(t->tst);
    cached_teacher_close(t->cached);
    forward_state_destroy(t->sst);
    loader_close(t->train);
    loader_close(t->val);
    model_destroy(t->teacher);
    model_destroy(t->student);
    backend_destroy(be);
    if (t->owns_comm) comm_destroy(t->comm);
    free(t->windows);
    free(t->host_ids);
    free(t->host_targets);
    free(t->grads);
    free(t->convert_report);
    free(t);
}

/* This rank's windows of the next optimizer step. */
static Status next_windows(Trainer *t) {
    int64_t W = t->T + 1, rows = t->accum * t->B;
    if (!t->opts.random_batches) {
        for (int64_t a = 0; a < t->accum; a++) {
            if (t->cached) cached_teacher_note_windows(t->cached, t->train, a);
            TRY(loader_next(t->train, (int)t->B, t->windows + a * t->B * W));
        }
        return STATUS_OK;
    }
    uint64_t V = (uint64_t)t->student->cfg.vocab_size, base = (uint64_t)t->step * (uint64_t)(rows * W);
    for (int64_t i = 0; i < rows * W; i++)
        t->windows[i] = (int32_t)rng_below((uint64_t)t->cfg->run.seed, 0xbe4c, base + (uint64_t)i, V);
    return STATUS_OK;
}

static Status upload_micro_batch(Trainer *t, int64_t a) {
    int64_t W = t->T + 1;
    for (int64_t b = 0; b < t->B; b++) {
        const int32_t *w = t->windows + (a * t->B + b) * W;
        memcpy(t->host_ids + b * t->T, w, (size_t)t->T * sizeof(int32_t));
        memcpy(t->host_targets + b * t->T, w + 1, (size_t)t->T * sizeof(int32_t));
    }
    TRY(t->be->upload(t->be, t->ids, t->host_ids));
    return t->be->upload(t->be, t->targets, t->host_targets);
}

Status trainer_step(Trainer *t, StepRecord *r) {
    const Config *cfg = t->cfg;
    Backend *be = t->be;
    double t0 = monotonic_seconds();
    TRY(next_windows(t));
    /* Every target of a window is a real next token, so the step counts B*T tokens per window;
     * across ranks this is the global batch. */
    int64_t counted = cfg->train.global_batch * t->T;
    LossConfig lc = config_loss(cfg);
    LossSums sums = {0};
    TRY(model_zero_grads(t->student));
    GradSync sync = grad_sync_start(t->comm, t->student, cfg->dist.overlap && !t->zero1);
    for (int64_t a = 0; a < t->accum; a++) {
        TRY(upload_micro_batch(t, a));
        if (t->teacher) TRY(model_forward(t->teacher, t->tst, t->ids, t->teacher_hidden));
        if (t->cached) TRY(cached_teacher_upload(t->cached, a, t->windows + a * t->B * (t->T + 1)));
        TRY(model_forward(t->student, t->sst, t->ids, t->hidden));
        if (t->cached)
            TRY(be->ops.lm_head_loss_topk(be, &sums, t->dhidden, t->student->grad_lm_head, t->hidden,
                                          model_compute_lm_head(t->student), cached_teacher_logprobs(t->cached),
                                          cached_teacher_ids(t->cached), t->targets, lc, 1.0f / (float)counted));
        else
            TRY(be->ops.lm_head_loss(be, &sums, t->dhidden, t->student->grad_lm_head, t->hidden,
                                     model_compute_lm_head(t->student), t->teacher ? t->teacher_hidden : tensor_none(),
                                     t->teacher ? model_compute_lm_head(t->teacher) : tensor_none(), t->targets, lc,
                                     1.0f / (float)counted));
        TRY(grad_sync_backward(&sync, t->sst, t->dhidden, a + 1 == t->accum));
    }
    /* The figures of the whole global batch. */
    double totals[5] = {sums.loss, sums.kl, sums.ce, (double)sums.counted, (double)sums.top1_agree};
    TRY(t->comm->all_reduce_sum_f64(t->comm, totals, 5));
    sums.loss = totals[0];
    sums.kl = totals[1];
    sums.ce = totals[2];
    sums.counted = (int64_t)totals[3];
    if (sums.counted != counted)
        return errorf("trainer: step %lld counted %lld tokens, expected %lld", (long long)t->step + 1,
                      (long long)sums.counted, (long long)counted);
    double norm = 0, lr = lr_at(&t->sched, t->step + 1);
    if (t->zero1) {
        if (zero1_step(&t->zero, lr, cfg->optim.grad_clip, &norm) != STATUS_OK)
            return error_context("step %lld: ", (long long)t->step + 1);
    } else {
        TRY(grad_sync_finish(&sync, t->grad_bucket));
        /* One pass for the norm, one wait for it; the clipping happens inside AdamW. */
        if (grad_norm(be, t->grads, t->student->n_params, &norm) != STATUS_OK ||
            optimizer_step(&t->opt, lr, grad_clip_scale(norm, cfg->optim.grad_clip)) != STATUS_OK)
            return error_context("step %lld: ", (long long)t->step + 1);
    }
    TRY(be->synchronize(be));
    t->step++;
    t->tokens += counted;
    double dt = monotonic_seconds() - t0;
    r->step = t->step;
    r->max_steps = cfg->train.max_steps;
    r->tokens = t->tokens;
    r->lr = lr;
    r->loss = sums.loss / (double)counted;
    r->kl = sums.kl / (double)counted;
    r->ce = sums.ce / (double)counted;
    r->grad_norm = norm;
    r->tok_s = (double)counted / dt;
    r->has_teacher = t->teacher != NULL || t->cached != NULL;
    if (!isfinite(r->loss)) return errorf("step %lld: the loss is %g", (long long)t->step, r->loss);
    return STATUS_OK;
}

Status trainer_evaluate(Trainer *t, EvalFigures *e) {
    if (!t->val) return errorf("%s: data.val: evaluation needs validation data", t->cfg->name);
    int64_t mw = t->cfg->eval.max_windows;
    if (t->teacher && !t->teacher_evaluated) {
        TRY(evaluate_teacher(t->teacher, t->val, mw, t->B, &t->teacher_eval));
        t->teacher_evaluated = 1;
    }
    TRY(evaluate_student(t->student, t->teacher, t->val, mw, t->B, e));
    return tasks_evaluate(t->student, &t->cfg->eval.tasks, t->B, &e->tasks);
}
