/* Decoding with a KV cache: prefill through the model's own attention and MLP blocks (one pass over
 * the prompt, the cache filled from what the blocks computed), then one token per step. A step's
 * MLA attention runs in the latent space: q_lat[h] = W_uk[h]^T q_nope[h] (width r), scores
 * q_lat[h] . c_j + q_rope[h] . k_rope_j, the output sum_j p_j c_j (width r) through o_proj with
 * W_uv folded in. Both equal the model's formula exactly in real arithmetic:
 *   q_nope . (W_uk c) = (W_uk^T q_nope) . c   and   W_o (W_uv sum_j p_j c_j) = (W_o W_uv) sum_j p_j c_j.
 * W_uk^T is folded into the query's (last) projection itself, so that a step's latent query is one
 * product for all heads: at one token a step is a chain of small launches, and a product per head
 * would double an MLA layer's count. */
#include "infer/decode.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/layers.h"

enum { DECODER_MAX_OWNED = 16 };

typedef struct {
    Tensor q_abs;        /* [H*(r+dr), Din]: the query's projection (q_proj, or q_b_proj after the q
                          * bottleneck) with each head's W_uk^T folded into its no-rope rows */
    Tensor q_abs_bias;   /* [H*(r+dr)] where q_proj has a bias, else absent */
    Tensor o_abs;        /* [D, H*r]: o_proj with each head's W_uv folded in */
} AbsorbedLayer;

struct Decoder {
    Model *m;
    Backend *be;
    DecodeMlaMode mode;
    KvCache *kv;
    AbsorbedLayer *absorbed;   /* [L]; filled for MLA layers when absorbed */
    ForwardState *step;        /* one token's buffers (caches[0]), shaped for the widest layer */
    Tensor q_lat;              /* [H, r + dr]: the absorbed query, latent part then rope part */
    Tensor attn_lat;           /* [H, r]: attention output in the latent space */
    Tensor k_full, v_full;     /* expanded: [cap, H*dn], [cap, H*dv] re-expanded every step */
    Tensor ids1, pos;          /* i32 [1]: the fed token and its position */
    Tensor hidden, rstd;       /* [1, D], [1]: the final norm's output */
    Tensor logits;             /* f32 [1, V] */
    Tensor *owned[DECODER_MAX_OWNED];
    int n_owned;
};

static Status own(Decoder *d, Tensor *t, DType dt, int ndim, int64_t d0, int64_t d1) {
    if (d->n_owned == DECODER_MAX_OWNED) return errorf("decoder: too many buffers");
    TRY(d->be->alloc(d->be, t, dt, ndim, (int64_t[]){d0, d1}));
    d->owned[d->n_owned++] = t;
    return STATUS_OK;
}

/* A view of t's memory from element `offset` on, with a new shape. */
static Tensor view_at(Tensor t, int64_t offset, int ndim, const int64_t *shape) {
    return tensor_view((char *)t.data + (size_t)offset * dtype_size(t.dtype), t.dtype, ndim, shape);
}

static Status host_copy(Backend *be, Tensor t, float **out) {
    *out = malloc((size_t)tensor_numel(t) * sizeof **out);
    if (!*out) return errorf("decoder: out of memory for %lld values", (long long)tensor_numel(t));
    Status st = backend_download_f32(be, *out, t);
    if (st != STATUS_OK) {
        free(*out);
        *out = NULL;
    }
    return st;
}

/* dst[0..n) = sum_k coef[k * coef_step] src[k * src_ld + 0..n), in double over blocks of columns, so
 * that each source row is read contiguously; rounded once. */
static void combine_rows(float *dst, int64_t n, const float *coef, int64_t coef_step, const float *src, int64_t src_ld,
                         int64_t k) {
    double acc[512];
    for (int64_t c0 = 0; c0 < n; c0 += 512) {
        const int64_t c1 = c0 + 512 < n ? c0 + 512 : n;
        memset(acc, 0, sizeof acc);
        for (int64_t j = 0; j < k; j++) {
            const double w = coef[j * coef_step];
            const float *row = src + j * src_ld;
            for (int64_t c = c0; c < c1; c++) acc[c - c0] += w * row[c];
        }
        for (int64_t c = c0; c < c1; c++) dst[c] = (float)acc[c - c0];
    }
}

