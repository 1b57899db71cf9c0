/* The NCCL communicator for GPU tensors: a non-blocking NCCL communicator whose every call is
 * polled against the timeout and aborted on a timeout or an asynchronous error, on its own stream.
 * Every operation runs on that one stream in the order issued: the synchronous collectives, and the
 * sums a training step starts during backward (all_reduce_sum_f32_after), which that stream takes
 * up once the compute stream has reached them. A few host values (loss totals, stop flags) are
 * staged through the GPU. */
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dist/comm_internal.h"

/* Host values of the in-place collectives go through these buffers in pieces of this size: the
 * trainer's host collectives are a few dozen bytes (a 4 KB path at most). */
enum { STAGE_BYTES = 64 << 10 };

typedef struct {
    ncclComm_t nccl;
    cudaStream_t stream;  /* every operation of the communicator, in the order issued */
    cudaEvent_t after;    /* recorded on a caller's stream: where `stream` takes up its sums */
    cudaEvent_t issued;   /* recorded on `stream`: where a caller's stream waits for them */
    void *host_stage;     /* [STAGE_BYTES] pinned: a copy from it never blocks the host */
    void *dev_stage;      /* [STAGE_BYTES] */
    int *flag;     /* one int on the device: what barrier() sums */
    int device;
    int rank;
    int aborted;   /* after a failure every call is refused: NCCL's state is gone */
    double timeout_s;
    Comm *oob;     /* the host communicator that carried the unique id, or NULL */
} NcclImpl;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double deadline_after(double timeout_s) { return timeout_s > 0 ? now_s() + timeout_s : 1e300; }

static void pause_briefly(void) {
    struct timespec t = {0, 20000}; /* 20 us: short next to a collective, idle enough for the CPU */
    nanosleep(&t, NULL);
}

/* After a failure NCCL's operations in flight are undefined; aborting frees the communicator and
 * makes the peers' operations fail instead of hang. */
static void abort_comm(NcclImpl *m) {
    if (!m->aborted && m->nccl) ncclCommAbort(m->nccl);
    m->aborted = 1;
}

static Status fail(NcclImpl *m, const char *op, const char *what, const char *detail) {
    abort_comm(m);
    return errorf("rank %d: nccl %s: %s: %s; the communicator was aborted", m->rank, op, what, detail);
}

static Status timed_out(NcclImpl *m, const char *op) {
    abort_comm(m);
    return errorf("rank %d: nccl %s did not complete within %g s: another rank has died or is stuck; "
                  "the communicator was aborted",
                  m->rank, op, m->timeout_s);
}

/* The communicator's own state: ncclInProgress while a non-blocking call (init, enqueue,
 * finalize) is still under way. No NCCL call may be issued until it has left that state. */
static Status wait_ready(NcclImpl *m, const char *op, double deadline) {
    for (;;) {
        ncclResult_t state = ncclSuccess;
        ncclResult_t rc = ncclCommGetAsyncError(m->nccl, &state);
        if (rc != ncclSuccess) return fail(m, op, "ncclCommGetAsyncError failed", ncclGetErrorString(rc));
        if (state == ncclSuccess) return STATUS_OK;
        if (state != ncclInProgress) return fail(m, op, ncclGetErrorString(state), ncclGetLastError(m->nccl));
        if (now_s() > deadline) return timed_out(m, op);
        pause_briefly();
    }
}

/* An enqueued collective has finished when its stream has; meanwhile a peer's failure shows up
 * as an asynchronous error. */
static Status wait_done(NcclImpl *m, const char *op, double deadline) {
    for (;;) {
        cudaError_t e = cudaStreamQuery(m->stream);
        if (e == cudaSuccess) return STATUS_OK;
        if (e != cudaErrorNotReady) return fail(m, op, "the stream failed", cudaGetErrorString(e));
        ncclResult_t state = ncclSuccess;
        ncclResult_t rc = ncclCommGetAsyncError(m->nccl, &state);
        if (rc != ncclSuccess) return fail(m, op, "ncclCommGetAsyncError failed", ncclGetErrorString(rc));
        if (state != ncclSuccess && state != ncclInProgress)
            return fail(m, op, ncclGetErrorString(state), ncclGetLastError(m->nccl));
        if (now_s() > deadline) return timed_out(m, op);
        pause_briefly();
    }
}

/* After an NCCL call returned rc: the operation is on the stream (a non-blocking communicator may
 * still be enqueueing it; no other call may come before it has). */
