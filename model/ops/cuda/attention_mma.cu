/* Causal attention on the tensor cores (bf16 operands, f32 accumulation), for GQA and MLA alike.
 * Forward, FlashAttention-2's way: 64 queries per block, 16 per warp, streaming over 64-key tiles
 * that cp.async brings in one tile ahead; scores, the online softmax and the P V accumulators stay
 * in registers (mma.sync m16n8k16), each query row held by the 4 lanes of a quad; the most loaded
 * causal query tiles are launched first. Backward without atomics (WMMA, tiles staged through
 * shared memory): one kernel per query tile forms dQ over the key tiles in order; one per key tile
 * of a kv head forms dK and dV over the group's heads and the query tiles in order; delta =
 * rowsum(dO * O) first. Head widths padded to 16 with zeros. */
#include <math.h>
#include <mma.h>
#include <stdint.h>

#include <type_traits>

#include "attention_mma.h"
#include "cuda_ops.h"
#include "cuda_state.h"
#include "storage.cuh"
#include "warp_mma.cuh"

using namespace nvcuda;

enum { MMA_ROWS = 64, MMA_WARPS = 4, MMA_THREADS = 128, MMA_ALIGN = 128 };

typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> Acc;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> ARow;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> BRow;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> BCol;

/* Padded widths, leading dimensions (elements; +8 bf16 / +4 f32 against bank conflicts, still
 * multiples of WMMA's 8 and 4) and the byte offsets of each kernel's shared-memory sections. */
typedef struct {
    int DQP, DVP;               /* Dq and Dv rounded up to 16 */
    int LDQ, LDV, LDP;          /* bf16 tiles: Q and K, V and dO, P and dS */
    int LDS, LDQF, LDVF;        /* f32 tiles of the backward: scores (and dP), dQ/dK, dV */
    size_t q, k, v, bytes;      /* forward: Q, and two buffers each of K and V (k + i * kv_step) */
    size_t kv_step;
    size_t bq, bdo, bk, bv, bf, bp, bds, bdq, bdk, bdv, bstats, dq_bytes, dkdv_bytes; /* backward */
} MmaLayout;

__host__ __device__ static inline int round16(int x) { return (x + 15) / 16 * 16; }
__host__ __device__ static inline size_t take(size_t *at, size_t bytes) {
    size_t here = *at;
    *at += (bytes + MMA_ALIGN - 1) / MMA_ALIGN * MMA_ALIGN;
    return here;
}

__host__ __device__ static MmaLayout mma_layout(int Dq, int Dv) {
    MmaLayout L;
    L.DQP = round16(Dq);
    L.DVP = round16(Dv);
    L.LDQ = L.DQP + 8;
    L.LDV = L.DVP + 8;
    L.LDP = MMA_ROWS + 8;
    L.LDS = MMA_ROWS + 4;
    L.LDQF = L.DQP + 4;
    L.LDVF = L.DVP + 4;
    const size_t R = MMA_ROWS, h = sizeof(bf16), f = sizeof(float);
    size_t at = 0;
    L.q = take(&at, R * L.LDQ * h);
    L.k = take(&at, R * L.LDQ * h);
    L.v = take(&at, R * L.LDV * h);
    L.kv_step = at - L.k;
    take(&at, L.kv_step);
    L.bytes = at;
    at = 0;
    L.bq = take(&at, R * L.LDQ * h);
    L.bdo = take(&at, R * L.LDV * h);
    L.bk = take(&at, R * L.LDQ * h);
    L.bv = take(&at, R * L.LDV * h);
    L.bf = take(&at, R * L.LDS * f);
    L.bp = take(&at, R * L.LDP * h);
    L.bstats = take(&at, 2 * R * f);
    size_t common = at;
    L.bdq = take(&at, R * L.LDQF * f);
    L.dq_bytes = at;
    at = common;
    L.bds = take(&at, R * L.LDP * h);
    L.bdk = take(&at, R * L.LDQF * f);
    L.bdv = take(&at, R * L.LDVF * f);
    L.dkdv_bytes = at;
    return L;
}

