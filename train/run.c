/* trainer_run: the run directory, the effective config, the step loop with metrics, progress and
 * evaluation, and the final model saved in run.dir/final. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <signal.h>
#include <stdlib.h>

#include "core/clock.h"
#include "core/crc32.h"
#include "core/file_io.h"
#include "model/hf/hf_model.h"
#include "train/checkpoint.h"
#include "train/tokenizer_files.h"
#include "train/trainer.h"

/* Keeps the lines of metrics.jsonl up to `step`: a resumed run rewrites the steps it repeats. */
static Status truncate_metrics(const char *path, int64_t step) {
    FILE *f = fopen(path, "r");
    if (!f) return errno == ENOENT ? STATUS_OK : errorf("%s: cannot read: %s", path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    char *kept = malloc(cap), line[1 << 16];
    Status st = kept ? STATUS_OK : errorf("%s: out of memory", path);
    while (st == STATUS_OK && fgets(line, sizeof line, f)) {
        long long s = -1;
        if (sscanf(line, "{\"step\": %lld", &s) != 1 || s > step) continue;
        size_t n = strlen(line);
        if (len + n + 1 > cap) {
            char *grown = realloc(kept, cap = 2 * (len + n + 1));
            if (!grown) st = errorf("%s: out of memory", path);
            else kept = grown;
        }
        if (st == STATUS_OK) {
            memcpy(kept + len, line, n);
            len += n;
        }
    }
    fclose(f);
    if (st == STATUS_OK) st = file_write_atomic(path, kept, len);
    free(kept);
    return st;
}

static Status prepare_run_dir(const Trainer *t) {
    const Config *cfg = t->cfg;
    const char *dir = cfg->run.dir;
    char path[4096], ckdir[4096];
    if (snprintf(path, sizeof path, "%s/metrics.jsonl", dir) >= (int)sizeof path ||
        snprintf(ckdir, sizeof ckdir, "%s/checkpoints", dir) >= (int)sizeof ckdir)
        return errorf("%s: run.dir is too long", cfg->name);
    struct stat sb;
    if (t->resumed) {
        TRY(truncate_metrics(path, t->step));
    } else if (stat(path, &sb) == 0 || stat(ckdir, &sb) == 0) {
        if (!t->opts.restart)
            return errorf("%s: run.dir %s already holds a run with no complete checkpoint to resume from; "
                          "--restart starts over (removing its metrics and checkpoints), or choose another run.dir",
                          cfg->name, dir);
        if (unlink(path) != 0 && errno != ENOENT) return errorf("%s: cannot remove: %s", path, strerror(errno));
        TRY(checkpoint_remove_all(dir));
    }
    TRY(make_dirs(dir));
    if (snprintf(path, sizeof path, "%s/%s", dir, CONFIG_EFFECTIVE_FILE) >= (int)sizeof path)
        return errorf("%s: run.dir is too long", cfg->name);
    return config_write_effective(cfg, path);
}

static Status save_checkpoint(Trainer *t) {
    CheckpointState s = {.step = t->step, .tokens = t->tokens, .world_size = t->world};
    if (t->train) {
        s.has_cursor = 1;
        s.cursor = loader_cursor(t->train);
    }
    char *json = NULL;
    TRY(config_effective_json(t->cfg, &json));
    /* With ZeRO-1 every rank writes its shard; otherwise the moments are the same everywhere and
     * rank 0 writes them all. */
    OptimizerShard shard = {.n_total = optimizer_flat_size(t->student)}, *mine = NULL;
    Status st = STATUS_OK;
    if (t->zero1) {
        int64_t len = t->zero.hi - t->zero.lo;
        shard = (OptimizerShard){.n_total = t->zero.n, .lo = t->zero.lo, .hi = t->zero.hi, .adamw_step = t->zero.step};
        shard.m = malloc((size_t)(len > 0 ? len : 1) * sizeof(float));
        shard.v = malloc((size_t)(len > 0 ? len : 1) * sizeof(float));
        st = shard.m && shard.v ? zero1_get_moments(&t->zero, shard.m, shard.v) : errorf("out of memory");
        mine = &shard;
    } else if (t->rank == 0) {
        shard.lo = 0;
        shard.hi = shard.n_total;
        shard.adamw_step = t->opt.step;
        shard.m = malloc((size_t)shard.n_total * sizeof(float));
        shard.v = malloc((size_t)shard.n_total * sizeof(float));
        st = shard.m && shard.v ? optimizer_get_flat_moments(&t->opt, shard.m, shard.v) : errorf("out of memory");
        mine = &shard;
    }
    if (st == STATUS_OK)
        st = checkpoint_save(t->comm, t->cfg->run.dir, t->student, mine, &s, json, (int)t->cfg->checkpoint.keep_last);
    free(shard.m);
    free(shard.v);
    free(json);
    return st;
}

/* run.dir/final: the student as trained, float32, in HF layout (a GQA model in its own family),
 * with the tokenizer files of the model folder the run started from. */
static Status save_final(Trainer *t) {
    char dir[4096];
    if (snprintf(dir, sizeof dir, "%s/final", t->cfg->run.dir) >= (int)sizeof dir)
        return errorf("%s: run.dir is too long", t->cfg->name);
    if (model_config_mla_layers(&t->student->cfg) == 0) {
        TRY(hf_model_save_gqa(t->student, dir, DT_F32));
    } else {
        ExportOptions eo = {.dtype = DT_F32, .max_shard_bytes = 0, .allow_rebase = 0, .keep_rope = 1};
        TRY(hf_model_export(t->student, dir, &eo));
    }
    const char *tokenizer = tokenizer_files_source(t->cfg);
    return tokenizer ? tokenizer_files_copy(tokenizer, dir, NULL) : STATUS_OK;
}

/* Whether run.dir/final holds a complete model (its config.json is written last). */
static int final_exists(const Trainer *t) {
    char path[4096];
    struct stat sb;
    return snprintf(path, sizeof path, "%s/final/config.json", t->cfg->run.dir) < (int)sizeof path &&
           stat(path, &sb) == 0;
}

/* A run resumed at or past train.max_steps has nothing to train: say so and how to go on, and
 * leave its record (effective_config.json, metrics.jsonl) as the run that did train wrote it. */
static Status finish_complete_run(Trainer *t) {
    const Config *cfg = t->cfg;
    Status st = STATUS_OK;
    if (t->rank == 0 && !final_exists(t)) st = save_final(t);
    if (st == STATUS_OK) st = t->comm->barrier(t->comm);
    if (st == STATUS_OK && !t->opts.quiet)
        printf("%s: the run in %s is complete: its checkpoint %s is at step %lld of train.max_steps = %lld, so "
               "nothing was trained and its effective_config.json is unchanged; final model in %s/final. To train "
               "further, raise train.max_steps (e.g. --set train.max_steps=%lld); to start over, add --restart\n",
               cfg->name, cfg->run.dir, t->resumed_from, (long long)t->step, (long long)cfg->train.max_steps, cfg->run.dir,
               (long long)(t->step > cfg->train.max_steps ? t->step : cfg->train.max_steps) * 2);
    return st;
}

static int64_t kv_bytes_per_token(const ModelConfig *c) {
    int64_t values = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) values += model_config_kv_values_per_token(c, l);
    return 2 * values; /* bf16 */
}

