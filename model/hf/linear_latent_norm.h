/* The latent RMSNorm DeepSeek-V2's loaders always apply (kv_a_layernorm), written for a student
 * trained without it: a norm kept in its linear regime, so the exported model is the trained one. */
#pragma once

#include "model/model.h"

/* RMSNorm(s c; g, eps) = g s c / sqrt(s^2 mean(c^2) + eps) is g s c / sqrt(eps) to a relative
 * LINEAR_NORM_TOLERANCE when s^2 mean(c^2) <= 2 tol eps; with g = sqrt(eps) / s it is c. */
#define LINEAR_NORM_TOLERANCE 1e-6

/* A copy of student m (no latent norm) with kv_a_layernorm added in its linear regime: per MLA layer,
 * W_dkv scaled by s and the norm's weight sqrt(eps)/s, s bounded from the weights alone (every
 * input of the layer: |a| <= sqrt(D) max|input_layernorm|), so no data is needed and no input
 * leaves the regime. */
Status model_with_linear_latent_norm(const Model *m, Model **out);

/* The reverse, for a student read back from such an export: when every MLA layer's norm is provably
 * linear to LINEAR_NORM_TOLERANCE, *out is a copy without the norm (its weight folded into W_dkv),
 * which trains as the student did; else *out = NULL. */
Status model_fold_linear_latent_norm(const Model *m, Model **out);
