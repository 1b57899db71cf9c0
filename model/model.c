/* The model's parameters: allocation on the backend, the named registry the optimizer, the
 * checkpoint and the safetensors I/O walk, random initialisation, and the RoPE tables. */
#include "model/model.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"

/* The registry can hold every tensor of every layer (at most 19 per layer) plus the globals. */
static int max_params(const ModelConfig *cfg) { return 19 * (int)cfg->num_hidden_layers + 4; }

static Status alloc_param(Model *m, Tensor *value, int decay, const char *name, int ndim, int64_t d0, int64_t d1) {
    int64_t shape[2] = {d0, d1};
    if (m->be->alloc(m->be, value, m->weight_dtype, ndim, shape) != STATUS_OK)
        return error_context("allocating %s: ", name);
    Param *p = &m->params[m->n_params++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->value = value;
    p->grad = NULL;
    p->compute = NULL;
    p->decay = decay;
    return STATUS_OK;
}

#define MATRIX(field, rows, cols, suffix) \
    TRY(alloc_param(m, &w->field, 1, (snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix), name), 2, rows, cols))
#define VECTOR(field, len, suffix) \
    TRY(alloc_param(m, &w->field, 0, (snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix), name), 1, len, 0))

static Status alloc_layer(Model *m, int l) {
    const ModelConfig *c = &m->cfg;
    LayerWeights *w = &m->layers[l];
    char name[96];
    int64_t D = c->hidden_size, H = c->num_attention_heads, F = c->intermediate_size;
    w->kind = c->layer_attention[l];
    VECTOR(input_norm, D, "input_layernorm.weight");
    if (w->kind == ATTENTION_GQA) {
        int64_t K = c->num_key_value_heads, hd = c->head_dim;
        MATRIX(q_proj, H * hd, D, "self_attn.q_proj.weight");
        MATRIX(k_proj, K * hd, D, "self_attn.k_proj.weight");
        MATRIX(v_proj, K * hd, D, "self_attn.v_proj.weight");
        if (c->qkv_bias) {
            VECTOR(q_bias, H * hd, "self_attn.q_proj.bias");
            VECTOR(k_bias, K * hd, "self_attn.k_proj.bias");
            VECTOR(v_bias, K * hd, "self_attn.v_proj.bias");
        }
        MATRIX(o_proj, D, H * hd, "self_attn.o_proj.weight");
    } else {
        const MlaDims *a = &c->mla;
        int64_t dqk = a->qk_nope_head_dim + a->qk_rope_head_dim;
        if (a->q_lora_rank > 0) {
            MATRIX(q_a_proj, a->q_lora_rank, D, "self_attn.q_a_proj.weight");
            if (a->attention_bias) VECTOR(q_a_bias, a->q_lora_rank, "self_attn.q_a_proj.bias");
            if (a->q_norm) VECTOR(q_a_norm, a->q_lora_rank, "self_attn.q_a_layernorm.weight");
            MATRIX(q_b_proj, H * dqk, a->q_lora_rank, "self_attn.q_b_proj.weight");
        } else {
            MATRIX(q_proj, H * dqk, D, "self_attn.q_proj.weight");
            if (a->attention_bias) VECTOR(q_bias, H * dqk, "self_attn.q_proj.bias");
        }
        MATRIX(kv_a_latent, a->kv_lora_rank, D, "self_attn.kv_a_proj_latent.weight");
        MATRIX(kv_a_rope, a->qk_rope_head_dim, D, "self_attn.kv_a_proj_rope.weight");
        if (a->attention_bias) {
            VECTOR(kv_a_latent_bias, a->kv_lora_rank, "self_attn.kv_a_proj_latent.bias");
            VECTOR(kv_a_rope_bias, a->qk_rope_head_dim, "self_attn.kv_a_proj_rope.bias");
        }
        if (a->latent_norm) VECTOR(kv_a_norm, a->kv_lora_rank, "self_attn.kv_a_layernorm.weight");
        if (a->qk_nope_head_dim > 0)
            MATRIX(kv_b_k, H * a->qk_nope_head_dim, a->kv_lora_rank, "self_attn.kv_b_proj_k.weight");
        MATRIX(kv_b_v, H * a->v_head_dim, a->kv_lora_rank, "self_attn.kv_b_proj_v.weight");
        MATRIX(o_proj, D, H * a->v_head_dim, "self_attn.o_proj.weight");
    }
    VECTOR(post_norm, D, "post_attention_layernorm.weight");
    MATRIX(gate_proj, F, D, "mlp.gate_proj.weight");
    MATRIX(up_proj, F, D, "mlp.up_proj.weight");
    MATRIX(down_proj, D, F, "mlp.down_proj.weight");
    return STATUS_OK;
}

