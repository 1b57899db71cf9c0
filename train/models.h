/* The models a run needs, built from its config: the teacher (an HF folder or a random inline
 * arch, or none), and the student (the same, converted to MLA in-process when student.mla says). */
#pragma once

#include "core/backend.h"
#include "model/convert/convert.h"
#include "model/model.h"
#include "train/checkpoint.h"
#include "train/config.h"

/* What forward computes in under the config's precision: bf16 or f32 ("auto": bf16 on cuda). */
DType config_compute_dtype(const Config *cfg);

/* The teacher, or *out = NULL when the config has none; its weights are held in the compute dtype
 * (it is never trained). */
Status build_teacher(const Config *cfg, Backend *be, int64_t max_seq, Model **out);

/* student.init_from as it is (GQA, or an exported MLA student). */
Status load_student_source(const Config *cfg, Backend *be, int64_t max_seq, Model **out);

/* The conversion options student.mla describes (calibration tokens not included). */
ConvertOptions convert_options_from_config(const Config *cfg);

/* The student: student.init_from, converted when student.mla is given and the source is a GQA model.
 * When a conversion runs, *report (if not NULL) receives its report and *converted is set. */
Status build_student(const Config *cfg, Backend *be, int64_t max_seq, Model **out, ConvertReport *report,
                     int *converted);

/* Whether path is a checkpoint folder (step_<N>, with manifest.json or model.h5) or a run directory
 * (with checkpoints/ or effective_config.json), rather than a model folder. */
int is_checkpoint_path(const char *path);

/* Whether path is a folder holding config.json: a model in HF layout (an export, run.dir/final). */
int is_model_folder(const char *path);

/* The error for a path that is neither a checkpoint, a run directory nor a model folder. */
Status not_a_student_path(const char *option, const char *path);

/* The student a checkpoint holds, for sequences up to max_seq. path is a checkpoint folder
 * (verified against its manifest first) or a run directory (its newest valid checkpoint, the one a
 * resume would take). dir_out (n bytes, may be NULL) receives the folder read, *state (may be
 * NULL) its step and tokens. */
Status load_student_checkpoint(const char *path, Backend *be, int64_t max_seq, Model **out, char *dir_out, size_t n,
                               CheckpointState *state);
