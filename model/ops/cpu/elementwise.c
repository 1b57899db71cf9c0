/* Small whole-tensor ops on the CPU: the deterministic sum of squares behind the gradient norm,
 * scaling, and accumulation. */
#include "cpu_ops.h"

#include <stdlib.h>
#include <string.h>

#include "core/half.h"

Status cpu_sum_squares(Backend *be, double *out, Tensor t) {
    if (t.data == NULL || t.dtype != DT_F32) return errorf("sum_squares: expected an f32 tensor");
    const float *x = tensor_f32(t);
    int64_t n = tensor_numel(t);
    int64_t nblocks = (n + CPU_REDUCE_BLOCK - 1) / CPU_REDUCE_BLOCK;
    double stack_partial[64];
    double *partial = nblocks <= 64 ? stack_partial : malloc((size_t)nblocks * sizeof(double));
    if (!partial) return errorf("sum_squares: out of memory for %lld partial sums", (long long)nblocks);
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t end = (b + 1) * CPU_REDUCE_BLOCK < n ? (b + 1) * CPU_REDUCE_BLOCK : n;
        double s = 0;
        for (int64_t i = b * CPU_REDUCE_BLOCK; i < end; i++) s += (double)x[i] * x[i];
        partial[b] = s;
    }
    double total = 0;
    for (int64_t b = 0; b < nblocks; b++) total += partial[b];
    if (partial != stack_partial) free(partial);
    *out = total;
    return STATUS_OK;
}

Status cpu_sum_squares_multi(Backend *be, double *out, const Tensor *ts, int n) {
    double total = 0;
    for (int i = 0; i < n; i++) {
        double s = 0;
        /* through the table, so bf16 storage goes through its widening adapter */
        if (be->ops.sum_squares(be, &s, ts[i]) != STATUS_OK) return error_context("sum_squares_multi: tensor %d: ", i);
        total += s;
    }
    *out = total;
    return STATUS_OK;
}

Status cpu_scale(Backend *be, Tensor t, float s) {
    if (t.data == NULL || t.dtype != DT_F32) return errorf("scale: expected an f32 tensor");
    float *x = tensor_f32(t);
    int64_t n = tensor_numel(t);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) x[i] *= s;
    return STATUS_OK;
}

Status cpu_accumulate(Backend *be, Tensor y, Tensor x) {
    TRY(tensor_check("accumulate", "y", y, DT_F32, y.ndim, y.shape));
    TRY(tensor_check("accumulate", "x", x, DT_F32, y.ndim, y.shape));
    float *py = tensor_f32(y);
    const float *px = tensor_f32(x);
    int64_t n = tensor_numel(y);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) py[i] += px[i];
    return STATUS_OK;
}

Status cpu_cast(Backend *be, Tensor dst, Tensor src) {
    if (!tensor_present(dst) || !tensor_present(src)) return errorf("cast: dst and src must be present");
    int64_t n = tensor_numel(src);
    if (tensor_numel(dst) != n)
        return errorf("cast: dst holds %lld values, src %lld", (long long)tensor_numel(dst), (long long)n);
    if (dst.dtype == src.dtype) {
        memmove(dst.data, src.data, tensor_bytes(src));
        return STATUS_OK;
    }
    if (dst.dtype == DT_BF16 && src.dtype == DT_F32) {
        uint16_t *d = dst.data;
        const float *s = src.data;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) d[i] = f32_to_bf16(s[i]);
        return STATUS_OK;
    }
    if (dst.dtype == DT_F32 && src.dtype == DT_BF16) {
        float *d = dst.data;
        const uint16_t *s = src.data;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) d[i] = bf16_to_f32(s[i]);
        return STATUS_OK;
    }
    return errorf("cast: %s to %s is not supported", dtype_name(src.dtype), dtype_name(dst.dtype));
}
