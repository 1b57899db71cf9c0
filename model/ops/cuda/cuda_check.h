/* Checked calls into CUDA, cuBLAS(Lt) and NCCL: a failure becomes a returned Status whose
 * message names the call, the file and the line. Nothing here exits. */
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include "core/status.h"

#define CUDA_TRY(call)                                                                              \
    do {                                                                                            \
        cudaError_t err_ = (call);                                                                  \
        if (err_ != cudaSuccess)                                                                    \
            return errorf("%s:%d: %s failed: %s", __FILE__, __LINE__, #call, cudaGetErrorString(err_)); \
    } while (0)

#define CUBLAS_TRY(call)                                                                            \
    do {                                                                                            \
        cublasStatus_t st_ = (call);                                                                \
        if (st_ != CUBLAS_STATUS_SUCCESS)                                                           \
            return errorf("%s:%d: %s failed: %s", __FILE__, __LINE__, #call, cublasGetStatusString(st_)); \
    } while (0)

#define NCCL_TRY(call)                                                                              \
    do {                                                                                            \
        ncclResult_t st_ = (call);                                                                  \
        if (st_ != ncclSuccess)                                                                     \
            return errorf("%s:%d: %s failed: %s", __FILE__, __LINE__, #call, ncclGetErrorString(st_)); \
    } while (0)

/* A kernel launch: checks the launch itself (bad configuration), not its completion. */
#define CUDA_TRY_LAUNCH() CUDA_TRY(cudaGetLastError())
