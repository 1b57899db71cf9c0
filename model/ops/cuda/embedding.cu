/* Token embedding on the GPU: a row gather forward; backward sorts the token positions by id
 * (a stable radix sort) and lets one block own each id's run, summing its rows in token order. */
#include <cub/device/device_radix_sort.cuh>

#include "cuda_ops.h"
#include "cuda_state.h"
#include "storage.cuh"

static const int EMBEDDING_THREADS = 256;

static Status report_bad_id(const CudaIndexCheck *c, int64_t at, int32_t value) {
    return errorf("%s: ids[%lld] = %d is outside the vocabulary [0, %lld)", c->op, (long long)at, value,
                  (long long)c->limit);
}

/* The range check runs on the device and is reported at the next synchronisation point. */
static Status check_ids(Backend *be, const char *op, Tensor ids, int64_t vocab) {
    return cuda_check_indices(be, op, ids, vocab, 0, 0, report_bad_id);
}

/* out[n, :] = table[ids[n], :]; one block per token row. An id outside [0, V), which the queued
 * check reports, gives a row of zeros rather than a read outside the table. */
template <typename T>
__global__ void embedding_gather(T *out, const int32_t *ids, const T *table, int64_t N, int64_t V, int64_t D) {
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        const int32_t id = ids[n];
        T *dst = out + n * D;
        if (id < 0 || id >= V) {
            for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dst[d] = from_f32<T>(0.0f);
            continue;
        }
        const T *src = table + (int64_t)id * D;
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dst[d] = src[d];
    }
}

__global__ void token_positions_i32(int32_t *pos, int64_t N) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < N; i += (int64_t)gridDim.x * blockDim.x)
        pos[i] = (int32_t)i;
}

/* sorted_ids/order: the ids in ascending order and the token positions they came from, equal ids
 * in ascending position (the sort is stable). The block at the start of a run of one id adds the
 * run's rows of dout into that id's row of dtable, one column per thread, in token order: the
 * order the CPU uses, and no row is written by two blocks. */
template <typename T>
__global__ void embedding_scatter_runs(float *dtable, const T *dout, const int32_t *sorted_ids, const int32_t *order,
                                       int64_t N, int64_t V, int64_t D) {
    for (int64_t s = blockIdx.x; s < N; s += gridDim.x) {
        int32_t id = sorted_ids[s];
        if (s > 0 && sorted_ids[s - 1] == id) continue;
        if (id < 0 || id >= V) continue; /* reported by the queued check; never written */
        int64_t end = s + 1;
        while (end < N && sorted_ids[end] == id) end++;
        float *dst = dtable + (int64_t)id * D;
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
            float acc = dst[d];
            for (int64_t r = s; r < end; r++) acc += to_f32(dout[(int64_t)order[r] * D + d]);
            dst[d] = acc;
        }
    }
}

static int grid_rows(int64_t rows) { return (int)(rows < 65535 * 8 ? (rows > 0 ? rows : 1) : 65535 * 8); }

Status cuda_embedding_forward(Backend *be, Tensor out, Tensor ids, Tensor table) {
    DType dt = DT_F32;
    StorageArg args[] = {{"out", out}, {"table", table}};
    TRY(storage_dtype("embedding_forward", args, 2, &dt));
    TRY(tensor_check_dims("embedding_forward", "table", table, dt, 2, -1, -1));
    TRY(tensor_check_dims("embedding_forward", "ids", ids, DT_I32, 1, -1));
    int64_t V = table.shape[0], D = table.shape[1], N = ids.shape[0];
    TRY(tensor_check_dims("embedding_forward", "out", out, dt, 2, N, D));
    TRY(check_ids(be, "embedding_forward", ids, V));
    if (N == 0 || D == 0) return STATUS_OK;
    WITH_STORAGE(dt, T,
                 embedding_gather<<<grid_rows(N), EMBEDDING_THREADS, 0, cuda_state(be)->stream>>>(
                     (T *)out.data, tensor_i32(ids), (const T *)table.data, N, V, D));
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}

/* Bits the radix sort must look at for ids in [0, V). */
static int id_bits(int64_t V) {
    int bits = 1;
    while (bits < 31 && ((int64_t)1 << bits) < V) bits++;
    return bits;
}

Status cuda_embedding_backward(Backend *be, Tensor dtable, Tensor dout, Tensor ids) {
    DType dt = DT_F32;
    StorageArg args[] = {{"dout", dout}};
    TRY(storage_dtype("embedding_backward", args, 1, &dt));
    TRY(tensor_check_dims("embedding_backward", "dtable", dtable, DT_F32, 2, -1, -1));
    TRY(tensor_check_dims("embedding_backward", "ids", ids, DT_I32, 1, -1));
    int64_t V = dtable.shape[0], D = dtable.shape[1], N = ids.shape[0];
    TRY(tensor_check_dims("embedding_backward", "dout", dout, dt, 2, N, D));
    TRY(check_ids(be, "embedding_backward", ids, V));
    if (N == 0 || D == 0) return STATUS_OK;
    if (N > INT32_MAX) return errorf("embedding_backward: %lld tokens exceed the sort's int range", (long long)N);
    CudaState *st = cuda_state(be);

    /* Scratch: sorted ids, positions before and after the sort, and the sort's own workspace. */
    size_t sort_bytes = 0;
    CUDA_TRY(cub::DeviceRadixSort::SortPairs(NULL, sort_bytes, (const int32_t *)NULL, (int32_t *)NULL,
                                             (const int32_t *)NULL, (int32_t *)NULL, (int)N, 0, id_bits(V),
                                             st->stream));
    size_t ids_bytes = (size_t)N * sizeof(int32_t), total = 0;
    cuda_scratch_size(&total, ids_bytes);
    cuda_scratch_size(&total, ids_bytes);
    cuda_scratch_size(&total, ids_bytes);
    cuda_scratch_size(&total, sort_bytes);
    void *base;
    TRY(cuda_scratch(be, total, &base));
    char *cursor = (char *)base;
    int32_t *sorted_ids = (int32_t *)cuda_scratch_take(&cursor, ids_bytes);
    int32_t *positions = (int32_t *)cuda_scratch_take(&cursor, ids_bytes);
    int32_t *order = (int32_t *)cuda_scratch_take(&cursor, ids_bytes);
    void *sort_space = cuda_scratch_take(&cursor, sort_bytes);

    int blocks = (int)((N + EMBEDDING_THREADS - 1) / EMBEDDING_THREADS);
    token_positions_i32<<<blocks < 4096 ? blocks : 4096, EMBEDDING_THREADS, 0, st->stream>>>(positions, N);
    CUDA_TRY_LAUNCH();
    CUDA_TRY(cub::DeviceRadixSort::SortPairs(sort_space, sort_bytes, tensor_i32(ids), sorted_ids, positions, order,
                                             (int)N, 0, id_bits(V), st->stream));
    WITH_STORAGE(dt, T,
                 embedding_scatter_runs<<<grid_rows(N), EMBEDDING_THREADS, 0, st->stream>>>(
                     tensor_f32(dtable), (const T *)dout.data, sorted_ids, order, N, V, D));
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}
