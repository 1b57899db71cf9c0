/* The LM head fused with the distillation loss on the GPU: per chunk of tokens, cuBLAS forms the
 * student and teacher logits in f32, one block per token turns its row into KL + CE terms and the
 * logits' gradient, and cuBLAS takes that gradient back to dh and dw. With bf16 storage the
 * gradient is written rounded to bf16 for those two products (as autocast does), dw accumulating
 * in f32. Per-token terms are summed on the host in token order, as on the CPU. */
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>

#include "block_reduce.cuh"
#include "cuda_ops.h"
#include "cuda_state.h"
#include "storage.cuh"

/* Default budget for the chunk buffers (student and teacher together): a few hundred tokens at a
 * 128k vocabulary, enough rows for cuBLAS to run near its peak. */
static const int64_t LOSS_CHUNK_BYTES = 256ll << 20;

/* What went wrong in a row; FAULT_IGNORED_HIDDEN is checked first, before any logits exist. */
enum { FAULT_NONE, FAULT_STUDENT, FAULT_TEACHER, FAULT_LOSS, FAULT_IGNORED_HIDDEN };

typedef struct {
    float loss, kl, ce;
    int32_t counted, top1_agree, fault;
} RowRecord;

typedef struct {
    float kl_weight, ce_weight, temperature, grad_scale;
    int32_t ignore_index;
    int grad_wanted;
} RowParams;

__device__ static int is_finite(float x) { return fabsf(x) <= FLT_MAX; }

/* Every token's record zeroed; an ignored token whose hidden state holds NaN or Inf is marked, since
 * its zero gradient would still meet that state in dw += dz^T h. One block per token. */
template <typename S>
__global__ void loss_records_init(RowRecord *rec, const S *h, const int32_t *targets, int64_t N, int64_t D,
                                  int32_t ignore_index) {
    __shared__ int shared[REDUCE_BLOCK_THREADS];
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        int bad = 0;
        if (targets[n] == ignore_index)
            for (int64_t d = threadIdx.x; d < D; d += blockDim.x) bad |= !is_finite(to_f32(h[n * D + d]));
        bad = block_sum(bad, shared);
        if (threadIdx.x == 0) {
            RowRecord r = {0.0f, 0.0f, 0.0f, 0, 0, bad ? FAULT_IGNORED_HIDDEN : FAULT_NONE};
            rec[n] = r;
        }
    }
}

/* Max and lowest argmax of x[0..V) over the block, and whether every value is finite. */
__device__ static void row_max(const float *x, int64_t V, float *fs, long long *ls, int *is, float *max_out,
                               long long *argmax_out, int *finite_out) {
    float m = -INFINITY;
    long long at = LLONG_MAX;
    int bad = 0;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
        float xv = x[v];
        bad |= !is_finite(xv);
        if (xv > m) {
            m = xv;
            at = v;
        }
    }
    block_max_argmax(m, at, fs, ls, max_out, argmax_out);
    *finite_out = block_sum(bad, is) == 0;
}

/* sum over v of exp((x[v] - max) / T) */
__device__ static float row_exp_sum(const float *x, int64_t V, float max, float T, float *fs) {
    float s = 0.0f;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) s += expf((x[v] - max) / T);
    return block_sum(s, fs);
}

/* One block per token of the chunk: its loss terms into rec[n0 + i] and, when wanted, dz's row set
 * to d(grad_scale * loss)/dz (dz may be z itself: each thread reads its elements before writing
 * them). zt is NULL without a teacher. */
