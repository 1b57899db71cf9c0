/* Where this process sits in the job, read from its launcher's environment (mpirun, srun, or
 * RANK/WORLD_SIZE variables), and the communicator that fits the device and the launcher. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dist/comm.h"
#include "dist/comm_internal.h"

/* ---- environment variables ---- */

static const char *env_get(const char *name) {
    const char *s = getenv(name);
    return s && *s ? s : NULL;
}

/* A non-negative int from `name`; *present = 0 (and *value untouched) when unset or empty. */
static Status env_int(const char *name, int *value, int *present) {
    const char *s = env_get(name);
    *present = s != NULL;
    if (!s) return STATUS_OK;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0 || v > INT_MAX)
        return errorf("%s='%s' is not a non-negative integer", name, s);
    *value = (int)v;
    return STATUS_OK;
}

static Status env_int_required(const char *name, const char *launcher, int *value) {
    int present;
    TRY(env_int(name, value, &present));
    if (!present) return errorf("%s is not set although %s launched this process", name, launcher);
    return STATUS_OK;
}

/* The first of several spellings that is set (Slurm keeps old names beside new ones). */
static const char *first_set(const char *a, const char *b) { return env_get(a) ? a : b; }

/* ---- Slurm node lists: "gpu[01-04,07],login2", "rack1-n[1-2]-ib" ---- */

/* Walks a range list ("01-04,07") for its k-th value: *count gets the number of values, and when
 * k < *count, *value and *width (digits of the range's lower bound, hence the zero padding) that
 * value's. */
static Status range_list_walk(const char *s, size_t len, int64_t k, int64_t *count, int64_t *value,
                              int *width) {
    *count = 0;
    size_t i = 0;
    for (;;) {
        int64_t bound[2] = {0, 0};
        int digits[2] = {0, 0}, nb = 0;
        for (; nb < 2; nb++) {
            while (i < len && s[i] >= '0' && s[i] <= '9') {
                if (digits[nb] >= 18) return errorf("node list range '%.*s': number too long", (int)len, s);
                bound[nb] = bound[nb] * 10 + (s[i] - '0');
                digits[nb]++;
                i++;
            }
            if (digits[nb] == 0) return errorf("node list range '[%.*s]': expected a number", (int)len, s);
            if (i < len && s[i] == '-' && nb == 0) {
                i++;
                continue;
            }
            nb++;
            break;
        }
        if (nb == 1) bound[1] = bound[0];
        if (bound[1] < bound[0])
            return errorf("node list range '[%.*s]': %lld is above %lld", (int)len, s,
                          (long long)bound[0], (long long)bound[1]);
        int64_t n = bound[1] - bound[0] + 1;
        if (k >= *count && k < *count + n) {
            *value = bound[0] + (k - *count);
            *width = digits[0];
        }
        *count += n;
        if (i == len) return STATUS_OK;
        if (s[i] != ',') return errorf("node list range '[%.*s]': unexpected '%c'", (int)len, s, s[i]);
        i++;
    }
}

enum { NODELIST_MAX_GROUPS = 8 };

/* One host pattern of a list (no top-level comma): literal text and up to 8 bracket groups; the
 * last group varies fastest, as Slurm expands them. */
static Status pattern_host(const char *p, size_t len, int64_t index, int64_t *count, char *host,
                           size_t size) {
    size_t open[NODELIST_MAX_GROUPS], close[NODELIST_MAX_GROUPS];
    int64_t n[NODELIST_MAX_GROUPS];
    int groups = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] == ']') return errorf("node list '%.*s': ']' without '['", (int)len, p);
        if (p[i] != '[') continue;
        if (groups == NODELIST_MAX_GROUPS)
            return errorf("node list '%.*s': more than %d bracket groups", (int)len, p, NODELIST_MAX_GROUPS);
        const char *end = memchr(p + i, ']', len - i);
        if (!end) return errorf("node list '%.*s': '[' without ']'", (int)len, p);
        open[groups] = i;
        close[groups] = (size_t)(end - p);
        int64_t v;
        int w;
        TRY(range_list_walk(p + i + 1, close[groups] - i - 1, -1, &n[groups], &v, &w));
        i = close[groups];
        groups++;
    }
    *count = 1;
    for (int g = 0; g < groups; g++) {
        if (*count > INT64_MAX / n[g]) return errorf("node list '%.*s': too many hosts", (int)len, p);
        *count *= n[g];
    }
    if (len == 0) return errorf("node list has an empty host name");
    if (!host || index < 0 || index >= *count) return STATUS_OK;

    int64_t pick[NODELIST_MAX_GROUPS];
    for (int g = groups - 1; g >= 0; g--) {
        pick[g] = index % n[g];
        index /= n[g];
    }
    size_t at = 0, from = 0;
    for (int g = 0; g <= groups; g++) {
        size_t lit_end = g < groups ? open[g] : len;
        int wrote = snprintf(host + at, size - at, "%.*s", (int)(lit_end - from), p + from);
        if (wrote < 0 || (size_t)wrote >= size - at) return errorf("node list host name too long");
        at += (size_t)wrote;
        if (g == groups) break;
        int64_t v, c;
        int w;
        TRY(range_list_walk(p + open[g] + 1, close[g] - open[g] - 1, pick[g], &c, &v, &w));
        wrote = snprintf(host + at, size - at, "%0*lld", w, (long long)v);
        if (wrote < 0 || (size_t)wrote >= size - at) return errorf("node list host name too long");
        at += (size_t)wrote;
        from = close[g] + 1;
    }
    return STATUS_OK;
}

