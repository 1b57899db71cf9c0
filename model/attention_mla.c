/* DeepSeek-V2's Multi-head Latent Attention block, forward and backward: queries (optionally
 * through a low-rank bottleneck, normed or linear), a latent c (normed or linear) that k_nope and
 * v are expanded from, one rope key shared by every head, causal attention at scale
 * 1/sqrt(dn + dr), output projection; the query and kv_a projections carry biases when the
 * student keeps a Qwen2 teacher's. */
#include <math.h>

#include "model/layers.h"

typedef struct {
    int64_t B, T, N, H, dn, dr, dv, r, qr;
} MlaShape;

static MlaShape mla_shape(const Model *m, const ForwardState *st) {
    const MlaDims *a = &m->cfg.mla;
    MlaShape s = {st->B, st->T, st->N, m->cfg.num_attention_heads, a->qk_nope_head_dim,
                  a->qk_rope_head_dim, a->v_head_dim, a->kv_lora_rank, a->q_lora_rank};
    return s;
}

Status mla_attention_forward(Model *m, ForwardState *st, int layer, LayerCache *c) {
    Backend *be = m->be;
    const Ops *op = &be->ops;
    const LayerWeights *w = model_compute_layer(m, layer);
    MlaShape s = mla_shape(m, st);
    int64_t dq = s.dn + s.dr;
    Tensor q = reshape2(c->q, s.N, s.H * dq), k = reshape2(c->k, s.N, s.H * s.dn);
    Tensor v = reshape2(c->v, s.N, s.H * s.dv), attn = reshape2(c->attn, s.N, s.H * s.dv);
    Tensor cos = m->mla_cos[layer], sin = m->mla_sin[layer];

    TRY(op->rmsnorm_forward(be, c->a, c->rstd1, c->x, w->input_norm, (float)m->cfg.rms_norm_eps));
    if (s.qr > 0) {
        TRY(op->linear_forward(be, c->q_a, c->a, w->q_a_proj, w->q_a_bias));
        if (m->cfg.mla.q_norm)
            TRY(op->rmsnorm_forward(be, c->q_a_n, c->q_a_rstd, c->q_a, w->q_a_norm, MLA_LATENT_NORM_EPS));
        TRY(op->linear_forward(be, q, c->q_a_n, w->q_b_proj, tensor_none()));
    } else {
        TRY(op->linear_forward(be, q, c->a, w->q_proj, w->q_bias));
    }
    TRY(op->rope_forward(be, reshape3(q, s.N, s.H, dq), s.dn, cos, sin, st->pos));
    TRY(op->linear_forward(be, c->c, c->a, w->kv_a_latent, w->kv_a_latent_bias));
    if (m->cfg.mla.latent_norm)
        TRY(op->rmsnorm_forward(be, c->c_n, c->c_rstd, c->c, w->kv_a_norm, MLA_LATENT_NORM_EPS));
    TRY(op->linear_forward(be, c->k_rope, c->a, w->kv_a_rope, w->kv_a_rope_bias));
    TRY(op->rope_forward(be, reshape3(c->k_rope, s.N, 1, s.dr), 0, cos, sin, st->pos));
    if (s.dn > 0) TRY(op->linear_forward(be, k, c->c_n, w->kv_b_k, tensor_none()));
    TRY(op->linear_forward(be, v, c->c_n, w->kv_b_v, tensor_none()));
    TRY(op->attention_forward(be, reshape4(attn, s.B, s.T, s.H, s.dv), c->lse,
                              reshape4(q, s.B, s.T, s.H, dq), reshape4(k, s.B, s.T, s.H, s.dn),
                              reshape3(c->k_rope, s.B, s.T, s.dr), reshape4(v, s.B, s.T, s.H, s.dv),
                              1.0f / sqrtf((float)dq)));
    TRY(op->linear_residual_forward(be, c->h, attn, w->o_proj, c->x));
    return STATUS_OK;
}

