/* Adding a linear-regime kv_a_layernorm and q_a_layernorm (and, for a q bias, a linear-regime q
 * bottleneck) to a student for export, and folding them back on import. */
#include "model/hf/linear_latent_norm.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/layers.h"

/* Every parameter of dst that src has under the same name and size, copied. */
static Status copy_params(const Model *src, Model *dst) {
    Backend *be = src->be;
    for (int i = 0; i < dst->n_params; i++) {
        Param *p = &dst->params[i];
        Param *q = model_find_param((Model *)src, p->name);
        if (!q || tensor_numel(*q->value) != tensor_numel(*p->value)) continue;
        float *host = malloc(tensor_numel(*p->value) * sizeof(float));
        if (!host) return errorf("latent norm: out of memory");
        Status st = backend_download_f32(be, host, *q->value);
        if (st == STATUS_OK) st = backend_upload_f32(be, *p->value, host);
        free(host);
        TRY(st);
    }
    return STATUS_OK;
}

static Status copy_rope(const Model *src, Model *dst) {
    int64_t pairs = src->cfg.mla.qk_rope_head_dim / 2;
    for (int l = 0; l < src->cfg.num_hidden_layers; l++)
        if (src->cfg.layer_attention[l] == ATTENTION_MLA) TRY(model_set_mla_rope(dst, l, src->mla_inv_freq + l * pairs));
    return STATUS_OK;
}

/* The largest mean(c^2) any input can give the layer's latent c = W a + b: |a|^2 <= D max g^2 (g the
 * input norm's weight, since RMSNorm's output has |x| <= sqrt(D)), |W a + b| <= |W|_F |a| + |b|. */
static double latent_bound(const float *W, const float *b, int64_t r, int64_t D, const float *g) {
    double fro = 0, gmax = 0, bias = 0;
    for (int64_t i = 0; i < r * D; i++) fro += (double)W[i] * W[i];
    for (int64_t d = 0; d < D; d++) gmax = fmax(gmax, fabs((double)g[d]));
    for (int64_t i = 0; b && i < r; i++) bias += (double)b[i] * b[i];
    double norm = sqrt(fro * (double)D) * gmax + sqrt(bias);
    return norm * norm / (double)r;
}

/* Where a norm follows a projection in DeepSeek-V2's layout: the latent rows of kv_a_proj_with_mqa
 * then kv_a_layernorm, or q_a_proj then q_a_layernorm. */
typedef enum { SITE_LATENT, SITE_Q } NormSite;

static const char *site_name(NormSite site) { return site == SITE_LATENT ? "latent norm" : "q norm"; }

static int64_t site_width(const ModelConfig *c, NormSite site) {
    return site == SITE_LATENT ? c->mla.kv_lora_rank : c->mla.q_lora_rank;
}

static int *site_flag(ModelConfig *c, NormSite site) {
    return site == SITE_LATENT ? &c->mla.latent_norm : &c->mla.q_norm;
}

/* The projection's weight and bias (data NULL without attention_bias) and the norm's weight. */
static void site_tensors(const LayerWeights *w, NormSite site, Tensor *W, Tensor *b, Tensor *norm) {
    *W = site == SITE_LATENT ? w->kv_a_latent : w->q_a_proj;
    *b = site == SITE_LATENT ? w->kv_a_latent_bias : w->q_a_bias;
    *norm = site == SITE_LATENT ? w->kv_a_norm : w->q_a_norm;
}

typedef struct {
    float *W, *b, *g, *norm;   /* b: the projection's bias, NULL without attention_bias */
} LayerHost;

static Status layer_host(const Model *m, const Model *with_norm, NormSite site, int l, LayerHost *h) {
    Backend *be = m->be;
    int64_t r = site_width(&m->cfg, site), D = m->cfg.hidden_size;
    Tensor W, b, norm;
    site_tensors(&m->layers[l], site, &W, &b, &norm);
    h->W = malloc((size_t)(r * D) * sizeof(float));
    h->g = malloc((size_t)D * sizeof(float));
    h->norm = malloc((size_t)r * sizeof(float));
    if (!h->W || !h->g || !h->norm) return errorf("%s: out of memory", site_name(site));
    if (m->cfg.mla.attention_bias) {
        h->b = malloc((size_t)r * sizeof(float));
        if (!h->b) return errorf("%s: out of memory", site_name(site));
        TRY(backend_download_f32(be, h->b, b));
    }
    TRY(backend_download_f32(be, h->W, W));
    TRY(backend_download_f32(be, h->g, m->layers[l].input_norm));
    if (with_norm) {
        site_tensors(&with_norm->layers[l], site, &W, &b, &norm);
        TRY(backend_download_f32(be, h->norm, norm));
    }
    return STATUS_OK;
}

