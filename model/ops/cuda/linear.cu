/* The linear layer on the GPU, forward and backward: y = x w^T + b with HF's [out, in] weights.
 * float32 storage: cuBLAS sgemm (no TF32) and the bias as a kernel. bf16 storage: cuBLASLt with
 * f32 accumulation, the bias fused as its epilogue, weight gradients accumulated in f32 in place.
 * The bias gradient is a kernel whose sums run in a fixed order, for both. */
#include "cuda_ops.h"
#include "cuda_state.h"
#include "storage.cuh"

static const int LINEAR_THREADS = 256;
/* Rows per partial sum of the bias gradient. */
static const int LINEAR_PARTIAL_ROWS = 256;

/* y[n, o] += b[o] */
__global__ void bias_add_f32(float *y, const float *b, int64_t N, int64_t O) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < N * O; i += (int64_t)gridDim.x * blockDim.x)
        y[i] += b[i % O];
}

/* partial[blk, o] = sum over the rows of block blk of dy[n, o], in row order. */
template <typename T> __global__ void bias_grad_partials(float *partial, const T *dy, int64_t N, int64_t O) {
    int64_t blk = blockIdx.y;
    int64_t n0 = blk * LINEAR_PARTIAL_ROWS, n1 = n0 + LINEAR_PARTIAL_ROWS < N ? n0 + LINEAR_PARTIAL_ROWS : N;
    for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < O; o += (int64_t)gridDim.x * blockDim.x) {
        float s = 0;
        for (int64_t n = n0; n < n1; n++) s += to_f32(dy[n * O + o]);
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

/* Every product's first checks: w [O, In] and x [N, In] in the call's storage dtype. */
static Status check_weight_and_input(const char *op, Tensor x, Tensor w, DType dt, int64_t *N, int64_t *O,
                                     int64_t *In) {
    TRY(tensor_check_dims(op, "w", w, dt, 2, -1, -1));
    *O = w.shape[0];
    *In = w.shape[1];
    TRY(tensor_check_dims(op, "x", x, dt, 2, -1, *In));
    *N = x.shape[0];
    return STATUS_OK;
}

Status cuda_linear_forward(Backend *be, Tensor y, Tensor x, Tensor w, Tensor b) {
    const char *op = "linear_forward";
    DType dt = DT_F32;
    /* y may be f32 whatever the inputs (logits are kept in f32). */
    StorageArg args[] = {{"y", y.dtype == DT_F32 ? tensor_none() : y}, {"x", x}, {"w", w}, {"b", b}};
    TRY(storage_dtype(op, args, 4, &dt));
    int64_t N, O, In;
    TRY(check_weight_and_input(op, x, w, dt, &N, &O, &In));
    TRY(check_shape(op, "y", y, 2, N, O));
    if (tensor_present(b)) TRY(tensor_check_dims(op, "b", b, dt, 1, O));
    if (y.dtype != dt && tensor_present(b))
        return errorf("%s: a bias with an f32 output from %s inputs is not supported", op, dtype_name(dt));
    if (N == 0 || O == 0) return STATUS_OK;
    if (dt == DT_F32) {
        /* y[N, O] = x[N, In] w[O, In]^T */
        TRY(cuda_sgemm(be, op, 0, 1, N, O, In, 1.0f, tensor_f32(x), In, tensor_f32(w), In, 0.0f, tensor_f32(y), O));
        if (tensor_present(b)) {
            bias_add_f32<<<grid_for(N * O), LINEAR_THREADS, 0, cuda_state(be)->stream>>>(tensor_f32(y),
                                                                                         tensor_f32(b), N, O);
            CUDA_TRY_LAUNCH();
        }
        return STATUS_OK;
    }
    return cuda_gemm(be, op, 0, 1, N, O, In, 1.0f, x.data, In, w.data, In, dt, 0.0f, y.data, O, y.dtype,
                     tensor_present(b) ? b.data : NULL);
}

Status cuda_linear_residual_forward(Backend *be, Tensor y, Tensor x, Tensor w, Tensor r) {
    const char *op = "linear_residual_forward";
    DType dt = DT_F32;
    StorageArg args[] = {{"y", y}, {"x", x}, {"w", w}, {"r", r}};
    TRY(storage_dtype(op, args, 4, &dt));
    int64_t N, O, In;
    TRY(check_weight_and_input(op, x, w, dt, &N, &O, &In));
    TRY(tensor_check_dims(op, "y", y, dt, 2, N, O));
    TRY(tensor_check_dims(op, "r", r, dt, 2, N, O));
    if (y.data == r.data) return errorf("%s: y and r must be different memory", op);
    if (N == 0 || O == 0) return STATUS_OK;
    /* y = x w^T + 1 * r: the residual as the product's C, so the sum is rounded once */
    return cuda_gemm_into(be, op, 0, 1, N, O, In, 1.0f, x.data, In, w.data, In, dt, 1.0f, r.data, y.data, O, dt, NULL);
}

static Status bias_grad_accumulate(Backend *be, float *db, const void *dy, DType dt, int64_t N, int64_t O) {
    int64_t nblocks = (N + LINEAR_PARTIAL_ROWS - 1) / LINEAR_PARTIAL_ROWS;
    if (nblocks == 0 || O == 0) return STATUS_OK;
    if (nblocks > 65535) return errorf("linear_backward: %lld rows exceed the partial-sum grid", (long long)N);
    CudaState *st = cuda_state(be);
    void *partial;
    TRY(cuda_scratch(be, (size_t)nblocks * (size_t)O * sizeof(float), &partial));
    int col_blocks = (int)((O + LINEAR_THREADS - 1) / LINEAR_THREADS);
    if (col_blocks > 4096) col_blocks = 4096;
    dim3 grid(col_blocks, (unsigned)nblocks);
    if (dt == DT_BF16)
        bias_grad_partials<<<grid, LINEAR_THREADS, 0, st->stream>>>((float *)partial, (const bf16 *)dy, N, O);
    else
        bias_grad_partials<<<grid, LINEAR_THREADS, 0, st->stream>>>((float *)partial, (const float *)dy, N, O);
    CUDA_TRY_LAUNCH();
    bias_grad_accumulate_f32<<<col_blocks, LINEAR_THREADS, 0, st->stream>>>(db, (const float *)partial, nblocks, O);
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}

Status cuda_linear_backward(Backend *be, Tensor dx, Tensor dw, Tensor db, Tensor dy, Tensor x, Tensor w) {
    const char *op = "linear_backward";
    DType dt = DT_F32;
    StorageArg args[] = {{"dx", dx}, {"dy", dy}, {"x", x}, {"w", w}};
    TRY(storage_dtype(op, args, 4, &dt));
    int64_t N, O, In;
    TRY(check_weight_and_input(op, x, w, dt, &N, &O, &In));
    TRY(tensor_check_dims(op, "dy", dy, dt, 2, N, O));
    if (tensor_present(dx)) TRY(tensor_check_dims(op, "dx", dx, dt, 2, N, In));
    if (tensor_present(dw)) TRY(tensor_check_dims(op, "dw", dw, DT_F32, 2, O, In));
    if (tensor_present(db)) TRY(tensor_check_dims(op, "db", db, DT_F32, 1, O));

    /* db first, as on the CPU: a failure leaves no gradient half-accumulated. */
    if (tensor_present(db)) TRY(bias_grad_accumulate(be, tensor_f32(db), dy.data, dt, N, O));
    /* dx[N, In] = dy[N, O] w[O, In] (O = 0: the empty sum, zeros) */
    if (tensor_present(dx))
        TRY(cuda_gemm(be, op, 0, 0, N, In, O, 1.0f, dy.data, O, w.data, In, dt, 0.0f, dx.data, In, dt, NULL));
    /* dw[O, In] += dy^T[O, N] x[N, In], in f32 whatever the storage */
    if (tensor_present(dw) && N > 0)
        TRY(cuda_gemm(be, op, 1, 0, O, In, N, 1.0f, dy.data, O, x.data, In, dt, 1.0f, dw.data, In, DT_F32, NULL));
    return STATUS_OK;
}