#undef MATRIX
#undef VECTOR

/* cos/sin tables on the backend for the given frequencies. */
static Status upload_rope_tables(Model *m, const float *inv_freq, int pairs, Tensor *cos, Tensor *sin) {
    int64_t shape[2] = {m->max_seq, pairs};
    size_t n = (size_t)m->max_seq * (size_t)pairs;
    float *hc = malloc(n * sizeof(float)), *hs = malloc(n * sizeof(float));
    Status st = STATUS_OK;
    if (!hc || !hs) st = errorf("rope tables: out of memory (%zu values)", n);
    if (st == STATUS_OK) st = rope_tables(inv_freq, pairs, (int)m->max_seq, hc, hs);
    if (st == STATUS_OK && cos->data == NULL) st = m->be->alloc(m->be, cos, DT_F32, 2, shape);
    if (st == STATUS_OK && sin->data == NULL) st = m->be->alloc(m->be, sin, DT_F32, 2, shape);
    if (st == STATUS_OK) st = m->be->upload(m->be, *cos, hc);
    if (st == STATUS_OK) st = m->be->upload(m->be, *sin, hs);
    free(hc);
    free(hs);
    return st;
}

Status model_set_mla_rope(Model *m, int layer, const float *inv_freq) {
    if (layer < 0 || layer >= m->cfg.num_hidden_layers || m->cfg.layer_attention[layer] != ATTENTION_MLA)
        return errorf("model_set_mla_rope: layer %d is not an MLA layer", layer);
    int pairs = (int)(m->cfg.mla.qk_rope_head_dim / 2);
    memcpy(m->mla_inv_freq + (size_t)layer * pairs, inv_freq, (size_t)pairs * sizeof(float));
    return upload_rope_tables(m, inv_freq, pairs, &m->mla_cos[layer], &m->mla_sin[layer]);
}

/* The tensor that mirrors parameter `value` in a mirror of the weights (gradients, compute copies):
 * its named top-level tensor, or the same offset among the mirror's layers. */
static Tensor *mirror_in(const Model *m, const Tensor *value, Tensor *embed, Tensor *final_norm, Tensor *lm_head,
                         LayerWeights *layers) {
    if (value == &m->embed) return embed;
    if (value == &m->final_norm) return final_norm;
    if (value == &m->lm_head) return lm_head;
    size_t off = (size_t)((const char *)value - (const char *)m->layers);
    return (Tensor *)((char *)layers + off);
}

static Tensor *compute_mirror_of(Model *m, Tensor *value) {
    return mirror_in(m, value, &m->compute_embed, &m->compute_final_norm, &m->compute_lm_head, m->compute_layers);
}

static Status alloc_compute_copies(Model *m) {
    m->compute_layers = calloc((size_t)m->cfg.num_hidden_layers, sizeof *m->compute_layers);
    if (!m->compute_layers) return errorf("model: out of memory for the compute weights");
    for (int l = 0; l < m->cfg.num_hidden_layers; l++) m->compute_layers[l].kind = m->layers[l].kind;
    for (int i = 0; i < m->n_params; i++) {
        Param *p = &m->params[i];
        p->compute = compute_mirror_of(m, p->value);
        if (m->be->alloc(m->be, p->compute, m->dtype, p->value->ndim, p->value->shape) != STATUS_OK)
            return error_context("allocating the %s copy of %s: ", dtype_name(m->dtype), p->name);
    }
    if (m->cfg.tie_word_embeddings) m->compute_lm_head = m->compute_embed;
    m->compute_stale = 1;
    return STATUS_OK;
}

Status model_refresh_compute_weights(Model *m) {
    if (m->compute_layers)
        for (int i = 0; i < m->n_params; i++)
            if (m->be->ops.cast(m->be, *m->params[i].compute, *m->params[i].value) != STATUS_OK)
                return error_context("refreshing the compute copy of %s: ", m->params[i].name);
    m->compute_stale = 0;
    return STATUS_OK;
}

static void free_compute_copies(Model *m) {
    for (int i = 0; i < m->n_params; i++) {
        if (m->params[i].compute && m->params[i].compute->data) m->be->release(m->be, m->params[i].compute);
        m->params[i].compute = NULL;
    }
    free(m->compute_layers);
    m->compute_layers = NULL;
    m->compute_stale = 0;
}

