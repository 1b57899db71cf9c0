/* Causal self-attention on the CPU for GQA and MLA alike: a flash-attention style forward and
 * backward that recompute probabilities row by row from the saved log-sum-exp, never storing T x T. */
#include "cpu_ops.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* Query rows per forward task: rows are independent in the forward pass, so splitting each head
 * into row blocks keeps every thread busy even when B*H is smaller than the thread count. */
enum { ATTN_FORWARD_ROWS = 32 };

/* Scratch slots are rounded up to this many floats (a cache line), so that slots of different
 * threads never share a line. */
enum { ATTN_SCRATCH_ALIGN = 16 };

typedef struct {
    int64_t B, T, H, Hk, Dk, Ds, Dv;
    int64_t Dq;      /* query head width, Dk + Ds */
    int64_t group;   /* query heads per kv head, H / Hk */
} AttentionDims;

/* Reads the dims from q, k, k_shared, v and checks them against each other. */
static Status attention_dims(const char *op, AttentionDims *dims, Tensor q, Tensor k, Tensor k_shared,
                             Tensor v, float scale) {
    TRY(tensor_check(op, "q", q, DT_F32, 4, (int64_t[]){-1, -1, -1, -1}));
    int64_t B = q.shape[0], T = q.shape[1], H = q.shape[2];
    TRY(tensor_check(op, "k", k, DT_F32, 4, (int64_t[]){B, T, -1, -1}));
    int64_t Hk = k.shape[2], Dk = k.shape[3], Ds = 0;
    if (tensor_present(k_shared)) {
        TRY(tensor_check(op, "k_shared", k_shared, DT_F32, 3, (int64_t[]){B, T, -1}));
        Ds = k_shared.shape[2];
    }
    if (Hk < 1 || H % Hk != 0)
        return errorf("%s: q has %lld heads, not a multiple of the %lld kv heads of k", op, (long long)H,
                      (long long)Hk);
    if (q.shape[3] != Dk + Ds)
        return errorf("%s: q has head width %lld, expected Dk + Ds = %lld + %lld (k's width + k_shared's)",
                      op, (long long)q.shape[3], (long long)Dk, (long long)Ds);
    TRY(tensor_check(op, "v", v, DT_F32, 4, (int64_t[]){B, T, Hk, -1}));
    if (!isfinite(scale)) return errorf("%s: scale is %g, expected a finite number", op, (double)scale);
    *dims = (AttentionDims){.B = B, .T = T, .H = H, .Hk = Hk, .Dk = Dk, .Ds = Ds, .Dv = v.shape[3],
                            .Dq = Dk + Ds, .group = H / Hk};
    return STATUS_OK;
}

static int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

/* Scratch of n floats (n a multiple of ATTN_SCRATCH_ALIGN), on a cache line; never zero bytes, so
 * that NULL means out of memory. */
static Status scratch_alloc(const char *op, const char *what, float **out, int64_t n) {
    size_t bytes = (size_t)(n ? n : ATTN_SCRATCH_ALIGN) * sizeof(float);
    *out = aligned_alloc(64, bytes);
    if (!*out) return errorf("%s: out of memory for %zu bytes of %s", op, bytes, what);
    return STATUS_OK;
}

/* kt[d * ld + j] = [k[j, :Dk] ; k_shared[j, :Ds]][d] for j < n: the keys transposed, so that the score
 * and key-gradient loops run over j along contiguous memory. k rows are k_stride floats apart. */
static void transpose_keys(float *restrict kt, int64_t ld, const float *restrict k, int64_t k_stride,
                           int64_t Dk, const float *restrict ks, int64_t Ds, int64_t n) {
    for (int64_t j = 0; j < n; j++) {
        const float *krow = k + j * k_stride;
        for (int64_t d = 0; d < Dk; d++) kt[d * ld + j] = krow[d];
        if (Ds) {
            const float *ksrow = ks + j * Ds;
            for (int64_t d = 0; d < Ds; d++) kt[(Dk + d) * ld + j] = ksrow[d];
        }
    }
}

