/* The SVD and the small float64 products the conversion needs. OpenBLAS's LAPACK is pinned to one
 * thread for the call: its blocked routines otherwise change the bits with the thread count. */
#include "model/convert/linalg.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* divide_and_conquer: dgesdd, falling back to dgesvd from a copy when it does not converge (it can
 * stop short on valid input: a product of rank far below its size, with a cluster of singular
 * values at rounding level, did so in a real conversion); otherwise dgesvd alone. */
static Status svd_with(double *A, int64_t m, int64_t n, double *U, double *S, double *VT, int divide_and_conquer) {
    if (m < 1 || n < 1) return errorf("svd: empty matrix [%lld, %lld]", (long long)m, (long long)n);
    if (m > INT32_MAX || n > INT32_MAX) return errorf("svd: matrix [%lld, %lld] too large for LAPACK", (long long)m, (long long)n);
    for (int64_t i = 0; i < m * n; i++)
        if (!isfinite(A[i])) return errorf("svd: the matrix holds a NaN or Inf (element %lld)", (long long)i);
    int64_t k = m < n ? m : n;
    double *superb = malloc((size_t)(k > 1 ? k - 1 : 1) * sizeof(double));
    double *copy = divide_and_conquer ? malloc((size_t)(m * n) * sizeof(double)) : NULL;
    if (!superb || (divide_and_conquer && !copy)) {
        free(superb);
        free(copy);
        return errorf("svd: out of memory for a [%lld, %lld] matrix", (long long)m, (long long)n);
    }
    if (copy) memcpy(copy, A, (size_t)(m * n) * sizeof(double));
    int saved = openblas_get_num_threads();
    openblas_set_num_threads(1);
    lapack_int info = 1;
    const char *routine = "dgesvd";
    if (divide_and_conquer) {
        info = LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', (lapack_int)m, (lapack_int)n, A, (lapack_int)n, S, U,
                              (lapack_int)k, VT, (lapack_int)n);
        routine = "dgesdd";
        if (info > 0) {
            memcpy(A, copy, (size_t)(m * n) * sizeof(double));
            routine = "dgesvd (after dgesdd did not converge)";
        }
    }
    if (info > 0)
        info = LAPACKE_dgesvd(LAPACK_ROW_MAJOR, 'S', 'S', (lapack_int)m, (lapack_int)n, A, (lapack_int)n, S, U,
                              (lapack_int)k, VT, (lapack_int)n, superb);
    openblas_set_num_threads(saved);
    free(copy);
    free(superb);
    if (info != 0)
        return errorf("svd: LAPACK %s failed on a [%lld, %lld] matrix (info %d%s)", routine, (long long)m,
                      (long long)n, (int)info, info > 0 ? ": did not converge" : "");
    /* Fix each singular vector pair's sign. */
    for (int64_t j = 0; j < k; j++) {
        int64_t arg = 0;
        for (int64_t i = 1; i < m; i++)
            if (fabs(U[i * k + j]) > fabs(U[arg * k + j])) arg = i;
        if (U[arg * k + j] < 0) {
            for (int64_t i = 0; i < m; i++) U[i * k + j] = -U[i * k + j];
            for (int64_t i = 0; i < n; i++) VT[j * n + i] = -VT[j * n + i];
        }
    }
    return STATUS_OK;
}

Status svd_thin(double *A, int64_t m, int64_t n, double *U, double *S, double *VT) {
    return svd_with(A, m, n, U, S, VT, 1);
}

Status svd_thin_qr(double *A, int64_t m, int64_t n, double *U, double *S, double *VT) {
    return svd_with(A, m, n, U, S, VT, 0);
}

void matmul_f64(const double *A, const double *B, double *C, int64_t m, int64_t k, int64_t n) {
    int saved = openblas_get_num_threads();
    openblas_set_num_threads(1);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0, A, (int)k, B, (int)n, 0.0, C,
                (int)n);
    openblas_set_num_threads(saved);
}

