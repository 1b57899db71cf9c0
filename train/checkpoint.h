/* Checkpoints: everything a bitwise-identical continuation needs, in HDF5 (chunked, fletcher32),
 * written atomically (temporary folder, fsync, rename, then the `latest` pointer), validated on
 * load (format version, CRC-32 of every file, shapes), older ones pruned only after a newer one is
 * complete. Layout and guarantees: docs/checkpoints.md. */
#pragma once

#include <stdint.h>

#include "data/loader.h"
#include "dist/comm.h"
#include "model/model.h"

#define CHECKPOINT_FORMAT_VERSION 1

typedef struct {
    int64_t step, tokens;
    int has_cursor;
    LoaderCursor cursor;      /* global counts: resumable on another world size */
    int world_size;
} CheckpointState;

/* AdamW's moments over the parameters laid end to end in registry order (the flat order), of which
 * a rank holds [lo, hi): all of them without ZeRO-1, its shard with it. Host memory. */
typedef struct {
    int64_t n_total, lo, hi;
    float *m, *v;             /* [hi - lo] */
    int64_t adamw_step;
} OptimizerShard;

/* Collective over comm: <run_dir>/checkpoints/step_<N> holds model.h5 (weights, model config, rope
 * frequencies, run state, effective config; rank 0 writes it), optimizer_rank<R>.h5 (each rank
 * with a non-NULL shard writes its range) and manifest.json (size and CRC-32 of every file,
 * written last by rank 0). keep_last >= 1 complete checkpoints remain. run_dir must be on a file
 * system every rank sees. */
Status checkpoint_save(Comm *comm, const char *run_dir, const Model *student, const OptimizerShard *shard,
                       const CheckpointState *st, const char *effective_config_json, int keep_last);

/* Removes <run_dir>/checkpoints and everything in it (a run started over). */
Status checkpoint_remove_all(const char *run_dir);

/* The newest complete and valid checkpoint: `latest` first, then the others newest first; a broken
 * one is reported on stderr and skipped. *found = 0 when there is none. */
Status checkpoint_find(const char *run_dir, char *dir_out, size_t n, int *found);

/* Sizes and CRC-32 of the files against the manifest. */
Status checkpoint_verify(const char *ckpt_dir);

/* The model's architecture, the run state and the effective config (caller frees) of a checkpoint. */
Status checkpoint_read_header(const char *ckpt_dir, ModelConfig *mc, CheckpointState *st, char **effective_config_json);

/* Weights and MLA rope frequencies into m (built from the header's config). */
Status checkpoint_load(const char *ckpt_dir, Model *m);

/* The moments of [shard->lo, shard->hi) into shard->m and v, gathered from whichever
 * optimizer_rank files hold them (a run may resume on another number of ranks). */
Status checkpoint_load_optimizer(const char *ckpt_dir, OptimizerShard *shard);

/* The steps of the step_<N> folders in <run_dir>/checkpoints, oldest first, complete or not
 * (checkpoint_verify tells); the caller frees *steps. None when the folder does not exist. */
Status checkpoint_list(const char *run_dir, int64_t **steps, int *n);

/* <run_dir>/checkpoints/step_<N>, as checkpoint_save names it. */
Status checkpoint_step_dir(const char *run_dir, int64_t step, char *out, size_t n);
