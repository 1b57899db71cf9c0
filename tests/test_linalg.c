/* The conversion's thin SVD and symmetric eigensolver with both LAPACK drivers each: divide and
 * conquer, and the QR iteration they fall back to, on full-rank and rank-deficient matrices. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "model/convert/linalg.h"

typedef Status (*SvdFn)(double *A, int64_t m, int64_t n, double *U, double *S, double *VT);

typedef struct {
    double *U, *S, *VT;
} Factors;

/* A [m, n] of the given rank: L^T R with L [rank, m], R [rank, n], as the conversion forms its
 * products of a few activation rows with weight rows. */
static double *low_rank(int64_t m, int64_t n, int64_t rank, uint64_t stream) {
    double *L = test_alloc((size_t)(rank * m) * sizeof(double));
    double *R = test_alloc((size_t)(rank * n) * sizeof(double));
    double *LT = test_alloc((size_t)(m * rank) * sizeof(double));
    double *A = test_alloc((size_t)(m * n) * sizeof(double));
    fill_normal_f64(L, rank * m, stream, 1.0);
    fill_normal_f64(R, rank * n, stream + 1, 3.0);
    for (int64_t i = 0; i < rank; i++)
        for (int64_t d = 0; d < m; d++) LT[d * rank + i] = L[i * m + d];
    matmul_f64(LT, R, A, m, rank, n);
    free(L);
    free(R);
    free(LT);
    return A;
}

/* Factors A (kept intact) with `svd` and checks what svd_thin promises. */
static Factors factor(SvdFn svd, const char *driver, const double *A, int64_t m, int64_t n, const char *what) {
    int64_t k = m < n ? m : n;
    Factors f = {test_alloc((size_t)(m * k) * sizeof(double)), test_alloc((size_t)k * sizeof(double)),
                 test_alloc((size_t)(k * n) * sizeof(double))};
    double *work = test_alloc((size_t)(m * n) * sizeof(double));
    double *US = test_alloc((size_t)(m * k) * sizeof(double));
    double *R = test_alloc((size_t)(m * n) * sizeof(double));
    memcpy(work, A, (size_t)(m * n) * sizeof(double));
    if (!CHECK_OK(svd(work, m, n, f.U, f.S, f.VT))) goto done;

    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < k; j++) US[i * k + j] = f.U[i * k + j] * f.S[j];
    matmul_f64(US, f.VT, R, m, k, n);
    double num = 0, den = 0;
    for (int64_t i = 0; i < m * n; i++) num += (R[i] - A[i]) * (R[i] - A[i]), den += A[i] * A[i];
    CHECK(sqrt(num / den) < 1e-12, "%s, %s: U S V^T rebuilds A, rel error %.3g", driver, what, sqrt(num / den));

    int descending = 1, signs = 1;
    for (int64_t j = 0; j < k; j++) {
        if (f.S[j] < 0 || (j > 0 && f.S[j] > f.S[j - 1])) descending = 0;
        int64_t arg = 0;
        for (int64_t i = 1; i < m; i++)
            if (fabs(f.U[i * k + j]) > fabs(f.U[arg * k + j])) arg = i;
        if (f.U[arg * k + j] < 0) signs = 0;
    }
    CHECK(descending, "%s, %s: singular values are non-negative and descending", driver, what);
    CHECK(signs, "%s, %s: each column of U has its largest-magnitude entry positive", driver, what);

    double worst = 0;
    for (int64_t a = 0; a < k; a++)
        for (int64_t b = 0; b < k; b++) {
            double dot = 0;
            for (int64_t i = 0; i < n; i++) dot += f.VT[a * n + i] * f.VT[b * n + i];
            worst = fmax(worst, fabs(dot - (a == b)));
        }
    CHECK(worst < 1e-12, "%s, %s: rows of V^T are orthonormal (worst %.3g)", driver, what, worst);
done:
    free(work);
    free(US);
    free(R);
    return f;
}

