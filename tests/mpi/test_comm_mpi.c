/* The MPI communicator under mpirun: every collective against sums formed here, the same bits on
 * every rank, awkward and chunked counts; with "stuck" or "dies", one rank fails its peer. */
#include <math.h>
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dist/comm.h"
#include "dist/comm_internal.h"
#include "tests/harness.h"

static int rank, world;

/* ---- inputs every rank can regenerate for any rank ---- */

/* Multiples of 1/8 below 8 in magnitude: any sum of a few is exact in float32, whatever the order. */
static float dyadic(int r, int64_t i, int salt) {
    return (float)(((i * 7 + r * 13 + salt * 5) % 127) - 63) / 8.0f;
}

static void input_f32(float *x, int64_t n, int r, int salt, int exact) {
    if (exact)
        for (int64_t i = 0; i < n; i++) x[i] = dyadic(r, i, salt);
    else
        fill_normal(x, n, 1000 + 17 * (uint64_t)salt + (uint64_t)r, 1.0f);
}

static void input_f64(double *x, int64_t n, int r, int salt, int exact) {
    if (exact)
        for (int64_t i = 0; i < n; i++) x[i] = dyadic(r, i, salt);
    else
        fill_normal_f64(x, n, 5000 + 17 * (uint64_t)salt + (uint64_t)r, 1.0);
}

/* ---- comparisons ---- */

static uint64_t fnv1a(const void *p, size_t bytes) {
    const unsigned char *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < bytes; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* The result's bits hashed on every rank and compared, through MPI directly (not the
 * communicator under test). */
static void check_same_bits(const char *what, const void *buf, size_t bytes) {
    uint64_t h = fnv1a(buf, bytes), *all = test_alloc((size_t)world * sizeof *all);
    MPI_Allgather(&h, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, MPI_COMM_WORLD);
    int same = 1;
    for (int r = 0; r < world; r++) same &= all[r] == all[0];
    CHECK(same, "%s: the result differs between ranks", what);
    free(all);
}

static double rel_error_f64_f64(const double *a, const double *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return isnan(num) ? INFINITY : sqrt(num) / fmax(sqrt(den), 1e-300);
}

static int64_t count_mismatches_f32(const float *a, const double *b, int64_t n) {
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) bad += a[i] != (float)b[i];
    return bad;
}

/* ---- the collectives ---- */

static void test_all_reduce_f32(Comm *c, int64_t n, int exact) {
    float *x = test_alloc((size_t)n * sizeof *x), *peer = test_alloc((size_t)n * sizeof *peer);
    double *ref = calloc((size_t)n, sizeof *ref);
    for (int r = 0; r < world; r++) {
        input_f32(peer, n, r, 1, exact);
        for (int64_t i = 0; i < n; i++) ref[i] += peer[i];
    }
    input_f32(x, n, rank, 1, exact);
    if (CHECK_OK(c->all_reduce_sum_f32(c, x, n))) {
        if (exact) {
            int64_t bad = count_mismatches_f32(x, ref, n);
            CHECK(bad == 0, "all_reduce_sum_f32 n=%lld exact inputs: %lld values differ from the exact sum",
                  (long long)n, (long long)bad);
        } else {
            double err = rel_error_f64(x, ref, n);
            CHECK(err < 1e-6, "all_reduce_sum_f32 n=%lld: rel error %.3g", (long long)n, err);
        }
        char what[64];
        snprintf(what, sizeof what, "all_reduce_sum_f32 n=%lld", (long long)n);
        check_same_bits(what, x, (size_t)n * sizeof *x);
    }
    free(x);
    free(peer);
    free(ref);
}

