/* WMMA emulated per thread: each thread holds (and computes) the whole 16x16 tile. */
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <type_traits>
namespace nvcuda { namespace wmma {
struct row_major {}; struct col_major {}; struct matrix_a {}; struct matrix_b {}; struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };
template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment { T x[256]; };
/* The hardware's rules for load/store_matrix_sync: a 256-bit aligned pointer and a leading
 * dimension of a multiple of 16 bytes (8 bf16 or 4 floats); a kernel that breaks them is stopped. */
inline void emu_wmma_check(const void *p, unsigned ld, size_t elem) {
    if ((uintptr_t)p % 32 != 0 || (ld * elem) % 16 != 0) {
        fprintf(stderr, "emu wmma: pointer %p or leading dimension %u breaks the 32-byte/16-byte alignment rule\n",
                p, ld);
        abort();
    }
}
template <typename Use, typename T, typename L>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, L> &f, const T *p, unsigned ld) {
    emu_wmma_check(p, ld, sizeof(T));
    for (int r = 0; r < 16; r++) for (int c = 0; c < 16; c++)
        f.x[r * 16 + c] = std::is_same<L, col_major>::value ? p[r + (size_t)c * ld] : p[(size_t)r * ld + c];
}
/* Warp-collective on the hardware: every lane reads before any lane stores back. Fibers run one at
 * a time, so the emulation waits for all of them around the read. */
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const float *p, unsigned ld, layout_t l) {
    emu_wmma_check(p, ld, sizeof(float));
    emu_sync();
    for (int r = 0; r < 16; r++) for (int c = 0; c < 16; c++)
        f.x[r * 16 + c] = l == mem_col_major ? p[r + (size_t)c * ld] : p[(size_t)r * ld + c];
    emu_sync();
}
inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f, unsigned ld, layout_t l) {
    emu_wmma_check(p, ld, sizeof(float));
    for (int r = 0; r < 16; r++) for (int c = 0; c < 16; c++)
        (l == mem_col_major ? p[r + (size_t)c * ld] : p[(size_t)r * ld + c]) = f.x[r * 16 + c];
}
inline void fill_fragment(fragment<accumulator, 16, 16, 16, float> &f, float v) { for (int i = 0; i < 256; i++) f.x[i] = v; }
template <typename LA, typename LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float> &d, const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA> &a,
              const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB> &b, const fragment<accumulator, 16, 16, 16, float> &c) {
    float out[256];
    for (int r = 0; r < 16; r++) for (int n = 0; n < 16; n++) {
        float s = c.x[r * 16 + n];
        for (int k = 0; k < 16; k++) s += __bfloat162float(a.x[r * 16 + k]) * __bfloat162float(b.x[k * 16 + n]);
        out[r * 16 + n] = s;
    }
    for (int i = 0; i < 256; i++) d.x[i] = out[i];
}
} }
