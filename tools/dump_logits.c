/* Logits of a model folder in HF layout as mlatrain reads it (hf_model_load, float32 on the CPU), for
 * comparing with another implementation: tools/check-exports.py. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "model/hf/hf_model.h"
#include "model/model.h"

/* usage: dump_logits MODEL_DIR IDS.bin T OUT.bin
 * IDS.bin: int32 ids, a whole number of sequences of T tokens; OUT.bin: float32 [n_ids, vocab]. */
static Status run(const char *dir, const char *ids_path, long T, const char *out_path) {
    FILE *f = fopen(ids_path, "rb");
    if (!f) return errorf("%s: cannot open", ids_path);
    fseek(f, 0, SEEK_END);
    long bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    int64_t N = bytes / 4;
    int32_t *ids = malloc((size_t)(N > 0 ? N : 1) * 4);
    size_t got = ids ? fread(ids, 4, (size_t)N, f) : 0;
    fclose(f);
    if (!ids || (int64_t)got != N || N == 0 || T <= 0 || N % T != 0) {
        free(ids);
        return errorf("%s: expected a whole number of sequences of %ld int32 ids (%ld bytes)", ids_path, T, bytes);
    }
    Backend *be = NULL;
    TRY(backend_create(&be, "cpu", (BackendOptions){.threads = 0, .device = 0}));
    Model *m = NULL;
    Status st = hf_model_load(&m, be, dir, T);
    int64_t D = m ? m->cfg.hidden_size : 0, V = m ? m->cfg.vocab_size : 0, B = N / T;
    float *hidden = NULL, *logits = NULL;
    ForwardState *fs = NULL;
    if (st == STATUS_OK) {
        hidden = malloc((size_t)(N * D) * 4);
        logits = malloc((size_t)(N * V) * 4);
        if (!hidden || !logits) st = errorf("out of memory for %lld x %lld logits", (long long)N, (long long)V);
    }
    if (st == STATUS_OK) st = forward_state_create(&fs, m, B, T, FORWARD_INFERENCE);
    if (st == STATUS_OK) {
        Tensor tid = tensor_view(ids, DT_I32, 1, &N), th = tensor_view(hidden, DT_F32, 2, (int64_t[]){N, D});
        st = model_forward(m, fs, tid, th);
        if (st == STATUS_OK)
            st = be->ops.linear_forward(be, tensor_view(logits, DT_F32, 2, (int64_t[]){N, V}), th, m->lm_head,
                                        tensor_none());
    }
    if (st == STATUS_OK) {
        FILE *o = fopen(out_path, "wb");
        if (!o || fwrite(logits, 4, (size_t)(N * V), o) != (size_t)(N * V)) st = errorf("%s: cannot write", out_path);
        if (o && fclose(o) != 0) st = errorf("%s: cannot write", out_path);
    }
    forward_state_destroy(fs);
    model_destroy(m);
    backend_destroy(be);
    free(ids);
    free(hidden);
    free(logits);
    return st;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: dump_logits MODEL_DIR IDS.bin T OUT.bin\n");
        return 2;
    }
    if (run(argv[1], argv[2], strtol(argv[3], NULL, 10), argv[4]) != STATUS_OK) {
        fprintf(stderr, "dump_logits: %s\n", error_message());
        return 1;
    }
    return 0;
}
