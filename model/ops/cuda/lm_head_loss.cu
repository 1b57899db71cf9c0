/* The LM head fused with the distillation loss on the GPU: per chunk of tokens, cuBLAS forms the
 * student's (and a weight-given teacher's) logits in f32, one block per token turns its row into the
 * divergence + CE terms and the logits' gradient, and cuBLAS takes that gradient back to dh and dw.
 * The teacher is its hidden states and head (lm_head_loss) or its cached top-k (lm_head_loss_topk).
 * With bf16 storage the gradient is written rounded to bf16 for those two products (as autocast
 * does), dw accumulating in f32. Per-token terms are summed on the host in token order, as on the
 * CPU. */
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>

#include "block_reduce.cuh"
#include "cuda_ops.h"
#include "cuda_state.h"
#include "model/ops/loss_divergence.h"
#include "storage.cuh"

/* The automatic chunk (loss.chunk_tokens = 0) is sized by traffic, within a memory budget: each
 * chunk reads the heads (w for the logits and again for dh, wt for the teacher's logits) and
 * reads and writes all of the f32 dw, whatever its token count, so the chunk is made large enough
 * that this weight traffic is at most the bytes of its own logits buffers. The buffers stay between
 * 256 MiB (enough rows for cuBLAS to run near its peak) and LOSS_CHUNK_BYTES_MAX. bench_1b
 * (V = 128256, D = Dt = 2048, bf16, 8192 tokens) then runs 5 chunks of 1674 tokens, where a fixed
 * 256 MiB budget would run 40 of 209: dw traffic 10.5 GB a step instead of 84 GB. */
static const int64_t LOSS_CHUNK_BYTES_MIN = 256ll << 20;
static const int64_t LOSS_CHUNK_BYTES_MAX = 2048ll << 20;

/* A teacher top-k row may hold this much more than probability 1 (the rounding of f32 or f16
 * log-probs), the CPU's limit. */
#define TEACHER_MASS_SLACK 1e-2f

/* What went wrong in a row. FAULT_IGNORED_HIDDEN and the teacher-row faults (FAULT_ID_RANGE ..
 * FAULT_TEACHER_MASS) are found before any logits exist. */
enum {
    FAULT_NONE,
    FAULT_STUDENT,
    FAULT_TEACHER,
    FAULT_LOSS,
    FAULT_IGNORED_HIDDEN,
    FAULT_ID_RANGE,
    FAULT_ID_DUPLICATE,
    FAULT_LOGPROB,
    FAULT_TEACHER_MASS
};

/* One token's terms, or its fault: `at`, `id` and `other` say where in a teacher row (the position,
 * the id there, and the earlier position of a duplicate); `loss` carries the bad log-prob or the
 * row's mass. */
typedef struct {
    float loss, kl, ce;
    int32_t counted, top1_agree, fault, id;
    int64_t at, other;
} RowRecord;

typedef struct {
    float kl_weight, ce_weight, temperature, grad_scale;
    int32_t ignore_index;
    int grad_wanted;
    Divergence div;
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
            RowRecord r = {0.0f, 0.0f, 0.0f, 0, 0, bad ? FAULT_IGNORED_HIDDEN : FAULT_NONE, 0, 0, 0};
            rec[n] = r;
        }
    }
}

/* Smallest v over the block; every thread gets it. */
__device__ static long long block_min(long long v, long long *shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int stride = REDUCE_BLOCK_THREADS / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride && shared[threadIdx.x + stride] < shared[threadIdx.x])
            shared[threadIdx.x] = shared[threadIdx.x + stride];
        __syncthreads();
    }
    long long m = shared[0];
    __syncthreads();
    return m;
}

/* Blocks of topk_teacher_check: each owns a V-wide int32 table in scratch (owner), so this bounds
 * that memory (64 x 4 V bytes: 32 MiB at V = 128k). */
static const int64_t TOPK_CHECK_BLOCKS = 64;

/* The CPU's checks of a top-k teacher's rows, for counted tokens (rows strided over the blocks): at
 * the lowest position with a fault, an id outside [0, V), an id seen earlier in the row, or a
 * log-prob that is not finite; else a total mass above 1. A duplicate is found in O(k) per row:
 * every position writes itself into owner[id], and a position that does not read itself back
 * shares its id; only such a row is scanned pairwise, for the positions the message names. Runs
 * after loss_records_init. */
