/* The query bottleneck from calibration activations. The two-sided weighted rank-k problem
 *     min over B, A of  sum_h || L_h (W_h - B_h A) R ||_F^2,   L_h = Ck_h^(1/2),  R = Ca^(1/2)
 * is a plain rank-k approximation of M = L W R (L = blockdiag_h L_h): with M = U S V^T,
 * L B A R = U_k S_k V_k^T. Every split of S_k between the factors solves it; the one taken below
 * is chosen for training. */
#include "model/convert/q_bottleneck.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "model/convert/linalg.h"

/* Eigenvalues of a metric below this share of their mean count as this share of it. Ca is near
 * singular where no calibration input varies, and Ck_h is singular outright (a head reads keys of
 * rank at most r + dr in a dn + dr space): the floor makes both invertible and leaves those
 * directions a weight that only breaks ties, so there the fit is the unweighted least squares. */
#define METRIC_FLOOR 1e-6

/* For a symmetric positive semi-definite M [n, n] with eigenvalues w floored at METRIC_FLOOR
 * mean(w): root = M^(1/2) and, unless NULL, inv_root = M^(-1/2). A metric with nothing in it (all
 * zero) weighs every direction alike. */
static Status metric_roots(const double *M, int64_t n, double *root, double *inv_root) {
    double *A = malloc((size_t)(n * n) * sizeof(double)), *V = malloc((size_t)(n * n) * sizeof(double));
    double *w = malloc((size_t)n * sizeof(double)), *VS = malloc((size_t)(n * n) * sizeof(double));
    Status st = A && V && w && VS ? STATUS_OK : errorf("q bottleneck: out of memory for a [%lld, %lld] metric",
                                                       (long long)n, (long long)n);
    if (st == STATUS_OK) {
        memcpy(A, M, (size_t)(n * n) * sizeof(double));
        st = eig_sym(A, n, w, V);
    }
    if (st == STATUS_OK) {
        double mean = 0;
        for (int64_t i = 0; i < n; i++) mean += w[i] > 0 ? w[i] / (double)n : 0;
        double floor = mean > 0 ? METRIC_FLOOR * mean : 0;
        for (int64_t j = 0; j < n; j++) w[j] = mean > 0 ? fmax(w[j], floor) : 1.0;
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++) VS[i * n + j] = V[i * n + j] * sqrt(w[j]);
        matmul_f64_nt(VS, V, root, n, n, n);
        if (inv_root) {
            for (int64_t i = 0; i < n; i++)
                for (int64_t j = 0; j < n; j++) VS[i * n + j] = V[i * n + j] / sqrt(w[j]);
            matmul_f64_nt(VS, V, inv_root, n, n, n);
        }
    }
    free(A);
    free(V);
    free(w);
    free(VS);
    return st;
}

/* Wk [dq, D]: the key rows head h reads, as maps of the input: its no-RoPE rows up_k,h latent, then
 * the rope key. */
static void head_keys(const MlaWeights *s, const double *latent, int64_t h, double *Wk) {
    int64_t D = s->D, r = s->r, dn = s->dn, dr = s->dr;
    for (int64_t i = 0; i < dn; i++) {
        double *row = Wk + i * D;
        memset(row, 0, (size_t)D * sizeof(double));
        for (int64_t j = 0; j < r; j++) {
            double u = s->up_k[(h * dn + i) * r + j];
            for (int64_t d = 0; d < D; d++) row[d] += u * latent[j * D + d];
        }
    }
    for (int64_t i = 0; i < dr * D; i++) Wk[dn * D + i] = s->rope_key[i];
}

