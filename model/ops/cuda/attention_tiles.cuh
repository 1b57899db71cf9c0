/* The shared-memory tiles of the tensor-core attention kernels: 64 rows of a head's [T, width] slice
 * (or of a kv head's keys [k ; k_shared]), padded to a multiple of 16 columns with zeros, and zeros past T. */
#pragma once

#include <stdint.h>

#include "storage.cuh"
#include "warp_mma.cuh"

enum { MMA_ROWS = 64, MMA_WARPS = 4, MMA_THREADS = 128, MMA_ALIGN = 128 };

__host__ __device__ static inline int round16(int x) { return (x + 15) / 16 * 16; }

/* A tile's leading dimension: +8 bf16 (16 bytes) per row, so that the 8 rows one ldmatrix reads fall
 * in distinct banks (the padded width is a multiple of 16, so the row pitch is an odd number of
 * 16-byte chunks). */
__host__ __device__ static inline int tile_ld(int padded) { return padded + 8; }

/* Carves shared memory into MMA_ALIGN-aligned sections: returns the offset of `bytes` at *at. */
__host__ __device__ static inline size_t take(size_t *at, size_t bytes) {
    size_t here = *at;
    *at += (bytes + MMA_ALIGN - 1) / MMA_ALIGN * MMA_ALIGN;
    return here;
}

/* 16-byte copies (8 bf16) where the rows allow them: widths and strides multiples of 8 and the
 * source aligned; the tiles' own rows always are (ld and the padded widths are multiples of 8). */
__device__ static inline bool vector_rows(const bf16 *src, int64_t row_step, int width) {
    return width % 8 == 0 && row_step % 8 == 0 && ((uintptr_t)src & 15) == 0;
}

/* Rows [r0, r0 + 64) of a head's [T, width] slice (row r at src + r * row_step) into a bf16 tile
 * of `padded` columns, zeros past T and past width. */
__device__ static void load_tile(bf16 *dst, int ld, const bf16 *src, int64_t row_step, int64_t r0, int64_t T,
                                 int width, int padded) {
    if (vector_rows(src, row_step, width)) {
        const int chunks = padded / 8;
        for (int idx = threadIdx.x; idx < MMA_ROWS * chunks; idx += blockDim.x) {
            const int r = idx / chunks, c = idx % chunks * 8;
            uint4 val = make_uint4(0, 0, 0, 0);
            if (r0 + r < T && c < width) val = *(const uint4 *)(src + (r0 + r) * row_step + c);
            *(uint4 *)(dst + r * ld + c) = val;
        }
        return;
    }
    const bf16 zero = __float2bfloat16_rn(0.0f);
    for (int idx = threadIdx.x; idx < MMA_ROWS * padded; idx += blockDim.x) {
        int r = idx / padded, c = idx % padded;
        dst[r * ld + c] = r0 + r < T && c < width ? src[(r0 + r) * row_step + c] : zero;
    }
}

/* Keys [j0, j0 + 64) of one kv head as rows [k ; k_shared] of width Dk + Ds. */
__device__ static void load_key_tile(bf16 *dst, int ld, const bf16 *k, const bf16 *ks, int64_t Hk, int Dk, int Ds,
                                     int64_t j0, int64_t T, int padded) {
    if (vector_rows(k, Hk * Dk, Dk) && (!ks || vector_rows(ks, Ds, Ds))) {
        const int chunks = padded / 8;
        for (int idx = threadIdx.x; idx < MMA_ROWS * chunks; idx += blockDim.x) {
            const int r = idx / chunks, c = idx % chunks * 8;
            const int64_t j = j0 + r;
            uint4 val = make_uint4(0, 0, 0, 0);
            if (j < T && c < Dk) val = *(const uint4 *)(k + j * Hk * Dk + c);
            else if (j < T && c < Dk + Ds) val = *(const uint4 *)(ks + j * Ds + (c - Dk));
            *(uint4 *)(dst + r * ld + c) = val;
        }
        return;
    }
    const bf16 zero = __float2bfloat16_rn(0.0f);
    for (int idx = threadIdx.x; idx < MMA_ROWS * padded; idx += blockDim.x) {
        int r = idx / padded, c = idx % padded;
        int64_t j = j0 + r;
        bf16 val = zero;
        if (j < T && c < Dk) val = k[j * Hk * Dk + c];
        else if (j < T && c < Dk + Ds) val = ks[j * Ds + (c - Dk)];
        dst[r * ld + c] = val;
    }
}

/* load_tile with cp.async 16-byte copies where the rows allow them (completed by the caller's
 * wait_group and barrier; the zero padding is stored at once), else plain loads. */
__device__ static void load_tile_async(bf16 *dst, int ld, const bf16 *src, int64_t row_step, int64_t r0, int64_t T,
                                       int width, int padded) {
    if (!vector_rows(src, row_step, width)) {
        load_tile(dst, ld, src, row_step, r0, T, width, padded);
        return;
    }
    const int chunks = padded / 8;
    for (int idx = threadIdx.x; idx < MMA_ROWS * chunks; idx += blockDim.x) {
        const int r = idx / chunks, c = idx % chunks * 8;
        bf16 *d = dst + r * ld + c;
        if (r0 + r < T && c < width) cp_async_16(d, src + (r0 + r) * row_step + c);
        else *(uint4 *)d = make_uint4(0, 0, 0, 0);
    }
}