/* The table a run ends with: the teacher, the student at initialisation and now, and the cache. */
static void print_summary(const Trainer *t, const EvalFigures *init, const EvalFigures *last) {
    printf("\n%-28s %10s %10s %12s\n", "", "val loss", "val ppl", "KV bytes/tok");
    if (t->teacher)
        printf("%-28s %10.4f %10.3f %12lld\n", "teacher", t->teacher_eval.loss, t->teacher_eval.ppl,
               (long long)kv_bytes_per_token(&t->teacher->cfg));
    long long kv = (long long)kv_bytes_per_token(&t->student->cfg);
    printf("%-28s %10.4f %10.3f %12lld\n", t->converted ? "student at init (converted)" : "student at init",
           init->loss, init->ppl, kv);
    printf("%-28s %10.4f %10.3f %12lld\n", "student after training", last->loss, last->ppl, kv);
    if (t->teacher)
        printf("student/teacher perplexity %.3f at a %.2fx smaller KV cache\n", last->ppl / t->teacher_eval.ppl,
               (double)kv_bytes_per_token(&t->teacher->cfg) / (double)kv);
}

/* Every rank must hold the same weights after a step; a difference means a broken reduction or a
 * rank that computed something else, and is an error rather than a silently forked model. */
static Status check_replicas_identical(Trainer *t) {
    if (t->world == 1) return STATUS_OK;
    uint32_t crc = 0;
    Model *m = t->student;
    for (int i = 0; i < m->n_params; i++) {
        Tensor *p = m->params[i].value;
        float *host = malloc(tensor_bytes(*p) ? tensor_bytes(*p) : 1);
        if (!host) return errorf("out of memory");
        Status st = m->be->download(m->be, host, *p);
        if (st == STATUS_OK) crc = crc32_update(crc, host, tensor_bytes(*p));
        free(host);
        TRY(st);
    }
    int32_t v[4] = {(int32_t)(crc >> 16), (int32_t)(crc & 0xffff), -(int32_t)(crc >> 16), -(int32_t)(crc & 0xffff)};
    TRY(t->comm->all_reduce_max_i32(t->comm, v, 4));
    if (v[0] != -v[2] || v[1] != -v[3])
        return errorf("rank %d: the ranks' weights differ after step %lld (CRC-32 %08x here)", t->rank,
                      (long long)t->step, crc);
    return STATUS_OK;
}

static volatile sig_atomic_t stop_requested;

void trainer_request_stop(void) { stop_requested = 1; }

static int due(int64_t step, int64_t every, int64_t max_steps) {
    return step == max_steps || (every > 0 && step % every == 0);
}

