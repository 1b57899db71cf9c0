/* The instructions of model/ops/cuda/warp_mma.cuh for the CPU emulation, with the hardware's register
 * layouts: mma and ldmatrix are warp-collective (every lane posts its operands, the fibers meet, each
 * lane computes its own part from the warp's posts); cp.async copies wait in their thread's queue
 * until a wait_group performs them, so a tile read before its wait and barrier reads stale data. */
#pragma once
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <deque>
#include <vector>

#include "storage.cuh"

struct EmuWarpPost {
    uint32_t a[4], b[2];
    const bf16 *row;
};
inline EmuWarpPost *emu_warp_posts() {
    static EmuWarpPost posts[1024];
    return posts;
}
inline float emu_bf16_half(uint32_t v, int hi) {
    __nv_bfloat16 h;
    h.x = (uint16_t)(hi ? v >> 16 : v & 0xffffu);
    return __bfloat162float(h);
}
inline uint32_t emu_bf16_pair(bf16 lo, bf16 hi) { return (uint32_t)lo.x | (uint32_t)hi.x << 16; }
inline void emu_check_align(const void *p, const char *what) {
    if ((uintptr_t)p % 16 != 0) {
        fprintf(stderr, "emu %s: address %p is not 16-byte aligned\n", what, p);
        abort();
    }
}

inline void mma_bf16_16x8x16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    EmuWarpPost *p = emu_warp_posts();
    const int me = threadIdx.x, base = me / 32 * 32, lane = me % 32, g = lane / 4, t = lane % 4;
    memcpy(p[me].a, a, sizeof p[me].a);
    memcpy(p[me].b, b, sizeof p[me].b);
    emu_sync();
    /* A[r][c] is in lane (r % 8) * 4 + (c % 8) / 2, register (r >= 8) + 2 (c >= 8); B[k][n] in lane
     * n * 4 + (k % 8) / 2, register k >= 8; the odd index in the high half. */
    float out[4];
    for (int i = 0; i < 4; i++) {
        const int r = g + 8 * (i / 2), n = 2 * t + i % 2;
        float s = d[i];
        for (int k = 0; k < 16; k++) {
            const float av = emu_bf16_half(p[base + (r % 8) * 4 + (k % 8) / 2].a[(r >= 8) + 2 * (k >= 8)], k % 2);
            const float bv = emu_bf16_half(p[base + n * 4 + (k % 8) / 2].b[k >= 8], k % 2);
            s += av * bv;
        }
        out[i] = s;
    }
    emu_sync();
    for (int i = 0; i < 4; i++) d[i] = out[i];
}

inline void emu_ldmatrix(uint32_t (&r)[4], const bf16 *row, bool trans) {
    EmuWarpPost *p = emu_warp_posts();
    const int me = threadIdx.x, base = me / 32 * 32, lane = me % 32;
    emu_check_align(row, "ldmatrix");
    p[me].row = row;
    emu_sync();
    for (int j = 0; j < 4; j++) {
        const EmuWarpPost *m = &p[base + j * 8];
        if (!trans)
            r[j] = emu_bf16_pair(m[lane / 4].row[2 * (lane % 4)], m[lane / 4].row[2 * (lane % 4) + 1]);
        else
            r[j] = emu_bf16_pair(m[2 * (lane % 4)].row[lane / 4], m[2 * (lane % 4) + 1].row[lane / 4]);
    }
    emu_sync();
}
inline void ldmatrix_x4(uint32_t (&r)[4], const bf16 *row) { emu_ldmatrix(r, row, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const bf16 *row) { emu_ldmatrix(r, row, true); }

inline uint32_t pack_bf16x2(float lo, float hi) {
    return emu_bf16_pair(__float2bfloat16_rn(lo), __float2bfloat16_rn(hi));
}

struct EmuCopy {
    bf16 *dst;
    const bf16 *src;
};
struct EmuCopyQueue {
    std::vector<EmuCopy> open;
    std::deque<std::vector<EmuCopy>> groups;
};
inline EmuCopyQueue *emu_copy_queues() {
    static EmuCopyQueue queues[1024];
    return queues;
}
inline void cp_async_16(bf16 *dst, const bf16 *src) {
    emu_check_align(dst, "cp.async destination");
    emu_check_align(src, "cp.async source");
    emu_copy_queues()[threadIdx.x].open.push_back(EmuCopy{dst, src});
}
inline void cp_async_commit() {
    EmuCopyQueue &q = emu_copy_queues()[threadIdx.x];
    q.groups.push_back(q.open);
    q.open.clear();
}
template <int N> inline void cp_async_wait() {
    EmuCopyQueue &q = emu_copy_queues()[threadIdx.x];
    while ((int)q.groups.size() > N) {
        for (const EmuCopy &c : q.groups.front()) memcpy(c.dst, c.src, 16);
        q.groups.pop_front();
    }
}
