/* One student MLA layer made from its teacher layer on the backend and installed in the student;
 * with the host copies and the selection test the conversion passes share. */
#pragma once
#include "core/backend.h"
#include "model/convert/convert.h"
#include "model/convert/rorope.h"
#include "model/model.h"

/* Converts teacher layer l into student layer l: the key split (rorope fit `fit` with pair spacing
 * `step`, or the teacher pairs `pairs`) and the latent basis, calibrated on a [N, D] (the normed
 * input the layer is fed), then the q bottleneck and the norms' fits; fills rep's kept energy and
 * rope pairs. */
Status convert_layer(Model *student, Model *teacher, int l, const ConvertOptions *o, const float *teacher_inv_freq,
                     const int *pairs, const RoropeFit *fit, int step, Tensor a, LayerReport *rep);

/* A host copy of a backend tensor (float32, malloc'd into *out). */
Status convert_download(Backend *be, Tensor t, float **out);

int rope_select_is_rorope(RopeSelect s);
