/* The MPI communicator for CPU tensors: each sum formed once (reduce-scatter, then all-gather), and
 * a watchdog thread that takes the whole job down when a collective outlives the timeout. */
#include <errno.h>
#include <limits.h>
#include <mpi.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dist/comm_internal.h"

static int64_t max_count_per_call = INT_MAX;

void comm_mpi_set_max_count(int64_t max_count) { max_count_per_call = max_count >= 1 ? max_count : INT_MAX; }

/* All-reduce chunks give each rank at most this many values to sum per call, which bounds the
 * scratch memory whatever the buffer's size. */
enum { ALL_REDUCE_BLOCK_MAX = 1 << 22 };
/* Chunked reduce-scatter and all-gather pack world * chunk values; the chunk keeps that near this. */
enum { PACK_MAX = 1 << 24 };

typedef struct {
    MPI_Comm comm;
    int rank, world;
    int finalize; /* MPI was initialised here, so it is finalised here */
    void *scratch;
    size_t scratch_bytes;

    /* The watchdog: the collective in flight and when it must have finished. */
    double timeout_s;
    pthread_t thread;
    int thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    const char *op;
    struct timespec deadline;
    unsigned long long seq;
    int active, stop;
} MpiImpl;

/* ---- the watchdog ---- */

static struct timespec monotonic_after(double seconds) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    double whole = (double)(long long)seconds;
    t.tv_sec += (time_t)whole;
    t.tv_nsec += (long)((seconds - whole) * 1e9);
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

static int reached(const struct timespec *deadline) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > deadline->tv_sec || (now.tv_sec == deadline->tv_sec && now.tv_nsec >= deadline->tv_nsec);
}

/* Sleeps until a collective starts, then until it ends or its deadline passes. A collective that
 * never returns means a peer died or hangs, and MPI itself may never notice (a stuck peer keeps
 * its sockets open), so the only way out is to abort the job from here; MPI_Abort from this
 * thread is the one MPI call made off the main thread. */
static void *watchdog_main(void *arg) {
    MpiImpl *m = arg;
    pthread_mutex_lock(&m->mu);
    while (!m->stop) {
        if (!m->active) {
            pthread_cond_wait(&m->cv, &m->mu);
            continue;
        }
        unsigned long long seq = m->seq;
        struct timespec deadline = m->deadline;
        pthread_cond_timedwait(&m->cv, &m->mu, &deadline);
        if (m->stop || !m->active || m->seq != seq || !reached(&deadline)) continue;
        fprintf(stderr,
                "mlatrain: rank %d: %s did not complete within %g s: another rank has died or is "
                "stuck; aborting the job\n",
                m->rank, m->op, m->timeout_s);
        fflush(stderr);
        pthread_mutex_unlock(&m->mu);
        MPI_Abort(m->comm, 1);
        _exit(1); /* MPI_Abort does not return; should it, this rank must still end */
    }
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

static void watch_begin(MpiImpl *m, const char *op) {
    if (!m->thread_started) return;
    pthread_mutex_lock(&m->mu);
    m->op = op;
    m->seq++;
    m->active = 1;
    m->deadline = monotonic_after(m->timeout_s);
    pthread_cond_signal(&m->cv);
    pthread_mutex_unlock(&m->mu);
}

/* No signal: the watchdog wakes at the old deadline, finds nothing active and sleeps again. */
static void watch_end(MpiImpl *m) {
    if (!m->thread_started) return;
    pthread_mutex_lock(&m->mu);
    m->active = 0;
    pthread_mutex_unlock(&m->mu);
}

static Status watchdog_start(MpiImpl *m) {
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0 || pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) != 0)
        return errorf("rank %d: cannot set up the collective watchdog's clock", m->rank);
    int rc = pthread_cond_init(&m->cv, &attr);
    pthread_condattr_destroy(&attr);
    if (rc != 0 || pthread_mutex_init(&m->mu, NULL) != 0)
        return errorf("rank %d: cannot set up the collective watchdog", m->rank);
    rc = pthread_create(&m->thread, NULL, watchdog_main, m);
    if (rc != 0) return errorf("rank %d: cannot start the collective watchdog: %s", m->rank, strerror(rc));
    m->thread_started = 1;
    return STATUS_OK;
}

