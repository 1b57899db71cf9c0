/* Decoding attention on the GPU: one token against the KV cache, GQA and absorbed MLA alike, split
 * over the keys as on the CPU. One block per (kv head, chunk of cached tokens), its warps taking the
 * group's query heads in turn: a warp forms a head's scores key by key (lanes over the key's dims,
 * one butterfly sum), its max and sum of exponentials, and the chunk's weighted values (lanes over
 * the value dims, keys in order). A second kernel combines the chunks of each head in order. The
 * chunk length comes from the sizes alone, short enough that even one kv head (absorbed MLA, whose
 * heads all read one latent) fills the GPU at long contexts. Float32 math on f32 or bf16 storage; no
 * atomics, so the bits depend on the sizes alone. */
#include <math.h>

#include "cuda_ops.h"
#include "cuda_state.h"
#include "storage.cuh"

enum { DECODE_WARPS = 4, DECODE_THREADS = 32 * DECODE_WARPS, DECODE_MAX_CHUNK = 256, DECODE_MIN_CHUNK = 32 };
static const int COMBINE_THREADS = 128;

/* Keys per block: the longest of 256, 128, 64, 32 that still makes 256 blocks (about two per SM of
 * an H100), so that the bits depend on n and Hk alone, not on the device. */
static int64_t decode_chunk(int64_t n, int64_t Hk) {
    int64_t chunk = DECODE_MAX_CHUNK;
    while (chunk > DECODE_MIN_CHUNK && Hk * ((n + chunk - 1) / chunk) < 256) chunk /= 2;
    return chunk;
}

/* The sum over the warp, the same butterfly (and bits) in every lane. */
__device__ static inline float decode_warp_sum(float x) {
    for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

/* Per (kv head g, chunk c) and query head hi of g's group: mx = the chunk's max score, sum = its
 * sum of exp(score - mx), acc[Dv] = its sum of exp(score - mx) v. Dynamic shared memory: per warp,
 * the head's query (Dq floats) and the chunk's scores, then weights (chunk floats). */
template <typename T>
__global__ void __launch_bounds__(DECODE_THREADS)
    attention_decode_chunks(float *mx, float *sum, float *acc, const T *q, const T *k, const T *ks, const T *v,
                            int64_t n, int64_t Hk, int64_t group, int64_t Dk, int64_t Ds, int64_t Dv, int64_t nchunks,
                            int64_t chunk, float scale) {
    extern __shared__ float smem[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t g = blockIdx.x, c = blockIdx.y, j0 = c * chunk, Dq = Dk + Ds, task = g * nchunks + c;
    const int64_t len = n - j0 < chunk ? n - j0 : chunk;
    float *qw = smem + warp * (Dq + chunk), *pw = qw + Dq;
    for (int64_t hi = warp; hi < group; hi += DECODE_WARPS) {
        const T *qh = q + (g * group + hi) * Dq;
        for (int64_t i = lane; i < Dq; i += 32) qw[i] = to_f32(qh[i]);
        __syncwarp();
        float m = -INFINITY;
        for (int64_t jj = 0; jj < len; jj++) {
            const int64_t j = j0 + jj;
            const T *kj = k + (j * Hk + g) * Dk;
            float d = 0.0f;
            for (int64_t i = lane; i < Dk; i += 32) d += qw[i] * to_f32(kj[i]);
            for (int64_t i = lane; i < Ds; i += 32) d += qw[Dk + i] * to_f32(ks[j * Ds + i]);
            const float s = scale * decode_warp_sum(d);
            if (lane == (int)(jj % 32)) pw[jj] = s;
            m = fmaxf(m, s);
        }
        __syncwarp();
        float l = 0.0f;
        for (int64_t jj = lane; jj < len; jj += 32) {
            const float e = expf(pw[jj] - m);
            pw[jj] = e;
            l += e;
        }
        l = decode_warp_sum(l);
        __syncwarp();
        for (int64_t d = lane; d < Dv; d += 32) {
            float o = 0.0f;
            for (int64_t jj = 0; jj < len; jj++) o += pw[jj] * to_f32(v[((j0 + jj) * Hk + g) * Dv + d]);
            acc[(task * group + hi) * Dv + d] = o;
        }
        if (lane == 0) {
            mx[task * group + hi] = m;
            sum[task * group + hi] = l;
        }
        __syncwarp(); /* qw and pw are rewritten for the warp's next head */
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
    const int64_t group = dm.H / dm.Hk, chunk = decode_chunk(dm.n, dm.Hk), nchunks = (dm.n + chunk - 1) / chunk;
    if (nchunks > 65535) return errorf("%s: %lld cached tokens, more than this kernel's %lld", op, (long long)dm.n,
                                       (long long)65535 * chunk);
    const size_t smem_bytes = (size_t)DECODE_WARPS * (size_t)(dm.Dk + dm.Ds + chunk) * sizeof(float);
    if (smem_bytes > 48 * 1024)
        return errorf("%s: query heads of width %lld need %zu bytes of shared memory, more than this kernel's 48 KiB", op,
                      (long long)(dm.Dk + dm.Ds), smem_bytes);
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
        attention_decode_chunks<T><<<grid, DECODE_THREADS, smem_bytes, stream>>>(
            mx, sum, acc, (const T *)q.data, (const T *)k.data, dm.Ds ? (const T *)k_shared.data : (const T *)NULL,
            (const T *)v.data, dm.n, dm.Hk, group, dm.Dk, dm.Ds, dm.Dv, nchunks, chunk, scale);
        attention_decode_combine<T><<<(unsigned)dm.H, COMBINE_THREADS, 0, stream>>>((T *)out.data, mx, sum, acc, group,
                                                                                   nchunks, dm.Dv);
    });
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}
