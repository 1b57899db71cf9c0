/* The LM head fused with the distillation loss on the CPU: student and teacher logits exist one
 * chunk of tokens at a time, turned row by row into divergence + CE sums and the logits' gradient
 * in place; the teacher is its head's logits, or its cached top-k (lm_head_loss_topk.c's rows). */
#include "cpu_ops.h"
#include "lm_head_loss_rows.h"
#include "vector_math.h"

#include <cblas.h>
#include <float.h>
#include <limits.h>
#include <omp.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Default budget for the chunk buffers (student and teacher together): a few dozen tokens at a
 * 128k vocabulary, enough rows for sgemm to run near its peak. */
enum { LOSS_CHUNK_BYTES = 64 << 20 };

/* The divergence's terms and h per token (loss_divergence.h), one loop per kind so that each is a
 * plain loop the compiler can vectorize. */
#define DIVERGENCE_ROW(term_call)                                                                  \
    for (int64_t v = 0; v < V; v++) {                                                              \
        const float log_q = (zt[v] - zt_max) / T - log_sum_teacher;                                \
        const float log_p = (z[v] - z_max) / T - log_sum_t;                                        \
        const float q = e.t[v] * inv_sum_teacher, p = eT[v] * inv_sum_t;                           \
        const DivergenceTerm d = term_call;                                                        \
        e.kl[v] = d.term;                                                                          \
        e.h[v] = d.h;                                                                              \
    }

/* One token's loss terms from its student logits z[V] and teacher logits zt[V] (NULL: no
 * teacher). When grad_wanted, z is overwritten by d(grad_scale * loss)/dz. */
static RowLoss row_loss(float *z, const float *zt, int64_t V, int32_t target, const RowParams *rp,
                        RowScratch e) {
    RowLoss r = {0};
    const LossConfig cfg = rp->cfg;
    if (target == cfg.ignore_index) {
        if (rp->grad_wanted) memset(z, 0, (size_t)V * sizeof(float));
        return r;
    }
    r.counted = 1;
    const float T = cfg.temperature;

    float z_max;
    int64_t z_argmax;
    if (!cpu_loss_row_max(z, V, &z_max, &z_argmax)) {
        r.fault = ROW_STUDENT_NOT_FINITE;
        return r;
    }
    /* Everything below works on max-shifted logits, so log p = (z - max)/T - log_sum. */
    const float sum1 = cpu_loss_row_exp(e.s1, z, V, z_max, 1.0f);
    const float log_sum1 = logf(sum1);
    float *eT = T == 1.0f ? e.s1 : e.sT;
    const float sum_t = T == 1.0f ? sum1 : cpu_loss_row_exp(e.sT, z, V, z_max, T);
    const float log_sum_t = logf(sum_t), inv_sum_t = 1.0f / sum_t;
    r.ce = log_sum1 - (z[target] - z_max);

    float h_sum = 0;
    if (zt) {
        float zt_max;
        int64_t zt_argmax;
        if (!cpu_loss_row_max(zt, V, &zt_max, &zt_argmax)) {
            r.fault = ROW_TEACHER_NOT_FINITE;
            return r;
        }
        r.top1_agree = z_argmax == zt_argmax;
        const float sum_teacher = cpu_loss_row_exp(e.t, zt, V, zt_max, T);
        const float log_sum_teacher = logf(sum_teacher), inv_sum_teacher = 1.0f / sum_teacher;
        switch (rp->div.kind) {
        case LOSS_REVERSE_KL: DIVERGENCE_ROW(divergence_reverse_kl(p, log_p, q, log_q)) break;
        case LOSS_JSD: DIVERGENCE_ROW(divergence_jsd(rp->div, p, log_p, q, log_q)) break;
        default: DIVERGENCE_ROW(divergence_forward_kl(p, log_p, q, log_q)) break;
        }
        r.kl = cpu_sum(e.kl, V);
        h_sum = cpu_sum(e.h, V);
        r.loss = cfg.kl_weight * T * T * r.kl + cfg.ce_weight * r.ce;
    } else {
        r.loss = cfg.ce_weight * r.ce;
    }
    if (!isfinite(r.loss)) {
        r.fault = ROW_LOSS_NOT_FINITE;
        return r;
    }

    if (rp->grad_wanted) {
        /* d(T^2 D)/dz = T dD/du (u = z / T) = T (h_v - p_v sum h); d CE/dz = softmax(z) - onehot. */
        const float g_kl = rp->grad_scale * cfg.kl_weight * T, g_ce = rp->grad_scale * cfg.ce_weight;
        const float inv_sum1 = 1.0f / sum1;
        if (zt)
            for (int64_t v = 0; v < V; v++)
                z[v] = g_ce * (e.s1[v] * inv_sum1) + g_kl * (e.h[v] - eT[v] * inv_sum_t * h_sum);
        else
            for (int64_t v = 0; v < V; v++) z[v] = g_ce * (e.s1[v] * inv_sum1);
        z[target] -= g_ce;
    }
    return r;
}

