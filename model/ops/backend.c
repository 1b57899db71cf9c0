/* Choosing a backend by name, and the helpers written once on top of any backend's ops. */
#include "core/backend.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/half.h"

#include "cpu/cpu_ops.h"
#ifdef MLATRAIN_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif

Status backend_create(Backend **out, const char *name, BackendOptions opts) {
    *out = NULL;
    if (strcmp(name, "cpu") == 0) return cpu_backend_create(out, opts);
    if (strcmp(name, "cuda") == 0) {
#ifdef MLATRAIN_HAVE_CUDA
        return cuda_backend_create(out, opts);
#else
        return errorf("device \"cuda\": this mlatrain was built without CUDA (nvcc was not found at "
                      "configure time); rebuild on a machine with the CUDA toolkit or use \"cpu\"");
#endif
    }
    return errorf("device \"%s\": unknown backend (expected \"cpu\" or \"cuda\")", name);
}

void backend_destroy(Backend *be) {
    if (be) be->destroy(be);
}

Status backend_check_ops(const Backend *be) {
    /* Ops is a struct of function pointers only, so it can be walked as an array. */
    static const char *const names[] = {
        "embedding_forward", "embedding_backward", "rmsnorm_forward", "rmsnorm_backward", "rmsnorm_residual_backward",
        "linear_forward", "linear_backward", "linear_residual_forward", "rope_forward", "rope_backward",
        "attention_forward", "attention_backward", "attention_decode", "swiglu_forward", "swiglu_backward",
        "lm_head_loss", "lm_head_loss_topk", "adamw_step", "adamw_step_multi", "sum_squares", "sum_squares_multi",
        "scale", "accumulate", "cast"};
    _Static_assert(sizeof(Ops) == sizeof(names) / sizeof(names[0]) * sizeof(void (*)(void)),
                   "the names above must list every op of Ops");
    void (*const *fn)(void) = (void (*const *)(void))(const void *)&be->ops;
    char missing[1024] = "";
    size_t used = 0;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (fn[i] == NULL && used < sizeof missing)
            used += (size_t)snprintf(missing + used, sizeof missing - used, "%s%s", used ? ", " : "", names[i]);
    if (used) return errorf("device \"%s\": this build's %s backend lacks the ops %s", be->name, be->name, missing);
    return STATUS_OK;
}

Status backend_upload_f32(Backend *be, Tensor dst, const float *src) {
    if (dst.dtype == DT_F32) return be->upload(be, dst, src);
    if (dst.dtype != DT_BF16) return errorf("upload: float32 values into a %s tensor", dtype_name(dst.dtype));
    int64_t n = tensor_numel(dst);
    uint16_t *h = malloc((size_t)(n > 0 ? n : 1) * sizeof *h);
    if (!h) return errorf("upload: out of memory converting %lld values to bf16", (long long)n);
    for (int64_t i = 0; i < n; i++) h[i] = f32_to_bf16(src[i]);
    Status st = be->upload(be, dst, h);
    free(h);
    return st;
}

Status backend_download_f32(Backend *be, float *dst, Tensor src) {
    if (src.dtype == DT_F32) return be->download(be, dst, src);
    if (src.dtype != DT_BF16) return errorf("download: a %s tensor as float32 values", dtype_name(src.dtype));
    int64_t n = tensor_numel(src);
    uint16_t *h = malloc((size_t)(n > 0 ? n : 1) * sizeof *h);
    if (!h) return errorf("download: out of memory converting %lld bf16 values", (long long)n);
    Status st = be->download(be, h, src);
    for (int64_t i = 0; st == STATUS_OK && i < n; i++) dst[i] = bf16_to_f32(h[i]);
    free(h);
    return st;
}

Status grad_norm(Backend *be, const Tensor *grads, int n, double *norm_out) {
    double total = 0;
    if (be->ops.sum_squares_multi(be, &total, grads, n) != STATUS_OK) return error_context("grad_norm: ");
    double norm = sqrt(total);
    *norm_out = norm;
    if (!isfinite(norm)) return errorf("grad_norm: the gradient norm is %g (NaN or Inf in the gradients)", norm);
    return STATUS_OK;
}

float grad_clip_scale(double norm, double max_norm) {
    return max_norm > 0 && norm > max_norm ? (float)(max_norm / (norm + 1e-6)) : 1.0f;
}

Status grad_norm_clip(Backend *be, Tensor *grads, int n, double max_norm, double *norm_out) {
    TRY(grad_norm(be, grads, n, norm_out));
    float s = grad_clip_scale(*norm_out, max_norm);
    if (s != 1.0f)
        for (int i = 0; i < n; i++) TRY(be->ops.scale(be, grads[i], s));
    return STATUS_OK;
}

int backend_cuda_device_count(void) {
#ifdef MLATRAIN_HAVE_CUDA
    return cuda_device_count();
#else
    return 0;
#endif
}
