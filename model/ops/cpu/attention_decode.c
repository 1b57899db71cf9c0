/* Decoding attention on the CPU: one token against the KV cache, split over the keys as
 * flash-decoding does: each task takes one kv head and a fixed-size chunk of cached tokens and
 * keeps, per query head of the group, the chunk's max score, its sum of exponentials and its
 * weighted values; the chunks are then combined in order. The heads of a group share the chunk's
 * keys, so its scores and weighted values are matrix products: absorbed MLA, whose every head
 * reads the one latent, runs them at H rows per product. The chunk size is fixed, so the result
 * does not depend on the thread count; and an absorbed MLA cache (one kv head) still spreads over
 * every thread. */
#include "cpu_ops.h"
#include "vector_math.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* Cached tokens per task: a chunk's keys (256 x 64 floats) stay in L2 while every head of the
 * group reads them. */
enum { DECODE_CHUNK = 256 };

/* C[M, N] = alpha A[M, K] op(B) + beta C, row-major, as one single-threaded sgemm (cpu_blas_init);
 * op(B) is B^T ([N, K] rows) or B ([K, N] rows). K = 0 is the empty sum. */
static void chunk_gemm(CBLAS_TRANSPOSE tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
                       const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    if (M == 0 || N == 0) return;
    if (K == 0) {
        if (beta == 0.0f)
            for (int64_t i = 0; i < M; i++) memset(C + i * ldc, 0, (size_t)N * sizeof *C);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, tb, (int)M, (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C,
                (int)ldc);
}

Status cpu_attention_decode(Backend *be, Tensor out, Tensor q, Tensor k, Tensor k_shared, Tensor v, float scale) {
    const char *op = "attention_decode";
    DecodeDims dm;
    TRY(attention_decode_check(out, q, k, k_shared, v, scale, DT_F32, &dm));
    const int64_t H = dm.H, n = dm.n, Hk = dm.Hk, Dk = dm.Dk, Ds = dm.Ds, Dv = dm.Dv, Dq = Dk + Ds, group = H / Hk;
    const int64_t nchunks = (n + DECODE_CHUNK - 1) / DECODE_CHUNK, ntasks = Hk * nchunks;

    /* Per task and head of its group: max, sum of exponentials, weighted values [Dv]; then the
     * scores of one chunk per thread. */
    float *mx = malloc((size_t)(ntasks * group) * sizeof *mx);
    float *sum = malloc((size_t)(ntasks * group) * sizeof *sum);
    float *acc = malloc((size_t)(ntasks * group * (Dv > 0 ? Dv : 1)) * sizeof *acc);
    float *scores = malloc((size_t)(omp_get_max_threads() * group * DECODE_CHUNK) * sizeof *scores);
    if (!mx || !sum || !acc || !scores) {
        free(mx);
        free(sum);
        free(acc);
        free(scores);
        return errorf("%s: out of memory for the partial sums of %lld chunks", op, (long long)ntasks);
    }
    const float *qp = tensor_f32(q), *kp = tensor_f32(k), *vp = tensor_f32(v);
    const float *ksp = Ds ? tensor_f32(k_shared) : NULL;

#pragma omp parallel for schedule(static)
    for (int64_t task = 0; task < ntasks; task++) {
        const int64_t g = task / nchunks, j0 = (task % nchunks) * DECODE_CHUNK;
        const int64_t len = j0 + DECODE_CHUNK < n ? DECODE_CHUNK : n - j0;
        /* The group's heads share the chunk's keys and values: scores [group, len] and weighted
         * values [group, Dv] are two products (three with a shared key part), one sgemm each on
         * this thread, so the bits do not depend on the thread count. */
        float *s = scores + (int64_t)omp_get_thread_num() * group * DECODE_CHUNK;
        const float *qg = qp + g * group * Dq;
        chunk_gemm(CblasTrans, group, len, Dk, scale, qg, Dq, kp + (j0 * Hk + g) * Dk, Hk * Dk, 0.0f, s, len);
        if (Ds) chunk_gemm(CblasTrans, group, len, Ds, scale, qg + Dk, Dq, ksp + j0 * Ds, Ds, 1.0f, s, len);
        for (int64_t hi = 0; hi < group; hi++) {
            float *row = s + hi * len, m = row[0];
            for (int64_t j = 1; j < len; j++) m = row[j] > m ? row[j] : m;
            for (int64_t j = 0; j < len; j++) row[j] = cpu_expf(row[j] - m);
            mx[task * group + hi] = m;
            sum[task * group + hi] = cpu_sum(row, len);
        }
        chunk_gemm(CblasNoTrans, group, Dv, len, 1.0f, s, len, vp + (j0 * Hk + g) * Dv, Hk * Dv, 0.0f,
                   acc + task * group * Dv, Dv);
    }

    /* Chunks in order: rescale each to the overall max, add, divide by the total. */
    float *outp = tensor_f32(out);
    for (int64_t h = 0; h < H; h++) {
        const int64_t g = h / group, hi = h % group;
        float m = -INFINITY, l = 0.0f;
        for (int64_t c = 0; c < nchunks; c++) {
            float mc = mx[(g * nchunks + c) * group + hi];
            m = mc > m ? mc : m;
        }
        float *o = outp + h * Dv;
        memset(o, 0, (size_t)Dv * sizeof *o);
        for (int64_t c = 0; c < nchunks; c++) {
            const int64_t t = (g * nchunks + c) * group + hi;
            const float w = expf(mx[t] - m), *oc = acc + t * Dv;
            l += w * sum[t];
            for (int64_t d = 0; d < Dv; d++) o[d] += w * oc[d];
        }
        const float inv = 1.0f / l;
        for (int64_t d = 0; d < Dv; d++) o[d] *= inv;
    }
    free(mx);
    free(sum);
    free(acc);
    free(scores);
    return STATUS_OK;
}
