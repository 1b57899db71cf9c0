/* The op interface: one table of forward/backward functions per backend (cpu, cuda), chosen at run
 * time by name. Model code is written once against it; only the ops have two implementations. */
#pragma once

#include <stdint.h>

#include "status.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct Backend Backend;

/* Conventions for every op below:
 * - N is the number of tokens (B*T, rows), shapes are row-major, weights are HF's [out, in].
 * - Forward outputs are overwritten. Backward: gradients of inputs (dx) are overwritten, gradients
 *   of parameters (dw, db, dtable) are ACCUMULATED (+=), so micro-batches accumulate for free.
 * - An absent optional tensor (tensor_none()) means "no bias" or "this gradient is not wanted".
 * - Every shape is checked; a mismatch is an error naming the op and the argument.
 * - On the CPU backend results are bitwise identical whatever the thread count.
 * - Storage dtype: activations, weights read by forward, and activation gradients are f32 or bf16
 *   (one dtype per call); what is summed or kept for precision is always f32: rstd, lse, rope
 *   tables, parameter gradients (dw, db, dtable), AdamW's master weights and moments. Math is f32
 *   whatever the storage; a bf16 output is the f32 result rounded to nearest even, once.
 * - Index values (token ids, positions, targets) are range-checked by every backend with the same
 *   messages; an asynchronous backend (cuda) reports a bad index at its next synchronisation point
 *   (synchronize, upload, download, or an op that returns a host value) rather than from the op. */

/* The distillation divergence D(p_t, p_s) between the teacher's and the student's distributions at
 * temperature T (both models' logits divided by T once). */
typedef enum {
    LOSS_FORWARD_KL = 0, /* KL(p_t || p_s) */
    LOSS_REVERSE_KL,     /* KL(p_s || p_t) */
    LOSS_JSD,            /* beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t + (1 - beta) p_s,
                          * beta in (0, 1): TRL's and Liger's generalized JSD (-> beta KL(p_t || p_s) as
                          * beta -> 0, (1 - beta) KL(p_s || p_t) as beta -> 1) */
} LossKind;

typedef struct {
    float kl_weight;      /* w_kl: weight of T^2 * D(p_teacher^T, p_student^T) */
    float ce_weight;      /* w_ce: weight of CE(student, next token), at temperature 1 */
    float temperature;    /* T > 0 */
    int32_t ignore_index; /* targets equal to this are not counted (HF uses -100) */
    int64_t chunk_tokens; /* tokens per logits chunk; 0 = the backend's choice (its memory budget) */
    LossKind kind;        /* the divergence D; 0 (zero-initialised) = forward KL */
    float jsd_beta;       /* beta of LOSS_JSD, in (0, 1); unread for the other kinds */
} LossConfig;

/* Sums over the counted tokens of one call; divide by `counted` for means. */
typedef struct {
    double loss;          /* sum of kl_weight*T^2*D + ce_weight*ce */
    double kl;            /* sum of the distillation divergence D of cfg.kind (forward KL, reverse KL or
                           * JSD), at temperature T, without the T^2 factor */
    double ce;            /* sum of -log p_s(target) */
    int64_t counted;      /* tokens whose target != ignore_index */
    int64_t top1_agree;   /* counted tokens where argmax student == argmax teacher */
} LossSums;

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
    int64_t step;         /* 1-based step number, for bias correction */
} AdamWConfig;

/* One parameter of a multi-tensor AdamW step: the tensors of adamw_step, and whether the config's
 * weight decay applies to it (norms and embeddings are usually exempt). */
typedef struct {
    Tensor param, grad, m, v, param_copy;
    int decay;
} AdamWParam;

