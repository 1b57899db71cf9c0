/* `mlatrain export --checkpoint PATH --out DIR`: writes a student in DeepSeek-V2's HF layout, with
 * the dtype and sharding asked for. */
#pragma once

#include "core/status.h"

Status cmd_export(int argc, char **argv, int *show_help);
void cmd_export_usage(void);
