/* zero1_step: pack -> reduce-scatter -> norm over ranks -> clip -> AdamW on slices -> all-gather ->
 * unpack. Buffers live where the backend's tensors do, and every step is a backend op on views, so
 * the same code runs on the CPU with MPI and on the GPU with NCCL. */
#include "optim/zero1.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* [len] f32 values of t from element `at` (a view: no copy). */
static Tensor slice(Tensor t, int64_t at, int64_t len) {
    return tensor_view((char *)t.data + (size_t)at * dtype_size(t.dtype), t.dtype, 1, &len);
}

static Tensor flat_view(Tensor t) {
    int64_t n = tensor_numel(t);
    return tensor_view(t.data, t.dtype, 1, &n);
}

Status zero1_create(Zero1 *z, Model *model, OptimizerConfig cfg, Comm *comm) {
    memset(z, 0, sizeof *z);
    Backend *be = model->be;
    z->model = model;
    z->comm = comm;
    z->cfg = cfg;
    int W = comm->env.world, r = comm->env.rank;
    z->n = optimizer_flat_size(model);
    z->per = (z->n + W - 1) / W;
    z->lo = r * z->per < z->n ? r * z->per : z->n;
    z->hi = z->lo + z->per < z->n ? z->lo + z->per : z->n;
    int64_t all = z->per * W;
    Status st = be->alloc(be, &z->flat, DT_F32, 1, &all);
    if (st == STATUS_OK) st = be->alloc(be, &z->grad, DT_F32, 1, &z->per);
    if (st == STATUS_OK) st = be->alloc(be, &z->m, DT_F32, 1, &z->per);
    if (st == STATUS_OK) st = be->alloc(be, &z->v, DT_F32, 1, &z->per);
    if (st != STATUS_OK) {
        zero1_destroy(z);
        return error_context("dist.zero1: %lld values: ", (long long)all);
    }
    return STATUS_OK;
}

void zero1_destroy(Zero1 *z) {
    Backend *be = z->model ? z->model->be : NULL;
    Tensor *all[] = {&z->flat, &z->grad, &z->m, &z->v};
    for (size_t i = 0; be && i < sizeof all / sizeof all[0]; i++)
        if (all[i]->data) be->release(be, all[i]);
    memset(z, 0, sizeof *z);
}

Status zero1_step(Zero1 *z, double lr, double grad_clip, double *norm_out) {
    Model *m = z->model;
    Backend *be = m->be;
    Comm *c = z->comm;
    int64_t off = 0;
    for (int i = 0; i < m->n_params; i++) {
        int64_t n = tensor_numel(*m->params[i].grad);
        TRY(be->ops.cast(be, slice(z->flat, off, n), flat_view(*m->params[i].grad)));
        off += n;
    }
    if (z->per * c->env.world > z->n) TRY(be->zero(be, slice(z->flat, z->n, z->per * c->env.world - z->n)));
    /* The collectives run on the communicator's own stream (NCCL): the packing must be done first. */
    TRY(be->synchronize(be));
    TRY(c->reduce_scatter_sum_f32(c, tensor_f32(z->flat), tensor_f32(z->grad), z->per));

    int64_t len = z->hi - z->lo;
    double sq = 0;
    TRY(be->ops.sum_squares(be, &sq, slice(z->grad, 0, len)));
    TRY(c->all_reduce_sum_f64(c, &sq, 1));
    double norm = sqrt(sq);
    *norm_out = norm;
    if (!isfinite(norm)) return errorf("the gradient norm is %g (NaN or Inf in the gradients)", norm);

    /* AdamW on the part of each parameter inside [lo, hi), clipped as it reads the gradient: one
     * multi-tensor op. */
    AdamWParam *list = malloc((size_t)(m->n_params > 0 ? m->n_params : 1) * sizeof *list);
    if (!list) return errorf("dist.zero1: out of memory");
    int count = 0;
    off = 0;
    for (int i = 0; i < m->n_params; i++) {
        Tensor *p = m->params[i].value;
        int64_t n = tensor_numel(*p), a = off > z->lo ? off : z->lo, b = off + n < z->hi ? off + n : z->hi;
        if (a < b) {
            int64_t k = b - a;
            list[count++] = (AdamWParam){.param = slice(*p, a - off, k), .grad = slice(z->grad, a - z->lo, k),
                                         .m = slice(z->m, a - z->lo, k), .v = slice(z->v, a - z->lo, k),
                                         .param_copy = tensor_none(),
                                         .decay = m->params[i].decay || z->cfg.decay_norms_and_embeddings};
        }
        off += n;
    }
    AdamWConfig ac = {.lr = (float)lr, .beta1 = (float)z->cfg.beta1, .beta2 = (float)z->cfg.beta2,
                      .eps = (float)z->cfg.eps, .weight_decay = (float)z->cfg.weight_decay, .step = z->step + 1};
    Status st = be->ops.adamw_step_multi(be, list, count, ac, grad_clip_scale(norm, grad_clip));
    free(list);
    if (st != STATUS_OK) return error_context("dist.zero1: ");
    z->step++;

    /* Every rank's shard of the new weights, to every rank. */
    off = 0;
    for (int i = 0; i < m->n_params; i++) {
        Tensor *p = m->params[i].value;
        int64_t n = tensor_numel(*p), a = off > z->lo ? off : z->lo, b = off + n < z->hi ? off + n : z->hi;
        if (a < b) TRY(be->ops.cast(be, slice(z->grad, a - z->lo, b - a), slice(*p, a - off, b - a)));
        off += n;
    }
    TRY(be->synchronize(be));
    TRY(c->all_gather_f32(c, tensor_f32(z->grad), tensor_f32(z->flat), z->per));
    off = 0;
    for (int i = 0; i < m->n_params; i++) {
        int64_t n = tensor_numel(*m->params[i].value);
        TRY(be->ops.cast(be, flat_view(*m->params[i].value), slice(z->flat, off, n)));
        off += n;
    }
    /* The bf16 copies forward reads (if any) are refreshed from the gathered masters. */
    model_weights_changed(m);
    return STATUS_OK;
}

Status zero1_get_moments(const Zero1 *z, float *m, float *v) {
    Backend *be = z->model->be;
    int64_t len = z->hi - z->lo;
    if (len == 0) return STATUS_OK;
    TRY(be->download(be, m, slice(z->m, 0, len)));
    return be->download(be, v, slice(z->v, 0, len));
}

Status zero1_set_moments(Zero1 *z, const float *m, const float *v) {
    Backend *be = z->model->be;
    int64_t len = z->hi - z->lo;
    if (len == 0) return STATUS_OK;
    TRY(be->upload(be, slice(z->m, 0, len), m));
    return be->upload(be, slice(z->v, 0, len), v);
}
