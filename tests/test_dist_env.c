/* Reading the launcher's environment (srun, mpirun inside or outside Slurm, RANK/WORLD_SIZE), node
 * lists, NCCL's bootstrap address, and an error naming the variable for every bad value. */
#include <stdlib.h>
#include <string.h>

#include "dist/comm.h"
#include "dist/comm_internal.h"
#include "harness.h"

static const char *const VARS[] = {
    "SLURM_PROCID", "SLURM_NTASKS", "SLURM_NPROCS", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_STEP_ID",
    "SLURM_STEPID", "SLURM_JOB_ID", "SLURM_JOBID", "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST",
    "SLURM_NODELIST", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE", "OMPI_COMM_WORLD_NODE_RANK", "PMIX_RANK", "PMI_RANK", "RANK",
    "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT", "NCCL_COMM_ID",
};

static void clear_env(void) {
    for (size_t i = 0; i < sizeof VARS / sizeof *VARS; i++) unsetenv(VARS[i]);
}

/* "NAME=value" pairs, NULL-terminated, on a clean environment. */
static void set_env(const char *const *pairs) {
    clear_env();
    for (; *pairs; pairs++) {
        char name[64];
        const char *eq = strchr(*pairs, '=');
        snprintf(name, sizeof name, "%.*s", (int)(eq - *pairs), *pairs);
        setenv(name, eq + 1, 1);
    }
}

static void expect_env(const char *what, const char *launcher, int rank, int world, int local_rank, int node,
                       const char *master_addr, int master_port) {
    DistEnv e;
    if (!CHECK_OK(dist_env_detect(&e))) return;
    CHECK(strcmp(e.launcher, launcher) == 0, "%s: launcher '%s', expected '%s'", what, e.launcher, launcher);
    CHECK(e.rank == rank && e.world == world, "%s: rank %d of %d, expected %d of %d", what, e.rank, e.world, rank,
          world);
    CHECK(e.local_rank == local_rank && e.node == node, "%s: local rank %d node %d, expected %d and %d", what,
          e.local_rank, e.node, local_rank, node);
    CHECK(strcmp(e.master_addr, master_addr) == 0 && e.master_port == master_port,
          "%s: master %s:%d, expected %s:%d", what, e.master_addr, e.master_port, master_addr, master_port);
}

static void expect_error(const char *needle) {
    DistEnv e;
    CHECK_ERR(dist_env_detect(&e), needle);
}

