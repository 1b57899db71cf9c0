/* `mlatrain eval --config FILE [--checkpoint PATH] [--json OUT]` and `mlatrain eval --sweep RUN_DIR...`:
 * the evaluation figures of a student (the config's, a checkpoint's, every checkpoint of runs) and
 * the teacher on data.val and eval.tasks, without training (docs/eval.md). */
#pragma once

#include "core/status.h"

Status cmd_eval(int argc, char **argv, int *show_help);
void cmd_eval_usage(void);
