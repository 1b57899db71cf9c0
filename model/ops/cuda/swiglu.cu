/* The SwiGLU gate on the GPU, forward and backward: out = silu(gate) * up, elementwise, with the
 * CPU's formulas (silu as x / (1 + exp(-x)), so an overflowing exp gives the limit -0). */
#include <math.h>

#include "cuda_ops.h"
#include "cuda_state.h"
#include "storage.cuh"

static const int SWIGLU_THREADS = 256;

template <typename T> __global__ void swiglu_forward_elems(T *out, const T *gate, const T *up, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float g = to_f32(gate[i]);
        out[i] = from_f32<T>(g / (1.0f + expf(-g)) * to_f32(up[i]));
    }
}

/* dgate = dout * up * s * (1 + gate * (1 - s)) with s = sigmoid(gate); dup = dout * silu(gate). */
template <typename T>
__global__ void swiglu_backward_elems(T *dgate, T *dup, const T *dout, const T *gate, const T *up, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float g = to_f32(gate[i]), d = to_f32(dout[i]);
        float e = expf(-g);
        float s = 1.0f / (1.0f + e);
        float silu = g / (1.0f + e);
        dgate[i] = from_f32<T>(d * to_f32(up[i]) * (s * (1.0f + g * (1.0f - s))));
        dup[i] = from_f32<T>(d * silu);
    }
}

static int grid_for(int64_t n) {
    int64_t b = (n + SWIGLU_THREADS - 1) / SWIGLU_THREADS;
    return (int)(b < 65535 * 16 ? (b > 0 ? b : 1) : 65535 * 16);
}

Status cuda_swiglu_forward(Backend *be, Tensor out, Tensor gate, Tensor up) {
    DType dt = DT_F32;
    StorageArg args[] = {{"out", out}, {"gate", gate}, {"up", up}};
    TRY(storage_dtype("swiglu_forward", args, 3, &dt));
    TRY(tensor_check_dims("swiglu_forward", "gate", gate, dt, 2, -1, -1));
    TRY(tensor_check("swiglu_forward", "up", up, dt, 2, gate.shape));
    TRY(tensor_check("swiglu_forward", "out", out, dt, 2, gate.shape));
    int64_t n = tensor_numel(gate);
    if (n == 0) return STATUS_OK;
    WITH_STORAGE(dt, T,
                 swiglu_forward_elems<<<grid_for(n), SWIGLU_THREADS, 0, cuda_state(be)->stream>>>(
                     (T *)out.data, (const T *)gate.data, (const T *)up.data, n));
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}

Status cuda_swiglu_backward(Backend *be, Tensor dgate, Tensor dup, Tensor dout, Tensor gate, Tensor up) {
    DType dt = DT_F32;
    StorageArg args[] = {{"dgate", dgate}, {"dup", dup}, {"dout", dout}, {"gate", gate}, {"up", up}};
    TRY(storage_dtype("swiglu_backward", args, 5, &dt));
    TRY(tensor_check_dims("swiglu_backward", "gate", gate, dt, 2, -1, -1));
    TRY(tensor_check("swiglu_backward", "up", up, dt, 2, gate.shape));
    TRY(tensor_check("swiglu_backward", "dout", dout, dt, 2, gate.shape));
    TRY(tensor_check("swiglu_backward", "dgate", dgate, dt, 2, gate.shape));
    TRY(tensor_check("swiglu_backward", "dup", dup, dt, 2, gate.shape));
    int64_t n = tensor_numel(gate);
    if (n == 0) return STATUS_OK;
    WITH_STORAGE(dt, T,
                 swiglu_backward_elems<<<grid_for(n), SWIGLU_THREADS, 0, cuda_state(be)->stream>>>(
                     (T *)dgate.data, (T *)dup.data, (const T *)dout.data, (const T *)gate.data, (const T *)up.data,
                     n));
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}
