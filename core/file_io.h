/* Durable file writes: a file is replaced whole or not at all, so a crash or an error never
 * leaves a half-written config, report or checkpoint file behind. */
#pragma once

#include <stddef.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Writes data to a temporary file beside path (so the rename stays on one filesystem), fsyncs it,
 * renames it over path, then fsyncs the folder so the rename survives a crash. Mode 0644. The
 * temporary file is removed on any error. */
Status file_write_atomic(const char *path, const void *data, size_t n);

/* mkdir -p: creates path and its missing parents (0755); an existing non-directory is an error. */
Status make_dirs(const char *path);

/* fsync of the folder holding path (best effort: some filesystems refuse it). */
void fsync_parent_dir(const char *path);

#ifdef __cplusplus
}
#endif
