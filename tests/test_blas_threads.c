/* OpenBLAS runs one thread per call whichever of Debian's builds is loaded (OpenMP, pthreads,
 * sequential), without touching OpenMP's thread count: the pthreads build is set to one thread,
 * the OpenMP build is left to OpenMP. ctest runs this once on the OpenBLAS the build linked and
 * once on each other build installed (CMakeLists.txt). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "model/convert/linalg.h"
#include "model/ops/cpu/cpu_ops.h"

/* C[M, N] = A[M, K] B[N, K]^T through the tiles with `threads` OpenMP threads. */
static float *product(int threads, int64_t M, int64_t N, int64_t K, const float *A, const float *B) {
    float *C = test_alloc((size_t)(M * N) * sizeof(float));
    int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    cpu_sgemm(CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, K, B, K, 0.0f, C, N);
    omp_set_num_threads(saved);
    return C;
}

/* One thread per OpenBLAS call where OpenBLAS can say so (pthreads, sequential); OpenMP's count as
 * it was. */
static void check_threads(const char *after, int omp_threads) {
    const char *threading = cpu_blas_threading();
    CHECK(omp_get_max_threads() == omp_threads, "after %s (%s OpenBLAS): OpenMP runs %d threads, expected %d", after,
          threading, omp_get_max_threads(), omp_threads);
    if (strcmp(threading, "openmp") != 0)
        CHECK(openblas_get_num_threads() == 1, "after %s (%s OpenBLAS): %d threads per OpenBLAS call, expected 1",
              after, threading, openblas_get_num_threads());
}

int main(void) {
    const int omp_threads = omp_get_max_threads();
    const char *threading = cpu_blas_threading();
    CHECK(strcmp(threading, "openmp") == 0 || strcmp(threading, "pthreads") == 0 ||
              strcmp(threading, "sequential") == 0,
          "OpenBLAS's threading is one of openmp, pthreads, sequential (got %s)", threading);

    /* cpu_sgemm first, before any backend: it sets the threads itself. Shapes where OpenBLAS's own
     * threading would change the bits (one row; K much larger than M and N), and one that tiles. */
    const int64_t shapes[][3] = {{1, 96, 2048}, {24, 40, 3000}, {300, 200, 70}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        float *A = test_alloc((size_t)(M * K) * sizeof(float)), *B = test_alloc((size_t)(N * K) * sizeof(float));
        fill_normal(A, M * K, 2 * s, 1.0f);
        fill_normal(B, N * K, 2 * s + 1, 1.0f);
        float *C1 = product(1, M, N, K, A, B);
        for (int threads = 2; threads <= 3; threads++) {
            float *Ct = product(threads, M, N, K, A, B);
            CHECK(memcmp(C1, Ct, (size_t)(M * N) * sizeof(float)) == 0,
                  "[%lld, %lld, %lld] product (%s OpenBLAS): 1 and %d threads give the same bits", (long long)M,
                  (long long)N, (long long)K, threading, threads);
            free(Ct);
        }
        free(A);
        free(B);
        free(C1);
    }
    check_threads("cpu_sgemm", omp_threads);

    Backend *be = test_cpu_backend(0);
    check_threads("creating the cpu backend", omp_threads);

    /* The conversion's LAPACK path pins OpenBLAS to one thread around each call and restores it. */
    enum { M = 40, N = 24 };
    double A[M * N], A0[M * N], U[M * N], S[N], VT[N * N], R[M * N];
    fill_normal_f64(A, M * N, 7, 1.0);
    memcpy(A0, A, sizeof A);
    CHECK_OK(svd_thin(A, M, N, U, S, VT));
    for (int j = 0; j < N; j++)
        for (int i = 0; i < M; i++) U[i * N + j] *= S[j];
    matmul_f64(U, VT, R, M, N, N);
    double num = 0, den = 0;
    for (int i = 0; i < M * N; i++) num += (R[i] - A0[i]) * (R[i] - A0[i]), den += A0[i] * A0[i];
    CHECK(sqrt(num / den) < 1e-12, "svd (%s OpenBLAS): U S V^T rebuilds A, rel error %.3g", threading, sqrt(num / den));
    check_threads("svd_thin", omp_threads);

    char blas[160];
    cpu_blas_describe(blas, sizeof blas);
    CHECK(strncmp(blas, "OpenBLAS ", 9) == 0 && strstr(blas, threading), "describe names OpenBLAS and %s: \"%s\"",
          threading, blas);
    backend_destroy(be);
    return test_finish("test_blas_threads");
}