Status model_set_precision(Model *m, DType weight_dtype, DType dtype) {
    if ((weight_dtype != DT_F32 && weight_dtype != DT_BF16) || (dtype != DT_F32 && dtype != DT_BF16))
        return errorf("model: weights and compute must be f32 or bf16, got %s and %s", dtype_name(weight_dtype),
                      dtype_name(dtype));
    if (weight_dtype == DT_BF16 && dtype == DT_F32)
        return errorf("model: bf16 weights with f32 compute would only lose digits; keep f32 weights");
    if (weight_dtype != m->weight_dtype) {
        if (m->has_grads || weight_dtype != DT_BF16)
            return errorf("model: only the f32 weights of a model without gradients can become %s",
                          dtype_name(weight_dtype));
        free_compute_copies(m);
        for (int i = 0; i < m->n_params; i++) {
            Tensor *p = m->params[i].value, rounded;
            if (m->be->alloc(m->be, &rounded, weight_dtype, p->ndim, p->shape) != STATUS_OK)
                return error_context("rounding %s to %s: ", m->params[i].name, dtype_name(weight_dtype));
            Status st = m->be->ops.cast(m->be, rounded, *p);
            if (st != STATUS_OK) {
                m->be->release(m->be, &rounded);
                return error_context("rounding %s to %s: ", m->params[i].name, dtype_name(weight_dtype));
            }
            m->be->release(m->be, p);
            *p = rounded;
        }
        if (m->cfg.tie_word_embeddings) m->lm_head = m->embed;
        m->weight_dtype = weight_dtype;
    }
    if (dtype != m->dtype) {
        free_compute_copies(m);
        m->dtype = dtype;
        if (dtype != m->weight_dtype) TRY(alloc_compute_copies(m));
    }
    return STATUS_OK;
}

Status model_create(Model **out, Backend *be, const ModelConfig *cfg, int64_t max_seq) {
    return model_create_as(out, be, cfg, max_seq, DT_F32);
}

Status model_create_as(Model **out, Backend *be, const ModelConfig *cfg, int64_t max_seq, DType weight_dtype) {
    *out = NULL;
    TRY(model_config_validate(cfg));
    if (max_seq < 1) return errorf("model: max_seq must be >= 1, got %lld", (long long)max_seq);
    if (weight_dtype != DT_F32 && weight_dtype != DT_BF16)
        return errorf("model: weights must be f32 or bf16, got %s", dtype_name(weight_dtype));
    Model *m = calloc(1, sizeof *m);
    if (!m) return errorf("model: out of memory");
    m->cfg = *cfg;
    m->weight_dtype = m->dtype = weight_dtype;
    m->be = be;
    m->max_seq = max_seq;
    int L = (int)cfg->num_hidden_layers;
    int pairs_mla = (int)(cfg->mla.qk_rope_head_dim / 2);
    m->layers = calloc((size_t)L, sizeof *m->layers);
    m->params = calloc((size_t)max_params(cfg), sizeof *m->params);
    m->mla_cos = calloc((size_t)L, sizeof(Tensor));
    m->mla_sin = calloc((size_t)L, sizeof(Tensor));
    m->mla_inv_freq = calloc((size_t)L * (size_t)(pairs_mla > 0 ? pairs_mla : 1), sizeof(float));
    Status st = STATUS_OK;
    if (!m->layers || !m->params || !m->mla_cos || !m->mla_sin || !m->mla_inv_freq)
        st = errorf("model: out of memory");

    int64_t V = cfg->vocab_size, D = cfg->hidden_size;
    if (st == STATUS_OK) st = alloc_param(m, &m->embed, 0, "model.embed_tokens.weight", 2, V, D);
    for (int l = 0; l < L && st == STATUS_OK; l++) st = alloc_layer(m, l);
    if (st == STATUS_OK) st = alloc_param(m, &m->final_norm, 0, "model.norm.weight", 1, D, 0);
    if (st == STATUS_OK) {
        if (cfg->tie_word_embeddings) m->lm_head = m->embed;
        else st = alloc_param(m, &m->lm_head, 1, "lm_head.weight", 2, V, D);
    }

    /* RoPE: the GQA tables from the config; MLA layers start from DeepSeek's base^(-2i/dr), the base
     * being the MLA one (mla.rope_theta, when a re-based export was read back). */
    float *inv = NULL;
    int pairs_gqa = (int)(cfg->head_dim / 2);
    int need_gqa = model_config_mla_layers(cfg) < L;
    if (st == STATUS_OK) {
        int n = pairs_gqa > pairs_mla ? pairs_gqa : pairs_mla;
        inv = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
        if (!inv) st = errorf("model: out of memory");
    }
    if (st == STATUS_OK && need_gqa) st = rope_inv_freq(&cfg->rope, (int)cfg->head_dim, inv);
    if (st == STATUS_OK && need_gqa) st = upload_rope_tables(m, inv, pairs_gqa, &m->rope_cos, &m->rope_sin);
    if (st == STATUS_OK && pairs_mla > 0) {
        RopeConfig mla_rope = cfg->rope;
        mla_rope.theta = model_config_mla_rope_theta(cfg);
        st = rope_inv_freq(&mla_rope, (int)cfg->mla.qk_rope_head_dim, inv);
        for (int l = 0; l < L && st == STATUS_OK; l++)
            if (cfg->layer_attention[l] == ATTENTION_MLA) st = model_set_mla_rope(m, l, inv);
    }
    free(inv);
    if (st != STATUS_OK) {
        model_destroy(m);
        return STATUS_ERROR;
    }
    *out = m;
    return STATUS_OK;
}