static Status enqueued(NcclImpl *m, const char *op, ncclResult_t rc, double deadline) {
    if (rc != ncclSuccess && rc != ncclInProgress) return fail(m, op, ncclGetErrorString(rc), ncclGetLastError(m->nccl));
    if (rc == ncclInProgress) TRY(wait_ready(m, op, deadline));
    return STATUS_OK;
}

/* What every synchronous collective does after its NCCL call returned rc. */
static Status finish(NcclImpl *m, const char *op, ncclResult_t rc, double deadline) {
    TRY(enqueued(m, op, rc, deadline));
    return wait_done(m, op, deadline);
}

/* Checks shared by the collectives; makes this rank's GPU current for the calling thread. */
static Status start(NcclImpl *m, const char *op, int64_t n, const void *buf) {
    if (m->aborted) return errorf("rank %d: nccl %s: the communicator was aborted after an earlier failure", m->rank, op);
    if (n < 0) return errorf("rank %d: nccl %s: negative count %lld", m->rank, op, (long long)n);
    if (n > 0 && !buf) return errorf("rank %d: nccl %s: NULL buffer for %lld values", m->rank, op, (long long)n);
    cudaError_t e = cudaSetDevice(m->device);
    if (e != cudaSuccess)
        return errorf("rank %d: nccl %s: cudaSetDevice(%d) failed: %s", m->rank, op, m->device, cudaGetErrorString(e));
    return STATUS_OK;
}

/* Memory the GPU cannot address directly: plain (or pinned) host memory. */
static int is_host_memory(const void *p) {
    cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        cudaGetLastError(); /* not a pointer CUDA knows: host memory (and no sticky error) */
        return 1;
    }
    return a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeManaged;
}

static Status device_only(NcclImpl *m, const char *op, const void *p, const char *what) {
    if (p && is_host_memory(p))
        return errorf("rank %d: nccl %s: %s is host memory; this collective takes device memory only", m->rank, op, what);
    return STATUS_OK;
}

/* What an in-place collective does to `count` values at dev (device memory), on the stream. */
typedef struct {
    int broadcast; /* from `root`; else an all-reduce with `reduce` */
    ncclDataType_t type;
    ncclRedOp_t reduce;
    int root;
} InPlace;

static ncclResult_t enqueue_in_place(NcclImpl *m, void *dev, size_t count, const InPlace *how) {
    if (how->broadcast) return ncclBroadcast(dev, dev, count, how->type, how->root, m->nccl, m->stream);
    return ncclAllReduce(dev, dev, count, how->type, how->reduce, m->nccl, m->stream);
}

/* An in-place collective on n values of `elem` bytes. Host values go through the staging buffers,
 * a piece at a time, their copies on the same stream; each piece is one NCCL call, so every rank
 * still gets the same bits. */
static Status in_place(Comm *c, void *buf, int64_t n, size_t elem, const InPlace *how, const char *op) {
    NcclImpl *m = (NcclImpl *)c->impl;
    TRY(start(m, op, n, buf));
    if (n == 0) return STATUS_OK;
    double deadline = deadline_after(m->timeout_s);
    if (!is_host_memory(buf)) return finish(m, op, enqueue_in_place(m, buf, (size_t)n, how), deadline);
    int64_t per = (int64_t)(STAGE_BYTES / elem);
    for (int64_t at = 0; at < n; at += per) {
        int64_t k = n - at < per ? n - at : per;
        size_t bytes = (size_t)k * elem;
        char *host = (char *)buf + (size_t)at * elem;
        memcpy(m->host_stage, host, bytes);
        cudaError_t e = cudaMemcpyAsync(m->dev_stage, m->host_stage, bytes, cudaMemcpyHostToDevice, m->stream);
        if (e != cudaSuccess) return fail(m, op, "copying host values to the GPU", cudaGetErrorString(e));
        TRY(enqueued(m, op, enqueue_in_place(m, m->dev_stage, (size_t)k, how), deadline));
        e = cudaMemcpyAsync(m->host_stage, m->dev_stage, bytes, cudaMemcpyDeviceToHost, m->stream);
        if (e != cudaSuccess) return fail(m, op, "copying the result back to the host", cudaGetErrorString(e));
        TRY(wait_done(m, op, deadline));
        memcpy(host, m->host_stage, bytes);
    }
    return STATUS_OK;
}

static int overlaps(const void *a, size_t abytes, const void *b, size_t bbytes) {
    const char *pa = (const char *)a, *pb = (const char *)b;
    return pa < pb + bbytes && pb < pa + abytes;
}

