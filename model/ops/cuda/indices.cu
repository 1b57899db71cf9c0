/* Range checks of device-resident index tensors (token ids, positions, targets): the first
 * offending position found on the GPU, so an op's error names it exactly as the CPU's does. */
#include "cuda_ops.h"
#include "cuda_state.h"

static const int INDEX_THREADS = 256;

/* probe = min over bad n of n; unsigned min is order-independent, so the result is exact. */
__global__ void first_bad_index_kernel(const int32_t *ids, int64_t n, int64_t limit, int has_skip, int32_t skip,
                                       unsigned long long *probe) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int32_t id = ids[i];
        if (has_skip && id == skip) continue;
        if (id < 0 || (int64_t)id >= limit) atomicMin(probe, (unsigned long long)i);
    }
}

Status cuda_find_bad_index(Backend *be, Tensor ids, int64_t limit, int has_skip, int32_t skip, int64_t *bad_at,
                           int32_t *bad_value) {
    CudaState *st = cuda_state(be);
    *bad_at = -1;
    int64_t n = tensor_numel(ids);
    if (n == 0) return STATUS_OK;
    unsigned long long none = ~0ull, found = 0;
    CUDA_TRY(cudaMemcpyAsync(st->index_probe, &none, sizeof none, cudaMemcpyHostToDevice, st->stream));
    int64_t blocks = (n + INDEX_THREADS - 1) / INDEX_THREADS;
    if (blocks > 4096) blocks = 4096;
    first_bad_index_kernel<<<(int)blocks, INDEX_THREADS, 0, st->stream>>>(tensor_i32(ids), n, limit, has_skip, skip,
                                                                        st->index_probe);
    CUDA_TRY_LAUNCH();
    CUDA_TRY(cudaMemcpyAsync(&found, st->index_probe, sizeof found, cudaMemcpyDeviceToHost, st->stream));
    CUDA_TRY(cudaStreamSynchronize(st->stream));
    if (found == none) return STATUS_OK;
    *bad_at = (int64_t)found;
    CUDA_TRY(cudaMemcpyAsync(bad_value, tensor_i32(ids) + found, sizeof *bad_value, cudaMemcpyDeviceToHost,
                             st->stream));
    CUDA_TRY(cudaStreamSynchronize(st->stream));
    return STATUS_OK;
}
