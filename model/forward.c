/* The whole decoder, forward and backward: embedding, the layers in order (GQA or MLA attention,
 * then the MLP, each pre-norm with a residual), the final norm; and the buffers that carries.
 *
 * What a training state holds per layer: FORWARD_KEEP every activation backward reads (x, rstd1,
 * q, k, v, k_rope, the q bottleneck, c and c_n, attn, lse, h, rstd2, gate, up; the norm outputs and
 * the SwiGLU product are one shared buffer each, recomputed in backward); FORWARD_RECOMPUTE only x,
 * with one set of the rest, shaped for the widest layer, that backward re-runs each layer's forward
 * into before its backward; FORWARD_RECOMPUTE_MLP all of FORWARD_KEEP's but gate and up, one shared
 * buffer each, whose products backward runs again. All hold the gradient scratch of one layer. */
#include <stdlib.h>

#include "model/layers.h"

static Status own(ForwardState *st, Tensor *t, int ndim, int64_t d0, int64_t d1, int64_t d2, DType dt) {
    if (st->n_owned == st->cap_owned) {
        int cap = st->cap_owned ? 2 * st->cap_owned : 64;
        Tensor **grown = realloc(st->owned, (size_t)cap * sizeof *grown);
        if (!grown) return errorf("forward state: out of memory");
        st->owned = grown;
        st->cap_owned = cap;
    }
    int64_t shape[3] = {d0, d1, d2};
    TRY(st->be->alloc(st->be, t, dt, ndim, shape));
    st->owned[st->n_owned++] = t;
    return STATUS_OK;
}

/* Activations and their gradients in the model's compute dtype; row statistics in f32. */
#define ACT_2(t, a, b) TRY(own(st, &(t), 2, a, b, 0, st->dtype))
#define STAT_1(t, a) TRY(own(st, &(t), 1, a, 0, 0, DT_F32))

/* Widths a layer of either kind may need, so buffers fit whichever kind they serve. */
typedef struct {
    int64_t q, k, k_rope, v, attn, latent, q_lora;
} LayerWidths;

static LayerWidths widths_of(const ModelConfig *c, AttentionKind kind) {
    LayerWidths w = {0};
    int64_t H = c->num_attention_heads;
    if (kind == ATTENTION_GQA) {
        w.q = H * c->head_dim;
        w.k = w.v = c->num_key_value_heads * c->head_dim;
        w.attn = H * c->head_dim;
    } else {
        const MlaDims *a = &c->mla;
        w.q = H * (a->qk_nope_head_dim + a->qk_rope_head_dim);
        w.k = H * a->qk_nope_head_dim;
        w.k_rope = a->qk_rope_head_dim;
        w.v = w.attn = H * a->v_head_dim;
        w.latent = a->kv_lora_rank;
        w.q_lora = a->q_lora_rank;
    }
    return w;
}

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

static LayerWidths widest(const ModelConfig *c) {
    LayerWidths m = {0};
    for (int l = 0; l < c->num_hidden_layers; l++) {
        LayerWidths w = widths_of(c, c->layer_attention[l]);
        m.q = max64(m.q, w.q);
        m.k = max64(m.k, w.k);
        m.k_rope = max64(m.k_rope, w.k_rope);
        m.v = max64(m.v, w.v);
        m.attn = max64(m.attn, w.attn);
        m.latent = max64(m.latent, w.latent);
        m.q_lora = max64(m.q_lora, w.q_lora);
    }
    return m;
}

/* Buffers of one layer, shaped for its kind (a reused cache is shaped for the widest); its input x
 * too when with_input (the recompute work cache views each layer's kept x instead). */