static Status row_fault_error(const char *op, RowFault fault, int64_t token) {
    switch (fault) {
    case ROW_STUDENT_NOT_FINITE:
        return errorf("%s: the student logits of token %lld are not finite (NaN or Inf)", op, (long long)token);
    case ROW_TEACHER_NOT_FINITE:
        return errorf("%s: the teacher logits of token %lld are not finite (NaN or Inf)", op, (long long)token);
    case ROW_LOSS_NOT_FINITE:
        return errorf("%s: the loss of token %lld is not finite (NaN or Inf)", op, (long long)token);
    case ROW_OK: break;
    }
    return STATUS_OK;
}

/* The student's side, common to both teacher sources: h, w, dh, dw, targets and the config. */
static Status check_student(const char *op, LossSums *sums, Tensor dh, Tensor dw, Tensor h, Tensor w,
                            Tensor targets, LossConfig cfg, float grad_scale) {
    if (sums == NULL) return errorf("%s: sums is missing", op);
    TRY(tensor_check(op, "h", h, DT_F32, 2, (int64_t[]){-1, -1}));
    int64_t N = h.shape[0], D = h.shape[1];
    TRY(tensor_check(op, "w", w, DT_F32, 2, (int64_t[]){-1, D}));
    int64_t V = w.shape[0];
    TRY(tensor_check(op, "targets", targets, DT_I32, 1, (int64_t[]){N}));
    if (tensor_present(dh)) TRY(tensor_check(op, "dh", dh, DT_F32, 2, (int64_t[]){N, D}));
    if (tensor_present(dw)) TRY(tensor_check(op, "dw", dw, DT_F32, 2, (int64_t[]){V, D}));
    if (V < 1 || D < 1)
        return errorf("%s: vocabulary size %lld, hidden size %lld: each must be >= 1", op, (long long)V,
                      (long long)D);
    if (V > INT_MAX || D > INT_MAX)
        return errorf("%s: vocabulary size %lld or hidden size %lld exceeds BLAS's int range", op, (long long)V,
                      (long long)D);
    TRY(loss_config_check(op, cfg, grad_scale));
    const int32_t *tg = tensor_i32(targets);
    for (int64_t n = 0; n < N; n++)
        if (tg[n] != cfg.ignore_index && (tg[n] < 0 || tg[n] >= V))
            return errorf("%s: target %d of token %lld is outside the vocabulary [0, %lld) and is not "
                          "ignore_index (%d)", op, tg[n], (long long)n, (long long)V, cfg.ignore_index);
    return STATUS_OK;
}

static Status check_teacher_weights(const char *op, Tensor h, Tensor w, Tensor ht, Tensor wt) {
    const int64_t N = h.shape[0], V = w.shape[0];
    if (tensor_present(ht)) {
        TRY(tensor_check(op, "ht", ht, DT_F32, 2, (int64_t[]){N, -1}));
        const int64_t Dt = ht.shape[1];
        TRY(tensor_check(op, "wt", wt, DT_F32, 2, (int64_t[]){V, Dt}));
        if (Dt < 1) return errorf("%s: teacher hidden size %lld must be >= 1", op, (long long)Dt);
        if (Dt > INT_MAX) return errorf("%s: teacher hidden size %lld exceeds BLAS's int range", op, (long long)Dt);
    } else if (tensor_present(wt)) {
        return errorf("%s: wt is given but ht is missing (both or neither: no teacher)", op);
    }
    return STATUS_OK;
}

/* Where the teacher's distribution comes from: its hidden states and head (ht, wt; Dt = 0: no
 * teacher), or its top-k log-probs and ids (k > 0). */
