/* The arithmetic of one layer's GQA -> MLA conversion, in float64 on host arrays: the joint SVD
 * of keys and values, RoPE pair bookkeeping, query scaling, width matching, the exact form. */
#include "model/convert/convert_layer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "model/convert/linalg.h"

#define ALLOC_F64(p, n)                                                               \
    do {                                                                              \
        (p) = malloc((size_t)((n) > 0 ? (n) : 1) * sizeof(double));                   \
        if (!(p)) { st = errorf("conversion: out of memory (%lld doubles)", (long long)(n)); goto done; } \
    } while (0)

void nope_dims_of(const int *pairs, int P, int64_t hd, int64_t *nope) {
    int64_t half = hd / 2, n = 0;
    for (int64_t i = 0; i < half; i++) {
        int kept = 0;
        for (int j = 0; j < P; j++) kept |= pairs[j] == i;
        if (!kept) nope[n++] = i;
    }
    int64_t firsts = n;
    for (int64_t t = 0; t < firsts; t++) nope[n++] = nope[t] + half;
}

/* B [K*(n_h + hd), D]: per kv head its no-rope key rows, then per kv head its value rows. */
static void stack_keys_values(const GqaWeights *t, const int64_t *nope, int64_t n_h, double *B) {
    int64_t D = t->D;
    for (int64_t g = 0; g < t->K; g++)
        for (int64_t a = 0; a < n_h; a++)
            for (int64_t d = 0; d < D; d++) B[(g * n_h + a) * D + d] = t->wk[(g * t->hd + nope[a]) * D + d];
    for (int64_t g = 0; g < t->K; g++)
        for (int64_t a = 0; a < t->hd; a++)
            for (int64_t d = 0; d < D; d++)
                B[(t->K * n_h + g * t->hd + a) * D + d] = t->wv[(g * t->hd + a) * D + d];
}

Status latent_spectrum(const GqaWeights *t, const int *pairs, int P, double *sigma, int64_t *count) {
    Status st = STATUS_OK;
    int64_t n_h = t->hd - 2 * P, rows = t->K * (n_h + t->hd), k = rows < t->D ? rows : t->D;
    int64_t *nope = malloc((size_t)(n_h > 0 ? n_h : 1) * sizeof(int64_t));
    double *B = NULL, *U = NULL, *VT = NULL;
    if (!nope) return errorf("conversion: out of memory");
    ALLOC_F64(B, rows * t->D);
    ALLOC_F64(U, rows * k);
    ALLOC_F64(VT, k * t->D);
    nope_dims_of(pairs, P, t->hd, nope);
    stack_keys_values(t, nope, n_h, B);
    st = svd_thin(B, rows, t->D, U, sigma, VT);
    *count = k;
done:
    free(nope);
    free(B);
    free(U);
    free(VT);
    return st;
}

int64_t rank_for_energy(const double *sigma, int64_t count, double energy) {
    double total = 0, kept = 0;
    for (int64_t i = 0; i < count; i++) total += sigma[i] * sigma[i];
    int64_t r = count;
    for (int64_t i = 0; i < count; i++) {
        kept += sigma[i] * sigma[i];
        if (kept >= energy * total) {
            r = i + 1;
            break;
        }
    }
    return (r + 7) / 8 * 8;
}

static double rms_f64(const double *x, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += x[i] * x[i];
    return n ? sqrt(s / (double)n) : 0;
}

/* Rows a [m, D] and b [m, r] whose products a^T b equal left^T right (left [n, D], right [n, r])
 * when m >= n (padding: zero rows of a, random rows of b at right's scale, so gradients still
 * reach the padding), or its best rank-m approximation when m < n (SVD of the D x r product, the
 * singular values split evenly between the sides). */
