/* The optimizer's state and its step: the backend's multi-tensor AdamW over every parameter. */
#include "optim/optimizer.h"

#include <stdlib.h>
#include <string.h>

Status optimizer_create(Optimizer *opt, Model *model, OptimizerConfig cfg) {
    memset(opt, 0, sizeof *opt);
    opt->model = model;
    opt->cfg = cfg;
    int n = model->n_params;
    opt->m = calloc((size_t)n, sizeof(Tensor));
    opt->v = calloc((size_t)n, sizeof(Tensor));
    if (!opt->m || !opt->v) {
        optimizer_destroy(opt);
        return errorf("optimizer: out of memory");
    }
    Backend *be = model->be;
    for (int i = 0; i < n; i++) {
        Tensor *p = model->params[i].value;
        if (be->alloc(be, &opt->m[i], DT_F32, p->ndim, p->shape) != STATUS_OK ||
            be->alloc(be, &opt->v[i], DT_F32, p->ndim, p->shape) != STATUS_OK) {
            optimizer_destroy(opt);
            return error_context("optimizer state for %s: ", model->params[i].name);
        }
    }
    return STATUS_OK;
}

void optimizer_destroy(Optimizer *opt) {
    if (!opt->model) return;
    Backend *be = opt->model->be;
    for (int i = 0; i < opt->model->n_params; i++) {
        if (opt->m && opt->m[i].data) be->release(be, &opt->m[i]);
        if (opt->v && opt->v[i].data) be->release(be, &opt->v[i]);
    }
    free(opt->m);
    free(opt->v);
    memset(opt, 0, sizeof *opt);
}

int optimizer_decays(const Optimizer *opt, int i) {
    return opt->model->params[i].decay || opt->cfg.decay_norms_and_embeddings;
}

Status optimizer_step(Optimizer *opt, double lr, float grad_scale) {
    Model *m = opt->model;
    if (!m->has_grads) return errorf("optimizer_step: the model has no gradients");
    AdamWParam *list = malloc((size_t)(m->n_params > 0 ? m->n_params : 1) * sizeof *list);
    if (!list) return errorf("optimizer_step: out of memory");
    for (int i = 0; i < m->n_params; i++)
        list[i] = (AdamWParam){.param = *m->params[i].value, .grad = *m->params[i].grad, .m = opt->m[i],
                               .v = opt->v[i],
                               .param_copy = m->params[i].compute ? *m->params[i].compute : tensor_none(),
                               .decay = optimizer_decays(opt, i)};
    AdamWConfig c = {.lr = (float)lr, .beta1 = (float)opt->cfg.beta1, .beta2 = (float)opt->cfg.beta2,
                     .eps = (float)opt->cfg.eps, .weight_decay = (float)opt->cfg.weight_decay, .step = opt->step + 1};
    Status st = m->be->ops.adamw_step_multi(m->be, list, m->n_params, c, grad_scale);
    free(list);
    if (st != STATUS_OK) return error_context("optimizer step: ");
    opt->step++;
    return STATUS_OK;
}

int64_t optimizer_flat_size(const Model *m) {
    int64_t n = 0;
    for (int i = 0; i < m->n_params; i++) n += tensor_numel(*m->params[i].value);
    return n;
}

Status optimizer_get_flat_moments(const Optimizer *opt, float *m, float *v) {
    Backend *be = opt->model->be;
    int64_t off = 0;
    for (int i = 0; i < opt->model->n_params; i++) {
        TRY(be->download(be, m + off, opt->m[i]));
        TRY(be->download(be, v + off, opt->v[i]));
        off += tensor_numel(opt->m[i]);
    }
    return STATUS_OK;
}

Status optimizer_set_flat_moments(Optimizer *opt, const float *m, const float *v) {
    Backend *be = opt->model->be;
    int64_t off = 0;
    for (int i = 0; i < opt->model->n_params; i++) {
        TRY(be->upload(be, opt->m[i], m + off));
        TRY(be->upload(be, opt->v[i], v + off));
        off += tensor_numel(opt->m[i]);
    }
    return STATUS_OK;
}
