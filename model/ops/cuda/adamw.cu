/* AdamW on the GPU with float32 master weights and moments: one fused elementwise kernel,
 * the same arithmetic as the CPU reference (decoupled decay, bias correction). */
#include <math.h>

#include "cuda_ops.h"
#include "cuda_state.h"
#include "storage.cuh"

/* copy (may be NULL): the bf16 weights forward reads, written here so they need no second pass. */
__global__ void adamw_f32_kernel(float *p, const float *g, float *m, float *v, bf16 *copy, int64_t n, float lr,
                                 float b1, float b2, float eps, float wd, float bc1, float bc2) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float gi = g[i];
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float mhat = mi / bc1, vhat = vi / bc2;
        float pi = p[i] - lr * (mhat / (sqrtf(vhat) + eps) + wd * p[i]);
        p[i] = pi;
        if (copy) copy[i] = __float2bfloat16_rn(pi);
    }
}

Status cuda_adamw_step(Backend *be, Tensor param, Tensor grad, Tensor m, Tensor v, Tensor param_copy,
                       AdamWConfig cfg) {
    TRY(tensor_check("adamw_step", "param", param, DT_F32, param.ndim, param.shape));
    TRY(tensor_check("adamw_step", "grad", grad, DT_F32, param.ndim, param.shape));
    TRY(tensor_check("adamw_step", "m", m, DT_F32, param.ndim, param.shape));
    TRY(tensor_check("adamw_step", "v", v, DT_F32, param.ndim, param.shape));
    if (tensor_present(param_copy))
        TRY(tensor_check("adamw_step", "param_copy", param_copy, DT_BF16, param.ndim, param.shape));
    TRY(adamw_config_check(cfg));
    int64_t n = tensor_numel(param);
    float bc1 = (float)(1.0 - pow(cfg.beta1, (double)cfg.step));
    float bc2 = (float)(1.0 - pow(cfg.beta2, (double)cfg.step));
    int64_t blocks = (n + 255) / 256;
    if (blocks > 65535 * 16) blocks = 65535 * 16;
    if (blocks < 1) blocks = 1;
    adamw_f32_kernel<<<(int)blocks, 256, 0, cuda_state(be)->stream>>>(
        tensor_f32(param), tensor_f32(grad), tensor_f32(m), tensor_f32(v), (bf16 *)param_copy.data, n, cfg.lr, cfg.beta1,
        cfg.beta2, cfg.eps, cfg.weight_decay, bc1, bc2);
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}
