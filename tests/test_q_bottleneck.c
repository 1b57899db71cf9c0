/* The linear q bottleneck fitted to the scores (model/convert/q_bottleneck.c): on synthetic layers
 * its score error, measured over pairs of calibration tokens, falls with the rank and is never
 * worse than the weights' SVD at the same rank, its channels come out whitened; in a conversion it
 * reproduces the student without a bottleneck at full rank, biases included. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "model/convert/convert.h"
#include "model/convert/convert_layer.h"
#include "model/convert/linalg.h"
#include "model/convert/q_bottleneck.h"
#include "convert_fixtures.h"

/* A layer of H heads over an input of width D: queries [H (dn + dr), D], keys from a latent of
 * width r (< dn + dr, so some query directions are read by no key) and a shared rope key. */
enum { D = 24, H = 3, DN = 6, DR = 4, R = 4, NTOK = 160, ROWS = H * (DN + DR) };

typedef struct {
    MlaWeights w;
    float q[ROWS * D], latent[R * D], rope_key[DR * D], up_k[H * DN * R];
    float a[NTOK * D];   /* calibration rows */
    double Ca[D * D];
} Layer;

static void make_layer(Layer *L, uint64_t seed) {
    memset(L, 0, sizeof *L);
    L->w = (MlaWeights){.D = D, .H = H, .r = R, .dn = DN, .dr = DR, .dv = 1, .q = L->q, .latent = L->latent,
                        .rope_key = L->rope_key, .up_k = L->up_k};
    fill_normal(L->q, ROWS * D, seed + 1, 0.3f);
    fill_normal(L->latent, R * D, seed + 2, 0.3f);
    fill_normal(L->rope_key, DR * D, seed + 3, 0.3f);
    fill_normal(L->up_k, H * DN * R, seed + 4, 0.5f);
    /* Inputs far from isotropic: channel d at scale 2^(-d/4), and every row shares a mean. */
    float mean[D];
    fill_normal(mean, D, seed + 5, 0.5f);
    fill_normal(L->a, NTOK * D, seed + 6, 1.0f);
    for (int64_t n = 0; n < NTOK; n++)
        for (int64_t d = 0; d < D; d++) L->a[n * D + d] = L->a[n * D + d] * exp2f(-(float)d / 4) + mean[d];
    CHECK_OK(second_moment(L->a, NTOK, D, L->Ca));
}

/* (1/N^2) sum over heads and token pairs (n, m) of (dq_h(a_n) . k_h(a_m))^2, straight from the
 * rows: dq = (W - B A) a, k_h = [up_k,h latent a ; rope_key a]. */
static double score_error(const Layer *L, const float *A, const float *B, int64_t k) {
    static double dq[NTOK][ROWS], keys[NTOK][H][DN + DR];
    for (int64_t n = 0; n < NTOK; n++) {
        const float *x = L->a + n * D;
        double qa[ROWS > D ? ROWS : D] = {0}, c[R] = {0};
        for (int64_t i = 0; i < k; i++)
            for (int64_t d = 0; d < D; d++) qa[i] += (double)A[i * D + d] * x[d];
        for (int64_t j = 0; j < ROWS; j++) {
            double w = 0, b = 0;
            for (int64_t d = 0; d < D; d++) w += (double)L->q[j * D + d] * x[d];
            for (int64_t i = 0; i < k; i++) b += (double)B[j * k + i] * qa[i];
            dq[n][j] = w - b;
        }
        for (int64_t j = 0; j < R; j++)
            for (int64_t d = 0; d < D; d++) c[j] += (double)L->latent[j * D + d] * x[d];
        for (int64_t h = 0; h < H; h++) {
            for (int64_t i = 0; i < DN; i++) {
                keys[n][h][i] = 0;
                for (int64_t j = 0; j < R; j++) keys[n][h][i] += (double)L->up_k[(h * DN + i) * R + j] * c[j];
            }
            for (int64_t i = 0; i < DR; i++) {
                keys[n][h][DN + i] = 0;
                for (int64_t d = 0; d < D; d++) keys[n][h][DN + i] += (double)L->rope_key[i * D + d] * x[d];
            }
        }
    }
    double e = 0;
    for (int64_t n = 0; n < NTOK; n++)
        for (int64_t m = 0; m < NTOK; m++)
            for (int64_t h = 0; h < H; h++) {
                double s = 0;
                for (int64_t i = 0; i < DN + DR; i++) s += dq[n][h * (DN + DR) + i] * keys[m][h][i];
                e += s * s;
            }
    return e / ((double)NTOK * NTOK);
}

static void test_score_error(uint64_t seed) {
    Layer *L = test_alloc(sizeof *L);
    make_layer(L, seed);
    float zero[ROWS] = {0};
    double e0 = score_error(L, zero, zero, 1); /* no query at all: B = 0 */
    const int64_t ranks[] = {2, 4, 8, 12, 18};
    double prev = INFINITY;
    int falls = 1, beats = 1;
    char line[512] = "";
    for (int i = 0; i < 5; i++) {
        int64_t k = ranks[i];
        float *A = test_alloc((size_t)(k * D) * 4), *B = test_alloc((size_t)(ROWS * k) * 4);
        float *Aw = test_alloc((size_t)(k * D) * 4), *Bw = test_alloc((size_t)(ROWS * k) * 4);
        CHECK_OK(q_bottleneck_activations(&L->w, L->Ca, k, 3, A, B));
        CHECK_OK(factor_low_rank(L->q, ROWS, D, k, Aw, Bw));
        double e = score_error(L, A, B, k) / e0, ew = score_error(L, Aw, Bw, k) / e0;
        falls &= e < prev;
        beats &= e <= ew * (1 + 1e-9);
        prev = e;
        size_t used = strlen(line);
        snprintf(line + used, sizeof line - used, " k %lld: %.3g (weights %.3g);", (long long)k, e, ew);
        free(A), free(B), free(Aw), free(Bw);
    }
    CHECK(falls, "seed %llu: the score error falls with the rank:%s", (unsigned long long)seed, line);
    CHECK(beats, "seed %llu: the score error is no worse than the weights' SVD at equal rank:%s",
          (unsigned long long)seed, line);
    free(L);
}

