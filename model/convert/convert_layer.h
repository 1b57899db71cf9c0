/* One attention layer's conversion on host arrays: the teacher's GQA projections in, the MLA
 * student's projections out (joint SVD, or the lossless form), plus the latent-norm scales. */
#pragma once

#include <stdint.h>

#include "core/status.h"

/* A teacher layer's attention weights, HF layout (float32, host). */
typedef struct {
    int64_t D, H, K, hd;
    const float *wq;   /* [H*hd, D] */
    const float *wk;   /* [K*hd, D] */
    const float *wv;   /* [K*hd, D] */
    const float *wo;   /* [D, H*hd] */
} GqaWeights;

/* A student layer's MLA weights before any q bottleneck (float32, host, caller-allocated). */
typedef struct {
    int64_t D, H, r, dn, dr, dv;
    float *q;          /* [H*(dn+dr), D] */
    float *latent;     /* [r, D]   W_dkv */
    float *rope_key;   /* [dr, D]  W_kr */
    float *up_k;       /* [H*dn, r] */
    float *up_v;       /* [H*dv, r] */
    float *o;          /* [D, H*dv] */
    float *inv_freq;   /* [dr/2] */
} MlaWeights;

/* The teacher dims (hd - dr of them) that lose RoPE: both halves of every pair not in `pairs`. */
void nope_dims_of(const int *pairs, int P, int64_t hd, int64_t *nope);

/* Singular values (descending, min(rows, D) of them) of the stacked [K_nope ; V] of all kv heads. */
Status latent_spectrum(const GqaWeights *t, const int *pairs, int P, double *sigma, int64_t *count);

/* The smallest rank keeping `energy` of sum sigma^2, rounded up to a multiple of 8. */
int64_t rank_for_energy(const double *sigma, int64_t count, double energy);

/* X-EcoMLA's joint SVD with the given rope pairs, rank s->r; query rows are scaled so the
 * student's 1/sqrt(dn+dr) gives the teacher's 1/sqrt(hd). Widths that differ from the teacher's
 * (dn vs hd - dr, dv vs hd) are met by exact padding or by a per-head SVD of the product they
 * take part in. *kept_energy receives the spectrum share of the rank used. */
Status mla_weights_from_svd(const GqaWeights *t, const float *teacher_inv_freq, const int *pairs, int P,
                            uint64_t seed, MlaWeights *s, double *kept_energy);

/* The lossless form: dn = 0, dr = K*hd (every key dim in the shared rope key, queries zero
 * outside their group's block), r = K*hd (the latent is V), dv = hd. */
Status mla_weights_exact(const GqaWeights *t, const float *teacher_inv_freq, MlaWeights *s);

/* W [rows, D] ~= B [rows, k] A [k, D] by a rank-k SVD (the q_lora bottleneck). */
Status factor_low_rank(const float *W, int64_t rows, int64_t D, int64_t k, float *A, float *B);

/* Per-channel scales g [r] that make g * c * rstd(c) closest to c (least squares over the
 * calibration rows c [N, r]): the initialisation of a norm placed on an SVD latent. */
Status latent_norm_scales(const float *c, int64_t N, int64_t r, float eps, float *g);

/* How a layer's keys split between the rope key shared by all heads (P frequency pairs,
 * rotate-half) and the no-RoPE rows the latent holds; float64, host. Queries unscaled. */
typedef struct {
    int64_t D, H, P, nk;
    double *rope_key;    /* [2P, D] */
    double *rope_q;      /* [H, 2P, D] */
    float *inv_freq;     /* [P] */
    int *pair_of;        /* [P] the teacher pair behind each student pair */
    double *nope_key;    /* [nk, D] */
    double *nope_q;      /* [H, nk, D]: head h's no-RoPE score is nope_q[h] x . nope_key x */
} KeySplit;
Status key_split_alloc(KeySplit *ks, int64_t D, int64_t H, int64_t P, int64_t nk);
void key_split_free(KeySplit *ks);

/* The teacher's rotate-half pairs as a key split: the kept pairs of every kv head averaged into the
 * rope key, each kv head's other dims as no-RoPE rows that only its own query heads read. */
Status key_split_pairs(const GqaWeights *t, const float *inv_freq, const int *pairs, int P, KeySplit *ks);

/* The student from a key split and a latent: c = latent x ([r0, D], r0 <= s->r, the rest zero rows),
 * keys no-RoPE ~= up[0:nk] c, values of kv head g ~= up[nk + g hd : nk + (g+1) hd] c (up: [nk + K hd,
 * r0]). Per head, the no-RoPE score form and the value path are met at widths dn and dv exactly when
 * their rank allows (an SVD per head), as in mla_weights_from_svd. */
Status mla_weights_from_split(const GqaWeights *t, const KeySplit *ks, const double *latent, const double *up, int64_t r0,
                              uint64_t seed, MlaWeights *s);
