/* `mlatrain data <subcommand>`: preparing token files (text, llm.c shards, JSON lines), their
 * summary, and a loader throughput measurement. */
#pragma once

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* argv[0] is the subcommand (text, llmc-bin, jsonl, summary, bench), the rest its arguments.
 * Prints results and --help text to stdout; on error prints nothing and returns the error. */
Status cmd_data(int argc, char **argv);

#ifdef __cplusplus
}
#endif
