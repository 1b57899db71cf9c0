/* What the tensor-core attention's kernel files give each other (attention_mma.h is the op's face):
 * the backward's shared-memory need, and the backward for heads too wide for its register tiles. */
#pragma once

#include <stddef.h>

#include "attention_mma.h"

/* Shared memory per block of the backward kernels that attention_backward_mma launches for these widths. */
size_t attention_backward_mma_smem(int Dq, int Dv);

/* The backward for wide heads (attention_wmma_backward.cu: WMMA, tiles staged through shared memory),
 * given delta = rowsum(dO * O) [B, H, T]; the arguments as attention_backward_mma's. */
size_t attention_backward_wmma_smem(int Dq, int Dv);
Status attention_backward_wmma(Backend *be, const MmaAttentionShape *s, void *dq, void *dk, float *dk_shared_partial,
                               void *dv, const void *dout, const float *lse, const void *q, const void *k,
                               const void *k_shared, const void *v, float scale, const float *delta);