Status mla_attention_backward(Model *m, ForwardState *st, int layer, LayerCache *c) {
    Backend *be = m->be;
    const Ops *op = &be->ops;
    const LayerWeights *w = model_compute_layer(m, layer);
    LayerWeights *gw = &m->grad_layers[layer];
    BackwardScratch *g = &st->g;
    MlaShape s = mla_shape(m, st);
    int64_t dqk = s.dn + s.dr;
    Tensor q = reshape2(c->q, s.N, s.H * dqk), k = reshape2(c->k, s.N, s.H * s.dn);
    Tensor v = reshape2(c->v, s.N, s.H * s.dv), attn = reshape2(c->attn, s.N, s.H * s.dv);
    Tensor dq = reshape2(g->dq, s.N, s.H * dqk), dk = reshape2(g->dk, s.N, s.H * s.dn);
    Tensor dv = reshape2(g->dv, s.N, s.H * s.dv), dattn = reshape2(g->dattn, s.N, s.H * s.dv);
    Tensor cos = m->mla_cos[layer], sin = m->mla_sin[layer];

    TRY(op->rmsnorm_forward(be, c->a, c->rstd1, c->x, w->input_norm, (float)m->cfg.rms_norm_eps));
    TRY(op->linear_backward(be, dattn, gw->o_proj, tensor_none(), g->dh, attn, w->o_proj));
    TRY(op->attention_backward(be, reshape4(dq, s.B, s.T, s.H, dqk), reshape4(dk, s.B, s.T, s.H, s.dn),
                               reshape3(g->dk_rope, s.B, s.T, s.dr), reshape4(dv, s.B, s.T, s.H, s.dv),
                               reshape4(dattn, s.B, s.T, s.H, s.dv), reshape4(attn, s.B, s.T, s.H, s.dv),
                               c->lse, reshape4(q, s.B, s.T, s.H, dqk), reshape4(k, s.B, s.T, s.H, s.dn),
                               reshape3(c->k_rope, s.B, s.T, s.dr), reshape4(v, s.B, s.T, s.H, s.dv),
                               1.0f / sqrtf((float)dqk)));
    TRY(op->rope_backward(be, reshape3(dq, s.N, s.H, dqk), s.dn, cos, sin, st->pos));
    TRY(op->rope_backward(be, reshape3(g->dk_rope, s.N, 1, s.dr), 0, cos, sin, st->pos));

    /* The latent: both up-projections read c_n (the key one is absent when dn = 0, as in the
     * exact conversion, whose keys are all in the shared rope part). */
    Tensor dc_n = m->cfg.mla.latent_norm ? g->dc_n : g->dc;
    TRY(op->linear_backward(be, dc_n, gw->kv_b_v, tensor_none(), dv, c->c_n, w->kv_b_v));
    if (s.dn > 0) {
        TRY(op->linear_backward(be, g->dc_tmp, gw->kv_b_k, tensor_none(), dk, c->c_n, w->kv_b_k));
        TRY(op->accumulate(be, dc_n, g->dc_tmp));
    }
    if (m->cfg.mla.latent_norm)
        TRY(op->rmsnorm_backward(be, g->dc, gw->kv_a_norm, g->dc_n, c->c, w->kv_a_norm, c->c_rstd));

    /* The layer's normed input a feeds the latent, the rope key and the queries. */
    TRY(op->linear_backward(be, g->da, gw->kv_a_latent, gw->kv_a_latent_bias, g->dc, c->a, w->kv_a_latent));
    TRY(op->linear_backward(be, g->dtmp, gw->kv_a_rope, gw->kv_a_rope_bias, g->dk_rope, c->a, w->kv_a_rope));
    TRY(op->accumulate(be, g->da, g->dtmp));
    if (s.qr > 0) {
        /* Without the q norm, q_b_proj reads q_a itself (q_a_n aliases it). */
        Tensor dq_a_n = m->cfg.mla.q_norm ? g->dq_a_n : g->dq_a;
        TRY(op->linear_backward(be, dq_a_n, gw->q_b_proj, tensor_none(), dq, c->q_a_n, w->q_b_proj));
        if (m->cfg.mla.q_norm)
            TRY(op->rmsnorm_backward(be, g->dq_a, gw->q_a_norm, g->dq_a_n, c->q_a, w->q_a_norm, c->q_a_rstd));
        TRY(op->linear_backward(be, g->dtmp, gw->q_a_proj, gw->q_a_bias, g->dq_a, c->a, w->q_a_proj));
    } else {
        TRY(op->linear_backward(be, g->dtmp, gw->q_proj, gw->q_bias, dq, c->a, w->q_proj));
    }
    TRY(op->accumulate(be, g->da, g->dtmp));
    TRY(op->rmsnorm_residual_backward(be, g->dx, gw->input_norm, g->da, c->x, w->input_norm, c->rstd1, g->dh));
    return STATUS_OK;
}