/* Folds layer l's W_uk and W_uv (read from its float32 parameters; products in double, rounded
 * once) into the tensors absorbed decoding reads. */
static Status absorb_layer(Decoder *d, int l, AbsorbedLayer *ab) {
    const Model *m = d->m;
    const LayerWeights *w = &m->layers[l];
    const int64_t H = m->cfg.num_attention_heads, D = m->cfg.hidden_size, r = m->cfg.mla.kv_lora_rank;
    const int64_t dn = m->cfg.mla.qk_nope_head_dim, dr = m->cfg.mla.qk_rope_head_dim, dv = m->cfg.mla.v_head_dim;
    const int64_t dq = dn + dr, lora = m->cfg.mla.q_lora_rank, din = lora > 0 ? lora : D;
    const Tensor wq_t = lora > 0 ? w->q_b_proj : w->q_proj, bq_t = lora > 0 ? tensor_none() : w->q_bias;
    float *uk = NULL, *uv = NULL, *o = NULL, *wq = NULL, *bq = NULL, *q_abs = NULL, *b_abs = NULL, *o_abs = NULL;
    Status st = STATUS_OK;
    if (dn > 0) st = host_copy(d->be, w->kv_b_k, &uk);
    if (st == STATUS_OK) st = host_copy(d->be, w->kv_b_v, &uv);
    if (st == STATUS_OK) st = host_copy(d->be, w->o_proj, &o);
    if (st == STATUS_OK) st = host_copy(d->be, wq_t, &wq);
    if (st == STATUS_OK && tensor_present(bq_t)) st = host_copy(d->be, bq_t, &bq);
    if (st == STATUS_OK) {
        q_abs = malloc((size_t)(H * (r + dr) * din) * sizeof *q_abs);
        b_abs = malloc((size_t)(H * (r + dr)) * sizeof *b_abs);
        o_abs = malloc((size_t)(D * H * r) * sizeof *o_abs);
        if (!q_abs || !b_abs || !o_abs) st = errorf("decoder: out of memory for layer %d's absorbed weights", l);
    }
    /* Head h's latent rows: row i = sum_j W_uk[h*dn + j][i] Wq[h*dq + j] (its bias likewise); its
     * rope rows are Wq's own. With dn = 0 the latent rows are zero: no query reads the latent. */
    if (st == STATUS_OK) {
#pragma omp parallel for schedule(static)
        for (int64_t row = 0; row < H * (r + dr); row++) {
            const int64_t h = row / (r + dr), i = row % (r + dr);
            float *dst = q_abs + row * din;
            if (i >= r) {
                memcpy(dst, wq + (h * dq + dn + (i - r)) * din, (size_t)din * sizeof *dst);
                b_abs[row] = bq ? bq[h * dq + dn + (i - r)] : 0.0f;
                continue;
            }
            const float *uk_col = uk ? uk + h * dn * r + i : NULL; /* W_uk[h*dn + j][i] at j * r */
            combine_rows(dst, din, uk_col, r, wq + h * dq * din, din, dn);
            if (bq) combine_rows(&b_abs[row], 1, uk_col, r, bq + h * dq, 1, dn);
            else b_abs[row] = 0.0f;
        }
    }
    if (st == STATUS_OK) {
#pragma omp parallel for schedule(static)
        for (int64_t row = 0; row < D; row++)
            for (int64_t h = 0; h < H; h++)
                combine_rows(o_abs + row * H * r + h * r, r, o + row * H * dv + h * dv, 1, uv + h * dv * r, r, dv);
    }
    if (st == STATUS_OK) st = d->be->alloc(d->be, &ab->q_abs, d->m->dtype, 2, (int64_t[]){H * (r + dr), din});
    if (st == STATUS_OK) st = backend_upload_f32(d->be, ab->q_abs, q_abs);
    if (st == STATUS_OK && bq) st = d->be->alloc(d->be, &ab->q_abs_bias, d->m->dtype, 1, (int64_t[]){H * (r + dr)});
    if (st == STATUS_OK && bq) st = backend_upload_f32(d->be, ab->q_abs_bias, b_abs);
    if (st == STATUS_OK) st = d->be->alloc(d->be, &ab->o_abs, d->m->dtype, 2, (int64_t[]){D, H * r});
    if (st == STATUS_OK) st = backend_upload_f32(d->be, ab->o_abs, o_abs);
    free(uk);
    free(uv);
    free(o);
    free(wq);
    free(bq);
    free(q_abs);
    free(b_abs);
    free(o_abs);
    if (st != STATUS_OK) return error_context("decoder: absorbing layer %d: ", l);
    return STATUS_OK;
}

