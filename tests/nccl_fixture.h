/* How the GPU data-parallel tests start: an NCCL communicator (this process alone, or the ranks of
 * the launcher's environment) and the CUDA backend on this rank's GPU, or the reason to skip. */
#pragma once

#include <stdio.h>

#include "dist/comm.h"
#include "dist/comm_internal.h"
#include "harness.h"

#ifdef MLATRAIN_HAVE_CUDA

typedef enum { NCCL_FIXTURE_READY, NCCL_FIXTURE_SKIPPED, NCCL_FIXTURE_FAILED } NcclFixture;

/* SKIPPED has printed why; FAILED has recorded a failed check. */
static inline NcclFixture nccl_fixture_open(Comm **comm, Backend **gpu) {
    int devices = backend_cuda_device_count();
    if (devices == 0) {
        printf("skipped: no CUDA device\n");
        return NCCL_FIXTURE_SKIPPED;
    }
    DistEnv env;
    if (!CHECK_OK(dist_env_detect(&env))) return NCCL_FIXTURE_FAILED;
    if (env.world > 1 && devices < env.world) {
        /* NCCL refuses two ranks of one communicator on one GPU. */
        printf("skipped: %d ranks need %d GPUs, %d visible\n", env.world, env.world, devices);
        return NCCL_FIXTURE_SKIPPED;
    }
    Status s = env.world == 1 ? comm_nccl_create(comm, &env, 60, NULL) : comm_create(comm, "cuda", 60);
    if (!CHECK_OK(s)) return NCCL_FIXTURE_FAILED;
    BackendOptions opts = {0, devices == 1 ? 0 : (*comm)->env.local_rank};
    return CHECK_OK(backend_create(gpu, "cuda", opts)) ? NCCL_FIXTURE_READY : NCCL_FIXTURE_FAILED;
}

#endif
