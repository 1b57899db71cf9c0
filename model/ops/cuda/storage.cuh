/* The storage dtypes of the CUDA kernels: float and bf16 loaded as float and stored rounded to
 * nearest even, so one templated kernel serves both; and the host-side check of a call's dtypes. */
#pragma once

#include <cuda_bf16.h>

#include "core/backend.h"

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) { return __float2bfloat16_rn(x); }

/* The one storage dtype of a call: every present tensor of `args` must be f32 or bf16, and all
 * alike (the CPU backend's rule and messages, model/ops/cpu/bf16_storage.c). */
typedef struct {
    const char *name;
    Tensor t;
} StorageArg;

static inline Status storage_dtype(const char *op, const StorageArg *args, int n, DType *out) {
    int noted = 0;
    DType dt = DT_F32;
    for (int i = 0; i < n; i++) TRY(storage_dtype_note(op, args[i].name, args[i].t, &noted, &dt));
    *out = dt;
    return STATUS_OK;
}

/* A tensor_check on shape only (the dtype was settled by storage_dtype). */
static inline Status check_shape(const char *op, const char *arg, Tensor t, int ndim, int64_t d0 = -1, int64_t d1 = -1,
                                 int64_t d2 = -1, int64_t d3 = -1) {
    const int64_t shape[TENSOR_MAX_DIMS] = {d0, d1, d2, d3};
    return tensor_check(op, arg, t, t.dtype, ndim, shape);
}

/* Runs the statements with T the storage type of dt: float or bf16. */
#define WITH_STORAGE(dt, T, ...)   \
    do {                           \
        if ((dt) == DT_BF16) {     \
            typedef bf16 T;        \
            __VA_ARGS__;           \
        } else {                   \
            typedef float T;       \
            __VA_ARGS__;           \
        }                          \
    } while (0)