typedef struct {
    const float *ht, *wt;
    int64_t Dt;
    const float *logprobs;
    const int32_t *ids;
    int64_t k;
} TeacherSource;

/* Both ops' chunk loop: per chunk of tokens the student's (and a weight-given teacher's) logits,
 * the rows' loss terms and gradient in place, then dw += dz^T h and dh = dz w. */
static Status loss_chunks(const char *op, LossSums *sums, Tensor dh, Tensor dw, Tensor h, Tensor w,
                          TeacherSource teacher, Tensor targets, LossConfig cfg, float grad_scale) {
    const int64_t N = h.shape[0], D = h.shape[1], V = w.shape[0], Dt = teacher.Dt, k = teacher.k;
    const int grad_wanted = tensor_present(dh) || tensor_present(dw);
    if (N == 0) return STATUS_OK;

    const int64_t buffers = Dt ? 2 : 1;
    int64_t chunk = cfg.chunk_tokens > 0 ? cfg.chunk_tokens
                                         : LOSS_CHUNK_BYTES / (buffers * V * (int64_t)sizeof(float));
    if (chunk < 1) chunk = 1;
    if (chunk > N) chunk = N;
    if ((uint64_t)chunk > SIZE_MAX / sizeof(float) / (uint64_t)V)
        return errorf("%s: a chunk of %lld tokens x %lld logits does not fit in memory", op, (long long)chunk,
                      (long long)V);
    const size_t chunk_bytes = (size_t)chunk * (size_t)V * sizeof(float);

    float *z = malloc(chunk_bytes);               /* [chunk, V] student logits, then dz */
    float *zt = Dt ? malloc(chunk_bytes) : NULL;  /* [chunk, V] teacher logits */
    RowLoss *rows = malloc((size_t)chunk * sizeof(RowLoss));
    /* per thread: the RowScratch rows of one token */
    const int nthreads = omp_get_max_threads();
    const size_t scratch_floats = 5 * (size_t)V + (size_t)k;
    float *scratch = malloc((size_t)nthreads * scratch_floats * sizeof(float));
    Status status = STATUS_OK;
    if (!z || (Dt && !zt) || !rows || !scratch) {
        status = errorf("%s: out of memory for %lld-token chunk buffers (%zu bytes each)", op, (long long)chunk,
                        chunk_bytes);
        goto done;
    }

    const float *hp = tensor_f32(h), *wp = tensor_f32(w);
    const int32_t *tg = tensor_i32(targets);
    const RowParams params = {cfg, divergence_of(cfg), grad_scale, grad_wanted};
    /* An ignored token's logits are never looked at, but its hidden state still meets a zero
     * gradient in dw += dz^T h, where a NaN would spread silently. */
    for (int64_t n = 0; n < N; n++) {
        if (tg[n] != cfg.ignore_index) continue;
        for (int64_t d = 0; d < D; d++)
            if (!isfinite(hp[n * D + d])) {
                status = errorf("%s: the hidden state of token %lld (ignored) is not finite (NaN or Inf)", op,
                                (long long)n);
                goto done;
            }
    }
    LossSums call_total = {0};
    for (int64_t n0 = 0; n0 < N; n0 += chunk) {
        const int64_t rows_here = N - n0 < chunk ? N - n0 : chunk;
        int64_t counted_here = 0;
        for (int64_t i = 0; i < rows_here; i++) counted_here += tg[n0 + i] != cfg.ignore_index;
        if (counted_here == 0) {
            if (tensor_present(dh)) memset(tensor_f32(dh) + n0 * D, 0, (size_t)(rows_here * D) * sizeof(float));
            continue;
        }

        /* z[rows, V] = h[rows, D] w[V, D]^T, zt likewise from the teacher */
        cpu_sgemm(CblasNoTrans, CblasTrans, rows_here, V, D, 1.0f, hp + n0 * D, D, wp, D, 0.0f, z, V);
        if (Dt)
            cpu_sgemm(CblasNoTrans, CblasTrans, rows_here, V, Dt, 1.0f, teacher.ht + n0 * Dt, Dt, teacher.wt, Dt,
                      0.0f, zt, V);

#pragma omp parallel num_threads(nthreads)
        {
            float *mine = scratch + (size_t)omp_get_thread_num() * scratch_floats;
            RowScratch e = {mine, mine + V, mine + 2 * V, mine + 3 * V, mine + 4 * V, mine + 5 * V};
#pragma omp for schedule(static)
            for (int64_t i = 0; i < rows_here; i++) {
                const int64_t n = n0 + i;
                if (k)
                    rows[i] = cpu_loss_row_topk(z + i * V, teacher.logprobs + n * k, teacher.ids + n * k, k, V,
                                                tg[n], &params, e);
                else
                    rows[i] = row_loss(z + i * V, Dt ? zt + i * V : NULL, V, tg[n], &params, e);
            }
        }

        /* in token order, so the double sums do not depend on the thread count */
        for (int64_t i = 0; i < rows_here; i++) {
            if (rows[i].fault != ROW_OK) {
                status = row_fault_error(op, (RowFault)rows[i].fault, n0 + i);
                goto done;
            }
            call_total.loss += rows[i].loss;
            call_total.kl += rows[i].kl;
            call_total.ce += rows[i].ce;
            call_total.counted += rows[i].counted;
            call_total.top1_agree += rows[i].top1_agree;
        }

        /* dw before dh: dh may then share memory with h, whose chunk rows are last read here */
        if (tensor_present(dw))
            cpu_sgemm(CblasTrans, CblasNoTrans, V, D, rows_here, 1.0f, z, V, hp + n0 * D, D, 1.0f, tensor_f32(dw),
                      D);
        if (tensor_present(dh))
            cpu_sgemm(CblasNoTrans, CblasNoTrans, rows_here, D, V, 1.0f, z, V, wp, D, 0.0f, tensor_f32(dh) + n0 * D,
                      D);
    }
    sums->loss += call_total.loss;
    sums->kl += call_total.kl;
    sums->ce += call_total.ce;
    sums->counted += call_total.counted;
    sums->top1_agree += call_total.top1_agree;

done:
    free(z);
    free(zt);
    free(rows);
    free(scratch);
    return status;
}

