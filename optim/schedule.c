/* lr_at: warmup reaches lr at step warmup_steps; decay reaches min_lr at step max_steps. */
#include "optim/schedule.h"

#include <math.h>

double lr_at(const LrSchedule *s, int64_t step) {
    if (s->warmup_steps > 0 && step <= s->warmup_steps) return s->lr * (double)step / (double)s->warmup_steps;
    if (s->decay == LR_CONSTANT || s->max_steps <= s->warmup_steps) return s->lr;
    double progress = (double)(step - s->warmup_steps) / (double)(s->max_steps - s->warmup_steps);
    if (progress > 1) progress = 1;
    double shape = s->decay == LR_COSINE ? 0.5 * (1.0 + cos(3.14159265358979323846 * progress)) : 1.0 - progress;
    return s->min_lr + (s->lr - s->min_lr) * shape;
}
