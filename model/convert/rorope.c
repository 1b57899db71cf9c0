/* RoRoPE (TransMLA): RoPE rotates every kv head's pair i by the same angle, so any orthogonal mix
 * of the K heads' pair-i keys commutes with it. Mixing by the principal axes of the calibration
 * keys puts most of pair i's energy in its first components; the shared rope key keeps the slots
 * whose loss of RoPE would cost the scores most, and the rest join the latent without RoPE, each
 * through a 2x2 map fitted to the teacher's attention (a fast pair over long distances averages
 * out, a slow one barely turns). */
#include "model/convert/rorope.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/convert/linalg.h"

/* The 13 sums over keys each slot needs per query position (see accumulate_head). */
enum { SUMS = 13 };

void rorope_fit_free(RoropeFit *f) {
    free(f->R);
    free(f->energy);
    free(f->damage);
    free(f->M);
    free(f->received);
    memset(f, 0, sizeof *f);
}

/* Rows [n0, n0 + n) of a [.., D] times W [cols, D]^T, in float64: out [n, cols]. */
static Status project_rows(const float *a, int64_t n, int64_t D, const float *W, int64_t cols, double *out) {
    double *A = malloc((size_t)(n * D) * sizeof(double)), *Wd = malloc((size_t)(cols * D) * sizeof(double));
    if (!A || !Wd) {
        free(A);
        free(Wd);
        return errorf("rorope: out of memory");
    }
    for (int64_t i = 0; i < n * D; i++) A[i] = a[i];
    for (int64_t i = 0; i < cols * D; i++) Wd[i] = W[i];
    matmul_f64_nt(A, Wd, out, n, D, cols);
    free(A);
    free(Wd);
    return STATUS_OK;
}

/* R[i] from the K x K second moment of pair i's keys (both halves of the pair). */
static Status fit_rotations(const double *k, int64_t N, int64_t K, int64_t hd, RoropeFit *f) {
    int64_t half = hd / 2;
    double *C = malloc((size_t)(K * K) * sizeof(double)), *V = malloc((size_t)(K * K) * sizeof(double));
    double *w = malloc((size_t)K * sizeof(double));
    Status st = C && V && w ? STATUS_OK : errorf("rorope: out of memory");
    for (int64_t i = 0; st == STATUS_OK && i < half; i++) {
        memset(C, 0, (size_t)(K * K) * sizeof(double));
        for (int64_t n = 0; n < N; n++) {
            const double *row = k + n * K * hd;
            for (int64_t g = 0; g < K; g++)
                for (int64_t h = 0; h <= g; h++)
                    C[g * K + h] += row[g * hd + i] * row[h * hd + i] + row[g * hd + half + i] * row[h * hd + half + i];
        }
        for (int64_t g = 0; g < K; g++)
            for (int64_t h = 0; h < g; h++) C[h * K + g] = C[g * K + h];
        st = eig_sym(C, K, w, V);
        for (int64_t c = 0; st == STATUS_OK && c < K; c++) {
            f->energy[i * K + c] = w[c] > 0 ? w[c] / (double)N : 0;
            for (int64_t g = 0; g < K; g++) f->R[(i * K + c) * K + g] = V[g * K + c];
        }
    }
    free(C);
    free(V);
    free(w);
    return st;
}

/* Causal softmax of one head's scores with RoPE applied, as the teacher attends: P [T, T]. */
static void teacher_probabilities(const double *q, const double *k, int64_t T, int64_t hd, int64_t qstride,
                                  int64_t kstride, const double *cosb, const double *sinb, double *qr, double *kr,
                                  float *P) {
    int64_t half = hd / 2;
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < half; i++) {
            double c = cosb[t * half + i], s = sinb[t * half + i];
            const double *qt = q + t * qstride, *kt = k + t * kstride;
            qr[t * hd + i] = qt[i] * c - qt[half + i] * s;
            qr[t * hd + half + i] = qt[half + i] * c + qt[i] * s;
            kr[t * hd + i] = kt[i] * c - kt[half + i] * s;
            kr[t * hd + half + i] = kt[half + i] * c + kt[i] * s;
        }
    double scale = 1.0 / sqrt((double)hd);
    for (int64_t t = 0; t < T; t++) {
        float *row = P + t * T;
        double mx = -INFINITY, sum = 0;
        for (int64_t s = 0; s <= t; s++) {
            double d = 0;
            for (int64_t e = 0; e < hd; e++) d += qr[t * hd + e] * kr[s * hd + e];
            row[s] = (float)(d * scale);
            if (row[s] > mx) mx = row[s];
        }
        for (int64_t s = 0; s <= t; s++) {
            double e = exp(row[s] - mx);
            row[s] = (float)e;
            sum += e;
        }
        for (int64_t s = 0; s <= t; s++) row[s] = (float)(row[s] / sum);
        for (int64_t s = t + 1; s < T; s++) row[s] = 0.0f;
    }
}

