/* `mlatrain generate --model DIR (--prompt TEXT | --prompt-ids 1,2,3) ...`: text or ids from a
 * teacher or an MLA student, decoded from the KV cache. */
#pragma once

#include "core/status.h"

Status cmd_generate(int argc, char **argv, int *show_help);
void cmd_generate_usage(void);
