/* Choosing a backend by name, and the helpers written once on top of any backend's ops. */
#include "core/backend.h"

#include <math.h>
#include <string.h>

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

Status grad_norm_clip(Backend *be, Tensor *grads, int n, double max_norm, double *norm_out) {
    double total = 0;
    for (int i = 0; i < n; i++) {
        double s = 0;
        if (be->ops.sum_squares(be, &s, grads[i]) != STATUS_OK)
            return error_context("grad_norm_clip: tensor %d: ", i);
        total += s;
    }
    double norm = sqrt(total);
    *norm_out = norm;
    if (!isfinite(norm)) return errorf("grad_norm_clip: the gradient norm is %g (NaN or Inf in the gradients)", norm);
    if (max_norm > 0 && norm > max_norm) {
        float s = (float)(max_norm / (norm + 1e-6));
        for (int i = 0; i < n; i++) TRY(be->ops.scale(be, grads[i], s));
    }
    return STATUS_OK;
}
