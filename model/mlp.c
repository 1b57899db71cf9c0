/* The SwiGLU MLP block of every decoder layer, forward and backward: post-attention norm,
 * down(silu(gate(a)) * up(a)), residual. */
#include "model/layers.h"

Status mlp_forward(Model *m, ForwardState *st, int layer, LayerCache *c, Tensor x_next) {
    Backend *be = m->be;
    const Ops *op = &be->ops;
    const LayerWeights *w = model_compute_layer(m, layer);
    TRY(op->rmsnorm_forward(be, c->a2, c->rstd2, c->h, w->post_norm, (float)m->cfg.rms_norm_eps));
    TRY(op->linear_forward(be, c->gate, c->a2, w->gate_proj, tensor_none()));
    TRY(op->linear_forward(be, c->up, c->a2, w->up_proj, tensor_none()));
    TRY(op->swiglu_forward(be, c->act, c->gate, c->up));
    TRY(op->linear_residual_forward(be, x_next, c->act, w->down_proj, c->h));
    return STATUS_OK;
}

Status mlp_backward(Model *m, ForwardState *st, int layer, LayerCache *c) {
    Backend *be = m->be;
    const Ops *op = &be->ops;
    const LayerWeights *w = model_compute_layer(m, layer);
    LayerWeights *gw = &m->grad_layers[layer];
    BackwardScratch *g = &st->g;
    TRY(op->rmsnorm_forward(be, c->a2, c->rstd2, c->h, w->post_norm, (float)m->cfg.rms_norm_eps));
    if (st->mode == FORWARD_RECOMPUTE_MLP) {
        /* gate and up share one buffer across layers: the same products as the forward's */
        TRY(op->linear_forward(be, c->gate, c->a2, w->gate_proj, tensor_none()));
        TRY(op->linear_forward(be, c->up, c->a2, w->up_proj, tensor_none()));
    }
    TRY(op->swiglu_forward(be, c->act, c->gate, c->up));
    TRY(op->linear_backward(be, g->dact, gw->down_proj, tensor_none(), g->dx, c->act, w->down_proj));
    TRY(op->swiglu_backward(be, g->dgate, g->dup, g->dact, c->gate, c->up));
    TRY(op->linear_backward(be, g->da, gw->gate_proj, tensor_none(), g->dgate, c->a2, w->gate_proj));
    TRY(op->linear_backward(be, g->dtmp, gw->up_proj, tensor_none(), g->dup, c->a2, w->up_proj));
    TRY(op->accumulate(be, g->da, g->dtmp));
    TRY(op->rmsnorm_residual_backward(be, g->dh, gw->post_norm, g->da, c->h, w->post_norm, c->rstd2, g->dx));
    return STATUS_OK;
}
