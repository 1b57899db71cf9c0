/* The communicator of a job with one rank: sums over one rank are the values themselves. */
#include <stdlib.h>
#include <string.h>

#include "dist/comm.h"

static Status single_all_reduce_f32(Comm *c, float *buf, int64_t n) { return STATUS_OK; }
static Status single_all_reduce_f64(Comm *c, double *buf, int64_t n) { return STATUS_OK; }
static Status single_all_reduce_max_i32(Comm *c, int32_t *buf, int64_t n) { return STATUS_OK; }

static Status single_reduce_scatter(Comm *c, const float *send, float *recv, int64_t count) {
    if (send != recv) memmove(recv, send, (size_t)count * sizeof(float));
    return STATUS_OK;
}

static Status single_all_gather(Comm *c, const float *send, float *recv, int64_t count) {
    if (send != recv) memmove(recv, send, (size_t)count * sizeof(float));
    return STATUS_OK;
}

static Status single_broadcast(Comm *c, void *buf, size_t bytes, int root) {
    if (root != 0) return errorf("broadcast: root %d does not exist in a job of one rank", root);
    return STATUS_OK;
}

static Status single_barrier(Comm *c) { return STATUS_OK; }
static void single_abort(Comm *c, int status) { exit(status); }
static void single_destroy(Comm *c) { free(c); }

Status comm_single_create(Comm **out) {
    Comm *c = calloc(1, sizeof *c);
    if (!c) return errorf("communicator: out of memory");
    c->name = "single";
    c->env.rank = 0;
    c->env.world = 1;
    strcpy(c->env.launcher, "single");
    c->all_reduce_sum_f32 = single_all_reduce_f32;
    c->all_reduce_sum_f64 = single_all_reduce_f64;
    c->all_reduce_max_i32 = single_all_reduce_max_i32;
    c->reduce_scatter_sum_f32 = single_reduce_scatter;
    c->all_gather_f32 = single_all_gather;
    c->broadcast = single_broadcast;
    c->barrier = single_barrier;
    c->abort = single_abort;
    c->destroy = single_destroy;
    *out = c;
    return STATUS_OK;
}

void comm_destroy(Comm *c) {
    if (c) c->destroy(c);
}