Status trainer_run(Trainer *t) {
    const Config *cfg = t->cfg;
    if (t->resumed && t->step >= cfg->train.max_steps) return finish_complete_run(t);
    /* Rank 0 owns run.dir's files; the others wait for it, and all learn if it failed. */
    Status prep = t->rank == 0 ? prepare_run_dir(t) : STATUS_OK;
    int32_t prep_failed = prep != STATUS_OK;
    TRY(t->comm->all_reduce_max_i32(t->comm, &prep_failed, 1));
    if (prep != STATUS_OK) return prep;
    if (prep_failed) return errorf("rank %d: preparing run.dir failed on rank 0", t->rank);
    Metrics metrics;
    memset(&metrics, 0, sizeof metrics);
    if (t->rank == 0) TRY(metrics_open(&metrics, cfg->run.dir));
    int evaluates = t->val != NULL && cfg->eval.every_steps > 0;
    Status st = STATUS_OK;
    if (!t->opts.quiet) {
        printf("student: %s, %lld parameters; %s; %lld steps of %lld sequences x %lld tokens (%lld micro-steps",
               t->student->cfg.architecture, (long long)model_num_parameters(t->student),
               t->teacher ? "distilling from the teacher" : "next-token training (no teacher)",
               (long long)cfg->train.max_steps, (long long)cfg->train.global_batch, (long long)t->T,
               (long long)t->accum);
        if (t->world > 1)
            printf(" on each of %d ranks, %s, %s", t->world, t->comm->name,
                   t->zero1 ? "optimizer state sharded (ZeRO-1)" : "optimizer state replicated");
        printf(")\n");
        if (t->converted) convert_report_print(t->convert_report, stdout);
    }
    StepRecord r = {0};
    r.max_steps = cfg->train.max_steps;
    r.has_teacher = t->teacher != NULL;
    r.kv_bytes_student = kv_bytes_per_token(&t->student->cfg);
    r.kv_bytes_teacher = t->teacher ? kv_bytes_per_token(&t->teacher->cfg) : 0;
    EvalFigures init_eval = {0}, last_eval = {0};
    if (t->resumed && !t->opts.quiet)
        printf("resuming from %s at step %lld (%lld tokens)\n", t->resumed_from, (long long)t->step,
               (long long)t->tokens);
    if (evaluates && !t->resumed) { /* the figures at initialisation, step 0 */
        st = trainer_evaluate(t, &init_eval);
        last_eval = init_eval;
        if (st == STATUS_OK) st = metrics_write(&metrics, &r, &init_eval, t->teacher ? &t->teacher_eval : NULL);
        if (st == STATUS_OK && !t->opts.quiet)
            metrics_print_eval(&metrics, 0, &init_eval, t->teacher ? &t->teacher_eval : NULL);
    }
    double start = monotonic_seconds();
    while (st == STATUS_OK && t->step < cfg->train.max_steps) {
        st = trainer_step(t, &r);
        if (st != STATUS_OK) break;
        r.elapsed = monotonic_seconds() - start;
        int log_now = due(t->step, cfg->log.every_steps, cfg->train.max_steps);
        int eval_now = evaluates && due(t->step, cfg->eval.every_steps, cfg->train.max_steps);
        EvalFigures e;
        if (eval_now) st = trainer_evaluate(t, &e);
        if (eval_now && st == STATUS_OK) last_eval = e;
        if (st == STATUS_OK && (log_now || eval_now)) st = metrics_write(&metrics, &r, eval_now ? &e : NULL, NULL);
        if (st == STATUS_OK && !t->opts.quiet) {
            metrics_progress(&metrics, &r, log_now);
            if (eval_now) metrics_print_eval(&metrics, t->step, &e, NULL);
        }
        /* A signal may reach the ranks at different steps: they stop together at the first step
         * any of them saw it. */
        int32_t stop = stop_requested || (t->opts.stop_at_step > 0 && t->step == t->opts.stop_at_step);
        if (st == STATUS_OK) st = t->comm->all_reduce_max_i32(t->comm, &stop, 1);
        if (st == STATUS_OK && (stop || due(t->step, cfg->checkpoint.every_steps, cfg->train.max_steps)))
            st = save_checkpoint(t);
        if (st == STATUS_OK && stop && t->step < cfg->train.max_steps) {
            t->preempted = 1;
            break;
        }
    }
    metrics_close(&metrics);
    if (st == STATUS_OK && t->preempted) {
        if (!t->opts.quiet)
            printf("stopped at step %lld on request; checkpoint written: the same command resumes\n", (long long)t->step);
        return STATUS_OK;
    }
    if (st == STATUS_OK) st = check_replicas_identical(t);
    if (st == STATUS_OK && t->rank == 0) st = save_final(t);
    if (st == STATUS_OK) st = t->comm->barrier(t->comm);
    if (st == STATUS_OK && !t->opts.quiet && evaluates && !t->resumed) print_summary(t, &init_eval, &last_eval);
    if (st == STATUS_OK && !t->opts.quiet)
        printf("done: %lld steps, %lld tokens in %.1f s; final model in %s/final\n", (long long)t->step,
               (long long)t->tokens, monotonic_seconds() - start, cfg->run.dir);
    return st;
}