static Status alloc_cache(ForwardState *st, LayerCache *c, const ModelConfig *cfg, LayerWidths w, int latent_norm,
                          int with_input) {
    int64_t N = st->N, D = cfg->hidden_size, F = cfg->intermediate_size;
    int trains = st->mode != FORWARD_INFERENCE;
    if (with_input) ACT_2(c->x, N, D);
    STAT_1(c->rstd1, N);
    /* Kept for backward: the norm outputs and the SwiGLU product are recomputed there (one cheap
     * pass each) instead, so every layer's a, a2 and act are views of one shared buffer each. */
    if (trains) c->a = st->norm_out;
    else ACT_2(c->a, N, D);
    ACT_2(c->q, N, w.q);
    ACT_2(c->k, N, w.k);
    ACT_2(c->v, N, w.v);
    if (w.k_rope) ACT_2(c->k_rope, N, w.k_rope);
    if (w.q_lora) {
        ACT_2(c->q_a, N, w.q_lora);
        if (cfg->mla.q_norm) {
            STAT_1(c->q_a_rstd, N);
            ACT_2(c->q_a_n, N, w.q_lora);
        } else {
            c->q_a_n = c->q_a;
        }
    }
    if (w.latent) {
        ACT_2(c->c, N, w.latent);
        if (latent_norm) {
            STAT_1(c->c_rstd, N);
            ACT_2(c->c_n, N, w.latent);
        } else {
            c->c_n = c->c;
        }
    }
    ACT_2(c->attn, N, w.attn);
    TRY(own(st, &c->lse, 3, st->B, cfg->num_attention_heads, st->T, DT_F32));
    ACT_2(c->h, N, D);
    STAT_1(c->rstd2, N);
    if (trains) c->a2 = st->norm_out;
    else ACT_2(c->a2, N, D);
    if (st->mode == FORWARD_RECOMPUTE_MLP) {
        c->gate = st->gate_out;
        c->up = st->up_out;
    } else {
        ACT_2(c->gate, N, F);
        ACT_2(c->up, N, F);
    }
    if (trains) c->act = st->act_out;
    else ACT_2(c->act, N, F);
    return STATUS_OK;
}

static Status alloc_scratch(ForwardState *st, const ModelConfig *cfg) {
    BackwardScratch *g = &st->g;
    LayerWidths w = widest(cfg);
    int64_t N = st->N, D = cfg->hidden_size, F = cfg->intermediate_size;
    ACT_2(g->dx, N, D);
    ACT_2(g->dh, N, D);
    ACT_2(g->da, N, D);
    ACT_2(g->dtmp, N, D);
    ACT_2(g->dq, N, w.q);
    ACT_2(g->dk, N, w.k);
    ACT_2(g->dv, N, w.v);
    ACT_2(g->dattn, N, w.attn);
    if (w.k_rope) ACT_2(g->dk_rope, N, w.k_rope);
    if (w.q_lora) {
        ACT_2(g->dq_a, N, w.q_lora);
        if (cfg->mla.q_norm) ACT_2(g->dq_a_n, N, w.q_lora);
    }
    if (w.latent) {
        ACT_2(g->dc, N, w.latent);
        ACT_2(g->dc_n, N, w.latent);
        ACT_2(g->dc_tmp, N, w.latent);
    }
    ACT_2(g->dgate, N, F);
    ACT_2(g->dup, N, F);
    ACT_2(g->dact, N, F);
    return STATUS_OK;
}

#undef STAT_1
#undef ACT_2

