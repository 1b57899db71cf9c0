/* The CUDA backend's lifetime for the CPU emulation: host memory in place of device memory, the
 * real ops of model/ops/cuda in the table. */
#include <cuda_runtime.h>
#include <stdlib.h>
#include "model/ops/cuda/cuda_backend.h"
#include "model/ops/cuda/cuda_ops.h"
#include "model/ops/cuda/cuda_state.h"
static Status emu_alloc(Backend *, Tensor *t, DType dt, int ndim, const int64_t *shape) {
    *t = tensor_view(NULL, dt, ndim, shape);
    size_t b = tensor_bytes(*t);
    /* cudaMalloc's alignment (256 bytes), which the kernels' vector loads and WMMA rely on */
    t->data = aligned_alloc(256, (b + 255) / 256 * 256 + 256);
    memset(t->data, 0, b);
    return STATUS_OK;
}
static void emu_release(Backend *, Tensor *t) { free(t->data); t->data = NULL; }
/* The same synchronisation points as cuda_backend.cu, where queued index checks report. */
static Status emu_upload(Backend *be, Tensor d, const void *s) { TRY(cuda_index_checks_resolve(be)); memcpy(d.data, s, tensor_bytes(d)); return STATUS_OK; }
static Status emu_download(Backend *be, void *d, Tensor s) { memcpy(d, s.data, tensor_bytes(s)); return cuda_index_checks_resolve(be); }
static Status emu_zero(Backend *be, Tensor t) { if (t.dtype == DT_I32) TRY(cuda_index_checks_resolve(be)); memset(t.data, 0, tensor_bytes(t)); return STATUS_OK; }
static Status emu_sync_be(Backend *be) { return cuda_index_checks_resolve(be); }
static void emu_destroy(Backend *be) { CudaState *st = cuda_state(be); cuda_op_profile_free(st); free(st->index_faults); free(st->scratch); free(st); free(be); }
extern "C" int cuda_device_count(void) { return 1; }
Status cuda_scratch(Backend *be, size_t bytes, void **out) {
    CudaState *st = cuda_state(be);
    if (bytes > st->scratch_bytes) {
        free(st->scratch);
        CUDA_TRY(cudaMalloc(&st->scratch, bytes));
        st->scratch_bytes = bytes;
    }
    *out = st->scratch;
    return STATUS_OK;
}
extern "C" Status cuda_backend_create(Backend **out, BackendOptions) {
    CudaState *st = (CudaState *)calloc(1, sizeof *st);
    Backend *be = (Backend *)calloc(1, sizeof *be);
    st->prop.sharedMemPerBlockOptin = 232448;
    st->prop.major = 9;
    be->name = "cuda"; be->impl = st;
    cuda_index_checks_init(be);
    be->alloc = emu_alloc; be->release = emu_release; be->upload = emu_upload; be->download = emu_download;
    be->zero = emu_zero; be->synchronize = emu_sync_be; be->destroy = emu_destroy;
    be->ops = cuda_ops_table();
    *out = be;
    return STATUS_OK;
}
