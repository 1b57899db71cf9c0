/* Every op of the CUDA backend, forward and backward, against the CPU backend on the same random
 * inputs at awkward sizes, with f32 and then bf16 storage; outputs poisoned with NaN before each
 * call, two runs bitwise equal, and the CPU's argument errors. Reports "skipped: no CUDA device"
 * where there is none. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

static Backend *gpu, *cpu;
/* The storage dtype under test (activations, weights, activation gradients); statistics and
 * parameter gradients are f32 in both modes. */
static DType storage = DT_F32;

/* bf16 mode: both backends compute in f32 from the same bf16 inputs and round each output once, so
 * they differ where a float32 summation order flips a rounding (one bf16 ulp, 2^-8 relative, in
 * a few elements), and the loss's logits gradient is rounded to bf16 on the GPU before its two
 * products: about 1e-3, so the bf16 tolerance of 1e-2. */
static double tolerance(double f32_tol) { return storage == DT_BF16 && f32_tol < 1e-2 ? 1e-2 : f32_tol; }

/* One tensor on both backends, and a host copy of its initial contents. */
typedef struct {
    Tensor c, g;
    float *init;
    int64_t n;
} Pair;

static uint64_t next_stream = 100;

static Pair pair_new(DType dt, int ndim, const int64_t *shape) {
    Pair p;
    CHECK_OK(cpu->alloc(cpu, &p.c, dt, ndim, shape));
    CHECK_OK(gpu->alloc(gpu, &p.g, dt, ndim, shape));
    p.n = tensor_numel(p.c);
    p.init = test_alloc((size_t)(p.n > 0 ? p.n : 1) * 4);
    return p;
}

/* Both copies set from float32 values (rounded to nearest even when bf16). */
static void pair_set(Pair *p, const float *values) {
    CHECK_OK(backend_upload_f32(cpu, p->c, values));
    CHECK_OK(backend_upload_f32(gpu, p->g, values));
}

/* Random normal contents, the same on both backends, of dtype dt. */
static Pair pair_normal_as(DType dt, int ndim, const int64_t *shape, float std) {
    Pair p = pair_new(dt, ndim, shape);
    fill_normal(p.init, p.n, next_stream++, std);
    pair_set(&p, p.init);
    return p;
}

/* A storage tensor (the mode's dtype) and an f32-only one (parameter gradients, rope tables). */
static Pair pair_normal(int ndim, const int64_t *shape, float std) { return pair_normal_as(storage, ndim, shape, std); }
static Pair pair_normal_f32(int ndim, const int64_t *shape, float std) {
    return pair_normal_as(DT_F32, ndim, shape, std);
}

static Pair pair_ids(int64_t n, const int32_t *ids) {
    Pair p = pair_new(DT_I32, 1, &n);
    memcpy(p.init, ids, (size_t)n * 4);
    memcpy(p.c.data, ids, (size_t)n * 4);
    CHECK_OK(gpu->upload(gpu, p.g, ids));
    return p;
}

/* Both copies back to the initial contents (accumulated gradients start from them each run). */
static void pair_reset(Pair *p) { pair_set(p, p->init); }

/* NaN in every element of both copies, so an element an op leaves unwritten fails the comparison. */
static void pair_poison(Pair *p) {
    float *nan = test_alloc((size_t)(p->n > 0 ? p->n : 1) * 4);
    for (int64_t i = 0; i < p->n; i++) nan[i] = NAN;
    pair_set(p, nan);
    free(nan);
}

static void pair_free(Pair *p) {
    cpu->release(cpu, &p->c);
    gpu->release(gpu, &p->g);
    free(p->init);
}

/* TEST_GPU_OPS_VERBOSE=1 prints every comparison's error, to see the margins. */
static int verbose;

/* On the first run: the GPU's output against the CPU's, ||gpu - cpu|| / ||cpu|| < tol (NaN fails),
 * and its bits kept in *first. On the second: bitwise equal to the first. */
static void compare(const char *what, Pair *p, double f32_tol, float **first) {
    const double tol = tolerance(f32_tol);
    const char *mode = dtype_name(storage);
    float *out = test_alloc((size_t)(p->n > 0 ? p->n : 1) * 4);
    CHECK_OK(backend_download_f32(gpu, out, p->g));
    if (*first == NULL) {
        float *ref = test_alloc((size_t)(p->n > 0 ? p->n : 1) * 4);
        CHECK_OK(backend_download_f32(cpu, ref, p->c));
        double err = p->n ? rel_error_f32(out, ref, p->n) : 0.0;
        if (verbose) printf("%s [%s storage]: rel error %.3g\n", what, mode, err);
        CHECK(err < tol, "%s [%s storage]: gpu vs cpu rel error %.3g (tolerance %.0e)", what, mode, err, tol);
        free(ref);
        *first = out;
    } else {
        CHECK(memcmp(out, *first, (size_t)p->n * 4) == 0, "%s [%s storage]: two runs give the same bits", what, mode);
        free(out);
    }
}

static void free_snapshots(float **snap, int n) {
    for (int i = 0; i < n; i++) {
        free(snap[i]);
        snap[i] = NULL;
    }
}

static int32_t *random_ids(int64_t n, int64_t limit, uint64_t stream) {
    float *u = test_alloc((size_t)n * 4);
    int32_t *ids = test_alloc((size_t)(n > 0 ? n : 1) * 4);
    fill_normal(u, n, stream, 1.0f);
    for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)((uint32_t)(fabsf(u[i]) * 1e6f) % (uint32_t)limit);
    free(u);
    return ids;
}