template <typename G>
__global__ void lm_head_loss_rows(const float *z, G *dz, const float *zt, const int32_t *targets, RowRecord *rec,
                                  int64_t n0, int64_t V, RowParams p) {
    __shared__ float fs[REDUCE_BLOCK_THREADS];
    __shared__ long long ls[REDUCE_BLOCK_THREADS];
    __shared__ int is[REDUCE_BLOCK_THREADS];
    const int64_t i = blockIdx.x, n = n0 + i;
    const float *zr = z + i * V;
    G *dzr = dz + i * V;
    const float *ztr = zt ? zt + i * V : NULL;
    const int32_t target = targets[n];
    /* A target outside the vocabulary is reported by the queued range check; the row is then
     * treated as ignored rather than read out of bounds. */
    if (target == p.ignore_index || target < 0 || target >= V) {
        if (p.grad_wanted)
            for (int64_t v = threadIdx.x; v < V; v += blockDim.x) dzr[v] = from_f32<G>(0.0f);
        return;
    }
    const float T = p.temperature;
    RowRecord r = {0.0f, 0.0f, 0.0f, 1, 0, FAULT_NONE};
    /* Read before the first barrier: after the last one, the thread owning it overwrites it. */
    const float z_target = zr[target];

    float z_max;
    long long z_argmax;
    int finite;
    row_max(zr, V, fs, ls, is, &z_max, &z_argmax, &finite);
    if (!finite) {
        r.fault = FAULT_STUDENT;
        if (threadIdx.x == 0) rec[n] = r;
        return;
    }
    /* Everything below works on max-shifted logits, so log p = (z - max)/T - log_sum. */
    const float sum1 = row_exp_sum(zr, V, z_max, 1.0f, fs);
    const float sum_t = T == 1.0f ? sum1 : row_exp_sum(zr, V, z_max, T, fs);
    const float log_sum_t = logf(sum_t);
    r.ce = logf(sum1) - (z_target - z_max);

    float zt_max = 0.0f, sum_teacher = 1.0f;
    if (ztr) {
        long long zt_argmax;
        row_max(ztr, V, fs, ls, is, &zt_max, &zt_argmax, &finite);
        if (!finite) {
            r.fault = FAULT_TEACHER;
            if (threadIdx.x == 0) rec[n] = r;
            return;
        }
        r.top1_agree = z_argmax == zt_argmax;
        sum_teacher = row_exp_sum(ztr, V, zt_max, T, fs);
        const float log_sum_teacher = logf(sum_teacher), inv_sum_teacher = 1.0f / sum_teacher;
        float kl = 0.0f;
        for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
            float log_pt = (ztr[v] - zt_max) / T - log_sum_teacher;
            float log_ps = (zr[v] - z_max) / T - log_sum_t;
            kl += expf((ztr[v] - zt_max) / T) * inv_sum_teacher * (log_pt - log_ps);
        }
        r.kl = block_sum(kl, fs);
        r.loss = p.kl_weight * T * T * r.kl + p.ce_weight * r.ce;
    } else {
        r.loss = p.ce_weight * r.ce;
    }
    if (!is_finite(r.loss)) {
        r.fault = FAULT_LOSS;
        if (threadIdx.x == 0) rec[n] = r;
        return;
    }
    if (threadIdx.x == 0) rec[n] = r;
    if (!p.grad_wanted) return;

    /* d(T^2 KL)/dz = T (p_s^T - p_t^T); d CE/dz = softmax(z) - onehot(target). Each thread reads and
     * writes only its own elements, so the row is overwritten without a barrier. */
    const float g_kl = p.grad_scale * p.kl_weight * T, g_ce = p.grad_scale * p.ce_weight;
    const float inv_sum1 = 1.0f / sum1, inv_sum_t = 1.0f / sum_t, inv_sum_teacher = 1.0f / sum_teacher;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
        float zv = zr[v];
        float g = g_ce * (expf(zv - z_max) * inv_sum1);
        if (ztr) g += g_kl * (expf((zv - z_max) / T) * inv_sum_t - expf((ztr[v] - zt_max) / T) * inv_sum_teacher);
        if (v == target) g -= g_ce;
        dzr[v] = from_f32<G>(g);
    }
}

