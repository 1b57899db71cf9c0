/* The latent basis of one MLA layer: the SVD of the stacked weights, or the principal directions
 * of the projected calibration activations under a metric that weighs what an error costs. */
#include "model/convert/latent_basis.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/convert/linalg.h"

#define TRY_GOTO(expr)              \
    do {                            \
        st = (expr);                \
        if (st != STATUS_OK) goto done; \
    } while (0)

/* B = [nope_key ; wv], [nk + K hd, D]. */
static double *stack_rows(const GqaWeights *t, const KeySplit *ks, int64_t *rows) {
    int64_t D = t->D, nv = t->K * t->hd;
    *rows = ks->nk + nv;
    double *B = malloc((size_t)(*rows * D) * sizeof(double));
    if (!B) return NULL;
    memcpy(B, ks->nope_key, (size_t)(ks->nk * D) * sizeof(double));
    for (int64_t i = 0; i < nv * D; i++) B[ks->nk * D + i] = t->wv[i];
    return B;
}

Status latent_basis_weights(const GqaWeights *t, const KeySplit *ks, int64_t r, double *latent, double *up,
                            double *kept_energy) {
    int64_t D = t->D, rows = 0;
    double *B = stack_rows(t, ks, &rows);
    int64_t k = rows < D ? rows : D;
    double *U = malloc((size_t)(rows * k) * sizeof(double)), *S = malloc((size_t)k * sizeof(double));
    double *VT = malloc((size_t)(k * D) * sizeof(double));
    Status st = B && U && S && VT ? STATUS_OK : errorf("conversion: out of memory for the latent SVD");
    if (st == STATUS_OK) st = svd_thin(B, rows, D, U, S, VT);
    if (st == STATUS_OK) {
        double total = 0, kept = 0;
        for (int64_t i = 0; i < k; i++) {
            total += S[i] * S[i];
            if (i < r) kept += S[i] * S[i];
        }
        *kept_energy = total > 0 ? kept / total : 1.0;
        for (int64_t i = 0; i < r; i++)
            for (int64_t d = 0; d < D; d++) latent[i * D + d] = i < k ? S[i] * VT[i * D + d] : 0;
        for (int64_t a = 0; a < rows; a++)
            for (int64_t j = 0; j < r; j++) up[a * r + j] = j < k ? U[a * k + j] : 0;
    }
    free(B);
    free(U);
    free(S);
    free(VT);
    return st;
}

/* M^(1/2) of a symmetric positive semi-definite M [n, n] (negative eigenvalues from rounding -> 0). */
static Status sym_sqrt(const double *M, int64_t n, double *out) {
    double *A = malloc((size_t)(n * n) * sizeof(double)), *V = malloc((size_t)(n * n) * sizeof(double));
    double *w = malloc((size_t)n * sizeof(double)), *VS = malloc((size_t)(n * n) * sizeof(double));
    Status st = A && V && w && VS ? STATUS_OK : errorf("conversion: out of memory");
    if (st == STATUS_OK) {
        memcpy(A, M, (size_t)(n * n) * sizeof(double));
        st = eig_sym(A, n, w, V);
    }
    if (st == STATUS_OK) {
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++) VS[i * n + j] = V[i * n + j] * sqrt(w[j] > 0 ? w[j] : 0);
        matmul_f64_nt(VS, V, out, n, n, n);
    }
    free(A);
    free(V);
    free(w);
    free(VS);
    return st;
}

