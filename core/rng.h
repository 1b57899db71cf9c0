/* Counter-based random numbers (Philox4x32-10): the value at index i depends only on (seed,
 * stream, i), so initialisation and shuffling give the same bits whatever the thread count. */
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Four 32-bit random words for the counter (stream, index) under key seed. */
void philox4x32(uint64_t seed, uint64_t stream, uint64_t index, uint32_t out[4]);

/* Uniform in [0, 1), 24 random bits. */
float rng_uniform(uint64_t seed, uint64_t stream, uint64_t index);
/* Standard normal (Box-Muller on one Philox block). */
float rng_normal(uint64_t seed, uint64_t stream, uint64_t index);
/* Uniform integer in [0, n), n > 0 (64-bit multiply-shift, bias below 2^-32). */
uint64_t rng_below(uint64_t seed, uint64_t stream, uint64_t index, uint64_t n);

/* x[i] = mean + std * normal(seed, stream, i), for i < n; parallel and thread-count independent. */
void rng_fill_normal(float *x, int64_t n, uint64_t seed, uint64_t stream, float mean, float std);
/* x[i] = lo + (hi - lo) * uniform(seed, stream, i). */
void rng_fill_uniform(float *x, int64_t n, uint64_t seed, uint64_t stream, float lo, float hi);

#ifdef __cplusplus
}
#endif
