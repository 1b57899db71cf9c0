/* 16-bit floats on the host: bfloat16 and IEEE half <-> float32, bit-exact and round-to-nearest-even,
 * shared by the safetensors I/O, checkpoints and the host side of the CUDA backend. */
#pragma once

#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

static inline uint32_t half_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float half_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* bfloat16 is the top half of a float32, so widening is exact. */
static inline float bf16_to_f32(uint16_t h) { return half_bits_f32((uint32_t)h << 16); }

/* Round to nearest, ties to even. Overflow gives +-Inf. A NaN stays a NaN (made quiet): plain
 * truncation would turn a NaN whose payload sits in the low 16 bits into an Inf. */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u = half_f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x0040u);
    /* Adding 0x7FFF rounds halves down and everything above up; the extra 1 when the kept part is
     * odd turns the halfway case into round-up, so ties go to the even neighbour. */
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
    if (exp == 0x1F) return half_bits_f32(sign | 0x7F800000u | (mant << 13)); /* Inf, NaN */
    if (exp == 0) {
        if (mant == 0) return half_bits_f32(sign);
        /* A half subnormal is a float32 normal: shift the leading 1 up to the implicit bit. */
        uint32_t shift = 0;
        while (!(mant & 0x400u)) {
            mant <<= 1;
            shift++;
        }
        return half_bits_f32(sign | ((113u - shift) << 23) | ((mant & 0x3FFu) << 13));
    }
    return half_bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

/* Round to nearest, ties to even, into half's normals, subnormals (down to 2^-24) and Inf. */
static inline uint16_t f32_to_f16(float f) {
    uint32_t u = half_f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return (uint16_t)(sign | 0x7E00u | ((a >> 13) & 0x3FFu)); /* NaN, quiet */
    if (a >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); /* >= 65520 (65504 + half an ulp) */
    if (a < 0x38800000u) {                                  /* below 2^-14: subnormal or zero */
        uint32_t exp = a >> 23;
        if (exp < 102) return sign; /* below 2^-25, half the smallest subnormal: rounds to 0 */
        uint32_t mant = (a & 0x7FFFFFu) | 0x800000u;
        uint32_t shift = 126 - exp; /* value / 2^-24 = mant * 2^(exp - 126) */
        uint32_t kept = mant >> shift, rest = mant & ((1u << shift) - 1), halfway = 1u << (shift - 1);
        if (rest > halfway || (rest == halfway && (kept & 1u))) kept++;
        return (uint16_t)(sign | kept); /* kept == 0x400 is the smallest normal: still right */
    }
    uint32_t h = (a - 0x38000000u) >> 13; /* rebias the exponent 127 -> 15, keep 10 mantissa bits */
    uint32_t rest = a & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++; /* a carry into the exponent is right */
    return (uint16_t)(sign | h);
}

/* Whole arrays, OpenMP over large ones. The 16-bit side is untyped because it may sit at any byte
 * address (a tensor inside a safetensors file need not be aligned). */
void bf16_to_f32_array(float *dst, const void *src_bf16, int64_t n);
void f16_to_f32_array(float *dst, const void *src_f16, int64_t n);
void f32_to_bf16_array(void *dst_bf16, const float *src, int64_t n);
void f32_to_f16_array(void *dst_f16, const float *src, int64_t n);

#ifdef __cplusplus
}
#endif