/* Embedding: N > V, so ids repeat and the backward sums several rows into one. Both directions
 * move values without rounding (the backward adds in token order, as the CPU does): exact. */
static void test_embedding(int64_t V, int64_t D, int64_t N) {
    int32_t *ids_h = random_ids(N, V, next_stream++);
    Pair ids = pair_ids(N, ids_h), table = pair_normal(2, (int64_t[]){V, D}, 1.0f);
    Pair out = pair_new(storage, 2, (int64_t[]){N, D}), dout = pair_normal(2, (int64_t[]){N, D}, 1.0f);
    Pair dtable = pair_normal_f32(2, (int64_t[]){V, D}, 1.0f);
    float *snap[2] = {0};
    for (int run = 0; run < 2; run++) {
        pair_poison(&out);
        pair_reset(&dtable);
        CHECK_OK(gpu->ops.embedding_forward(gpu, out.g, ids.g, table.g));
        CHECK_OK(gpu->ops.embedding_backward(gpu, dtable.g, dout.g, ids.g));
        if (run == 0) {
            CHECK_OK(cpu->ops.embedding_forward(cpu, out.c, ids.c, table.c));
            CHECK_OK(cpu->ops.embedding_backward(cpu, dtable.c, dout.c, ids.c));
        }
        compare("embedding forward out", &out, 1e-7, &snap[0]);
        compare("embedding backward dtable", &dtable, 1e-7, &snap[1]);
    }
    free_snapshots(snap, 2);
    /* An id outside the vocabulary: the CPU's message, found on the device and reported at the next
     * synchronisation, naming the first op that met it; the queue is empty afterwards. */
    ids_h[N - 1] = (int32_t)V;
    CHECK_OK(gpu->upload(gpu, ids.g, ids_h));
    char needle[96];
    snprintf(needle, sizeof needle, "embedding_forward: ids[%lld] = %lld is outside the vocabulary",
             (long long)(N - 1), (long long)V);
    CHECK_OK(gpu->ops.embedding_forward(gpu, out.g, ids.g, table.g));
    CHECK_OK(gpu->ops.embedding_backward(gpu, dtable.g, dout.g, ids.g));
    CHECK_ERR(gpu->synchronize(gpu), needle);
    CHECK_OK(gpu->synchronize(gpu));
    snprintf(needle, sizeof needle, "embedding_backward: ids[%lld] = %lld is outside the vocabulary",
             (long long)(N - 1), (long long)V);
    CHECK_OK(gpu->ops.embedding_backward(gpu, dtable.g, dout.g, ids.g));
    float probe;
    CHECK_ERR(gpu->download(gpu, &probe, tensor_view(dtable.g.data, DT_F32, 1, (int64_t[]){1})), needle);
    /* A negative id, which the backward's sort sees by its low bits only, is skipped, not written. */
    ids_h[0] = -3;
    CHECK_OK(gpu->upload(gpu, ids.g, ids_h));
    CHECK_OK(gpu->ops.embedding_backward(gpu, dtable.g, dout.g, ids.g));
    CHECK_ERR(gpu->synchronize(gpu), "ids[0] = -3 is outside the vocabulary");
    free(ids_h);
    Pair *all[] = {&ids, &table, &out, &dout, &dtable};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(all[i]);
}

/* RMSNorm: row sums in double on both sides, so the rows agree to a few float32 roundings; dw's
 * partial sums run in different blocks (256 rows here, 1024 there): about 1e-7 relative, 1e-5 leaves
 * room for N in the thousands. */
/* More queued index checks than the queue holds: the ones before a bad index pass, the bad one is
 * reported exactly once (by the call that had to drain the queue, or by the final synchronize),
 * and the queue works again afterwards. Each call checks a one-id view, so no two are the same. */
static void test_index_check_queue(void) {
    const int64_t n = 600, V = 11, D = 3, bad = 450;
    Tensor ids, table, out;
    CHECK_OK(gpu->alloc(gpu, &ids, DT_I32, 1, &n));
    CHECK_OK(gpu->alloc(gpu, &table, DT_F32, 2, (int64_t[]){V, D}));
    CHECK_OK(gpu->alloc(gpu, &out, DT_F32, 2, (int64_t[]){n, D}));
    int32_t *h = test_alloc((size_t)n * sizeof(int32_t));
    for (int64_t i = 0; i < n; i++) h[i] = (int32_t)(i % V);
    h[bad] = (int32_t)(V + 4);
    CHECK_OK(gpu->upload(gpu, ids, h));
    int errors = 0;
    char needle[96];
    snprintf(needle, sizeof needle, "ids[0] = %lld is outside the vocabulary", (long long)(V + 4));
    for (int64_t i = 0; i < n; i++) {
        Tensor one = tensor_view(tensor_i32(ids) + i, DT_I32, 1, (int64_t[]){1});
        Tensor row = tensor_view((float *)out.data + i * D, DT_F32, 2, (int64_t[]){1, D});
        if (gpu->ops.embedding_forward(gpu, row, one, table) != STATUS_OK) {
            errors++;
            CHECK(strstr(error_message(), needle) != NULL, "queued check: %s", error_message());
            CHECK(i >= bad, "the fault is reported after it was queued (call %lld)", (long long)i);
            error_clear();
        }
    }
    if (gpu->synchronize(gpu) != STATUS_OK) {
        errors++;
        CHECK(strstr(error_message(), needle) != NULL, "queued check: %s", error_message());
        error_clear();
    }
    CHECK(errors == 1, "one bad id among %lld queued checks is reported once, got %d", (long long)n, errors);
    CHECK_OK(gpu->ops.embedding_forward(gpu, tensor_view(out.data, DT_F32, 2, (int64_t[]){1, D}),
                                        tensor_view(ids.data, DT_I32, 1, (int64_t[]){1}), table));
    CHECK_OK(gpu->synchronize(gpu));
    free(h);
    gpu->release(gpu, &ids);
    gpu->release(gpu, &table);
    gpu->release(gpu, &out);
}

