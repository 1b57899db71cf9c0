/* The CUDA backend: device memory, the stream, cuBLAS/cuBLASLt/cuDNN handles and workspace that
 * every kernel of model/ops/cuda shares. Built only when nvcc is found. */
#pragma once

#include "core/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

Status cuda_backend_create(Backend **out, BackendOptions opts);
int cuda_device_count(void);

#ifdef __cplusplus
}
#endif