static Status match_width(const double *left, const double *right, int64_t n, int64_t D, int64_t r, int64_t m,
                          uint64_t seed, uint64_t stream, double *a, double *b) {
    Status st = STATUS_OK;
    double *M = NULL, *U = NULL, *S = NULL, *VT = NULL, *leftT = NULL;
    if (m >= n) {
        memcpy(a, left, (size_t)(n * D) * sizeof(double));
        memcpy(b, right, (size_t)(n * r) * sizeof(double));
        memset(a + n * D, 0, (size_t)((m - n) * D) * sizeof(double));
        double scale = rms_f64(right, n * r);
        for (int64_t i = n * r; i < m * r; i++) b[i] = scale * rng_normal(seed, stream, (uint64_t)i);
        return STATUS_OK;
    }
    int64_t k = D < r ? D : r;
    ALLOC_F64(M, D * r);
    ALLOC_F64(leftT, D * n);
    ALLOC_F64(U, D * k);
    ALLOC_F64(S, k);
    ALLOC_F64(VT, k * r);
    for (int64_t i = 0; i < n; i++)
        for (int64_t d = 0; d < D; d++) leftT[d * n + i] = left[i * D + d];
    matmul_f64(leftT, right, M, D, n, r);
    st = svd_thin(M, D, r, U, S, VT);
    if (st != STATUS_OK) goto done;
    for (int64_t i = 0; i < m; i++) {
        double root = i < k ? sqrt(S[i]) : 0;
        for (int64_t d = 0; d < D; d++) a[i * D + d] = i < k ? root * U[d * k + i] : 0;
        for (int64_t j = 0; j < r; j++) b[i * r + j] = i < k ? root * VT[i * r + j] : 0;
    }
done:
    free(M);
    free(leftT);
    free(U);
    free(S);
    free(VT);
    return st;
}

Status mla_weights_from_svd(const GqaWeights *t, const float *teacher_inv_freq, const int *pairs, int P,
                            uint64_t seed, MlaWeights *s, double *kept_energy) {
    Status st = STATUS_OK;
    int64_t D = t->D, H = t->H, K = t->K, hd = t->hd, half = hd / 2, group = H / K;
    int64_t n_h = hd - 2 * P, rows = K * (n_h + hd), k = rows < D ? rows : D, r = s->r;
    int64_t dn = s->dn, dr = s->dr, dv = s->dv, dq = dn + dr;
    double qscale = sqrt((double)dq / (double)hd);
    int64_t *nope = malloc((size_t)(n_h > 0 ? n_h : 1) * sizeof(int64_t));
    double *B = NULL, *U = NULL, *S = NULL, *VT = NULL, *left = NULL, *right = NULL, *a = NULL, *b = NULL;
    if (!nope) return errorf("conversion: out of memory");
    if (dr != 2 * P) { st = errorf("conversion: qk_rope_head_dim %lld != 2 x %d pairs", (long long)dr, P); goto done; }
    int64_t wide = n_h > hd ? n_h : hd, m_max = dn > dv ? dn : dv;
    ALLOC_F64(B, rows * D);
    ALLOC_F64(U, rows * k);
    ALLOC_F64(S, k);
    ALLOC_F64(VT, k * D);
    ALLOC_F64(left, wide * D);
    ALLOC_F64(right, wide * r);
    ALLOC_F64(a, (m_max > wide ? m_max : wide) * D);
    ALLOC_F64(b, (m_max > wide ? m_max : wide) * r);
    nope_dims_of(pairs, P, hd, nope);
    stack_keys_values(t, nope, n_h, B);
    st = svd_thin(B, rows, D, U, S, VT);
    if (st != STATUS_OK) goto done;

    double total = 0, kept = 0;
    for (int64_t i = 0; i < k; i++) {
        total += S[i] * S[i];
        if (i < r) kept += S[i] * S[i];
    }
    *kept_energy = total > 0 ? kept / total : 1.0;

    /* The latent: c = diag(S_r) VT_r x; ranks past the spectrum are zero rows. */
    for (int64_t i = 0; i < r; i++)
        for (int64_t d = 0; d < D; d++) s->latent[i * D + d] = i < k ? (float)(S[i] * VT[i * D + d]) : 0.0f;

    for (int64_t h = 0; h < H; h++) {
        int64_t g = h / group;
        /* Keys without RoPE: this head's query rows against its group's rows of U. */
        for (int64_t i = 0; i < n_h; i++) {
            for (int64_t d = 0; d < D; d++) left[i * D + d] = qscale * t->wq[(h * hd + nope[i]) * D + d];
            for (int64_t j = 0; j < r; j++) right[i * r + j] = j < k ? U[(g * n_h + i) * k + j] : 0;
        }
        st = match_width(left, right, n_h, D, r, dn, seed, 2 * (uint64_t)h, a, b);
        if (st != STATUS_OK) goto done;
        for (int64_t i = 0; i < dn; i++) {
            for (int64_t d = 0; d < D; d++) s->q[(h * dq + i) * D + d] = (float)a[i * D + d];
            for (int64_t j = 0; j < r; j++) s->up_k[(h * dn + i) * r + j] = (float)b[i * r + j];
        }
        /* Queries with RoPE: pair j of the student is the teacher's pair pairs[j], rotate-half. */
        for (int j = 0; j < P; j++)
            for (int64_t d = 0; d < D; d++) {
                s->q[(h * dq + dn + j) * D + d] = (float)(qscale * t->wq[(h * hd + pairs[j]) * D + d]);
                s->q[(h * dq + dn + P + j) * D + d] = (float)(qscale * t->wq[(h * hd + half + pairs[j]) * D + d]);
            }
        /* Values: o_h = Wo_h v_h, v_h = U_v c. Written as left^T right with left = Wo_h^T. */
        for (int64_t i = 0; i < hd; i++) {
            for (int64_t d = 0; d < D; d++) left[i * D + d] = t->wo[d * (H * hd) + h * hd + i];
            for (int64_t j = 0; j < r; j++) right[i * r + j] = j < k ? U[(K * n_h + g * hd + i) * k + j] : 0;
        }
        st = match_width(left, right, hd, D, r, dv, seed, 2 * (uint64_t)h + 1, a, b);
        if (st != STATUS_OK) goto done;
        for (int64_t i = 0; i < dv; i++) {
            for (int64_t d = 0; d < D; d++) s->o[d * (H * dv) + h * dv + i] = (float)a[i * D + d];
            for (int64_t j = 0; j < r; j++) s->up_v[(h * dv + i) * r + j] = (float)b[i * r + j];
        }
    }
    /* The shared rope key: the kept pairs of every kv head's key, averaged (exact when K = 1). */
    for (int j = 0; j < P; j++) {
        s->inv_freq[j] = teacher_inv_freq[pairs[j]];
        for (int64_t d = 0; d < D; d++) {
            double lo = 0, hi = 0;
            for (int64_t g = 0; g < K; g++) {
                lo += t->wk[(g * hd + pairs[j]) * D + d];
                hi += t->wk[(g * hd + half + pairs[j]) * D + d];
            }
            s->rope_key[j * D + d] = (float)(lo / (double)K);
            s->rope_key[(P + j) * D + d] = (float)(hi / (double)K);
        }
    }
done:
    free(nope);
    free(B);
    free(U);
    free(S);
    free(VT);
    free(left);
    free(right);
    free(a);
    free(b);
    return st;
}

