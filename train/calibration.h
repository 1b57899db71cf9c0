/* Calibration tokens for conversion and its report: the first tokens of data.train (else data.val)
 * in file order, else tokens drawn at random (seeded by run.seed). */
#pragma once

#include <stdint.h>

#include "core/status.h"
#include "train/config.h"

typedef struct {
    int32_t *ids;         /* [n_seqs * seq] */
    int64_t n_seqs, seq;
    int from_data;
    const char *source;   /* "data.train", "data.val" or why random */
} Calibration;

/* student.mla.calibration_tokens tokens (at least one sequence), as sequences of up to `seq`. */
Status calibration_tokens(const Config *cfg, int64_t vocab_size, int64_t seq, Calibration *out);
void calibration_free(Calibration *c);
