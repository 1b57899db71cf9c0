/* The tokenizer and generation files HF keeps beside a model, copied beside a student written from
 * it (convert's output, run.dir/final, an export) so that the student can be served as it is. */
#pragma once

#include <stddef.h>

#include "core/status.h"
#include "train/config.h"

/* Copies whichever of tokenizer.json, tokenizer_config.json, special_tokens_map.json,
 * tokenizer.model and generation_config.json src_dir holds into out_dir, each replaced whole;
 * *copied (may be NULL) receives how many. A folder holding none of them is not an error. */
Status tokenizer_files_copy(const char *src_dir, const char *out_dir, int *copied);

/* The model folder a run's tokenizer comes from: student.init_from when it is a folder holding
 * tokenizer files, else teacher.path when that holds them; NULL when neither does (inline
 * architectures, or folders without a tokenizer). */
const char *tokenizer_files_source(const Config *cfg);

/* For a student read from the checkpoint folder ckpt_dir: copies the tokenizer files of the folder
 * its run started from (tokenizer_files_source of the config the checkpoint saved) into out_dir;
 * *from (n bytes, may be NULL) receives that folder, "" when there is none. */
Status tokenizer_files_copy_for_checkpoint(const char *ckpt_dir, const char *out_dir, char *from, size_t n,
                                           int *copied);