/* Splits the list at commas outside brackets; host == NULL only counts. */
static Status nodelist_walk(const char *list, int64_t index, int64_t *total, char *host, size_t size) {
    *total = 0;
    if (!list || !*list) return errorf("node list is empty");
    const char *p = list;
    for (;;) {
        size_t len = 0;
        int depth = 0;
        while (p[len] && (depth > 0 || p[len] != ',')) {
            if (p[len] == '[') depth++;
            if (p[len] == ']') depth--;
            len++;
        }
        int64_t n;
        Status s = pattern_host(p, len, index - *total, &n, host, size);
        if (s != STATUS_OK) return error_context("'%s': ", list);
        if (host && index >= *total && index < *total + n) return STATUS_OK;
        *total += n;
        if (!p[len]) break;
        p += len + 1;
    }
    if (host)
        return errorf("node list '%s' names %lld hosts; there is no host %lld", list,
                      (long long)*total, (long long)index);
    return STATUS_OK;
}

Status dist_nodelist_host(const char *list, int64_t index, char *host, size_t size) {
    if (index < 0) return errorf("node list '%s': negative host index %lld", list, (long long)index);
    if (size == 0) return errorf("node list host: no room for the name");
    int64_t total;
    return nodelist_walk(list, index, &total, host, size);
}

Status dist_nodelist_count(const char *list, int64_t *count) {
    return nodelist_walk(list, -1, count, NULL, 0);
}

/* ---- the launchers ---- */

/* OpenMPI's mpirun (4.x): OMPI_COMM_WORLD_NODE_RANK is the rank among the processes on the node,
 * not the node's index, so the node is estimated from the local size (exact for mpirun's default
 * by-slot mapping); the MPI communicator replaces it with what MPI sees. */
static Status detect_mpirun(DistEnv *env) {
    TRY(env_int_required("OMPI_COMM_WORLD_RANK", "mpirun", &env->rank));
    TRY(env_int_required("OMPI_COMM_WORLD_SIZE", "mpirun", &env->world));
    TRY(env_int_required("OMPI_COMM_WORLD_LOCAL_RANK", "mpirun", &env->local_rank));
    int local_size = 0, present;
    TRY(env_int("OMPI_COMM_WORLD_LOCAL_SIZE", &local_size, &present));
    env->node = present && local_size > 0 ? env->rank / local_size : 0;
    strcpy(env->launcher, "mpirun");
    return STATUS_OK;
}

/* A task of an srun step. The batch script itself also sees SLURM_PROCID (0) and SLURM_NTASKS
 * (the whole allocation's), but no SLURM_STEP_ID: it is not one of the job's ranks. */
static int slurm_task(void) {
    return env_get("SLURM_PROCID") && (env_get("SLURM_STEP_ID") || env_get("SLURM_STEPID"));
}

static Status detect_slurm(DistEnv *env) {
    TRY(env_int_required("SLURM_PROCID", "srun", &env->rank));
    TRY(env_int_required(first_set("SLURM_NTASKS", "SLURM_NPROCS"), "srun", &env->world));
    TRY(env_int_required("SLURM_LOCALID", "srun", &env->local_rank));
    TRY(env_int_required("SLURM_NODEID", "srun", &env->node));
    strcpy(env->launcher, "slurm");
    return STATUS_OK;
}

