/* The NCCL communicator on GPU buffers, one rank run directly or N under mpirun (a GPU each):
 * sums against float64, the same bits on every rank, in place; "skipped" without enough GPUs. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "nccl_fixture.h"

#ifdef MLATRAIN_HAVE_CUDA

static Backend *gpu;
static int rank, world;

/* Device memory of `bytes`, filled from host (or zeros). */
static Tensor device_buffer(size_t bytes, const void *host) {
    Tensor t;
    int64_t n = (int64_t)((bytes + 3) / 4);
    if (!CHECK_OK(gpu->alloc(gpu, &t, DT_F32, 1, &n))) exit(1);
    if (host) CHECK_OK(gpu->upload(gpu, t, host));
    return t;
}

static void download(void *host, Tensor t) { CHECK_OK(gpu->download(gpu, host, t)); }

/* The result's hash gathered through the communicator as exact small floats and compared. */
static void check_same_bits(Comm *c, const char *what, const void *buf, size_t bytes) {
    const unsigned char *b = buf;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < bytes; i++) h = (h ^ b[i]) * 1099511628211ull;
    float mine[4], *all = test_alloc((size_t)world * sizeof mine);
    for (int k = 0; k < 4; k++) mine[k] = (float)((h >> (16 * k)) & 0xffff);
    Tensor d_mine = device_buffer(sizeof mine, mine), d_all = device_buffer((size_t)world * sizeof mine, NULL);
    if (CHECK_OK(c->all_gather_f32(c, d_mine.data, d_all.data, 4))) {
        download(all, d_all);
        int same = 1;
        for (int r = 0; r < world; r++) same &= memcmp(all + 4 * r, all, sizeof mine) == 0;
        CHECK(same, "%s: the result differs between ranks", what);
    }
    gpu->release(gpu, &d_mine);
    gpu->release(gpu, &d_all);
    free(all);
}

static void test_all_reduce(Comm *c, int64_t n) {
    float *x = test_alloc((size_t)n * 4), *peer = test_alloc((size_t)n * 4);
    double *ref = calloc((size_t)n, sizeof *ref), *x64 = test_alloc((size_t)n * 8), *ref64 = calloc((size_t)n, 8);
    for (int r = 0; r < world; r++) {
        fill_normal(peer, n, 100 + (uint64_t)r, 1.0f);
        for (int64_t i = 0; i < n; i++) ref[i] += peer[i];
        for (int64_t i = 0; i < n; i++) ref64[i] += (double)peer[i] / 3.0;
    }
    fill_normal(x, n, 100 + (uint64_t)rank, 1.0f);
    for (int64_t i = 0; i < n; i++) x64[i] = (double)x[i] / 3.0;
    Tensor d = device_buffer((size_t)n * 4, x), d64 = device_buffer((size_t)n * 8, x64);
    if (CHECK_OK(c->all_reduce_sum_f32(c, d.data, n))) {
        download(x, d);
        double err = rel_error_f64(x, ref, n);
        CHECK(err < 1e-6, "all_reduce_sum_f32 n=%lld: rel error %.3g", (long long)n, err);
        check_same_bits(c, "all_reduce_sum_f32", x, (size_t)n * 4);
    }
    if (CHECK_OK(c->all_reduce_sum_f64(c, d64.data, n))) {
        download(x64, d64);
        double num = 0, den = 0;
        for (int64_t i = 0; i < n; i++) {
            num += (x64[i] - ref64[i]) * (x64[i] - ref64[i]);
            den += ref64[i] * ref64[i];
        }
        CHECK(sqrt(num) <= 1e-14 * sqrt(den), "all_reduce_sum_f64 n=%lld: rel error %.3g", (long long)n,
              sqrt(num / fmax(den, 1e-300)));
    }
    gpu->release(gpu, &d);
    gpu->release(gpu, &d64);
    free(x);
    free(peer);
    free(ref);
    free(x64);
    free(ref64);
}

static void test_max(Comm *c) {
    int32_t x[5], got[5];
    for (int i = 0; i < 5; i++) x[i] = (i * 37 + rank * 11) % 23 - 10;
    Tensor d = device_buffer(sizeof x, x);
    if (CHECK_OK(c->all_reduce_max_i32(c, d.data, 5))) {
        download(got, d);
        int bad = 0;
        for (int i = 0; i < 5; i++) {
            int32_t want = -1000;
            for (int r = 0; r < world; r++)
                if ((i * 37 + r * 11) % 23 - 10 > want) want = (i * 37 + r * 11) % 23 - 10;
            bad += got[i] != want;
        }
        CHECK(bad == 0, "all_reduce_max_i32: %d wrong values", bad);
    }
    gpu->release(gpu, &d);
}

