/* bf16 storage on the CPU backend: an op given bf16 tensors runs its float32 kernel on widened
 * copies and rounds what it wrote back to bf16 once. That is the storage contract of core/backend.h
 * exactly, so this is the reference the CUDA backend's bf16 kernels are checked against. */
#include "cpu_ops.h"

#include <stdlib.h>

#include "core/half.h"

enum { MAX_WIDENED = 12 };

/* The bf16 arguments of one call, each swapped for a float32 copy for the kernel's duration. */
typedef struct {
    const char *op;
    int noted;                  /* storage arguments seen */
    DType storage;              /* their one dtype */
    int n;
    Tensor *arg[MAX_WIDENED];
    Tensor bf16[MAX_WIDENED];
    int written[MAX_WIDENED];
} Widened;

/* Registers a storage argument (activations, weights read by forward, activation gradients). All
 * of a call's present storage arguments must share one dtype, f32 or bf16; the f32-only arguments
 * (rstd, lse, parameter gradients) are left to the kernel's own checks. */
static Status storage(Widened *w, const char *name, Tensor *t, int written) {
    TRY(storage_dtype_note(w->op, name, *t, &w->noted, &w->storage));
    if (tensor_present(*t) && t->dtype == DT_BF16) {
        w->arg[w->n] = t;
        w->bf16[w->n] = *t;
        w->written[w->n] = written;
        w->n++;
    }
    return STATUS_OK;
}

/* Puts the bf16 tensors back, rounding into them what the kernel wrote when it succeeded. */
static void restore(Widened *w, int write_back) {
    for (int i = 0; i < w->n; i++) {
        float *wide = w->arg[i]->data;
        if (wide && wide != w->bf16[i].data) {
            if (write_back && w->written[i]) {
                uint16_t *h = w->bf16[i].data;
                int64_t n = tensor_numel(w->bf16[i]);
#pragma omp parallel for schedule(static)
                for (int64_t j = 0; j < n; j++) h[j] = f32_to_bf16(wide[j]);
            }
            free(wide);
        }
        *w->arg[i] = w->bf16[i];
    }
}

static Status widen(Widened *w) {
    for (int i = 0; i < w->n; i++) {
        int64_t n = tensor_numel(w->bf16[i]);
        float *wide = malloc((size_t)(n > 0 ? n : 1) * sizeof *wide);
        if (!wide) {
            restore(w, 0);
            return errorf("%s: out of memory widening %lld bf16 values", w->op, (long long)n);
        }
        const uint16_t *h = w->bf16[i].data;
#pragma omp parallel for schedule(static)
        for (int64_t j = 0; j < n; j++) wide[j] = bf16_to_f32(h[j]);
        w->arg[i]->data = wide;
        w->arg[i]->dtype = DT_F32;
    }
    return STATUS_OK;
}

/* A call with no bf16 argument goes straight to the float32 kernel (bitwise as before). */
#define RUN(w, call)                                  \
    do {                                              \
        if ((w).n == 0) return call;                  \
        TRY(widen(&(w)));                             \
        Status st_ = call;                            \
        restore(&(w), st_ == STATUS_OK);              \
        return st_;                                   \
    } while (0)

static Status embedding_forward(Backend *be, Tensor out, Tensor ids, Tensor table) {
    Widened w = {.op = "embedding_forward"};
    TRY(storage(&w, "out", &out, 1));
    TRY(storage(&w, "table", &table, 0));
    RUN(w, cpu_embedding_forward(be, out, ids, table));
}

static Status embedding_backward(Backend *be, Tensor dtable, Tensor dout, Tensor ids) {
    Widened w = {.op = "embedding_backward"};
    TRY(storage(&w, "dout", &dout, 0));
    RUN(w, cpu_embedding_backward(be, dtable, dout, ids));
}

static Status rmsnorm_forward(Backend *be, Tensor y, Tensor rstd, Tensor x, Tensor wt, float eps) {
    Widened w = {.op = "rmsnorm_forward"};
    TRY(storage(&w, "y", &y, 1));
    TRY(storage(&w, "x", &x, 0));
    TRY(storage(&w, "w", &wt, 0));
    RUN(w, cpu_rmsnorm_forward(be, y, rstd, x, wt, eps));
}

static Status rmsnorm_backward(Backend *be, Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor wt, Tensor rstd) {
    Widened w = {.op = "rmsnorm_backward"};
    TRY(storage(&w, "dx", &dx, 1));
    TRY(storage(&w, "dy", &dy, 0));
    TRY(storage(&w, "x", &x, 0));
    TRY(storage(&w, "w", &wt, 0));
    RUN(w, cpu_rmsnorm_backward(be, dx, dw, dy, x, wt, rstd));
}

