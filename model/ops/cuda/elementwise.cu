/* Whole-tensor ops on the GPU: scaling, accumulation, dtype casts and the deterministic two-pass
 * sum of squares behind the global gradient norm, over any number of tensors at once (fixed chunks,
 * fixed order: the same bits every run). */
#include <math.h>

#include "cuda_ops.h"
#include "cuda_state.h"
#include "block_reduce.cuh"
#include "multi_tensor.cuh"
#include "storage.cuh"

static const int ELEMENTWISE_THREADS = 256;
/* Values per block of the sum of squares. */
static const int64_t SQUARES_CHUNK = 65536;

static int elementwise_blocks(int64_t n) {
    int64_t b = (n + ELEMENTWISE_THREADS - 1) / ELEMENTWISE_THREADS;
    return (int)(b < 65535 * 16 ? (b > 0 ? b : 1) : 65535 * 16);
}

template <typename T> __global__ void scale_kernel(T *x, int64_t n, float s) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        x[i] = from_f32<T>(to_f32(x[i]) * s);
}

template <typename T> __global__ void accumulate_kernel(T *y, const T *x, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = from_f32<T>(to_f32(y[i]) + to_f32(x[i]));
}

template <typename D, typename S> __global__ void cast_kernel(D *dst, const S *src, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = from_f32<D>(to_f32(src[i]));
}

/* Pass 1: block b sums the squares of one chunk of one tensor into partial[base + b], each thread
 * a strided slice, then a fixed tree (block_sum): the order depends on the sizes alone. */
template <typename T> struct SquaresTensor {
    const T *x;
    int64_t n;
};

template <typename T>
__global__ void sum_squares_chunks_kernel(TensorBatch<SquaresTensor<T> > batch, double *partial) {
    __shared__ double shared[REDUCE_BLOCK_THREADS];
    const int ti = batch_tensor_of(batch, blockIdx.x);
    const SquaresTensor<T> t = batch.t[ti];
    const int64_t start = (blockIdx.x - batch.first_block[ti]) * SQUARES_CHUNK;
    const int64_t end = start + SQUARES_CHUNK < t.n ? start + SQUARES_CHUNK : t.n;
    double s = 0;
    for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
        double xi = to_f32(t.x[i]);
        s += xi * xi;
    }
    s = block_sum(s, shared);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

/* Pass 2: one block; thread k adds the partials k, k + 256, ... in order, then the tree. */
__global__ void sum_partials_kernel(double *partial, int64_t count) {
    __shared__ double shared[REDUCE_BLOCK_THREADS];
    double s = 0;
    for (int64_t b = threadIdx.x; b < count; b += blockDim.x) s += partial[b];
    s = block_sum(s, shared);
    if (threadIdx.x == 0) partial[count] = s;
}

template <typename T>
static Status sum_squares_launch(Backend *be, TensorBatch<SquaresTensor<T> > *batch, double *partial,
                                 int64_t *done) {
    int64_t blocks = batch_blocks(*batch);
    if (blocks > 0) {
        sum_squares_chunks_kernel<T><<<(unsigned)blocks, REDUCE_BLOCK_THREADS, 0, cuda_state(be)->stream>>>(
            *batch, partial + *done);
        CUDA_TRY_LAUNCH();
    }
    *done += blocks;
    batch_clear(batch);
    return STATUS_OK;
}

template <typename T>
static Status sum_squares_chunks(Backend *be, const Tensor *ts, int n, double *partial) {
    TensorBatch<SquaresTensor<T> > batch;
    batch_clear(&batch);
    int64_t done = 0;
    for (int i = 0; i < n; i++) {
        int64_t len = tensor_numel(ts[i]);
        if (len == 0) continue;
        SquaresTensor<T> t = {(const T *)ts[i].data, len};
        if (batch_add(&batch, t, len, SQUARES_CHUNK)) TRY(sum_squares_launch(be, &batch, partial, &done));
    }
    return sum_squares_launch(be, &batch, partial, &done);
}

