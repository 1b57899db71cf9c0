/* Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): a keyed
 * bijection of a 128-bit counter, so any element can be generated independently of the others. */
#include "rng.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

static inline void mulhilo32(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo) {
    uint64_t p = (uint64_t)a * b;
    *hi = (uint32_t)(p >> 32);
    *lo = (uint32_t)p;
}

void philox4x32(uint64_t seed, uint64_t stream, uint64_t index, uint32_t out[4]) {
    uint32_t c0 = (uint32_t)index, c1 = (uint32_t)(index >> 32);
    uint32_t c2 = (uint32_t)stream, c3 = (uint32_t)(stream >> 32);
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int round = 0; round < 10; round++) {
        uint32_t hi0, lo0, hi1, lo1;
        mulhilo32(PHILOX_M0, c0, &hi0, &lo0);
        mulhilo32(PHILOX_M1, c2, &hi1, &lo1);
        uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

float rng_uniform(uint64_t seed, uint64_t stream, uint64_t index) {
    uint32_t r[4];
    philox4x32(seed, stream, index, r);
    return (float)(r[0] >> 8) * (1.0f / 16777216.0f);
}

float rng_normal(uint64_t seed, uint64_t stream, uint64_t index) {
    uint32_t r[4];
    philox4x32(seed, stream, index, r);
    /* u1 in (0, 1], so log never sees 0; computed in double so libm differences stay below f32. */
    double u1 = ((double)(r[0] >> 8) + 1.0) * (1.0 / 16777216.0);
    double u2 = (double)(r[1] >> 8) * (1.0 / 16777216.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

uint64_t rng_below(uint64_t seed, uint64_t stream, uint64_t index, uint64_t n) {
    uint32_t r[4];
    philox4x32(seed, stream, index, r);
    uint64_t x = ((uint64_t)r[0] << 32) | r[1];
    return (uint64_t)(((unsigned __int128)x * n) >> 64);
}

void rng_fill_normal(float *x, int64_t n, uint64_t seed, uint64_t stream, float mean, float std) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) x[i] = mean + std * rng_normal(seed, stream, (uint64_t)i);
}

void rng_fill_uniform(float *x, int64_t n, uint64_t seed, uint64_t stream, float lo, float hi) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * rng_uniform(seed, stream, (uint64_t)i);
}
