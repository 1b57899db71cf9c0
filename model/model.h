/* The decoder, written once against the op interface: Llama-family GQA layers and DeepSeek-V2
 * MLA layers (a student may mix them), forward and backward, with parameters named as in HF. */
#pragma once

#include <stdint.h>

#include "core/backend.h"
#include "model/config.h"

/* One decoder layer's weights (or, in a gradient mirror, their gradients). Which fields exist
 * depends on the layer's attention kind and the config; absent ones have data == NULL. */
typedef struct {
    AttentionKind kind;
    Tensor input_norm;     /* [D]  input_layernorm */
    /* GQA (teacher, hybrid layers) */
    Tensor q_proj;         /* [H*hd, D]; MLA without q_lora_rank: [H*(dn+dr), D] */
    Tensor q_bias;         /* q_proj's bias: [H*hd] (Qwen2); MLA with attention_bias: [H*(dn+dr)] */
    Tensor k_proj;         /* [K*hd, D] */
    Tensor k_bias;         /* [K*hd] */
    Tensor v_proj;         /* [K*hd, D] */
    Tensor v_bias;         /* [K*hd] */
    /* MLA */
    Tensor q_a_proj;       /* [q_lora, D]           (q_lora_rank > 0) */
    Tensor q_a_bias;       /* [q_lora]              (q_lora_rank > 0 and attention_bias) */
    Tensor q_a_norm;       /* [q_lora]              q_a_layernorm (absent when q_norm is off) */
    Tensor q_b_proj;       /* [H*(dn+dr), q_lora] */
    Tensor kv_a_latent;    /* [r, D]   W_dkv: the first r rows of kv_a_proj_with_mqa */
    Tensor kv_a_rope;      /* [dr, D]  W_kr: its last dr rows */
    Tensor kv_a_latent_bias; /* [r]    the bias of those rows (attention_bias) */
    Tensor kv_a_rope_bias; /* [dr]     and of these */
    Tensor kv_a_norm;      /* [r]      kv_a_layernorm (absent when latent_norm is off) */
    Tensor kv_b_k;         /* [H*dn, r] W_uk: per head, the k rows of kv_b_proj */
    Tensor kv_b_v;         /* [H*dv, r] W_uv: per head, the v rows of kv_b_proj */
    /* both */
    Tensor o_proj;         /* [D, H*hd] or [D, H*dv] */
    Tensor post_norm;      /* [D]  post_attention_layernorm */
    Tensor gate_proj;      /* [F, D] */
    Tensor up_proj;        /* [F, D] */
    Tensor down_proj;      /* [D, F] */
} LayerWeights;

/* A named parameter: its value, its gradient (once allocated), and whether weight decay applies. */
typedef struct {
    char name[96];         /* HF-style name; the MLA split tensors have their own (see model.c) */
    Tensor *value;
    Tensor *grad;
    Tensor *compute;       /* its copy in the compute dtype, or NULL when forward reads value itself */
    int decay;             /* 0 for norms, embeddings and biases */
} Param;

typedef struct {
    ModelConfig cfg;
    Backend *be;
    /* Precision: the parameters are held in weight_dtype (f32, or bf16 for a model that is never
     * trained); forward reads weights and keeps activations in dtype (f32 or bf16). When the two
     * differ (training in bf16) forward reads bf16 copies of the float32 master weights: every
     * Param has its `compute` copy, refreshed before a forward whenever the weights changed other
     * than through AdamW (which writes the copy itself). */
    DType weight_dtype, dtype;
    LayerWeights *compute_layers;  /* NULL when forward reads the parameters themselves */
    Tensor compute_embed, compute_final_norm, compute_lm_head;
    int compute_stale;
    int64_t max_seq;       /* longest sequence the rope tables cover */

    Tensor embed;          /* [V, D] */
    LayerWeights *layers;  /* [L] */
    Tensor final_norm;     /* [D] */
    Tensor lm_head;        /* [V, D]; aliases embed when tied */

    /* Gradients, mirroring the weights (allocated by model_alloc_grads). */
    int has_grads;
    Tensor grad_embed, grad_final_norm, grad_lm_head;
    LayerWeights *grad_layers;

    Param *params;         /* every trainable tensor once (a tied head is the embedding) */
    int n_params;

    /* RoPE tables on the backend: GQA layers share [max_seq, hd/2]; each MLA layer has its own
     * [max_seq, dr/2] for the frequency pairs it kept (mla_inv_freq, host, [L][dr/2]). */
    Tensor rope_cos, rope_sin;
    Tensor *mla_cos, *mla_sin;
    float *mla_inv_freq;
} Model;

/* Allocates the weights (zeros) on the backend for sequences up to max_seq tokens. MLA layers start
 * with DeepSeek's own rope frequencies, theta^(-2i/dr); conversion replaces them. */