static Status row_fault_error(int fault, int64_t token) {
    switch (fault) {
    case FAULT_STUDENT:
        return errorf("lm_head_loss: the student logits of token %lld are not finite (NaN or Inf)", (long long)token);
    case FAULT_TEACHER:
        return errorf("lm_head_loss: the teacher logits of token %lld are not finite (NaN or Inf)", (long long)token);
    case FAULT_LOSS:
        return errorf("lm_head_loss: the loss of token %lld is not finite (NaN or Inf)", (long long)token);
    case FAULT_IGNORED_HIDDEN:
        return errorf("lm_head_loss: the hidden state of token %lld (ignored) is not finite (NaN or Inf)",
                      (long long)token);
    }
    return STATUS_OK;
}

static Status report_bad_target(const CudaIndexCheck *c, int64_t at, int32_t value) {
    return errorf("%s: target %d of token %lld is outside the vocabulary [0, %lld) and is not ignore_index (%d)",
                  c->op, value, (long long)at, (long long)c->limit, c->skip);
}

/* The CPU's checks and messages; the targets' range is checked on the device, and its verdict read
 * with the per-token records. */
static Status check_arguments(Backend *be, LossSums *sums, Tensor dh, Tensor dw, Tensor h, Tensor w, Tensor ht,
                              Tensor wt, Tensor targets, LossConfig cfg, float grad_scale) {
    const char *op = "lm_head_loss";
    if (sums == NULL) return errorf("%s: sums is missing", op);
    DType dt = DT_F32;
    StorageArg args[] = {{"dh", dh}, {"h", h}, {"w", w}, {"ht", ht}, {"wt", wt}};
    TRY(storage_dtype(op, args, 5, &dt));
    TRY(tensor_check_dims(op, "h", h, dt, 2, -1, -1));
    int64_t N = h.shape[0], D = h.shape[1];
    TRY(tensor_check_dims(op, "w", w, dt, 2, -1, D));
    int64_t V = w.shape[0];
    TRY(tensor_check_dims(op, "targets", targets, DT_I32, 1, N));
    if (tensor_present(dh)) TRY(tensor_check_dims(op, "dh", dh, dt, 2, N, D));
    if (tensor_present(dw)) TRY(tensor_check_dims(op, "dw", dw, DT_F32, 2, V, D));
    int64_t Dt = 1;
    if (tensor_present(ht)) {
        TRY(tensor_check_dims(op, "ht", ht, dt, 2, N, -1));
        Dt = ht.shape[1];
        TRY(tensor_check_dims(op, "wt", wt, dt, 2, V, Dt));
    } else if (tensor_present(wt)) {
        return errorf("%s: wt is given but ht is missing (both or neither: no teacher)", op);
    }
    if (V < 1 || D < 1 || Dt < 1)
        return errorf("%s: vocabulary size %lld, hidden size %lld, teacher hidden size %lld: each must be >= 1", op,
                      (long long)V, (long long)D, (long long)Dt);
    if (V > INT_MAX || D > INT_MAX || Dt > INT_MAX)
        return errorf("%s: vocabulary size %lld or hidden size %lld/%lld exceeds BLAS's int range", op, (long long)V,
                      (long long)D, (long long)Dt);
    if (!(cfg.temperature > 0) || !isfinite(cfg.temperature))
        return errorf("%s: temperature must be finite and > 0, got %g", op, cfg.temperature);
    if (!(cfg.kl_weight >= 0) || !isfinite(cfg.kl_weight))
        return errorf("%s: kl_weight must be finite and >= 0, got %g", op, cfg.kl_weight);
    if (!(cfg.ce_weight >= 0) || !isfinite(cfg.ce_weight))
        return errorf("%s: ce_weight must be finite and >= 0, got %g", op, cfg.ce_weight);
    if (!isfinite(grad_scale)) return errorf("%s: grad_scale must be finite, got %g", op, grad_scale);
    if (cfg.chunk_tokens < 0)
        return errorf("%s: chunk_tokens must be >= 0 (0 = default), got %lld", op, (long long)cfg.chunk_tokens);
    return cuda_check_indices(be, op, targets, V, 1, cfg.ignore_index, report_bad_target);
}