void model_destroy(Model *m) {
    if (!m) return;
    Backend *be = m->be;
    /* Every allocated tensor is in the registry once, gradients beside it. */
    for (int i = 0; i < m->n_params; i++) {
        if (m->params[i].value->data) be->release(be, m->params[i].value);
        if (m->params[i].grad && m->params[i].grad->data) be->release(be, m->params[i].grad);
        if (m->params[i].compute && m->params[i].compute->data) be->release(be, m->params[i].compute);
    }
    for (int l = 0; m->mla_cos && l < m->cfg.num_hidden_layers; l++) {
        if (m->mla_cos[l].data) be->release(be, &m->mla_cos[l]);
        if (m->mla_sin[l].data) be->release(be, &m->mla_sin[l]);
    }
    if (m->rope_cos.data) be->release(be, &m->rope_cos);
    if (m->rope_sin.data) be->release(be, &m->rope_sin);
    free(m->layers);
    free(m->grad_layers);
    free(m->compute_layers);
    free(m->params);
    free(m->mla_cos);
    free(m->mla_sin);
    free(m->mla_inv_freq);
    free(m);
}

static Tensor *grad_mirror_of(Model *m, Tensor *value) {
    return mirror_in(m, value, &m->grad_embed, &m->grad_final_norm, &m->grad_lm_head, m->grad_layers);
}

Status model_alloc_grads(Model *m) {
    if (m->has_grads) return STATUS_OK;
    m->grad_layers = calloc((size_t)m->cfg.num_hidden_layers, sizeof *m->grad_layers);
    if (!m->grad_layers) return errorf("model: out of memory for gradients");
    for (int l = 0; l < m->cfg.num_hidden_layers; l++) m->grad_layers[l].kind = m->layers[l].kind;
    for (int i = 0; i < m->n_params; i++) {
        Param *p = &m->params[i];
        p->grad = grad_mirror_of(m, p->value);
        if (m->be->alloc(m->be, p->grad, DT_F32, p->value->ndim, p->value->shape) != STATUS_OK)
            return error_context("allocating the gradient of %s: ", p->name);
    }
    if (m->cfg.tie_word_embeddings) m->grad_lm_head = m->grad_embed;
    m->has_grads = 1;
    return STATUS_OK;
}

Status model_zero_grads(Model *m) {
    if (!m->has_grads) return errorf("model_zero_grads: gradients are not allocated");
    for (int i = 0; i < m->n_params; i++) TRY(m->be->zero(m->be, *m->params[i].grad));
    return STATUS_OK;
}

Param *model_find_param(Model *m, const char *name) {
    for (int i = 0; i < m->n_params; i++)
        if (strcmp(m->params[i].name, name) == 0) return &m->params[i];
    return NULL;
}

int64_t model_num_parameters(const Model *m) {
    int64_t n = 0;
    for (int i = 0; i < m->n_params; i++) n += tensor_numel(*m->params[i].value);
    return n;
}

Status model_init_random(Model *m, uint64_t seed, float std) {
    for (int i = 0; i < m->n_params; i++) {
        Param *p = &m->params[i];
        int64_t n = tensor_numel(*p->value);
        float *host = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
        if (!host) return errorf("model_init_random: out of memory for %s", p->name);
        int is_norm = strstr(p->name, "norm") != NULL;
        int is_bias = strstr(p->name, ".bias") != NULL;
        if (is_norm) {
            for (int64_t j = 0; j < n; j++) host[j] = 1.0f;
        } else if (is_bias) {
            for (int64_t j = 0; j < n; j++) host[j] = 0.0f;
        } else {
            rng_fill_normal(host, n, seed, (uint64_t)i + 1, 0.0f, std);
        }
        Status st = backend_upload_f32(m->be, *p->value, host);
        free(host);
        if (st != STATUS_OK) return error_context("model_init_random: %s: ", p->name);
    }
    model_weights_changed(m);
    return STATUS_OK;
}