/* Widened, so the bf16 dx is the f32 sum rounded once, as the GPU's kernel gives. */
static Status rmsnorm_residual_backward(Backend *be, Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor wt,
                                        Tensor rstd, Tensor dres) {
    Widened w = {.op = "rmsnorm_residual_backward"};
    if (tensor_present(dx) && dx.data == dres.data)
        return errorf("rmsnorm_residual_backward: dx and dres must be different memory");
    TRY(storage(&w, "dx", &dx, 1));
    TRY(storage(&w, "dy", &dy, 0));
    TRY(storage(&w, "x", &x, 0));
    TRY(storage(&w, "w", &wt, 0));
    TRY(storage(&w, "dres", &dres, 0));
    RUN(w, cpu_rmsnorm_residual_backward(be, dx, dw, dy, x, wt, rstd, dres));
}

static Status linear_forward(Backend *be, Tensor y, Tensor x, Tensor wt, Tensor b) {
    Widened w = {.op = "linear_forward"};
    /* y may be f32 whatever the inputs (logits are kept in f32). */
    if (y.dtype != DT_F32) TRY(storage(&w, "y", &y, 1));
    TRY(storage(&w, "x", &x, 0));
    TRY(storage(&w, "w", &wt, 0));
    TRY(storage(&w, "b", &b, 0));
    RUN(w, cpu_linear_forward(be, y, x, wt, b));
}

/* Widened, so the bf16 result is the f32 sum rounded once, as the GPU's fused epilogue gives. */
static Status linear_residual_forward(Backend *be, Tensor y, Tensor x, Tensor wt, Tensor r) {
    Widened w = {.op = "linear_residual_forward"};
    if (tensor_present(y) && y.data == r.data)
        return errorf("linear_residual_forward: y and r must be different memory");
    TRY(storage(&w, "y", &y, 1));
    TRY(storage(&w, "x", &x, 0));
    TRY(storage(&w, "w", &wt, 0));
    TRY(storage(&w, "r", &r, 0));
    RUN(w, cpu_linear_residual_forward(be, y, x, wt, r));
}

static Status linear_backward(Backend *be, Tensor dx, Tensor dw, Tensor db, Tensor dy, Tensor x, Tensor wt) {
    Widened w = {.op = "linear_backward"};
    TRY(storage(&w, "dx", &dx, 1));
    TRY(storage(&w, "dy", &dy, 0));
    TRY(storage(&w, "x", &x, 0));
    TRY(storage(&w, "w", &wt, 0));
    RUN(w, cpu_linear_backward(be, dx, dw, db, dy, x, wt));
}

static Status rope_forward(Backend *be, Tensor x, int64_t offset, Tensor cos, Tensor sin, Tensor pos) {
    Widened w = {.op = "rope_forward"};
    TRY(storage(&w, "x", &x, 1));
    RUN(w, cpu_rope_forward(be, x, offset, cos, sin, pos));
}

static Status rope_backward(Backend *be, Tensor dx, int64_t offset, Tensor cos, Tensor sin, Tensor pos) {
    Widened w = {.op = "rope_backward"};
    TRY(storage(&w, "dx", &dx, 1));
    RUN(w, cpu_rope_backward(be, dx, offset, cos, sin, pos));
}

static Status attention_forward(Backend *be, Tensor out, Tensor lse, Tensor q, Tensor k, Tensor k_shared,
                                Tensor v, float scale) {
    Widened w = {.op = "attention_forward"};
    TRY(storage(&w, "out", &out, 1));
    TRY(storage(&w, "q", &q, 0));
    TRY(storage(&w, "k", &k, 0));
    TRY(storage(&w, "k_shared", &k_shared, 0));
    TRY(storage(&w, "v", &v, 0));
    RUN(w, cpu_attention_forward(be, out, lse, q, k, k_shared, v, scale));
}

static Status attention_decode(Backend *be, Tensor out, Tensor q, Tensor k, Tensor k_shared, Tensor v, float scale) {
    Widened w = {.op = "attention_decode"};
    TRY(storage(&w, "out", &out, 1));
    TRY(storage(&w, "q", &q, 0));
    TRY(storage(&w, "k", &k, 0));
    TRY(storage(&w, "k_shared", &k_shared, 0));
    TRY(storage(&w, "v", &v, 0));
    RUN(w, cpu_attention_decode(be, out, q, k, k_shared, v, scale));
}

