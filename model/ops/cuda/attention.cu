/* Causal self-attention on the GPU for GQA and MLA alike, flash-attention style with float32 math
 * (f32 or bf16 storage, widened as tiles load): query tiles stream over key tiles with an online
 * softmax, the log-sum-exp is kept, and the backward pass recomputes the probabilities. Every output element is summed by one thread in a fixed order,
 * so the bits repeat run to run; no [T x T] matrix exists beyond one tile of scores. */
#include <math.h>

#include <stdlib.h>
#include <string.h>

#include "attention_mma.h"
#include "cuda_ops.h"
#include "cuda_state.h"
#include "storage.cuh"

/* Threads per block of the tiled kernels; a tile holds up to ATTN_MAX_TILE query and key rows. */
static const int ATTN_THREADS = 256;
static const int ATTN_MAX_TILE = 32;

typedef struct {
    int64_t B, T, H, Hk, Dk, Ds, Dv;
    int64_t Dq;      /* query head width, Dk + Ds */
    int64_t group;   /* query heads per kv head, H / Hk */
} AttentionDims;

/* The CPU's checks and messages: dims read from q, k, k_shared, v and checked against each other. */
static Status attention_dims(const char *op, AttentionDims *dims, DType dt, Tensor q, Tensor k, Tensor k_shared,
                             Tensor v, float scale) {
    TRY(tensor_check_dims(op, "q", q, dt, 4, -1, -1, -1, -1));
    int64_t B = q.shape[0], T = q.shape[1], H = q.shape[2];
    TRY(tensor_check_dims(op, "k", k, dt, 4, B, T, -1, -1));
    int64_t Hk = k.shape[2], Dk = k.shape[3], Ds = 0;
    if (tensor_present(k_shared)) {
        TRY(tensor_check_dims(op, "k_shared", k_shared, dt, 3, B, T, -1));
        Ds = k_shared.shape[2];
    }
    if (Hk < 1 || H % Hk != 0)
        return errorf("%s: q has %lld heads, not a multiple of the %lld kv heads of k", op, (long long)H,
                      (long long)Hk);
    if (q.shape[3] != Dk + Ds)
        return errorf("%s: q has head width %lld, expected Dk + Ds = %lld + %lld (k's width + k_shared's)", op,
                      (long long)q.shape[3], (long long)Dk, (long long)Ds);
    TRY(tensor_check_dims(op, "v", v, dt, 4, B, T, Hk, -1));
    if (!isfinite(scale)) return errorf("%s: scale is %g, expected a finite number", op, (double)scale);
    *dims = AttentionDims{B, T, H, Hk, Dk, Ds, v.shape[3], Dk + Ds, H / Hk};
    return STATUS_OK;
}

/* Loads rows [r0, r0 + tile) of one head's [T, width] slice into shared memory with row stride
 * `stride`; rows past T are zeros. The head's row r starts at src + r * row_step. */
template <typename T>
__device__ static void load_rows(float *dst, int stride, const T *src, int64_t row_step, int64_t r0, int tile,
                                 int64_t T_len, int width) {
    for (int idx = threadIdx.x; idx < tile * width; idx += blockDim.x) {
        int r = idx / width, d = idx % width;
        dst[r * stride + d] = r0 + r < T_len ? to_f32(src[(r0 + r) * row_step + d]) : 0.0f;
    }
}

/* Keys [j0, j0 + tile) of kv head g as whole rows [k ; k_shared] of width Dk + Ds. */
template <typename T>
__device__ static void load_keys(float *dst, int stride, const T *k, const T *ks, int64_t Hk, int Dk, int Ds,
                                 int64_t j0, int tile, int64_t T_len) {
    int Dq = Dk + Ds;
    for (int idx = threadIdx.x; idx < tile * Dq; idx += blockDim.x) {
        int r = idx / Dq, d = idx % Dq;
        int64_t j = j0 + r;
        float val = 0.0f;
        if (j < T_len) val = d < Dk ? to_f32(k[j * Hk * Dk + d]) : to_f32(ks[j * Ds + (d - Dk)]);
        dst[r * stride + d] = val;
    }
}

