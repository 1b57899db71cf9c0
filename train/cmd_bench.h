/* `mlatrain bench --config FILE [--steps N]`: times the training step after warm-up and prints one
 * JSON line (the fields of shared/bench's PyTorch baselines, plus FLOPs and MFU). */
#pragma once

#include "core/status.h"

Status cmd_bench(int argc, char **argv, int *show_help);
void cmd_bench_usage(void);