Status decoder_create(Decoder **out, Model *m, int64_t capacity, DecodeMlaMode mode) {
    *out = NULL;
    const ModelConfig *cfg = &m->cfg;
    if (capacity < 1 || capacity > m->max_seq)
        return errorf("decoder: a cache of %lld tokens, expected 1 to %lld (the model's rope tables)",
                      (long long)capacity, (long long)m->max_seq);
    if (mode != DECODE_MLA_ABSORBED && mode != DECODE_MLA_EXPANDED)
        return errorf("decoder: unknown MLA mode %d", (int)mode);
    Decoder *d = calloc(1, sizeof *d);
    if (!d) return errorf("decoder: out of memory");
    d->m = m;
    d->be = m->be;
    d->mode = mode;
    const int L = (int)cfg->num_hidden_layers;
    const int64_t H = cfg->num_attention_heads, r = cfg->mla.kv_lora_rank, dr = cfg->mla.qk_rope_head_dim;
    const int64_t dn = cfg->mla.qk_nope_head_dim, dv = cfg->mla.v_head_dim;
    const int mla = model_config_mla_layers(cfg) > 0;
    Status st = m->compute_stale ? model_refresh_compute_weights(m) : STATUS_OK;
    if (st == STATUS_OK) st = kv_cache_create(&d->kv, d->be, cfg, capacity, m->dtype);
    if (st == STATUS_OK) st = forward_state_create(&d->step, m, 1, 1, FORWARD_INFERENCE);
    if (st == STATUS_OK) st = own(d, &d->ids1, DT_I32, 1, 1, 0);
    if (st == STATUS_OK) st = own(d, &d->pos, DT_I32, 1, 1, 0);
    if (st == STATUS_OK) st = own(d, &d->hidden, m->dtype, 2, 1, cfg->hidden_size);
    if (st == STATUS_OK) st = own(d, &d->rstd, DT_F32, 1, 1, 0);
    if (st == STATUS_OK) st = own(d, &d->logits, DT_F32, 2, 1, cfg->vocab_size);
    if (st == STATUS_OK && mla && mode == DECODE_MLA_ABSORBED) {
        st = own(d, &d->q_lat, m->dtype, 2, H, r + dr);
        if (st == STATUS_OK) st = own(d, &d->attn_lat, m->dtype, 2, H, r);
        d->absorbed = calloc((size_t)L, sizeof *d->absorbed);
        if (st == STATUS_OK && !d->absorbed) st = errorf("decoder: out of memory");
        for (int l = 0; st == STATUS_OK && l < L; l++)
            if (cfg->layer_attention[l] == ATTENTION_MLA) st = absorb_layer(d, l, &d->absorbed[l]);
    }
    if (st == STATUS_OK && mla && mode == DECODE_MLA_EXPANDED) {
        if (dn > 0) st = own(d, &d->k_full, m->dtype, 2, capacity, H * dn);
        if (st == STATUS_OK) st = own(d, &d->v_full, m->dtype, 2, capacity, H * dv);
    }
    if (st != STATUS_OK) {
        decoder_destroy(d);
        return STATUS_ERROR;
    }
    *out = d;
    return STATUS_OK;
}