/* A's channels on the calibration input: uncorrelated, each with the inputs' mean square. */
static void test_whitened(void) {
    Layer *L = test_alloc(sizeof *L);
    make_layer(L, 40);
    enum { K = 8 };
    float A[K * D], B[ROWS * K];
    CHECK_OK(q_bottleneck_activations(&L->w, L->Ca, K, 3, A, B));
    double trace = 0, worst = 0;
    for (int d = 0; d < D; d++) trace += L->Ca[d * D + d];
    double sigma2 = trace / D;
    for (int i = 0; i < K; i++)
        for (int j = 0; j < K; j++) {
            double c = 0;
            for (int64_t d = 0; d < D; d++)
                for (int64_t e = 0; e < D; e++) c += (double)A[i * D + d] * L->Ca[d * D + e] * A[j * D + e];
            worst = fmax(worst, fabs(c / sigma2 - (i == j)));
        }
    CHECK(worst < 1e-4, "A Ca A^T = sigma^2 I on the calibration input (largest deviation %.3g)", worst);
    free(L);
}

/* Beyond the problem's rank (here D), the extra channels change nothing: B A = W. */
static void test_beyond_rank(void) {
    Layer *L = test_alloc(sizeof *L);
    make_layer(L, 50);
    enum { K = D + 5 };
    float *A = test_alloc((size_t)(K * D) * 4), *B = test_alloc((size_t)(ROWS * K) * 4);
    CHECK_OK(q_bottleneck_activations(&L->w, L->Ca, K, 3, A, B));
    double num = 0, den = 0, extra = 0;
    for (int64_t j = 0; j < ROWS; j++)
        for (int64_t d = 0; d < D; d++) {
            double p = 0;
            for (int64_t i = 0; i < K; i++) p += (double)B[j * K + i] * A[i * D + d];
            num += (p - L->q[j * D + d]) * (p - L->q[j * D + d]);
            den += (double)L->q[j * D + d] * L->q[j * D + d];
        }
    for (int64_t i = D; i < K; i++)
        for (int64_t d = 0; d < D; d++) extra += fabs(A[i * D + d]);
    CHECK(sqrt(num / den) < 1e-5, "rank %d > D: B A = W (rel error %.3g)", K, sqrt(num / den));
    CHECK(extra > 0, "the channels beyond the rank have non-zero rows of A, so gradients can grow them");
    free(A), free(B), free(L);
}

/* In a conversion: the linear bottleneck at full rank is the student without one. */
static void test_full_rank_conversion(Backend *be, int biased) {
    enum { BATCH = 4, SEQ = 16 };
    ModelConfig tc = convert_teacher_config(2);
    tc.qkv_bias = biased;
    Model *t = convert_make_teacher(be, tc, SEQ, 21);
    if (biased) randomize_biases(t, 500, 0.3f);
    ConvertOptions o;
    memset(&o, 0, sizeof o);
    o.init = MLA_INIT_SVD;
    o.rope_select = ROPE_SELECT_ROROPE;
    o.latent_basis = LATENT_BASIS_ACTIVATIONS;
    o.dims = (MlaDims){.kv_lora_rank = 6, .qk_nope_head_dim = 8, .qk_rope_head_dim = 4, .v_head_dim = 8};
    o.seed = 5;
    o.n_calib_seqs = BATCH;
    o.calib_seq = SEQ;
    ConvertReport rep;
    Model *plain = NULL;
    if (!CHECK_OK(mla_convert(&plain, t, &o, &rep))) return;
    int64_t V = tc.vocab_size, n = BATCH * SEQ * V, rows = tc.num_attention_heads * (8 + 4);
    float *lp = convert_logits_of(be, plain, BATCH, SEQ);
    /* rows = 48 queries over D = 32 inputs (33 with the bias column): full rank is 32 (33); more
     * channels than that are random rows read by nothing. */
    const int64_t ks[] = {tc.hidden_size + biased, rows};
    for (int i = 0; i < 2; i++) {
        o.dims.q_lora_rank = ks[i];
        Model *q = NULL;
        if (!CHECK_OK(mla_convert(&q, t, &o, &rep))) continue;
        CHECK(q->cfg.mla.q_norm == 0 && tensor_present(q->layers[0].q_a_proj) && !tensor_present(q->layers[0].q_a_norm),
              "a linear bottleneck: q_a_proj, no q_a_layernorm");
        float *lq = convert_logits_of(be, q, BATCH, SEQ);
        double err = rel_error_f32(lq, lp, n);
        CHECK(err < 1e-5, "bias %d, q_lora_rank %lld, no q norm: logits within %.3g of the student without a "
              "bottleneck", biased, (long long)ks[i], err);
        free(lq);
        model_destroy(q);
    }
    free(lp);
    model_destroy(plain);
    model_destroy(t);
}

int main(void) {
    Backend *be = test_cpu_backend(0);
    for (uint64_t seed = 10; seed < 13; seed++) test_score_error(seed);
    test_whitened();
    test_beyond_rank();
    test_full_rank_conversion(be, 0);
    test_full_rank_conversion(be, 1);
    backend_destroy(be);
    return test_finish("test_q_bottleneck");
}