Status q_bottleneck_activations(const MlaWeights *s, const double *Ca, int64_t k, uint64_t seed, float *A, float *B) {
    int64_t D = s->D, H = s->H, r = s->r, dq = s->dn + s->dr, rows = H * dq, kk = rows < D ? rows : D;
    if (k < 1) return errorf("q bottleneck: rank %lld must be positive", (long long)k);
    double trace = 0;
    for (int64_t d = 0; d < D; d++) trace += Ca[d * D + d];
    if (!(trace > 0))
        return errorf("q bottleneck: the calibration input is zero (trace of its second moment %g)", trace);
    double *R = malloc((size_t)(D * D) * sizeof(double)), *Rinv = malloc((size_t)(D * D) * sizeof(double));
    double *W = malloc((size_t)(rows * D) * sizeof(double)), *WR = malloc((size_t)(rows * D) * sizeof(double));
    double *M = malloc((size_t)(rows * D) * sizeof(double)), *latent = malloc((size_t)(r * D) * sizeof(double));
    double *Wk = malloc((size_t)(dq * D) * sizeof(double)), *T = malloc((size_t)(dq * D) * sizeof(double));
    double *Ck = malloc((size_t)(dq * dq) * sizeof(double)), *L = malloc((size_t)(dq * dq) * sizeof(double));
    double *U = malloc((size_t)(rows * kk) * sizeof(double)), *S = malloc((size_t)kk * sizeof(double));
    double *VT = malloc((size_t)(kk * D) * sizeof(double)), *VR = malloc((size_t)(kk * D) * sizeof(double));
    double *WV = malloc((size_t)(rows * kk) * sizeof(double));
    Status st = R && Rinv && W && WR && M && latent && Wk && T && Ck && L && U && S && VT && VR && WV
                    ? STATUS_OK
                    : errorf("q bottleneck: out of memory ([%lld, %lld] queries)", (long long)rows, (long long)D);
    if (st == STATUS_OK) {
        for (int64_t i = 0; i < rows * D; i++) W[i] = s->q[i];
        for (int64_t i = 0; i < r * D; i++) latent[i] = s->latent[i];
        st = metric_roots(Ca, D, R, Rinv);
    }
    if (st == STATUS_OK) matmul_f64(W, R, WR, rows, D, D);
    /* M_h = L_h (W_h R), L_h from the second moment of the keys head h reads. */
    for (int64_t h = 0; st == STATUS_OK && h < H; h++) {
        head_keys(s, latent, h, Wk);
        matmul_f64(Wk, Ca, T, dq, D, D);
        matmul_f64_nt(T, Wk, Ck, dq, D, dq);
        st = metric_roots(Ck, dq, L, NULL);
        if (st == STATUS_OK) matmul_f64(L, WR + h * dq * D, M + h * dq * D, dq, dq, D);
        if (st != STATUS_OK) error_context("head %lld: ", (long long)h);
    }
    if (st == STATUS_OK) st = svd_thin(M, rows, D, U, S, VT);
    if (st == STATUS_OK) {
        /* The split: A = sigma V_k^T R^-1, B = W R V_k / sigma (B A = L^-1 U_k S_k V_k^T R^-1, as L B =
         * U_k S_k / sigma). The bottleneck's channels q_a = A x are then uncorrelated on the
         * calibration inputs, each with the mean square sigma^2 of an input channel: B reads
         * inputs shaped like a normed hidden state, as q_proj did, and has q_proj's scale, and A maps
         * inputs to outputs of the same size. Adam moves every weight by about lr per step whatever
         * its size, so factors at the scale of the layers around them move at the same relative
         * rate as those layers; and with whitened inputs B's curvature is sigma^2 I, which Adam's
         * per-weight step preconditions exactly. Splitting sqrt(S_k) to each side would instead
         * put the metric's scale in the weights: S carries the keys' size (L), so the factors'
         * scales would depend on how large the keys happen to be. */
        double sigma = sqrt(trace / (double)D);
        int64_t kept = k < kk ? k : kk;
        matmul_f64(VT, Rinv, VR, kk, D, D);
        matmul_f64_nt(WR, VT, WV, rows, D, kk);
        for (int64_t i = 0; i < kept; i++)
            for (int64_t d = 0; d < D; d++) A[i * D + d] = (float)(sigma * VR[i * D + d]);
        for (int64_t j = 0; j < rows; j++)
            for (int64_t i = 0; i < k; i++) B[j * k + i] = i < kept ? (float)(WV[j * kk + i] / sigma) : 0.0f;
        /* Channels beyond the rank: random rows with the others' mean square (a row a of N(0, 1/D)
         * entries gives E[(a x)^2] = trace(Ca) / D = sigma^2), read by nothing yet. */
        if (k > kept)
            rng_fill_normal(A + kept * D, (k - kept) * D, seed, 0x9b07u, 0.0f, (float)(1.0 / sqrt((double)D)));
    }
    free(R), free(Rinv), free(W), free(WR), free(M), free(latent), free(Wk), free(T), free(Ck), free(L);
    free(U), free(S), free(VT), free(VR), free(WV);
    return st;
}
