/* The linear layer on the CPU, forward and backward: y = x w^T + b with HF's [out, in] weights,
 * the matrix products through cpu_sgemm's fixed tiles and the bias-gradient sum in fixed row
 * blocks, so the bits never depend on the thread count. */
#include "cpu_ops.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* Columns per work item in the bias-gradient reduction (a multiple of the cache line). */
enum { LINEAR_COLUMN_BLOCK = 64 };

/* cblas takes int dimensions. (The weight's input width is `In`: <complex.h>, which <cblas.h>
 * includes through cpu_ops.h, takes the name I.) */
static Status check_blas_dims(const char *op, int64_t N, int64_t O, int64_t In) {
    if (N > INT_MAX || O > INT_MAX || In > INT_MAX)
        return errorf("%s: dimensions [%lld tokens, %lld out, %lld in] exceed the BLAS int range", op,
                      (long long)N, (long long)O, (long long)In);
    return STATUS_OK;
}

Status cpu_linear_forward(Backend *be, Tensor y, Tensor x, Tensor w, Tensor b) {
    TRY(tensor_check("linear_forward", "w", w, DT_F32, 2, (int64_t[]){-1, -1}));
    int64_t O = w.shape[0], In = w.shape[1];
    TRY(tensor_check("linear_forward", "x", x, DT_F32, 2, (int64_t[]){-1, In}));
    int64_t N = x.shape[0];
    TRY(tensor_check("linear_forward", "y", y, DT_F32, 2, (int64_t[]){N, O}));
    if (tensor_present(b)) TRY(tensor_check("linear_forward", "b", b, DT_F32, 1, (int64_t[]){O}));
    TRY(check_blas_dims("linear_forward", N, O, In));

    float *py = tensor_f32(y);                                          /* (N, O) */
    const float *px = tensor_f32(x), *pw = tensor_f32(w);               /* (N, In), (O, In) */
    if (N == 0 || O == 0) return STATUS_OK;
    if (In == 0)
        memset(py, 0, (size_t)(N * O) * sizeof(float));
    else
        cpu_sgemm(CblasNoTrans, CblasTrans, N, O, In, 1.0f, px, In, pw, In, 0.0f, py, O);
    if (tensor_present(b)) {
        const float *pb = tensor_f32(b);
#pragma omp parallel for schedule(static)
        for (int64_t n = 0; n < N; n++)
            for (int64_t o = 0; o < O; o++) py[n * O + o] += pb[o];
    }
    return STATUS_OK;
}

/* The product, then the add: the float32 reference rounds each once, in that order. */
Status cpu_linear_residual_forward(Backend *be, Tensor y, Tensor x, Tensor w, Tensor r) {
    TRY(tensor_check("linear_residual_forward", "r", r, DT_F32, 2,
                     (int64_t[]){x.ndim == 2 ? x.shape[0] : -1, w.ndim == 2 ? w.shape[0] : -1}));
    if (tensor_present(y) && y.data == r.data)
        return errorf("linear_residual_forward: y and r must be different memory");
    if (cpu_linear_forward(be, y, x, w, tensor_none()) != STATUS_OK) return error_context("linear_residual_forward: ");
    return cpu_accumulate(be, y, r);
}

/* out[C] += sum_n m[n, :] over an [N, C] matrix: per fixed block of rows a partial sum, each
 * element of it summed by one thread in row order, the partials added in block order. */
static Status column_sums_accumulate(const char *op, float *out, const float *m, int64_t N, int64_t C) {
    int64_t nblocks = (N + CPU_REDUCE_BLOCK - 1) / CPU_REDUCE_BLOCK;
    int64_t ncols = (C + LINEAR_COLUMN_BLOCK - 1) / LINEAR_COLUMN_BLOCK;
    if (nblocks == 0 || C == 0) return STATUS_OK;
    float *partial = malloc((size_t)nblocks * (size_t)C * sizeof(float)); /* (nblocks, C) */
    if (!partial)
        return errorf("%s: out of memory for %lld x %lld partial sums", op, (long long)nblocks, (long long)C);
#pragma omp parallel for schedule(static)
    for (int64_t item = 0; item < nblocks * ncols; item++) {
        int64_t blk = item / ncols, c0 = (item % ncols) * LINEAR_COLUMN_BLOCK;
        int64_t c1 = c0 + LINEAR_COLUMN_BLOCK < C ? c0 + LINEAR_COLUMN_BLOCK : C;
        int64_t n0 = blk * CPU_REDUCE_BLOCK, n1 = n0 + CPU_REDUCE_BLOCK < N ? n0 + CPU_REDUCE_BLOCK : N;
        float *part = partial + blk * C;
        for (int64_t c = c0; c < c1; c++) part[c] = 0;
        for (int64_t n = n0; n < n1; n++)
            for (int64_t c = c0; c < c1; c++) part[c] += m[n * C + c];
    }
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < C; c++) {
        float s = 0;
        for (int64_t blk = 0; blk < nblocks; blk++) s += partial[blk * C + c];
        out[c] += s;
    }
    free(partial);
    return STATUS_OK;
}

Status cpu_linear_backward(Backend *be, Tensor dx, Tensor dw, Tensor db, Tensor dy, Tensor x, Tensor w) {
    TRY(tensor_check("linear_backward", "w", w, DT_F32, 2, (int64_t[]){-1, -1}));
    int64_t O = w.shape[0], In = w.shape[1];
    TRY(tensor_check("linear_backward", "x", x, DT_F32, 2, (int64_t[]){-1, In}));
    int64_t N = x.shape[0];
    TRY(tensor_check("linear_backward", "dy", dy, DT_F32, 2, (int64_t[]){N, O}));
    if (tensor_present(dx)) TRY(tensor_check("linear_backward", "dx", dx, DT_F32, 2, (int64_t[]){N, In}));
    if (tensor_present(dw)) TRY(tensor_check("linear_backward", "dw", dw, DT_F32, 2, (int64_t[]){O, In}));
    if (tensor_present(db)) TRY(tensor_check("linear_backward", "db", db, DT_F32, 1, (int64_t[]){O}));
    TRY(check_blas_dims("linear_backward", N, O, In));

    const float *pdy = tensor_f32(dy), *px = tensor_f32(x), *pw = tensor_f32(w);
    /* db first: the only step that can fail, so a failure leaves no gradient half-accumulated. */
    if (tensor_present(db)) TRY(column_sums_accumulate("linear_backward", tensor_f32(db), pdy, N, O));
    /* dx[N, In] = dy[N, O] w[O, In] */
    if (tensor_present(dx) && N > 0 && In > 0) {
        if (O == 0)
            memset(tensor_f32(dx), 0, (size_t)(N * In) * sizeof(float));
        else
            cpu_sgemm(CblasNoTrans, CblasNoTrans, N, In, O, 1.0f, pdy, O, pw, In, 0.0f, tensor_f32(dx), In);
    }
    /* dw[O, In] += dy^T[O, N] x[N, In]: beta = 1 accumulates. */
    if (tensor_present(dw) && N > 0 && O > 0 && In > 0)
        cpu_sgemm(CblasTrans, CblasNoTrans, O, In, N, 1.0f, pdy, O, px, In, 1.0f, tensor_f32(dw), In);
    return STATUS_OK;
}
