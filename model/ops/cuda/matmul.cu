/* Row-major float32 matrix products through cuBLAS: a row-major C = op(A) op(B) is the
 * column-major C^T = op(B)^T op(A)^T, so the operands swap and keep their transpose flags. */
#include <limits.h>

#include "cuda_ops.h"
#include "cuda_state.h"

Status cuda_sgemm(Backend *be, const char *op, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                  float alpha, const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                  int64_t ldc) {
    CudaState *st = cuda_state(be);
    if (M == 0 || N == 0) return STATUS_OK;
    if (M > INT_MAX || N > INT_MAX || K > INT_MAX || lda > INT_MAX || ldb > INT_MAX || ldc > INT_MAX)
        return errorf("%s: matrix product [%lld x %lld x %lld] exceeds cuBLAS's int range", op, (long long)M,
                      (long long)N, (long long)K);
    if (K == 0) {
        /* cuBLAS rejects a zero leading dimension; the empty sum leaves beta C. */
        if (beta == 0.0f)
            CUDA_TRY(cudaMemset2DAsync(C, (size_t)ldc * sizeof(float), 0, (size_t)N * sizeof(float), (size_t)M,
                                       st->stream));
        return STATUS_OK;
    }
    CUBLAS_TRY(cublasSgemm(st->cublas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                           (int)N, (int)M, (int)K, &alpha, B, (int)ldb, A, (int)lda, &beta, C, (int)ldc));
    return STATUS_OK;
}
