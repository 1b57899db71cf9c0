/* The CUDA backend's ops, each checked against its CPU twin by the gpu-labelled tests; contracts
 * in core/backend.h. Storage for the ops here is float32. */
#pragma once

#include "core/backend.h"

/* Blocks in the first pass of every reduction: fixed, so the summation order (and the bits) does
 * not depend on the device or its occupancy. */
#define CUDA_REDUCE_BLOCKS 512

Status cuda_adamw_step(Backend *be, Tensor param, Tensor grad, Tensor m, Tensor v, AdamWConfig cfg);
Status cuda_sum_squares(Backend *be, double *out, Tensor t);
Status cuda_scale(Backend *be, Tensor t, float s);
Status cuda_accumulate(Backend *be, Tensor y, Tensor x);
