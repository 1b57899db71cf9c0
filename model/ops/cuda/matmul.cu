/* Row-major matrix products through cuBLAS: a row-major C = op(A) op(B) is the column-major
 * C^T = op(B)^T op(A)^T, so the operands swap and keep their transpose flags. float32: sgemm;
 * mixed precision: cuBLASLt, falling back to cublasGemmEx where none of its algorithms runs. */
#include <limits.h>
#include <stdint.h>

#include "cuda_ops.h"
#include "cuda_state.h"
#include "storage.cuh"

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

/* ---- mixed precision: cuBLASLt, bf16 or f32 operands, f32 accumulation ---- */

static cudaDataType_t lt_type(DType d) { return d == DT_BF16 ? CUDA_R_16BF : CUDA_R_32F; }

/* Descriptors of one product, released together. */
typedef struct {
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulPreference_t pref;
} LtProblem;

static void lt_problem_free(LtProblem *p) {
    if (p->pref) cublasLtMatmulPreferenceDestroy(p->pref);
    if (p->c) cublasLtMatrixLayoutDestroy(p->c);
    if (p->b) cublasLtMatrixLayoutDestroy(p->b);
    if (p->a) cublasLtMatrixLayoutDestroy(p->a);
    if (p->desc) cublasLtMatmulDescDestroy(p->desc);
}

/* The algorithms cuBLASLt's heuristic offers depend only on the problem, so it is asked once per
 * problem and the first of them that runs is kept with the problem's descriptors: the same kernel
 * every call (deterministic), and no heuristic or descriptor building on the hot path (only the
 * bias pointer is set per call). A heuristic result may still be refused at launch (an alignment
 * or workspace rule it did not weigh), so several are asked for and tried in order; where none
 * runs, or none is offered, the problem goes to cublasGemmEx (same operands and f32 accumulation,
 * the bias as a separate pass, so a bf16 output with a bias is rounded twice). */
enum { LT_ALGOS = 8, LT_UNTRIED = -1, LT_GEMM_EX = -2 };
typedef struct {
    int device, trans_a, trans_b, has_bias, accumulate;
    int64_t M, N, K, lda, ldb, ldc;
    DType ab, c;
    uint32_t align_a, align_b, align_c, align_c_in; /* of the pointers: the heuristic otherwise assumes 256 */
    cublasLtMatmulAlgo_t algos[LT_ALGOS];
    int n_algos;
    int chosen; /* index into algos, LT_UNTRIED before the first call, or LT_GEMM_EX */
    LtProblem problem;
} LtPlan;

/* The largest power of two (at most 256) dividing the address. */
static uint32_t pointer_alignment(const void *p) {
    uintptr_t a = (uintptr_t)p;
    uint32_t align = 256;
    while (align > 1 && a % align != 0) align /= 2;
    return align;
}

enum { LT_PLAN_CACHE = 256 };
static LtPlan lt_plans[LT_PLAN_CACHE];
static int lt_plan_count, lt_plan_next;

static int same_problem(const LtPlan *a, const LtPlan *b) {
    return a->device == b->device && a->trans_a == b->trans_a && a->trans_b == b->trans_b &&
           a->has_bias == b->has_bias && a->accumulate == b->accumulate && a->M == b->M && a->N == b->N &&
           a->K == b->K && a->lda == b->lda && a->ldb == b->ldb && a->ldc == b->ldc && a->ab == b->ab && a->c == b->c &&
           a->align_a == b->align_a && a->align_b == b->align_b && a->align_c == b->align_c &&
           a->align_c_in == b->align_c_in;
}

/* Row-major C[M, N] = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLASLt's first operand
 * is B as stored (N x K, or K x N transposed), its second A, and its output C^T [N x M] with the
 * bias along its rows, i.e. one value per column of the row-major C. */
static Status lt_problem_build(LtProblem *p, const LtPlan *k) {
    cublasOperation_t op_first = k->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t op_second = k->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_TRY(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof op_first));
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof op_second));
    if (k->has_bias) {
        cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
        cudaDataType_t bias_type = lt_type(k->c);
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                  sizeof bias_type));
    }
    uint64_t first_rows = k->trans_b ? k->K : k->N, first_cols = k->trans_b ? k->N : k->K;
    uint64_t second_rows = k->trans_a ? k->M : k->K, second_cols = k->trans_a ? k->K : k->M;
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&p->a, lt_type(k->ab), first_rows, first_cols, k->ldb));
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&p->b, lt_type(k->ab), second_rows, second_cols, k->lda));
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&p->c, lt_type(k->c), (uint64_t)k->N, (uint64_t)k->M, k->ldc));
    return STATUS_OK;
}

