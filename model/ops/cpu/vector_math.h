/* Float32 math for the CPU ops' inner loops, written so that GCC vectorizes the loops that use it
 * with the project's plain flags (no -ffast-math): an exp, and a sum in fixed lanes. Each gives the
 * same bits for the same input wherever it runs, which is what thread-count independence needs. */
#pragma once

#include <stdint.h>

static inline int32_t cpu_float_bits(float f) {
    union { float f; int32_t i; } u = {.f = f};
    return u.i;
}

static inline float cpu_bits_float(int32_t i) {
    union { int32_t i; float f; } u = {.i = i};
    return u.f;
}

/* exp(x); libm's expf is a call per element, which keeps every loop around it scalar. Cody-Waite
 * reduction x = n ln2 + r, |r| <= ln2/2, Cephes' degree-6 polynomial for e^r (within 1 ulp of libm's
 * expf over the normal range), and 2^n assembled from exponent bits in two halves, so that results
 * near overflow and in the subnormal range come out right. exp(-inf) = 0, exp(inf) = inf, NaN stays
 * NaN. */
static inline float cpu_expf(float x) {
    /* Beyond [-104, 89] e^x is 0 or inf in float32; the clamp keeps n in the range the scale below
     * handles. It compares bit patterns as integers (ordered like the floats within each sign): a
     * float comparison would keep GCC from vectorizing under its default -ftrapping-math. */
    const int32_t xi = cpu_float_bits(x), lo = cpu_float_bits(-104.0f), hi = cpu_float_bits(89.0f);
    int32_t ci = xi > hi ? hi : xi;                       /* positive x above 89 */
    ci = (uint32_t)ci > (uint32_t)lo ? lo : ci;           /* negative x below -104 */
    const float xc = cpu_bits_float(ci);
    /* n = round(x / ln2): adding 1.5 * 2^23 rounds to an integer held in the low mantissa bits */
    const float shifter = 12582912.0f;
    const float t = xc * 1.44269504088896341f + shifter;
    const float n = t - shifter;
    const int32_t ni = cpu_float_bits(t) - cpu_float_bits(shifter);
    /* r = x - n ln2, ln2 split in two so that n * ln2_hi is exact */
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float y = p * (r * r) + r + 1.0f;
    /* 2^n as 2^(n/2) * 2^(n - n/2): both factors normal floats for n in [-150, 129] */
    const int32_t h = ni >> 1;
    const float e = y * cpu_bits_float((h + 127) << 23) * cpu_bits_float((ni - h + 127) << 23);
    /* NaN in, NaN out (the clamp made it 0 or inf), tested on the bits and blended with a mask, not
     * selected by ?:, which GCC turns into a branch around all of the arithmetic above */
    const int32_t nan_mask = -(int32_t)((xi & 0x7fffffff) > 0x7f800000);
    return cpu_bits_float((xi & nan_mask) | (cpu_float_bits(e) & ~nan_mask));
}

/* Lanes of cpu_sum: independent partial sums that fill a vector register or two. */
enum { CPU_SUM_LANES = 16 };

/* sum of x[0..n): lane l adds x[l], x[l + 16], ... in order, then the lanes are added in order and
 * the tail after them. The order depends on n alone; a single running sum would instead wait on
 * the latency of each add. */
static inline float cpu_sum(const float *x, int64_t n) {
    float lane[CPU_SUM_LANES] = {0};
    int64_t i = 0;
    for (; i + CPU_SUM_LANES <= n; i += CPU_SUM_LANES)
        for (int l = 0; l < CPU_SUM_LANES; l++) lane[l] += x[i + l];
    float s = 0;
    for (int l = 0; l < CPU_SUM_LANES; l++) s += lane[l];
    for (; i < n; i++) s += x[i];
    return s;
}

/* sum of x[i] * y[i] for i < n, in the lanes and order of cpu_sum. */
static inline float cpu_dot(const float *x, const float *y, int64_t n) {
    float lane[CPU_SUM_LANES] = {0};
    int64_t i = 0;
    for (; i + CPU_SUM_LANES <= n; i += CPU_SUM_LANES)
        for (int l = 0; l < CPU_SUM_LANES; l++) lane[l] += x[i + l] * y[i + l];
    float s = 0;
    for (int l = 0; l < CPU_SUM_LANES; l++) s += lane[l];
    for (; i < n; i++) s += x[i] * y[i];
    return s;
}
