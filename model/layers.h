/* Inside the decoder: what one layer keeps between forward and backward, the scratch backward
 * shares across layers, and the attention and MLP blocks that model_forward strings together. */
#pragma once

#include "model/model.h"

typedef struct {
    Tensor x;                       /* [N, D] the residual stream entering the layer */
    Tensor rstd1, a;                /* [N], [N, D]: input_layernorm(x) */
    /* attention */
    Tensor q;                       /* [N, H*dq] after rope; dq = hd (GQA) or dn + dr (MLA) */
    Tensor k;                       /* [N, K*hd] after rope (GQA); k_nope [N, H*dn] (MLA) */
    Tensor k_rope;                  /* [N, dr] after rope (MLA) */
    Tensor v;                       /* [N, K*hd] (GQA) or [N, H*dv] (MLA) */
    Tensor q_a, q_a_rstd, q_a_n;    /* [N, q_lora], [N], [N, q_lora] (MLA with q_lora_rank); q_a_n = q_a
                                       when the q norm is off */
    Tensor c, c_rstd, c_n;          /* [N, r], [N], [N, r]: the latent and its norm (MLA); c_n = c
                                       when the latent norm is off */
    Tensor attn;                    /* [N, H*dv] */
    Tensor lse;                     /* [B, H, T] */
    Tensor h;                       /* [N, D] x + o_proj(attn) */
    Tensor rstd2, a2;               /* post_attention_layernorm(h) */
    Tensor gate, up, act;           /* [N, F] */
} LayerCache;

/* Gradient buffers backward reuses for every layer. */
typedef struct {
    Tensor dx, dh, da, dtmp;        /* [N, D] */
    Tensor dq, dk, dk_rope, dv;     /* as q, k, k_rope, v (largest layer kind) */
    Tensor dattn;                   /* [N, H*dv] */
    Tensor dq_a, dq_a_n;            /* [N, q_lora] */
    Tensor dc, dc_n, dc_tmp;        /* [N, r] */
    Tensor dgate, dup, dact;        /* [N, F] */
} BackwardScratch;

struct ForwardState {
    Backend *be;
    DType dtype;                    /* of the activations: the model's compute dtype */
    int64_t B, T, N;
    ForwardMode mode;               /* what is kept for backward */
    int ran;                        /* a forward has filled the caches */
    Tensor pos;                     /* i32 [N], t within each sequence */
    Tensor ids;                     /* the ids of the last forward (a view, not owned) */
    /* FORWARD_KEEP: [L], each layer's own. FORWARD_RECOMPUTE: [L] holding only x, the input of
     * each layer. FORWARD_INFERENCE: [1], reused by every layer. */
    LayerCache *caches;
    /* FORWARD_RECOMPUTE: the buffers every layer's forward runs in (its x a view of caches[l].x),
     * shaped for the widest layer kind, and where backward's re-run MLP writes the layer's output
     * [N, D] (already in caches[l + 1].x, so a scratch no one reads). */
    LayerCache work;
    Tensor x_next_scratch;
    /* FORWARD_RECOMPUTE_MLP: the one buffer behind every layer's gate and up [N, F]. */
    Tensor gate_out, up_out;
    Tensor x_final, rstd_final;     /* [N, D], [N]: the stream before the final norm */
    /* When training: the one buffer behind every layer's a and a2 [N, D], and behind act [N, F];
     * backward recomputes them from x, h (and the saved rstd) and gate, up. */
    Tensor norm_out, act_out;
    BackwardScratch g;
    Tensor **owned;                 /* every tensor allocated here, for release */
    int n_owned, cap_owned;
};

/* x -> x + attention(input_layernorm(x)) -> h, for a GQA or an MLA layer. The backwards recompute
 * input_layernorm(x) first (forward keeps one shared buffer for it, see ForwardState). */
Status gqa_attention_forward(Model *m, ForwardState *st, int layer, LayerCache *c);
Status gqa_attention_backward(Model *m, ForwardState *st, int layer, LayerCache *c);
Status mla_attention_forward(Model *m, ForwardState *st, int layer, LayerCache *c);
Status mla_attention_backward(Model *m, ForwardState *st, int layer, LayerCache *c);

/* h -> h + down(silu(gate(a2)) * up(a2)), written to x_next. */
Status mlp_forward(Model *m, ForwardState *st, int layer, LayerCache *c, Tensor x_next);
/* From dx (gradient at x_next) to dh (gradient at h), accumulating the MLP's weight gradients;
 * recomputes a2 and act first. */
Status mlp_backward(Model *m, ForwardState *st, int layer, LayerCache *c);

/* [N, cols] view of a tensor's memory with a new shape (no copy). */
static inline Tensor reshape2(Tensor t, int64_t d0, int64_t d1) {
    return tensor_view(t.data, t.dtype, 2, (int64_t[]){d0, d1});
}
static inline Tensor reshape3(Tensor t, int64_t d0, int64_t d1, int64_t d2) {
    return tensor_view(t.data, t.dtype, 3, (int64_t[]){d0, d1, d2});
}
static inline Tensor reshape4(Tensor t, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    return tensor_view(t.data, t.dtype, 4, (int64_t[]){d0, d1, d2, d3});
}

/* The epsilon of MLA's own norms (q_a_layernorm, kv_a_layernorm): HF's DeepseekV2RMSNorm is built
 * for them without the config's rms_norm_eps, so it uses its default, 1e-6. */
#define MLA_LATENT_NORM_EPS 1e-6f