Status cuda_sum_squares_multi(Backend *be, double *out, const Tensor *ts, int n) {
    const char *op = "sum_squares_multi";
    DType dt = DT_F32;
    int noted = 0;
    int64_t chunks = 0;
    for (int i = 0; i < n; i++) {
        if (!tensor_present(ts[i])) return errorf("%s: tensor %d must be present", op, i);
        TRY(storage_dtype_note(op, "ts", ts[i], &noted, &dt));
        chunks += (tensor_numel(ts[i]) + SQUARES_CHUNK - 1) / SQUARES_CHUNK;
    }
    CudaState *st = cuda_state(be);
    void *space;
    TRY(cuda_scratch(be, (size_t)(chunks + 1) * sizeof(double), &space));
    double *partial = (double *)space;
    if (dt == DT_BF16) TRY(sum_squares_chunks<bf16>(be, ts, n, partial));
    else TRY(sum_squares_chunks<float>(be, ts, n, partial));
    sum_partials_kernel<<<1, REDUCE_BLOCK_THREADS, 0, st->stream>>>(partial, chunks);
    CUDA_TRY_LAUNCH();
    CUDA_TRY(cudaMemcpyAsync(out, partial + chunks, sizeof(double), cudaMemcpyDeviceToHost, st->stream));
    CUDA_TRY(cudaStreamSynchronize(st->stream));
    return cuda_index_checks_resolve(be);
}

Status cuda_sum_squares(Backend *be, double *out, Tensor t) {
    if (!tensor_present(t)) return errorf("sum_squares: t must be present");
    DType dt = DT_F32;
    StorageArg args[] = {{"t", t}};
    TRY(storage_dtype("sum_squares", args, 1, &dt));
    return cuda_sum_squares_multi(be, out, &t, 1);
}

Status cuda_scale(Backend *be, Tensor t, float s) {
    DType dt = DT_F32;
    StorageArg args[] = {{"t", t}};
    TRY(storage_dtype("scale", args, 1, &dt));
    if (!tensor_present(t)) return errorf("scale: t must be present");
    int64_t n = tensor_numel(t);
    cudaStream_t stream = cuda_state(be)->stream;
    if (dt == DT_BF16) scale_kernel<<<elementwise_blocks(n), ELEMENTWISE_THREADS, 0, stream>>>((bf16 *)t.data, n, s);
    else scale_kernel<<<elementwise_blocks(n), ELEMENTWISE_THREADS, 0, stream>>>((float *)t.data, n, s);
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}

Status cuda_accumulate(Backend *be, Tensor y, Tensor x) {
    DType dt = DT_F32;
    StorageArg args[] = {{"y", y}, {"x", x}};
    TRY(storage_dtype("accumulate", args, 2, &dt));
    TRY(tensor_check("accumulate", "y", y, dt, y.ndim, y.shape));
    TRY(tensor_check("accumulate", "x", x, dt, y.ndim, y.shape));
    int64_t n = tensor_numel(y);
    cudaStream_t stream = cuda_state(be)->stream;
    if (dt == DT_BF16)
        accumulate_kernel<<<elementwise_blocks(n), ELEMENTWISE_THREADS, 0, stream>>>((bf16 *)y.data,
                                                                                     (const bf16 *)x.data, n);
    else
        accumulate_kernel<<<elementwise_blocks(n), ELEMENTWISE_THREADS, 0, stream>>>((float *)y.data,
                                                                                     (const float *)x.data, n);
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}

Status cuda_cast(Backend *be, Tensor dst, Tensor src) {
    if (!tensor_present(dst) || !tensor_present(src)) return errorf("cast: dst and src must be present");
    int64_t n = tensor_numel(src);
    if (tensor_numel(dst) != n)
        return errorf("cast: dst holds %lld values, src %lld", (long long)tensor_numel(dst), (long long)n);
    cudaStream_t stream = cuda_state(be)->stream;
    if (dst.dtype == src.dtype) {
        CUDA_TRY(cudaMemcpyAsync(dst.data, src.data, tensor_bytes(src), cudaMemcpyDeviceToDevice, stream));
        return STATUS_OK;
    }
    if (dst.dtype == DT_BF16 && src.dtype == DT_F32)
        cast_kernel<<<elementwise_blocks(n), ELEMENTWISE_THREADS, 0, stream>>>((bf16 *)dst.data,
                                                                               (const float *)src.data, n);
    else if (dst.dtype == DT_F32 && src.dtype == DT_BF16)
        cast_kernel<<<elementwise_blocks(n), ELEMENTWISE_THREADS, 0, stream>>>((float *)dst.data,
                                                                               (const bf16 *)src.data, n);
    else
        return errorf("cast: %s to %s is not supported", dtype_name(src.dtype), dtype_name(dst.dtype));
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}
