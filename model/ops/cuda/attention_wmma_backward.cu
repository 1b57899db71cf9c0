/* The attention backward on the tensor cores for heads too wide for attention_mma_backward.cu's
 * register tiles: WMMA products on tiles staged through shared memory, without atomics. One kernel
 * per query tile forms dQ over the key tiles in order; one per key tile of a kv head forms dK and dV
 * over the group's heads and the query tiles in order. */
#include <math.h>
#include <mma.h>
#include <stdint.h>

#include <type_traits>

#include "attention_mma_kernels.h"
#include "attention_tiles.cuh"
#include "cuda_ops.h"
#include "cuda_state.h"

using namespace nvcuda;

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
    size_t bq, bdo, bk, bv, bf, bp, bds, bdq, bdk, bdv, bstats, dq_bytes, dkdv_bytes;
} WmmaLayout;

__host__ __device__ static WmmaLayout wmma_layout(int Dq, int Dv) {
    WmmaLayout L;
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

/* The warp's 16 rows of A B^T into f32 (ld ldc): A [16 x K] row-major from a (ld lda), B's 64 rows
 * from b (ld ldb), K a multiple of 16. */
__device__ static void staged_rows_times_rows_t(float *c, int ldc, const bf16 *a, int lda, const bf16 *b, int ldb, int K) {
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

/* The warp's 16 query rows against one key tile: P (bf16, into sP) from the scores and lse, then
 * dS = scale P (dP - delta) (bf16, into sdS) with dP = dO V^T formed in sFw; zeros where masked. */
__device__ static void score_gradient_rows(bf16 *sP, bf16 *sdS, float *sFw, const bf16 *sQw, const bf16 *sdOw,
                                           const bf16 *sK, const bf16 *sV, const float *sLse, const float *sDelta,
                                           const WmmaLayout &L, int warp, int lane, int64_t i0, int64_t j0, int64_t T,
                                           float scale) {
    staged_rows_times_rows_t(sFw, L.LDS, sQw, L.LDQ, sK, L.LDQ, L.DQP);
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
    staged_rows_times_rows_t(sFw, L.LDS, sdOw, L.LDV, sV, L.LDV, L.DVP);
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
    attention_backward_dq_wmma_kernel(bf16 *dq, const bf16 *dout, const float *lse, const float *delta, const bf16 *q,
                                     const bf16 *k, const bf16 *ks, const bf16 *v, int64_t T, int64_t H, int64_t Hk,
                                     int Dk, int Ds, int Dv, int64_t group, float scale) {
    extern __shared__ __align__(MMA_ALIGN) unsigned char smem[];
    const int Dq = Dk + Ds;
    const WmmaLayout L = wmma_layout(Dq, Dv);
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
    attention_backward_dkdv_wmma_kernel(bf16 *dk, float *dks_partial, bf16 *dv, const bf16 *dout, const float *lse,
                                       const float *delta, const bf16 *q, const bf16 *k, const bf16 *ks,
                                       const bf16 *v, int64_t T, int64_t H, int64_t Hk, int Dk, int Ds, int Dv,
                                       int64_t group, float scale) {
    extern __shared__ __align__(MMA_ALIGN) unsigned char smem[];
    const int Dq = Dk + Ds;
    const WmmaLayout L = wmma_layout(Dq, Dv);
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

size_t attention_backward_wmma_smem(int Dq, int Dv) {
    const WmmaLayout L = wmma_layout(Dq, Dv);
    return L.dq_bytes > L.dkdv_bytes ? L.dq_bytes : L.dkdv_bytes;
}

Status attention_backward_wmma(Backend *be, const MmaAttentionShape *s, void *dq, void *dk, float *dk_shared_partial,
                               void *dv, const void *dout, const float *lse, const void *q, const void *k,
                               const void *k_shared, const void *v, float scale, const float *delta) {
    CudaState *st = cuda_state(be);
    const WmmaLayout L = wmma_layout((int)(s->Dk + s->Ds), (int)s->Dv);
    if (dq) {
        CUDA_TRY(cudaFuncSetAttribute(attention_backward_dq_wmma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)L.dq_bytes));
        dim3 grid((unsigned)(s->B * s->H), attention_row_tiles(s->T));
        attention_backward_dq_wmma_kernel<<<grid, MMA_THREADS, L.dq_bytes, st->stream>>>(
            (bf16 *)dq, (const bf16 *)dout, lse, delta, (const bf16 *)q, (const bf16 *)k, (const bf16 *)k_shared,
            (const bf16 *)v, s->T, s->H, s->Hk, (int)s->Dk, (int)s->Ds, (int)s->Dv, s->group, scale);
        CUDA_TRY_LAUNCH();
    }
    if (dk || dv || dk_shared_partial) {
        CUDA_TRY(cudaFuncSetAttribute(attention_backward_dkdv_wmma_kernel,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, (int)L.dkdv_bytes));
        dim3 grid((unsigned)(s->B * s->Hk), attention_row_tiles(s->T));
        attention_backward_dkdv_wmma_kernel<<<grid, MMA_THREADS, L.dkdv_bytes, st->stream>>>(
            (bf16 *)dk, dk_shared_partial, (bf16 *)dv, (const bf16 *)dout, lse, delta, (const bf16 *)q,
            (const bf16 *)k, (const bf16 *)k_shared, (const bf16 *)v, s->T, s->H, s->Hk, (int)s->Dk, (int)s->Ds,
            (int)s->Dv, s->group, scale);
        CUDA_TRY_LAUNCH();
    }
    return STATUS_OK;
}
