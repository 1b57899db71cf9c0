/* Causal attention's backward on the tensor cores, FlashAttention-2's way but without atomics: the
 * probabilities, dP and dS of a 16 x 64 block live in one warp's registers (mma.sync m16n8k16) and
 * feed the next product straight from the accumulators, the gradients are register accumulators,
 * and the streamed tiles come in by cp.async one tile ahead. dQ is one kernel per query tile (over
 * its key tiles in order), dK and dV one per key tile of a kv head (over the group's heads and the
 * query tiles in order), so every sum runs in a fixed order; delta = rowsum(dO * O) first. */
#include <math.h>
#include <stdint.h>

#include "attention_mma.h"
#include "attention_mma_kernels.h"
#include "attention_tiles.cuh"
#include "cuda_ops.h"
#include "cuda_state.h"

/* Both kernels keep one 64-row tile pair of their own (Q and dO for dQ; K and V for dK/dV) and two
 * buffers of the pair they stream past it (K and V; Q and dO with their rows' lse and delta), the
 * second buffer at + step. Each pair is a [64 x Dq] tile and a [64 x Dv] one. */
typedef struct {
    int DQP, DVP, LDQ, LDV;
    size_t own_q, own_v, stream_q, stream_v, stream_stats, step, bytes;
} BackwardLayout;

__host__ __device__ static BackwardLayout backward_layout(int Dq, int Dv) {
    BackwardLayout L;
    L.DQP = round16(Dq);
    L.DVP = round16(Dv);
    L.LDQ = tile_ld(L.DQP);
    L.LDV = tile_ld(L.DVP);
    const size_t R = MMA_ROWS, h = sizeof(bf16);
    size_t at = 0;
    L.own_q = take(&at, R * L.LDQ * h);
    L.own_v = take(&at, R * L.LDV * h);
    L.stream_q = take(&at, R * L.LDQ * h);
    L.stream_v = take(&at, R * L.LDV * h);
    L.stream_stats = take(&at, 2 * R * sizeof(float));
    L.step = at - L.stream_q;
    take(&at, L.step);
    L.bytes = at;
    return L;
}

static const float LOG2E = 1.4426950408889634f;

/* dQ for one query tile of one head. Warp w owns queries 16w..16w+15; per 64-key tile it forms
 * S = Q K^T, P = 2^(S log2e scale - lse log2e) (causal mask on the diagonal tile), dP = dO V^T and
 * dS = scale P (dP - delta) in registers, then dQ += dS K with dS rounded to bf16 as the A operand
 * and K read transposed. DQ_TILES bounds the padded query width at compile time. */