static Status forward_state_init(ForwardState *st, const Model *m) {
    const ModelConfig *cfg = &m->cfg;
    int L = (int)cfg->num_hidden_layers;
    int64_t N = st->N, D = cfg->hidden_size;
    int trains = st->mode != FORWARD_INFERENCE;
    int ncache = trains ? L : 1;
    st->caches = calloc((size_t)ncache, sizeof *st->caches);
    if (!st->caches) return errorf("forward state: out of memory");
    if (trains) {
        TRY(own(st, &st->norm_out, 2, N, D, 0, st->dtype));
        TRY(own(st, &st->act_out, 2, N, cfg->intermediate_size, 0, st->dtype));
    }
    switch (st->mode) {
    case FORWARD_INFERENCE:
        TRY(alloc_cache(st, &st->caches[0], cfg, widest(cfg), cfg->mla.latent_norm, 1));
        break;
    case FORWARD_RECOMPUTE_MLP:
        TRY(own(st, &st->gate_out, 2, N, cfg->intermediate_size, 0, st->dtype));
        TRY(own(st, &st->up_out, 2, N, cfg->intermediate_size, 0, st->dtype));
        /* fall through - the rest as FORWARD_KEEP */
    case FORWARD_KEEP:
        for (int l = 0; l < L; l++)
            TRY(alloc_cache(st, &st->caches[l], cfg, widths_of(cfg, cfg->layer_attention[l]), cfg->mla.latent_norm, 1));
        break;
    case FORWARD_RECOMPUTE:
        for (int l = 0; l < L; l++) TRY(own(st, &st->caches[l].x, 2, N, D, 0, st->dtype));
        TRY(alloc_cache(st, &st->work, cfg, widest(cfg), cfg->mla.latent_norm, 0));
        TRY(own(st, &st->x_next_scratch, 2, N, D, 0, st->dtype));
        break;
    }
    TRY(own(st, &st->x_final, 2, N, D, 0, st->dtype));
    TRY(own(st, &st->rstd_final, 1, N, 0, 0, DT_F32));
    if (trains) TRY(alloc_scratch(st, cfg));

    TRY(own(st, &st->pos, 1, st->N, 0, 0, DT_I32));
    int32_t *pos = malloc((size_t)st->N * sizeof(int32_t));
    if (!pos) return errorf("forward state: out of memory");
    for (int64_t n = 0; n < st->N; n++) pos[n] = (int32_t)(n % st->T);
    Status s = st->be->upload(st->be, st->pos, pos);
    free(pos);
    return s;
}

Status forward_state_create(ForwardState **out, const Model *m, int64_t batch, int64_t seq, ForwardMode mode) {
    *out = NULL;
    if (mode != FORWARD_INFERENCE && mode != FORWARD_KEEP && mode != FORWARD_RECOMPUTE &&
        mode != FORWARD_RECOMPUTE_MLP)
        return errorf("forward state: unknown mode %d (expected inference 0, keep 1, recompute 2 or recompute_mlp 3)",
                      (int)mode);
    if (batch < 1 || seq < 1) return errorf("forward state: batch and seq must be >= 1, got %lld x %lld", (long long)batch, (long long)seq);
    if (seq > m->max_seq)
        return errorf("forward state: sequences of %lld tokens exceed the model's rope tables (%lld)",
                      (long long)seq, (long long)m->max_seq);
    ForwardState *st = calloc(1, sizeof *st);
    if (!st) return errorf("forward state: out of memory");
    st->be = m->be;
    st->dtype = m->dtype;
    st->B = batch;
    st->T = seq;
    st->N = batch * seq;
    st->mode = mode;
    if (forward_state_init(st, m) != STATUS_OK) {
        forward_state_destroy(st);
        return STATUS_ERROR;
    }
    *out = st;
    return STATUS_OK;
}

void forward_state_destroy(ForwardState *st) {
    if (!st) return;
    for (int i = 0; i < st->n_owned; i++) st->be->release(st->be, st->owned[i]);
    free(st->owned);
    free(st->caches);
    free(st);
}

/* The buffers layer l runs in: its own (keep), the shared work cache over its kept input
 * (recompute), or the one cache every layer reuses (inference). */
static LayerCache *layer_cache(ForwardState *st, int l) {
    switch (st->mode) {
    case FORWARD_KEEP:
    case FORWARD_RECOMPUTE_MLP: return &st->caches[l];
    case FORWARD_RECOMPUTE: st->work.x = st->caches[l].x; return &st->work;
    case FORWARD_INFERENCE: break;
    }
    return &st->caches[0];
}

/* Attention then MLP of layer l, from c->x to x_next. */
static Status layer_forward(Model *m, ForwardState *st, int l, LayerCache *c, Tensor x_next) {
    Status s = m->cfg.layer_attention[l] == ATTENTION_GQA ? gqa_attention_forward(m, st, l, c)
                                                          : mla_attention_forward(m, st, l, c);
    if (s != STATUS_OK) return s;
    return mlp_forward(m, st, l, c, x_next);
}