void decoder_destroy(Decoder *d) {
    if (!d) return;
    if (d->absorbed) {
        for (int l = 0; l < d->m->cfg.num_hidden_layers; l++) {
            if (tensor_present(d->absorbed[l].q_abs)) d->be->release(d->be, &d->absorbed[l].q_abs);
            if (tensor_present(d->absorbed[l].q_abs_bias)) d->be->release(d->be, &d->absorbed[l].q_abs_bias);
            if (tensor_present(d->absorbed[l].o_abs)) d->be->release(d->be, &d->absorbed[l].o_abs);
        }
        free(d->absorbed);
    }
    for (int i = 0; i < d->n_owned; i++) d->be->release(d->be, d->owned[i]);
    forward_state_destroy(d->step);
    kv_cache_destroy(d->kv);
    free(d);
}

const KvCache *decoder_cache(const Decoder *d) { return d->kv; }

static Status check_ids(const Decoder *d, const int32_t *ids, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= d->m->cfg.vocab_size)
            return errorf("decoder: token id %d at position %lld is outside the vocabulary [0, %lld)", (int)ids[i],
                          (long long)(d->kv->length + i), (long long)d->m->cfg.vocab_size);
    return STATUS_OK;
}

/* ---- prefill ---- */

/* Copies n values between backend buffers of one dtype (cast is a copy when the dtypes agree). */
static Status copy_values(Backend *be, Tensor dst, Tensor src, int64_t n) {
    return be->ops.cast(be, tensor_view(dst.data, dst.dtype, 1, (int64_t[]){n}),
                        tensor_view(src.data, src.dtype, 1, (int64_t[]){n}));
}

/* What layer l's attention block just computed for the n prompt tokens, into the cache: rotated
 * keys and values (GQA), or the normed latent and the rotated rope key (MLA). The blocks write each
 * buffer at the layer's own width from its start. */
static Status cache_store(Decoder *d, int l, const LayerCache *c, int64_t n) {
    const ModelConfig *cfg = &d->m->cfg;
    const LayerKv *lk = &d->kv->layers[l];
    if (lk->kind == ATTENTION_GQA) {
        int64_t w = cfg->num_key_value_heads * cfg->head_dim;
        TRY(copy_values(d->be, lk->k, c->k, n * w));
        return copy_values(d->be, lk->v, c->v, n * w);
    }
    TRY(copy_values(d->be, lk->latent, c->c_n, n * cfg->mla.kv_lora_rank));
    return copy_values(d->be, lk->rope_key, c->k_rope, n * cfg->mla.qk_rope_head_dim);
}

/* The LM head over `rows` rows of the final norm's output h [rows, D] into host logits [rows, V]. */
static Status lm_head(Decoder *d, Tensor h, int64_t rows, float *out) {
    Backend *be = d->be;
    Model *m = d->m;
    const int64_t V = m->cfg.vocab_size;
    if (rows == 1) {
        TRY(be->ops.linear_forward(be, d->logits, h, model_compute_lm_head(m), tensor_none()));
        return be->download(be, out, d->logits);
    }
    Tensor all;
    TRY(be->alloc(be, &all, DT_F32, 2, (int64_t[]){rows, V}));
    Status st = be->ops.linear_forward(be, all, h, model_compute_lm_head(m), tensor_none());
    if (st == STATUS_OK) st = be->download(be, out, all);
    be->release(be, &all);
    return st;
}

static Status prefill_layers(Decoder *d, ForwardState *st, Tensor ids, int64_t n, float *logits, float *all_logits) {
    Model *m = d->m;
    Backend *be = d->be;
    const ModelConfig *cfg = &m->cfg;
    const int L = (int)cfg->num_hidden_layers;
    const int64_t D = cfg->hidden_size;
    LayerCache *c = &st->caches[0];
    TRY(be->ops.embedding_forward(be, c->x, ids, model_compute_embed(m)));
    for (int l = 0; l < L; l++) {
        Status s = cfg->layer_attention[l] == ATTENTION_GQA ? gqa_attention_forward(m, st, l, c)
                                                            : mla_attention_forward(m, st, l, c);
        if (s == STATUS_OK) s = cache_store(d, l, c, n);
        if (s == STATUS_OK) s = mlp_forward(m, st, l, c, l + 1 == L ? st->x_final : c->x);
        if (s != STATUS_OK) return error_context("prefill, layer %d: ", l);
    }
    /* The final norm into c->a (free by now); the head over the last row, or over all of them. */
    TRY(be->ops.rmsnorm_forward(be, c->a, st->rstd_final, st->x_final, model_compute_final_norm(m),
                                (float)cfg->rms_norm_eps));
    if (all_logits) {
        TRY(lm_head(d, c->a, n, all_logits));
        memcpy(logits, all_logits + (n - 1) * cfg->vocab_size, (size_t)cfg->vocab_size * sizeof *logits);
        return STATUS_OK;
    }
    return lm_head(d, view_at(c->a, (n - 1) * D, 2, (int64_t[]){1, D}), 1, logits);
}

