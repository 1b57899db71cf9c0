/* metrics.jsonl lines and the console progress. JSON numbers are printed with %.9g (enough for a
 * float32 to read back) so plots and sweeps see the values the run computed. */
#include "train/metrics.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

Status metrics_open(Metrics *m, const char *run_dir) {
    memset(m, 0, sizeof *m);
    char path[4096];
    if (snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir) >= (int)sizeof path)
        return errorf("%s: path too long", run_dir);
    m->file = fopen(path, "a");
    if (!m->file) return errorf("%s: cannot open for writing: %s", path, strerror(errno));
    m->tty = isatty(STDOUT_FILENO);
    return STATUS_OK;
}

void metrics_close(Metrics *m) {
    if (m->line_open) {
        fputc('\n', stdout);
        m->line_open = 0;
    }
    if (m->file) fclose(m->file);
    m->file = NULL;
}

/* JSON has no NaN or Inf: those become null. */
static void json_number(FILE *f, const char *key, double v, int comma) {
    if (isfinite(v)) fprintf(f, "\"%s\": %.9g%s", key, v, comma ? ", " : "");
    else fprintf(f, "\"%s\": null%s", key, comma ? ", " : "");
}

Status metrics_write(Metrics *m, const StepRecord *r, const EvalFigures *e, const TeacherFigures *t) {
    FILE *f = m->file;
    if (!f) return STATUS_OK; /* ranks other than 0 keep no metrics file */
    fprintf(f, "{\"step\": %lld, \"tokens\": %lld%s", (long long)r->step, (long long)r->tokens,
            r->step > 0 || e || t ? ", " : "");
    if (r->step == 0) {
        fprintf(f, "\"kv_bytes_per_token\": {\"student\": %lld", (long long)r->kv_bytes_student);
        if (r->has_teacher) fprintf(f, ", \"teacher\": %lld", (long long)r->kv_bytes_teacher);
        fprintf(f, "}%s", e || t ? ", " : "");
    }
    if (r->step > 0) { /* step 0 is the evaluation at initialisation: no training figures yet */
        json_number(f, "lr", r->lr, 1);
        json_number(f, "loss", r->loss, 1);
        if (r->has_teacher) json_number(f, "kl", r->kl, 1);
        json_number(f, "ce", r->ce, 1);
        json_number(f, "grad_norm", r->grad_norm, 1);
        json_number(f, "tok_s", r->tok_s, 1);
        json_number(f, "elapsed", r->elapsed, e || t);
    }
    if (e) {
        fprintf(f, "\"eval\": {");
        json_number(f, "loss", e->loss, 1);
        json_number(f, "ppl", e->ppl, 1);
        if (e->has_teacher) {
            json_number(f, "kl", e->kl, 1);
            json_number(f, "top1_agree", e->top1_agree, 1);
        }
        fprintf(f, "\"windows\": %lld, \"tokens\": %lld", (long long)e->windows, (long long)e->tokens);
        if (e->tasks.count > 0) {
            fprintf(f, ", \"tasks\": {");
            for (int i = 0; i < e->tasks.count; i++) {
                const TaskScore *k = &e->tasks.task[i];
                fprintf(f, "%s\"%s\": {", i ? ", " : "", k->name);
                json_number(f, "acc", k->acc, 1);
                json_number(f, "acc_norm", k->acc_norm, 1);
                fprintf(f, "\"n\": %lld}", (long long)k->n);
            }
            fprintf(f, "}");
        }
        fprintf(f, "}%s", t ? ", " : "");
    }
    if (t) {
        fprintf(f, "\"teacher_eval\": {");
        json_number(f, "loss", t->loss, 1);
        json_number(f, "ppl", t->ppl, 0);
        fprintf(f, "}");
    }
    fprintf(f, "}\n");
    if (fflush(f) != 0 || ferror(f)) return errorf("metrics.jsonl: write failed: %s", strerror(errno));
    return STATUS_OK;
}

static void format_eta(double seconds, char *buf, size_t n) {
    if (!isfinite(seconds) || seconds < 0) seconds = 0;
    long s = (long)(seconds + 0.5);
    if (s >= 3600) snprintf(buf, n, "%ldh%02ldm", s / 3600, s / 60 % 60);
    else snprintf(buf, n, "%ldm%02lds", s / 60, s % 60);
}

void metrics_progress(Metrics *m, const StepRecord *r, int plain) {
    double per_step = r->step > 0 ? r->elapsed / (double)r->step : 0;
    char eta[32];
    format_eta(per_step * (double)(r->max_steps - r->step), eta, sizeof eta);
    char line[256];
    if (r->has_teacher)
        snprintf(line, sizeof line, "step %lld/%lld  loss %.4f  kl %.4f  ce %.4f  lr %.3g  %.0f tok/s  ETA %s",
                 (long long)r->step, (long long)r->max_steps, r->loss, r->kl, r->ce, r->lr, r->tok_s, eta);
    else
        snprintf(line, sizeof line, "step %lld/%lld  loss %.4f  lr %.3g  %.0f tok/s  ETA %s", (long long)r->step,
                 (long long)r->max_steps, r->loss, r->lr, r->tok_s, eta);
    if (m->tty) {
        /* Redraw in place; a logged step leaves its line on screen. */
        printf("\r%-100s", line);
        m->line_open = 1;
        if (plain) {
            fputc('\n', stdout);
            m->line_open = 0;
        }
    } else if (plain) {
        printf("%s\n", line);
    }
    fflush(stdout);
}

void metrics_print_eval(Metrics *m, int64_t step, const EvalFigures *e, const TeacherFigures *t) {
    if (m->line_open) {
        fputc('\n', stdout);
        m->line_open = 0;
    }
    printf("eval @ step %lld: student loss %.4f ppl %.3f", (long long)step, e->loss, e->ppl);
    if (e->has_teacher) printf("  kl %.4f  top-1 agreement %.3f", e->kl, e->top1_agree);
    if (t) printf("  | teacher loss %.4f ppl %.3f", t->loss, t->ppl);
    printf("  (%lld windows, %lld tokens)\n", (long long)e->windows, (long long)e->tokens);
    for (int i = 0; i < e->tasks.count; i++)
        printf("  task %s: accuracy %.4f, per-token %.4f (%lld items)\n", e->tasks.task[i].name, e->tasks.task[i].acc,
               e->tasks.task[i].acc_norm, (long long)e->tasks.task[i].n);
    fflush(stdout);
}
