/* What the CUDA backend owns, shared by its kernel files: one stream per backend, the library
 * handles bound to it, and a cuBLASLt workspace. */
#pragma once

#include "cuda_check.h"
#include "cuda_ops.h"

enum { CUDA_INDEX_CHECKS_MAX = 256 };
typedef struct CudaOpProfile CudaOpProfile;

typedef struct {
    int device;
    cudaDeviceProp prop;
    cudaStream_t stream;
    cublasHandle_t cublas;
    cublasLtHandle_t cublaslt;
    void *workspace;          /* cuBLASLt workspace */
    size_t workspace_bytes;
    /* Device words, one per queued index check: (first bad position << 32 | its value), all ones
     * when none; and the checks queued since the last synchronisation point, in issue order. */
    unsigned long long *index_faults;
    CudaIndexCheck index_checks[CUDA_INDEX_CHECKS_MAX];
    int n_index_checks;
    CudaOpProfile *op_profile;       /* per-op event timing while on (op_profile.cu), else NULL */
    void *scratch;            /* grow-only device scratch of the ops (partial sums, logits chunks) */
    size_t scratch_bytes;
    /* Bytes held by the backend's tensors (cuda_alloc) and the op scratch, now and at their
     * high-water mark: what PyTorch's memory_allocated / max_memory_allocated count. */
    size_t allocated_bytes;
    size_t peak_allocated_bytes;
} CudaState;

static inline CudaState *cuda_state(Backend *be) { return (CudaState *)be->impl; }

/* Scratch of at least `bytes`, valid until the next call of an op on this backend: every op runs
 * on the backend's one stream, so a later op's kernels start only after an earlier op's are done.
 * Growing waits for the stream to finish with the old buffer, then frees it. */
Status cuda_scratch(Backend *be, size_t bytes, void **out);

/* The accounting behind allocated_bytes / peak_allocated_bytes (cuda_alloc, cuda_release,
 * cuda_scratch). A release never takes the count below zero, whatever view of a tensor it is given. */
static inline void cuda_count_allocation(CudaState *st, size_t bytes) {
    st->allocated_bytes += bytes;
    if (st->allocated_bytes > st->peak_allocated_bytes) st->peak_allocated_bytes = st->allocated_bytes;
}
static inline void cuda_count_release(CudaState *st, size_t bytes) {
    st->allocated_bytes -= bytes < st->allocated_bytes ? bytes : st->allocated_bytes;
}

/* Carves aligned pieces out of one scratch reservation: cuda_scratch_size adds a piece's size,
 * cuda_scratch_take hands out the next piece in the same order. */
enum { CUDA_SCRATCH_ALIGN = 256 };
static inline size_t cuda_scratch_size(size_t *total, size_t bytes) {
    size_t at = *total;
    *total += (bytes + CUDA_SCRATCH_ALIGN - 1) / CUDA_SCRATCH_ALIGN * CUDA_SCRATCH_ALIGN;
    return at;
}
static inline void *cuda_scratch_take(char **cursor, size_t bytes) {
    void *p = *cursor;
    *cursor += (bytes + CUDA_SCRATCH_ALIGN - 1) / CUDA_SCRATCH_ALIGN * CUDA_SCRATCH_ALIGN;
    return p;
}

/* tensor_check with the expected dims as arguments (-1: any), since C++ has no compound literals. */
static inline Status tensor_check_dims(const char *op, const char *arg, Tensor t, DType dt, int ndim,
                                       int64_t d0 = -1, int64_t d1 = -1, int64_t d2 = -1, int64_t d3 = -1) {
    const int64_t shape[TENSOR_MAX_DIMS] = {d0, d1, d2, d3};
    return tensor_check(op, arg, t, dt, ndim, shape);
}

/* Releases the op profile's events, if any (op_profile.cu). */
void cuda_op_profile_free(CudaState *st);