__global__ void topk_teacher_check(RowRecord *rec, int32_t *owner_all, const float *logprobs, const int32_t *ids,
                                   const int32_t *targets, int64_t N, int64_t k, int64_t V, int32_t ignore_index) {
    __shared__ long long keys[REDUCE_BLOCK_THREADS];
    __shared__ float fs[REDUCE_BLOCK_THREADS];
    __shared__ int is[REDUCE_BLOCK_THREADS];
    int32_t *owner = owner_all + (int64_t)blockIdx.x * V;
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        if (targets[n] == ignore_index) continue;
        const int32_t *row = ids + n * k;
        const float *lp = logprobs + n * k;
        for (int64_t i = threadIdx.x; i < k; i += blockDim.x)
            if (row[i] >= 0 && row[i] < V) owner[row[i]] = (int32_t)i;
        __syncthreads();
        int shared_id = 0;
        for (int64_t i = threadIdx.x; i < k; i += blockDim.x)
            shared_id |= row[i] >= 0 && row[i] < V && owner[row[i]] != (int32_t)i;
        /* its barriers also keep the next row's writes after this row's reads */
        shared_id = block_sum(shared_id, is);
        long long key = LLONG_MAX; /* position * 16 + fault: the lowest position wins */
        float mass = 0.0f;
        for (int64_t i = threadIdx.x; i < k; i += blockDim.x) {
            const int32_t id = row[i];
            int fault = FAULT_NONE;
            if (id < 0 || id >= V) {
                fault = FAULT_ID_RANGE;
            } else {
                for (int64_t j = 0; shared_id && j < i && fault == FAULT_NONE; j++)
                    if (row[j] == id) fault = FAULT_ID_DUPLICATE;
                if (fault == FAULT_NONE && !is_finite(lp[i])) fault = FAULT_LOGPROB;
            }
            if (fault != FAULT_NONE && key == LLONG_MAX) key = (long long)i * 16 + fault;
            if (is_finite(lp[i])) mass += expf(lp[i]);
        }
        key = block_min(key, keys);
        mass = block_sum(mass, fs);
        if (threadIdx.x == 0) {
            RowRecord r = rec[n];
            if (key != LLONG_MAX) {
                r.at = key / 16;
                r.fault = (int32_t)(key % 16);
                r.id = row[r.at];
                if (r.fault == FAULT_ID_DUPLICATE) {
                    int64_t first = 0;
                    while (row[first] != row[r.at]) first++;
                    r.other = first;
                }
                if (r.fault == FAULT_LOGPROB) r.loss = lp[r.at];
            } else if (mass > 1.0f + TEACHER_MASS_SLACK) {
                r.fault = FAULT_TEACHER_MASS;
                r.loss = mass;
            }
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

/* A row of dz zeroed: an ignored token, or a row whose fault is already recorded. */
template <typename G>
__device__ static void row_zero(G *dzr, int64_t V, int grad_wanted) {
    if (grad_wanted)
        for (int64_t v = threadIdx.x; v < V; v += blockDim.x) dzr[v] = from_f32<G>(0.0f);
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
        row_zero(dzr, V, p.grad_wanted);
        return;
    }
    const float T = p.temperature;
    RowRecord r = {0.0f, 0.0f, 0.0f, 1, 0, FAULT_NONE, 0, 0, 0};
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
    const float log_sum_t = logf(sum_t), inv_sum_t = 1.0f / sum_t;
    r.ce = logf(sum1) - (z_target - z_max);

    float zt_max = 0.0f, log_sum_teacher = 0.0f, inv_sum_teacher = 1.0f, h_sum = 0.0f;
    if (ztr) {
        long long zt_argmax;
        row_max(ztr, V, fs, ls, is, &zt_max, &zt_argmax, &finite);
        if (!finite) {
            r.fault = FAULT_TEACHER;
            if (threadIdx.x == 0) rec[n] = r;
            return;
        }
        r.top1_agree = z_argmax == zt_argmax;
        const float sum_teacher = row_exp_sum(ztr, V, zt_max, T, fs);
        log_sum_teacher = logf(sum_teacher);
        inv_sum_teacher = 1.0f / sum_teacher;
        float kl = 0.0f, hs = 0.0f;
        for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
            const float ut = (ztr[v] - zt_max) / T, us = (zr[v] - z_max) / T;
            const DivergenceTerm d = divergence_term(p.div, expf(us) * inv_sum_t, us - log_sum_t,
                                                     expf(ut) * inv_sum_teacher, ut - log_sum_teacher);
            kl += d.term;
            hs += d.h;
        }
        r.kl = block_sum(kl, fs);
        h_sum = block_sum(hs, fs);
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

    /* d(T^2 D)/dz = T (h_v - p_v sum h) (loss_divergence.h); d CE/dz = softmax(z) - onehot(target).
     * Each thread reads and writes only its own elements, so the row is overwritten without a
     * barrier. */
    const float g_kl = p.grad_scale * p.kl_weight * T, g_ce = p.grad_scale * p.ce_weight;
    const float inv_sum1 = 1.0f / sum1;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
        const float zv = zr[v];
        float g = g_ce * (expf(zv - z_max) * inv_sum1);
        if (ztr) {
            const float ut = (ztr[v] - zt_max) / T, us = (zv - z_max) / T, ps = expf(us) * inv_sum_t;
            const DivergenceTerm d =
                divergence_term(p.div, ps, us - log_sum_t, expf(ut) * inv_sum_teacher, ut - log_sum_teacher);
            g += g_kl * (d.h - ps * h_sum);
        }
        if (v == target) g -= g_ce;
        dzr[v] = from_f32<G>(g);
    }
}

