/* `mlatrain eval --config FILE [--json OUT]`: the evaluation figures of a run's student (converted at
 * init, or an exported/final student) and teacher on data.val, without training. */
#pragma once

#include "core/status.h"

Status cmd_eval(int argc, char **argv, int *show_help);
void cmd_eval_usage(void);