static void layer_host_free(LayerHost *h) {
    free(h->W);
    free(h->b);
    free(h->g);
    free(h->norm);
}

/* The power of two that puts a projection whose mean square is at most `bound` into the norm's
 * linear regime: a power of two, so scaling and folding back are exact in any float format. */
static double linear_scale(double bound) {
    double eps = MLA_LATENT_NORM_EPS;
    double s = bound > 0 ? sqrt(2 * LINEAR_NORM_TOLERANCE * eps / bound) : 1.0;
    return s >= 1 ? 1.0 : ldexp(1.0, (int)floor(log2(s)));
}

static Status with_linear_norm(const Model *m, NormSite site, Model **out) {
    *out = NULL;
    ModelConfig cfg = m->cfg;
    if (*site_flag(&cfg, site)) return errorf("%s: the student already has one", site_name(site));
    if (site_width(&cfg, site) <= 0) return errorf("%s: the student has no q bottleneck to norm", site_name(site));
    *site_flag(&cfg, site) = 1;
    Model *n = NULL;
    TRY(model_create_as(&n, m->be, &cfg, m->max_seq, m->weight_dtype));
    Status st = copy_params(m, n);
    if (st == STATUS_OK) st = copy_rope(m, n);
    int64_t r = site_width(&cfg, site), D = cfg.hidden_size;
    const double eps = MLA_LATENT_NORM_EPS;
    for (int l = 0; st == STATUS_OK && l < cfg.num_hidden_layers; l++) {
        if (cfg.layer_attention[l] != ATTENTION_MLA) continue;
        LayerHost h = {0};
        st = layer_host(m, NULL, site, l, &h);
        if (st == STATUS_OK) {
            double s = linear_scale(latent_bound(h.W, h.b, r, D, h.g));
            for (int64_t i = 0; i < r * D; i++) h.W[i] = (float)(s * h.W[i]);
            for (int64_t i = 0; h.b && i < r; i++) h.b[i] = (float)(s * h.b[i]);
            for (int64_t i = 0; i < r; i++) h.norm[i] = (float)(sqrt(eps) / s);
            Tensor W, b, norm;
            site_tensors(&n->layers[l], site, &W, &b, &norm);
            st = backend_upload_f32(m->be, W, h.W);
            if (st == STATUS_OK && h.b) st = backend_upload_f32(m->be, b, h.b);
            if (st == STATUS_OK) st = backend_upload_f32(m->be, norm, h.norm);
        }
        layer_host_free(&h);
        if (st != STATUS_OK) error_context("layer %d: ", l);
    }
    if (st != STATUS_OK) {
        model_destroy(n);
        return STATUS_ERROR;
    }
    model_weights_changed(n);
    *out = n;
    return STATUS_OK;
}

static Status fold_linear_norm(const Model *m, NormSite site, Model **out) {
    *out = NULL;
    const ModelConfig *c = &m->cfg;
    ModelConfig cfg = *c;
    if (!*site_flag(&cfg, site) || site_width(c, site) <= 0 || model_config_mla_layers(c) == 0) return STATUS_OK;
    int64_t r = site_width(c, site), D = c->hidden_size;
    const double eps = MLA_LATENT_NORM_EPS;
    /* Linear only if every layer is: checked before anything is built. A factor 100 over the export's
     * own tolerance leaves room for the rounding of a bf16 export. */
    for (int l = 0; l < c->num_hidden_layers; l++) {
        if (c->layer_attention[l] != ATTENTION_MLA) continue;
        LayerHost h = {0};
        Status st = layer_host(m, NULL, site, l, &h);
        int linear = st == STATUS_OK && latent_bound(h.W, h.b, r, D, h.g) <= 2 * 100 * LINEAR_NORM_TOLERANCE * eps;
        layer_host_free(&h);
        TRY(st);
        if (!linear) return STATUS_OK;
    }
    *site_flag(&cfg, site) = 0;
    Model *n = NULL;
    TRY(model_create_as(&n, m->be, &cfg, m->max_seq, m->weight_dtype));
    Status st = copy_params(m, n);
    if (st == STATUS_OK) st = copy_rope(m, n);
    for (int l = 0; st == STATUS_OK && l < c->num_hidden_layers; l++) {
        if (c->layer_attention[l] != ATTENTION_MLA) continue;
        LayerHost h = {0};
        st = layer_host(m, m, site, l, &h);
        /* g s c / sqrt(eps) = c': row i of the projection times g_i / sqrt(eps). An export of ours
         * wrote one g = sqrt(eps)/s for every channel, s a power of two: then the factor is exactly
         * 1/s, which g's own rounding (bf16: 2^-9) would otherwise blur. */
        int shared = 1;
        double e = st == STATUS_OK ? round(log2(fabs(h.norm[0] / sqrt(eps)))) : 0;
        for (int64_t i = 0; st == STATUS_OK && i < r; i++) {
            double factor = h.norm[i] / sqrt(eps);
            shared &= factor > 0 && fabs(factor / ldexp(1.0, (int)e) - 1) < 1e-2;
        }
        for (int64_t i = 0; st == STATUS_OK && i < r; i++) {
            double factor = shared ? ldexp(1.0, (int)e) : h.norm[i] / sqrt(eps);
            for (int64_t d = 0; d < D; d++) h.W[i * D + d] = (float)((double)h.W[i * D + d] * factor);
            if (h.b) h.b[i] = (float)((double)h.b[i] * factor);
        }
        Tensor W, b, norm;
        site_tensors(&n->layers[l], site, &W, &b, &norm);
        if (st == STATUS_OK) st = backend_upload_f32(m->be, W, h.W);
        if (st == STATUS_OK && h.b) st = backend_upload_f32(m->be, b, h.b);
        layer_host_free(&h);
    }
    if (st != STATUS_OK) {
        model_destroy(n);
        return STATUS_ERROR;
    }
    model_weights_changed(n);
    *out = n;
    return STATUS_OK;
}

