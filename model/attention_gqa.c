/* The Llama-family attention block, forward and backward: pre-norm, q/k/v projections (optional
 * bias), RoPE on all of q and k, grouped-query causal attention, output projection, residual. */
#include <math.h>

#include "model/layers.h"

Status gqa_attention_forward(Model *m, ForwardState *st, int layer, LayerCache *c) {
    Backend *be = m->be;
    const Ops *op = &be->ops;
    const ModelConfig *cfg = &m->cfg;
    const LayerWeights *w = model_compute_layer(m, layer);
    int64_t B = st->B, T = st->T, N = st->N;
    int64_t H = cfg->num_attention_heads, K = cfg->num_key_value_heads, hd = cfg->head_dim;
    Tensor q = reshape2(c->q, N, H * hd), k = reshape2(c->k, N, K * hd), v = reshape2(c->v, N, K * hd);
    Tensor attn = reshape2(c->attn, N, H * hd);

    TRY(op->rmsnorm_forward(be, c->a, c->rstd1, c->x, w->input_norm, (float)cfg->rms_norm_eps));
    TRY(op->linear_forward(be, q, c->a, w->q_proj, w->q_bias));
    TRY(op->linear_forward(be, k, c->a, w->k_proj, w->k_bias));
    TRY(op->linear_forward(be, v, c->a, w->v_proj, w->v_bias));
    TRY(op->rope_forward(be, reshape3(q, N, H, hd), 0, m->rope_cos, m->rope_sin, st->pos));
    TRY(op->rope_forward(be, reshape3(k, N, K, hd), 0, m->rope_cos, m->rope_sin, st->pos));
    TRY(op->attention_forward(be, reshape4(attn, B, T, H, hd), c->lse, reshape4(q, B, T, H, hd),
                              reshape4(k, B, T, K, hd), tensor_none(), reshape4(v, B, T, K, hd),
                              1.0f / sqrtf((float)hd)));
    TRY(op->linear_residual_forward(be, c->h, attn, w->o_proj, c->x));
    return STATUS_OK;
}

Status gqa_attention_backward(Model *m, ForwardState *st, int layer, LayerCache *c) {
    Backend *be = m->be;
    const Ops *op = &be->ops;
    const ModelConfig *cfg = &m->cfg;
    const LayerWeights *w = model_compute_layer(m, layer);
    LayerWeights *gw = &m->grad_layers[layer];
    BackwardScratch *g = &st->g;
    int64_t B = st->B, T = st->T, N = st->N;
    int64_t H = cfg->num_attention_heads, K = cfg->num_key_value_heads, hd = cfg->head_dim;
    Tensor q = reshape2(c->q, N, H * hd), k = reshape2(c->k, N, K * hd), v = reshape2(c->v, N, K * hd);
    Tensor attn = reshape2(c->attn, N, H * hd), dattn = reshape2(g->dattn, N, H * hd);
    Tensor dq = reshape2(g->dq, N, H * hd), dk = reshape2(g->dk, N, K * hd), dv = reshape2(g->dv, N, K * hd);

    TRY(op->rmsnorm_forward(be, c->a, c->rstd1, c->x, w->input_norm, (float)cfg->rms_norm_eps));
    TRY(op->linear_backward(be, dattn, gw->o_proj, tensor_none(), g->dh, attn, w->o_proj));
    TRY(op->attention_backward(be, reshape4(dq, B, T, H, hd), reshape4(dk, B, T, K, hd), tensor_none(),
                               reshape4(dv, B, T, K, hd), reshape4(dattn, B, T, H, hd),
                               reshape4(attn, B, T, H, hd), c->lse, reshape4(q, B, T, H, hd),
                               reshape4(k, B, T, K, hd), tensor_none(), reshape4(v, B, T, K, hd),
                               1.0f / sqrtf((float)hd)));
    TRY(op->rope_backward(be, reshape3(dq, N, H, hd), 0, m->rope_cos, m->rope_sin, st->pos));
    TRY(op->rope_backward(be, reshape3(dk, N, K, hd), 0, m->rope_cos, m->rope_sin, st->pos));
    TRY(op->linear_backward(be, g->da, gw->q_proj, gw->q_bias, dq, c->a, w->q_proj));
    TRY(op->linear_backward(be, g->dtmp, gw->k_proj, gw->k_bias, dk, c->a, w->k_proj));
    TRY(op->accumulate(be, g->da, g->dtmp));
    TRY(op->linear_backward(be, g->dtmp, gw->v_proj, gw->v_bias, dv, c->a, w->v_proj));
    TRY(op->accumulate(be, g->da, g->dtmp));
    TRY(op->rmsnorm_residual_backward(be, g->dx, gw->input_norm, g->da, c->x, w->input_norm, c->rstd1, g->dh));
    return STATUS_OK;
}
