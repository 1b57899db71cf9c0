/* Causal attention on the tensor cores for bf16 storage (attention_mma.cu): the same contract as
 * the tiled float32-math kernels of attention.cu, which remain for f32 storage and as the fallback. */
#pragma once

#include "core/backend.h"

typedef struct {
    int64_t B, T, H, Hk, Dk, Ds, Dv, group;   /* group = H / Hk; the query width is Dk + Ds */
} MmaAttentionShape;

/* Whether this device runs the tensor-core kernels for these head widths (compute capability 8.0
 * or newer, and the tiles' shared memory within the per-block limit). */
int attention_mma_supported(Backend *be, int64_t Dq, int64_t Dv);

/* out, q, k, k_shared (may be NULL), v: bf16; lse f32. */
Status attention_forward_mma(Backend *be, const MmaAttentionShape *s, void *out, float *lse, const void *q,
                             const void *k, const void *k_shared, const void *v, float scale);

/* dq, dk, dv (each may be NULL), dout, q, k, k_shared, v, out: bf16; lse f32. delta [B, H, T] and,
 * when dk_shared_partial is not NULL, the shared key's per-kv-head gradients [B, Hk, T, Ds] are f32
 * scratch the caller provides; the caller sums the partials over kv heads. */
Status attention_backward_mma(Backend *be, const MmaAttentionShape *s, void *dq, void *dk, float *dk_shared_partial,
                              void *dv, const void *dout, const void *out, const float *lse, const void *q,
                              const void *k, const void *k_shared, const void *v, float scale, float *delta);
