/* AdamW on the CPU (Loshchilov & Hutter): decoupled weight decay, bias-corrected moments, float32
 * master weights. Elementwise, so every thread count gives the same bits. */
#include "cpu_ops.h"

#include <math.h>

#include "core/half.h"

static Status check_param(const char *op, Tensor param, Tensor grad, Tensor m, Tensor v, Tensor param_copy) {
    TRY(tensor_check(op, "param", param, DT_F32, param.ndim, param.shape));
    TRY(tensor_check(op, "grad", grad, DT_F32, param.ndim, param.shape));
    TRY(tensor_check(op, "m", m, DT_F32, param.ndim, param.shape));
    TRY(tensor_check(op, "v", v, DT_F32, param.ndim, param.shape));
    if (tensor_present(param_copy)) TRY(tensor_check(op, "param_copy", param_copy, DT_BF16, param.ndim, param.shape));
    return STATUS_OK;
}

/* The update, with the gradient read as g * grad_scale rounded to f32: exactly what a scale pass
 * over the gradient followed by the unscaled update computes. */
static void adamw_update(Tensor param, Tensor grad, Tensor m, Tensor v, Tensor param_copy, AdamWConfig cfg,
                         float weight_decay, float grad_scale) {
    uint16_t *copy = tensor_present(param_copy) ? (uint16_t *)param_copy.data : NULL;
    float *p = tensor_f32(param), *mm = tensor_f32(m), *vv = tensor_f32(v);
    const float *g = tensor_f32(grad);
    int64_t n = tensor_numel(param);
    /* Bias corrections in double: 1 - beta^t loses digits in float for large t. */
    float bc1 = (float)(1.0 - pow(cfg.beta1, (double)cfg.step));
    float bc2 = (float)(1.0 - pow(cfg.beta2, (double)cfg.step));
    float lr = cfg.lr, b1 = cfg.beta1, b2 = cfg.beta2, eps = cfg.eps, wd = weight_decay;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float gi = g[i] * grad_scale;
        float mi = b1 * mm[i] + (1.0f - b1) * gi;
        float vi = b2 * vv[i] + (1.0f - b2) * gi * gi;
        mm[i] = mi;
        vv[i] = vi;
        float mhat = mi / bc1, vhat = vi / bc2;
        p[i] -= lr * (mhat / (sqrtf(vhat) + eps) + wd * p[i]);
        if (copy) copy[i] = f32_to_bf16(p[i]);
    }
}

Status cpu_adamw_step(Backend *be, Tensor param, Tensor grad, Tensor m, Tensor v, Tensor param_copy,
                      AdamWConfig cfg) {
    TRY(check_param("adamw_step", param, grad, m, v, param_copy));
    TRY(adamw_config_check(cfg));
    adamw_update(param, grad, m, v, param_copy, cfg, cfg.weight_decay, 1.0f);
    return STATUS_OK;
}

Status cpu_adamw_step_multi(Backend *be, const AdamWParam *params, int n, AdamWConfig cfg, float grad_scale) {
    TRY(adamw_config_check(cfg));
    TRY(adamw_grad_scale_check(grad_scale));
    for (int i = 0; i < n; i++) {
        const AdamWParam *q = &params[i];
        if (check_param("adamw_step_multi", q->param, q->grad, q->m, q->v, q->param_copy) != STATUS_OK)
            return error_context("parameter %d: ", i);
    }
    for (int i = 0; i < n; i++) {
        const AdamWParam *q = &params[i];
        adamw_update(q->param, q->grad, q->m, q->v, q->param_copy, cfg, q->decay ? cfg.weight_decay : 0.0f,
                     grad_scale);
    }
    return STATUS_OK;
}
