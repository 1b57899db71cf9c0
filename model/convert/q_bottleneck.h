/* The query bottleneck of one MLA layer (q_lora_rank > 0, no q norm), q = B A x, fitted to the
 * converted query rows under the error the attention scores see. */
#pragma once

#include <stdint.h>

#include "core/status.h"
#include "model/convert/convert_layer.h"

/* s: the converted layer (s->q [H (dn + dr), D], and the keys every head reads: its no-RoPE rows
 * up_k,h latent and the rope key, all over the input of width s->D, a bias column included when
 * biased). Ca [D, D]: the second moment of the layer's calibration input, as that input.
 * A [k, D], B [H (dn + dr), k] minimise the expected score error
 *     sum over heads h of E[(dq_h . k_h)^2] = tr(dW_h Ca dW_h^T Ck_h),  dW = W - B A,
 * Ck_h = Wk_h Ca Wk_h^T the second moment of the keys head h reads. Channels beyond the rank of the
 * problem get random rows of A (scaled like the others) and zero columns of B: no change to q, and
 * gradients can still grow them. */
Status q_bottleneck_activations(const MlaWeights *s, const double *Ca, int64_t k, uint64_t seed, float *A, float *B);
