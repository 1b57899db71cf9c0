/* Throttled progress lines on stderr, in the trainer's terms (n/total, elapsed, ETA). */
#include "core/progress.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/clock.h"

static double progress_interval(void) {
    const char *env = getenv("MLATRAIN_PROGRESS_SECONDS");
    if (!env || !*env) return 1.0;
    char *end = NULL;
    double s = strtod(env, &end);
    return end != env && *end == '\0' && s >= 0 && isfinite(s) ? s : 1.0;
}

static void format_duration(double seconds, char *buf, size_t n) {
    if (!isfinite(seconds) || seconds < 0) seconds = 0;
    long s = (long)(seconds + 0.5);
    if (s >= 3600) snprintf(buf, n, "%ldh%02ldm", s / 3600, s / 60 % 60);
    else snprintf(buf, n, "%ldm%02lds", s / 60, s % 60);
}

void progress_begin(Progress *p, const char *what, int64_t total) {
    p->what = what;
    p->total = total;
    p->start = p->last = monotonic_seconds();
    p->printed = 0;
}

void progress_update(Progress *p, int64_t done) {
    double now = monotonic_seconds();
    if (now - p->last < progress_interval()) return;
    p->last = now;
    p->printed = 1;
    double elapsed = now - p->start;
    char took[32], eta[32];
    format_duration(elapsed, took, sizeof took);
    if (p->total > 0 && done > 0) {
        format_duration(elapsed / (double)done * (double)(p->total - done), eta, sizeof eta);
        fprintf(stderr, "%s %lld/%lld  %s elapsed  ETA %s\n", p->what, (long long)done, (long long)p->total, took,
                eta);
    } else if (p->total > 0) {
        fprintf(stderr, "%s %lld/%lld  %s elapsed\n", p->what, (long long)done, (long long)p->total, took);
    } else {
        fprintf(stderr, "%s %lld  %s elapsed\n", p->what, (long long)done, took);
    }
    fflush(stderr);
}

void progress_end(Progress *p) {
    if (!p->printed) return;
    char took[32];
    format_duration(monotonic_seconds() - p->start, took, sizeof took);
    if (p->total > 0)
        fprintf(stderr, "%s %lld/%lld  done in %s\n", p->what, (long long)p->total, (long long)p->total, took);
    else
        fprintf(stderr, "%s  done in %s\n", p->what, took);
    fflush(stderr);
}