typedef struct {
    /* out[N, D] = table[ids[n], :]. ids: i32 [N], every id in [0, V). */
    Status (*embedding_forward)(Backend *be, Tensor out, Tensor ids, Tensor table);
    /* dtable[V, D] += scatter of dout[N, D] by ids; deterministic (no order-dependent sums). */
    Status (*embedding_backward)(Backend *be, Tensor dtable, Tensor dout, Tensor ids);

    /* y[N, D] = x / sqrt(mean(x^2) + eps) * w; rstd[N] saved for backward. */
    Status (*rmsnorm_forward)(Backend *be, Tensor y, Tensor rstd, Tensor x, Tensor w, float eps);
    Status (*rmsnorm_backward)(Backend *be, Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w,
                               Tensor rstd);
    /* rmsnorm_backward with the residual branch's gradient added: dx = (the norm's dx) + dres, in
     * the same pass where the backend can (bf16: one rounding of the sum). dx and dres are
     * different memory. */
    Status (*rmsnorm_residual_backward)(Backend *be, Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w,
                                        Tensor rstd, Tensor dres);

    /* y[N, O] = x[N, I] w[O, I]^T (+ b[O]). y may be f32 when the inputs are bf16 (logits). */
    Status (*linear_forward)(Backend *be, Tensor y, Tensor x, Tensor w, Tensor b);
    /* dx[N, I] = dy w (optional); dw[O, I] += dy^T x; db[O] += sum_n dy (optional). */
    Status (*linear_backward)(Backend *be, Tensor dx, Tensor dw, Tensor db, Tensor dy, Tensor x,
                              Tensor w);
    /* y[N, O] = x[N, I] w[O, I]^T + r[N, O]: a projection back onto the residual stream, the add
     * fused into the product where the backend can (bf16: one rounding of the sum). y and r are
     * different memory. Its backward is linear_backward's (r's gradient is y's). */
    Status (*linear_residual_forward)(Backend *be, Tensor y, Tensor x, Tensor w, Tensor r);

    /* Rotary embedding in HF's rotate-half layout, in place. x is [N, H, S] with a head stride S;
     * within each head the dims [offset, offset + 2P) are rotated, pair i being (offset+i,
     * offset+P+i) at angle pos[n] * inv_freq[i], read from the tables cos/sin [max_pos, P]
     * (rope_tables() in model/rope.h). pos: i32 [N]. Backward rotates by the opposite angle. */
    Status (*rope_forward)(Backend *be, Tensor x, int64_t offset, Tensor cos, Tensor sin, Tensor pos);
    Status (*rope_backward)(Backend *be, Tensor dx, int64_t offset, Tensor cos, Tensor sin, Tensor pos);

    /* Causal self-attention over B sequences of T tokens, for GQA and MLA alike:
     *   q       [B, T, H,  Dk + Ds]   per-head query
     *   k       [B, T, Hk, Dk]        per-kv-head key; query head h reads kv head h / (H / Hk)
     *   k_shared[B, T, Ds]            optional key part shared by all heads (MLA's rope key), Ds
     *                                 taken from its shape; absent for GQA (Ds = 0)
     *   v       [B, T, Hk, Dv]        Dv may differ from Dk + Ds
     *   out     [B, T, H, Dv];  lse [B, H, T] log-sum-exp of the scaled scores, kept for backward.
     * score(h, i, j) = scale * q[i,h] . [k[j,g(h)] ; k_shared[j]] for j <= i. The T x T matrix is
     * never stored. Backward overwrites dq, dk, dk_shared (summed over heads), dv. */
    Status (*attention_forward)(Backend *be, Tensor out, Tensor lse, Tensor q, Tensor k,
                                Tensor k_shared, Tensor v, float scale);
    Status (*attention_backward)(Backend *be, Tensor dq, Tensor dk, Tensor dk_shared, Tensor dv,
                                 Tensor dout, Tensor out, Tensor lse, Tensor q, Tensor k,
                                 Tensor k_shared, Tensor v, float scale);
    /* Decoding: one new token's attention over the first n cached tokens, GQA and absorbed MLA alike:
     *   q [H, Dk + Ds], k [n, Hk, Dk], k_shared [n, Ds] (optional), v [n, Hk, Dv], out [H, Dv];
     *   out[h] = sum_j softmax_j(scale * q[h] . [k[j, g(h)] ; k_shared[j]]) v[j, g(h)], g(h) = h / (H / Hk).
     * Absorbed MLA passes its cached latents as both k and v (Hk = 1) and its rope keys as k_shared.
     * Forward only (no lse). */
    Status (*attention_decode)(Backend *be, Tensor out, Tensor q, Tensor k, Tensor k_shared, Tensor v,
                               float scale);

    /* out[N, F] = silu(gate) * up. */
    Status (*swiglu_forward)(Backend *be, Tensor out, Tensor gate, Tensor up);
    Status (*swiglu_backward)(Backend *be, Tensor dgate, Tensor dup, Tensor dout, Tensor gate,
                              Tensor up);

    /* The LM head fused with the distillation loss, chunked over tokens so that no [N, V] float
     * matrix ever exists for either model:
     *   student logits z = h[N, D] w[V, D]^T, teacher logits zt = ht[N, Dt] wt[V, Dt]^T (teacher
     *   absent: CE only), targets i32 [N] (ignore_index = not counted).
     * Adds the per-token sums to *sums. Writes dh[N, D] and accumulates dw[V, D] (either optional)
     * for the loss sum scaled by grad_scale (1 / tokens counted in the whole global batch). */
    Status (*lm_head_loss)(Backend *be, LossSums *sums, Tensor dh, Tensor dw, Tensor h, Tensor w,
                           Tensor ht, Tensor wt, Tensor targets, LossConfig cfg, float grad_scale);
    /* lm_head_loss with the teacher given by its top-k at the loss temperature instead of ht, wt:
     * teacher_logprobs f32 [N, k] = log-softmax(teacher logits / T) at teacher_ids i32 [N, k]
     * (distinct ids per row, exact log-probs normalised over the whole vocabulary). The divergence
     * runs over k + 1 outcomes: the k ids and one "tail" outcome holding each model's remaining
     * mass (teacher: 1 - sum exp(logprobs); student: 1 - its probability on the k ids), as
     * DistillKit does; at k = vocab it equals lm_head_loss exactly. top1_agree compares the
     * student's argmax with teacher_ids[:, argmax logprobs]. The teacher rows of ignored tokens are
     * not read. The tail masses: the student's is summed over the ids outside the top-k (log-space,
     * no cancellation); the teacher's is -expm1(logsumexp(logprobs)) in double, held at or above
     * LOSS_TEACHER_TAIL_MIN (its rounding floor); at k = vocab there is no tail outcome. */
    Status (*lm_head_loss_topk)(Backend *be, LossSums *sums, Tensor dh, Tensor dw, Tensor h, Tensor w,
                                Tensor teacher_logprobs, Tensor teacher_ids, Tensor targets,
                                LossConfig cfg, float grad_scale);

    /* One AdamW step on a parameter (decoupled weight decay, bias correction), all f32 [n]; when
     * param_copy (bf16, same shape) is present it receives the updated parameter rounded, so the
     * weights forward reads need no second pass. */
    Status (*adamw_step)(Backend *be, Tensor param, Tensor grad, Tensor m, Tensor v, Tensor param_copy,
                         AdamWConfig cfg);

    /* adamw_step over n parameters at once, each gradient read as grad * grad_scale (global-norm
     * clipping without a pass over the gradients; 1 = as is). Bitwise equal to scaling each gradient
     * by grad_scale (the scale op) and calling adamw_step per parameter; a backend may fuse the
     * whole list into a few launches. */
    Status (*adamw_step_multi)(Backend *be, const AdamWParam *params, int n, AdamWConfig cfg, float grad_scale);

    /* *out = sum of squares of t, in double, reduced in an order fixed by the size alone. */
    Status (*sum_squares)(Backend *be, double *out, Tensor t);
    /* *out = sum over i of the squares of ts[i] (one storage dtype), in double, in an order fixed by
     * the sizes alone: the global gradient norm in one pass and one wait. */
    Status (*sum_squares_multi)(Backend *be, double *out, const Tensor *ts, int n);
    /* t *= s */
    Status (*scale)(Backend *be, Tensor t, float s);
    /* y += x (same shape) */
    Status (*accumulate)(Backend *be, Tensor y, Tensor x);
    /* dst = src converted (f32 <-> bf16, or a copy when the dtypes agree); same number of values. */
    Status (*cast)(Backend *be, Tensor dst, Tensor src);
} Ops;