Status model_create(Model **out, Backend *be, const ModelConfig *cfg, int64_t max_seq);
/* The same with the parameters allocated in weight_dtype (f32 or bf16) from the start, computing in
 * that dtype: a frozen bf16 model never holds an f32 copy on the device. */
Status model_create_as(Model **out, Backend *be, const ModelConfig *cfg, int64_t max_seq, DType weight_dtype);
void model_destroy(Model *m);
/* Sets the precision (a model starts f32 and f32): weight_dtype f32 or bf16, the latter rounding
 * the parameters in place one tensor at a time (only for a model without gradients: a frozen
 * teacher); dtype f32 or bf16, allocating bf16 copies of f32 weights for forward to read (or
 * freeing them). bf16 weights with f32 compute is refused: it would only lose digits. Forward
 * states must be created after this, in the new dtype. */
Status model_set_precision(Model *m, DType weight_dtype, DType dtype);

/* The weights forward reads (the parameters, or their compute copies). */
static inline const LayerWeights *model_compute_layer(const Model *m, int layer) {
    return m->compute_layers ? &m->compute_layers[layer] : &m->layers[layer];
}
static inline Tensor model_compute_embed(const Model *m) { return m->compute_layers ? m->compute_embed : m->embed; }
static inline Tensor model_compute_final_norm(const Model *m) {
    return m->compute_layers ? m->compute_final_norm : m->final_norm;
}
static inline Tensor model_compute_lm_head(const Model *m) {
    return m->compute_layers ? m->compute_lm_head : m->lm_head;
}
/* Tells the model its parameters were written (loaded, initialised, gathered): the compute copies
 * are refreshed before the next forward. */
static inline void model_weights_changed(Model *m) { m->compute_stale = 1; }
/* Rounds the parameters into their compute copies now (nothing when there are none). */
Status model_refresh_compute_weights(Model *m);

/* Normal(0, std) for matrices and embeddings, ones for norms, zeros for biases; each parameter
 * draws from its own RNG stream, so the result does not depend on threads or allocation order. */
Status model_init_random(Model *m, uint64_t seed, float std);

/* Replaces the frequencies of MLA layer `layer`'s rope part (dr/2 pairs) and rebuilds its tables. */
Status model_set_mla_rope(Model *m, int layer, const float *inv_freq);

Status model_alloc_grads(Model *m);
Status model_zero_grads(Model *m);

/* Looks a parameter up by name; NULL when absent. */
Param *model_find_param(Model *m, const char *name);

/* Number of trainable values. */
int64_t model_num_parameters(const Model *m);

/* Saved forward state: what forward leaves for backward, and the buffers both run in. */
typedef struct ForwardState ForwardState;

/* What a forward state keeps between forward and backward. Per token and layer of a 1B model in
 * bf16, the full activations are ~55-60 KB against 2*D bytes for the layer's input alone. */
typedef enum {
    FORWARD_INFERENCE = 0,   /* nothing: one set of buffers reused layer after layer; no backward */
    FORWARD_KEEP = 1,        /* every layer's activations (training) */
    FORWARD_RECOMPUTE = 2,   /* each layer's input only, plus one layer's buffers that backward
                                re-runs each layer's forward into first: one more forward of the
                                layers per step for room for larger batches (training) */
    FORWARD_RECOMPUTE_MLP = 3, /* every activation but the MLP's gate and up projections ([N, F]
                                each, the largest), which backward recomputes from the kept input:
                                two more products per layer (training) */
} ForwardMode;

/* mode: a ForwardMode (0 and 1 mean inference and keep). */
Status forward_state_create(ForwardState **out, const Model *m, int64_t batch, int64_t seq, ForwardMode mode);
void forward_state_destroy(ForwardState *st);

/* Forward over B sequences of T tokens (ids: i32 [B*T]); hidden [B*T, D] receives the final-norm
 * output (what the LM head reads). Positions restart at 0 in each sequence. */
Status model_forward(Model *m, ForwardState *st, Tensor ids, Tensor hidden);

/* Backward from dhidden [B*T, D] (the LM-head loss's dh); accumulates into the gradients.
 * Needs a state created with FORWARD_KEEP or FORWARD_RECOMPUTE and the forward just run on it;
 * either gives the same bits. */
Status model_backward(Model *m, ForwardState *st, Tensor dhidden);
/* Called by model_backward_hooked as soon as a group of parameter gradients is final for this
 * backward: layer l's tensors after its backward (layers L-1 down to 0), then l = -1 for the
 * embedding, final norm and head. Data parallelism starts summing a bucket there while the
 * backward of the layers below goes on. A non-OK status stops the backward. */
typedef Status (*GradsReadyFn)(void *ctx, int layer);
Status model_backward_hooked(Model *m, ForwardState *st, Tensor dhidden, GradsReadyFn ready, void *ctx);