template <int DQ_TILES>
__global__ void __launch_bounds__(MMA_THREADS)
    attention_backward_dq_kernel(bf16 *dq, const bf16 *dout, const float *lse, const float *delta, const bf16 *q,
                                 const bf16 *k, const bf16 *ks, const bf16 *v, int64_t T, int64_t H, int64_t Hk,
                                 int Dk, int Ds, int Dv, int64_t group, float scale) {
    extern __shared__ __align__(MMA_ALIGN) unsigned char smem[];
    const int Dq = Dk + Ds;
    const BackwardLayout L = backward_layout(Dq, Dv);
    const bf16 *sQ = (const bf16 *)(smem + L.own_q), *sdO = (const bf16 *)(smem + L.own_v);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int64_t bh = blockIdx.x, b = bh / H, h = bh % H, hk = h / group;
    /* The last query tiles see the most keys: they go first. */
    const int64_t i0 = (int64_t)(gridDim.y - 1 - blockIdx.y) * MMA_ROWS;
    const bf16 *kg = k + (b * T * Hk + hk) * Dk, *vg = v + (b * T * Hk + hk) * Dv;
    const bf16 *ksb = ks ? ks + b * T * Ds : NULL;
    const float scale_log2 = scale * LOG2E;

    load_tile_async((bf16 *)sQ, L.LDQ, q + (b * T * H + h) * Dq, H * Dq, i0, T, Dq, L.DQP);
    load_tile_async((bf16 *)sdO, L.LDV, dout + (b * T * H + h) * Dv, H * Dv, i0, T, Dv, L.DVP);
    load_key_tile_async((bf16 *)(smem + L.stream_q), L.LDQ, kg, ksb, Hk, Dk, Ds, 0, T, L.DQP);
    load_tile_async((bf16 *)(smem + L.stream_v), L.LDV, vg, Hk * Dv, 0, T, Dv, L.DVP);
    cp_async_commit();

    /* The lane's two rows: lse in log2 units (+inf past T, so their P is 0) and delta. */
    const int64_t row0 = i0 + warp * 16 + g;
    float lse2[2], dlt[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int64_t gi = row0 + 8 * r;
        lse2[r] = gi < T ? lse[bh * T + gi] * LOG2E : INFINITY;
        dlt[r] = gi < T ? delta[bh * T + gi] : 0.0f;
    }
    float acc[DQ_TILES][4];
#pragma unroll
    for (int n = 0; n < DQ_TILES; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;

    const int64_t kend = i0 + MMA_ROWS < T ? i0 + MMA_ROWS : T;
    const int n_tiles = (int)((kend + MMA_ROWS - 1) / MMA_ROWS);
    for (int it = 0; it < n_tiles; it++) {
        const int64_t j0 = (int64_t)it * MMA_ROWS;
        if (it + 1 < n_tiles) {   /* the other buffer was last read before the previous barrier */
            const size_t next = ((it + 1) & 1) * L.step;
            load_key_tile_async((bf16 *)(smem + L.stream_q + next), L.LDQ, kg, ksb, Hk, Dk, Ds, j0 + MMA_ROWS, T,
                                L.DQP);
            load_tile_async((bf16 *)(smem + L.stream_v + next), L.LDV, vg, Hk * Dv, j0 + MMA_ROWS, T, Dv, L.DVP);
        }
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const bf16 *sK = (const bf16 *)(smem + L.stream_q + (it & 1) * L.step);
        const bf16 *sV = (const bf16 *)(smem + L.stream_v + (it & 1) * L.step);

        float p[8][4];
        zero_pieces(p);
        rows_times_rows_t(p, sQ + warp * 16 * L.LDQ, L.LDQ, sK, L.LDQ, L.DQP, lane);
        const bool diagonal = j0 + MMA_ROWS > i0;
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int64_t gi = row0 + 8 * (e / 2), gj = j0 + n * 8 + 2 * t + e % 2;
                p[n][e] = diagonal && gj > gi ? 0.0f : exp2f(p[n][e] * scale_log2 - lse2[e / 2]);
            }
        float dp[8][4];
        zero_pieces(dp);
        rows_times_rows_t(dp, sdO + warp * 16 * L.LDV, L.LDV, sV, L.LDV, L.DVP, lane);
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) p[n][e] = scale * p[n][e] * (dp[n][e] - dlt[e / 2]);
        pieces_times_rows<DQ_TILES>(acc, p, sK, L.LDQ, L.DQP, lane);
        __syncthreads();   /* every warp is done with this buffer before it is refilled */
    }
    cp_async_wait<0>();

#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int64_t gi = row0 + 8 * r;
        if (gi >= T) continue;
        bf16 *dst = dq + ((b * T + gi) * H + h) * Dq;
#pragma unroll
        for (int n = 0; n < DQ_TILES; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int d = n * 8 + 2 * t + e;
                if (d < Dq) dst[d] = __float2bfloat16_rn(acc[n][2 * r + e]);
            }
    }
}

/* Q, dO, lse (log2 units, +inf past T) and delta of iteration `it` of the dK/dV kernel: query tile
 * jt + it % nq of the group's head it / nq, into buffer `buf`. */
