/* An export every DeepSeek-V2 loader computes alike: rms_norm_eps written as 1e-6 (the epsilon HF
 * transformers gives the latent norms whatever the config says) and the residual stream rescaled so
 * that the decoder's own norms compute what they did with the trained epsilon. */
#pragma once

#include "model/model.h"

/* The rms_norm_eps an export writes: HF transformers builds kv_a_layernorm and q_a_layernorm with
 * this epsilon, vLLM and SGLang with rms_norm_eps, so only this value means one model to all. */
#define EXPORT_RMS_NORM_EPS 1e-6

/* RMSNorm(s x, s^2 eps) = RMSNorm(x, eps): with s = sqrt(EXPORT_RMS_NORM_EPS / eps), a copy of m with
 * the embedding, every o_proj and down_proj (all that write to the residual stream) scaled by s,
 * rms_norm_eps = EXPORT_RMS_NORM_EPS and rms_norm_eps_trained = eps; a tied head reads the scaled
 * embedding, so the final norm's weight is divided by s. *out = NULL when eps is already
 * EXPORT_RMS_NORM_EPS. */
Status model_with_export_eps(const Model *m, Model **out);

/* The reverse for a model read from such an export (cfg.rms_norm_eps_trained > 0): a copy with the
 * trained epsilon and the residual stream unscaled; *out = NULL when there is nothing to undo. */
Status model_without_export_eps(const Model *m, Model **out);
