/* What the fused LM head + loss costs per call for each divergence, for a top-k teacher against the
 * teacher's head, and for chunk sizes against the automatic one: one JSON line per case, each with
 * its time beside the first case's (forward KL, automatic chunks) from the same run.
 *
 *   bench_lm_head_loss [--device cpu|cuda] [--tokens N] [--hidden D] [--vocab V] [--k K]
 *                      [--chunks 0,209,...] [--reps R] [--bf16]
 *
 * Defaults: cpu, 512 tokens, SmolLM2-135M's head (D = 576, V = 49152), k = 64, chunks 0. On cuda,
 * bench_1b's head is --tokens 8192 --hidden 2048 --vocab 128256 --bf16, and --chunks 0,209 sets the
 * automatic chunk beside the fixed 256 MiB budget's 209 tokens. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "core/clock.h"
#include "core/rng.h"

typedef struct {
    const char *device;
    int64_t N, D, V, k, reps;
    int64_t chunks[8];
    int n_chunks, bf16;
} Options;

static int parse(int argc, char **argv, Options *o) {
    *o = (Options){.device = "cpu", .N = 512, .D = 576, .V = 49152, .k = 64, .reps = 3, .n_chunks = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--bf16")) { o->bf16 = 1; continue; }
        if (!v) { fprintf(stderr, "bench_lm_head_loss: %s needs a value\n", a); return 0; }
        i++;
        if (!strcmp(a, "--device")) o->device = v;
        else if (!strcmp(a, "--tokens")) o->N = atoll(v);
        else if (!strcmp(a, "--hidden")) o->D = atoll(v);
        else if (!strcmp(a, "--vocab")) o->V = atoll(v);
        else if (!strcmp(a, "--k")) o->k = atoll(v);
        else if (!strcmp(a, "--reps")) o->reps = atoll(v);
        else if (!strcmp(a, "--chunks")) {
            o->n_chunks = 0;
            for (char *s = (char *)v; *s && o->n_chunks < 8;) {
                o->chunks[o->n_chunks++] = strtoll(s, &s, 10);
                if (*s == ',') s++;
                else if (*s) { fprintf(stderr, "bench_lm_head_loss: bad --chunks %s\n", v); return 0; }
            }
        } else { fprintf(stderr, "bench_lm_head_loss: unknown option %s\n", a); return 0; }
    }
    if (o->N < 1 || o->D < 1 || o->V < 2 || o->k < 1 || o->k > o->V || o->reps < 1 || o->n_chunks < 1) {
        fprintf(stderr, "bench_lm_head_loss: sizes must be >= 1, k in [1, vocab], reps >= 1\n");
        return 0;
    }
    return 1;
}

/* A random tensor of dtype dt on be: normal values of the given std. */
static Status random_tensor(Backend *be, Tensor *t, DType dt, int64_t rows, int64_t cols, uint64_t seed, float std) {
    TRY(be->alloc(be, t, dt, 2, (int64_t[]){rows, cols}));
    float *x = malloc((size_t)(rows * cols) * sizeof(float));
    if (!x) return errorf("bench_lm_head_loss: out of memory");
    rng_fill_normal(x, rows * cols, seed, 0, 0.0f, std);
    Status st = backend_upload_f32(be, *t, x);
    free(x);
    return st;
}

/* The teacher's top-k at T = 1 from its logits, computed on the host in double: [N, k] each. */
static Status teacher_topk(Backend *be, Tensor ht, Tensor wt, int64_t k, Tensor *lp, Tensor *ids) {
    const int64_t N = ht.shape[0], D = ht.shape[1], V = wt.shape[0];
    float *h = malloc((size_t)(N * D) * 4), *w = malloc((size_t)(V * D) * 4), *out = malloc((size_t)(N * k) * 4);
    int32_t *top = malloc((size_t)(N * k) * 4);
    double *z = malloc((size_t)V * sizeof(double));
    Status st = h && w && out && top && z ? STATUS_OK : errorf("bench_lm_head_loss: out of memory");
    if (st == STATUS_OK) st = backend_download_f32(be, h, ht);
    if (st == STATUS_OK) st = backend_download_f32(be, w, wt);
    for (int64_t n = 0; st == STATUS_OK && n < N; n++) {
        double m = -INFINITY, s = 0;
        for (int64_t v = 0; v < V; v++) {
            double acc = 0;
            for (int64_t d = 0; d < D; d++) acc += (double)h[n * D + d] * w[v * D + d];
            z[v] = acc;
            m = fmax(m, acc);
        }
        for (int64_t v = 0; v < V; v++) s += exp(z[v] - m);
        /* k selections of the max: k is small next to V in every case timed here */
        for (int64_t i = 0; i < k; i++) {
            int64_t best = -1;
            for (int64_t v = 0; v < V; v++)
                if (z[v] > -INFINITY && (best < 0 || z[v] > z[best])) best = v;
            top[n * k + i] = (int32_t)best;
            out[n * k + i] = (float)(z[best] - m - log(s));
            z[best] = -INFINITY;
        }
    }
    if (st == STATUS_OK) st = be->alloc(be, lp, DT_F32, 2, (int64_t[]){N, k});
    if (st == STATUS_OK) st = be->alloc(be, ids, DT_I32, 2, (int64_t[]){N, k});
    if (st == STATUS_OK) st = be->upload(be, *lp, out);
    if (st == STATUS_OK) st = be->upload(be, *ids, top);
    free(h), free(w), free(out), free(top), free(z);
    return st;
}