__device__ static void stage_query_tile(const BackwardLayout &L, unsigned char *smem, int buf, int it, int nq, int jt,
                                        const bf16 *q, const bf16 *dout, const float *lse, const float *delta,
                                        int64_t b, int64_t hk, int64_t T, int64_t H, int Dq, int Dv, int64_t group) {
    const int64_t h = hk * group + it / nq, i0 = (int64_t)(jt + it % nq) * MMA_ROWS, bh = b * H + h;
    const size_t at = buf * L.step;
    load_tile_async((bf16 *)(smem + L.stream_q + at), L.LDQ, q + (b * T * H + h) * Dq, H * Dq, i0, T, Dq, L.DQP);
    load_tile_async((bf16 *)(smem + L.stream_v + at), L.LDV, dout + (b * T * H + h) * Dv, H * Dv, i0, T, Dv, L.DVP);
    float *stats = (float *)(smem + L.stream_stats + at);
    if (threadIdx.x < MMA_ROWS) {
        const int64_t gi = i0 + threadIdx.x;
        stats[threadIdx.x] = gi < T ? lse[bh * T + gi] * LOG2E : INFINITY;
        stats[MMA_ROWS + threadIdx.x] = gi < T ? delta[bh * T + gi] : 0.0f;
    }
}

/* dK and dV for one key tile of one kv head. Warp w owns keys 16w..16w+15; per (head, query tile)
 * it forms the transposed blocks S^T = K Q^T, P^T, dP^T = V dO^T and dS^T in registers, then
 * dV += P^T dO and dK += dS^T Q with P^T and dS^T as A operands and dO, Q read transposed. Query
 * tiles before the key tile see none of its keys and are skipped. The shared key's columns go to
 * the f32 partials of this kv head. */