/* divide_and_conquer: dsyevd, falling back to dsyev from a copy when it does not converge (as
 * svd_with does with dgesdd); otherwise dsyev alone. */
static Status eig_sym_with(double *A, int64_t n, double *w, double *V, int divide_and_conquer) {
    if (n < 1 || n > INT32_MAX) return errorf("eigen: matrix size %lld out of range", (long long)n);
    for (int64_t i = 0; i < n * n; i++)
        if (!isfinite(A[i])) return errorf("eigen: the matrix holds a NaN or Inf (element %lld)", (long long)i);
    double *asc = malloc((size_t)n * sizeof(double));
    double *copy = divide_and_conquer ? malloc((size_t)(n * n) * sizeof(double)) : NULL;
    if (!asc || (divide_and_conquer && !copy)) {
        free(asc);
        free(copy);
        return errorf("eigen: out of memory for a [%lld, %lld] matrix", (long long)n, (long long)n);
    }
    if (copy) memcpy(copy, A, (size_t)(n * n) * sizeof(double));
    int saved = openblas_get_num_threads();
    openblas_set_num_threads(1);
    lapack_int info = 1;
    const char *routine = "dsyev";
    if (divide_and_conquer) {
        info = LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', (lapack_int)n, A, (lapack_int)n, asc);
        routine = "dsyevd";
        if (info > 0) {
            memcpy(A, copy, (size_t)(n * n) * sizeof(double));
            routine = "dsyev (after dsyevd did not converge)";
        }
    }
    if (info > 0) info = LAPACKE_dsyev(LAPACK_ROW_MAJOR, 'V', 'U', (lapack_int)n, A, (lapack_int)n, asc);
    openblas_set_num_threads(saved);
    free(copy);
    if (info != 0) {
        free(asc);
        return errorf("eigen: LAPACK %s failed on a [%lld, %lld] matrix (info %d%s)", routine, (long long)n,
                      (long long)n, (int)info, info > 0 ? ": did not converge" : "");
    }
    /* LAPACK gives ascending order; reverse it, and fix each vector's sign. */
    for (int64_t j = 0; j < n; j++) {
        int64_t src = n - 1 - j, arg = 0;
        w[j] = asc[src];
        for (int64_t i = 1; i < n; i++)
            if (fabs(A[i * n + src]) > fabs(A[arg * n + src])) arg = i;
        double sign = A[arg * n + src] < 0 ? -1.0 : 1.0;
        for (int64_t i = 0; i < n; i++) V[i * n + j] = sign * A[i * n + src];
    }
    free(asc);
    return STATUS_OK;
}

Status eig_sym(double *A, int64_t n, double *w, double *V) { return eig_sym_with(A, n, w, V, 1); }

Status eig_sym_qr(double *A, int64_t n, double *w, double *V) { return eig_sym_with(A, n, w, V, 0); }

void matmul_f64_nt(const double *A, const double *B, double *C, int64_t m, int64_t k, int64_t n) {
    int saved = openblas_get_num_threads();
    openblas_set_num_threads(1);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)n, (int)k, 1.0, A, (int)k, B, (int)k, 0.0, C,
                (int)n);
    openblas_set_num_threads(saved);
}

Status solve_spd(double *A, int64_t n, double *B, int64_t nrhs) {
    if (n < 1 || n > INT32_MAX || nrhs < 1 || nrhs > INT32_MAX)
        return errorf("solve: sizes [%lld, %lld] out of range", (long long)n, (long long)nrhs);
    for (int64_t i = 0; i < n * n; i++)
        if (!isfinite(A[i])) return errorf("solve: the matrix holds a NaN or Inf (element %lld)", (long long)i);
    for (int64_t i = 0; i < n * nrhs; i++)
        if (!isfinite(B[i])) return errorf("solve: the right-hand side holds a NaN or Inf (element %lld)", (long long)i);
    int saved = openblas_get_num_threads();
    openblas_set_num_threads(1);
    lapack_int info = LAPACKE_dposv(LAPACK_ROW_MAJOR, 'U', (lapack_int)n, (lapack_int)nrhs, A, (lapack_int)n, B,
                                    (lapack_int)nrhs);
    openblas_set_num_threads(saved);
    if (info != 0)
        return errorf("solve: LAPACK dposv failed on a [%lld, %lld] system (info %d%s)", (long long)n, (long long)n,
                      (int)info, info > 0 ? ": not positive definite" : "");
    return STATUS_OK;
}

