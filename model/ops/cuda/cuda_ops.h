/* The CUDA backend's ops, each checked against its CPU twin by the gpu-labelled tests; contracts
 * in core/backend.h. Storage is f32 or bf16 (storage.cuh), math f32. */
#pragma once

#include <string.h>

#include "core/backend.h"

Status cuda_embedding_forward(Backend *be, Tensor out, Tensor ids, Tensor table);
Status cuda_embedding_backward(Backend *be, Tensor dtable, Tensor dout, Tensor ids);
Status cuda_rmsnorm_forward(Backend *be, Tensor y, Tensor rstd, Tensor x, Tensor w, float eps);
Status cuda_rmsnorm_backward(Backend *be, Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w, Tensor rstd);
Status cuda_rmsnorm_residual_backward(Backend *be, Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w, Tensor rstd,
                                      Tensor dres);
Status cuda_linear_forward(Backend *be, Tensor y, Tensor x, Tensor w, Tensor b);
Status cuda_linear_backward(Backend *be, Tensor dx, Tensor dw, Tensor db, Tensor dy, Tensor x, Tensor w);
Status cuda_linear_residual_forward(Backend *be, Tensor y, Tensor x, Tensor w, Tensor r);
Status cuda_rope_forward(Backend *be, Tensor x, int64_t offset, Tensor cos, Tensor sin, Tensor pos);
Status cuda_rope_backward(Backend *be, Tensor dx, int64_t offset, Tensor cos, Tensor sin, Tensor pos);
Status cuda_attention_forward(Backend *be, Tensor out, Tensor lse, Tensor q, Tensor k, Tensor k_shared,
                              Tensor v, float scale);
Status cuda_attention_backward(Backend *be, Tensor dq, Tensor dk, Tensor dk_shared, Tensor dv, Tensor dout,
                               Tensor out, Tensor lse, Tensor q, Tensor k, Tensor k_shared, Tensor v,
                               float scale);
Status cuda_attention_decode(Backend *be, Tensor out, Tensor q, Tensor k, Tensor k_shared, Tensor v, float scale);
Status cuda_swiglu_forward(Backend *be, Tensor out, Tensor gate, Tensor up);
Status cuda_swiglu_backward(Backend *be, Tensor dgate, Tensor dup, Tensor dout, Tensor gate, Tensor up);
Status cuda_lm_head_loss(Backend *be, LossSums *sums, Tensor dh, Tensor dw, Tensor h, Tensor w, Tensor ht,
                         Tensor wt, Tensor targets, LossConfig cfg, float grad_scale);
Status cuda_lm_head_loss_topk(Backend *be, LossSums *sums, Tensor dh, Tensor dw, Tensor h, Tensor w,
                              Tensor teacher_logprobs, Tensor teacher_ids, Tensor targets, LossConfig cfg,
                              float grad_scale);
Status cuda_adamw_step(Backend *be, Tensor param, Tensor grad, Tensor m, Tensor v, Tensor param_copy,
                       AdamWConfig cfg);
Status cuda_cast(Backend *be, Tensor dst, Tensor src);
Status cuda_adamw_step_multi(Backend *be, const AdamWParam *params, int n, AdamWConfig cfg, float grad_scale);
Status cuda_sum_squares(Backend *be, double *out, Tensor t);
Status cuda_sum_squares_multi(Backend *be, double *out, const Tensor *ts, int n);
Status cuda_scale(Backend *be, Tensor t, float s);
Status cuda_accumulate(Backend *be, Tensor y, Tensor x);