/* One block per token of the chunk, the teacher given by its top-k (logprobs, ids: [N, k]): the
 * divergence over the k ids and, when k < V, a tail outcome. The student's tail is summed over the
 * tokens outside the top-k, found by masking the ids' logits to -inf in z after saving them
 * (saved: [chunk, k]); the teacher's is -expm1(logsumexp) in double, floored. Faulty teacher rows
 * (topk_teacher_check) are skipped. */
template <typename G>
__global__ void lm_head_loss_topk_rows(float *z, G *dz, float *saved, const float *logprobs, const int32_t *ids,
                                       int64_t k, const int32_t *targets, RowRecord *rec, int64_t n0, int64_t V,
                                       RowParams p) {
    __shared__ float fs[REDUCE_BLOCK_THREADS];
    __shared__ long long ls[REDUCE_BLOCK_THREADS];
    __shared__ int is[REDUCE_BLOCK_THREADS];
    __shared__ double ds[REDUCE_BLOCK_THREADS];
    const int64_t i = blockIdx.x, n = n0 + i;
    float *zr = z + i * V, *sv = saved + i * k;
    G *dzr = dz + i * V;
    const float *lp = logprobs + n * k;
    const int32_t *idr = ids + n * k;
    const int32_t target = targets[n];
    if (target == p.ignore_index || target < 0 || target >= V || rec[n].fault != FAULT_NONE) {
        row_zero(dzr, V, p.grad_wanted);
        return;
    }
    const float T = p.temperature;
    RowRecord r = {0.0f, 0.0f, 0.0f, 1, 0, FAULT_NONE, 0, 0, 0};
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
    const float sum1 = row_exp_sum(zr, V, z_max, 1.0f, fs);
    const float sum_t = T == 1.0f ? sum1 : row_exp_sum(zr, V, z_max, T, fs);
    const float log_sum_t = logf(sum_t), inv_sum_t = 1.0f / sum_t;
    r.ce = logf(sum1) - (z_target - z_max);

    /* the teacher's argmax (lowest position on ties) and max log-prob */
    float lp_max = -INFINITY;
    long long best = LLONG_MAX;
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x)
        if (lp[j] > lp_max) lp_max = lp[j], best = j;
    block_max_argmax(lp_max, best, fs, ls, &lp_max, &best);
    r.top1_agree = idr[best] == z_argmax;

    /* save the ids' logits, then mask them: the tail is what stays finite */
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x) sv[j] = zr[idr[j]];
    __syncthreads();
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x) zr[idr[j]] = -INFINITY;
    __syncthreads();

    const int has_tail = k < V;
    float tail_max = 0.0f, tail_sum = 1.0f, h_tail = 0.0f, kl_tail = 0.0f;
    if (has_tail) {
        float m = -INFINITY;
        long long unused = 0;
        for (int64_t v = threadIdx.x; v < V; v += blockDim.x) m = fmaxf(m, zr[v]);
        block_max_argmax(m, 0, fs, ls, &tail_max, &unused);
        tail_sum = row_exp_sum(zr, V, tail_max, T, fs);
        const float log_p_tail = (tail_max - z_max) / T + logf(tail_sum) - log_sum_t;
        double s = 0.0;
        for (int64_t j = threadIdx.x; j < k; j += blockDim.x) s += exp((double)lp[j] - (double)lp_max);
        s = block_sum(s, ds);
        double q_tail = -expm1((double)lp_max + log(s));
        q_tail = q_tail > LOSS_TEACHER_TAIL_MIN ? q_tail : LOSS_TEACHER_TAIL_MIN;
        const DivergenceTerm d = divergence_term(p.div, expf(log_p_tail), log_p_tail, (float)q_tail, (float)log(q_tail));
        kl_tail = d.term;
        h_tail = d.h;
    }
    float kl = 0.0f, hs = 0.0f;
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
        const float us = (sv[j] - z_max) / T;
        const DivergenceTerm d = divergence_term(p.div, expf(us) * inv_sum_t, us - log_sum_t, expf(lp[j]), lp[j]);
        kl += d.term;
        hs += d.h;
    }
    r.kl = kl_tail + block_sum(kl, fs);
    const float h_sum = h_tail + block_sum(hs, fs);
    r.loss = p.kl_weight * T * T * r.kl + p.ce_weight * r.ce;
    if (!is_finite(r.loss)) {
        r.fault = FAULT_LOSS;
        if (threadIdx.x == 0) rec[n] = r;
        return;
    }
    if (threadIdx.x == 0) rec[n] = r;
    if (!p.grad_wanted) return;

    /* dD/du_v = (p_v / P_o(v)) h_o(v) - p_v sum h: the tail's tokens (those still finite in z),
     * then, after a barrier (dz may be z, and the ids' gradient would unmask them), the ids. */
    const float g_kl = p.grad_scale * p.kl_weight * T, g_ce = p.grad_scale * p.ce_weight;
    const float inv_sum1 = 1.0f / sum1, inv_tail_sum = 1.0f / tail_sum;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
        const float zv = zr[v];
        if (zv == -INFINITY) continue;
        float g = g_ce * (expf(zv - z_max) * inv_sum1) +
                  g_kl * (expf((zv - tail_max) / T) * inv_tail_sum * h_tail - expf((zv - z_max) / T) * inv_sum_t * h_sum);
        if (v == target) g -= g_ce;
        dzr[v] = from_f32<G>(g);
    }
    __syncthreads();
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
        const float us = (sv[j] - z_max) / T, ps = expf(us) * inv_sum_t;
        const DivergenceTerm d = divergence_term(p.div, ps, us - log_sum_t, expf(lp[j]), lp[j]);
        float g = g_ce * (expf(sv[j] - z_max) * inv_sum1) + g_kl * (d.h - ps * h_sum);
        if (idr[j] == target) g -= g_ce;
        dzr[idr[j]] = from_f32<G>(g);
    }
}