/* s[j .. j+width) of row_times_transposed, the partial sums held in registers; width is a
 * compile-time constant at every call, so the inner loop unrolls into vector operations. */
static inline void row_times_transposed_tile(float *restrict s, const float *restrict x,
                                             const float *restrict mt, int64_t ld, int64_t D, int64_t j,
                                             int width) {
    float acc[32] = {0};
    for (int64_t d = 0; d < D; d++) {
        float xd = x[d];
        const float *m = mt + d * ld + j;
        for (int l = 0; l < width; l++) acc[l] += xd * m[l];
    }
    for (int l = 0; l < width; l++) s[j + l] = acc[l];
}

/* s[j] = sum_d x[d] * mt[d * ld + j] for j < n, each sum taken over d in order. Columns go in tiles
 * of 32, then 8, then one: enough independent sums to hide the latency of the adds. Every path
 * adds the same products in the same order, so the bits depend neither on the tiling nor on the
 * thread count. */
static void row_times_transposed(float *restrict s, const float *restrict x, const float *restrict mt,
                                 int64_t ld, int64_t D, int64_t n) {
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) row_times_transposed_tile(s, x, mt, ld, D, j, 32);
    for (; j + 8 <= n; j += 8) row_times_transposed_tile(s, x, mt, ld, D, j, 8);
    for (; j < n; j++) row_times_transposed_tile(s, x, mt, ld, D, j, 1);
}

/* acc[d] += sum_j c[j] * rows[j * stride + d] for d < D, j < n, added in j order. Four rows per pass
 * over acc keep each acc[d] in a register for four updates, with the order of the adds unchanged. */
static void add_weighted_rows(float *restrict acc, const float *restrict c, const float *restrict rows,
                              int64_t stride, int64_t D, int64_t n) {
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
        const float *r0 = rows + j * stride, *r1 = r0 + stride, *r2 = r1 + stride, *r3 = r2 + stride;
        float c0 = c[j], c1 = c[j + 1], c2 = c[j + 2], c3 = c[j + 3];
        for (int64_t d = 0; d < D; d++) {
            float a = acc[d];
            a += c0 * r0[d];
            a += c1 * r1[d];
            a += c2 * r2[d];
            a += c3 * r3[d];
            acc[d] = a;
        }
    }
    for (; j < n; j++) {
        const float *r = rows + j * stride;
        float cj = c[j];
        for (int64_t d = 0; d < D; d++) acc[d] += cj * r[d];
    }
}

/* gt[d * ld + j] += x[d] * c[j] for d < D, j < n: a rank-one update of a transposed gradient. */
static void rank_one_transposed(float *restrict gt, int64_t ld, const float *restrict x,
                                const float *restrict c, int64_t D, int64_t n) {
    for (int64_t d = 0; d < D; d++) {
        float xd = x[d];
        float *g = gt + d * ld;
        for (int64_t j = 0; j < n; j++) g[j] += xd * c[j];
    }
}

