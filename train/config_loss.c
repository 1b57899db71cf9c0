/* The fused LM head's LossConfig from a run config's `loss` section: the weights, the temperature,
 * the divergence and the chunking, converted once for every training caller of the loss ops. */
#include "train/config_loss.h"

LossConfig config_loss(const Config *cfg) {
    LossKind kind = LOSS_FORWARD_KL;
    switch (cfg->loss.kind) {
    case CONFIG_LOSS_FORWARD_KL: kind = LOSS_FORWARD_KL; break;
    case CONFIG_LOSS_REVERSE_KL: kind = LOSS_REVERSE_KL; break;
    case CONFIG_LOSS_JSD: kind = LOSS_JSD; break;
    }
    LossConfig lc = {.kl_weight = (float)cfg->loss.kl_weight,
                     .ce_weight = (float)cfg->loss.ce_weight,
                     .temperature = (float)cfg->loss.temperature,
                     .ignore_index = -100,
                     .chunk_tokens = cfg->loss.chunk_tokens,
                     .kind = kind,
                     .jsd_beta = kind == LOSS_JSD ? (float)cfg->loss.jsd_beta : 0.0f};
    return lc;
}