/* Split-K partial sums kept in f32 (never rounded to a bf16 output between the parts). */
static Status lt_pick_algo(CudaState *st, LtProblem *p, LtPlan *k) {
    CUBLAS_TRY(cublasLtMatmulPreferenceCreate(&p->pref));
    size_t ws = st->workspace_bytes;
    uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(p->pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(p->pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes,
                                                    sizeof schemes));
    /* cuBLASLt's first operand is our B, its second our A; its C is our c_in, its D our C. */
    CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(p->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &k->align_b,
                                                    sizeof k->align_b));
    CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(p->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &k->align_a,
                                                    sizeof k->align_a));
    CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(p->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                    &k->align_c_in, sizeof k->align_c_in));
    CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(p->pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &k->align_c,
                                                    sizeof k->align_c));
    cublasLtMatmulHeuristicResult_t results[LT_ALGOS];
    int found = 0;
    k->n_algos = 0;
    k->chosen = LT_UNTRIED;
    /* No algorithm for the problem is not an error: the product goes to cublasGemmEx. */
    cublasStatus_t r = cublasLtMatmulAlgoGetHeuristic(st->cublaslt, p->desc, p->a, p->b, p->c, p->c, p->pref, LT_ALGOS,
                                                      results, &found);
    if (r != CUBLAS_STATUS_SUCCESS && r != CUBLAS_STATUS_NOT_SUPPORTED)
        return errorf("cublasLtMatmulAlgoGetHeuristic failed: %s", cublasGetStatusString(r));
    for (int i = 0; r == CUBLAS_STATUS_SUCCESS && i < found && i < LT_ALGOS; i++)
        if (results[i].state == CUBLAS_STATUS_SUCCESS) k->algos[k->n_algos++] = results[i].algo;
    if (k->n_algos == 0) k->chosen = LT_GEMM_EX;
    return STATUS_OK;
}

/* C[M, N] (row-major, ld ldc) += bias[N], for the cublasGemmEx path. */
template <typename T> __global__ void bias_add_rows(T *C, const T *bias, int64_t M, int64_t N, int64_t ldc) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < M * N; i += (int64_t)gridDim.x * blockDim.x) {
        T *c = C + i / N * ldc + i % N;
        *c = from_f32<T>(to_f32(*c) + to_f32(bias[i % N]));
    }
}

/* The product through cublasGemmEx: bf16 or f32 operands, f32 accumulation, C started as a copy
 * of c_in (GemmEx reads and writes one C), the bias added afterwards. */
