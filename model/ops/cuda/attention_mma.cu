/* Causal attention's forward on the tensor cores (bf16 operands, f32 accumulation), for GQA and MLA
 * alike, FlashAttention-2's way: 64 queries per block, 16 per warp, streaming over 64-key tiles
 * that cp.async brings in one tile ahead; scores, the online softmax and the P V accumulators stay
 * in registers (mma.sync m16n8k16), each query row held by the 4 lanes of a quad; the most loaded
 * causal query tiles are launched first. Head widths padded to 16 with zeros. */
#include <math.h>
#include <stdint.h>

#include "attention_mma.h"
#include "attention_mma_kernels.h"
#include "attention_tiles.cuh"
#include "cuda_ops.h"
#include "cuda_state.h"

/* Q, and two buffers each of K and V (K at k + i * kv_step, V at v + i * kv_step). */
typedef struct {
    int DQP, DVP, LDQ, LDV;
    size_t q, k, v, kv_step, bytes;
} ForwardLayout;

__host__ __device__ static ForwardLayout forward_layout(int Dq, int Dv) {
    ForwardLayout L;
    L.DQP = round16(Dq);
    L.DVP = round16(Dv);
    L.LDQ = tile_ld(L.DQP);
    L.LDV = tile_ld(L.DVP);
    const size_t R = MMA_ROWS, h = sizeof(bf16);
    size_t at = 0;
    L.q = take(&at, R * L.LDQ * h);
    L.k = take(&at, R * L.LDQ * h);
    L.v = take(&at, R * L.LDV * h);
    L.kv_step = at - L.k;
    take(&at, L.kv_step);
    L.bytes = at;
    return L;
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
    const ForwardLayout L = forward_layout(Dq, Dv);
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
    load_tile_async(sQ, L.LDQ, qh, H * Dq, i0, T, Dq, L.DQP);
    const int64_t kend = i0 + MMA_ROWS < T ? i0 + MMA_ROWS : T;
    const int n_tiles = (int)((kend + MMA_ROWS - 1) / MMA_ROWS);
    load_key_tile_async((bf16 *)(smem + L.k), L.LDQ, kg, ksb, Hk, Dk, Ds, 0, T, L.DQP);
    load_tile_async((bf16 *)(smem + L.v), L.LDV, vg, Hk * Dv, 0, T, Dv, L.DVP);
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
        if (it + 1 < n_tiles) {
            const size_t next = ((it + 1) & 1) * L.kv_step;
            load_key_tile_async((bf16 *)(smem + L.k + next), L.LDQ, kg, ksb, Hk, Dk, Ds, j0 + MMA_ROWS, T, L.DQP);
            load_tile_async((bf16 *)(smem + L.v + next), L.LDV, vg, Hk * Dv, j0 + MMA_ROWS, T, Dv, L.DVP);
        }
        cp_async_commit();
        cp_async_wait<1>();   /* this thread's copies of tile `it` (and Q) are done ... */
        __syncthreads();      /* ... and everyone's */
        const bf16 *sK = (const bf16 *)(smem + L.k + (it & 1) * L.kv_step);
        const bf16 *sV = (const bf16 *)(smem + L.v + (it & 1) * L.kv_step);

        /* S = Q K^T for the warp's 16 rows and the tile's 64 keys: 8 pieces of 8 keys. */
        float s[8][4];
        zero_pieces(s);
        rows_times_rows_t(s, sQ + warp * 16 * L.LDQ, L.LDQ, sK, L.LDQ, L.DQP, lane);

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
        pieces_times_rows<DV_TILES>(o, s, sV, L.LDV, L.DVP, lane);
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

/* The forward keeps a row's P V accumulators in registers: value widths up to 256. */
enum { MMA_MAX_DV = 256 };

int attention_mma_supported(Backend *be, int64_t Dq, int64_t Dv) {
    const cudaDeviceProp *prop = &cuda_state(be)->prop;
    if (prop->major < 8 || Dq < 1 || Dv < 1 || Dq > 512 || Dv > MMA_MAX_DV) return 0;
    size_t need = forward_layout((int)Dq, (int)Dv).bytes;
    const size_t backward = attention_backward_mma_smem((int)Dq, (int)Dv);
    if (backward > need) need = backward;
    return need <= prop->sharedMemPerBlockOptin;
}

template <int DV_TILES>
static Status launch_forward(Backend *be, const MmaAttentionShape *s, size_t smem_bytes, void *out, float *lse,
                             const void *q, const void *k, const void *k_shared, const void *v, float scale) {
    CUDA_TRY(cudaFuncSetAttribute(attention_forward_mma_kernel<DV_TILES>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  (int)smem_bytes));
    dim3 grid((unsigned)(s->B * s->H), attention_row_tiles(s->T));
    attention_forward_mma_kernel<DV_TILES><<<grid, MMA_THREADS, smem_bytes, cuda_state(be)->stream>>>(
        (bf16 *)out, lse, (const bf16 *)q, (const bf16 *)k, (const bf16 *)k_shared, (const bf16 *)v, s->T, s->H, s->Hk,
        (int)s->Dk, (int)s->Ds, (int)s->Dv, s->group, scale);
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}

Status attention_forward_mma(Backend *be, const MmaAttentionShape *s, void *out, float *lse, const void *q,
                             const void *k, const void *k_shared, const void *v, float scale) {
    const ForwardLayout L = forward_layout((int)(s->Dk + s->Ds), (int)s->Dv);
    /* Three register budgets: value widths up to 64 (the 1B students), 128 (DeepSeek-V2), 256. */
    if (L.DVP <= 64) return launch_forward<8>(be, s, L.bytes, out, lse, q, k, k_shared, v, scale);
    if (L.DVP <= 128) return launch_forward<16>(be, s, L.bytes, out, lse, q, k, k_shared, v, scale);
    if (L.DVP <= MMA_MAX_DV) return launch_forward<32>(be, s, L.bytes, out, lse, q, k, k_shared, v, scale);
    return errorf("attention_forward: value width %lld is past the tensor-core kernel's %d", (long long)s->Dv,
                  (int)MMA_MAX_DV);
}

