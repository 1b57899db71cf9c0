/* The LM head fused with the distillation loss on the CPU: student and teacher logits exist one
 * chunk of tokens at a time, turned row by row into KL + CE sums and the logits' gradient in place. */
#include "cpu_ops.h"
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

/* What went wrong in a row, reported after the parallel loop (errorf's message is per thread). */
typedef enum { ROW_OK, ROW_STUDENT_NOT_FINITE, ROW_TEACHER_NOT_FINITE, ROW_LOSS_NOT_FINITE } RowFault;

typedef struct {
    float loss, kl, ce;
    uint8_t counted, top1_agree, fault;
} RowLoss;

/* Lanes of the max reduction: independent running maxima, so that no compare waits on the one
 * before it (the scalar form is a chain through one variable). */
enum { MAX_LANES = 16 };

/* Max and argmax (lowest index on ties) of a row; 0 when some value is NaN or Inf. */
static int row_max(const float *restrict x, int64_t V, float *max_out, int64_t *argmax_out) {
    float lane[MAX_LANES];
    int finite = 1;
    int64_t v = 0;
    for (int l = 0; l < MAX_LANES; l++) lane[l] = x[0];
    for (; v + MAX_LANES <= V; v += MAX_LANES)
        for (int l = 0; l < MAX_LANES; l++) {
            float xv = x[v + l];
            finite &= fabsf(xv) <= FLT_MAX;
            lane[l] = xv > lane[l] ? xv : lane[l];
        }
    float max = x[0];
    for (; v < V; v++) {
        finite &= fabsf(x[v]) <= FLT_MAX;
        max = x[v] > max ? x[v] : max;
    }
    if (!finite) return 0;
    for (int l = 0; l < MAX_LANES; l++) max = lane[l] > max ? lane[l] : max;
    int64_t argmax = 0;
    while (x[argmax] != max) argmax++;
    *max_out = max;
    *argmax_out = argmax;
    return 1;
}

/* e[v] = exp((x[v] - max) / T); returns the sum of e (cpu_sum's order). Each exponential of a row
 * is taken once and kept, for the loss and the gradient alike. */
static float row_exp(float *restrict e, const float *restrict x, int64_t V, float max, float T) {
    if (T == 1.0f)
        for (int64_t v = 0; v < V; v++) e[v] = cpu_expf(x[v] - max);
    else
        for (int64_t v = 0; v < V; v++) e[v] = cpu_expf((x[v] - max) / T);
    return cpu_sum(e, V);
}

/* Per-thread rows for row_loss: exponentials of the student at temperature 1, of the student at T
 * (unused when T = 1), of the teacher at T, and the KL's terms. */
typedef struct {
    float *s1, *sT, *t, *kl;
} RowScratch;

/* One token's loss terms from its student logits z[V] and teacher logits zt[V] (NULL: no
 * teacher). When grad_wanted, z is overwritten by d(grad_scale * loss)/dz. */
static RowLoss row_loss(float *z, const float *zt, int64_t V, int32_t target, LossConfig cfg,
                        float grad_scale, int grad_wanted, RowScratch e) {
    RowLoss r = {0};
    if (target == cfg.ignore_index) {
        if (grad_wanted) memset(z, 0, (size_t)V * sizeof(float));
        return r;
    }
    r.counted = 1;
    const float T = cfg.temperature;

    float z_max;
    int64_t z_argmax;
    if (!row_max(z, V, &z_max, &z_argmax)) {
        r.fault = ROW_STUDENT_NOT_FINITE;
        return r;
    }
    /* Everything below works on max-shifted logits, so log p = (z - max)/T - log_sum. */
    const float sum1 = row_exp(e.s1, z, V, z_max, 1.0f);
    const float log_sum1 = logf(sum1);
    float *eT = T == 1.0f ? e.s1 : e.sT;
    const float sum_t = T == 1.0f ? sum1 : row_exp(e.sT, z, V, z_max, T);
    const float log_sum_t = logf(sum_t);
    r.ce = log_sum1 - (z[target] - z_max);

    float zt_max = 0, sum_teacher = 1, log_sum_teacher = 0;
    if (zt) {
        int64_t zt_argmax;
        if (!row_max(zt, V, &zt_max, &zt_argmax)) {
            r.fault = ROW_TEACHER_NOT_FINITE;
            return r;
        }
        r.top1_agree = z_argmax == zt_argmax;
        sum_teacher = row_exp(e.t, zt, V, zt_max, T);
        log_sum_teacher = logf(sum_teacher);
        const float inv_sum_teacher = 1.0f / sum_teacher;
        for (int64_t v = 0; v < V; v++) {
            float log_pt = (zt[v] - zt_max) / T - log_sum_teacher;
            float log_ps = (z[v] - z_max) / T - log_sum_t;
            e.kl[v] = e.t[v] * inv_sum_teacher * (log_pt - log_ps);
        }
        const float kl = cpu_sum(e.kl, V);
        r.kl = kl;
        r.loss = cfg.kl_weight * T * T * kl + cfg.ce_weight * r.ce;
    } else {
        r.loss = cfg.ce_weight * r.ce;
    }
    if (!isfinite(r.loss)) {
        r.fault = ROW_LOSS_NOT_FINITE;
        return r;
    }

    if (grad_wanted) {
        /* d(T^2 KL)/dz = T (p_s^T - p_t^T); d CE/dz = softmax(z) - onehot(target). */
        const float g_kl = grad_scale * cfg.kl_weight * T, g_ce = grad_scale * cfg.ce_weight;
        const float inv_sum1 = 1.0f / sum1, inv_sum_t = 1.0f / sum_t, inv_sum_teacher = 1.0f / sum_teacher;
        if (zt)
            for (int64_t v = 0; v < V; v++)
                z[v] = g_ce * (e.s1[v] * inv_sum1) + g_kl * (eT[v] * inv_sum_t - e.t[v] * inv_sum_teacher);
        else
            for (int64_t v = 0; v < V; v++) z[v] = g_ce * (e.s1[v] * inv_sum1);
        z[target] -= g_ce;
    }
    return r;
}

