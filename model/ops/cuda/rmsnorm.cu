/* RMSNorm over the last dimension on the GPU, forward and backward: one block per row with the
 * row's sums in double (as the CPU forms them), and the weight gradient from per-block partials
 * added in a fixed order. */
#include <math.h>

#include "block_reduce.cuh"
#include "cuda_ops.h"
#include "cuda_state.h"
#include "storage.cuh"

/* Rows per partial sum of the weight gradient: each (row block, column) partial is one thread's
 * running sum in row order. */
static const int RMSNORM_PARTIAL_ROWS = 256;

static int grid_rows(int64_t rows) { return (int)(rows < 65535 * 8 ? (rows > 0 ? rows : 1) : 65535 * 8); }

/* y[n, :] = x[n, :] * rstd[n] * w;  rstd[n] = 1 / sqrt(mean(x[n, :]^2) + eps). */
template <typename T>
__global__ void rmsnorm_forward_rows(T *y, float *rstd, const T *x, const T *w, int64_t N, int64_t D, float eps) {
    __shared__ double shared[REDUCE_BLOCK_THREADS];
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        const T *xr = x + n * D;
        double ss = 0;
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
            double xd = to_f32(xr[d]);
            ss += xd * xd;
        }
        ss = block_sum(ss, shared);
        float r = 1.0f / sqrtf((float)(ss / (double)D) + eps);
        if (threadIdx.x == 0) rstd[n] = r;
        T *yr = y + n * D;
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) yr[d] = from_f32<T>((to_f32(xr[d]) * r) * to_f32(w[d]));
    }
}

/* dx[n, :] = rstd * (w*dy - x * rstd^2 * mean(w*dy*x)) (+ dres[n, :] when given, before rounding). */
template <typename T>
__global__ void rmsnorm_backward_dx(T *dx, const T *dy, const T *x, const T *w, const float *rstd, const T *dres,
                                    int64_t N, int64_t D) {
    __shared__ double shared[REDUCE_BLOCK_THREADS];
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        const T *xr = x + n * D, *gr = dy + n * D;
        double dot = 0;
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
            dot += (double)(to_f32(w[d]) * to_f32(gr[d])) * to_f32(xr[d]);
        dot = block_sum(dot, shared);
        float r = rstd[n];
        float c = r * r * (float)(dot / (double)D);
        T *dxr = dx + n * D;
        if (dres) {
            const T *rr = dres + n * D;
            for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
                dxr[d] = from_f32<T>(r * (to_f32(w[d]) * to_f32(gr[d]) - to_f32(xr[d]) * c) + to_f32(rr[d]));
        } else {
            for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
                dxr[d] = from_f32<T>(r * (to_f32(w[d]) * to_f32(gr[d]) - to_f32(xr[d]) * c));
        }
    }
}

