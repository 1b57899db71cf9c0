/* Rotary position embedding on the GPU, in place, in HF's rotate-half layout over a slice of each
 * head: one thread per rotated pair, the same arithmetic as the CPU's. */
#include "cuda_ops.h"
#include "cuda_state.h"
#include "storage.cuh"

static const int ROPE_THREADS = 256;

/* Pair i of head (n, h): (x[off + i], x[off + P + i]) turned by pos[n]'s angle, its sine taken
 * with sign sin_sign (-1: the inverse rotation, which is the gradient's). */
template <typename T>
__global__ void rope_rotate(T *x, int64_t N, int64_t H, int64_t S, int64_t P, int64_t offset,
                                const float *cos, const float *sin, const int32_t *pos, int64_t max_pos,
                                float sin_sign) {
    int64_t total = N * H * P;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
        int64_t i = t % P, nh = t / P, n = nh / H;
        if (pos[n] < 0 || pos[n] >= max_pos) continue; /* reported by the queued check */
        int64_t row = (int64_t)pos[n] * P + i;
        float c = cos[row], si = sin_sign * sin[row];
        T *x1 = x + nh * S + offset + i, *x2 = x1 + P;
        float a = to_f32(*x1), b = to_f32(*x2);
        *x1 = from_f32<T>(a * c - b * si);
        *x2 = from_f32<T>(b * c + a * si);
    }
}

static Status report_bad_position(const CudaIndexCheck *c, int64_t at, int32_t value) {
    return errorf("%s: pos[%lld] = %d is outside the tables' positions [0, %lld)", c->op, (long long)at, value,
                  (long long)c->limit);
}

/* The CPU's checks; the positions' range is checked on the device and reported at the next
 * synchronisation point. Sets N, H, S, P. */
static Status rope_check(Backend *be, const char *op, const char *xname, Tensor x, int64_t offset, Tensor cos,
                         Tensor sin, Tensor pos, int64_t *N, int64_t *H, int64_t *S, int64_t *P) {
    DType dt = DT_F32;
    StorageArg args[] = {{xname, x}};
    TRY(storage_dtype(op, args, 1, &dt));
    TRY(tensor_check_dims(op, xname, x, dt, 3, -1, -1, -1));
    TRY(tensor_check_dims(op, "cos", cos, DT_F32, 2, -1, -1));
    TRY(tensor_check(op, "sin", sin, DT_F32, 2, cos.shape));
    TRY(tensor_check_dims(op, "pos", pos, DT_I32, 1, x.shape[0]));
    *N = x.shape[0];
    *H = x.shape[1];
    *S = x.shape[2];
    *P = cos.shape[1];
    if (offset < 0) return errorf("%s: offset %lld is negative", op, (long long)offset);
    if (offset + 2 * *P > *S)
        return errorf("%s: offset %lld + 2 x %lld pairs = %lld exceeds the head stride S = %lld of %s", op,
                      (long long)offset, (long long)*P, (long long)(offset + 2 * *P), (long long)*S, xname);
    return cuda_check_indices(be, op, pos, cos.shape[0], 0, 0, report_bad_position);
}

static Status rope_launch(Backend *be, Tensor x, int64_t N, int64_t H, int64_t S, int64_t P, int64_t offset,
                          Tensor cos, Tensor sin, Tensor pos, float sin_sign) {
    int64_t total = N * H * P;
    if (total == 0) return STATUS_OK;
    int64_t blocks = (total + ROPE_THREADS - 1) / ROPE_THREADS;
    if (blocks > 65535 * 16) blocks = 65535 * 16;
    WITH_STORAGE(x.dtype, T,
                 rope_rotate<<<(int)blocks, ROPE_THREADS, 0, cuda_state(be)->stream>>>(
                     (T *)x.data, N, H, S, P, offset, tensor_f32(cos), tensor_f32(sin), tensor_i32(pos), cos.shape[0], sin_sign));
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}

Status cuda_rope_forward(Backend *be, Tensor x, int64_t offset, Tensor cos, Tensor sin, Tensor pos) {
    int64_t N, H, S, P;
    TRY(rope_check(be, "rope_forward", "x", x, offset, cos, sin, pos, &N, &H, &S, &P));
    return rope_launch(be, x, N, H, S, P, offset, cos, sin, pos, 1.0f);
}

Status cuda_rope_backward(Backend *be, Tensor dx, int64_t offset, Tensor cos, Tensor sin, Tensor pos) {
    int64_t N, H, S, P;
    TRY(rope_check(be, "rope_backward", "dx", dx, offset, cos, sin, pos, &N, &H, &S, &P));
    return rope_launch(be, dx, N, H, S, P, offset, cos, sin, pos, -1.0f);
}
