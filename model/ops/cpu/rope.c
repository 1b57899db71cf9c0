/* Rotary position embedding on the CPU, in place, in HF's rotate-half layout over a slice of each
 * head: the whole head for GQA, only the trailing rope dims of an MLA query head. */
#include "cpu_ops.h"

/* Checks the arguments shared by forward and backward; sets N, H, S, P. */
static Status rope_check(const char *op, const char *xname, Tensor x, int64_t offset, Tensor cos,
                         Tensor sin, Tensor pos, int64_t *N, int64_t *H, int64_t *S, int64_t *P) {
    TRY(tensor_check(op, xname, x, DT_F32, 3, (int64_t[]){-1, -1, -1}));
    TRY(tensor_check(op, "cos", cos, DT_F32, 2, (int64_t[]){-1, -1}));
    TRY(tensor_check(op, "sin", sin, DT_F32, 2, cos.shape));
    TRY(tensor_check(op, "pos", pos, DT_I32, 1, (int64_t[]){x.shape[0]}));
    *N = x.shape[0];
    *H = x.shape[1];
    *S = x.shape[2];
    *P = cos.shape[1];
    if (offset < 0) return errorf("%s: offset %lld is negative", op, (long long)offset);
    if (offset + 2 * *P > *S)
        return errorf("%s: offset %lld + 2 x %lld pairs = %lld exceeds the head stride S = %lld of %s", op,
                      (long long)offset, (long long)*P, (long long)(offset + 2 * *P), (long long)*S, xname);
    int64_t max_pos = cos.shape[0];
    const int32_t *p = tensor_i32(pos);
    for (int64_t n = 0; n < *N; n++)
        if (p[n] < 0 || p[n] >= max_pos)
            return errorf("%s: pos[%lld] = %d is outside the tables' positions [0, %lld)", op, (long long)n,
                          p[n], (long long)max_pos);
    return STATUS_OK;
}

/* Rotates each pair (x1, x2) by the tabulated angle, its sine taken with sign sin_sign: +1 turns
 * forward, -1 applies the inverse (the transpose), which is what the gradient needs. */
static void rope_rotate(float *x, int64_t N, int64_t H, int64_t S, int64_t P, int64_t offset,
                        const float *cos, const float *sin, const int32_t *pos, float sin_sign) {
#pragma omp parallel for schedule(static)
    for (int64_t item = 0; item < N * H; item++) {
        int64_t n = item / H;
        const float *c = cos + (int64_t)pos[n] * P, *s = sin + (int64_t)pos[n] * P;   /* (P) */
        float *x1 = x + item * S + offset, *x2 = x1 + P;
        for (int64_t i = 0; i < P; i++) {
            float si = sin_sign * s[i];
            float a = x1[i], b = x2[i];
            x1[i] = a * c[i] - b * si;
            x2[i] = b * c[i] + a * si;
        }
    }
}

Status cpu_rope_forward(Backend *be, Tensor x, int64_t offset, Tensor cos, Tensor sin, Tensor pos) {
    int64_t N, H, S, P;
    TRY(rope_check("rope_forward", "x", x, offset, cos, sin, pos, &N, &H, &S, &P));
    rope_rotate(tensor_f32(x), N, H, S, P, offset, tensor_f32(cos), tensor_f32(sin), tensor_i32(pos), 1.0f);
    return STATUS_OK;
}

Status cpu_rope_backward(Backend *be, Tensor dx, int64_t offset, Tensor cos, Tensor sin, Tensor pos) {
    int64_t N, H, S, P;
    TRY(rope_check("rope_backward", "dx", dx, offset, cos, sin, pos, &N, &H, &S, &P));
    rope_rotate(tensor_f32(dx), N, H, S, P, offset, tensor_f32(cos), tensor_f32(sin), tensor_i32(pos), -1.0f);
    return STATUS_OK;
}
