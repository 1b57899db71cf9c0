/* Matrix products for every CPU op: OpenBLAS sgemm, tiled so that the bits of the result do not
 * depend on the thread count. */
#include "cpu_ops.h"

/* Inside a parallel region Debian's OpenMP OpenBLAS runs single-threaded, so each tile is computed
 * the same way whatever the thread count. */
void cpu_sgemm(CBLAS_TRANSPOSE trans_a, CBLAS_TRANSPOSE trans_b, int64_t M, int64_t N, int64_t K,
               float alpha, const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
               float *C, int64_t ldc) {
    int64_t tiles_m = (M + CPU_GEMM_TILE - 1) / CPU_GEMM_TILE;
    int64_t tiles_n = (N + CPU_GEMM_TILE - 1) / CPU_GEMM_TILE;
#pragma omp parallel for schedule(static)
    for (int64_t tile = 0; tile < tiles_m * tiles_n; tile++) {
        int64_t i = tile / tiles_n * CPU_GEMM_TILE, j = tile % tiles_n * CPU_GEMM_TILE;
        int64_t m = M - i < CPU_GEMM_TILE ? M - i : CPU_GEMM_TILE;
        int64_t n = N - j < CPU_GEMM_TILE ? N - j : CPU_GEMM_TILE;
        const float *a = trans_a == CblasNoTrans ? A + i * lda : A + i;
        const float *b = trans_b == CblasNoTrans ? B + j : B + j * ldb;
        cblas_sgemm(CblasRowMajor, trans_a, trans_b, (int)m, (int)n, (int)K, alpha, a, (int)lda, b,
                    (int)ldb, beta, C + i * ldc + j, (int)ldc);
    }
}