static void test_all_reduce_f64(Comm *c, int64_t n, int exact) {
    double *x = test_alloc((size_t)n * sizeof *x), *peer = test_alloc((size_t)n * sizeof *peer);
    double *ref = calloc((size_t)n, sizeof *ref);
    for (int r = 0; r < world; r++) {
        input_f64(peer, n, r, 2, exact);
        for (int64_t i = 0; i < n; i++) ref[i] += peer[i];
    }
    input_f64(x, n, rank, 2, exact);
    if (CHECK_OK(c->all_reduce_sum_f64(c, x, n))) {
        if (exact)
            CHECK(memcmp(x, ref, (size_t)n * sizeof *x) == 0, "all_reduce_sum_f64 n=%lld: not the exact sum", (long long)n);
        else
            CHECK(rel_error_f64_f64(x, ref, n) < 1e-14, "all_reduce_sum_f64 n=%lld: rel error %.3g", (long long)n,
                  rel_error_f64_f64(x, ref, n));
        check_same_bits("all_reduce_sum_f64", x, (size_t)n * sizeof *x);
    }
    free(x);
    free(peer);
    free(ref);
}

static int32_t int_input(int r, int64_t i) { return (int32_t)((i * 2654435761u + (uint64_t)r * 40503u) % 2001u) - 1000; }

static void test_all_reduce_max(Comm *c, int64_t n) {
    int32_t *x = test_alloc((size_t)n * sizeof *x);
    for (int64_t i = 0; i < n; i++) x[i] = int_input(rank, i);
    if (CHECK_OK(c->all_reduce_max_i32(c, x, n))) {
        int64_t bad = 0;
        for (int64_t i = 0; i < n; i++) {
            int32_t want = int_input(0, i);
            for (int r = 1; r < world; r++)
                if (int_input(r, i) > want) want = int_input(r, i);
            bad += x[i] != want;
        }
        CHECK(bad == 0, "all_reduce_max_i32 n=%lld: %lld wrong values", (long long)n, (long long)bad);
    }
    free(x);
}

/* send holds world blocks of count; this rank's recv is the sum of every rank's block `rank`. */
static void test_reduce_scatter(Comm *c, int64_t count, int exact, int in_place) {
    int64_t total = count * world;
    float *send = test_alloc((size_t)(total > 0 ? total : 1) * sizeof *send);
    float *peer = test_alloc((size_t)(total > 0 ? total : 1) * sizeof *peer);
    float *recv = in_place ? send + rank * count : test_alloc((size_t)(count > 0 ? count : 1) * sizeof *recv);
    double *ref = calloc((size_t)(count > 0 ? count : 1), sizeof *ref);
    for (int r = 0; r < world; r++) {
        input_f32(peer, total, r, 3, exact);
        for (int64_t j = 0; j < count; j++) ref[j] += peer[rank * count + j];
    }
    input_f32(send, total, rank, 3, exact);
    if (CHECK_OK(c->reduce_scatter_sum_f32(c, send, recv, count))) {
        if (exact) {
            int64_t bad = count_mismatches_f32(recv, ref, count);
            CHECK(bad == 0, "reduce_scatter count=%lld%s: %lld values differ from the exact sum", (long long)count,
                  in_place ? " in place" : "", (long long)bad);
        } else {
            double err = rel_error_f64(recv, ref, count);
            CHECK(err < 1e-6, "reduce_scatter count=%lld%s: rel error %.3g", (long long)count,
                  in_place ? " in place" : "", err);
        }
    }
    free(send);
    free(peer);
    if (!in_place) free(recv);
    free(ref);
}

static void test_all_gather(Comm *c, int64_t count, int in_place) {
    int64_t total = count * world;
    float *recv = test_alloc((size_t)(total > 0 ? total : 1) * sizeof *recv);
    float *send = in_place ? recv + rank * count : test_alloc((size_t)(count > 0 ? count : 1) * sizeof *send);
    float *want = test_alloc((size_t)(total > 0 ? total : 1) * sizeof *want);
    for (int r = 0; r < world; r++) input_f32(want + r * count, count, r, 4, 0);
    for (int64_t i = 0; i < total; i++) recv[i] = NAN; /* what the gather must overwrite */
    input_f32(send, count, rank, 4, 0);
    if (CHECK_OK(c->all_gather_f32(c, send, recv, count)))
        CHECK(memcmp(recv, want, (size_t)total * sizeof *recv) == 0, "all_gather count=%lld%s: wrong values",
              (long long)count, in_place ? " in place" : "");
    free(recv);
    free(want);
    if (!in_place) free(send);
}

