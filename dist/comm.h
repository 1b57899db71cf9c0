/* The communicator data-parallel training runs on: all-reduce, reduce-scatter, all-gather,
 * broadcast and barrier over the ranks of a job, with one implementation per engine (a single
 * process, MPI for CPU tensors, NCCL for GPU tensors), chosen from the environment at start. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Where this process sits in the job, read from the launcher's environment (dist/bootstrap.c):
 * Slurm (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NODEID), OpenMPI (OMPI_COMM_WORLD_*),
 * or RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT. */
typedef struct {
    int rank, world, local_rank, node;
    char launcher[16];          /* "single", "slurm", "mpirun", "env" */
    char master_addr[256];      /* rank 0's host (NCCL's own bootstrap) */
    int master_port;
} DistEnv;

typedef struct Comm Comm;

/* Every collective is synchronous and either completes on every rank or fails on every rank within
 * the communicator's timeout, the error naming the collective, the rank and what went wrong.
 * Sums over ranks are formed once per element and the result broadcast, so every rank receives
 * the same bits. Buffers are host memory for MPI and the single process, device memory for NCCL,
 * whose all-reduces and broadcast also take a few host values (loss totals, flags: staged through
 * the GPU). The stream-ordered sums at the end are NCCL's alone. */
struct Comm {
    const char *name;           /* "single", "mpi", "nccl" */
    DistEnv env;
    double timeout_s;
    void *impl;

    Status (*all_reduce_sum_f32)(Comm *c, float *buf, int64_t n);
    Status (*all_reduce_sum_f64)(Comm *c, double *buf, int64_t n);
    Status (*all_reduce_max_i32)(Comm *c, int32_t *buf, int64_t n);
    /* recv[count] = sum over ranks of send[rank * count .. (rank + 1) * count): send holds
     * world * count values. recv may be this rank's own block of send (in place); no other
     * overlap is allowed. */
    Status (*reduce_scatter_sum_f32)(Comm *c, const float *send, float *recv, int64_t count);
    /* recv[world * count] = the send[count] of every rank, in rank order. send may be this
     * rank's own block of recv (in place); no other overlap is allowed. */
    Status (*all_gather_f32)(Comm *c, const float *send, float *recv, int64_t count);
    Status (*broadcast)(Comm *c, void *buf, size_t bytes, int root);
    Status (*barrier)(Comm *c);
    /* Makes every rank of the job exit now (an unrecoverable error on this rank). */
    void (*abort)(Comm *c, int status);
    /* Ends the communicator. MPI's finalisation waits for every rank, so a rank leaving on an
     * error while the others may still be in a collective should abort instead. */
    void (*destroy)(Comm *c);

    /* Sums that overlap a GPU's computation; NULL where buffers are host memory (single, MPI).
     * Makes the communicator's own stream wait for the work enqueued so far on `after` (a
     * cudaStream_t: the caller's compute stream), then enqueues there the in-place sums over ranks
     * of n device buffers, bufs[i] holding counts[i] float32 values, as one group, and returns
     * without waiting for them. NCCL picks how it sums from the group alone, so the same groups
     * give the same bits whenever they are issued. Every operation of the communicator runs on
     * that stream in the order issued: a later collective waits for these sums. */
    Status (*all_reduce_sum_f32_after)(Comm *c, float *const *bufs, const int64_t *counts, int n, void *after);
    /* Makes `stream` (a cudaStream_t, or NULL) wait for everything issued so far, then waits for it
     * on the host: a failure or the timeout aborts the communicator, as in any collective. */
    Status (*wait_issued)(Comm *c, void *stream);
};

/* Reads the environment. OpenMPI's OMPI_COMM_WORLD_* win over Slurm's variables (under mpirun
 * inside an allocation SLURM_PROCID is the batch step's, 0 on every rank), Slurm's (in an srun
 * step: the batch script itself is no rank) over RANK/WORLD_SIZE; none of them: a single process. master_addr/master_port come from MASTER_ADDR
 * and MASTER_PORT, else under Slurm from the first host of the step's node list and a port derived
 * from the job id (empty and 0 when unknown). Every malformed value is an error naming its
 * variable. */
Status dist_env_detect(DistEnv *env);

/* The index-th host (from 0) of a Slurm node list such as "gpu[01-04,07],login2": "gpu01" for 0,
 * "gpu07" for 4. Zero padding follows the range's lower bound, as Slurm writes it. */
Status dist_nodelist_host(const char *list, int64_t index, char *host, size_t size);
/* How many hosts a Slurm node list names. */
Status dist_nodelist_count(const char *list, int64_t *count);

/* The communicator for this process: single when the job has one rank; MPI when launched by mpirun
 * or `srun --mpi=pmix` and `device` is "cpu"; NCCL for "cuda" (with MPI carrying its unique id when
 * present). timeout_s > 0 bounds every collective; 0 waits for ever. */
Status comm_create(Comm **out, const char *device, double timeout_s);
void comm_destroy(Comm *c);

/* The single-process communicator (every collective is a copy or nothing). */
Status comm_single_create(Comm **out);

#ifdef __cplusplus
}
#endif