static Status detect_vars(DistEnv *env) {
    int have_rank = 0, have_world = 0, have_local = 0, have_node = 0;
    TRY(env_int("RANK", &env->rank, &have_rank));
    TRY(env_int("WORLD_SIZE", &env->world, &have_world));
    if (!have_rank) return errorf("WORLD_SIZE is set but RANK is not: set both, or neither");
    if (!have_world) return errorf("RANK is set but WORLD_SIZE is not: set both, or neither");
    TRY(env_int("LOCAL_RANK", &env->local_rank, &have_local));
    if (!have_local && env->world > 1)
        return errorf("LOCAL_RANK is not set (RANK and WORLD_SIZE are): set it to this process's "
                      "index among the ranks on its node; it picks the GPU");
    TRY(env_int(first_set("NODE_RANK", "GROUP_RANK"), &env->node, &have_node));
    strcpy(env->launcher, "env");
    return STATUS_OK;
}

/* rank 0's address for NCCL's own bootstrap. */
static Status detect_master(DistEnv *env) {
    const char *addr = env_get("MASTER_ADDR");
    int port = 0, have_port;
    TRY(env_int("MASTER_PORT", &port, &have_port));
    if (have_port && (port < 1 || port > 65535))
        return errorf("MASTER_PORT=%d is not a TCP port (1..65535)", port);
    if (addr) {
        if (strlen(addr) >= sizeof env->master_addr)
            return errorf("MASTER_ADDR is longer than %zu characters", sizeof env->master_addr - 1);
        strcpy(env->master_addr, addr);
    }
    if (!addr && strcmp(env->launcher, "slurm") == 0) {
        /* srun places task 0 on the first node of its step. */
        const char *var = first_set("SLURM_STEP_NODELIST", first_set("SLURM_JOB_NODELIST", "SLURM_NODELIST"));
        const char *list = env_get(var);
        if (list) {
            Status s = dist_nodelist_host(list, 0, env->master_addr, sizeof env->master_addr);
            if (s != STATUS_OK) return error_context("%s: ", var);
        }
    }
    if (!have_port && strcmp(env->launcher, "slurm") == 0) {
        /* A port of this job and step, below Linux's ephemeral range (32768 and up), so two jobs
         * (or two steps of one job) sharing a first node rarely meet on the same port. */
        int job = 0, step = 0, have_job, have_step;
        const char *job_var = first_set("SLURM_JOB_ID", "SLURM_JOBID");
        TRY(env_int(job_var, &job, &have_job));
        TRY(env_int(first_set("SLURM_STEP_ID", "SLURM_STEPID"), &step, &have_step));
        if (have_job) port = 20000 + (job % 1000) * 10 + step % 10;
    }
    env->master_port = port;
    return STATUS_OK;
}

Status dist_env_detect(DistEnv *env) {
    memset(env, 0, sizeof *env);
    env->world = 1;
    Status s;
    if (env_get("OMPI_COMM_WORLD_RANK") || env_get("OMPI_COMM_WORLD_SIZE"))
        s = detect_mpirun(env);
    else if (slurm_task())
        s = detect_slurm(env);
    else if (env_get("RANK") || env_get("WORLD_SIZE"))
        s = detect_vars(env);
    else {
        strcpy(env->launcher, "single");
        return STATUS_OK;
    }
    if (s != STATUS_OK) return error_context("reading the launcher's environment: ");

    const char *rank_var = "RANK", *world_var = "WORLD_SIZE", *local_var = "LOCAL_RANK";
    if (strcmp(env->launcher, "mpirun") == 0) {
        rank_var = "OMPI_COMM_WORLD_RANK";
        world_var = "OMPI_COMM_WORLD_SIZE";
        local_var = "OMPI_COMM_WORLD_LOCAL_RANK";
    } else if (strcmp(env->launcher, "slurm") == 0) {
        rank_var = "SLURM_PROCID";
        world_var = first_set("SLURM_NTASKS", "SLURM_NPROCS");
        local_var = "SLURM_LOCALID";
    }
    if (env->world < 1) return errorf("%s=%d: a job has at least one rank", world_var, env->world);
    if (env->rank >= env->world)
        return errorf("%s=%d is not below %s=%d", rank_var, env->rank, world_var, env->world);
    if (env->local_rank >= env->world)
        return errorf("%s=%d is not below %s=%d", local_var, env->local_rank, world_var, env->world);
    return detect_master(env);
}

/* ---- choosing the communicator ---- */

