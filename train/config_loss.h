/* The fused LM head's LossConfig from a run config's `loss` section, for every caller of
 * lm_head_loss and lm_head_loss_topk in training (teacher forward or cached top-k alike). */
#pragma once

#include "core/backend.h"
#include "train/config.h"

/* The loss section as the ops take it; ignore_index -100 (HF's). */
LossConfig config_loss(const Config *cfg);