typedef struct {
    const char *name;
    LossKind kind;
    float beta;
    int64_t k;   /* 0: the teacher's head; -1: the teacher's top-k at k = vocab */
} Case;

int main(int argc, char **argv) {
    Options o;
    if (!parse(argc, argv, &o)) return 2;
    Backend *be = NULL;
    Status st = backend_create(&be, o.device, (BackendOptions){0, 0});
    const DType dt = o.bf16 ? DT_BF16 : DT_F32;
    Tensor h = {0}, w = {0}, ht = {0}, wt = {0}, tg = {0}, dh = {0}, dw = {0}, lp = {0}, ids = {0};
    if (st == STATUS_OK) st = random_tensor(be, &h, dt, o.N, o.D, 1, 1.0f);
    if (st == STATUS_OK) st = random_tensor(be, &w, dt, o.V, o.D, 2, 2.0f / sqrtf((float)o.D));
    if (st == STATUS_OK) st = random_tensor(be, &ht, dt, o.N, o.D, 3, 1.0f);
    if (st == STATUS_OK) st = random_tensor(be, &wt, dt, o.V, o.D, 4, 2.0f / sqrtf((float)o.D));
    if (st == STATUS_OK) st = be->alloc(be, &dh, dt, 2, (int64_t[]){o.N, o.D});
    if (st == STATUS_OK) st = be->alloc(be, &dw, DT_F32, 2, (int64_t[]){o.V, o.D});
    if (st == STATUS_OK) st = be->alloc(be, &tg, DT_I32, 1, (int64_t[]){o.N});
    if (st == STATUS_OK) {
        int32_t *t = malloc((size_t)o.N * 4);
        if (!t) st = errorf("bench_lm_head_loss: out of memory");
        for (int64_t n = 0; t && n < o.N; n++) t[n] = (int32_t)((n * 7919) % o.V);
        if (st == STATUS_OK) st = be->upload(be, tg, t);
        free(t);
    }
    if (st == STATUS_OK) st = teacher_topk(be, ht, wt, o.k, &lp, &ids);
    const Case cases[] = {{"forward_kl", LOSS_FORWARD_KL, 0, 0}, {"reverse_kl", LOSS_REVERSE_KL, 0, 0},
                          {"jsd", LOSS_JSD, 0.5f, 0}, {"forward_kl topk", LOSS_FORWARD_KL, 0, 1},
                          {"reverse_kl topk", LOSS_REVERSE_KL, 0, 1}, {"jsd topk", LOSS_JSD, 0.5f, 1}};
    double base = 0;
    for (int c = 0; st == STATUS_OK && c < o.n_chunks; c++)
        for (size_t i = 0; st == STATUS_OK && i < sizeof cases / sizeof cases[0]; i++) {
            LossConfig cfg = {.kl_weight = 0.5f, .ce_weight = 0.5f, .temperature = 1.0f, .ignore_index = -100,
                              .chunk_tokens = o.chunks[c], .kind = cases[i].kind, .jsd_beta = cases[i].beta};
            double best = INFINITY;
            LossSums sums = {0};
            for (int64_t r = 0; st == STATUS_OK && r <= o.reps; r++) {
                double t0 = monotonic_seconds();
                sums = (LossSums){0};
                st = cases[i].k ? be->ops.lm_head_loss_topk(be, &sums, dh, dw, h, w, lp, ids, tg, cfg, 1.0f / (float)o.N)
                                : be->ops.lm_head_loss(be, &sums, dh, dw, h, w, ht, wt, tg, cfg, 1.0f / (float)o.N);
                if (st == STATUS_OK) st = be->synchronize(be);
                double t = monotonic_seconds() - t0;
                if (r > 0 && t < best) best = t; /* the first call warms up */
            }
            if (st != STATUS_OK) break;
            if (base == 0) base = best;
            printf("{\"device\": \"%s\", \"case\": \"%s\", \"tokens\": %lld, \"hidden\": %lld, \"vocab\": %lld, "
                   "\"k\": %lld, \"chunk_tokens\": %lld, \"ms\": %.3f, \"vs_first\": %.3f, \"loss\": %.6f}\n",
                   o.device, cases[i].name, (long long)o.N, (long long)o.D, (long long)o.V,
                   (long long)(cases[i].k ? o.k : 0), (long long)o.chunks[c], best * 1e3, best / base,
                   sums.loss / (double)sums.counted);
            fflush(stdout);
        }
    if (st != STATUS_OK) fprintf(stderr, "bench_lm_head_loss: %s\n", error_message());
    Tensor *all[] = {&h, &w, &ht, &wt, &tg, &dh, &dw, &lp, &ids};
    for (size_t i = 0; be && i < sizeof all / sizeof all[0]; i++)
        if (tensor_present(*all[i])) be->release(be, all[i]);
    backend_destroy(be);
    return st == STATUS_OK ? 0 : 1;
}
