/* Attention of one new token over the tokens already cached: the one op decoding needs that the
 * training op table lacks (its attention is causal over a whole sequence of queries). */
#pragma once

#include "core/backend.h"

/* One query token against the first n cached tokens, GQA and absorbed MLA alike:
 *   q        [H, Dk + Ds]   the token's per-head query
 *   k        [n, Hk, Dk]    cached keys; query head h reads kv head g(h) = h / (H / Hk)
 *   k_shared [n, Ds]        optional key part shared by every head (MLA's rope key)
 *   v        [n, Hk, Dv]
 *   out      [H, Dv]
 * out[h] = sum_j softmax_j(scale * q[h] . [k[j, g(h)] ; k_shared[j]]) v[j, g(h)].
 * Absorbed MLA passes the latent as both k and v (Hk = 1) and the rope key as k_shared. On the CPU
 * the result does not depend on the thread count. */
Status decode_attention(Backend *be, Tensor out, Tensor q, Tensor k, Tensor k_shared, Tensor v, float scale);

/* The CPU implementation (f32). */
Status cpu_decode_attention(Backend *be, Tensor out, Tensor q, Tensor k, Tensor k_shared, Tensor v, float scale);
