/* The token loader: a dataset (files or globs) cut into windows of seq_len + 1 tokens, read in
 * a seeded order shared by all ranks, each rank taking its share, resumable from a small cursor. */
#pragma once

#include <stdint.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Windows: each file, in the order given (each glob's matches sorted by name), is cut into
 * non-overlapping windows of seq_len + 1 tokens from its first token; a file's last partial
 * window is dropped and no window spans two files. Window w of the dataset is the w-th such
 * window in that order; an epoch is every window once.
 *
 * Order: global position s = epoch * windows_per_epoch + position reads window
 * shuffle_window(seed, epoch, windows_per_epoch, position) (training) or window `position`
 * (validation, no shuffle). So the stream of windows is a function of the seed and the data
 * alone, and ranks only split it: each call to loader_next takes the next rows * world global
 * positions, of which rank r reads those with offset r, r + world, r + 2 world, ... */
typedef struct {
    const char *const *patterns; /* file paths or glob patterns */
    int n_patterns;
    int seq_len;                 /* tokens of input per window; a window holds seq_len + 1 */
    uint64_t seed;               /* run.seed */
    int rank, world;             /* 0 <= rank < world */
    int shuffle;                 /* 1: the training order; 0: the validation order */
    int max_open_files;          /* files kept open at once; 0 for the default (16) */
} LoaderOptions;

/* What a checkpoint stores. Counts are global (all ranks together), so a run can resume on
 * another number of ranks. */
typedef struct {
    uint64_t epoch;
    uint64_t position;          /* windows of this epoch already consumed */
    uint64_t windows_per_epoch; /* the dataset's size when saved; resuming onto other data is refused */
} LoaderCursor;

typedef struct Loader Loader;

/* Expands the patterns and opens every file to validate it and count its windows (nothing is
 * read but the layout). Errors: an empty glob, an unreadable or malformed file, a file shorter
 * than one window, files that disagree on vocab_size or eos_id. */
Status loader_open(Loader **out, const LoaderOptions *o);
void loader_close(Loader *L);

uint64_t loader_windows_per_epoch(const Loader *L);
uint64_t loader_total_tokens(const Loader *L);
uint32_t loader_vocab_size(const Loader *L);
uint32_t loader_eos_id(const Loader *L);
int loader_file_count(const Loader *L);
const char *loader_file_path(const Loader *L, int i);

/* The next rows windows of this rank, rows x (seq_len + 1) ids: inputs are a row's first seq_len
 * ids, targets its last seq_len. Advances the cursor by rows * world; every rank passes the same
 * rows. On error the cursor stays where it was. */
Status loader_next(Loader *L, int rows, int32_t *windows);

/* Window w (< windows_per_epoch) in dataset order, seq_len + 1 ids. Evaluation (DESIGN.md
 * section 7) reads w = rank, rank + world, ... below min(windows_per_epoch, eval.max_windows). */
Status loader_read_window(Loader *L, uint64_t w, int32_t *dst);

/* The window index read at global position s (see above), and where that window lies. */
uint64_t loader_window_at(const Loader *L, uint64_t s);
void loader_window_source(const Loader *L, uint64_t w, int *file, uint64_t *first_token);

LoaderCursor loader_cursor(const Loader *L);
/* Continues from a saved cursor; refused when the dataset's window count has changed. */
Status loader_seek(Loader *L, LoaderCursor c);

#ifdef __cplusplus
}
#endif
