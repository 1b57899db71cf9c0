/* The CUDA backend's memory figures for the bench: its own allocation count (cuda_alloc,
 * cuda_release and cuda_scratch keep it) and the device's used bytes as the driver sees them. */
#include "cuda_backend.h"
#include "cuda_state.h"

extern "C" Status cuda_backend_memory(Backend *be, CudaMemoryFigures *out) {
    CudaState *st = cuda_state(be);
    size_t free_b = 0, total_b = 0;
    CUDA_TRY(cudaSetDevice(st->device));
    CUDA_TRY(cudaMemGetInfo(&free_b, &total_b));
    out->allocated = st->allocated_bytes;
    out->peak_allocated = st->peak_allocated_bytes;
    out->device_used = total_b - free_b;
    out->device_total = total_b;
    return STATUS_OK;
}

extern "C" void cuda_backend_reset_peak_memory(Backend *be) {
    CudaState *st = cuda_state(be);
    st->peak_allocated_bytes = st->allocated_bytes;
}