Status model_with_linear_latent_norm(const Model *m, Model **out) { return with_linear_norm(m, SITE_LATENT, out); }

Status model_fold_linear_latent_norm(const Model *m, Model **out) { return fold_linear_norm(m, SITE_LATENT, out); }

Status model_with_linear_q_norm(const Model *m, Model **out) { return with_linear_norm(m, SITE_Q, out); }

Status model_fold_linear_q_norm(const Model *m, Model **out) { return fold_linear_norm(m, SITE_Q, out); }

/* ---- the q bottleneck of a q bias ---- */

Status model_with_linear_q_bottleneck(const Model *m, Model **out) {
    *out = NULL;
    const ModelConfig *c = &m->cfg;
    if (c->mla.q_lora_rank != 0 || !c->mla.attention_bias)
        return errorf("q bottleneck: only for a student with a q_proj bias and no q bottleneck");
    int64_t D = c->hidden_size, Q = c->num_attention_heads * (c->mla.qk_nope_head_dim + c->mla.qk_rope_head_dim);
    ModelConfig cfg = *c;
    cfg.mla.q_lora_rank = Q;
    cfg.mla.q_norm = 1;
    Model *n = NULL;
    TRY(model_create_as(&n, m->be, &cfg, m->max_seq, m->weight_dtype));
    Status st = copy_params(m, n);
    if (st == STATUS_OK) st = copy_rope(m, n);
    float *W = malloc((size_t)(Q * D) * sizeof(float)), *b = malloc((size_t)Q * sizeof(float));
    float *g = malloc((size_t)D * sizeof(float)), *norm = malloc((size_t)Q * sizeof(float));
    float *eye = calloc((size_t)(Q * Q), sizeof(float));
    if (st == STATUS_OK && (!W || !b || !g || !norm || !eye)) st = errorf("q bottleneck: out of memory");
    for (int64_t i = 0; eye && i < Q; i++) eye[i * Q + i] = 1.0f;
    for (int l = 0; st == STATUS_OK && l < c->num_hidden_layers; l++) {
        if (c->layer_attention[l] != ATTENTION_MLA) continue;
        const LayerWeights *w = &m->layers[l];
        LayerWeights *v = &n->layers[l];
        st = backend_download_f32(m->be, W, w->q_proj);
        if (st == STATUS_OK) st = backend_download_f32(m->be, b, w->q_bias);
        if (st == STATUS_OK) st = backend_download_f32(m->be, g, w->input_norm);
        if (st != STATUS_OK) break;
        double s = linear_scale(latent_bound(W, b, Q, D, g));
        for (int64_t i = 0; i < Q * D; i++) W[i] = (float)(s * W[i]);
        for (int64_t i = 0; i < Q; i++) b[i] = (float)(s * b[i]), norm[i] = (float)(sqrt(MLA_LATENT_NORM_EPS) / s);
        st = backend_upload_f32(m->be, v->q_a_proj, W);
        if (st == STATUS_OK) st = backend_upload_f32(m->be, v->q_a_bias, b);
        if (st == STATUS_OK) st = backend_upload_f32(m->be, v->q_a_norm, norm);
        if (st == STATUS_OK) st = backend_upload_f32(m->be, v->q_b_proj, eye);
        if (st != STATUS_OK) error_context("layer %d: ", l);
    }
    free(W), free(b), free(g), free(norm), free(eye);
    if (st != STATUS_OK) {
        model_destroy(n);
        return STATUS_ERROR;
    }
    model_weights_changed(n);
    *out = n;
    return STATUS_OK;
}