static void test_launchers(void) {
    clear_env();
    expect_env("no launcher", "single", 0, 1, 0, 0, "", 0);

    /* a task of `srun -n 4` on 2 nodes: task 0 runs on the step's first node */
    set_env((const char *[]){"SLURM_PROCID=2", "SLURM_NTASKS=4", "SLURM_LOCALID=0", "SLURM_NODEID=1",
                             "SLURM_STEP_ID=0", "SLURM_JOB_ID=123456", "SLURM_STEP_NODELIST=gpu[01-04,07]",
                             "SLURM_JOB_NODELIST=login1", NULL});
    expect_env("srun", "slurm", 2, 4, 0, 1, "gpu01", 20000 + 456 * 10);
    setenv("SLURM_STEP_ID", "3", 1);
    expect_env("srun, step 3", "slurm", 2, 4, 0, 1, "gpu01", 20000 + 456 * 10 + 3);
    setenv("MASTER_ADDR", "10.1.2.3", 1);
    setenv("MASTER_PORT", "29500", 1);
    expect_env("srun with MASTER_ADDR and MASTER_PORT", "slurm", 2, 4, 0, 1, "10.1.2.3", 29500);

    /* older spellings; the job's node list when the step's is missing */
    set_env((const char *[]){"SLURM_PROCID=1", "SLURM_NPROCS=2", "SLURM_LOCALID=1", "SLURM_NODEID=0",
                             "SLURM_STEPID=0", "SLURM_JOBID=7", "SLURM_JOB_NODELIST=vm", NULL});
    expect_env("srun, old names", "slurm", 1, 2, 1, 0, "vm", 20070);

    /* The batch script itself: SLURM_PROCID=0 and the allocation's SLURM_NTASKS, but no step.
     * It is not a rank of a 2-rank job. */
    set_env((const char *[]){"SLURM_PROCID=0", "SLURM_NTASKS=2", "SLURM_LOCALID=0", "SLURM_NODEID=0",
                             "SLURM_JOB_ID=9", "SLURM_JOB_NODELIST=vm", NULL});
    expect_env("sbatch script", "single", 0, 1, 0, 0, "", 0);

    /* mpirun inside a batch script: SLURM_PROCID is 0 on every rank, OpenMPI's variables win */
    set_env((const char *[]){"SLURM_PROCID=0", "SLURM_NTASKS=2", "SLURM_LOCALID=0", "SLURM_NODEID=0",
                             "SLURM_JOB_ID=9", "SLURM_JOB_NODELIST=vm", "OMPI_COMM_WORLD_RANK=1",
                             "OMPI_COMM_WORLD_SIZE=2", "OMPI_COMM_WORLD_LOCAL_RANK=1",
                             "OMPI_COMM_WORLD_LOCAL_SIZE=2", "OMPI_COMM_WORLD_NODE_RANK=1", NULL});
    expect_env("mpirun inside sbatch", "mpirun", 1, 2, 1, 0, "", 0);
    /* ... even were it started from within an srun step */
    setenv("SLURM_STEP_ID", "0", 1);
    expect_env("mpirun inside srun", "mpirun", 1, 2, 1, 0, "", 0);

    /* mpirun on 2 nodes x 4 slots: NODE_RANK is the rank within the node, not the node */
    set_env((const char *[]){"OMPI_COMM_WORLD_RANK=5", "OMPI_COMM_WORLD_SIZE=8", "OMPI_COMM_WORLD_LOCAL_RANK=1",
                             "OMPI_COMM_WORLD_LOCAL_SIZE=4", "OMPI_COMM_WORLD_NODE_RANK=1", NULL});
    expect_env("mpirun", "mpirun", 5, 8, 1, 1, "", 0);
    setenv("MASTER_ADDR", "head", 1);
    setenv("MASTER_PORT", "29400", 1);
    expect_env("mpirun with MASTER_ADDR", "mpirun", 5, 8, 1, 1, "head", 29400);

    set_env((const char *[]){"RANK=3", "WORLD_SIZE=8", "LOCAL_RANK=3", "GROUP_RANK=0", "MASTER_ADDR=10.0.0.1",
                             "MASTER_PORT=29500", NULL});
    expect_env("RANK/WORLD_SIZE", "env", 3, 8, 3, 0, "10.0.0.1", 29500);
    set_env((const char *[]){"RANK=0", "WORLD_SIZE=1", NULL});
    expect_env("WORLD_SIZE=1 without LOCAL_RANK", "env", 0, 1, 0, 0, "", 0);
    /* a batch script exporting RANK/WORLD_SIZE for its own launcher */
    set_env((const char *[]){"SLURM_PROCID=0", "SLURM_NTASKS=2", "SLURM_JOB_ID=9", "RANK=1", "WORLD_SIZE=2",
                             "LOCAL_RANK=1", NULL});
    expect_env("RANK/WORLD_SIZE in a batch script", "env", 1, 2, 1, 0, "", 0);
}