static Status row_fault_error(const char *op, const RowRecord *r, int64_t token, int64_t V) {
    switch (r->fault) {
    case FAULT_STUDENT:
        return errorf("%s: the student logits of token %lld are not finite (NaN or Inf)", op, (long long)token);
    case FAULT_TEACHER:
        return errorf("%s: the teacher logits of token %lld are not finite (NaN or Inf)", op, (long long)token);
    case FAULT_LOSS:
        return errorf("%s: the loss of token %lld is not finite (NaN or Inf)", op, (long long)token);
    case FAULT_IGNORED_HIDDEN:
        return errorf("%s: the hidden state of token %lld (ignored) is not finite (NaN or Inf)", op,
                      (long long)token);
    case FAULT_ID_RANGE:
        return errorf("%s: teacher_ids: id %d of token %lld (position %lld) is outside the vocabulary [0, %lld)", op,
                      r->id, (long long)token, (long long)r->at, (long long)V);
    case FAULT_ID_DUPLICATE:
        return errorf("%s: teacher_ids: token %lld lists id %d twice (positions %lld and %lld); the top-k ids "
                      "must be distinct", op, (long long)token, r->id, (long long)r->other, (long long)r->at);
    case FAULT_LOGPROB:
        return errorf("%s: teacher_logprobs of token %lld (position %lld) is %g: log-probs must be finite", op,
                      (long long)token, (long long)r->at, r->loss);
    case FAULT_TEACHER_MASS:
        return errorf("%s: teacher_logprobs of token %lld hold a probability mass of %.6g > 1: they are not "
                      "log-probs normalised over the vocabulary", op, (long long)token, r->loss);
    }
    return STATUS_OK;
}