Status model_fold_linear_q_bottleneck(const Model *m, Model **out) {
    *out = NULL;
    const ModelConfig *c = &m->cfg;
    int64_t D = c->hidden_size, Q = c->num_attention_heads * (c->mla.qk_nope_head_dim + c->mla.qk_rope_head_dim);
    if (!c->mla.attention_bias || c->mla.q_lora_rank != Q || !c->mla.q_norm || model_config_mla_layers(c) == 0)
        return STATUS_OK;
    const double eps = MLA_LATENT_NORM_EPS;
    float *W = malloc((size_t)(Q * D) * sizeof(float)), *b = malloc((size_t)Q * sizeof(float));
    float *g = malloc((size_t)D * sizeof(float)), *norm = malloc((size_t)Q * sizeof(float));
    float *eye = malloc((size_t)(Q * Q) * sizeof(float));
    Status st = W && b && g && norm && eye ? STATUS_OK : errorf("q bottleneck: out of memory");
    /* Foldable only if every layer is: q_b_proj exactly the identity, the norm provably linear and
     * one power of two on every channel (what the export wrote). */
    int foldable = st == STATUS_OK;
    for (int l = 0; foldable && l < c->num_hidden_layers; l++) {
        if (c->layer_attention[l] != ATTENTION_MLA) continue;
        const LayerWeights *w = &m->layers[l];
        st = backend_download_f32(m->be, eye, w->q_b_proj);
        if (st == STATUS_OK) st = backend_download_f32(m->be, W, w->q_a_proj);
        if (st == STATUS_OK) st = backend_download_f32(m->be, b, w->q_a_bias);
        if (st == STATUS_OK) st = backend_download_f32(m->be, g, w->input_norm);
        if (st == STATUS_OK) st = backend_download_f32(m->be, norm, w->q_a_norm);
        if (st != STATUS_OK) break;
        for (int64_t i = 0; foldable && i < Q * Q; i++) foldable = eye[i] == (i / Q == i % Q ? 1.0f : 0.0f);
        foldable = foldable && latent_bound(W, b, Q, D, g) <= 2 * 100 * LINEAR_NORM_TOLERANCE * eps;
        for (int64_t i = 0; foldable && i < Q; i++) foldable = norm[i] == norm[0] && norm[0] > 0;
        double e = round(log2(norm[0] / sqrt(eps)));
        foldable = foldable && fabs(norm[0] / sqrt(eps) / ldexp(1.0, (int)e) - 1) < 1e-2;
    }
    Model *n = NULL;
    if (st == STATUS_OK && foldable) {
        ModelConfig cfg = *c;
        cfg.mla.q_lora_rank = 0;
        cfg.mla.q_norm = 0; /* as a converted student without a bottleneck has it */
        st = model_create_as(&n, m->be, &cfg, m->max_seq, m->weight_dtype);
        if (st == STATUS_OK) st = copy_params(m, n);
        if (st == STATUS_OK) st = copy_rope(m, n);
    }
    for (int l = 0; n && st == STATUS_OK && l < c->num_hidden_layers; l++) {
        if (c->layer_attention[l] != ATTENTION_MLA) continue;
        const LayerWeights *w = &m->layers[l];
        st = backend_download_f32(m->be, W, w->q_a_proj);
        if (st == STATUS_OK) st = backend_download_f32(m->be, b, w->q_a_bias);
        if (st == STATUS_OK) st = backend_download_f32(m->be, norm, w->q_a_norm);
        if (st != STATUS_OK) break;
        /* g / sqrt(eps) is the power of two 1/s the export scaled by: exact. */
        double factor = ldexp(1.0, (int)round(log2(norm[0] / sqrt(eps))));
        for (int64_t i = 0; i < Q * D; i++) W[i] = (float)((double)W[i] * factor);
        for (int64_t i = 0; i < Q; i++) b[i] = (float)((double)b[i] * factor);
        st = backend_upload_f32(m->be, n->layers[l].q_proj, W);
        if (st == STATUS_OK) st = backend_upload_f32(m->be, n->layers[l].q_bias, b);
    }
    free(W), free(b), free(g), free(norm), free(eye);
    if (st != STATUS_OK) {
        model_destroy(n);
        return st;
    }
    if (n) model_weights_changed(n);
    *out = n;
    return STATUS_OK;
}