/* One head, one sequence: adds, for every slot, the attention-weighted Gram G (4x4) of the
 * position-free features q_x k_u, their products with the true RoPE score y (b), and sum P y^2.
 * PV [T, slots*SUMS] holds, per slot, sum_s P[t, s] f(s) for the 13 key functions f below, so the
 * double sum over (t, s) costs one triangular product. q: the head's pre-RoPE query [T, hd]. */
static void accumulate_head(const double *q, int64_t qstride, const float *PV, int64_t T, int64_t half, int64_t K,
                            const double *cosb, const double *sinb, const double *cos2b, const double *sin2b,
                            double *G, double *b, double *yy) {
    int64_t cols = half * K * SUMS;
    for (int64_t t = 0; t < T; t++) {
        const double *qt = q + t * qstride;
        for (int64_t i = 0; i < half; i++) {
            double qa = qt[i], qb = qt[half + i], x[2] = {qa, qb};
            double Ct = cosb[t * half + i], St = sinb[t * half + i];
            double C2 = cos2b[t * half + i], S2 = sin2b[t * half + i];
            for (int64_t c = 0; c < K; c++) {
                const float *v = PV + t * cols + (i * K + c) * SUMS;
                int64_t slot = i * K + c;
                /* sums over keys, index by (u, w) in {a, b}: aa = 0, ab = 1, bb = 2 */
                double S1[3] = {v[0], v[1], v[2]};
                double Kc[3], Ks[3];
                for (int j = 0; j < 3; j++) {
                    Kc[j] = Ct * v[3 + j] + St * v[6 + j];
                    Ks[j] = St * v[3 + j] - Ct * v[6 + j];
                }
                static const int uw[2][2] = {{0, 1}, {1, 2}};
                double *Gs = G + slot * 16, *bs = b + slot * 4;
                for (int xi = 0; xi < 2; xi++)
                    for (int u = 0; u < 2; u++) {
                        int f = xi * 2 + u;
                        for (int yi = 0; yi < 2; yi++)
                            for (int w = 0; w < 2; w++) Gs[f * 4 + yi * 2 + w] += x[xi] * x[yi] * S1[uw[u][w]];
                        /* y = cos(qa ka + qb kb) + sin(qa kb - qb ka), times q_x k_u */
                        bs[f] += x[xi] * (qa * Kc[uw[u][0]] + qb * Kc[uw[u][1]] + qa * Ks[uw[u][1]] - qb * Ks[uw[u][0]]);
                    }
                /* y^2 = (A^2+B^2)/2 + cos2(A^2-B^2)/2 + sin2 AB with A = qa ka + qb kb, B = qa kb - qb ka */
                double F1c = v[9], F1s = v[10], F2c = v[11], F2s = v[12];
                double d2 = qa * qa - qb * qb, pq = qa * qb;
                double cos_f1 = C2 * F1c + S2 * F1s, cos_f2 = C2 * F2c + S2 * F2s;
                double sin_f1 = S2 * F1c - C2 * F1s, sin_f2 = S2 * F2c - C2 * F2s;
                yy[slot] += 0.5 * (qa * qa + qb * qb) * (S1[0] + S1[2]) + 0.5 * (d2 * cos_f1 + 4 * pq * cos_f2) +
                            (d2 * sin_f2 - pq * sin_f1);
            }
        }
    }
}