Status mla_weights_exact(const GqaWeights *t, const float *teacher_inv_freq, MlaWeights *s) {
    int64_t D = t->D, H = t->H, K = t->K, hd = t->hd, half = hd / 2, group = H / K;
    int64_t P = K * half;
    if (s->dn != 0 || s->dr != K * hd || s->r != K * hd || s->dv != hd)
        return errorf("exact conversion: needs dn = 0, dr = r = K*hd = %lld, dv = hd = %lld", (long long)(K * hd), (long long)hd);
    float qscale = (float)sqrt((double)K); /* sqrt((dn + dr) / hd) */
    memset(s->q, 0, (size_t)(H * s->dr * D) * sizeof(float));
    for (int64_t h = 0; h < H; h++) {
        int64_t g = h / group;
        for (int64_t i = 0; i < half; i++) {
            int64_t j = g * half + i; /* the student's rope pair for group g's pair i */
            for (int64_t d = 0; d < D; d++) {
                s->q[(h * s->dr + j) * D + d] = qscale * t->wq[(h * hd + i) * D + d];
                s->q[(h * s->dr + P + j) * D + d] = qscale * t->wq[(h * hd + half + i) * D + d];
            }
        }
        memset(s->up_v + h * hd * s->r, 0, (size_t)(hd * s->r) * sizeof(float));
        for (int64_t i = 0; i < hd; i++) s->up_v[(h * hd + i) * s->r + g * hd + i] = 1.0f;
        for (int64_t d = 0; d < D; d++)
            for (int64_t i = 0; i < hd; i++) s->o[d * (H * hd) + h * hd + i] = t->wo[d * (H * hd) + h * hd + i];
    }
    for (int64_t g = 0; g < K; g++)
        for (int64_t i = 0; i < half; i++) {
            int64_t j = g * half + i;
            s->inv_freq[j] = teacher_inv_freq[i];
            memcpy(s->rope_key + j * D, t->wk + (g * hd + i) * D, (size_t)D * sizeof(float));
            memcpy(s->rope_key + (P + j) * D, t->wk + (g * hd + half + i) * D, (size_t)D * sizeof(float));
        }
    memcpy(s->latent, t->wv, (size_t)(K * hd * D) * sizeof(float));
    return STATUS_OK;
}

