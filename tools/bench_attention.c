/* What causal attention costs per call, forward and backward, at one shape: one JSON line per pass
 * with its time and its rate in FlashAttention's count of the work (tools/bench_attention_torch.py
 * prints the same lines for PyTorch's scaled_dot_product_attention, the baseline to run beside it).
 *
 *   bench_attention [--device cpu|cuda] [--batch B] [--tokens T] [--heads H] [--kv-heads K]
 *                   [--dk DK] [--ds DS] [--dv DV] [--reps R] [--bf16] [--label NAME]
 *
 * q [B, T, H, DK + DS], k [B, T, K, DK], k_shared [B, T, DS] (MLA's rope key; absent when DS = 0),
 * v [B, T, K, DV]. Defaults: cpu, 1 x 256 tokens, 8 heads over 8, 64 / 0 / 64, 3 reps. bench_1b's
 * student layer is --batch 4 --tokens 2048 --heads 32 --kv-heads 32 --dk 64 --ds 32 --dv 64 --bf16;
 * its teacher's --kv-heads 8 --dk 64 --ds 0 --dv 64. FLOPs counted: the T (T + 1) / 2 causal pairs
 * of each head, 2 (Dq + Dv) per pair forward and 2 (3 Dq + 2 Dv) backward (S, dP, dV, dK, dQ: what
 * recomputation beyond that costs is not counted). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "core/clock.h"
#include "core/rng.h"

typedef struct {
    const char *device, *label;
    int64_t B, T, H, K, dk, ds, dv, reps;
    int bf16;
} Options;

static int parse(int argc, char **argv, Options *o) {
    *o = (Options){.device = "cpu", .label = "", .B = 1, .T = 256, .H = 8, .K = 8, .dk = 64, .ds = 0, .dv = 64, .reps = 3};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--bf16")) {
            o->bf16 = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "bench_attention: %s needs a value\n", a);
            return 0;
        }
        i++;
        if (!strcmp(a, "--device")) o->device = v;
        else if (!strcmp(a, "--label")) o->label = v;
        else if (!strcmp(a, "--batch")) o->B = atoll(v);
        else if (!strcmp(a, "--tokens")) o->T = atoll(v);
        else if (!strcmp(a, "--heads")) o->H = atoll(v);
        else if (!strcmp(a, "--kv-heads")) o->K = atoll(v);
        else if (!strcmp(a, "--dk")) o->dk = atoll(v);
        else if (!strcmp(a, "--ds")) o->ds = atoll(v);
        else if (!strcmp(a, "--dv")) o->dv = atoll(v);
        else if (!strcmp(a, "--reps")) o->reps = atoll(v);
        else {
            fprintf(stderr, "bench_attention: unknown option %s\n", a);
            return 0;
        }
    }
    if (o->B < 1 || o->T < 1 || o->H < 1 || o->K < 1 || o->H % o->K != 0 || o->dk < 0 || o->ds < 0 ||
        o->dk + o->ds < 1 || o->dv < 1 || o->reps < 1) {
        fprintf(stderr, "bench_attention: sizes must be >= 1 (dk or ds may be 0), heads a multiple of kv-heads\n");
        return 0;
    }
    return 1;
}

static Status random_tensor(Backend *be, Tensor *t, DType dt, int ndim, const int64_t *shape, uint64_t seed) {
    TRY(be->alloc(be, t, dt, ndim, shape));
    const int64_t n = tensor_numel(*t);
    float *x = malloc((size_t)n * sizeof(float));
    if (!x) return errorf("bench_attention: out of memory for %lld values", (long long)n);
    rng_fill_normal(x, n, seed, 0, 0.0f, 1.0f);
    Status st = backend_upload_f32(be, *t, x);
    free(x);
    return st;
}

int main(int argc, char **argv) {
    Options o;
    if (!parse(argc, argv, &o)) return 2;
    Backend *be = NULL;
    Status st = backend_create(&be, o.device, (BackendOptions){0, 0});
    const DType dt = o.bf16 ? DT_BF16 : DT_F32;
    const int64_t B = o.B, T = o.T, H = o.H, K = o.K, dq = o.dk + o.ds, dv = o.dv;
    Tensor q = {0}, k = {0}, ks = {0}, v = {0}, out = {0}, lse = {0}, dout = {0}, dqt = {0}, dk = {0}, dks = {0},
           dvt = {0};
    if (st == STATUS_OK) st = random_tensor(be, &q, dt, 4, (int64_t[]){B, T, H, dq}, 1);
    if (st == STATUS_OK) st = random_tensor(be, &k, dt, 4, (int64_t[]){B, T, K, o.dk}, 2);
    if (st == STATUS_OK && o.ds) st = random_tensor(be, &ks, dt, 3, (int64_t[]){B, T, o.ds}, 3);
    if (st == STATUS_OK) st = random_tensor(be, &v, dt, 4, (int64_t[]){B, T, K, dv}, 4);
    if (st == STATUS_OK) st = random_tensor(be, &dout, dt, 4, (int64_t[]){B, T, H, dv}, 5);
    if (st == STATUS_OK) st = be->alloc(be, &out, dt, 4, (int64_t[]){B, T, H, dv});
    if (st == STATUS_OK) st = be->alloc(be, &lse, DT_F32, 3, (int64_t[]){B, H, T});
    if (st == STATUS_OK) st = be->alloc(be, &dqt, dt, 4, (int64_t[]){B, T, H, dq});
    if (st == STATUS_OK) st = be->alloc(be, &dk, dt, 4, (int64_t[]){B, T, K, o.dk});
    if (st == STATUS_OK && o.ds) st = be->alloc(be, &dks, dt, 3, (int64_t[]){B, T, o.ds});
    if (st == STATUS_OK) st = be->alloc(be, &dvt, dt, 4, (int64_t[]){B, T, K, dv});
    const Tensor kst = o.ds ? ks : tensor_none(), dkst = o.ds ? dks : tensor_none();
    const float scale = 1.0f / sqrtf((float)dq);
    const double pairs = (double)B * (double)H * (double)T * (double)(T + 1) / 2.0;
    const double flops[2] = {2.0 * pairs * (double)(dq + dv), 2.0 * pairs * (double)(3 * dq + 2 * dv)};
    const char *names[2] = {"forward", "backward"};
    for (int pass = 0; st == STATUS_OK && pass < 2; pass++) {
        double best = INFINITY;
        for (int64_t r = 0; st == STATUS_OK && r <= o.reps; r++) {
            if (pass == 1) st = be->ops.attention_forward(be, out, lse, q, k, kst, v, scale);
            if (st == STATUS_OK) st = be->synchronize(be);
            const double t0 = monotonic_seconds();
            if (st == STATUS_OK && pass == 0) st = be->ops.attention_forward(be, out, lse, q, k, kst, v, scale);
            if (st == STATUS_OK && pass == 1)
                st = be->ops.attention_backward(be, dqt, dk, dkst, dvt, dout, out, lse, q, k, kst, v, scale);
            if (st == STATUS_OK) st = be->synchronize(be);
            const double t = monotonic_seconds() - t0;
            if (r > 0 && t < best) best = t; /* the first call warms up */
        }
        if (st != STATUS_OK) break;
        printf("{\"impl\": \"mlatrain %s\", \"label\": \"%s\", \"pass\": \"%s\", \"dtype\": \"%s\", \"batch\": %lld, "
               "\"tokens\": %lld, \"heads\": %lld, \"kv_heads\": %lld, \"dq\": %lld, \"dv\": %lld, \"ms\": %.3f, "
               "\"tflops\": %.3f}\n",
               o.device, o.label, names[pass], dtype_name(dt), (long long)B, (long long)T, (long long)H, (long long)K,
               (long long)dq, (long long)dv, best * 1e3, flops[pass] / best * 1e-12);
        fflush(stdout);
    }
    if (st != STATUS_OK) fprintf(stderr, "bench_attention: %s\n", error_message());
    Tensor *all[] = {&q, &k, &ks, &v, &out, &lse, &dout, &dqt, &dk, &dks, &dvt};
    for (size_t i = 0; be && i < sizeof all / sizeof all[0]; i++)
        if (tensor_present(*all[i])) be->release(be, all[i]);
    backend_destroy(be);
    return st == STATUS_OK ? 0 : 1;
}