Status rorope_fit(const GqaWeights *t, const float *inv_freq, const float *a, int64_t B, int64_t T, int64_t fit_seqs,
                  RoropeFit *f) {
    int64_t D = t->D, H = t->H, K = t->K, hd = t->hd, half = hd / 2, N = B * T, group = H / K;
    int64_t slots = half * K, cols = slots * SUMS;
    if (fit_seqs > B) fit_seqs = B;
    if (fit_seqs < 1) fit_seqs = 1;
    memset(f, 0, sizeof *f);
    f->H = H;
    f->K = K;
    f->half = half;
    f->R = calloc((size_t)(half * K * K), sizeof(double));
    f->energy = calloc((size_t)slots, sizeof(double));
    f->damage = calloc((size_t)slots, sizeof(double));
    f->M = calloc((size_t)(H * slots * 4), sizeof(double));
    f->n_received = fit_seqs * T;
    f->received = calloc((size_t)(fit_seqs * T), sizeof(double));
    double *recv_h = calloc((size_t)(H * T), sizeof(double));
    double *k = malloc((size_t)(N * K * hd) * sizeof(double));
    double *q = malloc((size_t)(fit_seqs * T * H * hd) * sizeof(double));
    double *trig = malloc((size_t)(4 * T * half) * sizeof(double));
    double *G = calloc((size_t)(H * slots * 16), sizeof(double)), *bv = calloc((size_t)(H * slots * 4), sizeof(double));
    double *yy = calloc((size_t)(H * slots), sizeof(double));
    float *V = malloc((size_t)(T * cols) * sizeof(float));
    Status st = f->R && f->energy && f->damage && f->M && f->received && recv_h && k && q && trig && G && bv && yy && V
                    ? STATUS_OK
                    : errorf("rorope: out of memory for a %lld-token calibration", (long long)N);
    if (st == STATUS_OK) st = project_rows(a, N, D, t->wk, K * hd, k);
    if (st == STATUS_OK) st = project_rows(a, fit_seqs * T, D, t->wq, H * hd, q);
    if (st == STATUS_OK) st = fit_rotations(k, N, K, hd, f);
    if (st != STATUS_OK) goto done;

    double *cosb = trig, *sinb = trig + T * half, *cos2b = trig + 2 * T * half, *sin2b = trig + 3 * T * half;
    for (int64_t p = 0; p < T; p++)
        for (int64_t i = 0; i < half; i++) {
            double ang = (double)p * inv_freq[i];
            cosb[p * half + i] = cos(ang);
            sinb[p * half + i] = sin(ang);
            cos2b[p * half + i] = cos(2 * ang);
            sin2b[p * half + i] = sin(2 * ang);
        }

    /* Heads run on OpenMP threads, each product single-threaded: the OpenMP OpenBLAS is inside a
     * parallel region, the pthreads one is held to one thread per call by the CPU backend. Setting
     * OpenBLAS's thread count here would also set OpenMP's (the OpenMP build) and serialise the heads. */
    for (int64_t s = 0; s < fit_seqs && st == STATUS_OK; s++) {
        const double *ks = k + s * T * K * hd, *qs = q + s * T * H * hd;
        /* The rotated slot keys and the 13 key functions per slot and position. */
        for (int64_t p = 0; p < T; p++)
            for (int64_t i = 0; i < half; i++)
                for (int64_t c = 0; c < K; c++) {
                    double ka = 0, kb = 0;
                    for (int64_t g = 0; g < K; g++) {
                        double r = f->R[(i * K + c) * K + g];
                        ka += r * ks[p * K * hd + g * hd + i];
                        kb += r * ks[p * K * hd + g * hd + half + i];
                    }
                    double aa = ka * ka, ab = ka * kb, bb = kb * kb;
                    double cp = cosb[p * half + i], sp = sinb[p * half + i];
                    double c2 = cos2b[p * half + i], s2 = sin2b[p * half + i];
                    float *v = V + p * cols + (i * K + c) * SUMS;
                    double vals[SUMS] = {aa, ab, bb, aa * cp, ab * cp, bb * cp, aa * sp, ab * sp, bb * sp,
                                         (aa - bb) * c2, (aa - bb) * s2, ab * c2, ab * s2};
                    for (int j = 0; j < SUMS; j++) v[j] = (float)vals[j];
                }
        int failed = 0;
#pragma omp parallel for schedule(static, 1)
        for (int64_t h = 0; h < H; h++) {
            float *P = malloc((size_t)(T * T) * sizeof(float)), *PV = malloc((size_t)(T * cols) * sizeof(float));
            double *qr = malloc((size_t)(T * hd) * sizeof(double)), *kr = malloc((size_t)(T * hd) * sizeof(double));
            if (P && PV && qr && kr) {
                int64_t g = h / group;
                teacher_probabilities(qs + h * hd, ks + g * hd, T, hd, H * hd, K * hd, cosb, sinb, qr, kr, P);
                memcpy(PV, V, (size_t)(T * cols) * sizeof(float));
                cblas_strmm(CblasRowMajor, CblasLeft, CblasLower, CblasNoTrans, CblasNonUnit, (int)T, (int)cols, 1.0f, P,
                            (int)T, PV, (int)cols);
                accumulate_head(qs + h * hd, H * hd, PV, T, half, K, cosb, sinb, cos2b, sin2b, G + h * slots * 16,
                                bv + h * slots * 4, yy + h * slots);
                for (int64_t t2 = 0; t2 < T; t2++)
                    for (int64_t s2 = 0; s2 <= t2; s2++) recv_h[h * T + s2] += P[t2 * T + s2];
            } else {
#pragma omp atomic write
                failed = 1;
            }
            free(P);
            free(PV);
            free(qr);
            free(kr);
        }
        if (failed) st = errorf("rorope: out of memory for the attention fit");
        /* heads summed in a fixed order, so the result does not depend on the thread count */
        for (int64_t p2 = 0; p2 < T; p2++) {
            double sum = 0;
            for (int64_t h = 0; h < H; h++) sum += recv_h[h * T + p2];
            f->received[s * T + p2] = sum / (double)(H * T);
        }
        memset(recv_h, 0, (size_t)(H * T) * sizeof(double));
    }
    if (st != STATUS_OK) goto done;

    /* Per head and slot: M by least squares (a small ridge keeps a slot the data never excites at
     * the identity), and the score energy it leaves unexplained. */
    for (int64_t h = 0; h < H; h++)
        for (int64_t sl = 0; sl < slots; sl++) {
            double *Gs = G + (h * slots + sl) * 16, *bs = bv + (h * slots + sl) * 4, *M = f->M + (h * slots + sl) * 4;
            double tr = Gs[0] + Gs[5] + Gs[10] + Gs[15], ridge = 1e-9 * tr + 1e-300;
            static const double eye[4] = {1, 0, 0, 1};
            double A[16], rhs[4];
            for (int e = 0; e < 16; e++) A[e] = Gs[e];
            for (int e = 0; e < 4; e++) {
                A[e * 4 + e] += ridge;
                rhs[e] = bs[e] + ridge * eye[e];
            }
            /* Gaussian elimination with partial pivoting on the 4x4 system. */
            int ok = tr > 0;
            for (int col = 0; ok && col < 4; col++) {
                int piv = col;
                for (int r = col + 1; r < 4; r++)
                    if (fabs(A[r * 4 + col]) > fabs(A[piv * 4 + col])) piv = r;
                if (A[piv * 4 + col] == 0) {
                    ok = 0;
                    break;
                }
                for (int e = 0; e < 4; e++) {
                    double tmp = A[col * 4 + e];
                    A[col * 4 + e] = A[piv * 4 + e];
                    A[piv * 4 + e] = tmp;
                }
                double tmp = rhs[col];
                rhs[col] = rhs[piv];
                rhs[piv] = tmp;
                for (int r = col + 1; r < 4; r++) {
                    double fct = A[r * 4 + col] / A[col * 4 + col];
                    for (int e = col; e < 4; e++) A[r * 4 + e] -= fct * A[col * 4 + e];
                    rhs[r] -= fct * rhs[col];
                }
            }
            for (int col = 3; ok && col >= 0; col--) {
                double s = rhs[col];
                for (int e = col + 1; e < 4; e++) s -= A[col * 4 + e] * M[e];
                M[col] = s / A[col * 4 + col];
            }
            if (!ok)
                for (int e = 0; e < 4; e++) M[e] = eye[e];
            double lost = yy[h * slots + sl];
            for (int e = 0; e < 4; e++) lost -= bs[e] * M[e];
            int64_t g = h / group, i = sl / K, c = sl % K;
            double r = f->R[(i * K + c) * K + g];
            f->damage[sl] += r * r * (lost > 0 ? lost : 0);
        }
done:
    free(recv_h);
    free(k);
    free(q);
    free(trig);
    free(G);
    free(bv);
    free(yy);
    free(V);
    if (st != STATUS_OK) rorope_fit_free(f);
    return st;
}

