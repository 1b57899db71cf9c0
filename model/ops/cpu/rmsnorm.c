/* RMSNorm over the last dimension on the CPU, forward and backward: y = x * rstd * w with
 * rstd = 1 / sqrt(mean(x^2) + eps), computed in float32 in the order HF's LlamaRMSNorm uses. */
#include "cpu_ops.h"

#include <math.h>
#include <stdlib.h>

/* Columns per work item in the weight-gradient reduction (a multiple of the cache line). */
enum { RMSNORM_COLUMN_BLOCK = 64 };

Status cpu_rmsnorm_forward(Backend *be, Tensor y, Tensor rstd, Tensor x, Tensor w, float eps) {
    TRY(tensor_check("rmsnorm_forward", "x", x, DT_F32, 2, (int64_t[]){-1, -1}));
    int64_t N = x.shape[0], D = x.shape[1];
    TRY(tensor_check("rmsnorm_forward", "w", w, DT_F32, 1, (int64_t[]){D}));
    TRY(tensor_check("rmsnorm_forward", "y", y, DT_F32, 2, (int64_t[]){N, D}));
    TRY(tensor_check("rmsnorm_forward", "rstd", rstd, DT_F32, 1, (int64_t[]){N}));
    if (!(eps >= 0)) return errorf("rmsnorm_forward: eps must be >= 0, got %g", eps);
    if (D == 0) return errorf("rmsnorm_forward: x has no columns (shape [%lld, 0])", (long long)N);

    const float *px = tensor_f32(x), *pw = tensor_f32(w);   /* (N, D), (D) */
    float *py = tensor_f32(y), *pr = tensor_f32(rstd);      /* (N, D), (N) */
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *xr = px + n * D;
        float *yr = py + n * D;
        /* The mean of squares in double: its rounding no longer grows with D, so the float32
         * rstd is the correctly rounded value that any float32 summation order (PyTorch's,
         * a GPU's tree) approximates, which keeps cross-backend comparisons tight. */
        double ss = 0;
        for (int64_t d = 0; d < D; d++) ss += (double)xr[d] * xr[d];
        float r = 1.0f / sqrtf((float)(ss / (double)D) + eps);
        pr[n] = r;
        for (int64_t d = 0; d < D; d++) yr[d] = (xr[d] * r) * pw[d];
    }
    return STATUS_OK;
}

/* dx = rstd * (w*dy - x * rstd^2 * mean(w*dy*x)); dw += sum_n dy * x * rstd. */
Status cpu_rmsnorm_backward(Backend *be, Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w, Tensor rstd) {
    TRY(tensor_check("rmsnorm_backward", "x", x, DT_F32, 2, (int64_t[]){-1, -1}));
    int64_t N = x.shape[0], D = x.shape[1];
    TRY(tensor_check("rmsnorm_backward", "dx", dx, DT_F32, 2, (int64_t[]){N, D}));
    if (tensor_present(dw)) TRY(tensor_check("rmsnorm_backward", "dw", dw, DT_F32, 1, (int64_t[]){D}));
    TRY(tensor_check("rmsnorm_backward", "dy", dy, DT_F32, 2, (int64_t[]){N, D}));
    TRY(tensor_check("rmsnorm_backward", "w", w, DT_F32, 1, (int64_t[]){D}));
    TRY(tensor_check("rmsnorm_backward", "rstd", rstd, DT_F32, 1, (int64_t[]){N}));
    if (D == 0) return errorf("rmsnorm_backward: x has no columns (shape [%lld, 0])", (long long)N);

    const float *px = tensor_f32(x), *pw = tensor_f32(w);    /* (N, D), (D) */
    const float *pg = tensor_f32(dy), *pr = tensor_f32(rstd); /* (N, D), (N) */
    float *pdx = tensor_f32(dx);                              /* (N, D) */
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *xr = px + n * D, *gr = pg + n * D;
        float *dxr = pdx + n * D;
        float r = pr[n];
        double dot = 0;  /* sum_d w*dy*x, in double for the reason given in the forward */
        for (int64_t d = 0; d < D; d++) dot += (double)(pw[d] * gr[d]) * xr[d];
        float c = r * r * (float)(dot / (double)D);
        for (int64_t d = 0; d < D; d++) dxr[d] = r * (pw[d] * gr[d] - xr[d] * c);
    }
    if (!tensor_present(dw)) return STATUS_OK;

    /* dw: one partial sum per fixed block of rows, each element of a partial summed by one thread
     * in row order, then the partials added in block order. */
    int64_t nblocks = (N + CPU_REDUCE_BLOCK - 1) / CPU_REDUCE_BLOCK;
    int64_t ncols = (D + RMSNORM_COLUMN_BLOCK - 1) / RMSNORM_COLUMN_BLOCK;
    /* (nblocks, D); one row at least, so that N = 0 is not a failed malloc(0) */
    float *partial = malloc((size_t)(nblocks > 0 ? nblocks : 1) * (size_t)D * sizeof(float));
    if (!partial)
        return errorf("rmsnorm_backward: out of memory for %lld x %lld partial sums", (long long)nblocks,
                      (long long)D);
#pragma omp parallel for schedule(static)
    for (int64_t item = 0; item < nblocks * ncols; item++) {
        int64_t b = item / ncols, c0 = (item % ncols) * RMSNORM_COLUMN_BLOCK;
        int64_t c1 = c0 + RMSNORM_COLUMN_BLOCK < D ? c0 + RMSNORM_COLUMN_BLOCK : D;
        int64_t n0 = b * CPU_REDUCE_BLOCK, n1 = n0 + CPU_REDUCE_BLOCK < N ? n0 + CPU_REDUCE_BLOCK : N;
        float *part = partial + b * D;
        for (int64_t d = c0; d < c1; d++) part[d] = 0;
        for (int64_t n = n0; n < n1; n++) {
            const float *xr = px + n * D, *gr = pg + n * D;
            float r = pr[n];
            for (int64_t d = c0; d < c1; d++) part[d] += gr[d] * (xr[d] * r);
        }
    }
    float *pdw = tensor_f32(dw);
#pragma omp parallel for schedule(static)
    for (int64_t d = 0; d < D; d++) {
        float s = 0;
        for (int64_t b = 0; b < nblocks; b++) s += partial[b * D + d];
        pdw[d] += s;
    }
    free(partial);
    return STATUS_OK;
}

/* The norm's backward, then the add: the float32 reference rounds each once, in that order. */
Status cpu_rmsnorm_residual_backward(Backend *be, Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w, Tensor rstd,
                                     Tensor dres) {
    TRY(tensor_check("rmsnorm_residual_backward", "dres", dres, DT_F32, 2, dx.shape));
    if (dx.data == dres.data) return errorf("rmsnorm_residual_backward: dx and dres must be different memory");
    if (cpu_rmsnorm_backward(be, dx, dw, dy, x, w, rstd) != STATUS_OK) return error_context("rmsnorm_residual_backward: ");
    return cpu_accumulate(be, dx, dres);
}