struct Backend {
    const char *name;          /* "cpu" or "cuda" */
    Ops ops;
    void *impl;                /* backend-private state (thread count, handles, workspace) */

    /* Memory in this backend's address space. alloc zero-fills. */
    Status (*alloc)(Backend *be, Tensor *t, DType dt, int ndim, const int64_t *shape);
    void (*release)(Backend *be, Tensor *t);
    Status (*upload)(Backend *be, Tensor dst, const void *host_src);   /* host bytes -> dst */
    Status (*download)(Backend *be, void *host_dst, Tensor src);       /* src -> host bytes */
    Status (*zero)(Backend *be, Tensor t);
    Status (*synchronize)(Backend *be);
    void (*destroy)(Backend *be);
};

typedef struct {
    int threads;    /* cpu: worker threads, 0 = OpenMP's default */
    int device;     /* cuda: device ordinal */
} BackendOptions;

/* "cpu" or "cuda". The cuda backend exists only in builds with CUDA (an error says so otherwise). */
Status backend_create(Backend **out, const char *name, BackendOptions opts);
void backend_destroy(Backend *be);

/* Host float32 values to and from a tensor of any floating dtype (f32 as is, bf16 rounded to
 * nearest even on the way in, widened exactly on the way out). */
Status backend_upload_f32(Backend *be, Tensor dst, const float *src);
Status backend_download_f32(Backend *be, float *dst, Tensor src);