Status cpu_lm_head_loss(Backend *be, LossSums *sums, Tensor dh, Tensor dw, Tensor h, Tensor w, Tensor ht,
                        Tensor wt, Tensor targets, LossConfig cfg, float grad_scale) {
    (void)be;
    const char *op = "lm_head_loss";
    TRY(check_student(op, sums, dh, dw, h, w, targets, cfg, grad_scale));
    TRY(check_teacher_weights(op, h, w, ht, wt));
    TeacherSource teacher = {0};
    if (tensor_present(ht)) {
        teacher.ht = tensor_f32(ht);
        teacher.wt = tensor_f32(wt);
        teacher.Dt = ht.shape[1];
    }
    return loss_chunks(op, sums, dh, dw, h, w, teacher, targets, cfg, grad_scale);
}

Status cpu_lm_head_loss_topk(Backend *be, LossSums *sums, Tensor dh, Tensor dw, Tensor h, Tensor w,
                             Tensor teacher_logprobs, Tensor teacher_ids, Tensor targets, LossConfig cfg,
                             float grad_scale) {
    (void)be;
    const char *op = "lm_head_loss_topk";
    TRY(check_student(op, sums, dh, dw, h, w, targets, cfg, grad_scale));
    const int64_t N = h.shape[0], V = w.shape[0];
    TRY(tensor_check(op, "teacher_logprobs", teacher_logprobs, DT_F32, 2, (int64_t[]){N, -1}));
    const int64_t k = teacher_logprobs.shape[1];
    TRY(tensor_check(op, "teacher_ids", teacher_ids, DT_I32, 2, (int64_t[]){N, k}));
    if (k < 1 || k > V)
        return errorf("%s: teacher top-k of %lld ids per token: k must lie in [1, vocabulary size %lld]", op,
                      (long long)k, (long long)V);
    TRY(cpu_loss_check_topk_teacher(op, tensor_f32(teacher_logprobs), tensor_i32(teacher_ids), N, k, V,
                                    tensor_i32(targets), cfg.ignore_index));
    TeacherSource teacher = {.logprobs = tensor_f32(teacher_logprobs), .ids = tensor_i32(teacher_ids), .k = k};
    return loss_chunks(op, sums, dh, dw, h, w, teacher, targets, cfg, grad_scale);
}