static void test_bad_values(void) {
    const char *srun[] = {"SLURM_PROCID=1", "SLURM_NTASKS=2", "SLURM_LOCALID=1", "SLURM_NODEID=0",
                          "SLURM_STEP_ID=0", "SLURM_JOB_ID=5", "SLURM_STEP_NODELIST=vm", NULL};
    set_env(srun);
    setenv("SLURM_PROCID", "abc", 1);
    expect_error("SLURM_PROCID='abc' is not a non-negative integer");
    setenv("SLURM_PROCID", "1x", 1);
    expect_error("SLURM_PROCID='1x'");
    setenv("SLURM_PROCID", "2", 1);
    expect_error("SLURM_PROCID=2 is not below SLURM_NTASKS=2");
    set_env(srun);
    setenv("SLURM_NTASKS", "0", 1);
    expect_error("SLURM_NTASKS=0: a job has at least one rank");
    set_env(srun);
    unsetenv("SLURM_LOCALID");
    expect_error("SLURM_LOCALID is not set");
    set_env(srun);
    setenv("SLURM_LOCALID", "9", 1);
    expect_error("SLURM_LOCALID=9 is not below SLURM_NTASKS=2");
    set_env(srun);
    setenv("SLURM_STEP_NODELIST", "gpu[01-", 1);
    expect_error("SLURM_STEP_NODELIST");
    set_env(srun);
    setenv("SLURM_JOB_ID", "-3", 1);
    expect_error("SLURM_JOB_ID='-3'");
    set_env(srun);
    setenv("MASTER_PORT", "70000", 1);
    expect_error("MASTER_PORT=70000 is not a TCP port");
    setenv("MASTER_PORT", "http", 1);
    expect_error("MASTER_PORT='http'");

    set_env((const char *[]){"OMPI_COMM_WORLD_SIZE=2", NULL});
    expect_error("OMPI_COMM_WORLD_RANK is not set although mpirun launched this process");
    set_env((const char *[]){"OMPI_COMM_WORLD_RANK=2", "OMPI_COMM_WORLD_SIZE=2", "OMPI_COMM_WORLD_LOCAL_RANK=0",
                             NULL});
    expect_error("OMPI_COMM_WORLD_RANK=2 is not below OMPI_COMM_WORLD_SIZE=2");

    set_env((const char *[]){"RANK=0", NULL});
    expect_error("RANK is set but WORLD_SIZE is not");
    set_env((const char *[]){"WORLD_SIZE=2", NULL});
    expect_error("WORLD_SIZE is set but RANK is not");
    set_env((const char *[]){"RANK=0", "WORLD_SIZE=2", NULL});
    expect_error("LOCAL_RANK is not set");
    set_env((const char *[]){"RANK=-1", "WORLD_SIZE=2", "LOCAL_RANK=0", NULL});
    expect_error("RANK='-1'");
    set_env((const char *[]){"RANK=0", "WORLD_SIZE=99999999999", "LOCAL_RANK=0", NULL});
    expect_error("WORLD_SIZE='99999999999'");
    clear_env();
}

static void expect_host(const char *list, int64_t index, const char *want) {
    char host[64] = "";
    if (CHECK_OK(dist_nodelist_host(list, index, host, sizeof host)))
        CHECK(strcmp(host, want) == 0, "node list '%s' host %lld: '%s', expected '%s'", list, (long long)index, host,
              want);
}

static void expect_count(const char *list, int64_t want) {
    int64_t n = -1;
    if (CHECK_OK(dist_nodelist_count(list, &n)))
        CHECK(n == want, "node list '%s': %lld hosts, expected %lld", list, (long long)n, (long long)want);
}

static void test_nodelists(void) {
    expect_count("vm", 1);
    expect_host("vm", 0, "vm");
    expect_count("node[01-04,07]", 5);
    expect_host("node[01-04,07]", 0, "node01");
    expect_host("node[01-04,07]", 3, "node04");
    expect_host("node[01-04,07]", 4, "node07");
    expect_count("a[1-2],b,c[08-10]", 6);
    expect_host("a[1-2],b,c[08-10]", 2, "b");
    expect_host("a[1-2],b,c[08-10]", 4, "c09");
    expect_host("a[1-2],b,c[08-10]", 5, "c10");
    expect_host("n[8-10]", 2, "n10"); /* no padding: the lower bound has one digit */
    expect_count("rack[1-2]-n[1-3]-ib", 6);
    expect_host("rack[1-2]-n[1-3]-ib", 0, "rack1-n1-ib");
    expect_host("rack[1-2]-n[1-3]-ib", 4, "rack2-n2-ib");
    expect_host("gpu-[0001-0128]", 127, "gpu-0128");
    expect_count("gpu-[0001-0128]", 128);

    char host[16];
    CHECK_ERR(dist_nodelist_host("node[01-04]", 4, host, sizeof host), "names 4 hosts; there is no host 4");
    CHECK_ERR(dist_nodelist_host("node[01-", 0, host, sizeof host), "'[' without ']'");
    CHECK_ERR(dist_nodelist_host("node[04-01]", 0, host, sizeof host), "4 is above 1");
    CHECK_ERR(dist_nodelist_host("node[a-b]", 0, host, sizeof host), "expected a number");
    CHECK_ERR(dist_nodelist_host("node01]", 0, host, sizeof host), "']' without '['");
    CHECK_ERR(dist_nodelist_host("a,,b", 1, host, sizeof host), "empty host name");
    CHECK_ERR(dist_nodelist_host("", 0, host, sizeof host), "node list is empty");
    CHECK_ERR(dist_nodelist_host("a-very-long-host-name", 0, host, sizeof host), "too long");
}

