/* AdamW over every parameter of a model: moments on the model's backend, the decay mask (norms,
 * embeddings and biases exempt unless asked), and one step at a given learning rate. */
#pragma once

#include <stdint.h>

#include "model/model.h"

typedef struct {
    double beta1, beta2, eps, weight_decay;
    int decay_norms_and_embeddings;
} OptimizerConfig;

typedef struct {
    Model *model;
    OptimizerConfig cfg;
    Tensor *m, *v;        /* [n_params], shaped as the parameters */
    int64_t step;         /* optimizer steps taken */
} Optimizer;

Status optimizer_create(Optimizer *opt, Model *model, OptimizerConfig cfg);
void optimizer_destroy(Optimizer *opt);

/* One AdamW step on the model's accumulated gradients, read as grad * grad_scale (clipping,
 * grad_clip_scale; 1 = as is), at learning rate lr: one multi-tensor op over every parameter. */
Status optimizer_step(Optimizer *opt, double lr, float grad_scale);

/* Whether weight decay applies to parameter i. */
int optimizer_decays(const Optimizer *opt, int i);

/* Number of values of all parameters laid end to end in registry order (the flat order). */
int64_t optimizer_flat_size(const Model *m);

/* The moments in the flat order, to and from host arrays of optimizer_flat_size values. */
Status optimizer_get_flat_moments(const Optimizer *opt, float *m, float *v);
Status optimizer_set_flat_moments(Optimizer *opt, const float *m, const float *v);