static Status gemm_ex(CudaState *st, const char *op, const LtPlan *k, float alpha, const void *A, const void *B,
                      float beta, const void *c_in, void *C, const void *bias) {
    if (k->M > INT_MAX || k->N > INT_MAX || k->K > INT_MAX || k->lda > INT_MAX || k->ldb > INT_MAX || k->ldc > INT_MAX)
        return errorf("%s: matrix product [%lld x %lld x %lld] exceeds cublasGemmEx's int range", op, (long long)k->M,
                      (long long)k->N, (long long)k->K);
    const size_t csize = dtype_size(k->c);
    if (beta != 0.0f && c_in != C)
        CUDA_TRY(cudaMemcpy2DAsync(C, (size_t)k->ldc * csize, c_in, (size_t)k->ldc * csize, (size_t)k->N * csize,
                                   (size_t)k->M, cudaMemcpyDeviceToDevice, st->stream));
    cublasStatus_t r = cublasGemmEx(st->cublas, k->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                    k->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, (int)k->N, (int)k->M, (int)k->K, &alpha,
                                    B, lt_type(k->ab), (int)k->ldb, A, lt_type(k->ab), (int)k->lda, &beta, C,
                                    lt_type(k->c), (int)k->ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (r != CUBLAS_STATUS_SUCCESS)
        return errorf("%s: cublasGemmEx [%lld x %lld x %lld, %s -> %s] failed: %s", op, (long long)k->M,
                      (long long)k->N, (long long)k->K, dtype_name(k->ab), dtype_name(k->c), cublasGetStatusString(r));
    if (!bias) return STATUS_OK;
    const int64_t n = k->M * k->N, threads = 256, blocks = (n + threads - 1) / threads;
    const unsigned grid = (unsigned)(blocks < 65535 * 16 ? blocks : 65535 * 16);
    if (k->c == DT_BF16)
        bias_add_rows<<<grid, threads, 0, st->stream>>>((bf16 *)C, (const bf16 *)bias, k->M, k->N, k->ldc);
    else
        bias_add_rows<<<grid, threads, 0, st->stream>>>((float *)C, (const float *)bias, k->M, k->N, k->ldc);
    CUDA_TRY_LAUNCH();
    return STATUS_OK;
}

Status cuda_gemm(Backend *be, const char *op, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                 const void *A, int64_t lda, const void *B, int64_t ldb, DType ab, float beta, void *C, int64_t ldc,
                 DType c, const void *bias) {
    return cuda_gemm_into(be, op, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, ab, beta, C, C, ldc, c, bias);
}

Status cuda_gemm_into(Backend *be, const char *op, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                      float alpha, const void *A, int64_t lda, const void *B, int64_t ldb, DType ab, float beta,
                      const void *c_in, void *C, int64_t ldc, DType c, const void *bias) {
    CudaState *st = cuda_state(be);
    if (M == 0 || N == 0) return STATUS_OK;
    if (beta != 0.0f && c_in != C && ((ab == DT_F32 && c == DT_F32 && !bias) || K == 0)) {
        /* cuBLAS's sgemm (and the empty sum) read and write one C: start it as a copy of c_in. */
        size_t pitch = (size_t)ldc * dtype_size(c);
        CUDA_TRY(cudaMemcpy2DAsync(C, pitch, c_in, pitch, (size_t)N * dtype_size(c), (size_t)M,
                                   cudaMemcpyDeviceToDevice, st->stream));
        c_in = C;
    }
    if (ab == DT_F32 && c == DT_F32 && !bias)
        return cuda_sgemm(be, op, trans_a, trans_b, M, N, K, alpha, (const float *)A, lda, (const float *)B, ldb, beta,
                          (float *)C, ldc);
    if (K == 0 && !bias) {
        if (beta == 0.0f)
            CUDA_TRY(cudaMemset2DAsync(C, (size_t)ldc * dtype_size(c), 0, (size_t)N * dtype_size(c), (size_t)M,
                                       st->stream));
        return STATUS_OK;
    }
    if (K == 0) return errorf("%s: a biased product with an empty inner dimension", op);
    LtPlan key = {st->device, trans_a, trans_b, bias != NULL, beta != 0.0f, M, N, K, lda, ldb, ldc, ab, c,
                  pointer_alignment(A), pointer_alignment(B), pointer_alignment(C), pointer_alignment(c_in), {}, 0,
                  LT_UNTRIED, {NULL, NULL, NULL, NULL, NULL}};
    LtPlan *plan = NULL;
    for (int i = 0; i < lt_plan_count && !plan; i++)
        if (same_problem(&lt_plans[i], &key)) plan = &lt_plans[i];
    if (!plan) {
        Status s = lt_problem_build(&key.problem, &key);
        if (s == STATUS_OK) s = lt_pick_algo(st, &key.problem, &key);
        if (key.problem.pref) cublasLtMatmulPreferenceDestroy(key.problem.pref);
        key.problem.pref = NULL;
        if (s != STATUS_OK) {
            lt_problem_free(&key.problem);
            return error_context("%s: ", op);
        }
        int slot = lt_plan_count < LT_PLAN_CACHE ? lt_plan_count++ : lt_plan_next++ % LT_PLAN_CACHE;
        if (lt_plans[slot].problem.desc) lt_problem_free(&lt_plans[slot].problem); /* evicted */
        lt_plans[slot] = key;
        plan = &lt_plans[slot];
    }
    if (plan->chosen == LT_GEMM_EX) return gemm_ex(st, op, plan, alpha, A, B, beta, c_in, C, bias);
    const LtProblem *p = &plan->problem;
    if (bias && cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias) !=
                    CUBLAS_STATUS_SUCCESS)
        return errorf("%s: setting cuBLASLt's bias pointer failed", op);
    /* The first call tries the offered algorithms in order and keeps the first that runs; later
     * calls run that one, whose failure is then an error. */
    const int first = plan->chosen == LT_UNTRIED ? 0 : plan->chosen;
    const int last = plan->chosen == LT_UNTRIED ? plan->n_algos - 1 : plan->chosen;
    cublasStatus_t r = CUBLAS_STATUS_NOT_SUPPORTED;
    for (int i = first; i <= last; i++) {
        r = cublasLtMatmul(st->cublaslt, p->desc, &alpha, B, p->a, A, p->b, &beta, c_in, p->c, C, p->c,
                           &plan->algos[i], st->workspace, st->workspace_bytes, st->stream);
        if (r == CUBLAS_STATUS_SUCCESS) {
            plan->chosen = i;
            return STATUS_OK;
        }
    }
    if (plan->chosen == LT_UNTRIED) {
        plan->chosen = LT_GEMM_EX;
        return gemm_ex(st, op, plan, alpha, A, B, beta, c_in, C, bias);
    }
    return errorf("%s: cublasLtMatmul [%lld x %lld x %lld, %s -> %s] failed: %s", op, (long long)M, (long long)N,
                  (long long)K, dtype_name(ab), dtype_name(c), cublasGetStatusString(r));
}
