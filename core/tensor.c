/* Tensor header helpers: sizes, views, and the shape checks every op starts with. */
#include "tensor.h"

#include <stdio.h>
#include <string.h>

size_t dtype_size(DType dt) {
    switch (dt) {
    case DT_F32: return 4;
    case DT_BF16: return 2;
    case DT_F16: return 2;
    case DT_I32: return 4;
    }
    return 0;
}

const char *dtype_name(DType dt) {
    switch (dt) {
    case DT_F32: return "f32";
    case DT_BF16: return "bf16";
    case DT_F16: return "f16";
    case DT_I32: return "i32";
    }
    return "?";
}

int64_t tensor_numel(Tensor t) {
    int64_t n = 1;
    for (int i = 0; i < t.ndim; i++) n *= t.shape[i];
    return n;
}

size_t tensor_bytes(Tensor t) { return (size_t)tensor_numel(t) * dtype_size(t.dtype); }

Tensor tensor_view(void *data, DType dt, int ndim, const int64_t *shape) {
    Tensor t = {0};
    t.data = data;
    t.dtype = dt;
    t.ndim = ndim;
    for (int i = 0; i < ndim && i < TENSOR_MAX_DIMS; i++) t.shape[i] = shape[i];
    return t;
}

const char *tensor_shape_str(Tensor t, char *buf, size_t n) {
    size_t used = 0;
    used += (size_t)snprintf(buf + used, n - used, "[");
    for (int i = 0; i < t.ndim && used < n; i++) {
        if (i) used += (size_t)snprintf(buf + used, n - used, ", ");
        if (used >= n) break;
        if (t.shape[i] < 0) used += (size_t)snprintf(buf + used, n - used, "*"); /* a wildcard */
        else used += (size_t)snprintf(buf + used, n - used, "%lld", (long long)t.shape[i]);
    }
    if (used < n) snprintf(buf + used, n - used, "]");
    return buf;
}

Status tensor_check(const char *op, const char *arg, Tensor t, DType dt, int ndim, const int64_t *shape) {
    char got[96], want[96];
    if (t.data == NULL) return errorf("%s: %s is missing", op, arg);
    if (t.dtype != dt)
        return errorf("%s: %s has dtype %s, expected %s", op, arg, dtype_name(t.dtype), dtype_name(dt));
    Tensor expected = tensor_view(NULL, dt, ndim, shape);
    int ok = t.ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        if (shape[i] >= 0 && t.shape[i] != shape[i]) ok = 0;
    if (!ok)
        return errorf("%s: %s has shape %s, expected %s", op, arg, tensor_shape_str(t, got, sizeof got),
                      tensor_shape_str(expected, want, sizeof want));
    return STATUS_OK;
}