/* The component of pair i whose loss of RoPE would cost most. */
static int64_t best_component(const RoropeFit *f, int64_t i) {
    int64_t c_best = 0;
    for (int64_t c = 1; c < f->K; c++)
        if (f->damage[i * f->K + c] > f->damage[i * f->K + c_best]) c_best = c;
    return c_best;
}

int rorope_exportable_step(const RoropeFit *const *fits, int n, int P) {
    if (n < 1 || P < 1) return 1;
    int64_t half = fits[0]->half, max_step = P > 1 ? (half - 1) / (P - 1) : 1;
    int best_step = 1;
    double best = -1;
    for (int64_t step = 1; step <= max_step; step++) {
        double sum = 0;
        for (int l = 0; l < n; l++) {
            /* each layer votes with its share of the damage, so no layer's scale dominates */
            const RoropeFit *f = fits[l];
            double total = 0, kept = 0;
            for (int64_t s = 0; s < f->half * f->K; s++) total += f->damage[s];
            for (int j = 0; j < P && j * step < f->half; j++) kept += f->damage[j * step * f->K + best_component(f, j * step)];
            sum += total > 0 ? kept / total : 0;
        }
        if (sum > best) {
            best = sum;
            best_step = (int)step;
        }
    }
    return best_step;
}

Status rorope_choose_slots(const RoropeFit *f, int P, int step, int *pair, int *comp) {
    int64_t slots = f->half * f->K, half = f->half;
    if (P < 1 || P > slots) return errorf("rorope: %d rope pairs asked of %lld slots", P, (long long)slots);
    if (step > 0) {
        if ((int64_t)(P - 1) * step >= half)
            return errorf("rorope: %d rope pairs %d apart exceed the teacher's %lld frequency pairs", P, step, (long long)half);
        for (int j = 0; j < P; j++) {
            pair[j] = j * step;
            comp[j] = (int)best_component(f, (int64_t)j * step);
        }
        return STATUS_OK;
    }
    char *taken = calloc((size_t)slots, 1);
    if (!taken) return errorf("rorope: out of memory");
    for (int j = 0; j < P; j++) {
        int64_t best = -1;
        for (int64_t s = 0; s < slots; s++)
            if (!taken[s] && (best < 0 || f->damage[s] > f->damage[best])) best = s;
        if (best >= 0) taken[best] = 1;
    }
    int n = 0;
    for (int64_t s = 0; s < slots && n < P; s++)
        if (taken[s]) {
            pair[n] = (int)(s / f->K);
            comp[n] = (int)(s % f->K);
            n++;
        }
    free(taken);
    return STATUS_OK;
}