static void test_rmsnorm(int64_t N, int64_t D) {
    Pair x = pair_normal(2, (int64_t[]){N, D}, 1.0f), w = pair_normal(1, (int64_t[]){D}, 1.0f);
    Pair y = pair_new(storage, 2, (int64_t[]){N, D}), rstd = pair_new(DT_F32, 1, (int64_t[]){N});
    Pair dy = pair_normal(2, (int64_t[]){N, D}, 1.0f), dx = pair_new(storage, 2, (int64_t[]){N, D});
    Pair dw = pair_normal_f32(1, (int64_t[]){D}, 1.0f);
    Tensor none = tensor_none();
    float *snap[5] = {0};
    for (int run = 0; run < 2; run++) {
        pair_poison(&y);
        pair_poison(&rstd);
        pair_poison(&dx);
        pair_reset(&dw);
        CHECK_OK(gpu->ops.rmsnorm_forward(gpu, y.g, rstd.g, x.g, w.g, 1e-5f));
        CHECK_OK(gpu->ops.rmsnorm_backward(gpu, dx.g, dw.g, dy.g, x.g, w.g, rstd.g));
        if (run == 0) {
            CHECK_OK(cpu->ops.rmsnorm_forward(cpu, y.c, rstd.c, x.c, w.c, 1e-5f));
            CHECK_OK(cpu->ops.rmsnorm_backward(cpu, dx.c, dw.c, dy.c, x.c, w.c, rstd.c));
        }
        compare("rmsnorm forward y", &y, 1e-5, &snap[0]);
        compare("rmsnorm forward rstd", &rstd, 1e-5, &snap[1]);
        compare("rmsnorm backward dx", &dx, 1e-5, &snap[2]);
        compare("rmsnorm backward dw", &dw, 1e-5, &snap[3]);
        /* with the residual branch's gradient added in the same pass */
        pair_poison(&dx);
        CHECK_OK(gpu->ops.rmsnorm_residual_backward(gpu, dx.g, none, dy.g, x.g, w.g, rstd.g, y.g));
        if (run == 0) CHECK_OK(cpu->ops.rmsnorm_residual_backward(cpu, dx.c, none, dy.c, x.c, w.c, rstd.c, y.c));
        compare("rmsnorm_residual_backward dx", &dx, 1e-5, &snap[4]);
    }
    free_snapshots(snap, 5);
    CHECK_ERR(gpu->ops.rmsnorm_forward(gpu, y.g, rstd.g, x.g, dy.g, 1e-5f), "rmsnorm_forward: w has shape");
    CHECK_ERR(gpu->ops.rmsnorm_residual_backward(gpu, dx.g, none, dy.g, x.g, w.g, rstd.g, dx.g),
              "dx and dres must be different memory");
    CHECK_ERR(gpu->ops.rmsnorm_residual_backward(gpu, dx.g, none, dy.g, x.g, w.g, rstd.g, none),
              "rmsnorm_residual_backward: dres must be present");
    Pair *all[] = {&x, &w, &y, &rstd, &dy, &dx, &dw};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(all[i]);
}

/* Linear: cuBLAS and OpenBLAS sum the In (or N) products in different orders, each within about
 * sqrt(K) * 6e-8 relative of the exact sum: under 1e-5 for K of a few hundred. */
static void test_linear(int64_t N, int64_t O, int64_t In, int bias, int want_dx) {
    Pair x = pair_normal(2, (int64_t[]){N, In}, 1.0f), w = pair_normal(2, (int64_t[]){O, In}, 0.3f);
    Pair b = pair_normal(1, (int64_t[]){O}, 1.0f), y = pair_new(storage, 2, (int64_t[]){N, O});
    Pair dy = pair_normal(2, (int64_t[]){N, O}, 1.0f), dx = pair_new(storage, 2, (int64_t[]){N, In});
    Pair dw = pair_normal_f32(2, (int64_t[]){O, In}, 1.0f), db = pair_normal_f32(1, (int64_t[]){O}, 1.0f);
    Tensor none = tensor_none();
    float *snap[4] = {0};
    for (int run = 0; run < 2; run++) {
        pair_poison(&y);
        pair_poison(&dx);
        pair_reset(&dw);
        pair_reset(&db);
        CHECK_OK(gpu->ops.linear_forward(gpu, y.g, x.g, w.g, bias ? b.g : none));
        CHECK_OK(gpu->ops.linear_backward(gpu, want_dx ? dx.g : none, dw.g, bias ? db.g : none, dy.g, x.g, w.g));
        if (run == 0) {
            CHECK_OK(cpu->ops.linear_forward(cpu, y.c, x.c, w.c, bias ? b.c : none));
            CHECK_OK(cpu->ops.linear_backward(cpu, want_dx ? dx.c : none, dw.c, bias ? db.c : none, dy.c, x.c, w.c));
        }
        compare("linear forward y", &y, 1e-5, &snap[0]);
        if (want_dx) compare("linear backward dx", &dx, 1e-5, &snap[1]);
        compare("linear backward dw", &dw, 1e-5, &snap[2]);
        if (bias) compare("linear backward db", &db, 1e-5, &snap[3]);
    }
    free_snapshots(snap, 4);
    CHECK_ERR(gpu->ops.linear_forward(gpu, y.g, dy.g, w.g, none), "linear_forward: x has shape");
    Pair *all[] = {&x, &w, &b, &y, &dy, &dx, &dw, &db};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(all[i]);
}