Status model_forward(Model *m, ForwardState *st, Tensor ids, Tensor hidden) {
    Backend *be = m->be;
    const ModelConfig *cfg = &m->cfg;
    int L = (int)cfg->num_hidden_layers;
    TRY(tensor_check("model_forward", "ids", ids, DT_I32, 1, (int64_t[]){st->N}));
    TRY(tensor_check("model_forward", "hidden", hidden, m->dtype, 2, (int64_t[]){st->N, cfg->hidden_size}));
    if (st->dtype != m->dtype)
        return errorf("model_forward: the forward state holds %s activations, the model computes in %s",
                      dtype_name(st->dtype), dtype_name(m->dtype));
    if (m->compute_stale) TRY(model_refresh_compute_weights(m));
    st->ran = 0;
    st->ids = ids;

    TRY(be->ops.embedding_forward(be, st->caches[0].x, ids, model_compute_embed(m)));
    for (int l = 0; l < L; l++) {
        /* A reused cache is shaped for the widest layer; the blocks view it at their widths. */
        LayerCache *c = layer_cache(st, l);
        /* The next layer's input: its own cache's x when training, else this cache's x (no longer
         * needed). */
        Tensor x_next = l + 1 == L ? st->x_final : st->mode != FORWARD_INFERENCE ? st->caches[l + 1].x : c->x;
        if (layer_forward(m, st, l, c, x_next) != STATUS_OK) return error_context("layer %d: ", l);
    }
    TRY(be->ops.rmsnorm_forward(be, hidden, st->rstd_final, st->x_final, model_compute_final_norm(m),
                                (float)cfg->rms_norm_eps));
    st->ran = 1;
    return STATUS_OK;
}

Status model_backward(Model *m, ForwardState *st, Tensor dhidden) {
    return model_backward_hooked(m, st, dhidden, NULL, NULL);
}

Status model_backward_hooked(Model *m, ForwardState *st, Tensor dhidden, GradsReadyFn ready, void *ctx) {
    Backend *be = m->be;
    const ModelConfig *cfg = &m->cfg;
    if (st->mode == FORWARD_INFERENCE)
        return errorf("model_backward: the forward state keeps no activations (created for inference)");
    if (!st->ran) return errorf("model_backward: no forward pass has been run on this state");
    if (!m->has_grads) return errorf("model_backward: gradients are not allocated (model_alloc_grads)");
    TRY(tensor_check("model_backward", "dhidden", dhidden, m->dtype, 2, (int64_t[]){st->N, cfg->hidden_size}));

    BackwardScratch *g = &st->g;
    TRY(be->ops.rmsnorm_backward(be, g->dx, m->grad_final_norm, dhidden, st->x_final, model_compute_final_norm(m),
                                 st->rstd_final));
    for (int l = (int)cfg->num_hidden_layers - 1; l >= 0; l--) {
        LayerCache *c = layer_cache(st, l);
        if (st->mode == FORWARD_RECOMPUTE) {
            /* The same ops on the same input as the first forward, so the same bits (RoPE is applied
             * to fresh q and k, not twice). The output goes to a scratch: caches[l + 1].x already
             * holds it, and dx and dh hold the live gradients. */
            if (layer_forward(m, st, l, c, st->x_next_scratch) != STATUS_OK)
                return error_context("layer %d backward, recomputing its forward: ", l);
        }
        if (mlp_backward(m, st, l, c) != STATUS_OK) return error_context("layer %d backward: ", l);
        Status s = cfg->layer_attention[l] == ATTENTION_GQA ? gqa_attention_backward(m, st, l, c)
                                                             : mla_attention_backward(m, st, l, c);
        if (s != STATUS_OK) return error_context("layer %d backward: ", l);
        if (ready) TRY(ready(ctx, l));
    }
    TRY(be->ops.embedding_backward(be, m->grad_embed, g->dx, st->ids));
    if (ready) TRY(ready(ctx, -1));
    return STATUS_OK;
}
