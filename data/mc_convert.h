/* Multiple-choice text (HellaSwag's JSON lines) into task files of token ids (train/tasks.h) with
 * the byte tokenizer. Behind `mlatrain data mc`; the format is in docs/eval.md. */
#pragma once

#include <stdint.h>

#include "core/status.h"

typedef struct {
    uint64_t inputs, items, endings;
    uint64_t longest;           /* the most tokens of one context + ending */
} McConvertResult;

/* Each non-blank input line is an object with "ctx" (or "ctx_a" and "ctx_b", joined by a space),
 * "endings" (at least two strings) and "label" (an integer or a string of digits). The task line
 * written is {"context": [eos, bytes of ctx], "endings": [[bytes of " " + ending], ...],
 * "label": k}: eos (256) marks a document start as in training data, and the space separates
 * the ending from the context as a continuation would. Other keys are ignored. out_path is
 * written atomically. Errors name the file and line. */
Status mc_convert_text(const char *const *inputs, int n_inputs, const char *out_path, McConvertResult *result);
