/* Progress lines for long steps (loading, converting, evaluating, writing, preparing data) on
 * stderr: what, n/total, elapsed, ETA, at most one line a second, so a long step is never silent. */
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *what;     /* "convert: layer", "eval: window", ... */
    int64_t total;        /* 0: unknown (no ETA) */
    double start, last;   /* monotonic seconds */
    int printed;
} Progress;

/* Starts timing a step of `total` units (0 when unknown). */
void progress_begin(Progress *p, const char *what, int64_t total);

/* `done` of total units are done: prints "what done/total  elapsed  ETA" when the interval has
 * passed since the start or the last line. The interval is one second, or MLATRAIN_PROGRESS_SECONDS
 * from the environment (0: every call). */
void progress_update(Progress *p, int64_t done);

/* The step is over: a last line with the total time, when any line was printed. */
void progress_end(Progress *p);

#ifdef __cplusplus
}
#endif
