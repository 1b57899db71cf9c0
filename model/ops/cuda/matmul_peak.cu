/* The bf16 dense matrix-product peak of the GPU as cuBLASLt reaches it: the bench divides its
 * achieved rate by this to report MFU. A large square product (8192^3 by default) is the easiest
 * shape there is for the tensor cores, so its rate is what any training step's matrix products can
 * at best approach on this card, at its present clocks, with this library. */
#include "matmul_peak.h"

#include <cuda_bf16.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_check.h"

enum { PEAK_WARMUP_RUNS = 3, PEAK_MAX_REPS = 64 };
static const size_t PEAK_WORKSPACE_BYTES = 32u << 20;

/* Everything the measurement holds, so that one function can free it whatever step failed. */
typedef struct {
    cudaStream_t stream;
    cublasLtHandle_t lt;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a_layout, b_layout, d_layout;
    cublasLtMatmulPreference_t pref;
    __nv_bfloat16 *a, *b, *d;
    void *workspace;
    cudaEvent_t events[PEAK_MAX_REPS + 1];
    int n_events;
} PeakRun;

/* x[i] = a value in [-1, 1) drawn from a hash of (i, seed): random data without a host copy. */
__global__ void fill_uniform_bf16(__nv_bfloat16 *x, int64_t n, uint32_t seed) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 0x9E3779B1u ^ seed;
        h ^= h >> 16;
        h *= 0x85EBCA6Bu;
        h ^= h >> 13;
        h *= 0xC2B2AE35u;
        h ^= h >> 16;
        x[i] = __float2bfloat16((float)(h >> 8) * (2.0f / 16777216.0f) - 1.0f);
    }
}

