/* Shared by the conversion tests: a small GQA teacher with room for ranks to matter, its logits on
 * fixed ids, and a conversion compared against it. */
#pragma once

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "model/convert/convert.h"
#include "model/model.h"
#include "model_fixtures.h"

/* D=32, H=4 over K kv heads, hd=8 (4 pairs), F=40, V=50, 2 layers. */
static inline ModelConfig convert_teacher_config(int K) {
    ModelConfig c = tiny_teacher_config(0);
    c.hidden_size = 32;
    c.intermediate_size = 40;
    c.vocab_size = 50;
    c.num_attention_heads = 4;
    c.num_key_value_heads = K;
    c.head_dim = 8;
    return c;
}

static inline Model *convert_make_teacher(Backend *be, ModelConfig c, int64_t seq, uint64_t seed) {
    Model *m = NULL;
    CHECK_OK(model_create(&m, be, &c, seq));
    CHECK_OK(model_init_random(m, seed, 0.3f));
    return m;
}

/* Logits [batch*seq, V] of a model on fixed ids. */
static inline float *convert_logits_of(Backend *be, Model *m, int64_t batch, int64_t seq) {
    int64_t N = batch * seq, D = m->cfg.hidden_size, V = m->cfg.vocab_size;
    int32_t *ids = test_alloc((size_t)N * sizeof(int32_t));
    for (int64_t i = 0; i < N; i++) ids[i] = (int32_t)((i * 17 + 4) % V);
    ForwardState *st = NULL;
    float *hidden = test_alloc((size_t)(N * D) * 4), *logits = test_alloc((size_t)(N * V) * 4);
    CHECK_OK(forward_state_create(&st, m, batch, seq, 0));
    Tensor tid = tensor_view(ids, DT_I32, 1, &N), th = tensor_view(hidden, DT_F32, 2, (int64_t[]){N, D});
    CHECK_OK(model_forward(m, st, tid, th));
    CHECK_OK(be->ops.linear_forward(be, tensor_view(logits, DT_F32, 2, (int64_t[]){N, V}), th, m->lm_head, tensor_none()));
    forward_state_destroy(st);
    free(hidden);
    free(ids);
    return logits;
}

/* Converts with o (calibrating on o's batch and sequence length) and returns the relative error of
 * the student's logits against the teacher's on the same shape. */
static inline double convert_and_compare(Backend *be, Model *teacher, const ConvertOptions *o, ConvertReport *rep) {
    Model *student = NULL;
    if (!CHECK_OK(mla_convert(&student, teacher, o, rep))) return INFINITY;
    int64_t n = o->n_calib_seqs * o->calib_seq * teacher->cfg.vocab_size;
    float *lt = convert_logits_of(be, teacher, o->n_calib_seqs, o->calib_seq);
    float *ls = convert_logits_of(be, student, o->n_calib_seqs, o->calib_seq);
    double err = rel_error_f32(ls, lt, n);
    free(lt);
    free(ls);
    model_destroy(student);
    return err;
}

static inline double convert_total_error(const ConvertReport *r) {
    double s = 0;
    for (int l = 0; l < r->n_layers; l++) s += r->layers[l].attn_rel_error;
    return s;
}

/* Every bias of m drawn at `scale` (model_init_random leaves them zero). */
static inline void randomize_biases(Model *m, uint64_t seed, float scale) {
    for (int i = 0; i < m->n_params; i++) {
        Param *p = &m->params[i];
        if (!strstr(p->name, ".bias")) continue;
        int64_t n = tensor_numel(*p->value);
        float *host = test_alloc((size_t)n * sizeof(float));
        fill_normal(host, n, seed + (uint64_t)i, scale);
        CHECK_OK(backend_upload_f32(m->be, *p->value, host));
        free(host);
    }
    model_weights_changed(m);
}