static Status row_fault_error(RowFault fault, int64_t token) {
    switch (fault) {
    case ROW_STUDENT_NOT_FINITE:
        return errorf("lm_head_loss: the student logits of token %lld are not finite (NaN or Inf)",
                      (long long)token);
    case ROW_TEACHER_NOT_FINITE:
        return errorf("lm_head_loss: the teacher logits of token %lld are not finite (NaN or Inf)",
                      (long long)token);
    case ROW_LOSS_NOT_FINITE:
        return errorf("lm_head_loss: the loss of token %lld is not finite (NaN or Inf)", (long long)token);
    case ROW_OK: break;
    }
    return STATUS_OK;
}

static Status check_arguments(LossSums *sums, Tensor dh, Tensor dw, Tensor h, Tensor w, Tensor ht,
                              Tensor wt, Tensor targets, LossConfig cfg, float grad_scale) {
    const char *op = "lm_head_loss";
    if (sums == NULL) return errorf("%s: sums is missing", op);
    TRY(tensor_check(op, "h", h, DT_F32, 2, (int64_t[]){-1, -1}));
    int64_t N = h.shape[0], D = h.shape[1];
    TRY(tensor_check(op, "w", w, DT_F32, 2, (int64_t[]){-1, D}));
    int64_t V = w.shape[0];
    TRY(tensor_check(op, "targets", targets, DT_I32, 1, (int64_t[]){N}));
    if (tensor_present(dh)) TRY(tensor_check(op, "dh", dh, DT_F32, 2, (int64_t[]){N, D}));
    if (tensor_present(dw)) TRY(tensor_check(op, "dw", dw, DT_F32, 2, (int64_t[]){V, D}));
    int64_t Dt = 1;
    if (tensor_present(ht)) {
        TRY(tensor_check(op, "ht", ht, DT_F32, 2, (int64_t[]){N, -1}));
        Dt = ht.shape[1];
        TRY(tensor_check(op, "wt", wt, DT_F32, 2, (int64_t[]){V, Dt}));
    } else if (tensor_present(wt)) {
        return errorf("%s: wt is given but ht is missing (both or neither: no teacher)", op);
    }
    if (V < 1 || D < 1 || Dt < 1)
        return errorf("%s: vocabulary size %lld, hidden size %lld, teacher hidden size %lld: each must be >= 1",
                      op, (long long)V, (long long)D, (long long)Dt);
    if (V > INT_MAX || D > INT_MAX || Dt > INT_MAX)
        return errorf("%s: vocabulary size %lld or hidden size %lld/%lld exceeds BLAS's int range", op,
                      (long long)V, (long long)D, (long long)Dt);
    if (!(cfg.temperature > 0) || !isfinite(cfg.temperature))
        return errorf("%s: temperature must be finite and > 0, got %g", op, cfg.temperature);
    if (!(cfg.kl_weight >= 0) || !isfinite(cfg.kl_weight))
        return errorf("%s: kl_weight must be finite and >= 0, got %g", op, cfg.kl_weight);
    if (!(cfg.ce_weight >= 0) || !isfinite(cfg.ce_weight))
        return errorf("%s: ce_weight must be finite and >= 0, got %g", op, cfg.ce_weight);
    if (!isfinite(grad_scale)) return errorf("%s: grad_scale must be finite, got %g", op, grad_scale);
    if (cfg.chunk_tokens < 0)
        return errorf("%s: chunk_tokens must be >= 0 (0 = default), got %lld", op, (long long)cfg.chunk_tokens);
    const int32_t *tg = tensor_i32(targets);
    for (int64_t n = 0; n < N; n++)
        if (tg[n] != cfg.ignore_index && (tg[n] < 0 || tg[n] >= V))
            return errorf("%s: target %d of token %lld is outside the vocabulary [0, %lld) and is not "
                          "ignore_index (%d)", op, tg[n], (long long)n, (long long)V, cfg.ignore_index);
    return STATUS_OK;
}

