/* Data-parallel gradient summation without ZeRO: the student's gradients packed into buckets of
 * whole tensors (layer order), summed over ranks, unpacked; every rank gets the same bits. */
#pragma once

#include "dist/comm.h"
#include "model/model.h"

enum { GRAD_BUCKET_VALUES = 4 << 20 }; /* 16 MB of float32 per all-reduce */

Status grad_all_reduce(Comm *c, Model *m, float *bucket);
