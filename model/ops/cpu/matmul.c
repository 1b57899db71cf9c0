/* Matrix products for every CPU op: OpenBLAS sgemm, tiled so that the bits of the result do not
 * depend on the thread count. */
#include "cpu_ops.h"

/* Tiles of C: as large as CPU_GEMM_MAX_ROWS x CPU_GEMM_MAX_COLS, since each tile's sgemm packs its
 * own panels of A and B and larger tiles pack each panel fewer times; split further while there are
 * fewer than CPU_GEMM_MIN_TILES, so that every thread gets work, but not below CPU_GEMM_MIN_SIDE.
 * The tiling is a function of (M, N) alone. */
enum {
    CPU_GEMM_MAX_ROWS = 256,
    CPU_GEMM_MAX_COLS = 512,
    CPU_GEMM_MIN_TILES = 8,
    CPU_GEMM_MIN_SIDE = 32,
    CPU_GEMM_ALIGN = 16,   /* sides are multiples of this (the sgemm kernel's unroll) */
};

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* The side of `parts` near-equal pieces of n, rounded up to CPU_GEMM_ALIGN. */
static int64_t piece(int64_t n, int64_t parts) {
    return ceil_div(ceil_div(n, parts), CPU_GEMM_ALIGN) * CPU_GEMM_ALIGN;
}

/* Tile sides for C[M, N]: near-equal pieces, the longer side split first. */
static void gemm_tiling(int64_t M, int64_t N, int64_t *tile_m, int64_t *tile_n) {
    int64_t pm = ceil_div(M, CPU_GEMM_MAX_ROWS), pn = ceil_div(N, CPU_GEMM_MAX_COLS);
    while (ceil_div(M, piece(M, pm)) * ceil_div(N, piece(N, pn)) < CPU_GEMM_MIN_TILES) {
        int can_m = piece(M, pm + 1) >= CPU_GEMM_MIN_SIDE, can_n = piece(N, pn + 1) >= CPU_GEMM_MIN_SIDE;
        if (can_n && (!can_m || piece(N, pn) > piece(M, pm))) pn++;
        else if (can_m) pm++;
        else break;
    }
    *tile_m = piece(M, pm);
    *tile_n = piece(N, pn);
}

/* Each tile's sgemm runs single-threaded (cpu_blas_init), so each tile is computed the same way
 * whatever the thread count. */
void cpu_sgemm(CBLAS_TRANSPOSE trans_a, CBLAS_TRANSPOSE trans_b, int64_t M, int64_t N, int64_t K,
               float alpha, const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
               float *C, int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    cpu_blas_init();
    int64_t tm, tn;
    gemm_tiling(M, N, &tm, &tn);
    const int64_t tiles_m = ceil_div(M, tm), tiles_n = ceil_div(N, tn);
#pragma omp parallel for schedule(static)
    for (int64_t tile = 0; tile < tiles_m * tiles_n; tile++) {
        int64_t i = tile / tiles_n * tm, j = tile % tiles_n * tn;
        int64_t m = M - i < tm ? M - i : tm;
        int64_t n = N - j < tn ? N - j : tn;
        const float *a = trans_a == CblasNoTrans ? A + i * lda : A + i;
        const float *b = trans_b == CblasNoTrans ? B + j : B + j * ldb;
        cblas_sgemm(CblasRowMajor, trans_a, trans_b, (int)m, (int)n, (int)K, alpha, a, (int)lda, b,
                    (int)ldb, beta, C + i * ldc + j, (int)ldc);
    }
}
