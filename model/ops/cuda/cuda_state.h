/* What the CUDA backend owns, shared by its kernel files: one stream per backend, the library
 * handles bound to it, and a cuBLASLt workspace. */
#pragma once

#include "cuda_check.h"

typedef struct {
    int device;
    cudaDeviceProp prop;
    cudaStream_t stream;
    cublasHandle_t cublas;
    cublasLtHandle_t cublaslt;
    cudnnHandle_t cudnn;
    void *workspace;          /* cuBLASLt workspace */
    size_t workspace_bytes;
    double *reduce_scratch;   /* device scratch for deterministic reductions */
    size_t reduce_scratch_len;
} CudaState;

static inline CudaState *cuda_state(Backend *be) { return (CudaState *)be->impl; }
