/* Decoding attention on the GPU: one token against the KV cache, GQA and absorbed MLA alike, split
 * over the keys as on the CPU. One block per (kv head, chunk of 256 cached tokens): a thread per
 * key forms its score for each query head of the group, the block's max and sum of exponentials
 * come from fixed-tree reductions, and the weighted values of the chunk are summed over its keys in
 * order, a thread per value dim. A second kernel combines the chunks of each head in order. Float32
 * math on f32 or bf16 storage; no atomics, so the bits depend on the sizes alone. */
#include <math.h>

#include "block_reduce.cuh"
#include "cuda_ops.h"
#include "cuda_state.h"
#include "storage.cuh"

/* Cached tokens per block: one per thread of a reduction block. */
#define DECODE_CHUNK REDUCE_BLOCK_THREADS
static const int COMBINE_THREADS = 128;

/* Max over the block of v (the fixed tree of block_sum); every thread gets it. */
__device__ static float block_max(float v, float *shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int stride = REDUCE_BLOCK_THREADS / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) shared[threadIdx.x] = fmaxf(shared[threadIdx.x], shared[threadIdx.x + stride]);
        __syncthreads();
    }
    float m = shared[0];
    __syncthreads();
    return m;
}

/* Per (kv head g, chunk c) and query head hi of g's group: mx = the chunk's max score, sum = its
 * sum of exp(score - mx), acc[Dv] = its sum of exp(score - mx) v. */
template <typename T>
__global__ void attention_decode_chunks(float *mx, float *sum, float *acc, const T *q, const T *k, const T *ks,
                                        const T *v, int64_t n, int64_t Hk, int64_t group, int64_t Dk, int64_t Ds,
                                        int64_t Dv, int64_t nchunks, float scale) {
    __shared__ float red[REDUCE_BLOCK_THREADS];
    __shared__ float p[DECODE_CHUNK];
    const int64_t g = blockIdx.x, c = blockIdx.y, j0 = c * DECODE_CHUNK, j = j0 + threadIdx.x;
    const int64_t len = n - j0 < DECODE_CHUNK ? n - j0 : DECODE_CHUNK, Dq = Dk + Ds, task = g * nchunks + c;
    for (int64_t hi = 0; hi < group; hi++) {
        const T *qh = q + (g * group + hi) * Dq;
        float s = -INFINITY;
        if (j < n) {
            float d = 0.0f;
            for (int64_t i = 0; i < Dk; i++) d += to_f32(qh[i]) * to_f32(k[(j * Hk + g) * Dk + i]);
            for (int64_t i = 0; i < Ds; i++) d += to_f32(qh[Dk + i]) * to_f32(ks[j * Ds + i]);
            s = scale * d;
        }
        const float m = block_max(s, red);
        const float e = j < n ? expf(s - m) : 0.0f;
        p[threadIdx.x] = e;
        const float l = block_sum(e, red); /* its barriers also publish p */
        for (int64_t d = threadIdx.x; d < Dv; d += blockDim.x) {
            float o = 0.0f;
            for (int64_t jj = 0; jj < len; jj++) o += p[jj] * to_f32(v[((j0 + jj) * Hk + g) * Dv + d]);
            acc[(task * group + hi) * Dv + d] = o;
        }
        if (threadIdx.x == 0) {
            mx[task * group + hi] = m;
            sum[task * group + hi] = l;
        }
        __syncthreads(); /* p is rewritten for the next head */
    }
}

/* out[h] = sum_c exp(mx_c - M) acc_c / sum_c exp(mx_c - M) sum_c over the chunks in order. */
template <typename T>
__global__ void attention_decode_combine(T *out, const float *mx, const float *sum, const float *acc, int64_t group,
                                         int64_t nchunks, int64_t Dv) {
    const int64_t h = blockIdx.x, g = h / group, hi = h % group;
    float m = -INFINITY, l = 0.0f;
    for (int64_t c = 0; c < nchunks; c++) m = fmaxf(m, mx[(g * nchunks + c) * group + hi]);
    for (int64_t c = 0; c < nchunks; c++) {
        const int64_t t = (g * nchunks + c) * group + hi;
        l += expf(mx[t] - m) * sum[t];
    }
    for (int64_t d = threadIdx.x; d < Dv; d += blockDim.x) {
        float o = 0.0f;
        for (int64_t c = 0; c < nchunks; c++) {
            const int64_t t = (g * nchunks + c) * group + hi;
            o += expf(mx[t] - m) * acc[t * Dv + d];
        }
        out[h * Dv + d] = from_f32<T>(o * (1.0f / l));
    }
}

Status cuda_attention_decode(Backend *be, Tensor out, Tensor q, Tensor k, Tensor k_shared, Tensor v, float scale) {
    const char *op = "attention_decode";
    DType dt = DT_F32;
    StorageArg args[] = {{"out", out}, {"q", q}, {"k", k}, {"k_shared", k_shared}, {"v", v}};
    TRY(storage_dtype(op, args, 5, &dt));
    DecodeDims dm;
    TRY(attention_decode_check(out, q, k, k_shared, v, scale, dt, &dm));
    const int64_t group = dm.H / dm.Hk, nchunks = (dm.n + DECODE_CHUNK - 1) / DECODE_CHUNK;
    if (nchunks > 65535) return errorf("%s: %lld cached tokens, more than this kernel's %lld", op, (long long)dm.n,
                                       (long long)65535 * DECODE_CHUNK);
    const int64_t partials = dm.Hk * nchunks * group;
    size_t total = 0;
    const size_t at_mx = cuda_scratch_size(&total, (size_t)partials * sizeof(float));
    const size_t at_sum = cuda_scratch_size(&total, (size_t)partials * sizeof(float));
    const size_t at_acc = cuda_scratch_size(&total, (size_t)(partials * (dm.Dv > 0 ? dm.Dv : 1)) * sizeof(float));
    void *scratch = NULL;
    TRY(cuda_scratch(be, total, &scratch));
    float *mx = (float *)((char *)scratch + at_mx), *sum = (float *)((char *)scratch + at_sum);
    float *acc = (float *)((char *)scratch + at_acc);
    cudaStream_t stream = cuda_state(be)->stream;
    const dim3 grid((unsigned)dm.Hk, (unsigned)nchunks);
    WITH_STORAGE(dt, T, {
        attention_decode_chunks<T><<<grid, REDUCE_BLOCK_THREADS, 0, stream>>>(
            mx, sum, acc, (const T *)q.data, (const T *)k.data, dm.Ds ? (const T *)k_shared.data : (const T *)NULL,
            (const T *)v.data, dm.n, dm.Hk, group, dm.Dk, dm.Ds, dm.Dv, nchunks, scale);
        attention_decode_combine<T><<<(unsigned)dm.H, COMBINE_THREADS, 0, stream>>>((T *)out.data, mx, sum, acc, group,
                                                                                   nchunks, dm.Dv);
    });
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}