__device__ static float dot_shared(const float *a, const float *b, int n) {
    float s = 0.0f;
    for (int d = 0; d < n; d++) s += a[d] * b[d];
    return s;
}

/* Block (b*H + h, query tile): out and lse of queries [i0, i0 + tile) of head h.
 * Shared: Q [tile][Dq], K [tile][Dq+1], V [tile][Dv], P [tile][tile+1], O [tile][Dv], m, l, corr. */
template <typename S>
__global__ void attention_forward_tiles(S *out, float *lse, const S *q, const S *k, const S *ks, const S *v, int64_t T,
                                        int64_t H, int64_t Hk, int Dk, int Ds, int Dv,
                                      int64_t group, float scale, int tile) {
    extern __shared__ float smem[];
    const int Dq = Dk + Ds, KS = Dq + 1, PS = tile + 1;
    float *sQ = smem, *sK = sQ + tile * Dq, *sV = sK + tile * KS, *sP = sV + tile * Dv, *sO = sP + tile * PS;
    float *sM = sO + tile * Dv, *sL = sM + tile, *sCorr = sL + tile;
    const int64_t bh = blockIdx.x, b = bh / H, h = bh % H, g = h / group;
    const int64_t i0 = (int64_t)blockIdx.y * tile;
    const S *kg = k + (b * T * Hk + g) * Dk, *vg = v + (b * T * Hk + g) * Dv;
    const S *ksb = ks ? ks + b * T * Ds : NULL;

    load_rows(sQ, Dq, q + (b * T * H + h) * Dq, H * Dq, i0, tile, T, Dq);
    for (int idx = threadIdx.x; idx < tile * Dv; idx += blockDim.x) sO[idx] = 0.0f;
    if (threadIdx.x < tile) {
        sM[threadIdx.x] = -INFINITY;
        sL[threadIdx.x] = 0.0f;
    }
    const int64_t kend = i0 + tile < T ? i0 + tile : T;   /* keys the tile's queries can see */
    for (int64_t j0 = 0; j0 < kend; j0 += tile) {
        __syncthreads();   /* the previous tile's K, V and P are no longer read */
        load_keys(sK, KS, kg, ksb, Hk, Dk, Ds, j0, tile, T);
        load_rows(sV, Dv, vg, Hk * Dv, j0, tile, T, Dv);
        __syncthreads();
        for (int idx = threadIdx.x; idx < tile * tile; idx += blockDim.x) {
            int i = idx / tile, j = idx % tile;
            int64_t gi = i0 + i, gj = j0 + j;
            sP[i * PS + j] = gj <= gi && gj < T ? scale * dot_shared(sQ + i * Dq, sK + j * KS, Dq) : -INFINITY;
        }
        __syncthreads();
        if (threadIdx.x < tile) {
            /* Online softmax: rescale what was summed so far to the new running max. */
            int i = threadIdx.x;
            float *row = sP + i * PS;
            float m_old = sM[i], m_new = m_old;
            for (int j = 0; j < tile; j++) m_new = fmaxf(m_new, row[j]);
            float corr = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
            float sum = 0.0f;
            for (int j = 0; j < tile; j++) {
                float p = row[j] == -INFINITY ? 0.0f : expf(row[j] - m_new);
                row[j] = p;
                sum += p;
            }
            sL[i] = sL[i] * corr + sum;
            sM[i] = m_new;
            sCorr[i] = corr;
        }
        __syncthreads();
        for (int idx = threadIdx.x; idx < tile * Dv; idx += blockDim.x) {
            int i = idx / Dv, d = idx % Dv;
            float acc = sO[idx] * sCorr[i];
            for (int j = 0; j < tile; j++) acc += sP[i * PS + j] * sV[j * Dv + d];
            sO[idx] = acc;
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < tile * Dv; idx += blockDim.x) {
        int i = idx / Dv, d = idx % Dv;
        int64_t gi = i0 + i;
        if (gi < T) out[((b * T + gi) * H + h) * Dv + d] = from_f32<S>(sO[idx] * (1.0f / sL[i]));
    }
    if (threadIdx.x < tile && i0 + threadIdx.x < T)
        lse[bh * T + i0 + threadIdx.x] = sM[threadIdx.x] + logf(sL[threadIdx.x]);
}

/* P and dS of queries [i0, i0 + tile) against keys [j0, j0 + tile) from the tiles in shared memory:
 * P = exp(scale q.k - lse), dP = dout.v, dS = scale P (dP - delta), all zero where masked. With
 * sDelta NULL, sdS receives P dP instead (the terms of delta). */
__device__ static void score_gradients(float *sP, float *sdS, int PS, const float *sQ, int QS, const float *sdO,
                                       int OS, const float *sK, int KS, const float *sV, int VS, const float *sLse,
                                       const float *sDelta, int64_t i0, int64_t j0, int tile, int64_t T, int Dq,
                                       int Dv, float scale) {
    for (int idx = threadIdx.x; idx < tile * tile; idx += blockDim.x) {
        int i = idx / tile, j = idx % tile;
        int64_t gi = i0 + i, gj = j0 + j;
        float p = 0.0f, ds = 0.0f;
        if (gj <= gi && gi < T) {
            p = expf(scale * dot_shared(sQ + i * QS, sK + j * KS, Dq) - sLse[i]);
            float dp = dot_shared(sdO + i * OS, sV + j * VS, Dv);
            ds = sDelta ? scale * p * (dp - sDelta[i]) : p * dp;
        }
        if (sP) sP[i * PS + j] = p;
        sdS[i * PS + j] = ds;
    }
}

/* lse and (unless NULL) delta of queries [i0, i0 + tile) of head bh into shared memory (zeros past
 * T). */
__device__ static void load_row_stats(float *sLse, float *sDelta, const float *lse, const float *delta, int64_t bh,
                                      int64_t i0, int tile, int64_t T) {
    if (threadIdx.x < tile) {
        int64_t gi = i0 + threadIdx.x;
        sLse[threadIdx.x] = gi < T ? lse[bh * T + gi] : 0.0f;
        if (delta) sDelta[threadIdx.x] = gi < T ? delta[bh * T + gi] : 0.0f;
    }
}

/* Block (b*Hk + g, key tile): dK and dV of keys [j0, j0 + tile) of kv head g, summed over the
 * group's heads in order and over query tiles in order. The shared-key columns of dK go to
 * dks_partial[b, g] for the fixed-order sum over kv heads.
 * Shared: K [tile][Dq+1], V [tile][Dv+1], dK [tile][Dq], dV [tile][Dv], Q [tile][Dq],
 * dO [tile][Dv], P and dS [tile][tile+1], lse, delta. */
template <typename S>
__global__ void attention_backward_dkdv(S *dk, float *dks_partial, S *dv, const S *dout, const float *lse,
                                        const float *delta, const S *q, const S *k, const S *ks, const S *v, int64_t T, int64_t H, int64_t Hk,
                                            int Dk, int Ds, int Dv, int64_t group, float scale, int tile) {
    extern __shared__ float smem[];
    const int Dq = Dk + Ds, KS = Dq + 1, VS = Dv + 1, PS = tile + 1;
    float *sK = smem, *sV = sK + tile * KS, *sdK = sV + tile * VS, *sdV = sdK + tile * Dq, *sQ = sdV + tile * Dv;
    float *sdO = sQ + tile * Dq, *sP = sdO + tile * Dv, *sdS = sP + tile * PS, *sLse = sdS + tile * PS;
    float *sDelta = sLse + tile;
    const int64_t bg = blockIdx.x, b = bg / Hk, g = bg % Hk;
    const int64_t j0 = (int64_t)blockIdx.y * tile;

    load_keys(sK, KS, k + (b * T * Hk + g) * Dk, ks ? ks + b * T * Ds : NULL, Hk, Dk, Ds, j0, tile, T);
    load_rows(sV, VS, v + (b * T * Hk + g) * Dv, Hk * Dv, j0, tile, T, Dv);
    for (int idx = threadIdx.x; idx < tile * Dq; idx += blockDim.x) sdK[idx] = 0.0f;
    for (int idx = threadIdx.x; idx < tile * Dv; idx += blockDim.x) sdV[idx] = 0.0f;
    for (int64_t h = g * group; h < (g + 1) * group; h++) {
        const int64_t bh = b * H + h;
        /* Queries before j0 see none of these keys: start at the tile holding query j0. */
        for (int64_t i0 = j0 / tile * tile; i0 < T; i0 += tile) {
            __syncthreads();   /* the previous query tile is no longer read */
            load_rows(sQ, Dq, q + (b * T * H + h) * Dq, H * Dq, i0, tile, T, Dq);
            load_rows(sdO, Dv, dout + (b * T * H + h) * Dv, H * Dv, i0, tile, T, Dv);
            load_row_stats(sLse, sDelta, lse, delta, bh, i0, tile, T);
            __syncthreads();
            score_gradients(sP, sdS, PS, sQ, Dq, sdO, Dv, sK, KS, sV, VS, sLse, sDelta, i0, j0, tile, T, Dq, Dv,
                            scale);
            __syncthreads();
            /* dV[j] += sum_i P[i, j] dO[i];  dK[j] += sum_i dS[i, j] Q[i] */
            for (int idx = threadIdx.x; idx < tile * Dv; idx += blockDim.x) {
                int j = idx / Dv, d = idx % Dv;
                float acc = sdV[idx];
                for (int i = 0; i < tile; i++) acc += sP[i * PS + j] * sdO[i * Dv + d];
                sdV[idx] = acc;
            }
            for (int idx = threadIdx.x; idx < tile * Dq; idx += blockDim.x) {
                int j = idx / Dq, d = idx % Dq;
                float acc = sdK[idx];
                for (int i = 0; i < tile; i++) acc += sdS[i * PS + j] * sQ[i * Dq + d];
                sdK[idx] = acc;
            }
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < tile * Dq; idx += blockDim.x) {
        int j = idx / Dq, d = idx % Dq;
        int64_t gj = j0 + j;
        if (gj >= T) continue;
        if (d < Dk) {
            if (dk) dk[((b * T + gj) * Hk + g) * Dk + d] = from_f32<S>(sdK[idx]);
        } else if (dks_partial) {
            dks_partial[((b * Hk + g) * T + gj) * Ds + (d - Dk)] = sdK[idx];
        }
    }
    if (dv)
        for (int idx = threadIdx.x; idx < tile * Dv; idx += blockDim.x) {
            int j = idx / Dv, d = idx % Dv;
            int64_t gj = j0 + j;
            if (gj < T) dv[((b * T + gj) * Hk + g) * Dv + d] = from_f32<S>(sdV[idx]);
        }
}

/* Block (b*H + h, query tile), for queries [i0, i0 + tile) of head h. First delta_i = sum_j P_ij dP_ij,
 * summed from the very dP that the score gradients subtract it from, so that a row whose P is
 * one-hot gets exactly zero score gradients (as on the CPU); written out for the dK/dV kernel. Then,
 * when dq is wanted, dQ summed over key tiles in order. Shared: Q [tile][Dq], dO [tile][Dv],
 * K [tile][Dq+1], V [tile][Dv+1], dQ [tile][Dq], dS [tile][tile+1], lse, delta. */
template <typename S>
__global__ void attention_backward_dq(S *dq, float *delta, const S *dout, const float *lse, const S *q, const S *k,
                                      const S *ks, const S *v, int64_t T, int64_t H, int64_t Hk, int Dk, int Ds, int Dv, int64_t group,
                                          float scale, int tile) {
    extern __shared__ float smem[];
    const int Dq = Dk + Ds, KS = Dq + 1, VS = Dv + 1, PS = tile + 1;
    float *sQ = smem, *sdO = sQ + tile * Dq, *sK = sdO + tile * Dv, *sV = sK + tile * KS, *sdQ = sV + tile * VS;
    float *sdS = sdQ + tile * Dq, *sLse = sdS + tile * PS, *sDelta = sLse + tile;
    const int64_t bh = blockIdx.x, b = bh / H, h = bh % H, g = h / group;
    const int64_t i0 = (int64_t)blockIdx.y * tile;
    const S *kg = k + (b * T * Hk + g) * Dk, *vg = v + (b * T * Hk + g) * Dv;
    const S *ksb = ks ? ks + b * T * Ds : NULL;

    load_rows(sQ, Dq, q + (b * T * H + h) * Dq, H * Dq, i0, tile, T, Dq);
    load_rows(sdO, Dv, dout + (b * T * H + h) * Dv, H * Dv, i0, tile, T, Dv);
    load_row_stats(sLse, NULL, lse, NULL, bh, i0, tile, T);
    for (int idx = threadIdx.x; idx < tile * Dq; idx += blockDim.x) sdQ[idx] = 0.0f;
    if (threadIdx.x < tile) sDelta[threadIdx.x] = 0.0f;
    const int64_t kend = i0 + tile < T ? i0 + tile : T;
    for (int pass = 0; pass < (dq ? 2 : 1); pass++) {
        for (int64_t j0 = 0; j0 < kend; j0 += tile) {
            __syncthreads();
            load_keys(sK, KS, kg, ksb, Hk, Dk, Ds, j0, tile, T);
            load_rows(sV, VS, vg, Hk * Dv, j0, tile, T, Dv);
            __syncthreads();
            score_gradients(NULL, sdS, PS, sQ, Dq, sdO, Dv, sK, KS, sV, VS, sLse, pass ? sDelta : NULL, i0, j0, tile,
                            T, Dq, Dv, scale);
            __syncthreads();
            if (pass == 0) {
                /* delta_i += sum_j P_ij dP_ij, one thread per row, in key order */
                if (threadIdx.x < tile) {
                    float acc = sDelta[threadIdx.x];
                    for (int j = 0; j < tile; j++) acc += sdS[threadIdx.x * PS + j];
                    sDelta[threadIdx.x] = acc;
                }
                continue;
            }
            /* dQ[i] += sum_j dS[i, j] K[j] */
            for (int idx = threadIdx.x; idx < tile * Dq; idx += blockDim.x) {
                int i = idx / Dq, d = idx % Dq;
                float acc = sdQ[idx];
                for (int j = 0; j < tile; j++) acc += sdS[i * PS + j] * sK[j * KS + d];
                sdQ[idx] = acc;
            }
        }
    }
    __syncthreads();
    if (threadIdx.x < tile && i0 + threadIdx.x < T) delta[bh * T + i0 + threadIdx.x] = sDelta[threadIdx.x];
    if (!dq) return;
    for (int idx = threadIdx.x; idx < tile * Dq; idx += blockDim.x) {
        int i = idx / Dq, d = idx % Dq;
        int64_t gi = i0 + i;
        if (gi < T) dq[((b * T + gi) * H + h) * Dq + d] = from_f32<S>(sdQ[idx]);
    }
}

/* dk_shared[b, j, :] = sum over kv heads g, in ascending g, of partial[b, g, j, :]. */
template <typename S>
__global__ void attention_shared_key_grad(S *dks, const float *partial, int64_t B, int64_t Hk, int64_t T, int Ds) {
    const int64_t total = B * T * Ds;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        int64_t b = e / (T * Ds), jd = e % (T * Ds);
        float s = 0.0f;
        for (int64_t g = 0; g < Hk; g++) s += partial[(b * Hk + g) * T * Ds + jd];
        dks[e] = from_f32<S>(s);
    }
}

/* Shared-memory floats of each kernel for a tile size. */
static size_t forward_smem(int tile, int64_t Dq, int64_t Dv) {
    return sizeof(float) * (size_t)(tile * Dq + tile * (Dq + 1) + 2 * tile * Dv + tile * (tile + 1) + 3 * tile);
}
static size_t dkdv_smem(int tile, int64_t Dq, int64_t Dv) {
    return sizeof(float) * (size_t)(tile * (Dq + 1) + tile * (Dv + 1) + 2 * tile * Dq + 2 * tile * Dv +
                                    2 * tile * (tile + 1) + 2 * tile);
}
static size_t dq_smem(int tile, int64_t Dq, int64_t Dv) {
    return sizeof(float) * (size_t)(2 * tile * Dq + tile * Dv + tile * (Dq + 1) + tile * (Dv + 1) +
                                    tile * (tile + 1) + 2 * tile);
}

/* The largest tile (32, 16 or 8 rows) whose shared memory fits the device; an error when even the
 * smallest does not (head widths in the thousands). */
static Status choose_tile(Backend *be, const char *op, size_t (*smem)(int, int64_t, int64_t), const AttentionDims *dm,
                          int *tile, size_t *bytes) {
    size_t limit = cuda_state(be)->prop.sharedMemPerBlockOptin;
    for (int t = ATTN_MAX_TILE; t >= 8; t /= 2) {
        *tile = t;
        *bytes = smem(t, dm->Dq, dm->Dv);
        if (*bytes <= limit) return STATUS_OK;
    }
    return errorf("%s: head widths q/k %lld and v %lld need %zu bytes of shared memory per block, more than the "
                  "device's %zu", op, (long long)dm->Dq, (long long)dm->Dv, *bytes, limit);
}

static Status check_widths(const char *op, const AttentionDims *dm) {
    if (dm->Dq > 65536 || dm->Dv > 65536)
        return errorf("%s: head widths q/k %lld and v %lld are too wide for the GPU kernels", op, (long long)dm->Dq,
                      (long long)dm->Dv);
    if (dm->T / 8 + 1 > 65535)
        return errorf("%s: %lld tokens per sequence exceed the GPU kernels' grid", op, (long long)dm->T);
    return STATUS_OK;
}

/* bf16 storage runs on the tensor cores (attention_mma.cu) where the device and head widths allow;
 * MLATRAIN_CUDA_ATTENTION=tiles keeps it on these float32-math tiles (for comparison). */
static int use_tensor_cores(Backend *be, DType dt, const AttentionDims &dm) {
    static int tiles_only = -1;
    if (tiles_only < 0) {
        const char *choice = getenv("MLATRAIN_CUDA_ATTENTION");
        tiles_only = choice && strcmp(choice, "tiles") == 0;
    }
    return dt == DT_BF16 && !tiles_only && attention_mma_supported(be, dm.Dq, dm.Dv);
}

static MmaAttentionShape mma_shape(const AttentionDims &dm) {
    return MmaAttentionShape{dm.B, dm.T, dm.H, dm.Hk, dm.Dk, dm.Ds, dm.Dv, dm.group};
}

template <typename S>
static Status launch_forward(Backend *be, const AttentionDims &dm, Tensor out, Tensor lse, Tensor q, Tensor k,
                             Tensor k_shared, Tensor v, float scale, int tile, size_t bytes) {
    CUDA_TRY(cudaFuncSetAttribute(attention_forward_tiles<S>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    dim3 grid((unsigned)(dm.B * dm.H), (unsigned)((dm.T + tile - 1) / tile));
    attention_forward_tiles<S><<<grid, ATTN_THREADS, bytes, cuda_state(be)->stream>>>(
        (S *)out.data, tensor_f32(lse), (const S *)q.data, (const S *)k.data,
        tensor_present(k_shared) ? (const S *)k_shared.data : NULL, (const S *)v.data, dm.T, dm.H, dm.Hk, (int)dm.Dk,
        (int)dm.Ds, (int)dm.Dv, dm.group, scale, tile);
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}

Status cuda_attention_forward(Backend *be, Tensor out, Tensor lse, Tensor q, Tensor k, Tensor k_shared, Tensor v,
                              float scale) {
    const char *op = "attention_forward";
    DType dt = DT_F32;
    StorageArg args[] = {{"out", out}, {"q", q}, {"k", k}, {"k_shared", k_shared}, {"v", v}};
    TRY(storage_dtype(op, args, 5, &dt));
    AttentionDims dm = {};
    TRY(attention_dims(op, &dm, dt, q, k, k_shared, v, scale));
    TRY(tensor_check_dims(op, "out", out, dt, 4, dm.B, dm.T, dm.H, dm.Dv));
    TRY(tensor_check_dims(op, "lse", lse, DT_F32, 3, dm.B, dm.H, dm.T));
    if (dm.B * dm.H == 0 || dm.T == 0) return STATUS_OK;
    TRY(check_widths(op, &dm));
    if (use_tensor_cores(be, dt, dm)) {
        MmaAttentionShape shape = mma_shape(dm);
        return attention_forward_mma(be, &shape, out.data, tensor_f32(lse), q.data, k.data,
                                     tensor_present(k_shared) ? k_shared.data : NULL, v.data, scale);
    }
    int tile;
    size_t bytes;
    TRY(choose_tile(be, op, forward_smem, &dm, &tile, &bytes));
    if (dt == DT_BF16) return launch_forward<bf16>(be, dm, out, lse, q, k, k_shared, v, scale, tile, bytes);
    return launch_forward<float>(be, dm, out, lse, q, k, k_shared, v, scale, tile, bytes);
}

/* The backward kernels for one storage type; delta and partial are f32 scratch. */
template <typename S>
static Status launch_backward(Backend *be, const char *op, const AttentionDims &dm, Tensor dq, Tensor dk,
                              Tensor dk_shared, Tensor dv, Tensor dout, Tensor lse, Tensor q, Tensor k, Tensor k_shared,
                              Tensor v, float scale, float *delta, float *partial) {
    const int64_t B = dm.B, T = dm.T, H = dm.H, Hk = dm.Hk, Dk = dm.Dk, Ds = dm.Ds, Dv = dm.Dv;
    const int want_dk = tensor_present(dk), want_dv = tensor_present(dv), want_dks = partial != NULL;
    CudaState *st = cuda_state(be);
    const S *ksp = tensor_present(k_shared) ? (const S *)k_shared.data : NULL;
    /* delta (and dq) first: the dK/dV kernel reads delta. */
    int tile;
    size_t bytes;
    TRY(choose_tile(be, op, dq_smem, &dm, &tile, &bytes));
    CUDA_TRY(cudaFuncSetAttribute(attention_backward_dq<S>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    dim3 dq_grid((unsigned)(B * H), (unsigned)((T + tile - 1) / tile));
    attention_backward_dq<S><<<dq_grid, ATTN_THREADS, bytes, st->stream>>>(
        tensor_present(dq) ? (S *)dq.data : NULL, delta, (const S *)dout.data, tensor_f32(lse), (const S *)q.data,
        (const S *)k.data, ksp, (const S *)v.data, T, H, Hk, (int)Dk, (int)Ds, (int)Dv, dm.group, scale, tile);
    CUDA_TRY_LAUNCH();
    if (want_dk || want_dv || want_dks) {
        TRY(choose_tile(be, op, dkdv_smem, &dm, &tile, &bytes));
        CUDA_TRY(cudaFuncSetAttribute(attention_backward_dkdv<S>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)bytes));
        dim3 grid((unsigned)(B * Hk), (unsigned)((T + tile - 1) / tile));
        attention_backward_dkdv<S><<<grid, ATTN_THREADS, bytes, st->stream>>>(
            want_dk ? (S *)dk.data : NULL, partial, want_dv ? (S *)dv.data : NULL, (const S *)dout.data,
            tensor_f32(lse), delta, (const S *)q.data, (const S *)k.data, ksp, (const S *)v.data, T, H, Hk, (int)Dk,
            (int)Ds, (int)Dv, dm.group, scale, tile);
        CUDA_TRY_LAUNCH();
    }
    if (want_dks) {
        int64_t n = B * T * Ds, blocks = (n + ATTN_THREADS - 1) / ATTN_THREADS;
        attention_shared_key_grad<S><<<(int)(blocks < 65535 * 4 ? blocks : 65535 * 4), ATTN_THREADS, 0, st->stream>>>(
            (S *)dk_shared.data, partial, B, Hk, T, (int)Ds);
        CUDA_TRY_LAUNCH();
    }
    return STATUS_OK;
}

/* Gradients wanted as on the CPU: an absent dq, dk, dv or dk_shared is not computed; dk_shared may
 * be given only with k_shared. */
Status cuda_attention_backward(Backend *be, Tensor dq, Tensor dk, Tensor dk_shared, Tensor dv, Tensor dout,
                               Tensor out, Tensor lse, Tensor q, Tensor k, Tensor k_shared, Tensor v, float scale) {
    const char *op = "attention_backward";
    DType dt = DT_F32;
    StorageArg args[] = {{"dq", dq},     {"dk", dk},   {"dk_shared", dk_shared}, {"dv", dv},
                         {"dout", dout}, {"out", out}, {"q", q},                 {"k", k},
                         {"k_shared", k_shared},       {"v", v}};
    TRY(storage_dtype(op, args, 10, &dt));
    AttentionDims dm = {};
    TRY(attention_dims(op, &dm, dt, q, k, k_shared, v, scale));
    const int64_t B = dm.B, T = dm.T, H = dm.H, Hk = dm.Hk, Dk = dm.Dk, Ds = dm.Ds, Dv = dm.Dv, Dq = dm.Dq;
    TRY(tensor_check_dims(op, "dout", dout, dt, 4, B, T, H, Dv));
    TRY(tensor_check_dims(op, "out", out, dt, 4, B, T, H, Dv));
    TRY(tensor_check_dims(op, "lse", lse, DT_F32, 3, B, H, T));
    if (tensor_present(dq)) TRY(tensor_check_dims(op, "dq", dq, dt, 4, B, T, H, Dq));
    if (tensor_present(dk)) TRY(tensor_check_dims(op, "dk", dk, dt, 4, B, T, Hk, Dk));
    if (tensor_present(dv)) TRY(tensor_check_dims(op, "dv", dv, dt, 4, B, T, Hk, Dv));
    if (tensor_present(dk_shared)) {
        if (!tensor_present(k_shared))
            return errorf("%s: dk_shared is given but k_shared is absent (no shared key to differentiate)", op);
        TRY(tensor_check_dims(op, "dk_shared", dk_shared, dt, 3, B, T, Ds));
    }
    const int want_dq = tensor_present(dq), want_dk = tensor_present(dk), want_dv = tensor_present(dv);
    const int want_dks = tensor_present(dk_shared) && Ds > 0;
    if (!(want_dq || want_dk || want_dv || want_dks) || B * Hk == 0 || T == 0) return STATUS_OK;
    TRY(check_widths(op, &dm));
    /* out is only shape-checked, as on the CPU: delta comes from dP. */

    /* Scratch: delta [B, H, T], and the shared key's per-kv-head partial gradients [B, Hk, T, Ds]. */
    size_t delta_bytes = (size_t)(B * H * T) * sizeof(float);
    size_t partial_bytes = want_dks ? (size_t)(B * Hk * T * Ds) * sizeof(float) : 0, total = 0;
    cuda_scratch_size(&total, delta_bytes);
    cuda_scratch_size(&total, partial_bytes);
    void *base;
    TRY(cuda_scratch(be, total, &base));
    char *cursor = (char *)base;
    float *delta = (float *)cuda_scratch_take(&cursor, delta_bytes);
    float *partial = want_dks ? (float *)cuda_scratch_take(&cursor, partial_bytes) : NULL;
    if (use_tensor_cores(be, dt, dm)) {
        MmaAttentionShape shape = mma_shape(dm);
        TRY(attention_backward_mma(be, &shape, want_dq ? dq.data : NULL, want_dk ? dk.data : NULL, partial,
                                   want_dv ? dv.data : NULL, dout.data, out.data, tensor_f32(lse), q.data, k.data,
                                   tensor_present(k_shared) ? k_shared.data : NULL, v.data, scale, delta));
        if (want_dks) {
            int64_t n = B * T * Ds, blocks = (n + ATTN_THREADS - 1) / ATTN_THREADS;
            attention_shared_key_grad<bf16><<<(int)(blocks < 65535 * 4 ? blocks : 65535 * 4), ATTN_THREADS, 0,
                                              cuda_state(be)->stream>>>((bf16 *)dk_shared.data, partial, B, Hk, T,
                                                                        (int)Ds);
            CUDA_TRY_LAUNCH();
        }
        return STATUS_OK;
    }
    if (dt == DT_BF16)
        return launch_backward<bf16>(be, op, dm, dq, dk, dk_shared, dv, dout, lse, q, k, k_shared, v, scale, delta,
                                     partial);
    return launch_backward<float>(be, op, dm, dq, dk, dk_shared, dv, dout, lse, q, k, k_shared, v, scale, delta,
                                  partial);
}
