/* Tensors as the op interface sees them: a pointer into a backend's memory, a dtype and a shape
 * (row-major, last dimension contiguous). A Tensor does not own its memory; its backend does. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { DT_F32, DT_BF16, DT_F16, DT_I32 } DType;

enum { TENSOR_MAX_DIMS = 4 };

typedef struct {
    void *data;          /* NULL means "absent" (an optional input, or an output not wanted) */
    DType dtype;
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
} Tensor;

size_t dtype_size(DType dt);
const char *dtype_name(DType dt);

int64_t tensor_numel(Tensor t);
size_t tensor_bytes(Tensor t);
static inline int tensor_present(Tensor t) { return t.data != NULL; }

/* A tensor header over existing memory: tensor_view(p, DT_F32, 2, (int64_t[]){N, D}). */
Tensor tensor_view(void *data, DType dt, int ndim, const int64_t *shape);
/* The empty tensor: an absent optional argument. */
static inline Tensor tensor_none(void) {
    Tensor t = {NULL, DT_F32, 0, {0, 0, 0, 0}};
    return t;
}

/* Checks dtype and shape; a dimension given as -1 matches anything. The error names the op and the
 * argument: "rmsnorm_forward: x has shape [4, 7], expected [4, 8]". */
Status tensor_check(const char *op, const char *arg, Tensor t, DType dt, int ndim, const int64_t *shape);

/* "[4, 7]" into buf; returns buf. */
const char *tensor_shape_str(Tensor t, char *buf, size_t n);

static inline float *tensor_f32(Tensor t) { return (float *)t.data; }
static inline int32_t *tensor_i32(Tensor t) { return (int32_t *)t.data; }

#ifdef __cplusplus
}
#endif
