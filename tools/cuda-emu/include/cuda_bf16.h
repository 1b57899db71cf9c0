/* bfloat16 for the CPU emulation: float32 widening and round-to-nearest-even narrowing. */
#pragma once
#include <stdint.h>
#include <string.h>
struct __nv_bfloat16 { uint16_t x; };
inline float __bfloat162float(__nv_bfloat16 h) { uint32_t u = (uint32_t)h.x << 16; float f; memcpy(&f, &u, 4); return f; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    __nv_bfloat16 h;
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) { h.x = (uint16_t)((u >> 16) | 0x40); return h; }
    u += 0x7FFFu + ((u >> 16) & 1u);
    h.x = (uint16_t)(u >> 16);
    return h;
}
