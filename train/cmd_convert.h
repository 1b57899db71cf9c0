/* `mlatrain convert --config FILE --out DIR`: upcycles student.init_from into an MLA student,
 * prints and writes the per-layer report, and writes the student in DeepSeek-V2's HF layout. */
#pragma once

#include "core/status.h"

/* argv holds the options after "convert"; *show_help is set when --help was asked for. */
Status cmd_convert(int argc, char **argv, int *show_help);
void cmd_convert_usage(void);