static void watchdog_stop(MpiImpl *m) {
    if (!m->thread_started) return;
    pthread_mutex_lock(&m->mu);
    m->stop = 1;
    pthread_cond_signal(&m->cv);
    pthread_mutex_unlock(&m->mu);
    pthread_join(m->thread, NULL);
    pthread_cond_destroy(&m->cv);
    pthread_mutex_destroy(&m->mu);
    m->thread_started = 0;
}

/* ---- checked MPI calls ---- */

static Status mpi_error(int rank, int rc, const char *op, const char *call) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "MPI error code %d", rc);
    return errorf("rank %d: %s: %s failed: %s", rank, op, call, msg);
}

/* One MPI call of collective `op`, under the watchdog. */
#define MPI_CALL(m, op, name, call)                                  \
    do {                                                             \
        watch_begin((m), (op));                                      \
        int rc_ = (call);                                            \
        watch_end(m);                                                \
        if (rc_ != MPI_SUCCESS) return mpi_error((m)->rank, rc_, (op), (name)); \
    } while (0)

static Status scratch_reserve(MpiImpl *m, size_t bytes, const char *op) {
    if (bytes <= m->scratch_bytes) return STATUS_OK;
    void *p = realloc(m->scratch, bytes);
    if (!p) return errorf("rank %d: %s: out of memory for %zu bytes of scratch", m->rank, op, bytes);
    m->scratch = p;
    m->scratch_bytes = bytes;
    return STATUS_OK;
}

static Status check_count(MpiImpl *m, const char *op, int64_t n, const void *buf) {
    if (n < 0) return errorf("rank %d: %s: negative count %lld", m->rank, op, (long long)n);
    if (n > 0 && !buf) return errorf("rank %d: %s: NULL buffer for %lld values", m->rank, op, (long long)n);
    return STATUS_OK;
}

static int overlaps(const void *a, size_t abytes, const void *b, size_t bbytes) {
    const char *pa = a, *pb = b;
    return pa < pb + bbytes && pb < pa + abytes;
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* ---- the collectives ---- */

/* Each chunk is `world` blocks of b values; rank r sums block r of every rank (reduce-scatter),
 * then every rank collects the sums (all-gather). Each element is summed once, by one rank, so
 * every rank receives the same bits whatever algorithm MPI picks. A tail shorter than `world`
 * is padded to one value per rank. */
static Status sum_all_reduce(Comm *c, void *buf, int64_t n, MPI_Datatype type, size_t esz, const char *op) {
    MpiImpl *m = c->impl;
    TRY(check_count(m, op, n, buf));
    const int64_t world = m->world;
    const int64_t block_max = min64(max_count_per_call, ALL_REDUCE_BLOCK_MAX);
    char *p = buf;
    int64_t pos = 0;
    while (pos < n) {
        int64_t rest = n - pos, b, len;
        char *src;
        if (rest >= world) {
            b = min64(rest / world, block_max);
            len = b * world;
            TRY(scratch_reserve(m, (size_t)b * esz, op));
            src = p + pos * (int64_t)esz;
        } else {
            b = 1;
            len = rest;
            TRY(scratch_reserve(m, (size_t)(world + 1) * esz, op));
            src = (char *)m->scratch + esz; /* the padded tail; the block sum goes before it */
            memcpy(src, p + pos * (int64_t)esz, (size_t)len * esz);
            memset(src + len * (int64_t)esz, 0, (size_t)(world - len) * esz);
        }
        void *block = m->scratch;
        MPI_CALL(m, op, "MPI_Reduce_scatter_block", MPI_Reduce_scatter_block(src, block, (int)b, type, MPI_SUM, m->comm));
        memcpy(src + (int64_t)m->rank * b * (int64_t)esz, block, (size_t)b * esz);
        MPI_CALL(m, op, "MPI_Allgather",
                 MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, src, (int)b, type, m->comm));
        if (rest < world) memcpy(p + pos * (int64_t)esz, src, (size_t)len * esz);
        pos += len;
    }
    return STATUS_OK;
}

