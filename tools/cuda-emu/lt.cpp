/* cuBLASLt's matrix product emulated on the CPU: column-major, bf16 or f32 operands, float32
 * accumulation, alpha/beta and the bias epilogue. */
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cublasLt.h>
#include <stdio.h>
#include <stdlib.h>
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t, cudaDataType_t) { *d = new EmuLtDesc{0, 0, 1, CUDA_R_32F, nullptr}; return 0; }
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a, const void *v, size_t) {
    switch (a) {
    case CUBLASLT_MATMUL_DESC_TRANSA: d->ta = *(const int *)v; break;
    case CUBLASLT_MATMUL_DESC_TRANSB: d->tb = *(const int *)v; break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE: d->epilogue = *(const int *)v; break;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: d->bias = *(const void *const *)v; break;
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: d->bias_type = *(const cudaDataType_t *)v; break;
    }
    return 0;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) { delete d; return 0; }
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType_t t, uint64_t rows, uint64_t cols, int64_t ld) {
    if (ld < (int64_t)rows) { fprintf(stderr, "emu lt: ld %lld < rows %llu\n", (long long)ld, (unsigned long long)rows); return 7; }
    *l = new EmuLtLayout{t, rows, cols, ld}; return 0;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) { delete l; return 0; }
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *p) { *p = new int(0); return 0; }
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t, cublasLtMatmulPreferenceAttributes_t, const void *, size_t) { return 0; }
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) { delete p; return 0; }
static int env_int(const char *name, int fallback) { const char *e = getenv(name); return e && *e ? atoi(e) : fallback; }
/* What the fallback paths did, printed at exit when any ran, so that a run can check they were taken. */
static long refused_algos, gemm_ex_products;
static void report_counts() {
    if (refused_algos || gemm_ex_products)
        fprintf(stderr, "emu lt: %ld cuBLASLt algorithm(s) refused, %ld cublasGemmEx product(s)\n", refused_algos, gemm_ex_products);
}
/* Algorithm i carries i in its first word; the first EMU_LT_FAILING_ALGOS of them are refused. */
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t, cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                              cublasLtMatrixLayout_t, cublasLtMatrixLayout_t, cublasLtMatmulPreference_t, int requested,
                                              cublasLtMatmulHeuristicResult_t *r, int *found) {
    static int registered = 0;
    if (!registered) { atexit(report_counts); registered = 1; }
    int n = env_int("EMU_LT_ALGOS", 1);
    if (n > requested) n = requested;
    for (int i = 0; i < n; i++) { memset(&r[i], 0, sizeof r[i]); r[i].algo.data[0] = (uint64_t)i; }
    *found = n;
    return n > 0 ? 0 : CUBLAS_STATUS_NOT_SUPPORTED;
}
static float get(cudaDataType_t t, const void *p, size_t i) { return t == CUDA_R_16BF ? __bfloat162float(((const __nv_bfloat16 *)p)[i]) : ((const float *)p)[i]; }
static void put(cudaDataType_t t, void *p, size_t i, float v) { if (t == CUDA_R_16BF) ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v); else ((float *)p)[i] = v; }
/* D = alpha op(A) op(B) + beta C (+ bias per row of D), column-major; products in f32. */
cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t d, const void *alpha, const void *A, cublasLtMatrixLayout_t la,
                              const void *B, cublasLtMatrixLayout_t lb, const void *beta, const void *C, cublasLtMatrixLayout_t lc,
                              void *D, cublasLtMatrixLayout_t ld, const cublasLtMatmulAlgo_t *algo, void *, size_t, cudaStream_t) {
    if ((int64_t)algo->data[0] < env_int("EMU_LT_FAILING_ALGOS", 0)) { refused_algos++; return CUBLAS_STATUS_NOT_SUPPORTED; }
    uint64_t m = d->ta ? la->cols : la->rows, k = d->ta ? la->rows : la->cols;
    uint64_t kb = d->tb ? lb->cols : lb->rows, n = d->tb ? lb->rows : lb->cols;
    if (k != kb || lc->rows != m || lc->cols != n || ld->rows != m || ld->cols != n) { fprintf(stderr, "emu lt: shape mismatch\n"); return 7; }
    if (la->type != lb->type) { fprintf(stderr, "emu lt: A and B types differ\n"); return 15; }
    float al = *(const float *)alpha, be = *(const float *)beta;
    for (uint64_t j = 0; j < n; j++)
        for (uint64_t i = 0; i < m; i++) {
            float s = 0;
            for (uint64_t l = 0; l < k; l++) {
                float a = d->ta ? get(la->type, A, l + i * la->ld) : get(la->type, A, i + l * la->ld);
                float b = d->tb ? get(lb->type, B, j + l * lb->ld) : get(lb->type, B, l + j * lb->ld);
                s += a * b;
            }
            float v = al * s;
            if (be != 0.0f) v += be * get(lc->type, C, i + j * lc->ld);
            if (d->epilogue == CUBLASLT_EPILOGUE_BIAS) v += get(d->bias_type, d->bias, i);
            put(ld->type, D, i + j * ld->ld, v);
        }
    return 0;
}
/* cublasGemmEx: C = alpha op(A) op(B) + beta C, column-major, bf16 or f32 operands and output. */
cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType_t ta_type, int lda, const void *B,
                            cudaDataType_t tb_type, int ldb, const void *beta, void *C, cudaDataType_t tc, int ldc,
                            cublasComputeType_t, cublasGemmAlgo_t) {
    if (m < 1 || n < 1 || k < 1 || lda < (ta == CUBLAS_OP_N ? m : k) || ldb < (tb == CUBLAS_OP_N ? k : n) || ldc < m) {
        fprintf(stderr, "emu gemmex: bad dims or leading dimensions\n");
        return 7;
    }
    if (ta_type != tb_type) { fprintf(stderr, "emu gemmex: A and B types differ\n"); return 15; }
    gemm_ex_products++;
    float al = *(const float *)alpha, be = *(const float *)beta;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            float s = 0;
            for (int l = 0; l < k; l++) {
                float a = ta == CUBLAS_OP_N ? get(ta_type, A, i + (size_t)l * lda) : get(ta_type, A, l + (size_t)i * lda);
                float b = tb == CUBLAS_OP_N ? get(tb_type, B, l + (size_t)j * ldb) : get(tb_type, B, j + (size_t)l * ldb);
                s += a * b;
            }
            float v = al * s;
            if (be != 0.0f) v += be * get(tc, C, i + (size_t)j * ldc);
            put(tc, C, i + (size_t)j * ldc, v);
        }
    return 0;
}
