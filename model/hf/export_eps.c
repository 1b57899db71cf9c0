/* Rescaling the residual stream so that an export's rms_norm_eps can be 1e-6 (export_eps.h), and
 * undoing it on import. Each copy computes the same function as its source to float32 rounding. */
#include "model/hf/export_eps.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Multiplies a parameter of dst (already holding src's values) by factor, in float64. */
static Status scale_tensor(Backend *be, Tensor t, double factor) {
    int64_t n = tensor_numel(t);
    float *host = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!host) return errorf("residual rescale: out of memory (%lld values)", (long long)n);
    Status st = backend_download_f32(be, host, t);
    for (int64_t i = 0; st == STATUS_OK && i < n; i++) host[i] = (float)((double)host[i] * factor);
    if (st == STATUS_OK) st = backend_upload_f32(be, t, host);
    free(host);
    return st;
}

/* A copy of m under cfg (same parameters, same rope), every tensor that writes to the residual
 * stream scaled by s and a tied head's final norm by 1/s. */
static Status rescaled_copy(const Model *m, const ModelConfig *cfg, double s, Model **out) {
    *out = NULL;
    Backend *be = m->be;
    Model *n = NULL;
    TRY(model_create_as(&n, be, cfg, m->max_seq, m->weight_dtype));
    Status st = STATUS_OK;
    for (int i = 0; st == STATUS_OK && i < n->n_params; i++) {
        Param *p = &n->params[i];
        Param *q = model_find_param((Model *)m, p->name);
        if (!q || tensor_numel(*q->value) != tensor_numel(*p->value)) {
            st = errorf("residual rescale: parameter %s has no counterpart", p->name);
            break;
        }
        int64_t k = tensor_numel(*p->value);
        float *host = malloc((size_t)(k > 0 ? k : 1) * sizeof(float));
        st = host ? backend_download_f32(be, host, *q->value) : errorf("residual rescale: out of memory");
        if (st == STATUS_OK) st = backend_upload_f32(be, *p->value, host);
        free(host);
    }
    int64_t pairs = cfg->mla.qk_rope_head_dim / 2;
    for (int l = 0; st == STATUS_OK && l < cfg->num_hidden_layers; l++)
        if (cfg->layer_attention[l] == ATTENTION_MLA) st = model_set_mla_rope(n, l, m->mla_inv_freq + l * pairs);
    if (st == STATUS_OK) st = scale_tensor(be, n->embed, s);
    for (int l = 0; st == STATUS_OK && l < cfg->num_hidden_layers; l++) {
        st = scale_tensor(be, n->layers[l].o_proj, s);
        if (st == STATUS_OK) st = scale_tensor(be, n->layers[l].down_proj, s);
    }
    /* final_norm(s x) = final_norm(x): a separate head needs nothing more; a tied one reads the
     * scaled embedding, which the final norm's weight undoes. */
    if (st == STATUS_OK && cfg->tie_word_embeddings) st = scale_tensor(be, n->final_norm, 1.0 / s);
    if (st != STATUS_OK) {
        model_destroy(n);
        return st;
    }
    model_weights_changed(n);
    *out = n;
    return STATUS_OK;
}

Status model_with_export_eps(const Model *m, Model **out) {
    *out = NULL;
    double eps = m->cfg.rms_norm_eps;
    if (eps == EXPORT_RMS_NORM_EPS) return STATUS_OK;
    if (!(eps > 0) || !isfinite(eps)) return errorf("rms_norm_eps = %g cannot be rescaled", eps);
    ModelConfig cfg = m->cfg;
    cfg.rms_norm_eps = EXPORT_RMS_NORM_EPS;
    cfg.rms_norm_eps_trained = eps;
    return rescaled_copy(m, &cfg, sqrt(EXPORT_RMS_NORM_EPS / eps), out);
}

Status model_without_export_eps(const Model *m, Model **out) {
    *out = NULL;
    double trained = m->cfg.rms_norm_eps_trained;
    if (trained == 0) return STATUS_OK;
    if (!(trained > 0) || !isfinite(trained))
        return errorf("mlatrain_rms_norm_eps = %g must be a positive epsilon", trained);
    ModelConfig cfg = m->cfg;
    cfg.rms_norm_eps = trained;
    cfg.rms_norm_eps_trained = 0;
    return rescaled_copy(m, &cfg, sqrt(trained / m->cfg.rms_norm_eps), out);
}