static void free_factors(Factors *f) {
    free(f->U);
    free(f->S);
    free(f->VT);
}

/* Both drivers on one matrix: each factorization valid, and the same singular values and, for the
 * leading well-separated ones, the same singular vectors (the sign rule makes them comparable). */
static void compare_drivers(const double *A, int64_t m, int64_t n, int64_t rank, const char *what) {
    int64_t k = m < n ? m : n;
    Factors dc = factor(svd_thin, "dgesdd", A, m, n, what);
    Factors qr = factor(svd_thin_qr, "dgesvd", A, m, n, what);
    double s_err = 0;
    for (int64_t j = 0; j < k; j++) s_err = fmax(s_err, fabs(dc.S[j] - qr.S[j]));
    CHECK(s_err < 1e-12 * dc.S[0], "%s: singular values agree between drivers (max diff %.3g of %.3g)", what, s_err,
          dc.S[0]);
    int64_t tail = 0;
    for (int64_t j = rank; j < k; j++) tail += dc.S[j] < 1e-10 * dc.S[0] && qr.S[j] < 1e-10 * qr.S[0];
    CHECK(tail == k - rank, "%s: both drivers find rank %lld (%lld of %lld trailing values at rounding level)", what,
          (long long)rank, (long long)tail, (long long)(k - rank));

    double v_err = 0;
    int64_t compared = 0;
    for (int64_t j = 0; j < rank && j < 8; j++) {
        double gap = fmin(j > 0 ? dc.S[j - 1] - dc.S[j] : INFINITY, dc.S[j] - dc.S[j + 1 < k ? j + 1 : j]);
        if (j + 1 < k && gap < 1e-3 * dc.S[0]) continue;
        for (int64_t i = 0; i < m; i++) v_err = fmax(v_err, fabs(dc.U[i * k + j] - qr.U[i * k + j]));
        compared++;
    }
    CHECK(compared > 0 && v_err < 1e-8, "%s: leading singular vectors agree between drivers (%lld compared, max diff %.3g)",
          what, (long long)compared, v_err);
    free_factors(&dc);
    free_factors(&qr);
}

typedef Status (*EigFn)(double *A, int64_t n, double *w, double *V);

/* Factors the symmetric A (kept intact) with `eig` and checks what eig_sym promises: A V = V diag(w),
 * V orthonormal, w descending, each column's largest-magnitude entry positive. */
static double *eigen(EigFn eig, const char *driver, const double *A, int64_t n, double *w, const char *what) {
    double *work = test_alloc((size_t)(n * n) * sizeof(double));
    double *V = test_alloc((size_t)(n * n) * sizeof(double));
    memcpy(work, A, (size_t)(n * n) * sizeof(double));
    if (CHECK_OK(eig(work, n, w, V))) {
        double norm = 0, resid = 0, ortho = 0;
        int descending = 1, signs = 1;
        for (int64_t i = 0; i < n * n; i++) norm += A[i] * A[i];
        for (int64_t j = 0; j < n; j++) {
            if (j > 0 && w[j] > w[j - 1]) descending = 0;
            int64_t arg = 0;
            for (int64_t i = 0; i < n; i++) {
                double av = 0;
                for (int64_t l = 0; l < n; l++) av += A[i * n + l] * V[l * n + j];
                resid += (av - w[j] * V[i * n + j]) * (av - w[j] * V[i * n + j]);
                if (fabs(V[i * n + j]) > fabs(V[arg * n + j])) arg = i;
            }
            if (V[arg * n + j] < 0) signs = 0;
            for (int64_t k = 0; k < n; k++) {
                double dot = 0;
                for (int64_t i = 0; i < n; i++) dot += V[i * n + j] * V[i * n + k];
                ortho = fmax(ortho, fabs(dot - (j == k)));
            }
        }
        CHECK(sqrt(resid / norm) < 1e-12, "%s, %s: A V = V diag(w), rel residual %.3g", driver, what, sqrt(resid / norm));
        CHECK(ortho < 1e-12, "%s, %s: V is orthonormal (worst %.3g)", driver, what, ortho);
        CHECK(descending, "%s, %s: eigenvalues descending", driver, what);
        CHECK(signs, "%s, %s: each eigenvector's largest-magnitude entry is positive", driver, what);
    }
    free(work);
    return V;
}

