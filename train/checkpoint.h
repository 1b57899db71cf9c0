/* Checkpoints: everything a bitwise-identical continuation needs, in HDF5 (chunked, fletcher32),
 * written atomically (temporary folder, fsync, rename, then the `latest` pointer), validated on
 * load (format version, CRC-32 of every file, shapes), older ones pruned only after a newer one is
 * complete. Layout and guarantees: docs/checkpoints.md. */
#pragma once

#include <stdint.h>

#include "data/loader.h"
#include "model/model.h"
#include "optim/optimizer.h"

#define CHECKPOINT_FORMAT_VERSION 1

typedef struct {
    int64_t step, tokens;
    int has_cursor;
    LoaderCursor cursor;      /* global counts: resumable on another world size */
    int world_size;
} CheckpointState;

/* <run_dir>/checkpoints/step_<N>: model.h5 (weights, model config, rope frequencies, run state,
 * effective config), optimizer_rank<R>.h5 (AdamW moments and step), manifest.json (size and CRC-32
 * of each file, written last). keep_last >= 1 complete checkpoints remain. */
Status checkpoint_save(const char *run_dir, const Model *student, const Optimizer *opt, const CheckpointState *st,
                       const char *effective_config_json, int keep_last);

/* Removes <run_dir>/checkpoints and everything in it (a run started over). */
Status checkpoint_remove_all(const char *run_dir);

/* The newest complete and valid checkpoint: `latest` first, then the others newest first; a broken
 * one is reported on stderr and skipped. *found = 0 when there is none. */
Status checkpoint_find(const char *run_dir, char *dir_out, size_t n, int *found);

/* Sizes and CRC-32 of the files against the manifest. */
Status checkpoint_verify(const char *ckpt_dir);

/* The model's architecture, the run state and the effective config (caller frees) of a checkpoint. */
Status checkpoint_read_header(const char *ckpt_dir, ModelConfig *mc, CheckpointState *st, char **effective_config_json);

/* Weights and MLA rope frequencies into m (built from the header's config); moments into opt when
 * not NULL. */
Status checkpoint_load(const char *ckpt_dir, Model *m, Optimizer *opt);