/* load_key_tile likewise. */
__device__ static void load_key_tile_async(bf16 *dst, int ld, const bf16 *k, const bf16 *ks, int64_t Hk, int Dk,
                                           int Ds, int64_t j0, int64_t T, int padded) {
    if (!(vector_rows(k, Hk * Dk, Dk) && (!ks || vector_rows(ks, Ds, Ds)))) {
        load_key_tile(dst, ld, k, ks, Hk, Dk, Ds, j0, T, padded);
        return;
    }
    const int chunks = padded / 8;
    for (int idx = threadIdx.x; idx < MMA_ROWS * chunks; idx += blockDim.x) {
        const int r = idx / chunks, c = idx % chunks * 8;
        const int64_t j = j0 + r;
        bf16 *d = dst + r * ld + c;
        if (j < T && c < Dk) cp_async_16(d, k + j * Hk * Dk + c);
        else if (j < T && c < Dk + Ds) cp_async_16(d, ks + j * Ds + (c - Dk));
        else *(uint4 *)d = make_uint4(0, 0, 0, 0);
    }
}

/* The warp-level products of the kernels, in warp_mma.cuh's register layouts. A warp's 16 x 8P
 * block of scores (or probabilities, or score gradients) is acc[P][4]: piece n holds columns
 * 8n..8n+7, lane l rows l / 4 and l / 4 + 8 and of each piece the columns 2(l % 4), 2(l % 4) + 1.
 * The kernels take a tile's 64 columns as one block (P = 8) or, where registers are short, as two
 * (P = 4); each piece's sums run in the same order either way, so the bits do not change. */

template <int P>
__device__ __forceinline__ void zero_pieces(float (&acc)[P][4]) {
#pragma unroll
    for (int n = 0; n < P; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
}

/* acc += A B^T: A the warp's 16 rows at a (ld lda), B the 8P rows at b (ld ldb), both over `width`
 * columns (a multiple of 16). ldmatrix addresses: for A, lane l gives row l % 8 (+ 8 for l / 8
 * odd) at column block l / 16 (a[0..3] = rows 0-7 / 8-15 at columns kk, then kk + 8); for B, row
 * l % 8 of piece n (n + 1 for l >= 16) at column block (l / 8) % 2. */
template <int P>
__device__ __forceinline__ void rows_times_rows_t(float (&acc)[P][4], const bf16 *a, int lda, const bf16 *b, int ldb,
                                                  int width, int lane) {
    static_assert(P % 2 == 0, "pieces go in pairs");
    for (int kk = 0; kk < width; kk += 16) {
        uint32_t fa[4];
        ldmatrix_x4(fa, a + ((lane % 8) + 8 * ((lane / 8) % 2)) * lda + kk + 8 * (lane / 16));
#pragma unroll
        for (int n = 0; n < P; n += 2) {
            uint32_t fb[4];
            ldmatrix_x4(fb, b + (n * 8 + (lane % 8) + 8 * (lane / 16)) * ldb + kk + 8 * ((lane / 8) % 2));
            const uint32_t b0[2] = {fb[0], fb[1]}, b1[2] = {fb[2], fb[3]};
            mma_bf16_16x8x16(acc[n], fa, b0);
            mma_bf16_16x8x16(acc[n + 1], fa, b1);
        }
    }
}

/* out += P B: P the warp's 16 x 8P block in f32 pieces, rounded to bf16 as A operands (two
 * adjacent 8-column pieces are one 16-wide A fragment, no shuffles); B the 8P rows at b (ld ldb)
 * read transposed by ldmatrix. out[N] covers columns up to 8N; pieces at or past `padded` (a
 * multiple of 16) are skipped. */
template <int N, int P>
__device__ __forceinline__ void pieces_times_rows(float (&out)[N][4], const float (&p)[P][4], const bf16 *b, int ldb,
                                                  int padded, int lane) {
    static_assert(P % 2 == 0, "pieces go in pairs");
#pragma unroll
    for (int kk = 0; kk < P / 2; kk++) {
        const uint32_t a[4] = {pack_bf16x2(p[2 * kk][0], p[2 * kk][1]), pack_bf16x2(p[2 * kk][2], p[2 * kk][3]),
                               pack_bf16x2(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                               pack_bf16x2(p[2 * kk + 1][2], p[2 * kk + 1][3])};
#pragma unroll
        for (int n = 0; n < N; n += 2) {
            if (n * 8 >= padded) break;
            /* transposed matrices: rows 16kk..+7 / +8..+15 at columns 8n, then at 8(n + 1) */
            uint32_t fb[4];
            ldmatrix_x4_trans(fb, b + (kk * 16 + (lane % 8) + 8 * ((lane / 8) % 2)) * ldb + n * 8 + 8 * (lane / 16));
            const uint32_t b0[2] = {fb[0], fb[1]}, b1[2] = {fb[2], fb[3]};
            mma_bf16_16x8x16(out[n], a, b0);
            mma_bf16_16x8x16(out[n + 1], a, b1);
        }
    }
}

/* Blocks of 64 rows along a sequence of T tokens (the grids' query or key tiles). */
__host__ __device__ static inline unsigned attention_row_tiles(int64_t T) {
    return (unsigned)((T + MMA_ROWS - 1) / MMA_ROWS);
}
