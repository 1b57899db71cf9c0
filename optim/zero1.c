/* zero1_step: pack -> reduce-scatter -> norm over ranks -> clip -> AdamW on slices -> all-gather ->
 * unpack. The slices are views of the parameter tensors, so the AdamW kernel is the backend's own. */
#include "optim/zero1.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

Status zero1_create(Zero1 *z, Model *model, OptimizerConfig cfg, Comm *comm) {
    memset(z, 0, sizeof *z);
    if (strcmp(model->be->name, "cpu") != 0)
        return errorf("dist.zero1: the sharded optimizer runs on the cpu backend (device \"%s\")", model->be->name);
    z->model = model;
    z->comm = comm;
    z->cfg = cfg;
    int W = comm->env.world, r = comm->env.rank;
    z->n = optimizer_flat_size(model);
    z->per = (z->n + W - 1) / W;
    z->lo = r * z->per < z->n ? r * z->per : z->n;
    z->hi = z->lo + z->per < z->n ? z->lo + z->per : z->n;
    z->flat = calloc((size_t)(z->per * W), sizeof(float));
    z->grad = calloc((size_t)z->per, sizeof(float));
    z->m = calloc((size_t)z->per, sizeof(float));
    z->v = calloc((size_t)z->per, sizeof(float));
    if (!z->flat || !z->grad || !z->m || !z->v) {
        zero1_destroy(z);
        return errorf("dist.zero1: out of memory for %lld values", (long long)(z->per * W));
    }
    return STATUS_OK;
}

void zero1_destroy(Zero1 *z) {
    free(z->flat);
    free(z->grad);
    free(z->m);
    free(z->v);
    memset(z, 0, sizeof *z);
}

Status zero1_step(Zero1 *z, double lr, double grad_clip, double *norm_out) {
    Model *m = z->model;
    Backend *be = m->be;
    Comm *c = z->comm;
    int64_t off = 0;
    for (int i = 0; i < m->n_params; i++) {
        TRY(be->download(be, z->flat + off, *m->params[i].grad));
        off += tensor_numel(*m->params[i].grad);
    }
    memset(z->flat + z->n, 0, (size_t)(z->per * c->env.world - z->n) * sizeof(float));
    TRY(c->reduce_scatter_sum_f32(c, z->flat, z->grad, z->per));

    int64_t len = z->hi - z->lo;
    double sq = 0;
    TRY(be->ops.sum_squares(be, &sq, tensor_view(z->grad, DT_F32, 1, &len)));
    TRY(c->all_reduce_sum_f64(c, &sq, 1));
    double norm = sqrt(sq);
    *norm_out = norm;
    if (!isfinite(norm)) return errorf("the gradient norm is %g (NaN or Inf in the gradients)", norm);
    if (grad_clip > 0 && norm > grad_clip)
        TRY(be->ops.scale(be, tensor_view(z->grad, DT_F32, 1, &len), (float)(grad_clip / (norm + 1e-6))));

    /* AdamW on the part of each parameter inside [lo, hi). */
    z->step++;
    off = 0;
    for (int i = 0; i < m->n_params; i++) {
        Tensor *p = m->params[i].value;
        int64_t n = tensor_numel(*p), a = off > z->lo ? off : z->lo, b = off + n < z->hi ? off + n : z->hi;
        if (a < b) {
            int64_t k = b - a;
            AdamWConfig ac = {.lr = (float)lr, .beta1 = (float)z->cfg.beta1, .beta2 = (float)z->cfg.beta2,
                              .eps = (float)z->cfg.eps,
                              .weight_decay = m->params[i].decay || z->cfg.decay_norms_and_embeddings
                                                  ? (float)z->cfg.weight_decay : 0.0f,
                              .step = z->step};
            Tensor pv = tensor_view(tensor_f32(*p) + (a - off), DT_F32, 1, &k);
            Tensor gv = tensor_view(z->grad + (a - z->lo), DT_F32, 1, &k);
            Tensor mv = tensor_view(z->m + (a - z->lo), DT_F32, 1, &k);
            Tensor vv = tensor_view(z->v + (a - z->lo), DT_F32, 1, &k);
            if (be->ops.adamw_step(be, pv, gv, mv, vv, tensor_none(), ac) != STATUS_OK)
                return error_context("dist.zero1: %s: ", m->params[i].name);
        }
        off += n;
    }

    /* Every rank's shard of the new weights, to every rank. */
    off = 0;
    for (int i = 0; i < m->n_params; i++) {
        Tensor *p = m->params[i].value;
        int64_t n = tensor_numel(*p), a = off > z->lo ? off : z->lo, b = off + n < z->hi ? off + n : z->hi;
        if (a < b) memcpy(z->grad + (a - z->lo), tensor_f32(*p) + (a - off), (size_t)(b - a) * sizeof(float));
        off += n;
    }
    TRY(c->all_gather_f32(c, z->grad, z->flat, z->per));
    off = 0;
    for (int i = 0; i < m->n_params; i++) {
        TRY(be->upload(be, *m->params[i].value, z->flat + off));
        off += tensor_numel(*m->params[i].value);
    }
    model_weights_changed(m);
    return STATUS_OK;
}
