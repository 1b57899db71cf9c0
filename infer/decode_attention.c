/* decode_attention: checks the shapes every backend relies on, then runs the backend's kernel. */
#include "infer/decode_attention.h"

#include <math.h>
#include <string.h>

static Status check_shapes(Tensor out, Tensor q, Tensor k, Tensor k_shared, Tensor v, float scale) {
    const char *op = "decode_attention";
    if (q.dtype != DT_F32 && q.dtype != DT_BF16) return errorf("%s: q is %s, expected f32 or bf16", op, dtype_name(q.dtype));
    DType dt = q.dtype;
    TRY(tensor_check(op, "q", q, dt, 2, (int64_t[]){-1, -1}));
    TRY(tensor_check(op, "k", k, dt, 3, (int64_t[]){-1, -1, -1}));
    int64_t H = q.shape[0], n = k.shape[0], Hk = k.shape[1], Dk = k.shape[2], Ds = 0;
    if (tensor_present(k_shared)) {
        TRY(tensor_check(op, "k_shared", k_shared, dt, 2, (int64_t[]){n, -1}));
        Ds = k_shared.shape[1];
    }
    if (n < 1) return errorf("%s: no cached tokens to attend to", op);
    if (Hk < 1 || H % Hk != 0)
        return errorf("%s: q has %lld heads, not a multiple of the %lld kv heads of k", op, (long long)H, (long long)Hk);
    if (q.shape[1] != Dk + Ds)
        return errorf("%s: q has head width %lld, expected Dk + Ds = %lld + %lld", op, (long long)q.shape[1],
                      (long long)Dk, (long long)Ds);
    TRY(tensor_check(op, "v", v, dt, 3, (int64_t[]){n, Hk, -1}));
    TRY(tensor_check(op, "out", out, dt, 2, (int64_t[]){H, v.shape[2]}));
    if (!isfinite(scale)) return errorf("%s: scale is %g, expected a finite number", op, (double)scale);
    return STATUS_OK;
}

Status decode_attention(Backend *be, Tensor out, Tensor q, Tensor k, Tensor k_shared, Tensor v, float scale) {
    TRY(check_shapes(out, q, k, k_shared, v, scale));
    if (strcmp(be->name, "cpu") == 0) return cpu_decode_attention(be, out, q, k, k_shared, v, scale);
    return errorf("decode_attention: no kernel for the %s backend", be->name);
}