/* For the backends' ops: notes the storage dtype of a call's argument `name` (absent: nothing).
 * Every present storage argument of one call must be f32 or bf16, and all alike; *noted counts
 * those seen (start at 0), *dt is their dtype. The error names the op and the argument. */
Status storage_dtype_note(const char *op, const char *name, Tensor t, int *noted, DType *dt);

/* For the backends' attention_decode: the shapes of its arguments against each other (storage dtype
 * dt for all), into dims; errors name the op and the argument. */
typedef struct {
    int64_t H, n, Hk, Dk, Ds, Dv;
} DecodeDims;
Status attention_decode_check(Tensor out, Tensor q, Tensor k, Tensor k_shared, Tensor v, float scale, DType dt,
                              DecodeDims *dims);

/* Errors unless every op of the table is present, listing the ones this backend lacks. */
Status backend_check_ops(const Backend *be);

/* Validates a LossConfig for the op `op` (temperature, weights, kind, jsd_beta, chunk_tokens) and
 * grad_scale; the error names the field. Every backend's loss ops call it. */
Status loss_config_check(const char *op, LossConfig cfg, float grad_scale);
/* "forward_kl", "reverse_kl", "jsd"; NULL for a value outside LossKind. */
const char *loss_kind_name(LossKind kind);

/* The smallest teacher tail mass lm_head_loss_topk uses (2^-24, about 6e-8): below it the mass
 * 1 - sum exp(logprobs) is within the rounding of f32 log-probs, and a zero tail would make the
 * reverse KL and the JSD's gradient infinite wherever the student keeps mass outside the top-k. */
#define LOSS_TEACHER_TAIL_MIN 0x1p-24

/* Validates the AdamW hyperparameters every backend's adamw_step relies on. */
Status adamw_config_check(AdamWConfig cfg);
/* Validates adamw_step_multi's grad_scale: finite and > 0. */
Status adamw_grad_scale_check(float grad_scale);

/* Number of CUDA devices visible to this process; 0 when none or when built without CUDA. */
int backend_cuda_device_count(void);

/* The global L2 norm of a list of gradients (sum_squares_multi); an error when it is NaN or Inf. */
Status grad_norm(Backend *be, const Tensor *grads, int n, double *norm_out);

/* The factor that clips a gradient of norm `norm` to max_norm: max_norm / (norm + 1e-6) when
 * max_norm > 0 and norm > max_norm, else 1 (no clipping). */
float grad_clip_scale(double norm, double max_norm);

/* Convenience: grad_norm, then the gradients scaled in place by grad_clip_scale (when it is not 1).
 * Writes the pre-clip norm. */
Status grad_norm_clip(Backend *be, Tensor *grads, int n, double max_norm, double *norm_out);

#ifdef __cplusplus
}
#endif
