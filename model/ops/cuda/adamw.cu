/* AdamW on the GPU with float32 master weights and moments, the same arithmetic as the CPU
 * reference (decoupled decay, bias correction), over any number of tensors in a few launches. */
#include <math.h>

#include "cuda_ops.h"
#include "cuda_state.h"
#include "multi_tensor.cuh"
#include "storage.cuh"

static const int ADAMW_THREADS = 256;
/* Values per block: large enough that a block's fixed cost is small, small enough that the
 * norms' and biases' few thousand values do not leave the GPU idle. */
static const int64_t ADAMW_CHUNK = 16384;

/* copy (may be NULL): the bf16 weights forward reads, written here so they need no second pass. */
typedef struct {
    float *p;
    const float *g;
    float *m, *v;
    bf16 *copy;
    int64_t n;
    float wd;
} AdamWTensor;

typedef struct {
    float lr, b1, b2, eps, bc1, bc2, grad_scale;
} AdamWHyper;

/* The gradient is read as g * grad_scale rounded to f32, exactly what a scale pass followed by the
 * unscaled update computes. */
__global__ void adamw_multi_kernel(TensorBatch<AdamWTensor> batch, AdamWHyper h) {
    const int ti = batch_tensor_of(batch, blockIdx.x);
    const AdamWTensor t = batch.t[ti];
    const int64_t start = (blockIdx.x - batch.first_block[ti]) * ADAMW_CHUNK;
    const int64_t end = start + ADAMW_CHUNK < t.n ? start + ADAMW_CHUNK : t.n;
    for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
        float gi = t.g[i] * h.grad_scale;
        float mi = h.b1 * t.m[i] + (1.0f - h.b1) * gi;
        float vi = h.b2 * t.v[i] + (1.0f - h.b2) * gi * gi;
        t.m[i] = mi;
        t.v[i] = vi;
        float mhat = mi / h.bc1, vhat = vi / h.bc2;
        float pi = t.p[i] - h.lr * (mhat / (sqrtf(vhat) + h.eps) + t.wd * t.p[i]);
        t.p[i] = pi;
        if (t.copy) t.copy[i] = __float2bfloat16_rn(pi);
    }
}

static Status check_param(const char *op, const AdamWParam *q) {
    TRY(tensor_check(op, "param", q->param, DT_F32, q->param.ndim, q->param.shape));
    TRY(tensor_check(op, "grad", q->grad, DT_F32, q->param.ndim, q->param.shape));
    TRY(tensor_check(op, "m", q->m, DT_F32, q->param.ndim, q->param.shape));
    TRY(tensor_check(op, "v", q->v, DT_F32, q->param.ndim, q->param.shape));
    if (tensor_present(q->param_copy))
        TRY(tensor_check(op, "param_copy", q->param_copy, DT_BF16, q->param.ndim, q->param.shape));
    return STATUS_OK;
}

static Status launch(Backend *be, TensorBatch<AdamWTensor> *batch, AdamWHyper h) {
    int64_t blocks = batch_blocks(*batch);
    if (blocks > 0) {
        adamw_multi_kernel<<<(unsigned)blocks, ADAMW_THREADS, 0, cuda_state(be)->stream>>>(*batch, h);
        CUDA_TRY_LAUNCH();
    }
    batch_clear(batch);
    return STATUS_OK;
}

/* multi: errors name the parameter's index in the list */
static Status adamw_multi(Backend *be, const char *op, int multi, const AdamWParam *params, int n, AdamWConfig cfg,
                          float grad_scale) {
    TRY(adamw_config_check(cfg));
    TRY(adamw_grad_scale_check(grad_scale));
    for (int i = 0; i < n; i++)
        if (check_param(op, &params[i]) != STATUS_OK) return multi ? error_context("parameter %d: ", i) : STATUS_ERROR;
    AdamWHyper h = {cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, (float)(1.0 - pow(cfg.beta1, (double)cfg.step)),
                    (float)(1.0 - pow(cfg.beta2, (double)cfg.step)), grad_scale};
    TensorBatch<AdamWTensor> batch;
    batch_clear(&batch);
    for (int i = 0; i < n; i++) {
        const AdamWParam *q = &params[i];
        int64_t len = tensor_numel(q->param);
        if (len == 0) continue;
        AdamWTensor t = {tensor_f32(q->param), tensor_f32(q->grad), tensor_f32(q->m), tensor_f32(q->v),
                         (bf16 *)q->param_copy.data, len, q->decay ? cfg.weight_decay : 0.0f};
        if (batch_add(&batch, t, len, ADAMW_CHUNK)) TRY(launch(be, &batch, h));
    }
    return launch(be, &batch, h);
}

Status cuda_adamw_step(Backend *be, Tensor param, Tensor grad, Tensor m, Tensor v, Tensor param_copy,
                       AdamWConfig cfg) {
    AdamWParam q = {param, grad, m, v, param_copy, 1};
    return adamw_multi(be, "adamw_step", 0, &q, 1, cfg, 1.0f);
}

Status cuda_adamw_step_multi(Backend *be, const AdamWParam *params, int n, AdamWConfig cfg, float grad_scale) {
    return adamw_multi(be, "adamw_step_multi", 1, params, n, cfg, grad_scale);
}