Status decoder_prefill(Decoder *d, const int32_t *ids, int64_t n, float *logits, float *all_logits) {
    Model *m = d->m;
    Backend *be = d->be;
    if (d->kv->length != 0)
        return errorf("decoder: prefill needs an empty cache (it holds %lld tokens)", (long long)d->kv->length);
    if (n < 1 || n > d->kv->capacity)
        return errorf("decoder: a prompt of %lld tokens, expected 1 to %lld (the cache's room)", (long long)n,
                      (long long)d->kv->capacity);
    TRY(check_ids(d, ids, n));
    if (m->compute_stale) TRY(model_refresh_compute_weights(m));
    ForwardState *st = NULL;
    Tensor ids_t = tensor_none();
    Status s = forward_state_create(&st, m, 1, n, FORWARD_INFERENCE);
    if (s == STATUS_OK) s = be->alloc(be, &ids_t, DT_I32, 1, (int64_t[]){n});
    if (s == STATUS_OK) s = be->upload(be, ids_t, ids);
    if (s == STATUS_OK) s = prefill_layers(d, st, ids_t, n, logits, all_logits);
    if (tensor_present(ids_t)) be->release(be, &ids_t);
    forward_state_destroy(st);
    if (s == STATUS_OK) d->kv->length = n;
    return s;
}

/* ---- one token ---- */

static Status gqa_step(Decoder *d, int l, LayerCache *c, int64_t t) {
    Model *m = d->m;
    Backend *be = d->be;
    const Ops *op = &be->ops;
    const ModelConfig *cfg = &m->cfg;
    const LayerWeights *w = model_compute_layer(m, l);
    const LayerKv *lk = &d->kv->layers[l];
    const int64_t H = cfg->num_attention_heads, K = cfg->num_key_value_heads, hd = cfg->head_dim;
    Tensor q = reshape2(c->q, 1, H * hd), attn = reshape2(c->attn, 1, H * hd);
    Tensor k_row = kv_cache_row(lk->k, t), v_row = kv_cache_row(lk->v, t);

    TRY(op->rmsnorm_forward(be, c->a, c->rstd1, c->x, w->input_norm, (float)cfg->rms_norm_eps));
    TRY(op->linear_forward(be, q, c->a, w->q_proj, w->q_bias));
    TRY(op->linear_forward(be, k_row, c->a, w->k_proj, w->k_bias));
    TRY(op->linear_forward(be, v_row, c->a, w->v_proj, w->v_bias));
    TRY(op->rope_forward(be, reshape3(q, 1, H, hd), 0, m->rope_cos, m->rope_sin, d->pos));
    TRY(op->rope_forward(be, reshape3(k_row, 1, K, hd), 0, m->rope_cos, m->rope_sin, d->pos));
    TRY(op->attention_decode(be, reshape2(attn, H, hd), reshape2(q, H, hd), kv_cache_rows(lk->k, t + 1, K),
                             tensor_none(), kv_cache_rows(lk->v, t + 1, K), 1.0f / sqrtf((float)hd)));
    TRY(op->linear_residual_forward(be, c->h, attn, w->o_proj, c->x));
    return STATUS_OK;
}

/* What the query's last projection reads: the normed hidden state, or the q bottleneck's output
 * (after its norm where the student has one), as forward. */