static Status report_bad_target(const CudaIndexCheck *c, int64_t at, int32_t value) {
    return errorf("%s: target %d of token %lld is outside the vocabulary [0, %lld) and is not ignore_index (%d)",
                  c->op, value, (long long)at, (long long)c->limit, c->skip);
}

/* The student's side, common to both teacher sources, with the CPU's checks and messages; *dt is
 * the storage dtype of the call, noted over the student's tensors and `extra` (the teacher's). */
static Status check_student(const char *op, LossSums *sums, Tensor dh, Tensor dw, Tensor h, Tensor w, Tensor ht,
                            Tensor wt, Tensor targets, LossConfig cfg, float grad_scale, DType *dt) {
    if (sums == NULL) return errorf("%s: sums is missing", op);
    *dt = DT_F32;
    StorageArg args[] = {{"dh", dh}, {"h", h}, {"w", w}, {"ht", ht}, {"wt", wt}};
    TRY(storage_dtype(op, args, 5, dt));
    TRY(tensor_check_dims(op, "h", h, *dt, 2, -1, -1));
    int64_t N = h.shape[0], D = h.shape[1];
    TRY(tensor_check_dims(op, "w", w, *dt, 2, -1, D));
    int64_t V = w.shape[0];
    TRY(tensor_check_dims(op, "targets", targets, DT_I32, 1, N));
    if (tensor_present(dh)) TRY(tensor_check_dims(op, "dh", dh, *dt, 2, N, D));
    if (tensor_present(dw)) TRY(tensor_check_dims(op, "dw", dw, DT_F32, 2, V, D));
    if (V < 1 || D < 1)
        return errorf("%s: vocabulary size %lld, hidden size %lld: each must be >= 1", op, (long long)V, (long long)D);
    if (V > INT_MAX || D > INT_MAX)
        return errorf("%s: vocabulary size %lld or hidden size %lld exceeds BLAS's int range", op, (long long)V,
                      (long long)D);
    return loss_config_check(op, cfg, grad_scale);
}

/* Tokens per chunk: cfg.chunk_tokens, or the automatic size (LOSS_CHUNK_BYTES_MIN/MAX above) from
 * the bytes a token's rows take (row_bytes) and the weight bytes each chunk moves. */
static int64_t chunk_tokens(LossConfig cfg, int64_t N, int64_t row_bytes, int64_t weight_bytes) {
    int64_t chunk = cfg.chunk_tokens;
    if (chunk == 0) {
        chunk = (weight_bytes + row_bytes - 1) / row_bytes;
        const int64_t lo = LOSS_CHUNK_BYTES_MIN / row_bytes, hi = LOSS_CHUNK_BYTES_MAX / row_bytes;
        chunk = chunk < lo ? lo : chunk > hi ? hi : chunk;
    }
    if (chunk < 1) chunk = 1;
    if (chunk > N) chunk = N;
    if (chunk > INT_MAX) chunk = INT_MAX;
    return chunk;
}

/* Where the teacher's distribution comes from: hidden states and head (ht, wt), its top-k
 * (logprobs, ids, k > 0), or nothing (CE only). */
typedef struct {
    Tensor ht, wt;
    const float *logprobs;
    const int32_t *ids;
    int64_t k;
} TeacherSource;