/* partial[b, d] = sum over rows of block b of dy * (x * rstd), in row order. */
template <typename T>
__global__ void rmsnorm_dw_partials(float *partial, const T *dy, const T *x, const float *rstd, int64_t N, int64_t D) {
    int64_t b = blockIdx.y;
    int64_t n0 = b * RMSNORM_PARTIAL_ROWS, n1 = n0 + RMSNORM_PARTIAL_ROWS < N ? n0 + RMSNORM_PARTIAL_ROWS : N;
    for (int64_t d = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; d < D; d += (int64_t)gridDim.x * blockDim.x) {
        float s = 0;
        for (int64_t n = n0; n < n1; n++) s += to_f32(dy[n * D + d]) * (to_f32(x[n * D + d]) * rstd[n]);
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
    DType dt = DT_F32;
    StorageArg args[] = {{"y", y}, {"x", x}, {"w", w}};
    TRY(storage_dtype("rmsnorm_forward", args, 3, &dt));
    TRY(tensor_check_dims("rmsnorm_forward", "x", x, dt, 2, -1, -1));
    int64_t N = x.shape[0], D = x.shape[1];
    TRY(tensor_check_dims("rmsnorm_forward", "w", w, dt, 1, D));
    TRY(tensor_check_dims("rmsnorm_forward", "y", y, dt, 2, N, D));
    TRY(tensor_check_dims("rmsnorm_forward", "rstd", rstd, DT_F32, 1, N));
    if (!(eps >= 0)) return errorf("rmsnorm_forward: eps must be >= 0, got %g", eps);
    if (D == 0) return errorf("rmsnorm_forward: x has no columns (shape [%lld, 0])", (long long)N);
    if (N == 0) return STATUS_OK;
    WITH_STORAGE(dt, T,
                 rmsnorm_forward_rows<<<grid_rows(N), REDUCE_BLOCK_THREADS, 0, cuda_state(be)->stream>>>(
                     (T *)y.data, tensor_f32(rstd), (const T *)x.data, (const T *)w.data, N, D, eps));
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}

/* dres absent: the plain backward. */
static Status rmsnorm_backward_with(Backend *be, const char *op, Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w,
                                    Tensor rstd, Tensor dres) {
    DType dt = DT_F32;
    StorageArg args[] = {{"dx", dx}, {"dy", dy}, {"x", x}, {"w", w}, {"dres", dres}};
    TRY(storage_dtype(op, args, 5, &dt));
    TRY(tensor_check_dims(op, "x", x, dt, 2, -1, -1));
    int64_t N = x.shape[0], D = x.shape[1];
    TRY(tensor_check_dims(op, "dx", dx, dt, 2, N, D));
    if (tensor_present(dw)) TRY(tensor_check_dims(op, "dw", dw, DT_F32, 1, D));
    TRY(tensor_check_dims(op, "dy", dy, dt, 2, N, D));
    TRY(tensor_check_dims(op, "w", w, dt, 1, D));
    TRY(tensor_check_dims(op, "rstd", rstd, DT_F32, 1, N));
    if (tensor_present(dres)) {
        TRY(tensor_check_dims(op, "dres", dres, dt, 2, N, D));
        if (dres.data == dx.data) return errorf("%s: dx and dres must be different memory", op);
    }
    if (D == 0) return errorf("%s: x has no columns (shape [%lld, 0])", op, (long long)N);
    if (N == 0) return STATUS_OK;
    CudaState *st = cuda_state(be);
    WITH_STORAGE(dt, T,
                 rmsnorm_backward_dx<<<grid_rows(N), REDUCE_BLOCK_THREADS, 0, st->stream>>>(
                     (T *)dx.data, (const T *)dy.data, (const T *)x.data, (const T *)w.data, tensor_f32(rstd),
                     (const T *)dres.data, N, D));
    CUDA_TRY_LAUNCH();
    if (!tensor_present(dw)) return STATUS_OK;

    int64_t nblocks = (N + RMSNORM_PARTIAL_ROWS - 1) / RMSNORM_PARTIAL_ROWS;
    if (nblocks > 65535) return errorf("%s: %lld rows exceed the partial-sum grid", op, (long long)N);
    void *partial;
    TRY(cuda_scratch(be, (size_t)nblocks * (size_t)D * sizeof(float), &partial));
    int col_blocks = (int)((D + REDUCE_BLOCK_THREADS - 1) / REDUCE_BLOCK_THREADS);
    if (col_blocks > 4096) col_blocks = 4096;
    dim3 grid(col_blocks, (unsigned)nblocks);
    WITH_STORAGE(dt, T,
                 rmsnorm_dw_partials<<<grid, REDUCE_BLOCK_THREADS, 0, st->stream>>>(
                     (float *)partial, (const T *)dy.data, (const T *)x.data, tensor_f32(rstd), N, D));
    CUDA_TRY_LAUNCH();
    column_partials_accumulate_f32<<<col_blocks, REDUCE_BLOCK_THREADS, 0, st->stream>>>(
        tensor_f32(dw), (const float *)partial, nblocks, D);
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}

Status cuda_rmsnorm_backward(Backend *be, Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w, Tensor rstd) {
    return rmsnorm_backward_with(be, "rmsnorm_backward", dx, dw, dy, x, w, rstd, tensor_none());
}

Status cuda_rmsnorm_residual_backward(Backend *be, Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w, Tensor rstd,
                                      Tensor dres) {
    if (!tensor_present(dres)) return errorf("rmsnorm_residual_backward: dres must be present");
    return rmsnorm_backward_with(be, "rmsnorm_residual_backward", dx, dw, dy, x, w, rstd, dres);
}
