/* Evaluation passes: windows in order, forward passes that keep no activations, the fused LM-head
 * loss in sums-only mode (no gradients), sums reduced in window order. */
#include "train/evaluate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/progress.h"

typedef struct {
    Backend *be;
    int64_t B, T;
    ForwardState *st_a, *st_b;
    Tensor ids, targets, hidden_a, hidden_b;
    int32_t *window, *host_ids, *host_targets;
} EvalBuffers;

static void eval_buffers_free(EvalBuffers *e) {
    Tensor *ts[] = {&e->ids, &e->targets, &e->hidden_a, &e->hidden_b};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
        if (ts[i]->data) e->be->release(e->be, ts[i]);
    forward_state_destroy(e->st_a);
    forward_state_destroy(e->st_b);
    free(e->window);
    free(e->host_ids);
    free(e->host_targets);
}

static Status eval_buffers_init(EvalBuffers *e, Model *a, Model *b, int64_t B, int64_t T) {
    memset(e, 0, sizeof *e);
    e->be = a->be;
    e->B = B;
    e->T = T;
    int64_t N = B * T;
    TRY(forward_state_create(&e->st_a, a, B, T, 0));
    if (b) TRY(forward_state_create(&e->st_b, b, B, T, 0));
    TRY(e->be->alloc(e->be, &e->ids, DT_I32, 1, &N));
    TRY(e->be->alloc(e->be, &e->targets, DT_I32, 1, &N));
    TRY(e->be->alloc(e->be, &e->hidden_a, a->dtype, 2, (int64_t[]){N, a->cfg.hidden_size}));
    if (b) TRY(e->be->alloc(e->be, &e->hidden_b, b->dtype, 2, (int64_t[]){N, b->cfg.hidden_size}));
    e->window = malloc((size_t)(T + 1) * sizeof(int32_t));
    e->host_ids = malloc((size_t)N * sizeof(int32_t));
    e->host_targets = malloc((size_t)N * sizeof(int32_t));
    if (!e->window || !e->host_ids || !e->host_targets) return errorf("evaluation: out of memory");
    return STATUS_OK;
}

/* Loads windows [first, first + rows) into ids/targets (rows <= B; unused rows are ignored). */
static Status load_windows(EvalBuffers *e, Loader *val, int64_t first, int64_t rows) {
    for (int64_t r = 0; r < e->B; r++) {
        int32_t *ids = e->host_ids + r * e->T, *tgt = e->host_targets + r * e->T;
        if (r < rows) {
            TRY(loader_read_window(val, (uint64_t)(first + r), e->window));
            memcpy(ids, e->window, (size_t)e->T * sizeof(int32_t));
            memcpy(tgt, e->window + 1, (size_t)e->T * sizeof(int32_t));
        } else {
            memset(ids, 0, (size_t)e->T * sizeof(int32_t));
            for (int64_t t = 0; t < e->T; t++) tgt[t] = -100;
        }
    }
    TRY(e->be->upload(e->be, e->ids, e->host_ids));
    return e->be->upload(e->be, e->targets, e->host_targets);
}

static int64_t windows_to_read(Loader *val, int64_t max_windows) {
    int64_t have = (int64_t)loader_windows_per_epoch(val);
    return max_windows > 0 && max_windows < have ? max_windows : have;
}

Status evaluate_student(Model *student, Model *teacher, Loader *val, int64_t max_windows, int64_t batch,
                        EvalFigures *out) {
    memset(out, 0, sizeof *out);
    int64_t n = windows_to_read(val, max_windows), T = student->max_seq;
    if (batch > n) batch = n;
    EvalBuffers e;
    Status st = eval_buffers_init(&e, student, teacher, batch, T);
    LossSums sums = {0};
    /* Temperature 1 and unit weights: sums.ce is the student's CE, sums.kl the KL at T = 1. */
    LossConfig lc = {.kl_weight = 1, .ce_weight = 1, .temperature = 1, .ignore_index = -100, .chunk_tokens = 0};
    Progress progress;
    progress_begin(&progress, "eval: window", n);
    for (int64_t w = 0; st == STATUS_OK && w < n; w += batch) {
        st = load_windows(&e, val, w, n - w < batch ? n - w : batch);
        if (st == STATUS_OK) st = model_forward(student, e.st_a, e.ids, e.hidden_a);
        if (st == STATUS_OK && teacher) st = model_forward(teacher, e.st_b, e.ids, e.hidden_b);
        if (st == STATUS_OK)
            st = e.be->ops.lm_head_loss(e.be, &sums, tensor_none(), tensor_none(), e.hidden_a,
                                        model_compute_lm_head(student), teacher ? e.hidden_b : tensor_none(),
                                        teacher ? model_compute_lm_head(teacher) : tensor_none(), e.targets, lc, 0.0f);
        if (st == STATUS_OK) progress_update(&progress, w + batch < n ? w + batch : n);
    }
    if (st == STATUS_OK) progress_end(&progress);
    eval_buffers_free(&e);
    if (st != STATUS_OK) return error_context("evaluation: ");
    out->windows = n;
    out->tokens = sums.counted;
    out->has_teacher = teacher != NULL;
    out->loss = sums.counted ? sums.ce / (double)sums.counted : 0;
    out->ppl = exp(out->loss);
    out->kl = sums.counted ? sums.kl / (double)sums.counted : 0;
    out->top1_agree = sums.counted ? (double)sums.top1_agree / (double)sums.counted : 0;
    return STATUS_OK;
}

Status evaluate_teacher(Model *teacher, Loader *val, int64_t max_windows, int64_t batch, TeacherFigures *out) {
    EvalFigures f;
    TRY(evaluate_student(teacher, NULL, val, max_windows, batch, &f));
    out->loss = f.loss;
    out->ppl = f.ppl;
    out->windows = f.windows;
    out->tokens = f.tokens;
    return STATUS_OK;
}