/* Rows are converted and multiplied in blocks; block i adds into partial sum i mod MOMENT_PARTS,
 * and the partial sums are added in order at the end, so the bits depend on neither the thread
 * count nor the schedule, and the partial sums run on OpenMP threads. */
enum { MOMENT_BLOCK = 512, MOMENT_PARTS = 4 };

Status cross_moment(const float *a, const float *b, int64_t N, int64_t Da, int64_t Db, double *C) {
    if (N < 1 || Da < 1 || Db < 1 || Da > INT32_MAX || Db > INT32_MAX)
        return errorf("moment: sizes [%lld, %lld, %lld] out of range", (long long)N, (long long)Da, (long long)Db);
    if (!b && Db != Da) return errorf("moment: a^T a needs Db = Da (got %lld, %lld)", (long long)Da, (long long)Db);
    int64_t blocks = (N + MOMENT_BLOCK - 1) / MOMENT_BLOCK, parts = blocks < MOMENT_PARTS ? blocks : MOMENT_PARTS;
    double *part = calloc((size_t)(parts * Da * Db), sizeof(double));
    double *ad = malloc((size_t)(parts * MOMENT_BLOCK * Da) * sizeof(double));
    double *bd = b ? malloc((size_t)(parts * MOMENT_BLOCK * Db) * sizeof(double)) : NULL;
    if (!part || !ad || (b && !bd)) {
        free(part), free(ad), free(bd);
        return errorf("moment: out of memory for [%lld, %lld] x [%lld, %lld]", (long long)N, (long long)Da, (long long)N,
                      (long long)Db);
    }
    /* One thread per OpenBLAS call: the pthreads build would otherwise run its own pool under every
     * OpenMP thread (the OpenMP build is single-threaded inside a parallel region by itself, and
     * setting its count would set OpenMP's). */
    int pthreads = openblas_get_parallel() == OPENBLAS_THREAD, saved = openblas_get_num_threads();
    if (pthreads) openblas_set_num_threads(1);
#pragma omp parallel for schedule(static, 1)
    for (int64_t p = 0; p < parts; p++) {
        double *A = ad + p * MOMENT_BLOCK * Da, *B = b ? bd + p * MOMENT_BLOCK * Db : A, *Cp = part + p * Da * Db;
        for (int64_t blk = p; blk < blocks; blk += parts) {
            int64_t r0 = blk * MOMENT_BLOCK, n = N - r0 < MOMENT_BLOCK ? N - r0 : MOMENT_BLOCK;
            for (int64_t i = 0; i < n * Da; i++) A[i] = a[r0 * Da + i];
            for (int64_t i = 0; b && i < n * Db; i++) B[i] = b[r0 * Db + i];
            if (b)
                cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)Da, (int)Db, (int)n, 1.0, A, (int)Da, B, (int)Db,
                            1.0, Cp, (int)Db);
            else
                cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)Da, (int)n, 1.0, A, (int)Da, 1.0, Cp, (int)Da);
        }
    }
    if (pthreads) openblas_set_num_threads(saved);
    for (int64_t i = 0; i < Da; i++)
        for (int64_t j = 0; j < Db; j++) {
            /* a^T a: dsyrk filled the upper triangle */
            int64_t src = !b && j < i ? j * Db + i : i * Db + j;
            double sum = 0;
            for (int64_t p = 0; p < parts; p++) sum += part[p * Da * Db + src];
            C[i * Db + j] = sum / (double)N;
        }
    free(part), free(ad), free(bd);
    return STATUS_OK;
}

Status second_moment(const float *a, int64_t N, int64_t D, double *C) { return cross_moment(a, NULL, N, D, D, C); }