/* The op table of the CUDA backend (also what the CPU emulation of tools/cuda-emu installs). */
static inline Ops cuda_ops_table(void) {
    Ops o;
    memset(&o, 0, sizeof o);
    o.embedding_forward = cuda_embedding_forward;
    o.embedding_backward = cuda_embedding_backward;
    o.rmsnorm_forward = cuda_rmsnorm_forward;
    o.rmsnorm_backward = cuda_rmsnorm_backward;
    o.rmsnorm_residual_backward = cuda_rmsnorm_residual_backward;
    o.linear_forward = cuda_linear_forward;
    o.linear_backward = cuda_linear_backward;
    o.linear_residual_forward = cuda_linear_residual_forward;
    o.rope_forward = cuda_rope_forward;
    o.rope_backward = cuda_rope_backward;
    o.attention_forward = cuda_attention_forward;
    o.attention_backward = cuda_attention_backward;
    o.attention_decode = cuda_attention_decode;
    o.swiglu_forward = cuda_swiglu_forward;
    o.swiglu_backward = cuda_swiglu_backward;
    o.lm_head_loss = cuda_lm_head_loss;
    o.lm_head_loss_topk = cuda_lm_head_loss_topk;
    o.adamw_step = cuda_adamw_step;
    o.adamw_step_multi = cuda_adamw_step_multi;
    o.sum_squares = cuda_sum_squares;
    o.sum_squares_multi = cuda_sum_squares_multi;
    o.scale = cuda_scale;
    o.accumulate = cuda_accumulate;
    o.cast = cuda_cast;
    return o;
}

/* Row-major C[M, N] = alpha op(A)[M, K] op(B)[K, N] + beta C through cuBLAS in float32 (no TF32),
 * the conventions of cpu_sgemm: trans_a/trans_b are 0 or 1, lda/ldb/ldc row strides. beta is 0
 * (C overwritten) or 1 (accumulated); K = 0 is the empty sum. `op` names the caller in errors. */
Status cuda_sgemm(Backend *be, const char *op, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                  float alpha, const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                  int64_t ldc);

/* The same product with A and B both of dtype ab (f32 or bf16) and C of dtype c, float32
 * accumulation, through cuBLASLt (all-f32 without bias goes to cuda_sgemm). bias (dtype c, [N],
 * may be NULL) is added to every row of C by the product's epilogue. */
Status cuda_gemm(Backend *be, const char *op, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                 const void *A, int64_t lda, const void *B, int64_t ldb, DType ab, float beta, void *C, int64_t ldc,
                 DType c, const void *bias);
/* cuda_gemm with C read from c_in and written to C (same layout; c_in may be C): C = alpha op(A)
 * op(B) + beta c_in (+ bias), so a residual add rides in the product's epilogue. */
Status cuda_gemm_into(Backend *be, const char *op, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                      float alpha, const void *A, int64_t lda, const void *B, int64_t ldb, DType ab, float beta,
                      const void *c_in, void *C, int64_t ldc, DType c, const void *bias);

/* An index range check queued on the stream whose verdict is read at the next synchronisation
 * point (cuda_index_checks_resolve): the op that asked, what it checked, and how to word a fault. */
typedef struct CudaIndexCheck CudaIndexCheck;
typedef Status (*CudaIndexReport)(const CudaIndexCheck *check, int64_t at, int32_t value);
struct CudaIndexCheck {
    const char *op;
    const int32_t *ids;
    int64_t n, limit;
    int has_skip;
    int32_t skip;
    CudaIndexReport report;
};
/* Queues a check that every ids[n] lies in [0, limit) (ids equal to `skip` allowed when has_skip)
 * and returns at once; a fault is reported, through `report` and naming the first bad position, by
 * cuda_index_checks_resolve at the next synchronisation point (synchronize, upload, download, or
 * an op that reads a result back). Kernels that index with ids must therefore tolerate bad ones
 * (skip them) rather than trust the check. An identical check still queued is not repeated. */
Status cuda_check_indices(Backend *be, const char *op, Tensor ids, int64_t limit, int has_skip, int32_t skip,
                          CudaIndexReport report);
/* Waits for the stream and reports the first queued index check that found a fault (in the order
 * the checks were queued), clearing the queue either way. */
Status cuda_index_checks_resolve(Backend *be);
/* The device words of the checks (at backend creation, after the stream exists). */
Status cuda_index_checks_init(Backend *be);