Status rorope_split(const GqaWeights *t, const float *inv_freq, const RoropeFit *f, int P, const int *pair,
                    const int *comp, int fitted, KeySplit *ks) {
    int64_t D = t->D, H = t->H, K = t->K, hd = t->hd, half = hd / 2, group = H / K, slots = half * K;
    int64_t nk = 2 * (slots - P);
    TRY(key_split_alloc(ks, D, H, P, nk));
    char *kept = calloc((size_t)slots, 1);
    if (!kept) {
        key_split_free(ks);
        return errorf("rorope: out of memory");
    }
    for (int j = 0; j < P; j++) kept[pair[j] * K + comp[j]] = 1;
    /* rotated key rows of slot (i, c): component a (dim i) and b (dim half + i) */
    for (int j = 0; j < P; j++) {
        int64_t i = pair[j], c = comp[j];
        ks->inv_freq[j] = inv_freq[i];
        ks->pair_of[j] = (int)i;
        for (int64_t g = 0; g < K; g++) {
            double r = f->R[(i * K + c) * K + g];
            for (int64_t d = 0; d < D; d++) {
                ks->rope_key[j * D + d] += r * t->wk[(g * hd + i) * D + d];
                ks->rope_key[(P + j) * D + d] += r * t->wk[(g * hd + half + i) * D + d];
            }
        }
        for (int64_t h = 0; h < H; h++) {
            double r = f->R[(i * K + c) * K + h / group];
            for (int64_t d = 0; d < D; d++) {
                ks->rope_q[(h * 2 * P + j) * D + d] = r * t->wq[(h * hd + i) * D + d];
                ks->rope_q[(h * 2 * P + P + j) * D + d] = r * t->wq[(h * hd + half + i) * D + d];
            }
        }
    }
    int64_t row = 0;
    for (int64_t i = 0; i < half; i++)
        for (int64_t c = 0; c < K; c++) {
            if (kept[i * K + c]) continue;
            for (int64_t g = 0; g < K; g++) {
                double r = f->R[(i * K + c) * K + g];
                for (int64_t d = 0; d < D; d++) {
                    ks->nope_key[row * D + d] += r * t->wk[(g * hd + i) * D + d];
                    ks->nope_key[(row + 1) * D + d] += r * t->wk[(g * hd + half + i) * D + d];
                }
            }
            for (int64_t h = 0; h < H; h++) {
                double r = f->R[(i * K + c) * K + h / group];
                static const double eye[4] = {1, 0, 0, 1};
                const double *M = fitted ? f->M + (h * slots + i * K + c) * 4 : eye;
                /* q' = M^T q: q'_a = M_aa q_a + M_ba q_b, q'_b = M_ab q_a + M_bb q_b */
                for (int64_t d = 0; d < D; d++) {
                    double qa = r * t->wq[(h * hd + i) * D + d], qb = r * t->wq[(h * hd + half + i) * D + d];
                    ks->nope_q[(h * nk + row) * D + d] = M[0] * qa + M[2] * qb;
                    ks->nope_q[(h * nk + row + 1) * D + d] = M[1] * qa + M[3] * qb;
                }
            }
            row += 2;
        }
    free(kept);
    return STATUS_OK;
}