Status latent_basis_activations(const GqaWeights *t, const KeySplit *ks, const double *Ca, const double *Ckv, int64_t r,
                                double *latent, double *up, double *kept_energy) {
    if (!Ckv) Ckv = Ca;
    int64_t D = t->D, H = t->H, K = t->K, hd = t->hd, group = H / K, nk = ks->nk, rows = 0;
    double *B = stack_rows(t, ks, &rows);
    int64_t n2 = rows * rows, rk = r < rows ? r : rows;
    double *BC = malloc((size_t)(rows * D) * sizeof(double)), *cov = malloc((size_t)n2 * sizeof(double));
    double *metric = calloc((size_t)n2, sizeof(double)), *half_m = malloc((size_t)n2 * sizeof(double));
    double *tmp = malloc((size_t)n2 * sizeof(double)), *Z = malloc((size_t)n2 * sizeof(double));
    double *w = malloc((size_t)rows * sizeof(double)), *E = malloc((size_t)n2 * sizeof(double));
    double *qc = malloc((size_t)((nk > hd ? nk : hd) * D) * sizeof(double));
    double *Er = NULL, *S = NULL, *SV = NULL, *Sw = NULL, *CW = NULL, *rhs = NULL;
    Status st = B && BC && cov && metric && half_m && tmp && Z && w && E && qc ? STATUS_OK
                                                                               : errorf("conversion: out of memory for the latent basis");
    if (st != STATUS_OK) goto done;
    /* cov = B Ckv B^T: the second moment of the stacked keys and values */
    matmul_f64(B, Ckv, BC, rows, D, D);
    matmul_f64_nt(BC, B, cov, rows, D, rows);

    /* The key block of the metric: sum over heads of nope_q Ca nope_q^T; the value block per kv
     * group: sum over its heads of Wo_h^T Wo_h. */
    for (int64_t h = 0; h < H && nk > 0; h++) {
        matmul_f64(ks->nope_q + h * nk * D, Ca, qc, nk, D, D);
        matmul_f64_nt(qc, ks->nope_q + h * nk * D, tmp, nk, D, nk);
        for (int64_t i = 0; i < nk; i++)
            for (int64_t j = 0; j < nk; j++) metric[i * rows + j] += tmp[i * nk + j];
    }
    for (int64_t h = 0; h < H; h++) {
        int64_t g = h / group, o = nk + g * hd;
        for (int64_t i = 0; i < hd; i++)
            for (int64_t j = 0; j < hd; j++) {
                double s = 0;
                for (int64_t d = 0; d < D; d++) s += t->wo[d * (H * hd) + h * hd + i] * t->wo[d * (H * hd) + h * hd + j];
                metric[(o + i) * rows + o + j] += s;
            }
    }
    /* Balance: each part's weighted error energy at zero rank is 1. */
    double ek = 0, ev = 0;
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < rows; j++) {
            int key_i = i < nk, key_j = j < nk;
            if (key_i && key_j) ek += metric[i * rows + j] * cov[j * rows + i];
            if (!key_i && !key_j) ev += metric[i * rows + j] * cov[j * rows + i];
        }
    double trace = 0;
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < rows; j++) {
            int key_i = i < nk, key_j = j < nk;
            double s = key_i && key_j ? (ek > 0 ? 1 / ek : 0) : !key_i && !key_j ? (ev > 0 ? 1 / ev : 0) : 0;
            metric[i * rows + j] *= s;
            if (i == j) trace += metric[i * rows + j];
        }
    /* A floor keeps directions neither part weighs (e.g. keys no query reads) from vanishing. */
    for (int64_t i = 0; i < rows; i++) metric[i * rows + i] += 1e-6 * trace / (double)rows;
    TRY_GOTO(sym_sqrt(metric, rows, half_m));
    matmul_f64(half_m, cov, tmp, rows, rows, rows);
    matmul_f64(tmp, half_m, Z, rows, rows, rows);
    TRY_GOTO(eig_sym(Z, rows, w, E));
    double total = 0, kept = 0;
    for (int64_t i = 0; i < rows; i++) {
        double v = w[i] > 0 ? w[i] : 0;
        total += v;
        if (i < rk) kept += v;
    }
    *kept_energy = total > 0 ? kept / total : 1.0;

    /* latent = E_r^T M^(1/2) B */
    Er = malloc((size_t)(rk * rows) * sizeof(double));
    S = malloc((size_t)(rk * rk) * sizeof(double));
    SV = malloc((size_t)(rk * rk) * sizeof(double));
    Sw = malloc((size_t)rk * sizeof(double));
    CW = malloc((size_t)(rows * rk) * sizeof(double));
    rhs = malloc((size_t)(rk * D) * sizeof(double));
    if (!Er || !S || !SV || !Sw || !CW || !rhs) {
        st = errorf("conversion: out of memory for the latent basis");
        goto done;
    }
    for (int64_t j = 0; j < rk; j++)
        for (int64_t i = 0; i < rows; i++) Er[j * rows + i] = E[i * rows + j];
    matmul_f64(Er, half_m, tmp, rk, rows, rows);
    matmul_f64(tmp, B, rhs, rk, rows, D);
    for (int64_t i = 0; i < r; i++)
        for (int64_t d = 0; d < D; d++) latent[i * D + d] = i < rk ? rhs[i * D + d] : 0;

    /* up = (B C L^T)(L C L^T)^+ : the least-squares map back to B x (pseudo-inverse by eigen). */
    double *LC = BC; /* reuse: [rk, D] */
    matmul_f64(rhs, Ckv, LC, rk, D, D);
    matmul_f64_nt(LC, rhs, S, rk, D, rk);
    matmul_f64_nt(B, LC, CW, rows, D, rk); /* B Ca L^T */
    TRY_GOTO(eig_sym(S, rk, Sw, SV));
    /* S^+ = SV diag(1/Sw) SV^T, small eigenvalues dropped */
    for (int64_t i = 0; i < rk; i++)
        for (int64_t j = 0; j < rk; j++) {
            double s = 0;
            for (int64_t e = 0; e < rk; e++)
                if (Sw[e] > 1e-12 * Sw[0]) s += SV[i * rk + e] * SV[j * rk + e] / Sw[e];
            tmp[i * rk + j] = s;
        }
    for (int64_t a = 0; a < rows; a++)
        for (int64_t j = 0; j < r; j++) {
            double s = 0;
            if (j < rk)
                for (int64_t e = 0; e < rk; e++) s += CW[a * rk + e] * tmp[e * rk + j];
            up[a * r + j] = s;
        }
done:
    free(B);
    free(BC);
    free(cov);
    free(metric);
    free(half_m);
    free(tmp);
    free(Z);
    free(w);
    free(E);
    free(qc);
    free(Er);
    free(S);
    free(SV);
    free(Sw);
    free(CW);
    free(rhs);
    return st;
}
