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

/* GPU time per op (`mlatrain bench --op-times`): on = 1 brackets every op of the table with CUDA
 * events from now on (totals start at zero); on = 0 restores the plain table. The kernels an op
 * launches are timed on the stream, so host gaps between ops are not in any op's time. */
Status cuda_backend_profile_ops(Backend *be, int on);
typedef struct {
    const char *op;       /* the op's name in the table, e.g. "attention_backward" */
    double ms;            /* summed GPU time */
    int64_t calls;
} CudaOpTime;
/* The ops called since profiling began, largest time first (at most cap of them); waits for the
 * device. */
Status cuda_backend_op_times(Backend *be, CudaOpTime *out, int cap, int *n);

#ifdef __cplusplus
}
#endif
