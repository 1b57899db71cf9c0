/* The checks every backend's fused LM-head loss applies to its LossConfig, and the names of the
 * distillation divergences, so that the CPU and CUDA ops refuse the same configs with one message. */
#include "core/backend.h"

#include <math.h>

const char *loss_kind_name(LossKind kind) {
    switch (kind) {
    case LOSS_FORWARD_KL: return "forward_kl";
    case LOSS_REVERSE_KL: return "reverse_kl";
    case LOSS_JSD: return "jsd";
    }
    return NULL;
}

Status loss_config_check(const char *op, LossConfig cfg, float grad_scale) {
    if (!(cfg.temperature > 0) || !isfinite(cfg.temperature))
        return errorf("%s: temperature must be finite and > 0, got %g", op, cfg.temperature);
    if (!(cfg.kl_weight >= 0) || !isfinite(cfg.kl_weight))
        return errorf("%s: kl_weight must be finite and >= 0, got %g", op, cfg.kl_weight);
    if (!(cfg.ce_weight >= 0) || !isfinite(cfg.ce_weight))
        return errorf("%s: ce_weight must be finite and >= 0, got %g", op, cfg.ce_weight);
    if (!isfinite(grad_scale)) return errorf("%s: grad_scale must be finite, got %g", op, grad_scale);
    if (cfg.chunk_tokens < 0)
        return errorf("%s: chunk_tokens must be >= 0 (0 = default), got %lld", op, (long long)cfg.chunk_tokens);
    if (loss_kind_name(cfg.kind) == NULL)
        return errorf("%s: unknown loss kind %d (known: forward_kl, reverse_kl, jsd)", op, (int)cfg.kind);
    /* At beta = 0 or 1 the mixture is one of the two distributions and the divergence is 0: TRL
     * substitutes the plain KLs there, which are the kinds forward_kl and reverse_kl here. */
    if (cfg.kind == LOSS_JSD && !(cfg.jsd_beta > 0 && cfg.jsd_beta < 1))
        return errorf("%s: jsd_beta must lie in (0, 1) for the jsd loss, got %g (beta -> 0 and 1 are "
                      "forward_kl and reverse_kl, up to the factor beta or 1 - beta)", op, cfg.jsd_beta);
    return STATUS_OK;
}