/* RoPE: the same two products and a sum per element on both sides, up to the GPU contracting them
 * into a fused multiply-add: a rounding or two, 1e-6. */
/* The residual projection: the add in the product's epilogue (bf16: one rounding of the sum, as the
 * CPU's bf16 storage computes it). */
static void test_linear_residual(int64_t N, int64_t O, int64_t In) {
    Pair x = pair_normal(2, (int64_t[]){N, In}, 1.0f), w = pair_normal(2, (int64_t[]){O, In}, 0.3f);
    Pair r = pair_normal(2, (int64_t[]){N, O}, 1.0f), y = pair_new(storage, 2, (int64_t[]){N, O});
    float *snap[1] = {0};
    for (int run = 0; run < 2; run++) {
        pair_poison(&y);
        CHECK_OK(gpu->ops.linear_residual_forward(gpu, y.g, x.g, w.g, r.g));
        if (run == 0) CHECK_OK(cpu->ops.linear_residual_forward(cpu, y.c, x.c, w.c, r.c));
        compare("linear_residual_forward y", &y, 1e-5, &snap[0]);
    }
    free_snapshots(snap, 1);
    CHECK_ERR(gpu->ops.linear_residual_forward(gpu, r.g, x.g, w.g, r.g), "y and r must be different memory");
    CHECK_ERR(gpu->ops.linear_residual_forward(gpu, y.g, x.g, w.g, x.g), "linear_residual_forward: r has shape");
    Pair *all[] = {&x, &w, &r, &y};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(all[i]);
}

static void test_rope(int64_t N, int64_t H, int64_t S, int64_t offset, int64_t P, int64_t max_pos) {
    Pair x = pair_normal(3, (int64_t[]){N, H, S}, 1.0f), cs = pair_normal_f32(2, (int64_t[]){max_pos, P}, 1.0f);
    Pair sn = pair_normal_f32(2, (int64_t[]){max_pos, P}, 1.0f);
    int32_t *pos_h = random_ids(N, max_pos, next_stream++);
    Pair pos = pair_ids(N, pos_h);
    float *snap[2] = {0};
    for (int run = 0; run < 2; run++) {
        pair_reset(&x);
        CHECK_OK(gpu->ops.rope_forward(gpu, x.g, offset, cs.g, sn.g, pos.g));
        if (run == 0) CHECK_OK(cpu->ops.rope_forward(cpu, x.c, offset, cs.c, sn.c, pos.c));
        compare("rope forward", &x, 1e-6, &snap[0]);
        pair_reset(&x);
        CHECK_OK(gpu->ops.rope_backward(gpu, x.g, offset, cs.g, sn.g, pos.g));
        if (run == 0) CHECK_OK(cpu->ops.rope_backward(cpu, x.c, offset, cs.c, sn.c, pos.c));
        compare("rope backward", &x, 1e-6, &snap[1]);
    }
    free_snapshots(snap, 2);
    pos_h[0] = (int32_t)max_pos;
    CHECK_OK(gpu->upload(gpu, pos.g, pos_h));
    char needle[96];
    snprintf(needle, sizeof needle, "rope_forward: pos[0] = %lld is outside the tables' positions", (long long)max_pos);
    CHECK_OK(gpu->ops.rope_forward(gpu, x.g, offset, cs.g, sn.g, pos.g));
    CHECK_ERR(gpu->synchronize(gpu), needle);
    free(pos_h);
    Pair *all[] = {&x, &cs, &sn, &pos};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(all[i]);
}

/* SwiGLU: the CPU's polynomial exp and CUDA's expf are each within 2 ulp: 1e-6. */
static void test_swiglu(int64_t N, int64_t F) {
    Pair gate = pair_normal(2, (int64_t[]){N, F}, 3.0f), up = pair_normal(2, (int64_t[]){N, F}, 1.0f);
    Pair out = pair_new(storage, 2, (int64_t[]){N, F}), dout = pair_normal(2, (int64_t[]){N, F}, 1.0f);
    Pair dgate = pair_new(storage, 2, (int64_t[]){N, F}), dup = pair_new(storage, 2, (int64_t[]){N, F});
    float *snap[3] = {0};
    for (int run = 0; run < 2; run++) {
        pair_poison(&out);
        pair_poison(&dgate);
        pair_poison(&dup);
        CHECK_OK(gpu->ops.swiglu_forward(gpu, out.g, gate.g, up.g));
        CHECK_OK(gpu->ops.swiglu_backward(gpu, dgate.g, dup.g, dout.g, gate.g, up.g));
        if (run == 0) {
            CHECK_OK(cpu->ops.swiglu_forward(cpu, out.c, gate.c, up.c));
            CHECK_OK(cpu->ops.swiglu_backward(cpu, dgate.c, dup.c, dout.c, gate.c, up.c));
        }
        compare("swiglu forward", &out, 1e-6, &snap[0]);
        compare("swiglu backward dgate", &dgate, 1e-6, &snap[1]);
        compare("swiglu backward dup", &dup, 1e-6, &snap[2]);
    }
    free_snapshots(snap, 3);
    Pair *all[] = {&gate, &up, &out, &dout, &dgate, &dup};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(all[i]);
}

