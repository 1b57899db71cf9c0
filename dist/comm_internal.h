/* What dist/bootstrap.c needs from the engine-specific communicators, and the knobs their tests
 * turn; train/ builds on dist/comm.h alone. */
#pragma once

#include "dist/comm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Whether MPI can start in this process: under mpirun, or under srun with PMIx (Debian's OpenMPI
 * has no other direct launch). When not, `why` says how to launch instead. */
int dist_mpi_launchable(const DistEnv *env, char *why, size_t size);

/* NCCL_COMM_ID's value, "host:port" ("[addr]:port" for IPv6), for NCCL's own bootstrap: rank 0
 * listens there and the others connect. An error saying what to set when the address is unknown. */
Status dist_nccl_comm_id(const DistEnv *env, char *out, size_t size);

#ifdef MLATRAIN_HAVE_MPI
/* MPI over MPI_COMM_WORLD (initialised here unless already), checked against env. The returned
 * communicator's env has the local rank and node index MPI sees. */
Status comm_mpi_create(Comm **out, const DistEnv *env, double timeout_s);
/* Caps the element count of a single MPI call, so tests reach the chunked paths with small
 * buffers; the default is MPI's own limit, INT_MAX. Values below 1 restore the default. */
void comm_mpi_set_max_count(int64_t max_count);
#endif

#ifdef MLATRAIN_HAVE_CUDA
/* NCCL over the ranks of env, on the GPU of its local rank. oob, a host communicator of the same
 * ranks (or NULL), carries the unique id and takes the job down on abort; the NCCL communicator
 * owns it. Without oob and with more than one rank, NCCL_COMM_ID must already be set. */
Status comm_nccl_create(Comm **out, const DistEnv *env, double timeout_s, Comm *oob);
#endif

#ifdef __cplusplus
}
#endif