Status factor_low_rank(const float *W, int64_t rows, int64_t D, int64_t k, float *A, float *B) {
    Status st = STATUS_OK;
    int64_t kk = rows < D ? rows : D;
    double *M = NULL, *U = NULL, *S = NULL, *VT = NULL;
    ALLOC_F64(M, rows * D);
    ALLOC_F64(U, rows * kk);
    ALLOC_F64(S, kk);
    ALLOC_F64(VT, kk * D);
    for (int64_t i = 0; i < rows * D; i++) M[i] = W[i];
    st = svd_thin(M, rows, D, U, S, VT);
    if (st != STATUS_OK) goto done;
    for (int64_t i = 0; i < k; i++) {
        double root = i < kk ? sqrt(S[i]) : 0;
        for (int64_t d = 0; d < D; d++) A[i * D + d] = i < kk ? (float)(root * VT[i * D + d]) : 0.0f;
        for (int64_t j = 0; j < rows; j++) B[j * k + i] = i < kk ? (float)(root * U[j * kk + i]) : 0.0f;
    }
done:
    free(M);
    free(U);
    free(S);
    free(VT);
    return st;
}

Status latent_norm_scales(const float *c, int64_t N, int64_t r, float eps, float *g) {
    double *num = calloc((size_t)r, sizeof(double)), *den = calloc((size_t)r, sizeof(double));
    if (!num || !den) {
        free(num);
        free(den);
        return errorf("conversion: out of memory for latent-norm scales");
    }
    for (int64_t n = 0; n < N; n++) {
        const float *row = c + n * r;
        double ms = 0;
        for (int64_t i = 0; i < r; i++) ms += (double)row[i] * row[i];
        double rstd = 1.0 / sqrt(ms / (double)r + eps);
        for (int64_t i = 0; i < r; i++) {
            double c2 = (double)row[i] * row[i];
            num[i] += c2 * rstd;
            den[i] += c2 * rstd * rstd;
        }
    }
    /* A channel the calibration never excites keeps scale 1. */
    for (int64_t i = 0; i < r; i++) g[i] = den[i] > 0 ? (float)(num[i] / den[i]) : 1.0f;
    free(num);
    free(den);
    return STATUS_OK;
}

Status key_split_alloc(KeySplit *ks, int64_t D, int64_t H, int64_t P, int64_t nk) {
    memset(ks, 0, sizeof *ks);
    *ks = (KeySplit){.D = D, .H = H, .P = P, .nk = nk};
    ks->rope_key = calloc((size_t)(2 * P * D) + 1, sizeof(double));
    ks->rope_q = calloc((size_t)(H * 2 * P * D) + 1, sizeof(double));
    ks->inv_freq = calloc((size_t)P + 1, sizeof(float));
    ks->pair_of = calloc((size_t)P + 1, sizeof(int));
    ks->nope_key = calloc((size_t)(nk * D) + 1, sizeof(double));
    ks->nope_q = calloc((size_t)(H * nk * D) + 1, sizeof(double));
    if (!ks->rope_key || !ks->rope_q || !ks->inv_freq || !ks->pair_of || !ks->nope_key || !ks->nope_q) {
        key_split_free(ks);
        return errorf("conversion: out of memory for the key split");
    }
    return STATUS_OK;
}

void key_split_free(KeySplit *ks) {
    free(ks->rope_key);
    free(ks->rope_q);
    free(ks->inv_freq);
    free(ks->pair_of);
    free(ks->nope_key);
    free(ks->nope_q);
    memset(ks, 0, sizeof *ks);
}