/* Attention. Forward: an online softmax over key tiles against the CPU's exact row max, sums in other
 * orders: a few float32 roundings per output, 1e-5. Backward: the score gradient P (dP - delta)
 * subtracts nearly equal numbers, which magnifies the roundoff of sums taken in other orders: 1e-4
 * for dq, dk, dk_shared (dv = P^T dout carries no cancellation: 1e-5). want: bit 0 dq, 1 dk,
 * 2 dk_shared, 3 dv. */
static void test_attention(int64_t B, int64_t T, int64_t H, int64_t Hk, int64_t Dk, int64_t Ds, int64_t Dv,
                           int want) {
    const int64_t Dq = Dk + Ds;
    const float scale = 1.0f / sqrtf((float)(Dq > 0 ? Dq : 1));
    Pair q = pair_normal(4, (int64_t[]){B, T, H, Dq}, 1.0f), k = pair_normal(4, (int64_t[]){B, T, Hk, Dk}, 1.0f);
    Pair ks = pair_normal(3, (int64_t[]){B, T, Ds}, 1.0f), v = pair_normal(4, (int64_t[]){B, T, Hk, Dv}, 1.0f);
    Pair out = pair_new(storage, 4, (int64_t[]){B, T, H, Dv}), lse = pair_new(DT_F32, 3, (int64_t[]){B, H, T});
    Pair dout = pair_normal(4, (int64_t[]){B, T, H, Dv}, 1.0f);
    Pair dq = pair_new(storage, 4, (int64_t[]){B, T, H, Dq}), dk = pair_new(storage, 4, (int64_t[]){B, T, Hk, Dk});
    Pair dks = pair_new(storage, 3, (int64_t[]){B, T, Ds}), dv = pair_new(storage, 4, (int64_t[]){B, T, Hk, Dv});
    Tensor none = tensor_none();
    Tensor ks_c = Ds ? ks.c : none, ks_g = Ds ? ks.g : none;
    float *snap[6] = {0};
    char what[128];
    for (int run = 0; run < 2; run++) {
        Pair *outs[] = {&out, &lse, &dq, &dk, &dks, &dv};
        for (int i = 0; i < 6; i++) pair_poison(outs[i]);
        CHECK_OK(gpu->ops.attention_forward(gpu, out.g, lse.g, q.g, k.g, ks_g, v.g, scale));
        CHECK_OK(gpu->ops.attention_backward(gpu, want & 1 ? dq.g : none, want & 2 ? dk.g : none,
                                             Ds && (want & 4) ? dks.g : none, want & 8 ? dv.g : none, dout.g, out.g,
                                             lse.g, q.g, k.g, ks_g, v.g, scale));
        if (run == 0) {
            CHECK_OK(cpu->ops.attention_forward(cpu, out.c, lse.c, q.c, k.c, ks_c, v.c, scale));
            CHECK_OK(cpu->ops.attention_backward(cpu, want & 1 ? dq.c : none, want & 2 ? dk.c : none,
                                                 Ds && (want & 4) ? dks.c : none, want & 8 ? dv.c : none, dout.c,
                                                 out.c, lse.c, q.c, k.c, ks_c, v.c, scale));
        }
        const char *names[] = {"out", "lse", "dq", "dk", "dk_shared", "dv"};
        const double tols[] = {1e-5, 1e-5, 1e-4, 1e-4, 1e-4, 1e-5};
        const int wanted[] = {1, 1, want & 1, want & 2, Ds && (want & 4), want & 8};
        for (int i = 0; i < 6; i++) {
            if (!wanted[i]) continue;
            snprintf(what, sizeof what, "attention B=%lld T=%lld H=%lld Hk=%lld Dk=%lld Ds=%lld Dv=%lld: %s",
                     (long long)B, (long long)T, (long long)H, (long long)Hk, (long long)Dk, (long long)Ds,
                     (long long)Dv, names[i]);
            compare(what, outs[i], tols[i], &snap[i]);
        }
    }
    free_snapshots(snap, 6);
    CHECK_ERR(gpu->ops.attention_forward(gpu, out.g, lse.g, q.g, k.g, ks_g, v.g, NAN), "scale is nan");
    Pair *all[] = {&q, &k, &ks, &v, &out, &lse, &dout, &dq, &dk, &dks, &dv};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(all[i]);
}

/* A top-k teacher from the teacher's f32 values (host, float64): log-softmax(zt / T) at the k most
 * likely ids in decreasing order, as a cache holds them; [N, k] each. */