template <int DQ_TILES, int DV_TILES, int QUERY_BLOCKS>
__global__ void __launch_bounds__(MMA_THREADS)
    attention_backward_dkdv_kernel(bf16 *dk, float *dks_partial, bf16 *dv, const bf16 *dout, const float *lse,
                                   const float *delta, const bf16 *q, const bf16 *k, const bf16 *ks, const bf16 *v,
                                   int64_t T, int64_t H, int64_t Hk, int Dk, int Ds, int Dv, int64_t group,
                                   float scale) {
    extern __shared__ __align__(MMA_ALIGN) unsigned char smem[];
    const int Dq = Dk + Ds;
    const BackwardLayout L = backward_layout(Dq, Dv);
    const bf16 *sK = (const bf16 *)(smem + L.own_q), *sV = (const bf16 *)(smem + L.own_v);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int64_t bg = blockIdx.x, b = bg / Hk, hk = bg % Hk;
    /* Key tile 0 meets every query tile: the low tiles, the heaviest, are launched first. */
    const int jt = (int)blockIdx.y;
    const int64_t j0 = (int64_t)jt * MMA_ROWS;
    const float scale_log2 = scale * LOG2E;

    load_key_tile_async((bf16 *)sK, L.LDQ, k + (b * T * Hk + hk) * Dk, ks ? ks + b * T * Ds : NULL, Hk, Dk, Ds, j0, T,
                        L.DQP);
    load_tile_async((bf16 *)sV, L.LDV, v + (b * T * Hk + hk) * Dv, Hk * Dv, j0, T, Dv, L.DVP);
    const int nq = (int)attention_row_tiles(T) - jt, n_iters = (int)group * nq;
    stage_query_tile(L, smem, 0, 0, nq, jt, q, dout, lse, delta, b, hk, T, H, Dq, Dv, group);
    cp_async_commit();

    float dk_acc[DQ_TILES][4], dv_acc[DV_TILES][4];
#pragma unroll
    for (int n = 0; n < DQ_TILES; n++) dk_acc[n][0] = dk_acc[n][1] = dk_acc[n][2] = dk_acc[n][3] = 0.0f;
#pragma unroll
    for (int n = 0; n < DV_TILES; n++) dv_acc[n][0] = dv_acc[n][1] = dv_acc[n][2] = dv_acc[n][3] = 0.0f;
    const int64_t key0 = j0 + warp * 16 + g;   /* the lane's keys: key0 and key0 + 8 */

    for (int it = 0; it < n_iters; it++) {
        if (it + 1 < n_iters)
            stage_query_tile(L, smem, (it + 1) & 1, it + 1, nq, jt, q, dout, lse, delta, b, hk, T, H, Dq, Dv, group);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const size_t at = (it & 1) * L.step;
        const bf16 *sQ = (const bf16 *)(smem + L.stream_q + at), *sdO = (const bf16 *)(smem + L.stream_v + at);
        const float *sLse2 = (const float *)(smem + L.stream_stats + at), *sDelta = sLse2 + MMA_ROWS;
        const int64_t i0 = (int64_t)(jt + it % nq) * MMA_ROWS;

        const bool diagonal = i0 == j0;
        /* The tile's 64 queries in QUERY_BLOCKS blocks: the wider budgets take two blocks of 32,
         * which leaves their gradient accumulators the registers that a whole 16 x 64 block of S
         * and dP would take. */
#pragma unroll
        for (int qb = 0; qb < QUERY_BLOCKS; qb++) {
            constexpr int P = 8 / QUERY_BLOCKS;
            const int c0 = qb * 8 * P;
            const bf16 *sQb = sQ + c0 * L.LDQ, *sdOb = sdO + c0 * L.LDV;
            float p[P][4];
            zero_pieces(p);
            rows_times_rows_t(p, sK + warp * 16 * L.LDQ, L.LDQ, sQb, L.LDQ, L.DQP, lane);
#pragma unroll
            for (int n = 0; n < P; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int c = c0 + n * 8 + 2 * t + e % 2;
                    const int64_t gj = key0 + 8 * (e / 2), gi = i0 + c;
                    p[n][e] = diagonal && gi < gj ? 0.0f : exp2f(p[n][e] * scale_log2 - sLse2[c]);
                }
            pieces_times_rows<DV_TILES>(dv_acc, p, sdOb, L.LDV, L.DVP, lane);
            float dp[P][4];
            zero_pieces(dp);
            rows_times_rows_t(dp, sV + warp * 16 * L.LDV, L.LDV, sdOb, L.LDV, L.DVP, lane);
#pragma unroll
            for (int n = 0; n < P; n++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    p[n][e] = scale * p[n][e] * (dp[n][e] - sDelta[c0 + n * 8 + 2 * t + e % 2]);
            pieces_times_rows<DQ_TILES>(dk_acc, p, sQb, L.LDQ, L.DQP, lane);
        }
        __syncthreads();   /* every warp is done with this buffer before it is refilled */
    }
    cp_async_wait<0>();

#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int64_t gj = key0 + 8 * r;
        if (gj >= T) continue;
#pragma unroll
        for (int n = 0; n < DQ_TILES; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int d = n * 8 + 2 * t + e;
                const float x = dk_acc[n][2 * r + e];
                if (d < Dk) {
                    if (dk) dk[((b * T + gj) * Hk + hk) * Dk + d] = __float2bfloat16_rn(x);
                } else if (d < Dq && dks_partial) {
                    dks_partial[((b * Hk + hk) * T + gj) * Ds + (d - Dk)] = x;
                }
            }
        if (dv)
#pragma unroll
            for (int n = 0; n < DV_TILES; n++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int d = n * 8 + 2 * t + e;
                    if (d < Dv) dv[((b * T + gj) * Hk + hk) * Dv + d] = __float2bfloat16_rn(dv_acc[n][2 * r + e]);
                }
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
        for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
        const int64_t h = row % H, bi = row / H, bb = bi / T, i = bi % T;
        if (lane == 0) delta[(bb * H + h) * T + i] = s;
    }
}

/* The register budgets: (query width, value width) up to (96, 64) for the 1B students and the
 * head-64 GQA teachers, (128, 128) for head-128 teachers, (192, 128) for DeepSeek-V2's widths. The
 * dK/dV kernel holds both gradients' accumulators: past these, the WMMA kernels take over. */
static int register_budget(int DQP, int DVP) {
    if (DQP <= 96 && DVP <= 64) return 1;
    if (DQP <= 128 && DVP <= 128) return 2;
    if (DQP <= 192 && DVP <= 128) return 3;
    return 0;
}

