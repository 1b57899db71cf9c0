/* RoPE frequency tables, operation for operation in float32 as HF transformers computes them
 * (_compute_default_rope_parameters, _compute_llama3_parameters, LlamaRotaryEmbedding). */
#include "rope.h"

#include <math.h>

/* Python's math.pi (M_PI is outside ISO C). */
static const double ROPE_PI = 3.141592653589793;

/* Llama 3 scaling: long wavelengths divided by factor, short ones kept, the band between blended.
 * PyTorch evaluates `c / t` as t.reciprocal() * c, so the divisions by a tensor below are written
 * that way; the Python scalars are rounded to float32 as PyTorch does when they meet the tensor. */
static void rope_scale_llama3(const RopeConfig *cfg, int pairs, float *inv_freq) {
    const float two_pi = (float)(2.0 * ROPE_PI);
    const float factor = (float)cfg->factor;
    const float low = (float)cfg->low_freq_factor;
    const float old_ctx = (float)cfg->original_max_position_embeddings;
    const double old_ctx_f64 = (double)cfg->original_max_position_embeddings;
    const float low_freq_wavelen = (float)(old_ctx_f64 / cfg->low_freq_factor);
    const float high_freq_wavelen = (float)(old_ctx_f64 / cfg->high_freq_factor);
    const float band = (float)(cfg->high_freq_factor - cfg->low_freq_factor);
    for (int i = 0; i < pairs; i++) {
        float f = inv_freq[i];
        float wavelen = (1.0f / f) * two_pi;
        float f_llama = wavelen > low_freq_wavelen ? f / factor : f;
        float smooth = ((1.0f / wavelen) * old_ctx - low) / band;
        float smoothed = (1.0f - smooth) * f_llama / factor + smooth * f_llama;
        int medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
        inv_freq[i] = medium ? smoothed : f_llama;
    }
}

Status rope_inv_freq(const RopeConfig *cfg, int head_dim, float *inv_freq) {
    if (head_dim <= 0 || head_dim % 2 != 0)
        return errorf("rope: head_dim must be even and positive, got %d", head_dim);
    if (!(cfg->theta > 0) || !isfinite(cfg->theta))
        return errorf("rope: rope_theta must be positive and finite, got %g", cfg->theta);
    switch (cfg->scaling) {
    case ROPE_SCALING_NONE: break;
    case ROPE_SCALING_LLAMA3:
        if (!(cfg->factor >= 1) || !isfinite(cfg->factor))
            return errorf("rope: llama3 scaling factor must be >= 1, got %g", cfg->factor);
        if (!(cfg->low_freq_factor > 0) || !isfinite(cfg->low_freq_factor))
            return errorf("rope: llama3 low_freq_factor must be positive, got %g", cfg->low_freq_factor);
        if (!(cfg->high_freq_factor > cfg->low_freq_factor) || !isfinite(cfg->high_freq_factor))
            return errorf("rope: llama3 high_freq_factor (%g) must be greater than low_freq_factor (%g)",
                          cfg->high_freq_factor, cfg->low_freq_factor);
        if (cfg->original_max_position_embeddings <= 0)
            return errorf("rope: llama3 original_max_position_embeddings must be positive, got %lld",
                          (long long)cfg->original_max_position_embeddings);
        break;
    default: return errorf("rope: unknown scaling type %d", (int)cfg->scaling);
    }

    const float theta = (float)cfg->theta;
    int pairs = head_dim / 2;
    for (int i = 0; i < pairs; i++) inv_freq[i] = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
    if (cfg->scaling == ROPE_SCALING_LLAMA3) rope_scale_llama3(cfg, pairs, inv_freq);
    return STATUS_OK;
}

Status rope_tables(const float *inv_freq, int pairs, int max_pos, float *cos, float *sin) {
    if (pairs < 0) return errorf("rope_tables: pairs must be >= 0, got %d", pairs);
    if (max_pos <= 0) return errorf("rope_tables: max_pos must be positive, got %d", max_pos);
#pragma omp parallel for schedule(static)
    for (int p = 0; p < max_pos; p++) {
        for (int i = 0; i < pairs; i++) {
            float angle = (float)p * inv_freq[i];
            cos[(int64_t)p * pairs + i] = cosf(angle);
            sin[(int64_t)p * pairs + i] = sinf(angle);
        }
    }
    return STATUS_OK;
}
