/* The SwiGLU gate on the GPU, forward and backward: out = silu(gate) * up, elementwise, with the
 * CPU's formulas (silu as x / (1 + exp(-x)), so an overflowing exp gives the limit -0). */
#include <math.h>

#include "cuda_ops.h"
#include "cuda_state.h"

static const int SWIGLU_THREADS = 256;

__global__ void swiglu_forward_f32(float *out, const float *gate, const float *up, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

/* dgate = dout * up * s * (1 + gate * (1 - s)) with s = sigmoid(gate); dup = dout * silu(gate). */
__global__ void swiglu_backward_f32(float *dgate, float *dup, const float *dout, const float *gate,
                                    const float *up, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float g = gate[i], d = dout[i];
        float e = expf(-g);
        float s = 1.0f / (1.0f + e);
        float silu = g / (1.0f + e);
        dgate[i] = d * up[i] * (s * (1.0f + g * (1.0f - s)));
        dup[i] = d * silu;
    }
}

static int grid_for(int64_t n) {
    int64_t b = (n + SWIGLU_THREADS - 1) / SWIGLU_THREADS;
    return (int)(b < 65535 * 16 ? (b > 0 ? b : 1) : 65535 * 16);
}

Status cuda_swiglu_forward(Backend *be, Tensor out, Tensor gate, Tensor up) {
    TRY(tensor_check_dims("swiglu_forward", "gate", gate, DT_F32, 2, -1, -1));
    TRY(tensor_check("swiglu_forward", "up", up, DT_F32, 2, gate.shape));
    TRY(tensor_check("swiglu_forward", "out", out, DT_F32, 2, gate.shape));
    int64_t n = tensor_numel(gate);
    if (n == 0) return STATUS_OK;
    swiglu_forward_f32<<<grid_for(n), SWIGLU_THREADS, 0, cuda_state(be)->stream>>>(tensor_f32(out), tensor_f32(gate),
                                                                                   tensor_f32(up), n);
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}

Status cuda_swiglu_backward(Backend *be, Tensor dgate, Tensor dup, Tensor dout, Tensor gate, Tensor up) {
    TRY(tensor_check_dims("swiglu_backward", "gate", gate, DT_F32, 2, -1, -1));
    TRY(tensor_check("swiglu_backward", "up", up, DT_F32, 2, gate.shape));
    TRY(tensor_check("swiglu_backward", "dout", dout, DT_F32, 2, gate.shape));
    TRY(tensor_check("swiglu_backward", "dgate", dgate, DT_F32, 2, gate.shape));
    TRY(tensor_check("swiglu_backward", "dup", dup, DT_F32, 2, gate.shape));
    int64_t n = tensor_numel(gate);
    if (n == 0) return STATUS_OK;
    swiglu_backward_f32<<<grid_for(n), SWIGLU_THREADS, 0, cuda_state(be)->stream>>>(
        tensor_f32(dgate), tensor_f32(dup), tensor_f32(dout), tensor_f32(gate), tensor_f32(up), n);
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}