static Status attention_backward(Backend *be, Tensor dq, Tensor dk, Tensor dk_shared, Tensor dv, Tensor dout,
                                 Tensor out, Tensor lse, Tensor q, Tensor k, Tensor k_shared, Tensor v,
                                 float scale) {
    Widened w = {.op = "attention_backward"};
    TRY(storage(&w, "dq", &dq, 1));
    TRY(storage(&w, "dk", &dk, 1));
    TRY(storage(&w, "dk_shared", &dk_shared, 1));
    TRY(storage(&w, "dv", &dv, 1));
    TRY(storage(&w, "dout", &dout, 0));
    TRY(storage(&w, "out", &out, 0));
    TRY(storage(&w, "q", &q, 0));
    TRY(storage(&w, "k", &k, 0));
    TRY(storage(&w, "k_shared", &k_shared, 0));
    TRY(storage(&w, "v", &v, 0));
    RUN(w, cpu_attention_backward(be, dq, dk, dk_shared, dv, dout, out, lse, q, k, k_shared, v, scale));
}

static Status swiglu_forward(Backend *be, Tensor out, Tensor gate, Tensor up) {
    Widened w = {.op = "swiglu_forward"};
    TRY(storage(&w, "out", &out, 1));
    TRY(storage(&w, "gate", &gate, 0));
    TRY(storage(&w, "up", &up, 0));
    RUN(w, cpu_swiglu_forward(be, out, gate, up));
}

static Status swiglu_backward(Backend *be, Tensor dgate, Tensor dup, Tensor dout, Tensor gate, Tensor up) {
    Widened w = {.op = "swiglu_backward"};
    TRY(storage(&w, "dgate", &dgate, 1));
    TRY(storage(&w, "dup", &dup, 1));
    TRY(storage(&w, "dout", &dout, 0));
    TRY(storage(&w, "gate", &gate, 0));
    TRY(storage(&w, "up", &up, 0));
    RUN(w, cpu_swiglu_backward(be, dgate, dup, dout, gate, up));
}

static Status lm_head_loss(Backend *be, LossSums *sums, Tensor dh, Tensor dw, Tensor h, Tensor wt, Tensor ht,
                           Tensor wtt, Tensor targets, LossConfig cfg, float grad_scale) {
    Widened w = {.op = "lm_head_loss"};
    TRY(storage(&w, "dh", &dh, 1));
    TRY(storage(&w, "h", &h, 0));
    TRY(storage(&w, "w", &wt, 0));
    TRY(storage(&w, "ht", &ht, 0));
    TRY(storage(&w, "wt", &wtt, 0));
    RUN(w, cpu_lm_head_loss(be, sums, dh, dw, h, wt, ht, wtt, targets, cfg, grad_scale));
}

static Status lm_head_loss_topk(Backend *be, LossSums *sums, Tensor dh, Tensor dw, Tensor h, Tensor wt,
                                Tensor teacher_logprobs, Tensor teacher_ids, Tensor targets, LossConfig cfg,
                                float grad_scale) {
    Widened w = {.op = "lm_head_loss_topk"};
    TRY(storage(&w, "dh", &dh, 1));
    TRY(storage(&w, "h", &h, 0));
    TRY(storage(&w, "w", &wt, 0));
    RUN(w, cpu_lm_head_loss_topk(be, sums, dh, dw, h, wt, teacher_logprobs, teacher_ids, targets, cfg, grad_scale));
}

static Status sum_squares(Backend *be, double *out, Tensor t) {
    Widened w = {.op = "sum_squares"};
    TRY(storage(&w, "t", &t, 0));
    RUN(w, cpu_sum_squares(be, out, t));
}

static Status scale(Backend *be, Tensor t, float s) {
    Widened w = {.op = "scale"};
    TRY(storage(&w, "t", &t, 1));
    RUN(w, cpu_scale(be, t, s));
}

static Status accumulate(Backend *be, Tensor y, Tensor x) {
    Widened w = {.op = "accumulate"};
    TRY(storage(&w, "y", &y, 1));
    TRY(storage(&w, "x", &x, 0));
    RUN(w, cpu_accumulate(be, y, x));
}

void cpu_ops_add_bf16_storage(Ops *ops) {
    ops->embedding_forward = embedding_forward;
    ops->embedding_backward = embedding_backward;
    ops->rmsnorm_forward = rmsnorm_forward;
    ops->rmsnorm_backward = rmsnorm_backward;
    ops->rmsnorm_residual_backward = rmsnorm_residual_backward;
    ops->linear_forward = linear_forward;
    ops->linear_backward = linear_backward;
    ops->linear_residual_forward = linear_residual_forward;
    ops->rope_forward = rope_forward;
    ops->rope_backward = rope_backward;
    ops->attention_forward = attention_forward;
    ops->attention_backward = attention_backward;
    ops->attention_decode = attention_decode;
    ops->swiglu_forward = swiglu_forward;
    ops->swiglu_backward = swiglu_backward;
    ops->lm_head_loss = lm_head_loss;
    ops->lm_head_loss_topk = lm_head_loss_topk;
    ops->sum_squares = sum_squares;
    ops->scale = scale;
    ops->accumulate = accumulate;
}
