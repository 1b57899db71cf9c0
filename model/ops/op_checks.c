/* The argument checks the backends' ops share, written once so that every backend refuses a bad
 * call in the same words; they depend on no backend. */
#include "core/backend.h"

#include <math.h>

Status attention_decode_check(Tensor out, Tensor q, Tensor k, Tensor k_shared, Tensor v, float scale, DType dt,
                              DecodeDims *dims) {
    const char *op = "attention_decode";
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
    *dims = (DecodeDims){.H = H, .n = n, .Hk = Hk, .Dk = Dk, .Ds = Ds, .Dv = v.shape[2]};
    return STATUS_OK;
}

Status storage_dtype_note(const char *op, const char *name, Tensor t, int *noted, DType *dt) {
    if (!tensor_present(t)) return STATUS_OK;
    if (t.dtype != DT_F32 && t.dtype != DT_BF16)
        return errorf("%s: %s is %s; storage tensors are f32 or bf16", op, name, dtype_name(t.dtype));
    if (*noted && t.dtype != *dt)
        return errorf("%s: %s is %s but the call's other storage tensors are %s (one storage dtype per call)", op, name,
                      dtype_name(t.dtype), dtype_name(*dt));
    (*noted)++;
    *dt = t.dtype;
    return STATUS_OK;
}

Status adamw_config_check(AdamWConfig cfg) {
    if (cfg.step < 1) return errorf("adamw: step must be >= 1 (bias correction), got %lld", (long long)cfg.step);
    if (!(cfg.beta1 >= 0 && cfg.beta1 < 1) || !(cfg.beta2 >= 0 && cfg.beta2 < 1))
        return errorf("adamw: beta1 and beta2 must lie in [0, 1), got %g and %g", cfg.beta1, cfg.beta2);
    if (!(cfg.eps > 0) || !isfinite(cfg.eps)) return errorf("adamw: eps must be > 0, got %g", cfg.eps);
    if (!isfinite(cfg.lr) || cfg.lr < 0) return errorf("adamw: lr must be finite and >= 0, got %g", cfg.lr);
    if (!isfinite(cfg.weight_decay) || cfg.weight_decay < 0)
        return errorf("adamw: weight_decay must be finite and >= 0, got %g", cfg.weight_decay);
    return STATUS_OK;
}

Status adamw_grad_scale_check(float grad_scale) {
    if (!(grad_scale > 0) || !isfinite(grad_scale))
        return errorf("adamw_step_multi: grad_scale must be finite and > 0, got %g", grad_scale);
    return STATUS_OK;
}
