/* The CPU backend: its op table, host memory, and the thread count every op shares. OpenBLAS runs
 * one thread per call inside them, whichever build is loaded (blas_threads.c). */
#include "cpu_ops.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* 64-byte alignment: whole cache lines, and what AVX-512 loads like. */
static Status cpu_alloc(Backend *be, Tensor *t, DType dt, int ndim, const int64_t *shape) {
    if (ndim < 0 || ndim > TENSOR_MAX_DIMS) return errorf("cpu alloc: %d dimensions (at most %d)", ndim, TENSOR_MAX_DIMS);
    *t = tensor_view(NULL, dt, ndim, shape);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0) return errorf("cpu alloc: negative dimension %lld", (long long)shape[i]);
    size_t bytes = tensor_bytes(*t);
    size_t rounded = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (!p) return errorf("cpu alloc: out of memory allocating %zu bytes", bytes);
    memset(p, 0, rounded ? rounded : 64);
    t->data = p;
    return STATUS_OK;
}

static void cpu_release(Backend *be, Tensor *t) {
    free(t->data);
    t->data = NULL;
}

static Status cpu_upload(Backend *be, Tensor dst, const void *src) {
    memcpy(dst.data, src, tensor_bytes(dst));
    return STATUS_OK;
}

static Status cpu_download(Backend *be, void *dst, Tensor src) {
    memcpy(dst, src.data, tensor_bytes(src));
    return STATUS_OK;
}

static Status cpu_zero(Backend *be, Tensor t) {
    memset(t.data, 0, tensor_bytes(t));
    return STATUS_OK;
}

static Status cpu_synchronize(Backend *be) { return STATUS_OK; }

static void cpu_destroy(Backend *be) {
    free(be->impl);
    free(be);
}

Status cpu_backend_create(Backend **out, BackendOptions opts) {
    Backend *be = calloc(1, sizeof *be);
    CpuState *st = calloc(1, sizeof *st);
    if (!be || !st) {
        free(be);
        free(st);
        return errorf("cpu backend: out of memory");
    }
    if (opts.threads < 0) {
        free(be);
        free(st);
        return errorf("cpu backend: threads must be >= 0 (0 = all cores), got %d", opts.threads);
    }
    cpu_blas_init();
    if (opts.threads > 0) omp_set_num_threads(opts.threads);
    st->threads = omp_get_max_threads();
    be->name = "cpu";
    be->impl = st;
    be->alloc = cpu_alloc;
    be->release = cpu_release;
    be->upload = cpu_upload;
    be->download = cpu_download;
    be->zero = cpu_zero;
    be->synchronize = cpu_synchronize;
    be->destroy = cpu_destroy;
    be->ops = (Ops){
        .embedding_forward = cpu_embedding_forward,
        .embedding_backward = cpu_embedding_backward,
        .rmsnorm_forward = cpu_rmsnorm_forward,
        .rmsnorm_backward = cpu_rmsnorm_backward,
        .rmsnorm_residual_backward = cpu_rmsnorm_residual_backward,
        .linear_forward = cpu_linear_forward,
        .linear_backward = cpu_linear_backward,
        .linear_residual_forward = cpu_linear_residual_forward,
        .rope_forward = cpu_rope_forward,
        .rope_backward = cpu_rope_backward,
        .attention_forward = cpu_attention_forward,
        .attention_backward = cpu_attention_backward,
        .attention_decode = cpu_attention_decode,
        .swiglu_forward = cpu_swiglu_forward,
        .swiglu_backward = cpu_swiglu_backward,
        .lm_head_loss = cpu_lm_head_loss,
        .lm_head_loss_topk = cpu_lm_head_loss_topk,
        .adamw_step = cpu_adamw_step,
        .adamw_step_multi = cpu_adamw_step_multi,
        .sum_squares = cpu_sum_squares,
        .sum_squares_multi = cpu_sum_squares_multi,
        .scale = cpu_scale,
        .accumulate = cpu_accumulate,
        .cast = cpu_cast,
    };
    cpu_ops_add_bf16_storage(&be->ops);
    *out = be;
    return STATUS_OK;
}