static void topk_from_teacher(const float *ht, const float *wt, int64_t N, int64_t Dt, int64_t V, float T, int64_t k,
                              float *logprobs, int32_t *ids) {
    double *lt = test_alloc((size_t)V * sizeof(double));
    int32_t *order = test_alloc((size_t)V * sizeof(int32_t));
    for (int64_t n = 0; n < N; n++) {
        double m = -INFINITY, sum = 0;
        for (int64_t v = 0; v < V; v++) {
            lt[v] = 0;
            for (int64_t d = 0; d < Dt; d++) lt[v] += (double)wt[v * Dt + d] * ht[n * Dt + d];
            lt[v] /= T;
            m = fmax(m, lt[v]);
        }
        for (int64_t v = 0; v < V; v++) sum += exp(lt[v] - m);
        for (int64_t v = 0; v < V; v++) {
            lt[v] -= m + log(sum);
            int64_t j = v;
            while (j > 0 && lt[order[j - 1]] < lt[v]) order[j] = order[j - 1], j--;
            order[j] = (int32_t)v;
        }
        for (int64_t i = 0; i < k; i++) ids[n * k + i] = order[i], logprobs[n * k + i] = (float)lt[order[i]];
    }
    free(lt), free(order);
}

/* The fused LM-head loss, with the teacher's weights (k = 0) or its top-k (k > 0), for the
 * divergence `kind`. The logits come from different matrix products (1e-6 relative), and softmax,
 * log-sum-exp and the divergence sum over V in other orders; the divergence of two random
 * distributions is a sum of terms of both signs, which doubles that roundoff: 1e-5 for the sums. The
 * gradient (p_s - p_t, p - onehot, and the like) subtracts probabilities of like size, so a few of
 * its elements lose digits: 1e-4 for dh and dw. The count is exact; top-1 agreement may differ only
 * where two logits tie within roundoff. */