static void test_scatter_gather(Comm *c, int64_t count, int in_place) {
    int64_t total = count * world;
    float *send = test_alloc((size_t)total * 4), *peer = test_alloc((size_t)total * 4), *got = test_alloc((size_t)total * 4);
    double *ref = calloc((size_t)count, sizeof *ref);
    for (int r = 0; r < world; r++) {
        fill_normal(peer, total, 200 + (uint64_t)r, 1.0f);
        for (int64_t j = 0; j < count; j++) ref[j] += peer[rank * count + j];
    }
    fill_normal(send, total, 200 + (uint64_t)rank, 1.0f);
    Tensor d_send = device_buffer((size_t)total * 4, send), d_recv = device_buffer((size_t)count * 4, NULL);
    float *recv = in_place ? (float *)d_send.data + rank * count : d_recv.data;
    if (CHECK_OK(c->reduce_scatter_sum_f32(c, d_send.data, recv, count))) {
        Tensor view = tensor_view(recv, DT_F32, 1, (int64_t[]){count});
        download(got, view);
        double err = rel_error_f64(got, ref, count);
        CHECK(err < 1e-6, "reduce_scatter count=%lld%s: rel error %.3g", (long long)count, in_place ? " in place" : "", err);
    }
    /* all-gather every rank's shard back: in place from the shard's own slot */
    float *shard = test_alloc((size_t)count * 4), *want = test_alloc((size_t)total * 4);
    for (int r = 0; r < world; r++) fill_normal(want + r * count, count, 300 + (uint64_t)r, 1.0f);
    fill_normal(shard, count, 300 + (uint64_t)rank, 1.0f);
    Tensor d_all = device_buffer((size_t)total * 4, NULL), d_shard = device_buffer((size_t)count * 4, shard);
    float *src = in_place ? (float *)d_all.data + rank * count : d_shard.data;
    if (in_place) {
        Tensor slot = tensor_view(src, DT_F32, 1, (int64_t[]){count});
        CHECK_OK(gpu->upload(gpu, slot, shard));
    }
    if (CHECK_OK(c->all_gather_f32(c, src, d_all.data, count))) {
        download(got, d_all);
        CHECK(memcmp(got, want, (size_t)total * 4) == 0, "all_gather count=%lld%s: wrong values", (long long)count,
              in_place ? " in place" : "");
    }
    gpu->release(gpu, &d_send);
    gpu->release(gpu, &d_recv);
    gpu->release(gpu, &d_all);
    gpu->release(gpu, &d_shard);
    free(send);
    free(peer);
    free(got);
    free(ref);
    free(shard);
    free(want);
}

static void test_broadcast(Comm *c, int root) {
    unsigned char buf[1000], got[1000];
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (unsigned char)(i * 31 + (size_t)rank * 7);
    Tensor d = device_buffer(sizeof buf, NULL);
    CHECK_OK(gpu->upload(gpu, d, buf));
    if (CHECK_OK(c->broadcast(c, d.data, 1000, root))) {
        download(got, d);
        int bad = 0;
        for (size_t i = 0; i < 1000; i++) bad += got[i] != (unsigned char)(i * 31 + (size_t)root * 7);
        CHECK(bad == 0, "broadcast from rank %d: %d wrong bytes", root, bad);
    }
    gpu->release(gpu, &d);
}

int main(void) {
    Comm *c = NULL;
    switch (nccl_fixture_open(&c, &gpu)) {
    case NCCL_FIXTURE_SKIPPED: return TEST_SKIPPED;
    case NCCL_FIXTURE_FAILED: return test_finish("test_gpu_dist_nccl");
    case NCCL_FIXTURE_READY: break;
    }
    rank = c->env.rank;
    world = c->env.world;
    CHECK(strcmp(c->name, "nccl") == 0, "communicator '%s', expected nccl", c->name);

    test_all_reduce(c, 1);
    test_all_reduce(c, 1001);
    test_all_reduce(c, 3000001);
    test_max(c);
    for (int in_place = 0; in_place < 2; in_place++) {
        test_scatter_gather(c, 1, in_place);
        test_scatter_gather(c, 1001, in_place);
    }
    test_broadcast(c, 0);
    test_broadcast(c, world - 1);
    CHECK_OK(c->barrier(c));
    float dummy[1];
    CHECK_ERR(c->all_reduce_sum_f32(c, dummy, -1), "negative count");
    CHECK_ERR(c->broadcast(c, dummy, 4, world), "is not a rank");

    backend_destroy(gpu);
    comm_destroy(c);
    char name[64];
    snprintf(name, sizeof name, "test_gpu_dist_nccl rank %d of %d", rank, world);
    return test_finish(name);
}

#else

int main(void) {
    printf("skipped: this build has no CUDA\n");
    return TEST_SKIPPED;
}

#endif
