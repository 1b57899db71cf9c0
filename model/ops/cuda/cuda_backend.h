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

/* Device memory as the bench reports it. allocated / peak_allocated: the bytes of this backend's
 * tensors and op scratch now and at their high-water mark (since creation or the last reset), the
 * figure PyTorch's max_memory_allocated gives for its tensors. device_used: cudaMemGetInfo's total
 * minus free now, which adds what no tensor accounts for: the CUDA context, the cuBLAS(Lt) and
 * cuDNN workspaces and handles, NCCL's buffers, other processes on the same device. */
typedef struct {
    size_t allocated, peak_allocated, device_used, device_total;
} CudaMemoryFigures;
Status cuda_backend_memory(Backend *be, CudaMemoryFigures *out);
/* Starts a new high-water mark at the present allocation (e.g. after setup, before timed steps). */
void cuda_backend_reset_peak_memory(Backend *be);

#ifdef __cplusplus
}
#endif