__device__ static inline float warp_sum(float x) {
    for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
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

/* The warp's 16 rows of A B^T into f32 (ld ldc): A [16 x K] row-major from a (ld lda), B's 64 rows
 * from b (ld ldb), K a multiple of 16. */
__device__ static void rows_times_rows_t(float *c, int ldc, const bf16 *a, int lda, const bf16 *b, int ldb, int K) {
    for (int n = 0; n < MMA_ROWS / 16; n++) {
        Acc acc;
        wmma::fill_fragment(acc, 0.0f);
        for (int kk = 0; kk < K; kk += 16) {
            ARow fa;
            BCol fb;
            wmma::load_matrix_sync(fa, a + kk, lda);
            wmma::load_matrix_sync(fb, b + n * 16 * ldb + kk, ldb);
            wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(c + n * 16, acc, ldc, wmma::mem_row_major);
    }
}

/* dst[16 x width] (f32, ld ldd) += A[16 x 64] B[64 x width]: A from a (ld lda), row-major, or
 * column-major when it is the transpose of a stored [64 x 16] tile; B row-major from b (ld ldb). */
template <typename ALayout>
__device__ static void accumulate_rows(float *dst, int ldd, const bf16 *a, int lda, const bf16 *b, int ldb,
                                       int width) {
    for (int n = 0; n < width / 16; n++) {
        Acc acc;
        wmma::load_matrix_sync(acc, dst + n * 16, ldd, wmma::mem_row_major);
        for (int kk = 0; kk < MMA_ROWS; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, ALayout> fa;
            BRow fb;
            const bf16 *ak = std::is_same<ALayout, wmma::row_major>::value ? a + kk : a + (size_t)kk * lda;
            wmma::load_matrix_sync(fa, ak, lda);
            wmma::load_matrix_sync(fb, b + kk * ldb + n * 16, ldb);
            wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(dst + n * 16, acc, ldd, wmma::mem_row_major);
    }
}

/* One 64-key tile of K (rows [k ; k_shared]) and V into shared memory: cp.async 16-byte copies
 * where the rows allow them (completed by the caller's wait and barrier), else plain loads. Zeros
 * past T and past the widths. */
__device__ static void load_kv_async(bf16 *sK, bf16 *sV, const MmaLayout &L, const bf16 *kg, const bf16 *ks,
                                     const bf16 *vg, int64_t Hk, int Dk, int Ds, int Dv, int64_t j0, int64_t T) {
    const uint4 zero = make_uint4(0, 0, 0, 0);
    if (vector_rows(kg, Hk * Dk, Dk) && (!ks || vector_rows(ks, Ds, Ds))) {
        const int chunks = L.DQP / 8;
        for (int idx = threadIdx.x; idx < MMA_ROWS * chunks; idx += blockDim.x) {
            const int r = idx / chunks, c = idx % chunks * 8;
            const int64_t j = j0 + r;
            bf16 *dst = sK + r * L.LDQ + c;
            if (j < T && c < Dk) cp_async_16(dst, kg + j * Hk * Dk + c);
            else if (j < T && c < Dk + Ds) cp_async_16(dst, ks + j * Ds + (c - Dk));
            else *(uint4 *)dst = zero;
        }
    } else {
        load_key_tile(sK, L.LDQ, kg, ks, Hk, Dk, Ds, j0, T, L.DQP);
    }
    if (vector_rows(vg, Hk * Dv, Dv)) {
        const int chunks = L.DVP / 8;
        for (int idx = threadIdx.x; idx < MMA_ROWS * chunks; idx += blockDim.x) {
            const int r = idx / chunks, c = idx % chunks * 8;
            const int64_t j = j0 + r;
            bf16 *dst = sV + r * L.LDV + c;
            if (j < T && c < Dv) cp_async_16(dst, vg + j * Hk * Dv + c);
            else *(uint4 *)dst = zero;
        }
    } else {
        load_tile(sV, L.LDV, vg, Hk * Dv, j0, T, Dv, L.DVP);
    }
}

/* The forward for value widths up to 8 * DV_TILES (a compile-time bound, so that the output
 * accumulators are registers; tiles past the padded width are skipped). Warp w owns query rows
 * [16w, 16w + 16) of the block's tile; lane l holds rows g = l / 4 and g + 8 of them, and of each
 * 8-key (or 8-column) piece the columns 2t, 2t + 1 with t = l % 4 (warp_mma.cuh's D layout). Scores
 * are kept in log2 units (scaled by log2 e) so that each exponential is one exp2. */
template <int DV_TILES>
__global__ void __launch_bounds__(MMA_THREADS)
    attention_forward_mma_kernel(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *ks, const bf16 *v,
                                 int64_t T, int64_t H, int64_t Hk, int Dk, int Ds, int Dv, int64_t group, float scale) {
    extern __shared__ __align__(MMA_ALIGN) unsigned char smem[];
    const int Dq = Dk + Ds;
    const MmaLayout L = mma_layout(Dq, Dv);
    bf16 *sQ = (bf16 *)(smem + L.q);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int64_t bh = blockIdx.x, b = bh / H, h = bh % H, hk = h / group;
    /* The last query tiles see the most keys: they go first, and the short ones fill in behind. */
    const int64_t i0 = (int64_t)(gridDim.y - 1 - blockIdx.y) * MMA_ROWS;
    const bf16 *kg = k + (b * T * Hk + hk) * Dk, *vg = v + (b * T * Hk + hk) * Dv;
    const bf16 *ksb = ks ? ks + b * T * Ds : NULL;
    const bf16 *qh = q + (b * T * H + h) * Dq;
    const float scale_log2 = scale * 1.4426950408889634f;

    /* Q, then the first K/V tile: one group of copies. */
    if (vector_rows(qh, H * Dq, Dq)) {
        const int chunks = L.DQP / 8;
        for (int idx = threadIdx.x; idx < MMA_ROWS * chunks; idx += blockDim.x) {
            const int r = idx / chunks, c = idx % chunks * 8;
            bf16 *dst = sQ + r * L.LDQ + c;
            if (i0 + r < T && c < Dq) cp_async_16(dst, qh + (i0 + r) * H * Dq + c);
            else *(uint4 *)dst = make_uint4(0, 0, 0, 0);
        }
    } else {
        load_tile(sQ, L.LDQ, qh, H * Dq, i0, T, Dq, L.DQP);
    }
    const int64_t kend = i0 + MMA_ROWS < T ? i0 + MMA_ROWS : T;
    const int n_tiles = (int)((kend + MMA_ROWS - 1) / MMA_ROWS);
    load_kv_async((bf16 *)(smem + L.k), (bf16 *)(smem + L.v), L, kg, ksb, vg, Hk, Dk, Ds, Dv, 0, T);
    cp_async_commit();

    float o[DV_TILES][4];
#pragma unroll
    for (int n = 0; n < DV_TILES; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    /* Running maximum (log2 units) and this lane's share of the running sum, rows g and g + 8. */
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
    const int64_t row0 = i0 + warp * 16 + g;

    for (int it = 0; it < n_tiles; it++) {
        const int64_t j0 = (int64_t)it * MMA_ROWS;
        /* Prefetch the next tile into the other buffer (last read two barriers ago). */
        if (it + 1 < n_tiles)
            load_kv_async((bf16 *)(smem + L.k + ((it + 1) & 1) * L.kv_step),
                          (bf16 *)(smem + L.v + ((it + 1) & 1) * L.kv_step), L, kg, ksb, vg, Hk, Dk, Ds, Dv,
                          j0 + MMA_ROWS, T);
        cp_async_commit();
        cp_async_wait<1>();   /* this thread's copies of tile `it` (and Q) are done ... */
        __syncthreads();      /* ... and everyone's */
        const bf16 *sK = (const bf16 *)(smem + L.k + (it & 1) * L.kv_step);
        const bf16 *sV = (const bf16 *)(smem + L.v + (it & 1) * L.kv_step);

        /* S = Q K^T for the warp's 16 rows and the tile's 64 keys: 8 pieces of 8 keys. ldmatrix
         * row addresses: lane l gives row l % 8 (+ 8 for l / 8 odd) and column block l / 16. */
        float s[8][4];
#pragma unroll
        for (int n = 0; n < 8; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
        for (int kk = 0; kk < L.DQP; kk += 16) {
            uint32_t a[4];
            /* matrices: rows 0-7 / 8-15 of the warp's Q, columns kk / kk + 8 -> a[0..3] */
            ldmatrix_x4(a, sQ + (warp * 16 + (lane % 8) + 8 * ((lane / 8) % 2)) * L.LDQ + kk + 8 * (lane / 16));
#pragma unroll
            for (int n = 0; n < 8; n += 2) {
                /* matrices: keys 8n..8n+7 at columns kk, kk + 8, then keys 8(n+1).. likewise */
                uint32_t kb[4];
                ldmatrix_x4(kb, sK + (n * 8 + (lane % 8) + 8 * (lane / 16)) * L.LDQ + kk + 8 * ((lane / 8) % 2));
                const uint32_t b0[2] = {kb[0], kb[1]}, b1[2] = {kb[2], kb[3]};
                mma_bf16_16x8x16(s[n], a, b0);
                mma_bf16_16x8x16(s[n + 1], a, b1);
            }
        }

        /* Scale, mask the causal diagonal (only the last tile reaches past the block's first
         * query), and the new row maxima over the quad. */
        float tile_max[2] = {-INFINITY, -INFINITY};
        const bool diagonal = j0 + MMA_ROWS > i0;
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int64_t gi = row0 + 8 * (e / 2), gj = j0 + n * 8 + 2 * t + e % 2;
                float x = s[n][e] * scale_log2;
                if (diagonal && gj > gi) x = -INFINITY;
                s[n][e] = x;
                tile_max[e / 2] = fmaxf(tile_max[e / 2], x);
            }
        float corr[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
            /* Key 0 is in every row's first tile, so the maximum is finite from then on. */
            const float m_new = fmaxf(m_run[r], tile_max[r]);
            corr[r] = exp2f(m_run[r] - m_new);
            m_run[r] = m_new;
            l_run[r] *= corr[r];
        }
#pragma unroll
        for (int n = 0; n < DV_TILES; n++) {
            o[n][0] *= corr[0];
            o[n][1] *= corr[0];
            o[n][2] *= corr[1];
            o[n][3] *= corr[1];
        }
        /* P = 2^(S - m); the sums take P in f32, P V takes it rounded to bf16. Two adjacent 8-key
         * pieces of P in the D layout are one 16-key A operand. */
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float p = exp2f(s[n][e] - m_run[e / 2]);
                s[n][e] = p;
                l_run[e / 2] += p;
            }
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            const uint32_t a[4] = {pack_bf16x2(s[2 * kk][0], s[2 * kk][1]), pack_bf16x2(s[2 * kk][2], s[2 * kk][3]),
                                   pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                   pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int n = 0; n < DV_TILES; n += 2) {
                if (n * 8 >= L.DVP) break;
                /* transposed matrices: keys 16kk..+7 / 16kk+8..+15 of columns 8n.. then 8(n+1).. */
                uint32_t vb[4];
                ldmatrix_x4_trans(vb, sV + (kk * 16 + (lane % 8) + 8 * ((lane / 8) % 2)) * L.LDV + n * 8 +
                                          8 * (lane / 16));
                const uint32_t b0[2] = {vb[0], vb[1]}, b1[2] = {vb[2], vb[3]};
                mma_bf16_16x8x16(o[n], a, b0);
                mma_bf16_16x8x16(o[n + 1], a, b1);
            }
        }
        __syncthreads();   /* every warp is done with this buffer before it is refilled */
    }
    cp_async_wait<0>();

#pragma unroll
    for (int r = 0; r < 2; r++) {
        l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 1);
        l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 2);
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int64_t gi = row0 + 8 * r;
        if (gi >= T) continue;
        const float inv = 1.0f / l_run[r];
        bf16 *dst = out + ((b * T + gi) * H + h) * Dv;
#pragma unroll
        for (int n = 0; n < DV_TILES; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int d = n * 8 + 2 * t + e;
                if (d < Dv) dst[d] = __float2bfloat16_rn(o[n][2 * r + e] * inv);
            }
        if (t == 0) lse[bh * T + gi] = m_run[r] * 0.6931471805599453f + logf(l_run[r]);
    }
}

