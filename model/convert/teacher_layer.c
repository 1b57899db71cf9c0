/* Teacher attention weights for conversion: downloaded per layer, q/k/v biases appended as a last
 * input column so that the latent basis, the RoPE split and the width matching carry them as they
 * carry any weight, and exactly where the conversion itself is exact. */
#include "model/convert/teacher_layer.h"

#include <stdlib.h>
#include <string.h>

/* rows x (D + extra) host copy of w [rows, D], with bias (or zeros, when bias is absent) as the
 * last column when extra = 1. */
static Status download_widened(Backend *be, Tensor w, Tensor bias, int extra, float **out) {
    int64_t rows = w.shape[0], D = w.shape[1], cols = D + extra;
    float *plain = malloc((size_t)(rows * D) * sizeof(float));
    float *b = extra ? calloc((size_t)rows, sizeof(float)) : NULL;
    *out = malloc((size_t)(rows * cols) * sizeof(float));
    Status st = plain && *out && (!extra || b) ? STATUS_OK : errorf("convert: out of memory");
    if (st == STATUS_OK) st = backend_download_f32(be, plain, w);
    if (st == STATUS_OK && extra && tensor_present(bias)) st = backend_download_f32(be, b, bias);
    for (int64_t i = 0; st == STATUS_OK && i < rows; i++) {
        memcpy(*out + i * cols, plain + i * D, (size_t)D * sizeof(float));
        if (extra) (*out)[i * cols + D] = b[i];
    }
    free(plain);
    free(b);
    return st;
}

Status teacher_layer_load(Backend *be, const Model *teacher, int l, int with_bias, int want_q, int want_vo,
                          TeacherLayer *t) {
    memset(t, 0, sizeof *t);
    const ModelConfig *c = &teacher->cfg;
    const LayerWeights *w = &teacher->layers[l];
    int extra = with_bias ? 1 : 0;
    int64_t D = c->hidden_size;
    t->biased = extra;
    t->g = (GqaWeights){D + extra, c->num_attention_heads, c->num_key_value_heads, c->head_dim, NULL, NULL, NULL, NULL};
    Status st = STATUS_OK;
    if (want_q) st = download_widened(be, w->q_proj, w->q_bias, extra, &t->buffers[0]);
    if (st == STATUS_OK) st = download_widened(be, w->k_proj, w->k_bias, extra, &t->buffers[1]);
    if (st == STATUS_OK && want_vo) st = download_widened(be, w->v_proj, w->v_bias, extra, &t->buffers[2]);
    if (st == STATUS_OK && want_vo) {
        /* o_proj [D, H hd] gains a zero row: the widened input's extra column is not an output. */
        int64_t cols = w->o_proj.shape[1];
        t->buffers[3] = calloc((size_t)((D + extra) * cols), sizeof(float));
        st = t->buffers[3] ? backend_download_f32(be, t->buffers[3], w->o_proj) : errorf("convert: out of memory");
    }
    if (st != STATUS_OK) {
        teacher_layer_free(t);
        return st;
    }
    t->g.wq = t->buffers[0];
    t->g.wk = t->buffers[1];
    t->g.wv = t->buffers[2];
    t->g.wo = t->buffers[3];
    return STATUS_OK;
}

void teacher_layer_free(TeacherLayer *t) {
    for (int i = 0; i < 4; i++) free(t->buffers[i]);
    memset(t, 0, sizeof *t);
}

float *calibration_with_ones(const float *a, int64_t N, int64_t D) {
    float *out = malloc((size_t)(N * (D + 1)) * sizeof(float));
    if (!out) return NULL;
    for (int64_t n = 0; n < N; n++) {
        memcpy(out + n * (D + 1), a + n * D, (size_t)D * sizeof(float));
        out[n * (D + 1) + D] = 1.0f;
    }
    return out;
}

void split_bias_column(const float *src, int64_t rows, int64_t D, float *W, float *b) {
    for (int64_t i = 0; i < rows; i++) {
        memcpy(W + i * D, src + i * (D + 1), (size_t)D * sizeof(float));
        b[i] = src[i * (D + 1) + D];
    }
}
