/* The linear layer on the GPU, forward and backward: y = x w^T + b with HF's [out, in] weights,
 * the products through cuBLAS in float32 (weight gradients accumulated with beta = 1), the bias
 * and its gradient as kernels whose sums run in a fixed order. */
#include "cuda_ops.h"
#include "cuda_state.h"

static const int LINEAR_THREADS = 256;
/* Rows per partial sum of the bias gradient. */
static const int LINEAR_PARTIAL_ROWS = 256;

/* y[n, o] += b[o] */
__global__ void bias_add_f32(float *y, const float *b, int64_t N, int64_t O) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < N * O; i += (int64_t)gridDim.x * blockDim.x)
        y[i] += b[i % O];
}

/* partial[blk, o] = sum over the rows of block blk of dy[n, o], in row order. */
__global__ void bias_grad_partials_f32(float *partial, const float *dy, int64_t N, int64_t O) {
    int64_t blk = blockIdx.y;
    int64_t n0 = blk * LINEAR_PARTIAL_ROWS, n1 = n0 + LINEAR_PARTIAL_ROWS < N ? n0 + LINEAR_PARTIAL_ROWS : N;
    for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < O; o += (int64_t)gridDim.x * blockDim.x) {
        float s = 0;
        for (int64_t n = n0; n < n1; n++) s += dy[n * O + o];
        partial[blk * O + o] = s;
    }
}

/* db[o] += sum over blk of partial[blk, o], in block order. */
__global__ void bias_grad_accumulate_f32(float *db, const float *partial, int64_t nblocks, int64_t O) {
    for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < O; o += (int64_t)gridDim.x * blockDim.x) {
        float s = 0;
        for (int64_t blk = 0; blk < nblocks; blk++) s += partial[blk * O + o];
        db[o] += s;
    }
}

static int grid_for(int64_t n) {
    int64_t b = (n + LINEAR_THREADS - 1) / LINEAR_THREADS;
    return (int)(b < 65535 * 16 ? (b > 0 ? b : 1) : 65535 * 16);
}

Status cuda_linear_forward(Backend *be, Tensor y, Tensor x, Tensor w, Tensor b) {
    const char *op = "linear_forward";
    TRY(tensor_check_dims(op, "w", w, DT_F32, 2, -1, -1));
    int64_t O = w.shape[0], In = w.shape[1];
    TRY(tensor_check_dims(op, "x", x, DT_F32, 2, -1, In));
    int64_t N = x.shape[0];
    TRY(tensor_check_dims(op, "y", y, DT_F32, 2, N, O));
    if (tensor_present(b)) TRY(tensor_check_dims(op, "b", b, DT_F32, 1, O));
    if (N == 0 || O == 0) return STATUS_OK;
    /* y[N, O] = x[N, In] w[O, In]^T */
    TRY(cuda_sgemm(be, op, 0, 1, N, O, In, 1.0f, tensor_f32(x), In, tensor_f32(w), In, 0.0f, tensor_f32(y), O));
    if (tensor_present(b)) {
        bias_add_f32<<<grid_for(N * O), LINEAR_THREADS, 0, cuda_state(be)->stream>>>(tensor_f32(y), tensor_f32(b),
                                                                                     N, O);
        CUDA_TRY_LAUNCH();
    }
    return STATUS_OK;
}

static Status bias_grad_accumulate(Backend *be, float *db, const float *dy, int64_t N, int64_t O) {
    int64_t nblocks = (N + LINEAR_PARTIAL_ROWS - 1) / LINEAR_PARTIAL_ROWS;
    if (nblocks == 0 || O == 0) return STATUS_OK;
    if (nblocks > 65535) return errorf("linear_backward: %lld rows exceed the partial-sum grid", (long long)N);
    CudaState *st = cuda_state(be);
    void *partial;
    TRY(cuda_scratch(be, (size_t)nblocks * (size_t)O * sizeof(float), &partial));
    int col_blocks = (int)((O + LINEAR_THREADS - 1) / LINEAR_THREADS);
    if (col_blocks > 4096) col_blocks = 4096;
    bias_grad_partials_f32<<<dim3(col_blocks, (unsigned)nblocks), LINEAR_THREADS, 0, st->stream>>>(
        (float *)partial, dy, N, O);
    CUDA_TRY_LAUNCH();
    bias_grad_accumulate_f32<<<col_blocks, LINEAR_THREADS, 0, st->stream>>>(db, (const float *)partial, nblocks, O);
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}

Status cuda_linear_backward(Backend *be, Tensor dx, Tensor dw, Tensor db, Tensor dy, Tensor x, Tensor w) {
    const char *op = "linear_backward";
    TRY(tensor_check_dims(op, "w", w, DT_F32, 2, -1, -1));
    int64_t O = w.shape[0], In = w.shape[1];
    TRY(tensor_check_dims(op, "x", x, DT_F32, 2, -1, In));
    int64_t N = x.shape[0];
    TRY(tensor_check_dims(op, "dy", dy, DT_F32, 2, N, O));
    if (tensor_present(dx)) TRY(tensor_check_dims(op, "dx", dx, DT_F32, 2, N, In));
    if (tensor_present(dw)) TRY(tensor_check_dims(op, "dw", dw, DT_F32, 2, O, In));
    if (tensor_present(db)) TRY(tensor_check_dims(op, "db", db, DT_F32, 1, O));

    const float *pdy = tensor_f32(dy), *px = tensor_f32(x), *pw = tensor_f32(w);
    /* db first, as on the CPU: a failure leaves no gradient half-accumulated. */
    if (tensor_present(db)) TRY(bias_grad_accumulate(be, tensor_f32(db), pdy, N, O));
    /* dx[N, In] = dy[N, O] w[O, In] (O = 0: the empty sum, zeros) */
    if (tensor_present(dx))
        TRY(cuda_sgemm(be, op, 0, 0, N, In, O, 1.0f, pdy, O, pw, In, 0.0f, tensor_f32(dx), In));
    /* dw[O, In] += dy^T[O, N] x[N, In] */
    if (tensor_present(dw) && N > 0)
        TRY(cuda_sgemm(be, op, 1, 0, O, In, N, 1.0f, pdy, O, px, In, 1.0f, tensor_f32(dw), In));
    return STATUS_OK;
}