static void test_lm_head_loss(int64_t N, int64_t D, int64_t V, int64_t Dt, int64_t chunk, float temperature,
                              int ignore_every, LossKind kind, float beta, int64_t k) {
    Pair h = pair_normal(2, (int64_t[]){N, D}, 1.0f), w = pair_normal(2, (int64_t[]){V, D}, 0.5f);
    Pair ht = {0}, wt = {0}, lp = {0}, ids = {0};
    if (Dt) {
        ht = pair_normal(2, (int64_t[]){N, Dt}, 1.0f);
        wt = pair_normal(2, (int64_t[]){V, Dt}, 0.5f);
    }
    int32_t *ids_h = NULL;
    if (k) {
        lp = pair_new(DT_F32, 2, (int64_t[]){N, k});
        ids_h = test_alloc((size_t)(N * k) * sizeof(int32_t));
        topk_from_teacher(ht.init, wt.init, N, Dt, V, temperature, k, lp.init, ids_h);
        pair_set(&lp, lp.init);
        ids = pair_new(DT_I32, 2, (int64_t[]){N, k});
        memcpy(ids.init, ids_h, (size_t)(N * k) * 4);
        memcpy(ids.c.data, ids_h, (size_t)(N * k) * 4);
        CHECK_OK(gpu->upload(gpu, ids.g, ids_h));
    }
    int32_t *tg_h = random_ids(N, V, next_stream++);
    for (int64_t n = 0; ignore_every && n < N; n += ignore_every) tg_h[n] = -100;
    Pair tg = pair_ids(N, tg_h);
    Pair dh = pair_new(storage, 2, (int64_t[]){N, D}), dw = pair_normal_f32(2, (int64_t[]){V, D}, 1.0f);
    Tensor none = tensor_none();
    LossConfig cfg = {.kl_weight = 0.7f, .ce_weight = 0.3f, .temperature = temperature, .ignore_index = -100,
                      .chunk_tokens = chunk, .kind = kind, .jsd_beta = beta};
    const float grad_scale = 1.0f / (float)N;
    char what[96];
    snprintf(what, sizeof what, "lm_head_loss%s [%s, %s]", k ? "_topk" : "", loss_kind_name(kind),
             dtype_name(storage));
#define RUN_LOSS(be, side, sums, c)                                                                              \
    (k ? be->ops.lm_head_loss_topk(be, sums, dh.side, dw.side, h.side, w.side, lp.side, ids.side, tg.side, c,   \
                                   grad_scale)                                                                   \
       : be->ops.lm_head_loss(be, sums, dh.side, dw.side, h.side, w.side, Dt ? ht.side : none,                   \
                              Dt ? wt.side : none, tg.side, c, grad_scale))
    LossSums first = {0}, sc = {0};
    float *snap[2] = {0};
    for (int run = 0; run < 2; run++) {
        pair_poison(&dh);
        pair_reset(&dw);
        LossSums sg = {0};
        CHECK_OK(RUN_LOSS(gpu, g, &sg, cfg));
        if (run == 0) {
            CHECK_OK(RUN_LOSS(cpu, c, &sc, cfg));
            first = sg;
            /* The logits are f32 products of the same (possibly bf16) inputs in both modes. */
            const double st = 1e-5;
            CHECK(fabs(sg.loss - sc.loss) <= st * fabs(sc.loss), "%s loss gpu %.9g cpu %.9g", what, sg.loss, sc.loss);
            CHECK(fabs(sg.ce - sc.ce) <= st * fabs(sc.ce), "%s ce gpu %.9g cpu %.9g", what, sg.ce, sc.ce);
            CHECK(fabs(sg.kl - sc.kl) <= st * fabs(sc.kl), "%s kl gpu %.9g cpu %.9g", what, sg.kl, sc.kl);
            CHECK(sg.counted == sc.counted, "%s counted gpu %lld cpu %lld", what, (long long)sg.counted,
                  (long long)sc.counted);
            CHECK(llabs(sg.top1_agree - sc.top1_agree) <= 1, "%s top1_agree gpu %lld cpu %lld", what,
                  (long long)sg.top1_agree, (long long)sc.top1_agree);
        } else {
            CHECK(memcmp(&sg, &first, sizeof sg) == 0, "%s sums: two runs give the same bits", what);
        }
        compare("lm_head_loss dh", &dh, 1e-4, &snap[0]);
        compare("lm_head_loss dw", &dw, 1e-4, &snap[1]);
    }
    free_snapshots(snap, 2);

    /* Errors: a target outside the vocabulary; an ignored token whose hidden state is NaN. */
    LossSums s = {0};
    int32_t keep = tg_h[N - 1];
    tg_h[N - 1] = (int32_t)V;
    CHECK_OK(gpu->upload(gpu, tg.g, tg_h));
    CHECK_ERR(RUN_LOSS(gpu, g, &s, cfg), "is outside the vocabulary");
    tg_h[N - 1] = -100;
    CHECK_OK(gpu->upload(gpu, tg.g, tg_h));
    float *hn = test_alloc((size_t)(N * D) * 4);
    memcpy(hn, h.init, (size_t)(N * D) * 4);
    hn[(N - 1) * D] = NAN;
    CHECK_OK(backend_upload_f32(gpu, h.g, hn));
    char needle[128];
    snprintf(needle, sizeof needle, "the hidden state of token %lld (ignored) is not finite", (long long)(N - 1));
    CHECK_ERR(RUN_LOSS(gpu, g, &s, cfg), needle);
    tg_h[N - 1] = keep;
    CHECK_OK(gpu->upload(gpu, tg.g, tg_h));
    snprintf(needle, sizeof needle, "the student logits of token %lld are not finite", (long long)(N - 1));
    CHECK_ERR(RUN_LOSS(gpu, g, &s, cfg), needle);
    CHECK_OK(backend_upload_f32(gpu, h.g, h.init));
    /* The configs and top-k teachers the CPU refuses, with its words. */
    LossConfig bad = cfg;
    bad.kind = (LossKind)7;
    CHECK_ERR(RUN_LOSS(gpu, g, &s, bad), "unknown loss kind 7");
    bad = cfg, bad.kind = LOSS_JSD, bad.jsd_beta = 1.0f;
    CHECK_ERR(RUN_LOSS(gpu, g, &s, bad), "jsd_beta must lie in (0, 1)");
    const int64_t last = N - 1;
    if (k >= 3 && tg_h[last] != -100) {
        const struct {
            int32_t id0, id1;
            float lp0;
            const char *fmt;
        } faults[] = {{(int32_t)V, ids_h[last * k + 1], lp.init[last * k], "token %lld (position 0) is outside the vocabulary"},
                      {ids_h[last * k], ids_h[last * k], lp.init[last * k], "token %lld lists id %d twice (positions 0 and 1)"},
                      {ids_h[last * k], ids_h[last * k + 1], NAN, "teacher_logprobs of token %lld (position 0) is nan"},
                      {ids_h[last * k], ids_h[last * k + 1], 0.5f, "teacher_logprobs of token %lld hold a probability mass"}};
        for (int f = 0; f < 4; f++) {
            int32_t *bad_ids = test_alloc((size_t)(N * k) * 4);
            float *bad_lp = test_alloc((size_t)(N * k) * 4);
            memcpy(bad_ids, ids_h, (size_t)(N * k) * 4);
            memcpy(bad_lp, lp.init, (size_t)(N * k) * 4);
            bad_ids[last * k] = faults[f].id0, bad_ids[last * k + 1] = faults[f].id1, bad_lp[last * k] = faults[f].lp0;
            CHECK_OK(gpu->upload(gpu, ids.g, bad_ids));
            CHECK_OK(gpu->upload(gpu, lp.g, bad_lp));
            snprintf(needle, sizeof needle, faults[f].fmt, (long long)last, faults[f].id0);
            CHECK_ERR(RUN_LOSS(gpu, g, &s, cfg), needle);
            free(bad_ids), free(bad_lp);
        }
        /* a duplicate far apart in the row (other threads' positions), the later one reported */
        int32_t *dup_ids = test_alloc((size_t)(N * k) * 4);
        memcpy(dup_ids, ids_h, (size_t)(N * k) * 4);
        dup_ids[last * k + k - 1] = dup_ids[last * k + k / 2];
        CHECK_OK(gpu->upload(gpu, ids.g, dup_ids));
        CHECK_OK(gpu->upload(gpu, lp.g, lp.init));
        snprintf(needle, sizeof needle, "token %lld lists id %d twice (positions %lld and %lld)", (long long)last,
                 dup_ids[last * k + k / 2], (long long)(k / 2), (long long)(k - 1));
        CHECK_ERR(RUN_LOSS(gpu, g, &s, cfg), needle);
        free(dup_ids);
        CHECK_OK(gpu->upload(gpu, ids.g, ids_h));
    }
    CHECK(s.counted == 0 && s.loss == 0, "%s: failed calls must leave the sums as they were", what);
    CHECK_OK(RUN_LOSS(gpu, g, &s, cfg));
#undef RUN_LOSS
    free(hn);
    free(tg_h);
    free(ids_h);
    Pair *all[] = {&h, &w, &tg, &dh, &dw};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pair_free(all[i]);
    if (Dt) {
        pair_free(&ht);
        pair_free(&wt);
    }
    if (k) {
        pair_free(&lp);
        pair_free(&ids);
    }
}