/* NCCL's rings and trees sum each element on one rank and forward the result, so every rank gets
 * the same bits. */
static Status nccl_all_reduce_sum_f32(Comm *c, float *buf, int64_t n) {
    InPlace how = {0, ncclFloat32, ncclSum, 0};
    return in_place(c, buf, n, sizeof *buf, &how, "all_reduce_sum_f32");
}

static Status nccl_all_reduce_sum_f64(Comm *c, double *buf, int64_t n) {
    InPlace how = {0, ncclFloat64, ncclSum, 0};
    return in_place(c, buf, n, sizeof *buf, &how, "all_reduce_sum_f64");
}

static Status nccl_all_reduce_max_i32(Comm *c, int32_t *buf, int64_t n) {
    InPlace how = {0, ncclInt32, ncclMax, 0};
    return in_place(c, buf, n, sizeof *buf, &how, "all_reduce_max_i32");
}

static Status nccl_reduce_scatter_sum_f32(Comm *c, const float *send, float *recv, int64_t count) {
    NcclImpl *m = (NcclImpl *)c->impl;
    const char *op = "reduce_scatter_sum_f32";
    TRY(start(m, op, count, send));
    TRY(start(m, op, count, recv));
    if (count == 0) return STATUS_OK;
    TRY(device_only(m, op, send, "send"));
    TRY(device_only(m, op, recv, "recv"));
    size_t bytes = (size_t)count * sizeof(float);
    if (recv != send + (int64_t)m->rank * count && overlaps(send, (size_t)c->env.world * bytes, recv, bytes))
        return errorf("rank %d: nccl %s: recv overlaps send other than as this rank's own block", m->rank, op);
    double deadline = deadline_after(m->timeout_s);
    return finish(m, op, ncclReduceScatter(send, recv, (size_t)count, ncclFloat32, ncclSum, m->nccl, m->stream),
                  deadline);
}

static Status nccl_all_gather_f32(Comm *c, const float *send, float *recv, int64_t count) {
    NcclImpl *m = (NcclImpl *)c->impl;
    const char *op = "all_gather_f32";
    TRY(start(m, op, count, send));
    TRY(start(m, op, count, recv));
    if (count == 0) return STATUS_OK;
    TRY(device_only(m, op, send, "send"));
    TRY(device_only(m, op, recv, "recv"));
    size_t bytes = (size_t)count * sizeof(float);
    if (send != recv + (int64_t)m->rank * count && overlaps(send, bytes, recv, (size_t)c->env.world * bytes))
        return errorf("rank %d: nccl %s: send overlaps recv other than as this rank's own block", m->rank, op);
    double deadline = deadline_after(m->timeout_s);
    return finish(m, op, ncclAllGather(send, recv, (size_t)count, ncclFloat32, m->nccl, m->stream), deadline);
}

static Status nccl_broadcast(Comm *c, void *buf, size_t bytes, int root) {
    NcclImpl *m = (NcclImpl *)c->impl;
    const char *op = "broadcast";
    if (root < 0 || root >= c->env.world)
        return errorf("rank %d: nccl %s: root %d is not a rank of this job (0..%d)", m->rank, op, root, c->env.world - 1);
    InPlace how = {1, ncclUint8, ncclSum, root};
    return in_place(c, buf, (int64_t)bytes, 1, &how, op);
}

/* NCCL has no barrier: a one-value all-reduce completes on no rank before every rank joins it. */
static Status nccl_barrier(Comm *c) {
    NcclImpl *m = (NcclImpl *)c->impl;
    const char *op = "barrier";
    TRY(start(m, op, 1, m->flag));
    double deadline = deadline_after(m->timeout_s);
    return finish(m, op, ncclAllReduce(m->flag, m->flag, 1, ncclInt32, ncclSum, m->nccl, m->stream), deadline);
}

/* One layer's gradients (or any group of buffers): the communicator's stream waits for the
 * caller's stream to reach this point, then sums every buffer in place, all in one NCCL group so
 * that the group costs one launch. The host goes on at once. */
