/* The CUDA backend's lifetime and memory: device choice, the stream and library handles, device
 * allocation and host<->device copies. Ops live in their own files and are wired in here. */
#include "cuda_backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_ops.h"
#include "cuda_state.h"

/* 32 MiB: what cuBLASLt's heuristics want for the largest Hopper kernels. */
static const size_t CUBLASLT_WORKSPACE_BYTES = 32u << 20;

extern "C" int cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no device" error */
        return 0;
    }
    return n;
}

extern "C" void *cuda_backend_stream(Backend *be) { return (void *)cuda_state(be)->stream; }

static Status cuda_alloc(Backend *be, Tensor *t, DType dt, int ndim, const int64_t *shape) {
    if (ndim < 0 || ndim > TENSOR_MAX_DIMS)
        return errorf("cuda alloc: %d dimensions (at most %d)", ndim, TENSOR_MAX_DIMS);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0) return errorf("cuda alloc: negative dimension %lld", (long long)shape[i]);
    *t = tensor_view(NULL, dt, ndim, shape);
    size_t bytes = tensor_bytes(*t);
    void *p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes ? bytes : 1);
    if (err != cudaSuccess) {
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        return errorf("cuda alloc: cannot allocate %zu bytes (%s; %zu of %zu bytes free)", bytes,
                      cudaGetErrorString(err), free_b, total_b);
    }
    t->data = p;
    cuda_count_allocation(cuda_state(be), bytes);
    CUDA_TRY(cudaMemsetAsync(p, 0, bytes, cuda_state(be)->stream));
    return STATUS_OK;
}

static void cuda_release(Backend *be, Tensor *t) {
    if (t->data) {
        cudaFree(t->data);
        cuda_count_release(cuda_state(be), tensor_bytes(*t));
    }
    t->data = NULL;
}

/* Uploads, downloads and synchronize wait for the stream, so they are where the queued index
 * checks of earlier ops report (cuda_check_indices); the upload resolves them before it may
 * overwrite the indices they read. */
static Status cuda_upload(Backend *be, Tensor dst, const void *src) {
    CudaState *st = cuda_state(be);
    TRY(cuda_index_checks_resolve(be));
    CUDA_TRY(cudaMemcpyAsync(dst.data, src, tensor_bytes(dst), cudaMemcpyHostToDevice, st->stream));
    CUDA_TRY(cudaStreamSynchronize(st->stream));
    return STATUS_OK;
}

static Status cuda_download(Backend *be, void *dst, Tensor src) {
    CudaState *st = cuda_state(be);
    CUDA_TRY(cudaMemcpyAsync(dst, src.data, tensor_bytes(src), cudaMemcpyDeviceToHost, st->stream));
    CUDA_TRY(cudaStreamSynchronize(st->stream));
    return cuda_index_checks_resolve(be);
}

static Status cuda_zero(Backend *be, Tensor t) {
    /* Zeroing int32 memory may change indices a queued check has yet to report on. */
    if (t.dtype == DT_I32) TRY(cuda_index_checks_resolve(be));
    CUDA_TRY(cudaMemsetAsync(t.data, 0, tensor_bytes(t), cuda_state(be)->stream));
    return STATUS_OK;
}

static Status cuda_synchronize(Backend *be) {
    CUDA_TRY(cudaStreamSynchronize(cuda_state(be)->stream));
    return cuda_index_checks_resolve(be);
}

static void cuda_state_free(CudaState *st) {
    if (!st) return;
    if (st->index_faults) cudaFree(st->index_faults);
    cuda_op_profile_free(st);
    if (st->scratch) cudaFree(st->scratch);
    if (st->workspace) cudaFree(st->workspace);
    if (st->cublaslt) cublasLtDestroy(st->cublaslt);
    if (st->cublas) cublasDestroy(st->cublas);
    if (st->stream) cudaStreamDestroy(st->stream);
    free(st);
}

static void cuda_destroy(Backend *be) {
    cuda_state_free(cuda_state(be));
    free(be);
}

static Status cuda_state_init(CudaState *st, int device) {
    int count = cuda_device_count();
    if (count == 0) return errorf("device \"cuda\": no CUDA device is visible to this process");
    if (device < 0 || device >= count)
        return errorf("device \"cuda\": device %d requested, but %d CUDA device(s) are visible", device, count);
    st->device = device;
    CUDA_TRY(cudaSetDevice(device));
    CUDA_TRY(cudaGetDeviceProperties(&st->prop, device));
    CUDA_TRY(cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking));
    CUBLAS_TRY(cublasCreate(&st->cublas));
    CUBLAS_TRY(cublasSetStream(st->cublas, st->stream));
    /* Determinism by default: no atomics-based split-K reductions in cuBLAS. */
    CUBLAS_TRY(cublasSetAtomicsMode(st->cublas, CUBLAS_ATOMICS_NOT_ALLOWED));
    /* float32 products in float32: no TF32 tensor-core rounding of the operands. */
    CUBLAS_TRY(cublasSetMathMode(st->cublas, CUBLAS_DEFAULT_MATH));
    CUBLAS_TRY(cublasLtCreate(&st->cublaslt));
    st->workspace_bytes = CUBLASLT_WORKSPACE_BYTES;
    CUDA_TRY(cudaMalloc(&st->workspace, st->workspace_bytes));
    return STATUS_OK;
}

Status cuda_scratch(Backend *be, size_t bytes, void **out) {
    CudaState *st = cuda_state(be);
    if (bytes > st->scratch_bytes) {
        /* Half again what is asked, so that slowly growing requests do not reallocate each call. */
        size_t want = bytes + bytes / 2;
        /* The old buffer may still be read by kernels queued on the stream. */
        CUDA_TRY(cudaStreamSynchronize(st->stream));
        if (st->scratch) CUDA_TRY(cudaFree(st->scratch));
        cuda_count_release(st, st->scratch_bytes);
        st->scratch = NULL;
        st->scratch_bytes = 0;
        cudaError_t err = cudaMalloc(&st->scratch, want);
        if (err != cudaSuccess) {
            cudaGetLastError();
            return errorf("cuda backend: cannot allocate %zu bytes of op scratch (%s)", want,
                          cudaGetErrorString(err));
        }
        st->scratch_bytes = want;
        cuda_count_allocation(st, want);
    }
    *out = st->scratch;
    return STATUS_OK;
}

extern "C" Status cuda_backend_create(Backend **out, BackendOptions opts) {
    *out = NULL;
    CudaState *st = (CudaState *)calloc(1, sizeof *st);
    Backend *be = (Backend *)calloc(1, sizeof *be);
    if (!st || !be) {
        free(st);
        free(be);
        return errorf("cuda backend: out of host memory");
    }
    be->impl = st;
    if (cuda_state_init(st, opts.device) != STATUS_OK || cuda_index_checks_init(be) != STATUS_OK) {
        cuda_state_free(st);
        free(be);
        return STATUS_ERROR;
    }
    be->name = "cuda";
    be->impl = st;
    be->alloc = cuda_alloc;
    be->release = cuda_release;
    be->upload = cuda_upload;
    be->download = cuda_download;
    be->zero = cuda_zero;
    be->synchronize = cuda_synchronize;
    be->destroy = cuda_destroy;
    be->ops = cuda_ops_table();
    *out = be;
    return STATUS_OK;
}