/* A covariance-like A = X^T X / rows (rank min(rows, n)), as the conversion's moments are, through
 * both drivers: the same eigenvalues, and the same leading eigenvectors. */
static void compare_eigen(int64_t n, int64_t rows, const char *what) {
    double *X = test_alloc((size_t)(rows * n) * sizeof(double));
    double *XT = test_alloc((size_t)(n * rows) * sizeof(double));
    double *A = test_alloc((size_t)(n * n) * sizeof(double));
    double *w_dc = test_alloc((size_t)n * sizeof(double)), *w_qr = test_alloc((size_t)n * sizeof(double));
    fill_normal_f64(X, rows * n, 40 + (uint64_t)n, 1.0);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t d = 0; d < n; d++) XT[d * rows + i] = X[i * n + d] / sqrt((double)rows) * (1.0 + 0.1 * (double)d);
    matmul_f64_nt(XT, XT, A, n, rows, n);
    double *V_dc = eigen(eig_sym, "dsyevd", A, n, w_dc, what);
    double *V_qr = eigen(eig_sym_qr, "dsyev", A, n, w_qr, what);
    double w_err = 0, v_err = 0;
    for (int64_t j = 0; j < n; j++) w_err = fmax(w_err, fabs(w_dc[j] - w_qr[j]));
    CHECK(w_err < 1e-12 * w_dc[0], "%s: eigenvalues agree between drivers (max diff %.3g of %.3g)", what, w_err, w_dc[0]);
    for (int64_t j = 0; j < 4; j++)
        for (int64_t i = 0; i < n; i++) v_err = fmax(v_err, fabs(V_dc[i * n + j] - V_qr[i * n + j]));
    CHECK(v_err < 1e-8, "%s: the 4 leading eigenvectors agree between drivers (max diff %.3g)", what, v_err);
    free(X);
    free(XT);
    free(A);
    free(w_dc);
    free(w_qr);
    free(V_dc);
    free(V_qr);
}

int main(void) {
    struct {
        int64_t m, n, rank;
        const char *what;
    } cases[] = {
        {60, 24, 24, "tall, full rank"},
        {24, 60, 24, "wide, full rank"},
        {144, 40, 16, "tall, rank 16 of 40"},
        {40, 144, 12, "wide, rank 12 of 40"},
        {1, 7, 1, "one row"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        double *A = low_rank(cases[c].m, cases[c].n, cases[c].rank, 10 + 2 * c);
        compare_drivers(A, cases[c].m, cases[c].n, cases[c].rank, cases[c].what);
        free(A);
    }

    compare_eigen(30, 200, "covariance of 200 rows, n 30");
    compare_eigen(48, 12, "covariance of 12 rows, n 48 (rank 12)");

    double bad[6] = {1, 2, NAN, 4, 5, 6}, U[6], S[2], VT[6];
    CHECK_ERR(svd_thin(bad, 3, 2, U, S, VT), "NaN or Inf (element 2)");
    CHECK_ERR(svd_thin_qr(bad, 3, 2, U, S, VT), "NaN or Inf (element 2)");
    CHECK_ERR(svd_thin_qr(bad, 0, 2, U, S, VT), "empty matrix");
    double bad_sym[4] = {1, INFINITY, INFINITY, 1}, w[2], V[4];
    CHECK_ERR(eig_sym(bad_sym, 2, w, V), "NaN or Inf (element 1)");
    CHECK_ERR(eig_sym_qr(bad_sym, 2, w, V), "NaN or Inf (element 1)");
    return test_finish("test_linalg");
}
