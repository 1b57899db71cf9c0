/* Array conversions between float32 and the 16-bit floats of core/half.h, for loading and saving
 * whole tensors; the per-element rounding is the inline scalar code. */
#include "half.h"

#include <string.h>

/* Below this many elements a parallel region costs more than it saves. */
enum { HALF_PARALLEL_MIN = 1 << 18 };

void bf16_to_f32_array(float *dst, const void *src_bf16, int64_t n) {
    const unsigned char *src = src_bf16;
#pragma omp parallel for schedule(static) if (n >= HALF_PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, 2);
        dst[i] = bf16_to_f32(h);
    }
}

void f16_to_f32_array(float *dst, const void *src_f16, int64_t n) {
    const unsigned char *src = src_f16;
#pragma omp parallel for schedule(static) if (n >= HALF_PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, 2);
        dst[i] = f16_to_f32(h);
    }
}

void f32_to_bf16_array(void *dst_bf16, const float *src, int64_t n) {
    unsigned char *dst = dst_bf16;
#pragma omp parallel for schedule(static) if (n >= HALF_PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) {
        uint16_t h = f32_to_bf16(src[i]);
        memcpy(dst + 2 * i, &h, 2);
    }
}

void f32_to_f16_array(void *dst_f16, const float *src, int64_t n) {
    unsigned char *dst = dst_f16;
#pragma omp parallel for schedule(static) if (n >= HALF_PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) {
        uint16_t h = f32_to_f16(src[i]);
        memcpy(dst + 2 * i, &h, 2);
    }
}
