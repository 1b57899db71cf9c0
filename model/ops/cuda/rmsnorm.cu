/* RMSNorm over the last dimension on the GPU, forward and backward: one block per row with the
 * row's sums in double (as the CPU forms them), and the weight gradient from per-block partials
 * added in a fixed order. */
#include <math.h>

#include "block_reduce.cuh"
#include "cuda_ops.h"
#include "cuda_state.h"

/* Rows per partial sum of the weight gradient: each (row block, column) partial is one thread's
 * running sum in row order. */
static const int RMSNORM_PARTIAL_ROWS = 256;

static int grid_rows(int64_t rows) { return (int)(rows < 65535 * 8 ? (rows > 0 ? rows : 1) : 65535 * 8); }

/* y[n, :] = x[n, :] * rstd[n] * w;  rstd[n] = 1 / sqrt(mean(x[n, :]^2) + eps). */
__global__ void rmsnorm_forward_f32(float *y, float *rstd, const float *x, const float *w, int64_t N, int64_t D,
                                    float eps) {
    __shared__ double shared[REDUCE_BLOCK_THREADS];
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        const float *xr = x + n * D;
        double ss = 0;
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) ss += (double)xr[d] * xr[d];
        ss = block_sum(ss, shared);
        float r = 1.0f / sqrtf((float)(ss / (double)D) + eps);
        if (threadIdx.x == 0) rstd[n] = r;
        float *yr = y + n * D;
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) yr[d] = (xr[d] * r) * w[d];
    }
}

/* dx[n, :] = rstd * (w*dy - x * rstd^2 * mean(w*dy*x)). */
__global__ void rmsnorm_backward_dx_f32(float *dx, const float *dy, const float *x, const float *w,
                                        const float *rstd, int64_t N, int64_t D) {
    __shared__ double shared[REDUCE_BLOCK_THREADS];
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        const float *xr = x + n * D, *gr = dy + n * D;
        double dot = 0;
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dot += (double)(w[d] * gr[d]) * xr[d];
        dot = block_sum(dot, shared);
        float r = rstd[n];
        float c = r * r * (float)(dot / (double)D);
        float *dxr = dx + n * D;
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dxr[d] = r * (w[d] * gr[d] - xr[d] * c);
    }
}

/* partial[b, d] = sum over rows of block b of dy * (x * rstd), in row order. */
__global__ void rmsnorm_dw_partials_f32(float *partial, const float *dy, const float *x, const float *rstd,
                                        int64_t N, int64_t D) {
    int64_t b = blockIdx.y;
    int64_t n0 = b * RMSNORM_PARTIAL_ROWS, n1 = n0 + RMSNORM_PARTIAL_ROWS < N ? n0 + RMSNORM_PARTIAL_ROWS : N;
    for (int64_t d = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; d < D; d += (int64_t)gridDim.x * blockDim.x) {
        float s = 0;
        for (int64_t n = n0; n < n1; n++) s += dy[n * D + d] * (x[n * D + d] * rstd[n]);
        partial[b * D + d] = s;
    }
}

/* dw[d] += sum over b of partial[b, d], in block order. */
__global__ void column_partials_accumulate_f32(float *dw, const float *partial, int64_t nblocks, int64_t D) {
    for (int64_t d = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; d < D; d += (int64_t)gridDim.x * blockDim.x) {
        float s = 0;
        for (int64_t b = 0; b < nblocks; b++) s += partial[b * D + d];
        dw[d] += s;
    }
}

Status cuda_rmsnorm_forward(Backend *be, Tensor y, Tensor rstd, Tensor x, Tensor w, float eps) {
    TRY(tensor_check_dims("rmsnorm_forward", "x", x, DT_F32, 2, -1, -1));
    int64_t N = x.shape[0], D = x.shape[1];
    TRY(tensor_check_dims("rmsnorm_forward", "w", w, DT_F32, 1, D));
    TRY(tensor_check_dims("rmsnorm_forward", "y", y, DT_F32, 2, N, D));
    TRY(tensor_check_dims("rmsnorm_forward", "rstd", rstd, DT_F32, 1, N));
    if (!(eps >= 0)) return errorf("rmsnorm_forward: eps must be >= 0, got %g", eps);
    if (D == 0) return errorf("rmsnorm_forward: x has no columns (shape [%lld, 0])", (long long)N);
    if (N == 0) return STATUS_OK;
    rmsnorm_forward_f32<<<grid_rows(N), REDUCE_BLOCK_THREADS, 0, cuda_state(be)->stream>>>(
        tensor_f32(y), tensor_f32(rstd), tensor_f32(x), tensor_f32(w), N, D, eps);
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}

Status cuda_rmsnorm_backward(Backend *be, Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w, Tensor rstd) {
    TRY(tensor_check_dims("rmsnorm_backward", "x", x, DT_F32, 2, -1, -1));
    int64_t N = x.shape[0], D = x.shape[1];
    TRY(tensor_check_dims("rmsnorm_backward", "dx", dx, DT_F32, 2, N, D));
    if (tensor_present(dw)) TRY(tensor_check_dims("rmsnorm_backward", "dw", dw, DT_F32, 1, D));
    TRY(tensor_check_dims("rmsnorm_backward", "dy", dy, DT_F32, 2, N, D));
    TRY(tensor_check_dims("rmsnorm_backward", "w", w, DT_F32, 1, D));
    TRY(tensor_check_dims("rmsnorm_backward", "rstd", rstd, DT_F32, 1, N));
    if (D == 0) return errorf("rmsnorm_backward: x has no columns (shape [%lld, 0])", (long long)N);
    if (N == 0) return STATUS_OK;
    CudaState *st = cuda_state(be);
    rmsnorm_backward_dx_f32<<<grid_rows(N), REDUCE_BLOCK_THREADS, 0, st->stream>>>(
        tensor_f32(dx), tensor_f32(dy), tensor_f32(x), tensor_f32(w), tensor_f32(rstd), N, D);
    CUDA_TRY_LAUNCH();
    if (!tensor_present(dw)) return STATUS_OK;

    int64_t nblocks = (N + RMSNORM_PARTIAL_ROWS - 1) / RMSNORM_PARTIAL_ROWS;
    if (nblocks > 65535) return errorf("rmsnorm_backward: %lld rows exceed the partial-sum grid", (long long)N);
    void *partial;
    TRY(cuda_scratch(be, (size_t)nblocks * (size_t)D * sizeof(float), &partial));
    int col_blocks = (int)((D + REDUCE_BLOCK_THREADS - 1) / REDUCE_BLOCK_THREADS);
    if (col_blocks > 4096) col_blocks = 4096;
    rmsnorm_dw_partials_f32<<<dim3(col_blocks, (unsigned)nblocks), REDUCE_BLOCK_THREADS, 0, st->stream>>>(
        (float *)partial, tensor_f32(dy), tensor_f32(x), tensor_f32(rstd), N, D);
    CUDA_TRY_LAUNCH();
    column_partials_accumulate_f32<<<col_blocks, REDUCE_BLOCK_THREADS, 0, st->stream>>>(
        tensor_f32(dw), (const float *)partial, nblocks, D);
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}