/* delta[b, h, i] = sum_d dO[b, i, h, d] O[b, i, h, d]; one warp per row. */
__global__ void attention_delta_kernel(float *delta, const bf16 *dout, const bf16 *out, int64_t B, int64_t T,
                                       int64_t H, int Dv) {
    const int64_t rows = B * T * H, warps = (int64_t)gridDim.x * (blockDim.x / 32);
    const int lane = threadIdx.x % 32;
    for (int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; row < rows; row += warps) {
        const bf16 *a = dout + row * Dv, *o = out + row * Dv;
        float s = 0.0f;
        for (int d = lane; d < Dv; d += 32) s += __bfloat162float(a[d]) * __bfloat162float(o[d]);
        s = warp_sum(s);
        const int64_t h = row % H, bi = row / H, bb = bi / T, i = bi % T;
        if (lane == 0) delta[(bb * H + h) * T + i] = s;
    }
}

/* The warp's 16 query rows against one key tile: P (bf16, into sP) from the scores and lse, then
 * dS = scale P (dP - delta) (bf16, into sdS) with dP = dO V^T formed in sFw; zeros where masked. */
__device__ static void score_gradient_rows(bf16 *sP, bf16 *sdS, float *sFw, const bf16 *sQw, const bf16 *sdOw,
                                           const bf16 *sK, const bf16 *sV, const float *sLse, const float *sDelta,
                                           const MmaLayout &L, int warp, int lane, int64_t i0, int64_t j0, int64_t T,
                                           float scale) {
    rows_times_rows_t(sFw, L.LDS, sQw, L.LDQ, sK, L.LDQ, L.DQP);
    __syncwarp();
    for (int r = 0; r < 16; r++) {
        const int row = warp * 16 + r;
        const int64_t gi = i0 + row;
        for (int c = 0; c < 2; c++) {
            const int j = lane + 32 * c;
            const int64_t gj = j0 + j;
            const float p = gi < T && gj <= gi ? expf(sFw[r * L.LDS + j] * scale - sLse[row]) : 0.0f;
            sP[row * L.LDP + j] = __float2bfloat16_rn(p);
        }
    }
    __syncwarp();
    rows_times_rows_t(sFw, L.LDS, sdOw, L.LDV, sV, L.LDV, L.DVP);
    __syncwarp();
    for (int r = 0; r < 16; r++) {
        const int row = warp * 16 + r;
        for (int c = 0; c < 2; c++) {
            const int j = lane + 32 * c;
            const float p = __bfloat162float(sP[row * L.LDP + j]);
            sdS[row * L.LDP + j] = __float2bfloat16_rn(scale * p * (sFw[r * L.LDS + j] - sDelta[row]));
        }
    }
    __syncwarp();
}