static Status mla_query_input(Decoder *d, const LayerWeights *w, LayerCache *c, Tensor *in) {
    Backend *be = d->be;
    const MlaDims *a = &d->m->cfg.mla;
    *in = c->a;
    if (a->q_lora_rank == 0) return STATUS_OK;
    TRY(be->ops.linear_forward(be, c->q_a, c->a, w->q_a_proj, w->q_a_bias));
    if (a->q_norm) TRY(be->ops.rmsnorm_forward(be, c->q_a_n, c->q_a_rstd, c->q_a, w->q_a_norm, MLA_LATENT_NORM_EPS));
    *in = c->q_a_n;
    return STATUS_OK;
}

/* The query of an MLA layer, [1, H*(dn+dr)] with RoPE on each head's last dr dims, as forward. */
static Status mla_query(Decoder *d, const LayerWeights *w, LayerCache *c, Tensor q, int l) {
    Model *m = d->m;
    Backend *be = d->be;
    const MlaDims *a = &m->cfg.mla;
    const int64_t H = m->cfg.num_attention_heads, dq = a->qk_nope_head_dim + a->qk_rope_head_dim;
    Tensor in;
    TRY(mla_query_input(d, w, c, &in));
    if (a->q_lora_rank > 0) TRY(be->ops.linear_forward(be, q, in, w->q_b_proj, tensor_none()));
    else TRY(be->ops.linear_forward(be, q, in, w->q_proj, w->q_bias));
    return be->ops.rope_forward(be, reshape3(q, 1, H, dq), a->qk_nope_head_dim, m->mla_cos[l], m->mla_sin[l], d->pos);
}

/* Attention in the latent space over the cached latents c_j [n, 1, r] and rope keys [n, dr]: the
 * latent query [H, r + dr] from the folded projection (RoPE on each head's last dr dims). */
static Status mla_absorbed_attention(Decoder *d, const LayerWeights *w, int l, LayerCache *c, Tensor latent,
                                     Tensor rope_keys) {
    Model *m = d->m;
    Backend *be = d->be;
    const Ops *op = &be->ops;
    const MlaDims *a = &m->cfg.mla;
    const AbsorbedLayer *ab = &d->absorbed[l];
    const int64_t H = m->cfg.num_attention_heads, r = a->kv_lora_rank, dr = a->qk_rope_head_dim;
    const int64_t dq = a->qk_nope_head_dim + dr;
    Tensor in;
    TRY(mla_query_input(d, w, c, &in));
    TRY(op->linear_forward(be, reshape2(d->q_lat, 1, H * (r + dr)), in, ab->q_abs, ab->q_abs_bias));
    TRY(op->rope_forward(be, reshape3(d->q_lat, 1, H, r + dr), r, m->mla_cos[l], m->mla_sin[l], d->pos));
    TRY(op->attention_decode(be, d->attn_lat, d->q_lat, latent, rope_keys, latent, 1.0f / sqrtf((float)dq)));
    return op->linear_residual_forward(be, c->h, reshape2(d->attn_lat, 1, H * r), ab->o_abs, c->x);
}

/* The model's own formula over the cache: every cached latent expanded to k_nope and v again. */
static Status mla_expanded_attention(Decoder *d, const LayerWeights *w, LayerCache *c, Tensor q, Tensor latent,
                                     Tensor rope_keys, int64_t n) {
    Backend *be = d->be;
    const Ops *op = &be->ops;
    const MlaDims *a = &d->m->cfg.mla;
    const int64_t H = d->m->cfg.num_attention_heads, r = a->kv_lora_rank, dn = a->qk_nope_head_dim;
    const int64_t dv = a->v_head_dim, dq = dn + a->qk_rope_head_dim;
    Tensor lat2 = reshape2(latent, n, r), v = view_at(d->v_full, 0, 2, (int64_t[]){n, H * dv});
    /* with dn = 0 the keys have no per-head part: a zero-width view of any buffer */
    Tensor k = dn > 0 ? view_at(d->k_full, 0, 2, (int64_t[]){n, H * dn}) : view_at(d->v_full, 0, 2, (int64_t[]){n, 0});
    if (dn > 0) TRY(op->linear_forward(be, k, lat2, w->kv_b_k, tensor_none()));
    TRY(op->linear_forward(be, v, lat2, w->kv_b_v, tensor_none()));
    Tensor attn = reshape2(c->attn, 1, H * dv);
    TRY(op->attention_decode(be, reshape2(attn, H, dv), reshape2(q, H, dq), reshape3(k, n, H, dn), rope_keys,
                             reshape3(v, n, H, dv), 1.0f / sqrtf((float)dq)));
    return op->linear_residual_forward(be, c->h, attn, w->o_proj, c->x);
}