static void test_broadcast(Comm *c, size_t bytes, int root) {
    unsigned char *buf = test_alloc(bytes > 0 ? bytes : 1);
    for (size_t i = 0; i < bytes; i++) buf[i] = (unsigned char)(i * 31 + (size_t)rank * 7);
    if (CHECK_OK(c->broadcast(c, buf, bytes, root))) {
        size_t bad = 0;
        for (size_t i = 0; i < bytes; i++) bad += buf[i] != (unsigned char)(i * 31 + (size_t)root * 7);
        CHECK(bad == 0, "broadcast %zu bytes from rank %d: %zu wrong bytes", bytes, root, bad);
    }
    free(buf);
}

static void test_collectives(Comm *c) {
    const int64_t sizes[] = {1, 2, 3, 7, 1001, 3000001}; /* 3M + 1: no world divides it */
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        test_all_reduce_f32(c, sizes[k], 0);
        test_all_reduce_f32(c, sizes[k], 1);
    }
    test_all_reduce_f32(c, 0, 0);
    test_all_reduce_f64(c, 1, 1);
    test_all_reduce_f64(c, 1001, 1);
    test_all_reduce_f64(c, 1001, 0);
    test_all_reduce_max(c, 1);
    test_all_reduce_max(c, 1001);
    const int64_t counts[] = {0, 1, 5, 1001};
    for (size_t k = 0; k < sizeof counts / sizeof *counts; k++) {
        for (int in_place = 0; in_place < 2; in_place++) {
            test_reduce_scatter(c, counts[k], 0, in_place);
            test_reduce_scatter(c, counts[k], 1, in_place);
            test_all_gather(c, counts[k], in_place);
        }
    }
    test_broadcast(c, 0, 0);
    test_broadcast(c, 1001, 0);
    test_broadcast(c, 1001, world - 1);
    CHECK_OK(c->barrier(c));
}

/* Counts above the per-call limit: the same collectives split into several MPI calls. */
static void test_chunked(Comm *c) {
    comm_mpi_set_max_count(100);
    test_all_reduce_f32(c, 100 * world * 3 + 5, 0);
    test_all_reduce_f32(c, 100 * world * 3 + 5, 1);
    test_all_reduce_f64(c, 100 * world * 2 + 1, 1);
    test_all_reduce_max(c, 1001);
    for (int in_place = 0; in_place < 2; in_place++) {
        test_reduce_scatter(c, 1001, 1, in_place);
        test_all_gather(c, 1001, in_place);
    }
    test_broadcast(c, 1001, world - 1);
    comm_mpi_set_max_count(0);
}

static void test_bad_arguments(Comm *c) {
    float x[4] = {0};
    CHECK_ERR(c->all_reduce_sum_f32(c, x, -1), "negative count");
    CHECK_ERR(c->broadcast(c, x, sizeof x, world), "is not a rank");
    CHECK_ERR(c->broadcast(c, x, sizeof x, -1), "is not a rank");
    float *buf = test_alloc((size_t)(2 * world + 2) * sizeof *buf);
    /* recv starting one value into send: neither separate nor this rank's block */
    CHECK_ERR(c->reduce_scatter_sum_f32(c, buf, buf + rank * 2 + 1, 2), "overlaps");
    CHECK_ERR(c->all_gather_f32(c, buf + rank * 2 + 1, buf, 2), "overlaps");
    free(buf);
    CHECK_OK(c->barrier(c)); /* nothing above reached MPI: every rank is still in step */
}