static void test_nccl_comm_id(void) {
    DistEnv e = {.rank = 1, .world = 2, .master_port = 29500};
    char id[300];
    strcpy(e.master_addr, "node01");
    if (CHECK_OK(dist_nccl_comm_id(&e, id, sizeof id)))
        CHECK(strcmp(id, "node01:29500") == 0, "NCCL_COMM_ID '%s'", id);
    strcpy(e.master_addr, "fd00::2");
    if (CHECK_OK(dist_nccl_comm_id(&e, id, sizeof id)))
        CHECK(strcmp(id, "[fd00::2]:29500") == 0, "NCCL_COMM_ID '%s'", id);
    e.master_port = 0;
    CHECK_ERR(dist_nccl_comm_id(&e, id, sizeof id), "MASTER_PORT is not known");
    e.master_addr[0] = '\0';
    CHECK_ERR(dist_nccl_comm_id(&e, id, sizeof id), "set MASTER_ADDR and MASTER_PORT");
}

/* What comm_create says before any engine starts. */
static void test_comm_create_choices(void) {
    Comm *c = NULL;
    clear_env();
    if (CHECK_OK(comm_create(&c, "cpu", 10))) {
        CHECK(strcmp(c->name, "single") == 0 && c->env.world == 1, "one rank: communicator '%s'", c->name);
        float x[3] = {1, 2, 3}, y[3];
        CHECK_OK(c->all_reduce_sum_f32(c, x, 3));
        CHECK_OK(c->all_gather_f32(c, x, y, 3));
        CHECK(x[2] == 3 && y[2] == 3, "one rank: collectives change nothing");
        comm_destroy(c);
    }
    CHECK_ERR(comm_create(&c, "tpu", 10), "unknown device 'tpu'");

    set_env((const char *[]){"RANK=1", "WORLD_SIZE=2", "LOCAL_RANK=1", NULL});
    CHECK_ERR(comm_create(&c, "cpu", 10), "launch with `mpirun -np 2 ...` or `srun --mpi=pmix -n 2 ...`");
#ifdef MLATRAIN_HAVE_CUDA
    CHECK_ERR(comm_create(&c, "cuda", 10), "set MASTER_ADDR and MASTER_PORT");
#else
    CHECK_ERR(comm_create(&c, "cuda", 10), "this build of mlatrain has no CUDA");
#endif
    CHECK(getenv("NCCL_COMM_ID") == NULL, "a failed creation left NCCL_COMM_ID set");

    set_env((const char *[]){"SLURM_PROCID=1", "SLURM_NTASKS=2", "SLURM_LOCALID=1", "SLURM_NODEID=0",
                             "SLURM_STEP_ID=0", "SLURM_JOB_ID=5", "SLURM_STEP_NODELIST=vm", NULL});
    CHECK_ERR(comm_create(&c, "cpu", 10), "srun --mpi=pmix -n 2");
    CHECK(c == NULL, "a failed creation returned a communicator");
    clear_env();

    DistEnv e = {.rank = 0, .world = 2};
    char why[512];
    strcpy(e.launcher, "mpirun");
    CHECK(dist_mpi_launchable(&e, why, sizeof why), "mpirun: MPI can start");
    strcpy(e.launcher, "slurm");
    CHECK(!dist_mpi_launchable(&e, why, sizeof why), "srun without PMIx: MPI cannot start");
    setenv("PMIX_RANK", "0", 1);
    CHECK(dist_mpi_launchable(&e, why, sizeof why), "srun --mpi=pmix: MPI can start");
    clear_env();
}

int main(void) {
    test_launchers();
    test_bad_values();
    test_nodelists();
    test_nccl_comm_id();
    test_comm_create_choices();
    return test_finish("test_dist_env");
}