int dist_mpi_launchable(const DistEnv *env, char *why, size_t size) {
    if (strcmp(env->launcher, "mpirun") == 0) return 1;
    if (strcmp(env->launcher, "slurm") == 0) {
        if (env_get("PMIX_RANK") || env_get("PMI_RANK")) return 1;
        snprintf(why, size,
                 "srun started this rank without PMIx (PMIX_RANK is not set): launch with "
                 "`srun --mpi=pmix -n %d ...` (Debian's OpenMPI supports no other direct launch)",
                 env->world);
        return 0;
    }
    snprintf(why, size,
             "%s=%d started %d processes that MPI cannot connect: launch with `mpirun -np %d ...` "
             "or `srun --mpi=pmix -n %d ...`",
             strcmp(env->launcher, "env") == 0 ? "WORLD_SIZE" : "the launcher", env->world,
             env->world, env->world, env->world);
    return 0;
}

Status dist_nccl_comm_id(const DistEnv *env, char *out, size_t size) {
    if (!env->master_addr[0] || env->master_port == 0) {
        const char *missing = !env->master_addr[0] ? (env->master_port ? "MASTER_ADDR" : "MASTER_ADDR and MASTER_PORT")
                                                    : "MASTER_PORT";
        return errorf("rank %d: NCCL needs rank 0's address and a free port to meet at, and %s %s "
                      "not known: set %s (same on every rank), or launch with mpirun or "
                      "`srun --mpi=pmix` in a build with MPI",
                      env->rank, missing, strchr(missing, ' ') ? "are" : "is", missing);
    }
    int ipv6 = strchr(env->master_addr, ':') != NULL && env->master_addr[0] != '[';
    int n = snprintf(out, size, ipv6 ? "[%s]:%d" : "%s:%d", env->master_addr, env->master_port);
    if (n < 0 || (size_t)n >= size) return errorf("NCCL_COMM_ID for '%s' is too long", env->master_addr);
    return STATUS_OK;
}

static Status create_mpi(Comm **out, const DistEnv *env, double timeout_s) {
    char why[512];
    if (!dist_mpi_launchable(env, why, sizeof why))
        return errorf("rank %d: the CPU communicator runs on MPI, and %s", env->rank, why);
#ifdef MLATRAIN_HAVE_MPI
    return comm_mpi_create(out, env, timeout_s);
#else
    return errorf("rank %d of %d: this build of mlatrain has no MPI, so it cannot run several ranks "
                  "on CPU: install libopenmpi-dev and rebuild (cmake reports \"MPI found\")",
                  env->rank, env->world);
#endif
}

static Status create_nccl(Comm **out, const DistEnv *env, double timeout_s) {
#ifdef MLATRAIN_HAVE_CUDA
#ifdef MLATRAIN_HAVE_MPI
    /* MPI, where it can start, carries the unique id and can take the whole job down. */
    char why[512];
    if (dist_mpi_launchable(env, why, sizeof why)) {
        Comm *oob = NULL;
        TRY(comm_mpi_create(&oob, env, timeout_s));
        Status s = comm_nccl_create(out, &oob->env, timeout_s, oob);
        if (s != STATUS_OK) comm_destroy(oob);
        return s;
    }
#endif
    /* NCCL's own bootstrap: rank 0 listens at NCCL_COMM_ID, the others connect to it. A value the
     * user set wins. */
    if (!env_get("NCCL_COMM_ID")) {
        char id[300];
        TRY(dist_nccl_comm_id(env, id, sizeof id));
        if (setenv("NCCL_COMM_ID", id, 1) != 0) return errorf("rank %d: cannot set NCCL_COMM_ID", env->rank);
    }
    return comm_nccl_create(out, env, timeout_s, NULL);
#else
    return errorf("rank %d of %d: this build of mlatrain has no CUDA (nvcc was not found when it was "
                  "built), so it cannot run on \"cuda\"",
                  env->rank, env->world);
#endif
}

Status comm_create(Comm **out, const char *device, double timeout_s) {
    *out = NULL;
    if (!device || (strcmp(device, "cpu") != 0 && strcmp(device, "cuda") != 0))
        return errorf("communicator: unknown device '%s' (expected \"cpu\" or \"cuda\")",
                      device ? device : "(null)");
    DistEnv env;
    TRY(dist_env_detect(&env));
    if (env.world == 1) {
        TRY(comm_single_create(out));
        (*out)->env = env;
        (*out)->timeout_s = timeout_s;
        return STATUS_OK;
    }
    return strcmp(device, "cpu") == 0 ? create_mpi(out, &env, timeout_s) : create_nccl(out, &env, timeout_s);
}