static int compare_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static Status peak_run(PeakRun *r, int device, int n, int reps, CudaMatmulPeak *out) {
    CUDA_TRY(cudaSetDevice(device));
    cudaDeviceProp prop;
    CUDA_TRY(cudaGetDeviceProperties(&prop, device));
    snprintf(out->device_name, sizeof out->device_name, "%s", prop.name);
    CUDA_TRY(cudaStreamCreateWithFlags(&r->stream, cudaStreamNonBlocking));
    size_t elems = (size_t)n * (size_t)n;
    CUDA_TRY(cudaMalloc((void **)&r->a, elems * sizeof(__nv_bfloat16)));
    CUDA_TRY(cudaMalloc((void **)&r->b, elems * sizeof(__nv_bfloat16)));
    CUDA_TRY(cudaMalloc((void **)&r->d, elems * sizeof(__nv_bfloat16)));
    CUDA_TRY(cudaMalloc(&r->workspace, PEAK_WORKSPACE_BYTES));
    fill_uniform_bf16<<<1024, 256, 0, r->stream>>>(r->a, (int64_t)elems, 0x1234567u);
    CUDA_TRY_LAUNCH();
    fill_uniform_bf16<<<1024, 256, 0, r->stream>>>(r->b, (int64_t)elems, 0x89abcdeu);
    CUDA_TRY_LAUNCH();

    /* Column-major D[n, n] = A^T B with A and B stored [k, n]: the "TN" layout, the one the
     * tensor-core kernels read without any transposition of their tiles. */
    CUBLAS_TRY(cublasLtCreate(&r->lt));
    CUBLAS_TRY(cublasLtMatmulDescCreate(&r->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(r->desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof trans_a));
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(r->desc, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof trans_b));
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&r->a_layout, CUDA_R_16BF, n, n, n));
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&r->b_layout, CUDA_R_16BF, n, n, n));
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&r->d_layout, CUDA_R_16BF, n, n, n));
    CUBLAS_TRY(cublasLtMatmulPreferenceCreate(&r->pref));
    size_t ws = PEAK_WORKSPACE_BYTES;
    CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(r->pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                    sizeof ws));
    cublasLtMatmulHeuristicResult_t choice;
    int found = 0;
    CUBLAS_TRY(cublasLtMatmulAlgoGetHeuristic(r->lt, r->desc, r->a_layout, r->b_layout, r->d_layout, r->d_layout,
                                              r->pref, 1, &choice, &found));
    if (found == 0) return errorf("matmul peak: cuBLASLt offers no algorithm for a bf16 [%d]^3 product", n);

    const float alpha = 1.0f, beta = 0.0f;
    for (int i = 0; i < PEAK_WARMUP_RUNS; i++)
        CUBLAS_TRY(cublasLtMatmul(r->lt, r->desc, &alpha, r->a, r->a_layout, r->b, r->b_layout, &beta, r->d,
                                  r->d_layout, r->d, r->d_layout, &choice.algo, r->workspace, PEAK_WORKSPACE_BYTES,
                                  r->stream));
    /* Back-to-back runs with an event between each pair: run i lies between events i and i + 1. */
    for (r->n_events = 0; r->n_events <= reps; r->n_events++)
        CUDA_TRY(cudaEventCreate(&r->events[r->n_events]));
    CUDA_TRY(cudaEventRecord(r->events[0], r->stream));
    for (int i = 0; i < reps; i++) {
        CUBLAS_TRY(cublasLtMatmul(r->lt, r->desc, &alpha, r->a, r->a_layout, r->b, r->b_layout, &beta, r->d,
                                  r->d_layout, r->d, r->d_layout, &choice.algo, r->workspace, PEAK_WORKSPACE_BYTES,
                                  r->stream));
        CUDA_TRY(cudaEventRecord(r->events[i + 1], r->stream));
    }
    CUDA_TRY(cudaStreamSynchronize(r->stream));
    float ms[PEAK_MAX_REPS];
    for (int i = 0; i < reps; i++) CUDA_TRY(cudaEventElapsedTime(&ms[i], r->events[i], r->events[i + 1]));
    qsort(ms, (size_t)reps, sizeof ms[0], compare_float);
    float median = reps % 2 ? ms[reps / 2] : 0.5f * (ms[reps / 2 - 1] + ms[reps / 2]);
    if (!(median > 0)) return errorf("matmul peak: the median run took %g ms", (double)median);
    out->tflops = 2.0 * (double)n * (double)n * (double)n / ((double)median * 1e-3) / 1e12;
    return STATUS_OK;
}

/* Frees whatever peak_run created; errors here cannot change the measurement, so none is returned. */
static void peak_free(PeakRun *r) {
    if (r->stream) cudaStreamSynchronize(r->stream);
    for (int i = 0; i < r->n_events; i++) cudaEventDestroy(r->events[i]);
    if (r->pref) cublasLtMatmulPreferenceDestroy(r->pref);
    if (r->d_layout) cublasLtMatrixLayoutDestroy(r->d_layout);
    if (r->b_layout) cublasLtMatrixLayoutDestroy(r->b_layout);
    if (r->a_layout) cublasLtMatrixLayoutDestroy(r->a_layout);
    if (r->desc) cublasLtMatmulDescDestroy(r->desc);
    if (r->lt) cublasLtDestroy(r->lt);
    if (r->workspace) cudaFree(r->workspace);
    if (r->d) cudaFree(r->d);
    if (r->b) cudaFree(r->b);
    if (r->a) cudaFree(r->a);
    if (r->stream) cudaStreamDestroy(r->stream);
    cudaGetLastError(); /* leave no sticky error from a failed step behind for the caller */
}

extern "C" Status cuda_matmul_peak(int device, int n, int reps, CudaMatmulPeak *out) {
    memset(out, 0, sizeof *out);
    if (n < 1 || reps < 1 || reps > PEAK_MAX_REPS)
        return errorf("matmul peak: size %d and repetitions %d (expected n >= 1 and 1 to %d repetitions)", n, reps,
                      PEAK_MAX_REPS);
    PeakRun r = {};
    Status st = peak_run(&r, device, n, reps, out);
    peak_free(&r);
    return st;
}