static Status mla_step(Decoder *d, int l, LayerCache *c, int64_t t) {
    Model *m = d->m;
    Backend *be = d->be;
    const Ops *op = &be->ops;
    const LayerWeights *w = model_compute_layer(m, l);
    const LayerKv *lk = &d->kv->layers[l];
    const MlaDims *a = &m->cfg.mla;
    const int64_t H = m->cfg.num_attention_heads, r = a->kv_lora_rank, dr = a->qk_rope_head_dim;
    const int64_t dq = a->qk_nope_head_dim + dr, n = t + 1;
    Tensor q = reshape2(c->q, 1, H * dq);
    Tensor latent_row = kv_cache_row(lk->latent, t), rope_row = kv_cache_row(lk->rope_key, t);

    TRY(op->rmsnorm_forward(be, c->a, c->rstd1, c->x, w->input_norm, (float)m->cfg.rms_norm_eps));
    if (d->mode == DECODE_MLA_EXPANDED) TRY(mla_query(d, w, c, q, l));
    /* This token's latent and rope key go straight into the cache. */
    if (a->latent_norm) {
        Tensor lat = reshape2(c->c, 1, r);
        TRY(op->linear_forward(be, lat, c->a, w->kv_a_latent, w->kv_a_latent_bias));
        TRY(op->rmsnorm_forward(be, latent_row, c->c_rstd, lat, w->kv_a_norm, MLA_LATENT_NORM_EPS));
    } else {
        TRY(op->linear_forward(be, latent_row, c->a, w->kv_a_latent, w->kv_a_latent_bias));
    }
    TRY(op->linear_forward(be, rope_row, c->a, w->kv_a_rope, w->kv_a_rope_bias));
    TRY(op->rope_forward(be, reshape3(rope_row, 1, 1, dr), 0, m->mla_cos[l], m->mla_sin[l], d->pos));

    Tensor latent = kv_cache_rows(lk->latent, n, 1), rope_keys = reshape2(lk->rope_key, n, dr);
    if (d->mode == DECODE_MLA_ABSORBED) return mla_absorbed_attention(d, w, l, c, latent, rope_keys);
    return mla_expanded_attention(d, w, c, q, latent, rope_keys, n);
}

Status decoder_step(Decoder *d, int32_t id, float *logits) {
    Model *m = d->m;
    Backend *be = d->be;
    const ModelConfig *cfg = &m->cfg;
    const int64_t t = d->kv->length;
    if (t >= d->kv->capacity)
        return errorf("decoder: the cache is full (%lld tokens)", (long long)d->kv->capacity);
    TRY(check_ids(d, &id, 1));
    if (m->compute_stale) TRY(model_refresh_compute_weights(m));
    int32_t pos = (int32_t)t;
    TRY(be->upload(be, d->ids1, &id));
    TRY(be->upload(be, d->pos, &pos));
    LayerCache *c = &d->step->caches[0];
    TRY(be->ops.embedding_forward(be, c->x, d->ids1, model_compute_embed(m)));
    for (int l = 0; l < cfg->num_hidden_layers; l++) {
        Status s = cfg->layer_attention[l] == ATTENTION_GQA ? gqa_step(d, l, c, t) : mla_step(d, l, c, t);
        if (s == STATUS_OK) s = mlp_forward(m, d->step, l, c, c->x);
        if (s != STATUS_OK) return error_context("decode step at position %lld, layer %d: ", (long long)t, l);
    }
    d->kv->length = t + 1;
    TRY(be->ops.rmsnorm_forward(be, d->hidden, d->rstd, c->x, model_compute_final_norm(m), (float)cfg->rms_norm_eps));
    return lm_head(d, d->hidden, 1, logits);
}
