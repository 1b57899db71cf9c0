/* The measured bf16 dense matrix-product rate of a GPU: the denominator of the bench's MFU, so that
 * MFU says how close a step comes to what this card, its clocks and this cuBLASLt actually deliver
 * rather than to a datasheet figure. */
#pragma once

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    double tflops;          /* 2 n^3 over the median run, in 1e12 FLOP/s */
    char device_name[256];  /* cudaDeviceProp.name of the device measured */
} CudaMatmulPeak;

/* Times an [n x n] x [n x n] bf16 product with float32 accumulation and bf16 output through
 * cuBLASLt (its first heuristic choice) on `device`: a few untimed runs for clocks and library
 * start-up, then `reps` runs (at most 64) each between two CUDA events. The operands are random
 * bf16 values in [-1, 1) (zeros run faster than real data). Allocates 3 n^2 bf16 values and a
 * 32 MiB workspace for the duration of the call and frees them all. */
Status cuda_matmul_peak(int device, int n, int reps, CudaMatmulPeak *out);

#ifdef __cplusplus
}
#endif