Status cpu_attention_forward(Backend *be, Tensor out, Tensor lse, Tensor q, Tensor k, Tensor k_shared,
                             Tensor v, float scale) {
    const char *op = "attention_forward";
    AttentionDims dm;
    TRY(attention_dims(op, &dm, q, k, k_shared, v, scale));
    TRY(tensor_check(op, "out", out, DT_F32, 4, (int64_t[]){dm.B, dm.T, dm.H, dm.Dv}));
    TRY(tensor_check(op, "lse", lse, DT_F32, 3, (int64_t[]){dm.B, dm.H, dm.T}));
    const int64_t T = dm.T, H = dm.H, Hk = dm.Hk, Dk = dm.Dk, Ds = dm.Ds, Dv = dm.Dv, Dq = dm.Dq;
    const int64_t row_blocks = (T + ATTN_FORWARD_ROWS - 1) / ATTN_FORWARD_ROWS;
    const int64_t heads = dm.B * H, ntasks = heads * row_blocks;
    if (ntasks == 0) return STATUS_OK;

    /* Per thread: keys transposed [Dq, T], one row of scores [T], one output accumulator [Dv]. */
    const int64_t kt_floats = round_up(Dq * T, ATTN_SCRATCH_ALIGN);
    const int64_t per_thread = kt_floats + round_up(T, ATTN_SCRATCH_ALIGN) + round_up(Dv, ATTN_SCRATCH_ALIGN);
    const int nthreads = omp_get_max_threads();
    float *scratch;
    TRY(scratch_alloc(op, "per-thread scratch", &scratch, nthreads * per_thread));

    const float *qp = tensor_f32(q), *kp = tensor_f32(k), *vp = tensor_f32(v);
    const float *ksp = tensor_present(k_shared) ? tensor_f32(k_shared) : NULL;
    float *outp = tensor_f32(out), *lsep = tensor_f32(lse);

#pragma omp parallel num_threads(nthreads)
    {
        float *kt = scratch + (int64_t)omp_get_thread_num() * per_thread;
        float *s = kt + kt_floats;
        float *acc = s + round_up(T, ATTN_SCRATCH_ALIGN);
        /* The last row blocks (the longest rows) come first, for an even finish under dynamic. */
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < ntasks; task++) {
            int64_t bh = task % heads, blk = row_blocks - 1 - task / heads;
            int64_t b = bh / H, h = bh % H, g = h / dm.group;
            int64_t i0 = blk * ATTN_FORWARD_ROWS;
            int64_t i1 = i0 + ATTN_FORWARD_ROWS < T ? i0 + ATTN_FORWARD_ROWS : T;
            /* Keys 0..i1-1 are all that rows i0..i1-1 see; ld = i1 keeps them packed. */
            const int64_t ld = i1;
            transpose_keys(kt, ld, kp + (b * T * Hk + g) * Dk, Hk * Dk, Dk, ksp ? ksp + b * T * Ds : NULL,
                           Ds, i1);
            for (int64_t i = i0; i < i1; i++) {
                const int64_t n = i + 1;
                const float *qrow = qp + ((b * T + i) * H + h) * Dq;
                row_times_transposed(s, qrow, kt, ld, Dq, n);
                /* The whole row's scores are at hand, so the max is exact: exp never overflows. */
                float m = -INFINITY;
                for (int64_t j = 0; j < n; j++) s[j] *= scale;
                for (int64_t j = 0; j < n; j++) m = fmaxf(m, s[j]);
                float l = 0;
                for (int64_t j = 0; j < n; j++) {
                    s[j] = expf(s[j] - m);
                    l += s[j];
                }
                for (int64_t d = 0; d < Dv; d++) acc[d] = 0;
                add_weighted_rows(acc, s, vp + (b * T * Hk + g) * Dv, Hk * Dv, Dv, n);
                float inv_l = 1.0f / l;
                float *orow = outp + ((b * T + i) * H + h) * Dv;
                for (int64_t d = 0; d < Dv; d++) orow[d] = acc[d] * inv_l;
                lsep[(b * H + h) * T + i] = m + logf(l);
            }
        }
    }
    free(scratch);
    return STATUS_OK;
}

/* Gradients wanted: an absent dq, dk, dv or dk_shared is not computed. dk_shared may be given only
 * with k_shared (a gradient of an input that does not exist is a caller's mistake, not a request to
 * ignore); with k_shared and without dk_shared, the shared key's gradient is simply not wanted.
 *
 * Work is split into (b, kv head g) tasks. A task owns dk and dv of group g and dq of the heads that
 * read g, so each of those elements is summed by one thread in a fixed order (heads of the group in
 * order, then query rows in order). dk_shared sums over every head: each task writes its own partial
 * sum, and the partials are added afterwards in ascending g. */