static Status mpi_all_reduce_sum_f32(Comm *c, float *buf, int64_t n) {
    return sum_all_reduce(c, buf, n, MPI_FLOAT, sizeof(float), "all_reduce_sum_f32");
}

static Status mpi_all_reduce_sum_f64(Comm *c, double *buf, int64_t n) {
    return sum_all_reduce(c, buf, n, MPI_DOUBLE, sizeof(double), "all_reduce_sum_f64");
}

/* A maximum is exact, so MPI's own all-reduce gives every rank the same value. */
static Status mpi_all_reduce_max_i32(Comm *c, int32_t *buf, int64_t n) {
    MpiImpl *m = c->impl;
    const char *op = "all_reduce_max_i32";
    TRY(check_count(m, op, n, buf));
    for (int64_t pos = 0; pos < n;) {
        int64_t len = min64(n - pos, max_count_per_call);
        MPI_CALL(m, op, "MPI_Allreduce", MPI_Allreduce(MPI_IN_PLACE, buf + pos, (int)len, MPI_INT32_T, MPI_MAX, m->comm));
        pos += len;
    }
    return STATUS_OK;
}

static Status mpi_reduce_scatter_sum_f32(Comm *c, const float *send, float *recv, int64_t count) {
    MpiImpl *m = c->impl;
    const char *op = "reduce_scatter_sum_f32";
    TRY(check_count(m, op, count, send));
    TRY(check_count(m, op, count, recv));
    if (count == 0) return STATUS_OK;
    const int64_t world = m->world;
    const size_t bytes = (size_t)count * sizeof(float);
    int in_place = recv == send + (int64_t)m->rank * count;
    if (!in_place && overlaps(send, (size_t)world * bytes, recv, bytes))
        return errorf("rank %d: %s: recv overlaps send other than as this rank's own block", m->rank, op);

    if (count <= max_count_per_call && !in_place) {
        MPI_CALL(m, op, "MPI_Reduce_scatter_block",
                 MPI_Reduce_scatter_block(send, recv, (int)count, MPI_FLOAT, MPI_SUM, m->comm));
        return STATUS_OK;
    }
    /* In place, or too long for one call: pack each chunk's `world` pieces together and sum into
     * scratch. Writing recv chunk by chunk is safe in place: a chunk only overwrites send values
     * of this rank's block that earlier chunks have already read. */
    int64_t chunk = min64(count, min64(max_count_per_call, PACK_MAX / world > 0 ? PACK_MAX / world : 1));
    int pack = count > chunk;
    TRY(scratch_reserve(m, (size_t)(pack ? world + 1 : 1) * (size_t)chunk * sizeof(float), op));
    float *out = m->scratch, *packed = out + chunk;
    for (int64_t off = 0; off < count; off += chunk) {
        int64_t len = min64(chunk, count - off);
        const float *src = send;
        if (pack) {
            for (int64_t r = 0; r < world; r++)
                memcpy(packed + r * len, send + r * count + off, (size_t)len * sizeof(float));
            src = packed;
        }
        MPI_CALL(m, op, "MPI_Reduce_scatter_block",
                 MPI_Reduce_scatter_block(src, out, (int)len, MPI_FLOAT, MPI_SUM, m->comm));
        memcpy(recv + off, out, (size_t)len * sizeof(float));
    }
    return STATUS_OK;
}

