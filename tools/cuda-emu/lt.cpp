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
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t, cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                              cublasLtMatrixLayout_t, cublasLtMatrixLayout_t, cublasLtMatmulPreference_t, int,
                                              cublasLtMatmulHeuristicResult_t *r, int *found) { memset(r, 0, sizeof *r); *found = 1; return 0; }
static float get(cudaDataType_t t, const void *p, size_t i) { return t == CUDA_R_16BF ? __bfloat162float(((const __nv_bfloat16 *)p)[i]) : ((const float *)p)[i]; }
static void put(cudaDataType_t t, void *p, size_t i, float v) { if (t == CUDA_R_16BF) ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v); else ((float *)p)[i] = v; }
/* D = alpha op(A) op(B) + beta C (+ bias per row of D), column-major; products in f32. */
cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t d, const void *alpha, const void *A, cublasLtMatrixLayout_t la,
                              const void *B, cublasLtMatrixLayout_t lb, const void *beta, const void *C, cublasLtMatrixLayout_t lc,
                              void *D, cublasLtMatrixLayout_t ld, const cublasLtMatmulAlgo_t *, void *, size_t, cudaStream_t) {
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
