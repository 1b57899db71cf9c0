/* RoPE frequency tables on the host: inverse frequencies (plain, or with Llama 3's long-context
 * scaling) and the cos/sin tables the rope ops read, computed in float32 as HF transformers does. */
#pragma once

#include <stdint.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    ROPE_SCALING_NONE = 0,   /* rope_scaling absent (Qwen2, Mistral, Llama 2) */
    ROPE_SCALING_LLAMA3,     /* rope_type "llama3" (Llama 3.1 and later) */
} RopeScaling;

/* The config.json fields, kept as the doubles JSON gives; they are rounded to float32 where
 * PyTorch rounds them, when they meet a float32 tensor. */
typedef struct {
    double theta;                              /* rope_theta */
    RopeScaling scaling;
    /* ROPE_SCALING_LLAMA3 only */
    double factor;                             /* >= 1 */
    double low_freq_factor;                    /* > 0 */
    double high_freq_factor;                   /* > low_freq_factor */
    int64_t original_max_position_embeddings;  /* > 0 */
} RopeConfig;

/* inv_freq[i] for i < head_dim / 2: 1 / theta^(2i / head_dim), then the configured scaling.
 * head_dim must be even and positive. */
Status rope_inv_freq(const RopeConfig *cfg, int head_dim, float *inv_freq);

/* cos[p, i] = cos(p * inv_freq[i]), sin likewise, for p < max_pos and i < pairs; the angle is
 * rounded to float32 first, as HF's float32 product of positions and frequencies is. */
Status rope_tables(const float *inv_freq, int pairs, int max_pos, float *cos, float *sin);

#ifdef __cplusplus
}
#endif
