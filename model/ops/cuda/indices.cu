/* Range checks of device-resident index tensors (token ids, positions, targets) without stalling
 * the host: each check is a kernel recording the first offending position in a device word, and
 * every verdict queued since the last synchronisation is read back at the next one. */
#include <string.h>

#include "cuda_ops.h"
#include "cuda_state.h"

static const int INDEX_THREADS = 256;
static const unsigned long long NO_FAULT = ~0ull;

/* fault = min over bad n of (n << 32 | bits of ids[n]): the position decides the minimum, so the
 * result is the first bad position and its value whatever order the threads run in. */
__global__ void first_bad_index_kernel(const int32_t *ids, int64_t n, int64_t limit, int has_skip, int32_t skip,
                                       unsigned long long *fault) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int32_t id = ids[i];
        if (has_skip && id == skip) continue;
        if (id < 0 || (int64_t)id >= limit)
            atomicMin(fault, (unsigned long long)i << 32 | (unsigned long long)(uint32_t)id);
    }
}

Status cuda_index_checks_resolve(Backend *be) {
    CudaState *st = cuda_state(be);
    int n = st->n_index_checks;
    if (n == 0) return STATUS_OK;
    unsigned long long faults[CUDA_INDEX_CHECKS_MAX];
    CUDA_TRY(cudaMemcpyAsync(faults, st->index_faults, (size_t)n * sizeof faults[0], cudaMemcpyDeviceToHost,
                             st->stream));
    CUDA_TRY(cudaStreamSynchronize(st->stream));
    CUDA_TRY(cudaMemsetAsync(st->index_faults, 0xff, (size_t)n * sizeof faults[0], st->stream));
    st->n_index_checks = 0;
    for (int i = 0; i < n; i++)
        if (faults[i] != NO_FAULT)
            return st->index_checks[i].report(&st->index_checks[i], (int64_t)(faults[i] >> 32),
                                              (int32_t)(uint32_t)(faults[i] & 0xffffffffu));
    return STATUS_OK;
}

static int same_check(const CudaIndexCheck *a, const CudaIndexCheck *b) {
    return a->ids == b->ids && a->n == b->n && a->limit == b->limit && a->has_skip == b->has_skip &&
           (!a->has_skip || a->skip == b->skip) && a->report == b->report;
}

Status cuda_check_indices(Backend *be, const char *op, Tensor ids, int64_t limit, int has_skip, int32_t skip,
                          CudaIndexReport report) {
    CudaState *st = cuda_state(be);
    int64_t n = tensor_numel(ids);
    if (n == 0) return STATUS_OK;
    if (n > INT32_MAX) return errorf("%s: %lld indices exceed the range check's int range", op, (long long)n);
    CudaIndexCheck check = {op, tensor_i32(ids), n, limit, has_skip, skip, report};
    /* The same tensor checked again (RoPE's positions, once per layer): nothing can have written it
     * since, as an upload or a zeroing of int32 memory resolves the queue first. */
    for (int i = 0; i < st->n_index_checks; i++)
        if (same_check(&st->index_checks[i], &check)) return STATUS_OK;
    if (st->n_index_checks == CUDA_INDEX_CHECKS_MAX) TRY(cuda_index_checks_resolve(be));
    int slot = st->n_index_checks++;
    st->index_checks[slot] = check;
    int64_t blocks = (n + INDEX_THREADS - 1) / INDEX_THREADS;
    if (blocks > 4096) blocks = 4096;
    first_bad_index_kernel<<<(int)blocks, INDEX_THREADS, 0, st->stream>>>(check.ids, n, limit, has_skip, skip,
                                                                        st->index_faults + slot);
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}

Status cuda_index_checks_init(Backend *be) {
    CudaState *st = cuda_state(be);
    size_t bytes = CUDA_INDEX_CHECKS_MAX * sizeof *st->index_faults;
    CUDA_TRY(cudaMalloc((void **)&st->index_faults, bytes));
    CUDA_TRY(cudaMemsetAsync(st->index_faults, 0xff, bytes, st->stream));
    st->n_index_checks = 0;
    return STATUS_OK;
}