Status cuda_lm_head_loss(Backend *be, LossSums *sums, Tensor dh, Tensor dw, Tensor h, Tensor w, Tensor ht, Tensor wt,
                         Tensor targets, LossConfig cfg, float grad_scale) {
    const char *op = "lm_head_loss";
    TRY(check_arguments(be, sums, dh, dw, h, w, ht, wt, targets, cfg, grad_scale));
    const int64_t N = h.shape[0], D = h.shape[1], V = w.shape[0];
    const int teacher = tensor_present(ht);
    const int64_t Dt = teacher ? ht.shape[1] : 0;
    if (N == 0) return STATUS_OK;
    CudaState *st = cuda_state(be);

    const DType dt = h.dtype;
    const int grad_wanted = tensor_present(dh) || tensor_present(dw);
    /* Logits rows are f32; with bf16 storage the gradient has a bf16 buffer of its own. */
    const int64_t grad16 = dt == DT_BF16 && grad_wanted;
    const int64_t row_bytes = (teacher ? 2 : 1) * V * (int64_t)sizeof(float) + (grad16 ? V * 2 : 0);
    int64_t chunk = cfg.chunk_tokens > 0 ? cfg.chunk_tokens : LOSS_CHUNK_BYTES / row_bytes;
    if (chunk < 1) chunk = 1;
    if (chunk > N) chunk = N;
    if (chunk > INT_MAX) chunk = INT_MAX;
    const size_t chunk_bytes = (size_t)chunk * (size_t)V * sizeof(float), rec_bytes = (size_t)N * sizeof(RowRecord);
    const size_t grad16_bytes = grad16 ? (size_t)chunk * (size_t)V * sizeof(bf16) : 0;
    size_t total = 0;
    cuda_scratch_size(&total, chunk_bytes);
    if (teacher) cuda_scratch_size(&total, chunk_bytes);
    cuda_scratch_size(&total, rec_bytes);
    if (grad16) cuda_scratch_size(&total, grad16_bytes);
    void *base;
    TRY(cuda_scratch(be, total, &base));
    char *cursor = (char *)base;
    float *z = (float *)cuda_scratch_take(&cursor, chunk_bytes);                     /* [chunk, V] */
    float *zt = teacher ? (float *)cuda_scratch_take(&cursor, chunk_bytes) : NULL;   /* [chunk, V] */
    RowRecord *rec = (RowRecord *)cuda_scratch_take(&cursor, rec_bytes);             /* [N] */
    bf16 *dz16 = grad16 ? (bf16 *)cuda_scratch_take(&cursor, grad16_bytes) : NULL;   /* [chunk, V] */

    const size_t es = dtype_size(dt);
    const char *hp = (const char *)h.data, *htp = teacher ? (const char *)ht.data : NULL;
    const int32_t *tg = tensor_i32(targets);
    RowParams params = {cfg.kl_weight, cfg.ce_weight, cfg.temperature, grad_scale, cfg.ignore_index, grad_wanted};

    const int init_blocks = (int)(N < 65535 * 8 ? N : 65535 * 8);
    WITH_STORAGE(dt, S,
                 loss_records_init<<<init_blocks, REDUCE_BLOCK_THREADS, 0, st->stream>>>(
                     rec, (const S *)h.data, tg, N, D, cfg.ignore_index));
    CUDA_TRY_LAUNCH();
    /* the gradient's buffer and dtype: z itself (f32), or dz16 */
    void *dz = grad16 ? (void *)dz16 : (void *)z;
    for (int64_t n0 = 0; n0 < N; n0 += chunk) {
        const int64_t rows = N - n0 < chunk ? N - n0 : chunk;
        /* z[rows, V] = h[rows, D] w[V, D]^T, zt likewise from the teacher, in f32 */
        TRY(cuda_gemm(be, op, 0, 1, rows, V, D, 1.0f, hp + n0 * D * es, D, w.data, D, dt, 0.0f, z, V, DT_F32, NULL));
        if (teacher)
            TRY(cuda_gemm(be, op, 0, 1, rows, V, Dt, 1.0f, htp + n0 * Dt * es, Dt, wt.data, Dt, dt, 0.0f, zt, V,
                          DT_F32, NULL));
        if (grad16)
            lm_head_loss_rows<<<(unsigned)rows, REDUCE_BLOCK_THREADS, 0, st->stream>>>(z, dz16, zt, tg, rec, n0, V,
                                                                                      params);
        else
            lm_head_loss_rows<<<(unsigned)rows, REDUCE_BLOCK_THREADS, 0, st->stream>>>(z, z, zt, tg, rec, n0, V,
                                                                                      params);
        CUDA_TRY_LAUNCH();
        /* dw before dh: dh may then share memory with h, whose chunk rows are last read here */
        if (tensor_present(dw))
            TRY(cuda_gemm(be, op, 1, 0, V, D, rows, 1.0f, dz, V, hp + n0 * D * es, D, dt, 1.0f, dw.data, D, DT_F32,
                          NULL));
        if (tensor_present(dh))
            TRY(cuda_gemm(be, op, 0, 0, rows, D, V, 1.0f, dz, V, w.data, D, dt, 0.0f, (char *)dh.data + n0 * D * es, D,
                          dt, NULL));
    }

    /* An earlier op's bad index, or this call's bad target, before any per-token fault. */
    TRY(cuda_index_checks_resolve(be));
    RowRecord *host = (RowRecord *)malloc(rec_bytes);
    if (!host) return errorf("%s: out of host memory for %lld per-token records", op, (long long)N);
    cudaError_t err = cudaMemcpyAsync(host, rec, rec_bytes, cudaMemcpyDeviceToHost, st->stream);
    if (err == cudaSuccess) err = cudaStreamSynchronize(st->stream);
    if (err != cudaSuccess) {
        free(host);
        return errorf("%s: copying the per-token records to the host failed: %s", op, cudaGetErrorString(err));
    }
    Status status = STATUS_OK;
    for (int64_t n = 0; n < N && status == STATUS_OK; n++)
        if (host[n].fault == FAULT_IGNORED_HIDDEN) status = row_fault_error(host[n].fault, n);
    /* in token order, the CPU's order, so the double sums do not depend on the chunking */
    LossSums call_total = {0, 0, 0, 0, 0};
    for (int64_t n = 0; n < N && status == STATUS_OK; n++) {
        if (host[n].fault != FAULT_NONE) {
            status = row_fault_error(host[n].fault, n);
            break;
        }
        call_total.loss += host[n].loss;
        call_total.kl += host[n].kl;
        call_total.ce += host[n].ce;
        call_total.counted += host[n].counted;
        call_total.top1_agree += host[n].top1_agree;
    }
    free(host);
    if (status != STATUS_OK) return status;
    sums->loss += call_total.loss;
    sums->kl += call_total.kl;
    sums->ce += call_total.ce;
    sums->counted += call_total.counted;
    sums->top1_agree += call_total.top1_agree;
    return STATUS_OK;
}

Status cuda_lm_head_loss_topk(Backend *be, LossSums *sums, Tensor dh, Tensor dw, Tensor h, Tensor w,
                              Tensor teacher_logprobs, Tensor teacher_ids, Tensor targets, LossConfig cfg,
                              float grad_scale) {
    (void)be, (void)sums, (void)dh, (void)dw, (void)h, (void)w, (void)teacher_logprobs, (void)teacher_ids;
    (void)targets, (void)cfg, (void)grad_scale;
    return errorf("lm_head_loss_topk: not available on the cuda backend of this build");
}