static Status nccl_all_reduce_sum_f32_after(Comm *c, float *const *bufs, const int64_t *counts, int n, void *after) {
    NcclImpl *m = (NcclImpl *)c->impl;
    const char *op = "all_reduce_sum_f32_after";
    TRY(start(m, op, 0, NULL));
    if (n < 0) return errorf("rank %d: nccl %s: negative number of buffers %d", m->rank, op, n);
    for (int i = 0; i < n; i++) {
        if (counts[i] < 0)
            return errorf("rank %d: nccl %s: buffer %d: negative count %lld", m->rank, op, i, (long long)counts[i]);
        if (counts[i] > 0 && !bufs[i])
            return errorf("rank %d: nccl %s: buffer %d: NULL for %lld values", m->rank, op, i, (long long)counts[i]);
        if (counts[i] > 0) TRY(device_only(m, op, bufs[i], "a buffer"));
    }
    if (n == 0) return STATUS_OK;
    if (after) {
        cudaError_t e = cudaEventRecord(m->after, (cudaStream_t)after);
        /* The wait holds the event as recorded now; recording it again for the next group is safe. */
        if (e == cudaSuccess) e = cudaStreamWaitEvent(m->stream, m->after, 0);
        if (e != cudaSuccess) return fail(m, op, "ordering after the caller's stream", cudaGetErrorString(e));
    }
    double deadline = deadline_after(m->timeout_s);
    ncclResult_t rc = ncclGroupStart();
    if (rc != ncclSuccess) return fail(m, op, "ncclGroupStart failed", ncclGetErrorString(rc));
    ncclResult_t first = ncclSuccess;
    for (int i = 0; i < n; i++) {
        if (counts[i] == 0) continue;
        ncclResult_t r = ncclAllReduce(bufs[i], bufs[i], (size_t)counts[i], ncclFloat32, ncclSum, m->nccl, m->stream);
        if (first == ncclSuccess && r != ncclSuccess && r != ncclInProgress) first = r;
    }
    rc = ncclGroupEnd(); /* closes the group even after a failed call */
    return enqueued(m, op, first != ncclSuccess ? first : rc, deadline);
}

static Status nccl_wait_issued(Comm *c, void *stream) {
    NcclImpl *m = (NcclImpl *)c->impl;
    const char *op = "wait_issued";
    TRY(start(m, op, 0, NULL));
    if (stream) {
        cudaError_t e = cudaEventRecord(m->issued, m->stream);
        if (e == cudaSuccess) e = cudaStreamWaitEvent((cudaStream_t)stream, m->issued, 0);
        if (e != cudaSuccess) return fail(m, op, "ordering the caller's stream after the sums", cudaGetErrorString(e));
    }
    return wait_done(m, op, deadline_after(m->timeout_s));
}

static void nccl_abort(Comm *c, int status) {
    NcclImpl *m = (NcclImpl *)c->impl;
    abort_comm(m);
    /* MPI, when it carried the unique id, takes every rank down; otherwise this rank leaves and
     * the others' collectives fail or time out. */
    if (m->oob) m->oob->abort(m->oob, status);
    exit(status);
}

static void nccl_destroy(Comm *c) {
    NcclImpl *m = (NcclImpl *)c->impl;
    if (m) {
        if (m->nccl && !m->aborted) {
            cudaSetDevice(m->device);
            /* Finalize flushes the communicator's work; a peer that is gone would keep it in
             * progress for ever, hence the deadline and the abort. */
            double deadline = deadline_after(m->timeout_s);
            ncclResult_t rc = ncclCommFinalize(m->nccl);
            Status s = rc == ncclSuccess || rc == ncclInProgress ? wait_ready(m, "destroy", deadline) : STATUS_ERROR;
            if (s == STATUS_OK && ncclCommDestroy(m->nccl) == ncclSuccess)
                m->aborted = 1;
            else
                abort_comm(m);
        }
        if (m->flag) cudaFree(m->flag);
        if (m->dev_stage) cudaFree(m->dev_stage);
        if (m->host_stage) cudaFreeHost(m->host_stage);
        if (m->after) cudaEventDestroy(m->after);
        if (m->issued) cudaEventDestroy(m->issued);
        if (m->stream) cudaStreamDestroy(m->stream);
        if (m->oob) comm_destroy(m->oob);
        free(m);
    }
    free(c);
}

/* The GPU of this rank: its local rank, or the only GPU it can see (a launcher that gives each
 * task its own CUDA_VISIBLE_DEVICES, as srun --gpus-per-task=1 does). */
static Status pick_device(const DistEnv *env, int *device) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0)
        return errorf("rank %d: no CUDA device is visible (%s)", env->rank,
                      e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount found none");
    if (count == 1) {
        *device = 0;
    } else if (env->local_rank < count) {
        *device = env->local_rank;
    } else {
        return errorf("rank %d has local rank %d but its node shows %d GPUs: start at most %d ranks "
                      "per node",
                      env->rank, env->local_rank, count, count);
    }
    e = cudaSetDevice(*device);
    if (e != cudaSuccess) return errorf("rank %d: cudaSetDevice(%d) failed: %s", env->rank, *device, cudaGetErrorString(e));
    return STATUS_OK;
}

