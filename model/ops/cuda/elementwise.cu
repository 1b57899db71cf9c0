/* Whole-tensor ops on the GPU: scaling, accumulation and the deterministic two-pass sum of
 * squares behind the global gradient norm (fixed grid, fixed order: the same bits every run). */
#include <math.h>

#include "cuda_ops.h"
#include "cuda_state.h"

static const int ELEMENTWISE_THREADS = 256;
static const int REDUCE_THREADS = 256;

static int elementwise_blocks(int64_t n) {
    int64_t b = (n + ELEMENTWISE_THREADS - 1) / ELEMENTWISE_THREADS;
    return (int)(b < 65535 * 16 ? (b > 0 ? b : 1) : 65535 * 16);
}

__global__ void scale_f32_kernel(float *x, int64_t n, float s) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        x[i] *= s;
}

__global__ void accumulate_f32_kernel(float *y, const float *x, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] += x[i];
}

/* Pass 1: block b sums the squares of a grid-stride slice into partial[b], a tree in shared
 * memory whose shape depends only on the block size. */
__global__ void sum_squares_partial_kernel(const float *x, int64_t n, double *partial) {
    __shared__ double shared[REDUCE_THREADS];
    double s = 0;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        s += (double)x[i] * x[i];
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
    if (t.data == NULL || t.dtype != DT_F32) return errorf("scale: expected an f32 tensor");
    int64_t n = tensor_numel(t);
    scale_f32_kernel<<<elementwise_blocks(n), ELEMENTWISE_THREADS, 0, cuda_state(be)->stream>>>(
        tensor_f32(t), n, s);
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}

Status cuda_accumulate(Backend *be, Tensor y, Tensor x) {
    TRY(tensor_check("accumulate", "y", y, DT_F32, y.ndim, y.shape));
    TRY(tensor_check("accumulate", "x", x, DT_F32, y.ndim, y.shape));
    int64_t n = tensor_numel(y);
    accumulate_f32_kernel<<<elementwise_blocks(n), ELEMENTWISE_THREADS, 0, cuda_state(be)->stream>>>(
        tensor_f32(y), tensor_f32(x), n);
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}

Status cuda_sum_squares(Backend *be, double *out, Tensor t) {
    if (t.data == NULL || t.dtype != DT_F32) return errorf("sum_squares: expected an f32 tensor");
    CudaState *st = cuda_state(be);
    int64_t n = tensor_numel(t);
    sum_squares_partial_kernel<<<CUDA_REDUCE_BLOCKS, REDUCE_THREADS, 0, st->stream>>>(
        tensor_f32(t), n, st->reduce_scratch);
    CUDA_TRY_LAUNCH();
    sum_partials_kernel<<<1, 1, 0, st->stream>>>(st->reduce_scratch, CUDA_REDUCE_BLOCKS);
    CUDA_TRY_LAUNCH();
    CUDA_TRY(cudaMemcpyAsync(out, st->reduce_scratch, sizeof(double), cudaMemcpyDeviceToHost, st->stream));
    CUDA_TRY(cudaStreamSynchronize(st->stream));
    return STATUS_OK;
}
