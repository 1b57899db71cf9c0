/* Calibration tokens: validation data read in order (as evaluation reads it), or random ids. */
#include "train/calibration.h"

#include <stdlib.h>
#include <string.h>

#include "core/rng.h"

Status calibration_tokens(const Config *cfg, int64_t vocab_size, int64_t seq, Calibration *out) {
    memset(out, 0, sizeof *out);
    int64_t want = cfg->student.mla.calibration_tokens;
    if (seq > want) seq = want;
    int64_t n_seqs = want / seq > 0 ? want / seq : 1;
    out->ids = malloc((size_t)(n_seqs * seq) * sizeof(int32_t));
    if (!out->ids) return errorf("calibration: out of memory for %lld tokens", (long long)(n_seqs * seq));
    out->n_seqs = n_seqs;
    out->seq = seq;
    for (int64_t i = 0; i < n_seqs * seq; i++)
        out->ids[i] = (int32_t)rng_below((uint64_t)cfg->run.seed, 0xca11b, (uint64_t)i, (uint64_t)vocab_size);
    return STATUS_OK;
}

void calibration_free(Calibration *c) {
    free(c->ids);
    c->ids = NULL;
}