static Status mpi_all_gather_f32(Comm *c, const float *send, float *recv, int64_t count) {
    MpiImpl *m = c->impl;
    const char *op = "all_gather_f32";
    TRY(check_count(m, op, count, send));
    TRY(check_count(m, op, count, recv));
    if (count == 0) return STATUS_OK;
    const int64_t world = m->world;
    const size_t bytes = (size_t)count * sizeof(float);
    int in_place = send == recv + (int64_t)m->rank * count;
    if (!in_place && overlaps(send, bytes, recv, (size_t)world * bytes))
        return errorf("rank %d: %s: send overlaps recv other than as this rank's own block", m->rank, op);

    if (count <= max_count_per_call) {
        if (in_place)
            MPI_CALL(m, op, "MPI_Allgather",
                     MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, recv, (int)count, MPI_FLOAT, m->comm));
        else
            MPI_CALL(m, op, "MPI_Allgather",
                     MPI_Allgather(send, (int)count, MPI_FLOAT, recv, (int)count, MPI_FLOAT, m->comm));
        return STATUS_OK;
    }
    /* Gather each chunk into scratch and spread it to the ranks' blocks. In place, a chunk
     * rewrites this rank's block with the values it already holds. */
    int64_t chunk = min64(max_count_per_call, PACK_MAX / world > 0 ? PACK_MAX / world : 1);
    TRY(scratch_reserve(m, (size_t)world * (size_t)chunk * sizeof(float), op));
    float *packed = m->scratch;
    for (int64_t off = 0; off < count; off += chunk) {
        int64_t len = min64(chunk, count - off);
        MPI_CALL(m, op, "MPI_Allgather",
                 MPI_Allgather(send + off, (int)len, MPI_FLOAT, packed, (int)len, MPI_FLOAT, m->comm));
        for (int64_t r = 0; r < world; r++)
            memcpy(recv + r * count + off, packed + r * len, (size_t)len * sizeof(float));
    }
    return STATUS_OK;
}

static Status mpi_broadcast(Comm *c, void *buf, size_t bytes, int root) {
    MpiImpl *m = c->impl;
    const char *op = "broadcast";
    if (root < 0 || root >= m->world)
        return errorf("rank %d: %s: root %d is not a rank of this job (0..%d)", m->rank, op, root, m->world - 1);
    if (bytes > 0 && !buf) return errorf("rank %d: %s: NULL buffer for %zu bytes", m->rank, op, bytes);
    for (size_t pos = 0; pos < bytes;) {
        size_t len = bytes - pos;
        if (len > (size_t)max_count_per_call) len = (size_t)max_count_per_call;
        MPI_CALL(m, op, "MPI_Bcast", MPI_Bcast((char *)buf + pos, (int)len, MPI_BYTE, root, m->comm));
        pos += len;
    }
    return STATUS_OK;
}

static Status mpi_barrier(Comm *c) {
    MpiImpl *m = c->impl;
    MPI_CALL(m, "barrier", "MPI_Barrier", MPI_Barrier(m->comm));
    return STATUS_OK;
}

static void mpi_abort(Comm *c, int status) {
    MpiImpl *m = c->impl;
    MPI_Abort(m->comm, status);
    _exit(status);
}

static void mpi_destroy(Comm *c) {
    MpiImpl *m = c->impl;
    if (m) {
        watchdog_stop(m);
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized) {
            if (m->comm != MPI_COMM_NULL) MPI_Comm_free(&m->comm);
            if (m->finalize) MPI_Finalize();
        }
        free(m->scratch);
        free(m);
    }
    free(c);
}

/* ---- creation ---- */

/* The node index and the rank within the node, as MPI sees shared memory: the ranks of a node
 * are numbered by their world rank, the nodes by their lowest world rank. */
