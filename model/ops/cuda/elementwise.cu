/* Whole-tensor ops on the GPU: scaling, accumulation, dtype casts and the deterministic two-pass
 * sum of squares behind the global gradient norm (fixed grid, fixed order: the same bits every run). */
#include <math.h>

#include "cuda_ops.h"
#include "cuda_state.h"
#include "storage.cuh"

static const int ELEMENTWISE_THREADS = 256;
static const int REDUCE_THREADS = 256;

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

/* Pass 1: block b sums the squares of a grid-stride slice into partial[b], a tree in shared
 * memory whose shape depends only on the block size. */
template <typename T> __global__ void sum_squares_partial_kernel(const T *x, int64_t n, double *partial) {
    __shared__ double shared[REDUCE_THREADS];
    double s = 0;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        double xi = to_f32(x[i]);
        s += xi * xi;
    }
    shared[threadIdx.x] = s;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = shared[0];
}

/* Pass 2: one thread adds the partials in block order. */
__global__ void sum_partials_kernel(double *partial, int nblocks) {
    double s = 0;
    for (int b = 0; b < nblocks; b++) s += partial[b];
    partial[0] = s;
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

Status cuda_sum_squares(Backend *be, double *out, Tensor t) {
    DType dt = DT_F32;
    StorageArg args[] = {{"t", t}};
    TRY(storage_dtype("sum_squares", args, 1, &dt));
    if (!tensor_present(t)) return errorf("sum_squares: t must be present");
    CudaState *st = cuda_state(be);
    int64_t n = tensor_numel(t);
    if (dt == DT_BF16)
        sum_squares_partial_kernel<<<CUDA_REDUCE_BLOCKS, REDUCE_THREADS, 0, st->stream>>>(
            (const bf16 *)t.data, n, st->reduce_scratch);
    else
        sum_squares_partial_kernel<<<CUDA_REDUCE_BLOCKS, REDUCE_THREADS, 0, st->stream>>>(
            (const float *)t.data, n, st->reduce_scratch);
    CUDA_TRY_LAUNCH();
    sum_partials_kernel<<<1, 1, 0, st->stream>>>(st->reduce_scratch, CUDA_REDUCE_BLOCKS);
    CUDA_TRY_LAUNCH();
    CUDA_TRY(cudaMemcpyAsync(out, st->reduce_scratch, sizeof(double), cudaMemcpyDeviceToHost, st->stream));
    CUDA_TRY(cudaStreamSynchronize(st->stream));
    return cuda_index_checks_resolve(be);
}
