/* The SwiGLU gate on the CPU, forward and backward: out = silu(gate) * up, as in the MLP of Llama,
 * Qwen2 and Mistral. Elementwise, so every thread count gives the same bits. */
#include "cpu_ops.h"
#include "vector_math.h"

Status cpu_swiglu_forward(Backend *be, Tensor out, Tensor gate, Tensor up) {
    TRY(tensor_check("swiglu_forward", "gate", gate, DT_F32, 2, (int64_t[]){-1, -1}));
    TRY(tensor_check("swiglu_forward", "up", up, DT_F32, 2, gate.shape));
    TRY(tensor_check("swiglu_forward", "out", out, DT_F32, 2, gate.shape));
    const float *g = tensor_f32(gate), *u = tensor_f32(up);   /* (N, F) */
    float *o = tensor_f32(out);                               /* (N, F) */
    int64_t n = tensor_numel(gate);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        /* silu as PyTorch writes it, x / (1 + exp(-x)); exp overflowing to inf gives -0, the limit.
         * cpu_expf, not expf, so that the loop vectorizes. */
        float silu = g[i] / (1.0f + cpu_expf(-g[i]));
        o[i] = silu * u[i];
    }
    return STATUS_OK;
}

/* dgate = dout * up * s * (1 + gate * (1 - s)) with s = sigmoid(gate); dup = dout * silu(gate). */
Status cpu_swiglu_backward(Backend *be, Tensor dgate, Tensor dup, Tensor dout, Tensor gate, Tensor up) {
    TRY(tensor_check("swiglu_backward", "gate", gate, DT_F32, 2, (int64_t[]){-1, -1}));
    TRY(tensor_check("swiglu_backward", "up", up, DT_F32, 2, gate.shape));
    TRY(tensor_check("swiglu_backward", "dout", dout, DT_F32, 2, gate.shape));
    TRY(tensor_check("swiglu_backward", "dgate", dgate, DT_F32, 2, gate.shape));
    TRY(tensor_check("swiglu_backward", "dup", dup, DT_F32, 2, gate.shape));
    const float *g = tensor_f32(gate), *u = tensor_f32(up), *d = tensor_f32(dout); /* (N, F) */
    float *dg = tensor_f32(dgate), *du = tensor_f32(dup);                          /* (N, F) */
    int64_t n = tensor_numel(gate);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float e = cpu_expf(-g[i]);
        float s = 1.0f / (1.0f + e);
        float silu = g[i] / (1.0f + e);  /* the forward's silu, bit for bit */
        dg[i] = d[i] * u[i] * (s * (1.0f + g[i] * (1.0f - s)));
        du[i] = d[i] * silu;
    }
    return STATUS_OK;
}
