/* The CPU backend's ops: float32, OpenMP-parallel, matrix products through OpenBLAS. Each is the
 * reference its CUDA twin is checked against; see core/backend.h for the contracts. */
#pragma once

#include <cblas.h>

#include "core/backend.h"

/* Backend-private state. */
typedef struct {
    int threads;
} CpuState;

Status cpu_backend_create(Backend **out, BackendOptions opts);

/* OpenBLAS (blas_threads.c). cpu_blas_init makes every OpenBLAS call single-threaded, whichever
 * of Debian's builds (OpenMP, pthreads, sequential) the process loaded, without changing OpenMP's
 * thread count; once per process, thread-safe. The backend and cpu_sgemm call it. */
void cpu_blas_init(void);
/* "openmp", "pthreads" or "sequential": how the loaded OpenBLAS was built to thread. */
const char *cpu_blas_threading(void);
/* "OpenBLAS 0.3.21 (pthreads), Haswell, 8 threads, 1 per call": the library, its threading, the
 * kernels it chose for this CPU, and the OpenMP threads the tiles run on. */
void cpu_blas_describe(char *buf, size_t size);

/* Rows per block in every reduction over rows: partial sums are formed per fixed block and added
 * in block order, so the result does not depend on how many threads there are. */
enum { CPU_REDUCE_BLOCK = 1024 };

/* C[M, N] = alpha op(A)[M, K] op(B)[K, N] + beta C, row-major (cblas conventions; trans_* are
 * CblasNoTrans/CblasTrans), computed as tiles of C over OpenMP threads, their sides chosen from M and
 * N alone (matmul.c), each tile one single-threaded sgemm over the whole of K. OpenBLAS's own threading is not bitwise
 * stable across thread counts (0.3.21 differs for M = 1 and for K much larger than M and N). */
void cpu_sgemm(CBLAS_TRANSPOSE trans_a, CBLAS_TRANSPOSE trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
               int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

Status cpu_embedding_forward(Backend *be, Tensor out, Tensor ids, Tensor table);
Status cpu_embedding_backward(Backend *be, Tensor dtable, Tensor dout, Tensor ids);
Status cpu_rmsnorm_forward(Backend *be, Tensor y, Tensor rstd, Tensor x, Tensor w, float eps);
Status cpu_rmsnorm_backward(Backend *be, Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w, Tensor rstd);
Status cpu_rmsnorm_residual_backward(Backend *be, Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w, Tensor rstd,
                                     Tensor dres);
Status cpu_linear_forward(Backend *be, Tensor y, Tensor x, Tensor w, Tensor b);
Status cpu_linear_backward(Backend *be, Tensor dx, Tensor dw, Tensor db, Tensor dy, Tensor x, Tensor w);
Status cpu_linear_residual_forward(Backend *be, Tensor y, Tensor x, Tensor w, Tensor r);
Status cpu_rope_forward(Backend *be, Tensor x, int64_t offset, Tensor cos, Tensor sin, Tensor pos);
Status cpu_rope_backward(Backend *be, Tensor dx, int64_t offset, Tensor cos, Tensor sin, Tensor pos);
Status cpu_attention_forward(Backend *be, Tensor out, Tensor lse, Tensor q, Tensor k, Tensor k_shared,
                             Tensor v, float scale);
Status cpu_attention_backward(Backend *be, Tensor dq, Tensor dk, Tensor dk_shared, Tensor dv, Tensor dout,
                              Tensor out, Tensor lse, Tensor q, Tensor k, Tensor k_shared, Tensor v,
                              float scale);
Status cpu_attention_decode(Backend *be, Tensor out, Tensor q, Tensor k, Tensor k_shared, Tensor v, float scale);
Status cpu_swiglu_forward(Backend *be, Tensor out, Tensor gate, Tensor up);
Status cpu_swiglu_backward(Backend *be, Tensor dgate, Tensor dup, Tensor dout, Tensor gate, Tensor up);
Status cpu_lm_head_loss(Backend *be, LossSums *sums, Tensor dh, Tensor dw, Tensor h, Tensor w, Tensor ht,
                        Tensor wt, Tensor targets, LossConfig cfg, float grad_scale);
Status cpu_lm_head_loss_topk(Backend *be, LossSums *sums, Tensor dh, Tensor dw, Tensor h, Tensor w,
                             Tensor teacher_logprobs, Tensor teacher_ids, Tensor targets, LossConfig cfg,
                             float grad_scale);
Status cpu_adamw_step(Backend *be, Tensor param, Tensor grad, Tensor m, Tensor v, Tensor param_copy,
                      AdamWConfig cfg);
Status cpu_adamw_step_multi(Backend *be, const AdamWParam *params, int n, AdamWConfig cfg, float grad_scale);
Status cpu_sum_squares(Backend *be, double *out, Tensor t);
Status cpu_sum_squares_multi(Backend *be, double *out, const Tensor *ts, int n);
Status cpu_scale(Backend *be, Tensor t, float s);
Status cpu_accumulate(Backend *be, Tensor y, Tensor x);
Status cpu_cast(Backend *be, Tensor dst, Tensor src);

/* bf16 storage (bf16_storage.c): replaces the entries of a float32 op table by wrappers that pass
 * float32 calls straight through and run bf16 ones on float32 copies, rounding what they wrote. */
void cpu_ops_add_bf16_storage(Ops *ops);