/* Both ops after their checks: the chunk loop, then the records read back and summed. */
static Status loss_chunks(Backend *be, const char *op, LossSums *sums, Tensor dh, Tensor dw, Tensor h, Tensor w,
                          TeacherSource teacher, Tensor targets, LossConfig cfg, float grad_scale, DType dt) {
    const int64_t N = h.shape[0], D = h.shape[1], V = w.shape[0], k = teacher.k;
    const int weights_teacher = tensor_present(teacher.ht);
    const int64_t Dt = weights_teacher ? teacher.ht.shape[1] : 0;
    if (N == 0) return STATUS_OK;
    CudaState *st = cuda_state(be);

    const int grad_wanted = tensor_present(dh) || tensor_present(dw);
    const size_t es = dtype_size(dt);
    /* Logits rows are f32; with bf16 storage the gradient has a bf16 buffer of its own. */
    const int64_t grad16 = dt == DT_BF16 && grad_wanted;
    const int64_t row_bytes = (weights_teacher ? 2 : 1) * V * (int64_t)sizeof(float) + (grad16 ? V * 2 : 0) +
                              k * (int64_t)sizeof(float);
    const int64_t weight_bytes = V * D * (int64_t)es * (tensor_present(dh) ? 2 : 1) + V * Dt * (int64_t)es +
                                 (tensor_present(dw) ? 2 * V * D * (int64_t)sizeof(float) : 0);
    const int64_t chunk = chunk_tokens(cfg, N, row_bytes, weight_bytes);
    const size_t chunk_bytes = (size_t)chunk * (size_t)V * sizeof(float), rec_bytes = (size_t)N * sizeof(RowRecord);
    const size_t grad16_bytes = grad16 ? (size_t)chunk * (size_t)V * sizeof(bf16) : 0;
    const size_t saved_bytes = (size_t)chunk * (size_t)k * sizeof(float);
    const int check_blocks = (int)(N < TOPK_CHECK_BLOCKS ? N : TOPK_CHECK_BLOCKS);
    const size_t owner_bytes = k ? (size_t)check_blocks * (size_t)V * sizeof(int32_t) : 0;
    size_t total = 0;
    cuda_scratch_size(&total, chunk_bytes);
    if (weights_teacher) cuda_scratch_size(&total, chunk_bytes);
    cuda_scratch_size(&total, rec_bytes);
    if (grad16) cuda_scratch_size(&total, grad16_bytes);
    if (k) cuda_scratch_size(&total, saved_bytes);
    if (k) cuda_scratch_size(&total, owner_bytes);
    void *base;
    TRY(cuda_scratch(be, total, &base));
    char *cursor = (char *)base;
    float *z = (float *)cuda_scratch_take(&cursor, chunk_bytes);                             /* [chunk, V] */
    float *zt = weights_teacher ? (float *)cuda_scratch_take(&cursor, chunk_bytes) : NULL;   /* [chunk, V] */
    RowRecord *rec = (RowRecord *)cuda_scratch_take(&cursor, rec_bytes);                     /* [N] */
    bf16 *dz16 = grad16 ? (bf16 *)cuda_scratch_take(&cursor, grad16_bytes) : NULL;           /* [chunk, V] */
    float *saved = k ? (float *)cuda_scratch_take(&cursor, saved_bytes) : NULL;              /* [chunk, k] */
    int32_t *owner = k ? (int32_t *)cuda_scratch_take(&cursor, owner_bytes) : NULL;          /* [blocks, V] */

    const char *hp = (const char *)h.data, *htp = weights_teacher ? (const char *)teacher.ht.data : NULL;
    const int32_t *tg = tensor_i32(targets);
    RowParams params = {cfg.kl_weight, cfg.ce_weight, cfg.temperature, grad_scale, cfg.ignore_index, grad_wanted,
                        divergence_of(cfg)};

    const int init_blocks = (int)(N < 65535 * 8 ? N : 65535 * 8);
    WITH_STORAGE(dt, S,
                 loss_records_init<<<init_blocks, REDUCE_BLOCK_THREADS, 0, st->stream>>>(
                     rec, (const S *)h.data, tg, N, D, cfg.ignore_index));
    CUDA_TRY_LAUNCH();
    if (k) {
        topk_teacher_check<<<check_blocks, REDUCE_BLOCK_THREADS, 0, st->stream>>>(
            rec, owner, teacher.logprobs, teacher.ids, tg, N, k, V, cfg.ignore_index);
        CUDA_TRY_LAUNCH();
    }
    /* the gradient's buffer and dtype: z itself (f32), or dz16 */
    void *dz = grad16 ? (void *)dz16 : (void *)z;
    for (int64_t n0 = 0; n0 < N; n0 += chunk) {
        const int64_t rows = N - n0 < chunk ? N - n0 : chunk;
        /* z[rows, V] = h[rows, D] w[V, D]^T, zt likewise from the teacher, in f32 */
        TRY(cuda_gemm(be, op, 0, 1, rows, V, D, 1.0f, hp + n0 * D * es, D, w.data, D, dt, 0.0f, z, V, DT_F32, NULL));
        if (weights_teacher)
            TRY(cuda_gemm(be, op, 0, 1, rows, V, Dt, 1.0f, htp + n0 * Dt * es, Dt, teacher.wt.data, Dt, dt, 0.0f, zt,
                          V, DT_F32, NULL));
        if (k && grad16)
            lm_head_loss_topk_rows<<<(unsigned)rows, REDUCE_BLOCK_THREADS, 0, st->stream>>>(
                z, dz16, saved, teacher.logprobs, teacher.ids, k, tg, rec, n0, V, params);
        else if (k)
            lm_head_loss_topk_rows<<<(unsigned)rows, REDUCE_BLOCK_THREADS, 0, st->stream>>>(
                z, z, saved, teacher.logprobs, teacher.ids, k, tg, rec, n0, V, params);
        else if (grad16)
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
    /* The faults in the CPU's order: the teacher's rows, the ignored tokens' hidden states, then
     * the rows' own, each in token order. */
    Status status = STATUS_OK;
    for (int64_t n = 0; n < N && status == STATUS_OK; n++)
        if (host[n].fault >= FAULT_ID_RANGE) status = row_fault_error(op, &host[n], n, V);
    for (int64_t n = 0; n < N && status == STATUS_OK; n++)
        if (host[n].fault == FAULT_IGNORED_HIDDEN) status = row_fault_error(op, &host[n], n, V);
    /* in token order, the CPU's order, so the double sums do not depend on the chunking */
    LossSums call_total = {0, 0, 0, 0, 0};
    for (int64_t n = 0; n < N && status == STATUS_OK; n++) {
        if (host[n].fault != FAULT_NONE) {
            status = row_fault_error(op, &host[n], n, V);
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

Status cuda_lm_head_loss(Backend *be, LossSums *sums, Tensor dh, Tensor dw, Tensor h, Tensor w, Tensor ht, Tensor wt,
                         Tensor targets, LossConfig cfg, float grad_scale) {
    const char *op = "lm_head_loss";
    DType dt;
    TRY(check_student(op, sums, dh, dw, h, w, ht, wt, targets, cfg, grad_scale, &dt));
    const int64_t N = h.shape[0], V = w.shape[0];
    if (tensor_present(ht)) {
        TRY(tensor_check_dims(op, "ht", ht, dt, 2, N, -1));
        const int64_t Dt = ht.shape[1];
        TRY(tensor_check_dims(op, "wt", wt, dt, 2, V, Dt));
        if (Dt < 1) return errorf("%s: teacher hidden size %lld must be >= 1", op, (long long)Dt);
        if (Dt > INT_MAX) return errorf("%s: teacher hidden size %lld exceeds BLAS's int range", op, (long long)Dt);
    } else if (tensor_present(wt)) {
        return errorf("%s: wt is given but ht is missing (both or neither: no teacher)", op);
    }
    TRY(cuda_check_indices(be, op, targets, V, 1, cfg.ignore_index, report_bad_target));
    TeacherSource teacher = {ht, wt, NULL, NULL, 0};
    return loss_chunks(be, op, sums, dh, dw, h, w, teacher, targets, cfg, grad_scale, dt);
}

Status cuda_lm_head_loss_topk(Backend *be, LossSums *sums, Tensor dh, Tensor dw, Tensor h, Tensor w,
                              Tensor teacher_logprobs, Tensor teacher_ids, Tensor targets, LossConfig cfg,
                              float grad_scale) {
    const char *op = "lm_head_loss_topk";
    DType dt;
    TRY(check_student(op, sums, dh, dw, h, w, tensor_none(), tensor_none(), targets, cfg, grad_scale, &dt));
    const int64_t N = h.shape[0], V = w.shape[0];
    TRY(tensor_check_dims(op, "teacher_logprobs", teacher_logprobs, DT_F32, 2, N, -1));
    const int64_t k = teacher_logprobs.shape[1];
    TRY(tensor_check_dims(op, "teacher_ids", teacher_ids, DT_I32, 2, N, k));
    if (k < 1 || k > V)
        return errorf("%s: teacher top-k of %lld ids per token: k must lie in [1, vocabulary size %lld]", op,
                      (long long)k, (long long)V);
    TRY(cuda_check_indices(be, op, targets, V, 1, cfg.ignore_index, report_bad_target));
    TeacherSource teacher = {tensor_none(), tensor_none(), tensor_f32(teacher_logprobs), tensor_i32(teacher_ids), k};
    return loss_chunks(be, op, sums, dh, dw, h, w, teacher, targets, cfg, grad_scale, dt);
}