Status cpu_attention_backward(Backend *be, Tensor dq, Tensor dk, Tensor dk_shared, Tensor dv, Tensor dout,
                              Tensor out, Tensor lse, Tensor q, Tensor k, Tensor k_shared, Tensor v,
                              float scale) {
    const char *op = "attention_backward";
    AttentionDims dm;
    TRY(attention_dims(op, &dm, q, k, k_shared, v, scale));
    const int64_t B = dm.B, T = dm.T, H = dm.H, Hk = dm.Hk, Dk = dm.Dk, Ds = dm.Ds, Dv = dm.Dv, Dq = dm.Dq;
    TRY(tensor_check(op, "dout", dout, DT_F32, 4, (int64_t[]){B, T, H, Dv}));
    TRY(tensor_check(op, "out", out, DT_F32, 4, (int64_t[]){B, T, H, Dv}));
    TRY(tensor_check(op, "lse", lse, DT_F32, 3, (int64_t[]){B, H, T}));
    if (tensor_present(dq)) TRY(tensor_check(op, "dq", dq, DT_F32, 4, (int64_t[]){B, T, H, Dq}));
    if (tensor_present(dk)) TRY(tensor_check(op, "dk", dk, DT_F32, 4, (int64_t[]){B, T, Hk, Dk}));
    if (tensor_present(dv)) TRY(tensor_check(op, "dv", dv, DT_F32, 4, (int64_t[]){B, T, Hk, Dv}));
    if (tensor_present(dk_shared)) {
        if (!tensor_present(k_shared))
            return errorf("%s: dk_shared is given but k_shared is absent (no shared key to differentiate)", op);
        TRY(tensor_check(op, "dk_shared", dk_shared, DT_F32, 3, (int64_t[]){B, T, Ds}));
    }
    const int want_dq = tensor_present(dq), want_dk = tensor_present(dk), want_dv = tensor_present(dv);
    const int want_dks = tensor_present(dk_shared) && Ds > 0;
    const int64_t ntasks = B * Hk;
    if (!(want_dq || want_dk || want_dv || want_dks) || ntasks == 0 || T == 0) return STATUS_OK;

    /* Per thread: keys transposed [Dq, T], values transposed [Dv, T], dk and dv transposed [Dk, T]
     * and [Dv, T], probabilities and score gradients of one row [T] each, a dq row [Dq]. */
    const int64_t tT = round_up(T, ATTN_SCRATCH_ALIGN);
    const int64_t kt_floats = Dq * tT, vt_floats = Dv * tT, dkt_floats = want_dk ? Dk * tT : 0,
                  dvt_floats = want_dv ? Dv * tT : 0;
    const int64_t per_thread = kt_floats + vt_floats + dkt_floats + dvt_floats + 2 * tT +
                               round_up(Dq, ATTN_SCRATCH_ALIGN);
    const int nthreads = omp_get_max_threads();
    float *scratch, *dks_partial = NULL;
    TRY(scratch_alloc(op, "per-thread scratch", &scratch, nthreads * per_thread));
    if (want_dks && scratch_alloc(op, "dk_shared partial sums", &dks_partial, ntasks * Ds * tT) != STATUS_OK) {
        free(scratch);
        return STATUS_ERROR;
    }

    const float *qp = tensor_f32(q), *kp = tensor_f32(k), *vp = tensor_f32(v);
    const float *ksp = tensor_present(k_shared) ? tensor_f32(k_shared) : NULL;
    const float *doutp = tensor_f32(dout), *outp = tensor_f32(out), *lsep = tensor_f32(lse);
    float *dqp = want_dq ? tensor_f32(dq) : NULL, *dkp = want_dk ? tensor_f32(dk) : NULL;
    float *dvp = want_dv ? tensor_f32(dv) : NULL;

#pragma omp parallel num_threads(nthreads)
    {
        float *kt = scratch + (int64_t)omp_get_thread_num() * per_thread;
        float *vt = kt + kt_floats;
        float *dkt = vt + vt_floats;
        float *dvt = dkt + dkt_floats;
        float *p = dvt + dvt_floats;
        float *ds = p + tT;
        float *dq_acc = ds + tT;
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < ntasks; task++) {
            int64_t b = task / Hk, g = task % Hk;
            const float *kg = kp + (b * T * Hk + g) * Dk;      /* row j at kg + j * Hk * Dk */
            const float *vg = vp + (b * T * Hk + g) * Dv;      /* row j at vg + j * Hk * Dv */
            const float *ksb = ksp ? ksp + b * T * Ds : NULL;  /* row j at ksb + j * Ds */
            float *dkst = want_dks ? dks_partial + task * Ds * tT : NULL;
            transpose_keys(kt, tT, kg, Hk * Dk, Dk, ksb, Ds, T);
            transpose_keys(vt, tT, vg, Hk * Dv, Dv, NULL, 0, T);
            if (want_dk) memset(dkt, 0, (size_t)dkt_floats * sizeof(float));
            if (want_dv) memset(dvt, 0, (size_t)dvt_floats * sizeof(float));
            if (want_dks) memset(dkst, 0, (size_t)(Ds * tT) * sizeof(float));

            for (int64_t h = g * dm.group; h < (g + 1) * dm.group; h++) {
                for (int64_t i = 0; i < T; i++) {
                    const int64_t n = i + 1;
                    const int64_t row = (b * T + i) * H + h;
                    const float *qrow = qp + row * Dq, *dorow = doutp + row * Dv, *orow = outp + row * Dv;
                    /* P from the scores as the forward pass formed them, normalised by the saved lse. */
                    row_times_transposed(p, qrow, kt, tT, Dq, n);
                    float lse_i = lsep[(b * H + h) * T + i];
                    for (int64_t j = 0; j < n; j++) p[j] = expf(p[j] * scale - lse_i);
                    /* dP = dout_i . v_j; dS = P * (dP - D_i), D_i = dout_i . out_i, which equals
                     * sum_j P_j dP_j; the scale of the scores folds in here once. */
                    row_times_transposed(ds, dorow, vt, tT, Dv, n);
                    float D_i = 0;
                    for (int64_t d = 0; d < Dv; d++) D_i += dorow[d] * orow[d];
                    for (int64_t j = 0; j < n; j++) ds[j] = scale * p[j] * (ds[j] - D_i);

                    if (want_dq) {
                        for (int64_t d = 0; d < Dq; d++) dq_acc[d] = 0;
                        add_weighted_rows(dq_acc, ds, kg, Hk * Dk, Dk, n);
                        if (Ds) add_weighted_rows(dq_acc + Dk, ds, ksb, Ds, Ds, n);
                        memcpy(dqp + row * Dq, dq_acc, (size_t)Dq * sizeof(float));
                    }
                    if (want_dk) rank_one_transposed(dkt, tT, qrow, ds, Dk, n);
                    if (want_dks) rank_one_transposed(dkst, tT, qrow + Dk, ds, Ds, n);
                    if (want_dv) rank_one_transposed(dvt, tT, dorow, p, Dv, n);
                }
            }

            for (int64_t j = 0; j < T; j++) {
                if (want_dk) {
                    float *dkrow = dkp + ((b * T + j) * Hk + g) * Dk;
                    for (int64_t d = 0; d < Dk; d++) dkrow[d] = dkt[d * tT + j];
                }
                if (want_dv) {
                    float *dvrow = dvp + ((b * T + j) * Hk + g) * Dv;
                    for (int64_t d = 0; d < Dv; d++) dvrow[d] = dvt[d * tT + j];
                }
            }
        }

        if (want_dks) {
            /* Partials added in ascending kv head: the same order for every thread count. */
            float *dksp = tensor_f32(dk_shared);
#pragma omp for schedule(static)
            for (int64_t bj = 0; bj < B * T; bj++) {
                int64_t b = bj / T, j = bj % T;
                for (int64_t d = 0; d < Ds; d++) {
                    float sum = 0;
                    for (int64_t g = 0; g < Hk; g++) sum += dks_partial[((b * Hk + g) * Ds + d) * tT + j];
                    dksp[bj * Ds + d] = sum;
                }
            }
        }
    }
    free(dks_partial);
    free(scratch);
    return STATUS_OK;
}
