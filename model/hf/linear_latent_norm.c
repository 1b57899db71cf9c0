/* Adding a linear-regime kv_a_layernorm to a student for export, and folding it back on import. */
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

/* The largest mean(c^2) any input can give the layer's latent c = W a: |a|^2 <= D max g^2 (g the
 * input norm's weight, since RMSNorm's output has |x| <= sqrt(D)), |W a|^2 <= |W|_F^2 |a|^2. */
static double latent_bound(const float *W, int64_t r, int64_t D, const float *g) {
    double fro = 0, gmax = 0;
    for (int64_t i = 0; i < r * D; i++) fro += (double)W[i] * W[i];
    for (int64_t d = 0; d < D; d++) gmax = fmax(gmax, fabs((double)g[d]));
    return fro * (double)D * gmax * gmax / (double)r;
}

typedef struct {
    float *W, *g, *norm;
} LayerHost;

static Status layer_host(const Model *m, const Model *with_norm, int l, LayerHost *h) {
    Backend *be = m->be;
    int64_t r = m->cfg.mla.kv_lora_rank, D = m->cfg.hidden_size;
    h->W = malloc((size_t)(r * D) * sizeof(float));
    h->g = malloc((size_t)D * sizeof(float));
    h->norm = malloc((size_t)r * sizeof(float));
    if (!h->W || !h->g || !h->norm) return errorf("latent norm: out of memory");
    TRY(backend_download_f32(be, h->W, m->layers[l].kv_a_latent));
    TRY(backend_download_f32(be, h->g, m->layers[l].input_norm));
    if (with_norm) TRY(backend_download_f32(be, h->norm, with_norm->layers[l].kv_a_norm));
    return STATUS_OK;
}

static void layer_host_free(LayerHost *h) {
    free(h->W);
    free(h->g);
    free(h->norm);
}

Status model_with_linear_latent_norm(const Model *m, Model **out) {
    *out = NULL;
    if (m->cfg.mla.latent_norm) return errorf("latent norm: the student already has one");
    ModelConfig cfg = m->cfg;
    cfg.mla.latent_norm = 1;
    Model *n = NULL;
    TRY(model_create_as(&n, m->be, &cfg, m->max_seq, m->weight_dtype));
    Status st = copy_params(m, n);
    if (st == STATUS_OK) st = copy_rope(m, n);
    int64_t r = cfg.mla.kv_lora_rank, D = cfg.hidden_size;
    const double eps = MLA_LATENT_NORM_EPS;
    for (int l = 0; st == STATUS_OK && l < cfg.num_hidden_layers; l++) {
        if (cfg.layer_attention[l] != ATTENTION_MLA) continue;
        LayerHost h = {0};
        st = layer_host(m, NULL, l, &h);
        if (st == STATUS_OK) {
            double bound = latent_bound(h.W, r, D, h.g);
            /* A power of two, so scaling and folding back are exact in any float format. */
            double s = bound > 0 ? sqrt(2 * LINEAR_NORM_TOLERANCE * eps / bound) : 1.0;
            s = s >= 1 ? 1.0 : ldexp(1.0, (int)floor(log2(s)));
            for (int64_t i = 0; i < r * D; i++) h.W[i] = (float)(s * h.W[i]);
            for (int64_t i = 0; i < r; i++) h.norm[i] = (float)(sqrt(eps) / s);
            st = backend_upload_f32(m->be, n->layers[l].kv_a_latent, h.W);
            if (st == STATUS_OK) st = backend_upload_f32(m->be, n->layers[l].kv_a_norm, h.norm);
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

Status model_fold_linear_latent_norm(const Model *m, Model **out) {
    *out = NULL;
    const ModelConfig *c = &m->cfg;
    if (!c->mla.latent_norm || model_config_mla_layers(c) == 0) return STATUS_OK;
    int64_t r = c->mla.kv_lora_rank, D = c->hidden_size;
    const double eps = MLA_LATENT_NORM_EPS;
    /* Linear only if every layer is: checked before anything is built. A factor 100 over the export's
     * own tolerance leaves room for the rounding of a bf16 export. */
    for (int l = 0; l < c->num_hidden_layers; l++) {
        if (c->layer_attention[l] != ATTENTION_MLA) continue;
        LayerHost h = {0};
        Status st = layer_host(m, NULL, l, &h);
        int linear = st == STATUS_OK && latent_bound(h.W, r, D, h.g) <= 2 * 100 * LINEAR_NORM_TOLERANCE * eps;
        layer_host_free(&h);
        TRY(st);
        if (!linear) return STATUS_OK;
    }
    ModelConfig cfg = *c;
    cfg.mla.latent_norm = 0;
    Model *n = NULL;
    TRY(model_create_as(&n, m->be, &cfg, m->max_seq, m->weight_dtype));
    Status st = copy_params(m, n);
    if (st == STATUS_OK) st = copy_rope(m, n);
    for (int l = 0; st == STATUS_OK && l < c->num_hidden_layers; l++) {
        if (c->layer_attention[l] != ATTENTION_MLA) continue;
        LayerHost h = {0};
        st = layer_host(m, m, l, &h);
        /* g s c / sqrt(eps) = c': row i of W_dkv times g_i / sqrt(eps). An export of ours wrote one
         * g = sqrt(eps)/s for every channel, s a power of two: then the factor is exactly 1/s, which
         * g's own rounding (bf16: 2^-9) would otherwise blur. */
        int shared = 1;
        double e = st == STATUS_OK ? round(log2(fabs(h.norm[0] / sqrt(eps)))) : 0;
        for (int64_t i = 0; st == STATUS_OK && i < r; i++) {
            double factor = h.norm[i] / sqrt(eps);
            shared &= factor > 0 && fabs(factor / ldexp(1.0, (int)e) - 1) < 1e-2;
        }
        for (int64_t i = 0; st == STATUS_OK && i < r; i++) {
            double factor = shared ? ldexp(1.0, (int)e) : h.norm[i] / sqrt(eps);
            for (int64_t d = 0; d < D; d++) h.W[i * D + d] = (float)((double)h.W[i * D + d] * factor);
        }
        if (st == STATUS_OK) st = backend_upload_f32(m->be, n->layers[l].kv_a_latent, h.W);
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