static Status nccl_setup(Comm *c, NcclImpl *m, const DistEnv *env) {
    TRY(pick_device(env, &m->device));
    /* The highest priority: a layer's sum, once its gradients are ready, gets the SMs ahead of the
     * backward kernels still queued on the compute stream. */
    int least = 0, greatest = 0;
    cudaError_t e = cudaDeviceGetStreamPriorityRange(&least, &greatest);
    if (e == cudaSuccess) e = cudaStreamCreateWithPriority(&m->stream, cudaStreamNonBlocking, greatest);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&m->after, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&m->issued, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaMalloc((void **)&m->flag, sizeof(int));
    if (e == cudaSuccess) e = cudaMemset(m->flag, 0, sizeof(int));
    if (e == cudaSuccess) e = cudaMalloc(&m->dev_stage, STAGE_BYTES);
    if (e == cudaSuccess) e = cudaMallocHost(&m->host_stage, STAGE_BYTES);
    if (e != cudaSuccess) return errorf("rank %d: setting up the NCCL communicator's stream: %s", env->rank, cudaGetErrorString(e));

    /* The unique id: from rank 0 over the host communicator, or, with NCCL_COMM_ID set, the same
     * address on every rank (rank 0 then listens there during init). */
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    ncclResult_t rc = ncclSuccess;
    if (m->oob) {
        if (env->rank == 0) rc = ncclGetUniqueId(&id);
        if (rc != ncclSuccess)
            return errorf("rank %d: ncclGetUniqueId failed: %s", env->rank, ncclGetErrorString(rc));
        if (m->oob->broadcast(m->oob, &id, sizeof id, 0) != STATUS_OK)
            return error_context("rank %d: sending NCCL's unique id: ", env->rank);
    } else {
        rc = ncclGetUniqueId(&id);
        if (rc != ncclSuccess)
            return errorf("rank %d: ncclGetUniqueId failed (NCCL_COMM_ID=%s): %s", env->rank,
                          getenv("NCCL_COMM_ID") ? getenv("NCCL_COMM_ID") : "(unset)", ncclGetErrorString(rc));
    }

    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    double deadline = deadline_after(m->timeout_s);
    rc = ncclCommInitRankConfig(&m->nccl, env->world, id, env->rank, &config);
    if (rc != ncclSuccess && rc != ncclInProgress) {
        Status s = errorf("rank %d: ncclCommInitRankConfig (%d ranks) failed: %s", env->rank, env->world,
                          ncclGetErrorString(rc));
        if (m->nccl) abort_comm(m);
        m->aborted = 1;
        return s;
    }
    if (wait_ready(m, "init", deadline) != STATUS_OK)
        return error_context("joining the %d ranks (is every rank started, and can it reach rank 0?): ", env->world);
    return STATUS_OK;
}

Status comm_nccl_create(Comm **out, const DistEnv *env, double timeout_s, Comm *oob) {
    *out = NULL;
    Comm *c = (Comm *)calloc(1, sizeof *c);
    NcclImpl *m = (NcclImpl *)calloc(1, sizeof *m);
    if (!c || !m) {
        free(c);
        free(m);
        return errorf("rank %d: NCCL communicator: out of memory", env->rank);
    }
    m->rank = env->rank;
    m->timeout_s = timeout_s;
    m->oob = oob;
    c->name = "nccl";
    c->env = *env;
    c->timeout_s = timeout_s;
    c->impl = m;
    c->all_reduce_sum_f32 = nccl_all_reduce_sum_f32;
    c->all_reduce_sum_f64 = nccl_all_reduce_sum_f64;
    c->all_reduce_max_i32 = nccl_all_reduce_max_i32;
    c->reduce_scatter_sum_f32 = nccl_reduce_scatter_sum_f32;
    c->all_gather_f32 = nccl_all_gather_f32;
    c->broadcast = nccl_broadcast;
    c->barrier = nccl_barrier;
    c->abort = nccl_abort;
    c->destroy = nccl_destroy;
    c->all_reduce_sum_f32_after = nccl_all_reduce_sum_f32_after;
    c->wait_issued = nccl_wait_issued;
    if (nccl_setup(c, m, env) != STATUS_OK) {
        m->oob = NULL; /* the caller still owns oob when creation fails */
        nccl_destroy(c);
        return STATUS_ERROR;
    }
    *out = c;
    return STATUS_OK;
}