__device__ static void load_row_stats(float *sLse, float *sDelta, const float *lse, const float *delta, int64_t bh,
                                      int64_t i0, int64_t T) {
    if (threadIdx.x < MMA_ROWS) {
        const int64_t gi = i0 + threadIdx.x;
        sLse[threadIdx.x] = gi < T ? lse[bh * T + gi] : 0.0f;
        sDelta[threadIdx.x] = gi < T ? delta[bh * T + gi] : 0.0f;
    }
}

__global__ void __launch_bounds__(MMA_THREADS)
    attention_backward_dq_mma_kernel(bf16 *dq, const bf16 *dout, const float *lse, const float *delta, const bf16 *q,
                                     const bf16 *k, const bf16 *ks, const bf16 *v, int64_t T, int64_t H, int64_t Hk,
                                     int Dk, int Ds, int Dv, int64_t group, float scale) {
    extern __shared__ __align__(MMA_ALIGN) unsigned char smem[];
    const int Dq = Dk + Ds;
    const MmaLayout L = mma_layout(Dq, Dv);
    bf16 *sQ = (bf16 *)(smem + L.bq), *sdO = (bf16 *)(smem + L.bdo), *sK = (bf16 *)(smem + L.bk);
    bf16 *sV = (bf16 *)(smem + L.bv), *sP = (bf16 *)(smem + L.bp);
    float *sF = (float *)(smem + L.bf), *sLse = (float *)(smem + L.bstats), *sDelta = sLse + MMA_ROWS;
    float *sdQ = (float *)(smem + L.bdq);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t bh = blockIdx.x, b = bh / H, h = bh % H, g = h / group;
    const int64_t i0 = (int64_t)blockIdx.y * MMA_ROWS;
    const bf16 *kg = k + (b * T * Hk + g) * Dk, *vg = v + (b * T * Hk + g) * Dv;
    const bf16 *ksb = ks ? ks + b * T * Ds : NULL;

    load_tile(sQ, L.LDQ, q + (b * T * H + h) * Dq, H * Dq, i0, T, Dq, L.DQP);
    load_tile(sdO, L.LDV, dout + (b * T * H + h) * Dv, H * Dv, i0, T, Dv, L.DVP);
    load_row_stats(sLse, sDelta, lse, delta, bh, i0, T);
    for (int idx = threadIdx.x; idx < MMA_ROWS * L.LDQF; idx += blockDim.x) sdQ[idx] = 0.0f;
    float *sFw = sF + warp * 16 * L.LDS;
    const int64_t kend = i0 + MMA_ROWS < T ? i0 + MMA_ROWS : T;
    for (int64_t j0 = 0; j0 < kend; j0 += MMA_ROWS) {
        __syncthreads();
        load_key_tile(sK, L.LDQ, kg, ksb, Hk, Dk, Ds, j0, T, L.DQP);
        load_tile(sV, L.LDV, vg, Hk * Dv, j0, T, Dv, L.DVP);
        __syncthreads();
        /* dS overwrites P in place: each element is read, then written, by the same lane */
        score_gradient_rows(sP, sP, sFw, sQ + warp * 16 * L.LDQ, sdO + warp * 16 * L.LDV, sK, sV, sLse, sDelta, L,
                            warp, lane, i0, j0, T, scale);
        /* dQ[rows] += dS K */
        accumulate_rows<wmma::row_major>(sdQ + warp * 16 * L.LDQF, L.LDQF, sP + warp * 16 * L.LDP, L.LDP, sK, L.LDQ,
                                         L.DQP);
        __syncwarp();
    }
    for (int r = 0; r < 16; r++) {
        const int row = warp * 16 + r;
        const int64_t gi = i0 + row;
        if (gi >= T) continue;
        for (int d = lane; d < Dq; d += 32)
            dq[((b * T + gi) * H + h) * Dq + d] = __float2bfloat16_rn(sdQ[row * L.LDQF + d]);
    }
}

