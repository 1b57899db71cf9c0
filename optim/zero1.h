/* ZeRO-1 on any backend: AdamW's moments sharded across data-parallel ranks. Gradients are
 * reduce-scattered over the flat parameter order, each rank clips and updates its shard, and the
 * updated weights are all-gathered, so every rank ends the step with the same bits. */
#pragma once

#include "dist/comm.h"
#include "model/model.h"
#include "optim/optimizer.h"

typedef struct {
    Model *model;
    Comm *comm;
    OptimizerConfig cfg;
    int64_t n, per, lo, hi;   /* flat size, shard size (n padded to a multiple of world), this rank's range */
    /* f32 tensors in the model's backend memory (the communicator's: host for MPI, device for NCCL) */
    Tensor flat;              /* [per * world] gradients packed, then the gathered weights */
    Tensor grad, m, v;        /* [per]: this rank's summed gradient shard and moments */
    int64_t step;
} Zero1;

Status zero1_create(Zero1 *z, Model *model, OptimizerConfig cfg, Comm *comm);
void zero1_destroy(Zero1 *z);

/* Sums the ranks' gradients (each already scaled by 1 / the global token count), clips to
 * grad_clip (0 = off) by the global norm, which *norm receives, updates this rank's shard at lr,
 * and gathers the new weights into every rank's model. */
Status zero1_step(Zero1 *z, double lr, double grad_clip, double *norm);

/* This rank's moments [hi - lo] to and from host memory (checkpoints). */
Status zero1_get_moments(const Zero1 *z, float *m, float *v);
Status zero1_set_moments(Zero1 *z, const float *m, const float *v);
