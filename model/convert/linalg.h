/* The conversion's float64 linear algebra (SVD and symmetric eigensolver, QR iteration where divide and
 * conquer does not converge; products; SPD solve), single-threaded so the bits ignore the thread count. */
#pragma once

#include <stdint.h>

#include "core/status.h"

/* A [m, n] row-major (destroyed) = U [m, k] diag(S [k]) VT [k, n], k = min(m, n), singular values
 * descending. Signs are made deterministic: the largest-magnitude entry of each column of U is
 * positive. */
Status svd_thin(double *A, int64_t m, int64_t n, double *U, double *S, double *VT);

/* The same factorization by QR iteration alone (dgesvd): what svd_thin falls back to when dgesdd
 * does not converge. Slower, and it converges where dgesdd's divide and conquer may not. */
Status svd_thin_qr(double *A, int64_t m, int64_t n, double *U, double *S, double *VT);

/* C [m, n] = A [m, k] B [k, n], all row-major float64 (single-threaded, fixed order). */
void matmul_f64(const double *A, const double *B, double *C, int64_t m, int64_t k, int64_t n);

/* A [n, n] symmetric row-major (destroyed) = V diag(w) V^T: eigenvalues w descending, eigenvector j
 * in column j of V [n, n], its largest-magnitude entry made positive (deterministic signs). */
Status eig_sym(double *A, int64_t n, double *w, double *V);

/* The same by QR iteration alone (dsyev): what eig_sym falls back to when dsyevd does not converge. */
Status eig_sym_qr(double *A, int64_t n, double *w, double *V);

/* C [m, n] = A [m, k] B [n, k]^T (row-major float64, single-threaded). */
void matmul_f64_nt(const double *A, const double *B, double *C, int64_t m, int64_t k, int64_t n);

/* Solves A X = B for symmetric positive definite A [n, n] (destroyed: its Cholesky factor) and
 * B [n, nrhs] row-major, X written over B (LAPACK dposv, single-threaded). */
Status solve_spd(double *A, int64_t n, double *B, int64_t nrhs);

/* C [D, D] = a^T a / N, the second moment of the rows of a [N, D] (float32), in float64. */
Status second_moment(const float *a, int64_t N, int64_t D, double *C);

/* C [Da, Db] = a^T b / N for the rows of a [N, Da] and b [N, Db] (float32; b NULL: a itself, Db = Da),
 * in float64, on OpenMP threads; the bits do not depend on the thread count. */
Status cross_moment(const float *a, const float *b, int64_t N, int64_t Da, int64_t Db, double *C);