__global__ void __launch_bounds__(MMA_THREADS)
    attention_backward_dkdv_mma_kernel(bf16 *dk, float *dks_partial, bf16 *dv, const bf16 *dout, const float *lse,
                                       const float *delta, const bf16 *q, const bf16 *k, const bf16 *ks,
                                       const bf16 *v, int64_t T, int64_t H, int64_t Hk, int Dk, int Ds, int Dv,
                                       int64_t group, float scale) {
    extern __shared__ __align__(MMA_ALIGN) unsigned char smem[];
    const int Dq = Dk + Ds;
    const MmaLayout L = mma_layout(Dq, Dv);
    bf16 *sQ = (bf16 *)(smem + L.bq), *sdO = (bf16 *)(smem + L.bdo), *sK = (bf16 *)(smem + L.bk);
    bf16 *sV = (bf16 *)(smem + L.bv), *sP = (bf16 *)(smem + L.bp), *sdS = (bf16 *)(smem + L.bds);
    float *sF = (float *)(smem + L.bf), *sLse = (float *)(smem + L.bstats), *sDelta = sLse + MMA_ROWS;
    float *sdK = (float *)(smem + L.bdk), *sdV = (float *)(smem + L.bdv);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t bg = blockIdx.x, b = bg / Hk, g = bg % Hk;
    const int64_t j0 = (int64_t)blockIdx.y * MMA_ROWS;

    load_key_tile(sK, L.LDQ, k + (b * T * Hk + g) * Dk, ks ? ks + b * T * Ds : NULL, Hk, Dk, Ds, j0, T, L.DQP);
    load_tile(sV, L.LDV, v + (b * T * Hk + g) * Dv, Hk * Dv, j0, T, Dv, L.DVP);
    for (int idx = threadIdx.x; idx < MMA_ROWS * L.LDQF; idx += blockDim.x) sdK[idx] = 0.0f;
    for (int idx = threadIdx.x; idx < MMA_ROWS * L.LDVF; idx += blockDim.x) sdV[idx] = 0.0f;
    float *sFw = sF + warp * 16 * L.LDS;
    for (int64_t h = g * group; h < (g + 1) * group; h++) {
        const int64_t bh = b * H + h;
        /* Queries before j0 see none of these keys: start at the tile holding query j0. */
        for (int64_t i0 = j0; i0 < T; i0 += MMA_ROWS) {
            __syncthreads();   /* the previous query tile's P, dS, Q and dO are no longer read */
            load_tile(sQ, L.LDQ, q + (b * T * H + h) * Dq, H * Dq, i0, T, Dq, L.DQP);
            load_tile(sdO, L.LDV, dout + (b * T * H + h) * Dv, H * Dv, i0, T, Dv, L.DVP);
            load_row_stats(sLse, sDelta, lse, delta, bh, i0, T);
            __syncthreads();
            score_gradient_rows(sP, sdS, sFw, sQ + warp * 16 * L.LDQ, sdO + warp * 16 * L.LDV, sK, sV, sLse, sDelta,
                                L, warp, lane, i0, j0, T, scale);
            __syncthreads();   /* from here each warp owns 16 keys and reads every query row */
            /* dV[keys] += P^T dO;  dK[keys] += dS^T Q */
            accumulate_rows<wmma::col_major>(sdV + warp * 16 * L.LDVF, L.LDVF, sP + warp * 16, L.LDP, sdO, L.LDV,
                                             L.DVP);
            accumulate_rows<wmma::col_major>(sdK + warp * 16 * L.LDQF, L.LDQF, sdS + warp * 16, L.LDP, sQ, L.LDQ,
                                             L.DQP);
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < MMA_ROWS * Dq; idx += blockDim.x) {
        const int j = idx / Dq, d = idx % Dq;
        const int64_t gj = j0 + j;
        if (gj >= T) continue;
        if (d < Dk) {
            if (dk) dk[((b * T + gj) * Hk + g) * Dk + d] = __float2bfloat16_rn(sdK[j * L.LDQF + d]);
        } else if (dks_partial) {
            dks_partial[((b * Hk + g) * T + gj) * Ds + (d - Dk)] = sdK[j * L.LDQF + d];
        }
    }
    if (dv)
        for (int idx = threadIdx.x; idx < MMA_ROWS * Dv; idx += blockDim.x) {
            const int j = idx / Dv, d = idx % Dv;
            const int64_t gj = j0 + j;
            if (gj < T) dv[((b * T + gj) * Hk + g) * Dv + d] = __float2bfloat16_rn(sdV[j * L.LDVF + d]);
        }
}

/* The forward keeps a row's P V accumulators in registers: value widths up to 256. */
enum { MMA_MAX_DV = 256 };

int attention_mma_supported(Backend *be, int64_t Dq, int64_t Dv) {
    const cudaDeviceProp *prop = &cuda_state(be)->prop;
    if (prop->major < 8 || Dq < 1 || Dv < 1 || Dq > 512 || Dv > MMA_MAX_DV) return 0;
    const MmaLayout L = mma_layout((int)Dq, (int)Dv);
    size_t need = L.bytes;
    if (L.dq_bytes > need) need = L.dq_bytes;
    if (L.dkdv_bytes > need) need = L.dkdv_bytes;
    return need <= prop->sharedMemPerBlockOptin;
}

static unsigned query_tiles(int64_t T) { return (unsigned)((T + MMA_ROWS - 1) / MMA_ROWS); }

template <int DV_TILES>
static Status launch_forward(Backend *be, const MmaAttentionShape *s, size_t smem_bytes, void *out, float *lse,
                             const void *q, const void *k, const void *k_shared, const void *v, float scale) {
    CUDA_TRY(cudaFuncSetAttribute(attention_forward_mma_kernel<DV_TILES>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  (int)smem_bytes));
    dim3 grid((unsigned)(s->B * s->H), query_tiles(s->T));
    attention_forward_mma_kernel<DV_TILES><<<grid, MMA_THREADS, smem_bytes, cuda_state(be)->stream>>>(
        (bf16 *)out, lse, (const bf16 *)q, (const bf16 *)k, (const bf16 *)k_shared, (const bf16 *)v, s->T, s->H, s->Hk,
        (int)s->Dk, (int)s->Ds, (int)s->Dv, s->group, scale);
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}

Status attention_forward_mma(Backend *be, const MmaAttentionShape *s, void *out, float *lse, const void *q,
                             const void *k, const void *k_shared, const void *v, float scale) {
    const MmaLayout L = mma_layout((int)(s->Dk + s->Ds), (int)s->Dv);
    /* Three register budgets: value widths up to 64 (the 1B students), 128 (DeepSeek-V2), 256. */
    if (L.DVP <= 64) return launch_forward<8>(be, s, L.bytes, out, lse, q, k, k_shared, v, scale);
    if (L.DVP <= 128) return launch_forward<16>(be, s, L.bytes, out, lse, q, k, k_shared, v, scale);
    if (L.DVP <= MMA_MAX_DV) return launch_forward<32>(be, s, L.bytes, out, lse, q, k, k_shared, v, scale);
    return errorf("attention_forward: value width %lld is past the tensor-core kernel's %d", (long long)s->Dv,
                  (int)MMA_MAX_DV);
}

Status attention_backward_mma(Backend *be, const MmaAttentionShape *s, void *dq, void *dk, float *dk_shared_partial,
                              void *dv, const void *dout, const void *out, const float *lse, const void *q,
                              const void *k, const void *k_shared, const void *v, float scale, float *delta) {
    CudaState *st = cuda_state(be);
    const MmaLayout L = mma_layout((int)(s->Dk + s->Ds), (int)s->Dv);
    const int64_t rows = s->B * s->T * s->H;
    int64_t blocks = (rows + 7) / 8;
    attention_delta_kernel<<<(int)(blocks < 65535 * 4 ? blocks : 65535 * 4), 256, 0, st->stream>>>(
        delta, (const bf16 *)dout, (const bf16 *)out, s->B, s->T, s->H, (int)s->Dv);
    CUDA_TRY_LAUNCH();
    if (dq) {
        CUDA_TRY(cudaFuncSetAttribute(attention_backward_dq_mma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)L.dq_bytes));
        dim3 grid((unsigned)(s->B * s->H), query_tiles(s->T));
        attention_backward_dq_mma_kernel<<<grid, MMA_THREADS, L.dq_bytes, st->stream>>>(
            (bf16 *)dq, (const bf16 *)dout, lse, delta, (const bf16 *)q, (const bf16 *)k, (const bf16 *)k_shared,
            (const bf16 *)v, s->T, s->H, s->Hk, (int)s->Dk, (int)s->Ds, (int)s->Dv, s->group, scale);
        CUDA_TRY_LAUNCH();
    }
    if (dk || dv || dk_shared_partial) {
        CUDA_TRY(cudaFuncSetAttribute(attention_backward_dkdv_mma_kernel,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, (int)L.dkdv_bytes));
        dim3 grid((unsigned)(s->B * s->Hk), query_tiles(s->T));
        attention_backward_dkdv_mma_kernel<<<grid, MMA_THREADS, L.dkdv_bytes, st->stream>>>(
            (bf16 *)dk, dk_shared_partial, (bf16 *)dv, (const bf16 *)dout, lse, delta, (const bf16 *)q,
            (const bf16 *)k, (const bf16 *)k_shared, (const bf16 *)v, s->T, s->H, s->Hk, (int)s->Dk, (int)s->Ds,
            (int)s->Dv, s->group, scale);
        CUDA_TRY_LAUNCH();
    }
    return STATUS_OK;
}
