/* Causal self-attention on the CPU for GQA and MLA alike, flash-attention style: each task takes a
 * block of query rows, forms its [rows x keys] scores with single-threaded sgemm, and the backward
 * pass recomputes the probabilities from the saved log-sum-exp. Scores exist one block at a time,
 * never as a T x T matrix per head. */
#include "cpu_ops.h"
#include "vector_math.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* Query rows per block: enough rows for sgemm to run near its peak on [rows x T] scores, few enough
 * that a block's scores stay in L2 and that B*H*(T/rows) forward tasks keep every thread busy. */
enum { ATTN_BLOCK_ROWS = 64 };

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

/* C[M, N] = alpha op(A) op(B) + beta C as ONE single-threaded sgemm (the caller is already inside a
 * parallel region; OpenBLAS runs one thread per call, cpu_blas_init), so a block's bits never depend on the thread
 * count. K = 0 is the empty sum. */
static void block_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t N, int64_t K, float alpha,
                       const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                       int64_t ldc) {
    if (M == 0 || N == 0) return;
    if (K == 0) {
        if (beta == 0.0f)
            for (int64_t i = 0; i < M; i++) memset(C + i * ldc, 0, (size_t)N * sizeof(float));
        return;
    }
    cblas_sgemm(CblasRowMajor, ta, tb, (int)M, (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C,
                (int)ldc);
}

/* kp[j, :] = [k[j, :Dk] ; k_shared[j, :Ds]] for j < n: each key row whole and contiguous ([n, Dk + Ds]),
 * so the scores of every head are one product. k rows are k_stride floats apart. */
static void pack_keys(float *restrict kp, const float *restrict k, int64_t k_stride, int64_t Dk,
                      const float *restrict ks, int64_t Ds, int64_t n) {
    for (int64_t j = 0; j < n; j++) {
        float *dst = kp + j * (Dk + Ds);
        memcpy(dst, k + j * k_stride, (size_t)Dk * sizeof(float));
        if (Ds) memcpy(dst + Dk, ks + j * Ds, (size_t)Ds * sizeof(float));
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
    const int64_t row_blocks = (T + ATTN_BLOCK_ROWS - 1) / ATTN_BLOCK_ROWS;
    const int64_t heads = dm.B * H, ntasks = heads * row_blocks;
    if (ntasks == 0) return STATUS_OK;

    /* Per thread: packed keys [T, Dq], one block's scores, then probabilities [rows, T]. */
    const int64_t kp_floats = round_up(T * Dq, ATTN_SCRATCH_ALIGN);
    const int64_t per_thread = kp_floats + round_up(ATTN_BLOCK_ROWS * T, ATTN_SCRATCH_ALIGN);
    const int nthreads = omp_get_max_threads();
    float *scratch;
    TRY(scratch_alloc(op, "per-thread scratch", &scratch, nthreads * per_thread));

    const float *qp = tensor_f32(q), *kp = tensor_f32(k), *vp = tensor_f32(v);
    const float *ksp = tensor_present(k_shared) ? tensor_f32(k_shared) : NULL;
    float *outp = tensor_f32(out), *lsep = tensor_f32(lse);

#pragma omp parallel num_threads(nthreads)
    {
        float *keys = scratch + (int64_t)omp_get_thread_num() * per_thread;
        float *s = keys + kp_floats;
        /* The last row blocks (the longest rows) come first, for an even finish under dynamic. */
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < ntasks; task++) {
            int64_t bh = task % heads, blk = row_blocks - 1 - task / heads;
            int64_t b = bh / H, h = bh % H, g = h / dm.group;
            int64_t i0 = blk * ATTN_BLOCK_ROWS;
            int64_t i1 = i0 + ATTN_BLOCK_ROWS < T ? i0 + ATTN_BLOCK_ROWS : T;
            /* Keys 0..i1-1 are all that rows i0..i1-1 see; s is [i1 - i0, i1]. */
            pack_keys(keys, kp + (b * T * Hk + g) * Dk, Hk * Dk, Dk, ksp ? ksp + b * T * Ds : NULL, Ds, i1);
            const float *qblk = qp + ((b * T + i0) * H + h) * Dq;      /* rows H * Dq apart */
            block_gemm(CblasNoTrans, CblasTrans, i1 - i0, i1, Dq, scale, qblk, H * Dq, keys, Dq, 0.0f, s, i1);
            float inv_l[ATTN_BLOCK_ROWS];
            for (int64_t i = i0; i < i1; i++) {
                float *row = s + (i - i0) * i1;
                const int64_t n = i + 1;
                /* The whole row's scores are at hand, so the max is exact: exp never overflows. */
                float m = row[0];
                for (int64_t j = 1; j < n; j++) m = row[j] > m ? row[j] : m;
                for (int64_t j = 0; j < n; j++) row[j] = cpu_expf(row[j] - m);
                const float l = cpu_sum(row, n);
                for (int64_t j = n; j < i1; j++) row[j] = 0;   /* the causal mask */
                inv_l[i - i0] = 1.0f / l;
                lsep[(b * H + h) * T + i] = m + logf(l);
            }
            /* out rows = P V / l: the unnormalised probabilities times the values, then scaled. */
            float *oblk = outp + ((b * T + i0) * H + h) * Dv;           /* rows H * Dv apart */
            block_gemm(CblasNoTrans, CblasNoTrans, i1 - i0, Dv, i1, 1.0f, s, i1,
                       vp + (b * T * Hk + g) * Dv, Hk * Dv, 0.0f, oblk, H * Dv);
            for (int64_t i = i0; i < i1; i++) {
                float *orow = oblk + (i - i0) * H * Dv;
                for (int64_t d = 0; d < Dv; d++) orow[d] *= inv_l[i - i0];
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
 * order, then query blocks in order, each block one sgemm). dk_shared sums over every head: each
 * task writes its own partial sum, and the partials are added afterwards in ascending g. */
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
    const int want_dkp = want_dk || want_dks;   /* the packed key gradient [T, Dq] */
    const int64_t ntasks = B * Hk;
    if (!(want_dq || want_dk || want_dv || want_dks) || ntasks == 0 || T == 0) return STATUS_OK;

    /* Per thread: packed keys [T, Dq] and their gradient, the values' gradient [T, Dv], and one
     * block's probabilities and score gradients [rows, T] each. */
    const int64_t kp_floats = round_up(T * Dq, ATTN_SCRATCH_ALIGN);
    const int64_t dkp_floats = want_dkp ? kp_floats : 0;
    const int64_t dv_floats = want_dv ? round_up(T * Dv, ATTN_SCRATCH_ALIGN) : 0;
    const int64_t block_floats = round_up(ATTN_BLOCK_ROWS * T, ATTN_SCRATCH_ALIGN);
    const int64_t per_thread = kp_floats + dkp_floats + dv_floats + 2 * block_floats;
    const int nthreads = omp_get_max_threads();
    float *scratch, *dks_partial = NULL;
    TRY(scratch_alloc(op, "per-thread scratch", &scratch, nthreads * per_thread));
    if (want_dks && scratch_alloc(op, "dk_shared partial sums", &dks_partial, ntasks * T * Ds) != STATUS_OK) {
        free(scratch);
        return STATUS_ERROR;
    }

    const float *qp = tensor_f32(q), *kp = tensor_f32(k), *vp = tensor_f32(v);
    const float *ksp = tensor_present(k_shared) ? tensor_f32(k_shared) : NULL;
    /* out is only shape-checked: D_i comes from dP */
    const float *doutp = tensor_f32(dout), *lsep = tensor_f32(lse);
    float *dqp = want_dq ? tensor_f32(dq) : NULL, *dkp = want_dk ? tensor_f32(dk) : NULL;
    float *dvp = want_dv ? tensor_f32(dv) : NULL;

#pragma omp parallel num_threads(nthreads)
    {
        float *keys = scratch + (int64_t)omp_get_thread_num() * per_thread;
        float *dkeys = keys + kp_floats;     /* [T, Dq] */
        float *dvals = dkeys + dkp_floats;   /* [T, Dv] */
        float *p = dvals + dv_floats;        /* [rows, i1] */
        float *ds = p + block_floats;        /* [rows, i1] */
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < ntasks; task++) {
            int64_t b = task / Hk, g = task % Hk;
            const float *vg = vp + (b * T * Hk + g) * Dv;      /* row j at vg + j * Hk * Dv */
            pack_keys(keys, kp + (b * T * Hk + g) * Dk, Hk * Dk, Dk, ksp ? ksp + b * T * Ds : NULL, Ds, T);
            if (want_dkp) memset(dkeys, 0, (size_t)(T * Dq) * sizeof(float));
            if (want_dv) memset(dvals, 0, (size_t)(T * Dv) * sizeof(float));

            for (int64_t h = g * dm.group; h < (g + 1) * dm.group; h++) {
                for (int64_t i0 = 0; i0 < T; i0 += ATTN_BLOCK_ROWS) {
                    const int64_t i1 = i0 + ATTN_BLOCK_ROWS < T ? i0 + ATTN_BLOCK_ROWS : T, rows = i1 - i0;
                    const int64_t first = (b * T + i0) * H + h;           /* the block's first row */
                    const float *qblk = qp + first * Dq, *doblk = doutp + first * Dv;
                    /* P from the scores as the forward pass formed them, normalised by the saved lse;
                     * dP = dout . v; dS = P * (dP - D_i) with D_i = sum_j P_j dP_j (= dout_i . out_i,
                     * but summed from the same dP, so that a row whose P is one-hot gets exactly zero
                     * score gradients); the scale of the scores folds in here once. */
                    block_gemm(CblasNoTrans, CblasTrans, rows, i1, Dq, scale, qblk, H * Dq, keys, Dq, 0.0f, p, i1);
                    block_gemm(CblasNoTrans, CblasTrans, rows, i1, Dv, 1.0f, doblk, H * Dv, vg, Hk * Dv, 0.0f,
                               ds, i1);
                    for (int64_t i = i0; i < i1; i++) {
                        float *prow = p + (i - i0) * i1, *dsrow = ds + (i - i0) * i1;
                        const float lse_i = lsep[(b * H + h) * T + i];
                        const int64_t n = i + 1;
                        for (int64_t j = 0; j < n; j++) prow[j] = cpu_expf(prow[j] - lse_i);
                        const float D_i = cpu_dot(prow, dsrow, n);
                        for (int64_t j = 0; j < n; j++) dsrow[j] = scale * prow[j] * (dsrow[j] - D_i);
                        for (int64_t j = n; j < i1; j++) prow[j] = dsrow[j] = 0;   /* the causal mask */
                    }
                    /* dq = dS K;  dK += dS^T q;  dV += P^T dout */
                    if (want_dq)
                        block_gemm(CblasNoTrans, CblasNoTrans, rows, Dq, i1, 1.0f, ds, i1, keys, Dq, 0.0f,
                                   dqp + first * Dq, H * Dq);
                    if (want_dkp)
                        block_gemm(CblasTrans, CblasNoTrans, i1, Dq, rows, 1.0f, ds, i1, qblk, H * Dq, 1.0f,
                                   dkeys, Dq);
                    if (want_dv)
                        block_gemm(CblasTrans, CblasNoTrans, i1, Dv, rows, 1.0f, p, i1, doblk, H * Dv, 1.0f,
                                   dvals, Dv);
                }
            }

            for (int64_t j = 0; j < T; j++) {
                if (want_dk) memcpy(dkp + ((b * T + j) * Hk + g) * Dk, dkeys + j * Dq, (size_t)Dk * sizeof(float));
                if (want_dks)
                    memcpy(dks_partial + (task * T + j) * Ds, dkeys + j * Dq + Dk, (size_t)Ds * sizeof(float));
                if (want_dv) memcpy(dvp + ((b * T + j) * Hk + g) * Dv, dvals + j * Dv, (size_t)Dv * sizeof(float));
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
                    for (int64_t g = 0; g < Hk; g++) sum += dks_partial[((b * Hk + g) * T + j) * Ds + d];
                    dksp[bj * Ds + d] = sum;
                }
            }
        }
    }
    free(dks_partial);
    free(scratch);
    return STATUS_OK;
}
