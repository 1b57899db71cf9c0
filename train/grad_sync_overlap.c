/* Gradient sums by layer on the communicator's stream: which tensors form a layer's group, the
 * backward hook that issues a group, and the wait at the end of the step. */
#include "train/grad_sync_overlap.h"

#include <stdint.h>
#include <string.h>

#include "train/grad_sync.h"
#ifdef MLATRAIN_HAVE_CUDA
#include "model/ops/cuda/cuda_backend.h"
#endif

/* A layer holds at most 19 tensors (model.c), the rest 3 (embedding, final norm, head). */
enum { GROUP_MAX = 32 };

GradSync grad_sync_start(Comm *c, Model *m, int overlap) {
    GradSync s = {.comm = c, .model = m, .overlap = overlap};
    s.by_layer = c->all_reduce_sum_f32_after != NULL && c->wait_issued != NULL;
#ifdef MLATRAIN_HAVE_CUDA
    if (strcmp(m->be->name, "cuda") == 0) s.compute_stream = cuda_backend_stream(m->be);
#endif
    return s;
}

/* The layer whose gradient mirror holds this tensor; -1 for the embedding, final norm and head. */
static int layer_of(const Model *m, const Tensor *grad) {
    uintptr_t g = (uintptr_t)grad, lo = (uintptr_t)m->grad_layers;
    uintptr_t hi = lo + (uintptr_t)m->cfg.num_hidden_layers * sizeof(LayerWeights);
    return g >= lo && g < hi ? (int)((g - lo) / sizeof(LayerWeights)) : -1;
}

/* The group issued k-th in a step: layer L-1-k for k < L, the rest (-1) for k == L. */
static int layer_of_group(const Model *m, int k) { return k < m->cfg.num_hidden_layers ? m->cfg.num_hidden_layers - 1 - k : -1; }

/* Issues the next group, which must be `layer`'s: its tensors in parameter order. */
static Status issue(GradSync *s, int layer) {
    Model *m = s->model;
    int L = (int)m->cfg.num_hidden_layers;
    if (s->issued > L)
        return errorf("gradient sums: layer %d's gradients reported after every group was issued", layer);
    if (layer != layer_of_group(m, s->issued))
        return errorf("gradient sums: layer %d's gradients reported where layer %d's were due", layer,
                      layer_of_group(m, s->issued));
    float *bufs[GROUP_MAX];
    int64_t counts[GROUP_MAX];
    int n = 0;
    for (int i = 0; i < m->n_params; i++) {
        Tensor *g = m->params[i].grad;
        if (layer_of(m, g) != layer) continue;
        if (n == GROUP_MAX) return errorf("gradient sums: layer %d has more than %d tensors", layer, GROUP_MAX);
        bufs[n] = tensor_f32(*g);
        counts[n] = tensor_numel(*g);
        n++;
    }
    s->issued++;
    Status st = s->comm->all_reduce_sum_f32_after(s->comm, bufs, counts, n, s->compute_stream);
    if (st != STATUS_OK) {
        if (layer < 0) return error_context("summing the embedding's, final norm's and head's gradients: ");
        return error_context("summing layer %d's gradients: ", layer);
    }
    return STATUS_OK;
}

static Status on_grads_ready(void *ctx, int layer) { return issue((GradSync *)ctx, layer); }

Status grad_sync_backward(GradSync *s, ForwardState *st, Tensor dhidden, int last) {
    if (s->by_layer && s->overlap && last) return model_backward_hooked(s->model, st, dhidden, on_grads_ready, s);
    return model_backward(s->model, st, dhidden);
}

Status grad_sync_finish(GradSync *s, float *bucket) {
    if (!s->by_layer) return grad_all_reduce(s->comm, s->model, bucket);
    int L = (int)s->model->cfg.num_hidden_layers;
    while (s->issued <= L) TRY(issue(s, layer_of_group(s->model, s->issued)));
    if (s->comm->wait_issued(s->comm, s->compute_stream) != STATUS_OK)
        return error_context("summing the gradients over %d ranks: ", s->comm->env.world);
    return STATUS_OK;
}