int main(void) {
    const char *v = getenv("TEST_GPU_OPS_VERBOSE");
    verbose = v && strcmp(v, "1") == 0;
    if (backend_cuda_device_count() == 0) {
        printf("skipped: no CUDA device\n");
        return TEST_SKIPPED;
    }
    cpu = test_cpu_backend(0);
    if (!CHECK_OK(backend_create(&gpu, "cuda", (BackendOptions){0, 0}))) return test_finish("test_gpu_ops");
    CHECK_OK(backend_check_ops(gpu));
    test_index_check_queue();

    /* Every op with f32 storage (tight tolerances), then with bf16 storage against the CPU's bf16. */
    for (int mode = 0; mode < 2; mode++) {
        storage = mode ? DT_BF16 : DT_F32;
        test_embedding(37, 19, 1);
        test_embedding(37, 300, 211);

        test_rmsnorm(1, 13);
        test_rmsnorm(67, 300);
        test_rmsnorm(600, 37);   /* three partial-sum blocks of the weight gradient */

        test_linear(1, 7, 5, 1, 1);
        test_linear(67, 33, 19, 1, 1);
        test_linear(300, 13, 70, 0, 0);
        test_linear_residual(1, 7, 5);
        test_linear_residual(67, 33, 19);

        test_rope(29, 3, 13, 3, 5, 40);   /* an MLA-like slice: dims [3, 13) of each head */
        test_rope(1, 1, 8, 0, 4, 1);

        test_swiglu(1, 7);
        test_swiglu(45, 133);

        /* B, T, H, Hk, Dk, Ds, Dv, gradients wanted (15: all) */
        test_attention(1, 1, 1, 1, 5, 0, 5, 15);      /* one token */
        test_attention(2, 45, 4, 2, 7, 0, 7, 15);     /* GQA, two heads per kv head, T over a tile */
        test_attention(1, 70, 4, 1, 6, 0, 9, 15);     /* four heads per kv head, Dv != Dk */
        test_attention(1, 33, 3, 3, 9, 0, 9, 15);     /* H = Hk */
        test_attention(2, 37, 3, 3, 5, 4, 7, 15);     /* MLA: k_shared, Dv != Dk + Ds */
        test_attention(1, 130, 4, 2, 16, 8, 12, 15);  /* MLA with grouped heads: dk_shared over two kv heads */
        test_attention(1, 33, 2, 2, 0, 6, 5, 15);     /* MLA without a per-head key part */
        test_attention(2, 37, 3, 3, 5, 4, 7, 4 | 8);  /* only dk_shared and dv wanted */
        test_attention(1, 50, 2, 1, 96, 64, 128, 15); /* 160-wide q/k, v 128 */
        test_attention(2, 70, 4, 4, 64, 32, 64, 15);  /* MLA as the 1B student: q/k 96 (64 + 32), v 64 */
        test_attention(1, 40, 2, 2, 128, 64, 128, 15); /* DeepSeek-V2's widths: q/k 192 (128 + 64), v 128 */
        test_attention(1, 70, 4, 2, 128, 0, 128, 15);  /* a head-128 GQA teacher */
        test_attention(1, 70, 2, 1, 32, 16, 200, 15); /* v 200: the tensor-core forward's widest register budget */

        /* N, D, V, Dt (0: no teacher), chunk tokens (0: default), temperature, ignore every n-th,
         * divergence, jsd beta, teacher top-k (0: the teacher's weights) */
        test_lm_head_loss(1, 11, 29, 13, 0, 2.0f, 0, LOSS_FORWARD_KL, 0, 0);
        test_lm_head_loss(70, 19, 301, 23, 16, 1.5f, 9, LOSS_FORWARD_KL, 0, 0);
        test_lm_head_loss(33, 21, 1000, 0, 0, 1.0f, 5, LOSS_FORWARD_KL, 0, 0);
        test_lm_head_loss(70, 19, 301, 23, 16, 1.5f, 9, LOSS_REVERSE_KL, 0, 0);
        test_lm_head_loss(45, 17, 263, 29, 0, 2.0f, 7, LOSS_JSD, 0.3f, 0);
        test_lm_head_loss(45, 17, 263, 29, 20, 2.0f, 7, LOSS_FORWARD_KL, 0, 40);
        test_lm_head_loss(45, 17, 263, 29, 0, 1.0f, 7, LOSS_REVERSE_KL, 0, 5);
        test_lm_head_loss(1, 11, 29, 13, 0, 2.0f, 0, LOSS_JSD, 0.7f, 29);      /* k = V: no tail */
        test_lm_head_loss(33, 21, 1000, 15, 8, 1.5f, 5, LOSS_JSD, 0.5f, 300); /* k wider than a block */
    }

    backend_destroy(gpu);
    backend_destroy(cpu);
    return test_finish("test_gpu_ops");
}