static void test_env(Comm *c) {
    CHECK(strcmp(c->name, "mpi") == 0, "communicator '%s', expected mpi", c->name);
    CHECK(c->env.rank == rank && c->env.world == world, "env says rank %d of %d, MPI %d of %d", c->env.rank,
          c->env.world, rank, world);
    CHECK(strcmp(c->env.launcher, "mpirun") == 0 || strcmp(c->env.launcher, "slurm") == 0,
          "launcher '%s'", c->env.launcher);
    /* every rank of this test runs on one machine */
    CHECK(c->env.node == 0 && c->env.local_rank == rank, "rank %d: node %d, local rank %d", rank, c->env.node,
          c->env.local_rank);
}

/* Environment variables that contradict MPI are refused, and a second communicator beside the
 * first works and leaves MPI initialised. */
static void test_second_communicators(void) {
    const char *names[] = {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"};
    char *saved[3];
    for (int k = 0; k < 3; k++) saved[k] = getenv(names[k]) ? strdup(getenv(names[k])) : NULL;
    char v[32];
    snprintf(v, sizeof v, "%d", rank);
    setenv("OMPI_COMM_WORLD_RANK", v, 1);
    setenv("OMPI_COMM_WORLD_LOCAL_RANK", v, 1);
    snprintf(v, sizeof v, "%d", world + 1);
    setenv("OMPI_COMM_WORLD_SIZE", v, 1);
    Comm *bad = NULL;
    CHECK_ERR(comm_create(&bad, "cpu", 30), "MPI says this process is rank");
    snprintf(v, sizeof v, "%d", world);
    setenv("OMPI_COMM_WORLD_SIZE", v, 1);
    Comm *second = NULL;
    if (CHECK_OK(comm_create(&second, "cpu", 30))) {
        test_all_reduce_f32(second, 11, 1);
        comm_destroy(second);
    }
    for (int k = 0; k < 3; k++) {
        if (saved[k]) setenv(names[k], saved[k], 1);
        else unsetenv(names[k]);
        free(saved[k]);
    }
}

/* One rank fails the other: "stuck" stays alive without joining the barrier, "dies" is killed.
 * The other rank must not return; the job's exit status and stderr are checked outside. */
static int run_fault(const char *fault, double timeout_s) {
    Comm *c = NULL;
    if (comm_create(&c, "cpu", timeout_s) != STATUS_OK) {
        fprintf(stderr, "%s\n", error_message());
        return 2;
    }
    if (rank == 1) {
        if (strcmp(fault, "dies") == 0) raise(SIGKILL);
        sleep(60);
        return 0;
    }
    Status s = strcmp(fault, "dies") == 0 ? c->all_reduce_sum_f32(c, (float[1]){1.0f}, 1) : c->barrier(c);
    fprintf(stderr, "rank %d: the collective returned (%s) although rank 1 %s\n", rank,
            s == STATUS_OK ? "ok" : error_message(), strcmp(fault, "dies") == 0 ? "died" : "never joined");
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1) {
        /* The environment gives the rank before MPI starts (it starts inside comm_create). */
        DistEnv env;
        if (dist_env_detect(&env) != STATUS_OK) {
            fprintf(stderr, "%s\n", error_message());
            return 2;
        }
        rank = env.rank;
        world = env.world;
        return run_fault(argv[1], argc > 2 ? atof(argv[2]) : 2.0);
    }
    Comm *c = NULL;
    if (!CHECK_OK(comm_create(&c, "cpu", 120))) return test_finish("test_comm_mpi");
    rank = c->env.rank;
    world = c->env.world;
    test_env(c);
    test_collectives(c);
    test_chunked(c);
    test_bad_arguments(c);
    test_second_communicators();
    CHECK_OK(c->barrier(c));
    comm_destroy(c);
    char name[64];
    snprintf(name, sizeof name, "test_comm_mpi rank %d of %d", rank, world);
    return test_finish(name);
}