static Status topology(MpiImpl *m, int *local_rank, int *node) {
    const char *op = "communicator setup";
    MPI_Comm local = MPI_COMM_NULL, leaders = MPI_COMM_NULL;
    MPI_CALL(m, op, "MPI_Comm_split_type",
             MPI_Comm_split_type(m->comm, MPI_COMM_TYPE_SHARED, m->rank, MPI_INFO_NULL, &local));
    int rc = MPI_Comm_rank(local, local_rank);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_split(m->comm, *local_rank == 0 ? 0 : MPI_UNDEFINED, m->rank, &leaders);
    *node = 0;
    if (rc == MPI_SUCCESS && leaders != MPI_COMM_NULL) rc = MPI_Comm_rank(leaders, node);
    if (rc == MPI_SUCCESS) rc = MPI_Bcast(node, 1, MPI_INT, 0, local);
    if (leaders != MPI_COMM_NULL) MPI_Comm_free(&leaders);
    MPI_Comm_free(&local);
    if (rc != MPI_SUCCESS) return mpi_error(m->rank, rc, op, "finding the node of each rank");
    return STATUS_OK;
}

static Status mpi_setup(Comm *c, MpiImpl *m, const DistEnv *env) {
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (finalized) return errorf("rank %d: MPI was already finalised in this process", env->rank);
    if (!initialized) {
        /* Only the main thread communicates (the watchdog only aborts). Errors here are fatal by
         * MPI's default and print their own explanation. */
        int provided = 0;
        int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
        if (rc != MPI_SUCCESS) return mpi_error(env->rank, rc, "communicator setup", "MPI_Init_thread");
        m->finalize = 1;
    }
    int rc = MPI_Comm_dup(MPI_COMM_WORLD, &m->comm);
    if (rc != MPI_SUCCESS) return mpi_error(env->rank, rc, "communicator setup", "MPI_Comm_dup");
    rc = MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN);
    if (rc == MPI_SUCCESS) rc = MPI_Comm_rank(m->comm, &m->rank);
    if (rc == MPI_SUCCESS) rc = MPI_Comm_size(m->comm, &m->world);
    if (rc != MPI_SUCCESS) return mpi_error(env->rank, rc, "communicator setup", "querying MPI_COMM_WORLD");
    if (m->rank != env->rank || m->world != env->world)
        return errorf("MPI says this process is rank %d of %d, but the launcher's environment (%s) "
                      "says rank %d of %d: the launcher and MPI disagree (a batch script's "
                      "SLURM_* variables leaking into mpirun's processes, or mpirun started from "
                      "within srun?)",
                      m->rank, m->world, env->launcher, env->rank, env->world);
    if (m->timeout_s > 0) TRY(watchdog_start(m));
    c->env = *env;
    TRY(topology(m, &c->env.local_rank, &c->env.node));
    return STATUS_OK;
}

Status comm_mpi_create(Comm **out, const DistEnv *env, double timeout_s) {
    *out = NULL;
    Comm *c = calloc(1, sizeof *c);
    MpiImpl *m = calloc(1, sizeof *m);
    if (!c || !m) {
        free(c);
        free(m);
        return errorf("rank %d: MPI communicator: out of memory", env->rank);
    }
    m->comm = MPI_COMM_NULL;
    m->rank = env->rank;
    m->timeout_s = timeout_s;
    c->name = "mpi";
    c->timeout_s = timeout_s;
    c->impl = m;
    c->all_reduce_sum_f32 = mpi_all_reduce_sum_f32;
    c->all_reduce_sum_f64 = mpi_all_reduce_sum_f64;
    c->all_reduce_max_i32 = mpi_all_reduce_max_i32;
    c->reduce_scatter_sum_f32 = mpi_reduce_scatter_sum_f32;
    c->all_gather_f32 = mpi_all_gather_f32;
    c->broadcast = mpi_broadcast;
    c->barrier = mpi_barrier;
    c->abort = mpi_abort;
    c->destroy = mpi_destroy;
    if (mpi_setup(c, m, env) != STATUS_OK) {
        mpi_destroy(c);
        return STATUS_ERROR;
    }
    *out = c;
    return STATUS_OK;
}