Status mla_weights_from_split(const GqaWeights *t, const KeySplit *ks, const double *latent, const double *up, int64_t r0,
                              uint64_t seed, MlaWeights *s) {
    Status st = STATUS_OK;
    int64_t D = t->D, H = t->H, K = t->K, hd = t->hd, group = H / K, r = s->r, nk = ks->nk, P = ks->P;
    int64_t dn = s->dn, dr = s->dr, dv = s->dv, dq = dn + dr;
    double qscale = sqrt((double)dq / (double)hd);
    if (dr != 2 * P) return errorf("conversion: qk_rope_head_dim %lld != 2 x %lld pairs", (long long)dr, (long long)P);
    if (r0 > r) return errorf("conversion: a latent of %lld rows for kv_lora_rank %lld", (long long)r0, (long long)r);
    int64_t wide = nk > hd ? nk : hd, m_max = dn > dv ? dn : dv, big = m_max > wide ? m_max : wide;
    double *left = NULL, *right = NULL, *a = NULL, *b = NULL;
    ALLOC_F64(left, wide * D);
    ALLOC_F64(right, wide * r);
    ALLOC_F64(a, big * D);
    ALLOC_F64(b, big * r);
    for (int64_t i = 0; i < r; i++)
        for (int64_t d = 0; d < D; d++) s->latent[i * D + d] = i < r0 ? (float)latent[i * D + d] : 0.0f;
    for (int64_t h = 0; h < H; h++) {
        int64_t g = h / group;
        /* No-RoPE keys: the head's query rows against the key rows of the latent's up-projection. */
        for (int64_t i = 0; i < nk; i++) {
            for (int64_t d = 0; d < D; d++) left[i * D + d] = qscale * ks->nope_q[(h * nk + i) * D + d];
            for (int64_t j = 0; j < r; j++) right[i * r + j] = j < r0 ? up[i * r0 + j] : 0;
        }
        st = match_width(left, right, nk, D, r, dn, seed, 2 * (uint64_t)h, a, b);
        if (st != STATUS_OK) goto done;
        for (int64_t i = 0; i < dn; i++) {
            for (int64_t d = 0; d < D; d++) s->q[(h * dq + i) * D + d] = (float)a[i * D + d];
            for (int64_t j = 0; j < r; j++) s->up_k[(h * dn + i) * r + j] = (float)b[i * r + j];
        }
        for (int64_t j = 0; j < 2 * P; j++)
            for (int64_t d = 0; d < D; d++)
                s->q[(h * dq + dn + j) * D + d] = (float)(qscale * ks->rope_q[(h * 2 * P + j) * D + d]);
        /* Values: o_h = Wo_h v_h with v_h = up_v c, as left^T right with left = Wo_h^T. */
        for (int64_t i = 0; i < hd; i++) {
            for (int64_t d = 0; d < D; d++) left[i * D + d] = t->wo[d * (H * hd) + h * hd + i];
            for (int64_t j = 0; j < r; j++) right[i * r + j] = j < r0 ? up[(nk + g * hd + i) * r0 + j] : 0;
        }
        st = match_width(left, right, hd, D, r, dv, seed, 2 * (uint64_t)h + 1, a, b);
        if (st != STATUS_OK) goto done;
        for (int64_t i = 0; i < dv; i++) {
            for (int64_t d = 0; d < D; d++) s->o[d * (H * dv) + h * dv + i] = (float)a[i * D + d];
            for (int64_t j = 0; j < r; j++) s->up_v[(h * dv + i) * r + j] = (float)b[i * r + j];
        }
    }
    for (int64_t j = 0; j < 2 * P * D; j++) s->rope_key[j] = (float)ks->rope_key[j];
    for (int64_t j = 0; j < P; j++) s->inv_freq[j] = ks->inv_freq[j];
done:
    free(left);
    free(right);
    free(a);
    free(b);
    return st;
}

Status key_split_pairs(const GqaWeights *t, const float *inv_freq, const int *pairs, int P, KeySplit *ks) {
    int64_t D = t->D, H = t->H, K = t->K, hd = t->hd, half = hd / 2, n_h = hd - 2 * P, group = H / K;
    int64_t *nope = malloc((size_t)(n_h > 0 ? n_h : 1) * sizeof(int64_t));
    if (!nope) return errorf("conversion: out of memory");
    Status st = key_split_alloc(ks, D, H, P, K * n_h);
    if (st != STATUS_OK) {
        free(nope);
        return st;
    }
    nope_dims_of(pairs, P, hd, nope);
    for (int j = 0; j < P; j++) {
        ks->inv_freq[j] = inv_freq[pairs[j]];
        ks->pair_of[j] = pairs[j];
        for (int64_t d = 0; d < D; d++) {
            double lo = 0, hi = 0;
            for (int64_t g = 0; g < K; g++) {
                lo += t->wk[(g * hd + pairs[j]) * D + d];
                hi += t->wk[(g * hd + half + pairs[j]) * D + d];
            }
            ks->rope_key[j * D + d] = lo / (double)K;
            ks->rope_key[(P + j) * D + d] = hi / (double)K;
        }
        for (int64_t h = 0; h < H; h++)
            for (int64_t d = 0; d < D; d++) {
                ks->rope_q[(h * 2 * P + j) * D + d] = t->wq[(h * hd + pairs[j]) * D + d];
                ks->rope_q[(h * 2 * P + P + j) * D + d] = t->wq[(h * hd + half + pairs[j]) * D + d];
            }
    }
    for (int64_t g = 0; g < K; g++)
        for (int64_t i = 0; i < n_h; i++) {
            int64_t row = g * n_h + i;
            for (int64_t d = 0; d < D; d++) ks->nope_key[row * D + d] = t->wk[(g * hd + nope[i]) * D + d];
            for (int64_t h = g * group; h < (g + 1) * group; h++)
                for (int64_t d = 0; d < D; d++) ks->nope_q[(h * ks->nk + row) * D + d] = t->wq[(h * hd + nope[i]) * D + d];
        }
    free(nope);
    return STATUS_OK;
}
