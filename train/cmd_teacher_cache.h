/* `mlatrain teacher-cache --config FILE --out DIR`: the teacher's top-k log-probs and ids for every
 * window of data.train, written as a resumable, checksummed cache that training reads instead. */
#pragma once

#include "core/status.h"

Status cmd_teacher_cache(int argc, char **argv, int *show_help);
void cmd_teacher_cache_usage(void);