Status cpu_lm_head_loss(Backend *be, LossSums *sums, Tensor dh, Tensor dw, Tensor h, Tensor w, Tensor ht,
                        Tensor wt, Tensor targets, LossConfig cfg, float grad_scale) {
    TRY(check_arguments(sums, dh, dw, h, w, ht, wt, targets, cfg, grad_scale));
    const int64_t N = h.shape[0], D = h.shape[1], V = w.shape[0];
    const int teacher = tensor_present(ht);
    const int64_t Dt = teacher ? ht.shape[1] : 0;
    const int grad_wanted = tensor_present(dh) || tensor_present(dw);
    if (N == 0) return STATUS_OK;

    const int64_t buffers = teacher ? 2 : 1;
    int64_t chunk = cfg.chunk_tokens > 0 ? cfg.chunk_tokens
                                         : LOSS_CHUNK_BYTES / (buffers * V * (int64_t)sizeof(float));
    if (chunk < 1) chunk = 1;
    if (chunk > N) chunk = N;
    if ((uint64_t)chunk > SIZE_MAX / sizeof(float) / (uint64_t)V)
        return errorf("lm_head_loss: a chunk of %lld tokens x %lld logits does not fit in memory",
                      (long long)chunk, (long long)V);
    const size_t chunk_bytes = (size_t)chunk * (size_t)V * sizeof(float);

    float *z = malloc(chunk_bytes);                    /* [chunk, V] student logits, then dz */
    float *zt = teacher ? malloc(chunk_bytes) : NULL;  /* [chunk, V] teacher logits */
    RowLoss *rows = malloc((size_t)chunk * sizeof(RowLoss));
    /* per thread: the RowScratch rows of one token */
    const int nthreads = omp_get_max_threads();
    float *exps = malloc((size_t)nthreads * 4 * (size_t)V * sizeof(float));
    Status status = STATUS_OK;
    if (!z || (teacher && !zt) || !rows || !exps) {
        status = errorf("lm_head_loss: out of memory for %lld-token chunk buffers (%zu bytes each)",
                        (long long)chunk, chunk_bytes);
        goto done;
    }

    const float *hp = tensor_f32(h), *wp = tensor_f32(w);
    const float *htp = teacher ? tensor_f32(ht) : NULL, *wtp = teacher ? tensor_f32(wt) : NULL;
    const int32_t *tg = tensor_i32(targets);
    /* An ignored token's logits are never looked at, but its hidden state still meets a zero
     * gradient in dw += dz^T h, where a NaN would spread silently. */
    for (int64_t n = 0; n < N; n++) {
        if (tg[n] != cfg.ignore_index) continue;
        for (int64_t d = 0; d < D; d++)
            if (!isfinite(hp[n * D + d])) {
                status = errorf("lm_head_loss: the hidden state of token %lld (ignored) is not finite "
                                "(NaN or Inf)", (long long)n);
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
        if (teacher)
            cpu_sgemm(CblasNoTrans, CblasTrans, rows_here, V, Dt, 1.0f, htp + n0 * Dt, Dt, wtp, Dt,
                        0.0f, zt, V);

#pragma omp parallel num_threads(nthreads)
        {
            float *mine = exps + (size_t)omp_get_thread_num() * 4 * (size_t)V;
            RowScratch e = {mine, mine + V, mine + 2 * V, mine + 3 * V};
#pragma omp for schedule(static)
            for (int64_t i = 0; i < rows_here; i++)
                rows[i] = row_loss(z + i * V, teacher ? zt + i * V : NULL, V, tg[n0 + i], cfg, grad_scale,
                                   grad_wanted, e);
        }

        /* in token order, so the double sums do not depend on the thread count */
        for (int64_t i = 0; i < rows_here; i++) {
            if (rows[i].fault != ROW_OK) {
                status = row_fault_error((RowFault)rows[i].fault, n0 + i);
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
            cpu_sgemm(CblasTrans, CblasNoTrans, V, D, rows_here, 1.0f, z, V, hp + n0 * D, D, 1.0f,
                        tensor_f32(dw), D);
        if (tensor_present(dh))
            cpu_sgemm(CblasNoTrans, CblasNoTrans, rows_here, D, V, 1.0f, z, V, wp, D, 0.0f,
                        tensor_f32(dh) + n0 * D, D);
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
    free(exps);
    return status;
}
