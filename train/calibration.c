/* Calibration tokens: training data read in order (so evaluation on data.val stays held out), else
 * validation data, else random ids. */
#include "train/calibration.h"

#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "data/loader.h"

/* The first n_seqs windows of a file list (data.train or data.val) in order, inputs only. */
static Status read_windows(const Config *cfg, const char *key, const ConfigPathList *files, int64_t vocab_size,
                           Calibration *out) {
    const char *patterns[CONFIG_LIST_MAX];
    for (int i = 0; i < files->count; i++) patterns[i] = files->items[i];
    LoaderOptions lo = {.patterns = patterns, .n_patterns = files->count, .seq_len = (int)out->seq,
                        .seed = (uint64_t)cfg->run.seed, .rank = 0, .world = 1, .shuffle = 0};
    Loader *L = NULL;
    if (loader_open(&L, &lo) != STATUS_OK) return error_context("%s: ", key);
    Status st = STATUS_OK;
    if ((int64_t)loader_vocab_size(L) > vocab_size)
        st = errorf("%s: vocab_size %u exceeds the model's %lld", key, loader_vocab_size(L), (long long)vocab_size);
    uint64_t have = loader_windows_per_epoch(L);
    if (st == STATUS_OK && (uint64_t)out->n_seqs > have) out->n_seqs = (int64_t)have;
    int32_t *window = malloc((size_t)(out->seq + 1) * sizeof(int32_t));
    if (st == STATUS_OK && !window) st = errorf("calibration: out of memory");
    for (int64_t w = 0; st == STATUS_OK && w < out->n_seqs; w++) {
        st = loader_read_window(L, (uint64_t)w, window);
        if (st == STATUS_OK) memcpy(out->ids + w * out->seq, window, (size_t)out->seq * sizeof(int32_t));
    }
    free(window);
    loader_close(L);
    return st;
}

Status calibration_tokens(const Config *cfg, int64_t vocab_size, int64_t seq, Calibration *out) {
    memset(out, 0, sizeof *out);
    int64_t want = cfg->student.mla.calibration_tokens;
    if (seq > want) seq = want;
    int64_t n_seqs = want / seq > 0 ? want / seq : 1;
    out->ids = malloc((size_t)(n_seqs * seq) * sizeof(int32_t));
    if (!out->ids) return errorf("calibration: out of memory for %lld tokens", (long long)(n_seqs * seq));
    out->n_seqs = n_seqs;
    out->seq = seq;
    if (cfg->data.train.count > 0) {
        out->from_data = 1;
        out->source = "data.train";
        return read_windows(cfg, "data.train", &cfg->data.train, vocab_size, out);
    }
    if (cfg->data.val.count > 0) {
        out->from_data = 1;
        out->source = "data.val";
        return read_windows(cfg, "data.val", &cfg->data.val, vocab_size, out);
    }
    out->source = "random tokens: no data.train or data.val";
    for (int64_t i = 0; i < n_seqs * seq; i++)
        out->ids[i] = (int32_t)rng_below((uint64_t)cfg->run.seed, 0xca11b, (uint64_t)i, (uint64_t)vocab_size);
    return STATUS_OK;
}

void calibration_free(Calibration *c) {
    free(c->ids);
    c->ids = NULL;
}
