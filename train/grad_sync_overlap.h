/* Data-parallel gradient sums on a GPU, bucketed by layer and overlapped with backward. As soon as
 * the last micro-batch's backward has written a layer's gradients, the communicator's own stream
 * takes them up and sums them over the ranks while the compute stream goes on with the layers
 * below; the compute stream waits for the sums before clipping and AdamW. This is the path for a
 * communicator with stream-ordered sums (NCCL); any other keeps grad_all_reduce's.
 *
 * A bucket is one layer's gradient tensors summed in place as one NCCL group: layer L-1 first, down
 * to layer 0, then the embedding, final norm and head. In place, because a packed bucket costs two
 * extra passes over the gradients (copy in, copy out) that compete with backward for memory
 * bandwidth. For configs/bench_1b.json's student (MLA, D 2048, F 8192) a layer holds ~62M values,
 * 246 MB: packing reads and writes ~1 GB, ~0.3 ms at an H100's 3.35 TB/s, against ~1 ms for the
 * sum itself over 8 GPUs (2 x 7/8 x 246 MB at ~450 GB/s of NVLink bus bandwidth). One group a
 * layer, because NCCL then launches one kernel for the layer's ~10 tensors instead of one each
 * (the norm vectors, 2048 values, would each pay a launch and a round of latency, some 10 us).
 * These figures are estimates from the data sheets, not measurements; bench_grad_sync measures
 * the whole step.
 *
 * Without overlap (dist.overlap false) the same groups are issued in the same order after
 * backward, so both give the same bits: NCCL sums each element of a group the same way whenever the
 * group is issued. Only the last micro-batch's backward starts sums: earlier ones accumulate. */
#pragma once

#include "dist/comm.h"
#include "model/model.h"

/* One optimizer step's sums. */
typedef struct {
    Comm *comm;
    Model *model;
    int by_layer;          /* the communicator sums on its own stream: the groups below apply */
    int overlap;           /* start each group during the last backward */
    int issued;            /* groups issued so far: layers L-1 .. 0, then the rest */
    void *compute_stream;  /* the stream backward runs on (a cudaStream_t; NULL on the CPU) */
} GradSync;

/* The sums of one step of m's gradients over c's ranks; overlap is dist.overlap (pass 0 where the
 * step sums its gradients some other way, as ZeRO-1 does). */
GradSync grad_sync_start(Comm *c, Model *m, int overlap);

/* One micro-batch's backward, accumulating into the gradients. On the step's last one (`last`),
 * with overlap, each layer's group is issued as soon as backward has written it. */
Status grad_sync_backward(GradSync *s, ForwardState *st, Tensor dhidden, int last);

/* After the last backward: issues the groups not issued yet (all of them without overlap), then
 * makes the compute stream wait for every sum and waits for them on the host, bounded by the
 * communicator's timeout. With a communicator without stream-ordered sums: grad_all_reduce (its
 * `bucket`). */
Status grad_sync_finish(GradSync *s, float *bucket);
