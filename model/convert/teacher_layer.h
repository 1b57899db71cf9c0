/* A teacher layer's attention weights on the host for conversion, with q/k/v biases carried as one
 * more input column: [W | b] acting on [a ; 1], so every conversion method treats a bias as a weight. */
#pragma once

#include "core/backend.h"
#include "model/convert/convert_layer.h"
#include "model/model.h"

typedef struct {
    GqaWeights g;     /* g.D = D + 1 when biased (the last column the bias), else D */
    int biased;
    float *buffers[4];
} TeacherLayer;

/* Downloads layer l's q/k/v/o projections. with_bias: appends the layer's q/k/v biases as a last
 * column (o_proj gains a zero last row, so its output width matches the widened input). Any of
 * want_q/want_vo 0 skips those tensors (their pointers stay NULL). */
Status teacher_layer_load(Backend *be, const Model *teacher, int l, int with_bias, int want_q, int want_vo,
                          TeacherLayer *out);
void teacher_layer_free(TeacherLayer *t);

/* Calibration rows a [N, D] as the widened input [N, D + 1] (a last column of ones); NULL when out of
 * memory. */
float *calibration_with_ones(const float *a, int64_t N, int64_t D);

/* Splits src [rows, D + 1] into W [rows, D] and its last column b [rows]. */
void split_bias_column(const float *src, int64_t rows, int64_t D, float *W, float *b);
