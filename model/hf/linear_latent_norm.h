/* Norms kept in their linear regime, so the exported model is the trained one: the latent RMSNorm
 * DeepSeek-V2's loaders always apply (kv_a_layernorm) for a student trained without it, likewise the
 * q bottleneck's (q_a_layernorm), and a q bottleneck for a q bias that DeepSeek-V2's q_proj cannot
 * carry (only q_a_proj has a bias). */
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

/* The same for the q bottleneck of a student trained without its norm (q_lora_rank > 0, q_norm 0):
 * q_a_proj (and its bias) scaled by s, q_a_layernorm's weight sqrt(eps)/s, s bounded from q_a_proj
 * and the input norm as above. */
Status model_with_linear_q_norm(const Model *m, Model **out);

/* Its reverse on import: when every MLA layer's q_a_layernorm is provably linear, *out is a copy with
 * q_norm 0 (the norm folded into q_a_proj); else *out = NULL. */
Status model_fold_linear_q_norm(const Model *m, Model **out);

/* A copy of student m (q_lora_rank 0, attention_bias) whose queries go through a q bottleneck of
 * width H*(dn+dr) that computes what q_proj did: q_a_proj = s W_q with bias s b_q, q_a_layernorm in
 * its linear regime (weight sqrt(eps)/s, s bounded as above), q_b_proj the identity. */
Status model_with_linear_q_bottleneck(const Model *m, Model **out);

/* The reverse on import: when every MLA layer's q_b_proj is the identity and its q_a_layernorm
 * provably linear, *out is a copy with q_lora_rank 0, q_proj and its bias folded from q_a_proj;
 * else *out = NULL. Only for attention_bias students (what the export above writes). */
Status model_fold_linear_q_bottleneck(const Model *m, Model **out);
