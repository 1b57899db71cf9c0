/* The CUDA backend: device memory, the stream, cuBLAS/cuBLASLt/cuDNN handles and workspace that
 * every kernel of model/ops/cuda shares. Built only when nvcc is found. */
#pragma once

#include "core/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

Status cuda_backend_create(Backend **out, BackendOptions opts);
int cuda_device_count(void);
/* The stream every op of this backend runs on (a cudaStream_t), for work that must be ordered
 * with the ops from outside them, such as gradient all-reduces on a second stream. */
void *cuda_backend_stream(Backend *be);

#ifdef __cplusplus
}
#endif