size_t attention_backward_mma_smem(int Dq, int Dv) {
    const BackwardLayout L = backward_layout(Dq, Dv);
    return register_budget(L.DQP, L.DVP) ? L.bytes : attention_backward_wmma_smem(Dq, Dv);
}

template <int DQ_TILES, int DV_TILES, int QUERY_BLOCKS>
static Status launch_backward(Backend *be, const MmaAttentionShape *s, size_t bytes, void *dq, void *dk,
                              float *dk_shared_partial, void *dv, const void *dout, const float *lse, const void *q,
                              const void *k, const void *k_shared, const void *v, float scale, const float *delta) {
    cudaStream_t stream = cuda_state(be)->stream;
    if (dq) {
        CUDA_TRY(cudaFuncSetAttribute(attention_backward_dq_kernel<DQ_TILES>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        dim3 grid((unsigned)(s->B * s->H), attention_row_tiles(s->T));
        attention_backward_dq_kernel<DQ_TILES><<<grid, MMA_THREADS, bytes, stream>>>(
            (bf16 *)dq, (const bf16 *)dout, lse, delta, (const bf16 *)q, (const bf16 *)k, (const bf16 *)k_shared,
            (const bf16 *)v, s->T, s->H, s->Hk, (int)s->Dk, (int)s->Ds, (int)s->Dv, s->group, scale);
        CUDA_TRY_LAUNCH();
    }
    if (dk || dv || dk_shared_partial) {
        CUDA_TRY(cudaFuncSetAttribute(attention_backward_dkdv_kernel<DQ_TILES, DV_TILES, QUERY_BLOCKS>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        dim3 grid((unsigned)(s->B * s->Hk), attention_row_tiles(s->T));
        attention_backward_dkdv_kernel<DQ_TILES, DV_TILES, QUERY_BLOCKS><<<grid, MMA_THREADS, bytes, stream>>>(
            (bf16 *)dk, dk_shared_partial, (bf16 *)dv, (const bf16 *)dout, lse, delta, (const bf16 *)q,
            (const bf16 *)k, (const bf16 *)k_shared, (const bf16 *)v, s->T, s->H, s->Hk, (int)s->Dk, (int)s->Ds,
            (int)s->Dv, s->group, scale);
        CUDA_TRY_LAUNCH();
    }
    return STATUS_OK;
}

Status attention_backward_mma(Backend *be, const MmaAttentionShape *s, void *dq, void *dk, float *dk_shared_partial,
                              void *dv, const void *dout, const void *out, const float *lse, const void *q,
                              const void *k, const void *k_shared, const void *v, float scale, float *delta) {
    const int64_t rows = s->B * s->T * s->H, blocks = (rows + 7) / 8;
    attention_delta_kernel<<<(int)(blocks < 65535 * 4 ? blocks : 65535 * 4), 256, 0, cuda_state(be)->stream>>>(
        delta, (const bf16 *)dout, (const bf16 *)out, s->B, s->T, s->H, (int)s->Dv);
    CUDA_TRY_LAUNCH();
    const BackwardLayout L = backward_layout((int)(s->Dk + s->Ds), (int)s->Dv);
    switch (register_budget(L.DQP, L.DVP)) {
    case 1:
        return launch_backward<12, 8, 1>(be, s, L.bytes, dq, dk, dk_shared_partial, dv, dout, lse, q, k, k_shared, v,
                                      scale, delta);
    case 2:
        return launch_backward<16, 16, 2>(be, s, L.bytes, dq, dk, dk_shared_partial, dv, dout, lse, q, k, k_shared, v,
                                       scale, delta);
    case 3:
        return launch_backward<24, 16, 2>(be, s, L.bytes, dq, dk, dk_shared_partial, dv, dout, lse, q, k, k_shared, v,
                                       scale, delta);
    default:
        return attention_backward_wmma(be, s, dq, dk, dk_shared_partial, dv, dout, lse, q, k, k_shared, v, scale,
                                       delta);
    }
}
