/* Models for the decoding tests: every parameter random (so biases and norms matter), and the full
 * forward's logits over a sequence, the reference cached decoding is held to. */
#pragma once

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "infer/decode.h"
#include "model/model.h"

/* Matrices and biases N(0, 0.3) (peaked attention, so a wrong key or position shows), norms
 * 1 + N(0, 0.1); the same values on any backend for the same seed. */
static inline Model *random_model(Backend *be, const ModelConfig *cfg, int64_t max_seq, uint64_t seed) {
    Model *m = NULL;
    if (!CHECK_OK(model_create(&m, be, cfg, max_seq))) return NULL;
    for (int i = 0; i < m->n_params; i++) {
        Tensor t = *m->params[i].value;
        int64_t n = tensor_numel(t);
        float *x = test_alloc((size_t)n * sizeof *x);
        int norm = strstr(m->params[i].name, "norm") != NULL;
        fill_normal(x, n, seed * 1000 + (uint64_t)i, norm ? 0.1f : 0.3f);
        if (norm)
            for (int64_t j = 0; j < n; j++) x[j] += 1.0f;
        CHECK_OK(backend_upload_f32(be, t, x));
        free(x);
    }
    model_weights_changed(m);
    return m;
}

/* Logits [n, V] at every position: prefill of `prefill` tokens, then one step per token. */
static inline float *decoded_logits(Model *m, const int32_t *ids, int64_t n, int64_t prefill, DecodeMlaMode mode) {
    const int64_t V = m->cfg.vocab_size;
    float *out = test_alloc((size_t)(n * V) * sizeof *out), *last = test_alloc((size_t)V * sizeof *last);
    Decoder *d = NULL;
    if (CHECK_OK(decoder_create(&d, m, n, mode))) {
        CHECK_OK(decoder_prefill(d, ids, prefill, last, out));
        CHECK(memcmp(last, out + (prefill - 1) * V, (size_t)V * sizeof *last) == 0,
              "prefill's last logits are its last row");
        for (int64_t t = prefill; t < n; t++) CHECK_OK(decoder_step(d, ids[t], out + t * V));
        CHECK(decoder_cache(d)->length == n, "the cache holds %lld tokens, expected %lld",
              (long long)decoder_cache(d)->length, (long long)n);
    }
    decoder_destroy(d);
    free(last);
    return out;
}

/* Worst relative error over positions, ||row - ref row|| / ||ref row||, and where. */
static inline double worst_row_error(const float *a, const float *ref, int64_t n, int64_t V, int64_t *where) {
    double worst = 0;
    for (int64_t t = 0; t < n; t++) {
        double e = rel_error_f32(a + t * V, ref + t * V, V);
        if (e > worst || isnan(e)) {
            worst = e;
            *where = t;
        }
    }
    return worst;
}
