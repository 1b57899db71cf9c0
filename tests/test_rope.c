/* Tests of RoPE: the frequency tables (plain and Llama 3 scaled) against float64 evaluations of
 * HF's formulas, and the CPU rope op (GQA whole-head and MLA offset layouts) forward and backward. */
#include "harness.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/rope.h"

static const double PI = 3.141592653589793;

static Backend *be;

static float *new_f32(int64_t n) { return test_alloc((size_t)n * sizeof(float)); }
static double *new_f64(int64_t n) { return test_alloc((size_t)n * sizeof(double)); }

static Tensor heads_3d(float *p, int64_t N, int64_t H, int64_t S) {
    return tensor_view(p, DT_F32, 3, (int64_t[]){N, H, S});
}
static Tensor table_2d(float *p, int64_t max_pos, int64_t P) {
    return tensor_view(p, DT_F32, 2, (int64_t[]){max_pos, P});
}
static Tensor pos_1d(int32_t *p, int64_t N) { return tensor_view(p, DT_I32, 1, (int64_t[]){N}); }

static double max_rel_diff(const float *a, const double *b, int n) {
    double m = 0;
    for (int i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]) / fabs(b[i]));
    return m;
}

/* ---- frequency tables ----------------------------------------------------------------------- */

static void test_inv_freq_plain(void) {
    const double thetas[] = {10000.0, 1000000.0, 500000.0};
    const int dims[] = {6, 64, 128};
    for (int t = 0; t < 3; t++)
        for (int d = 0; d < 3; d++) {
            int head_dim = dims[d], pairs = head_dim / 2;
            RopeConfig cfg = {.theta = thetas[t], .scaling = ROPE_SCALING_NONE};
            float inv[64];
            double ref[64];
            CHECK_OK(rope_inv_freq(&cfg, head_dim, inv));
            for (int i = 0; i < pairs; i++) ref[i] = 1.0 / pow(thetas[t], 2.0 * i / head_dim);
            double err = max_rel_diff(inv, ref, pairs);
            CHECK(err < 1e-6, "inv_freq theta %g head_dim %d: max rel error %.3g", thetas[t], head_dim, err);
            CHECK(inv[0] == 1.0f, "inv_freq[0] is exactly 1");
        }
}

/* Llama 3.1's rope_scaling: theta 500000, factor 8, low_freq_factor 1, high_freq_factor 4, original
 * context 8192. Each frequency is checked against its regime: wavelengths under 8192/4 kept, over
 * 8192/1 divided by 8, the band between blended, against a float64 evaluation of HF's formula. */
static void check_llama3(int head_dim, int want_high, int want_medium, int want_low) {
    const double factor = 8, low = 1, high = 4, old_ctx = 8192;
    RopeConfig plain = {.theta = 500000.0, .scaling = ROPE_SCALING_NONE};
    RopeConfig cfg = {.theta = 500000.0, .scaling = ROPE_SCALING_LLAMA3, .factor = factor,
                      .low_freq_factor = low, .high_freq_factor = high,
                      .original_max_position_embeddings = (int64_t)old_ctx};
    int pairs = head_dim / 2;
    float base[64], scaled[64];
    CHECK_OK(rope_inv_freq(&plain, head_dim, base));
    CHECK_OK(rope_inv_freq(&cfg, head_dim, scaled));

    int n_high = 0, n_medium = 0, n_low = 0, high_ok = 1, low_ok = 1, between_ok = 1;
    double medium_err = 0, all_err = 0;
    for (int i = 0; i < pairs; i++) {
        double f = 1.0 / pow(500000.0, 2.0 * i / head_dim);
        double wavelen = 2 * PI / f, ref;
        if (wavelen < old_ctx / high) {
            n_high++;
            ref = f;
            high_ok &= scaled[i] == base[i];
        } else if (wavelen > old_ctx / low) {
            n_low++;
            ref = f / factor;
            low_ok &= scaled[i] == base[i] / 8.0f;
        } else {
            n_medium++;
            double smooth = (old_ctx / wavelen - low) / (high - low);
            ref = (1 - smooth) * f / factor + smooth * f;
            medium_err = fmax(medium_err, fabs(scaled[i] - ref) / ref);
            between_ok &= scaled[i] > base[i] / 8.0f && scaled[i] < base[i];
        }
        all_err = fmax(all_err, fabs(scaled[i] - ref) / ref);
    }
    CHECK(n_high == want_high && n_medium == want_medium && n_low == want_low,
          "llama3 head_dim %d: %d high, %d medium, %d low frequencies (expected %d, %d, %d)", head_dim, n_high,
          n_medium, n_low, want_high, want_medium, want_low);
    CHECK(high_ok, "llama3 head_dim %d: high frequencies unchanged, bit for bit", head_dim);
    CHECK(low_ok, "llama3 head_dim %d: low frequencies divided by the factor, bit for bit", head_dim);
    CHECK(between_ok, "llama3 head_dim %d: medium frequencies between f/8 and f", head_dim);
    CHECK(medium_err < 1e-6, "llama3 head_dim %d: smoothed frequencies max rel error %.3g", head_dim, medium_err);
    CHECK(all_err < 1e-6, "llama3 head_dim %d: all frequencies max rel error %.3g", head_dim, all_err);
}

static void test_inv_freq_llama3(void) {
    /* wavelen = 2 pi 500000^(2i/d) < 2048 for 2i/d < 0.441, > 8192 for 2i/d > 0.5467 */
    check_llama3(128, 29, 6, 29);
    check_llama3(64, 15, 3, 14);
}

static void test_inv_freq_errors(void) {
    float inv[8];
    RopeConfig cfg = {.theta = 10000.0, .scaling = ROPE_SCALING_NONE};
    CHECK_ERR(rope_inv_freq(&cfg, 7, inv), "head_dim must be even and positive, got 7");
    CHECK_ERR(rope_inv_freq(&cfg, 0, inv), "head_dim");
    cfg.theta = 0;
    CHECK_ERR(rope_inv_freq(&cfg, 8, inv), "rope_theta");
    cfg.theta = NAN;
    CHECK_ERR(rope_inv_freq(&cfg, 8, inv), "rope_theta");
    RopeConfig l3 = {.theta = 500000.0, .scaling = ROPE_SCALING_LLAMA3, .factor = 8, .low_freq_factor = 1,
                     .high_freq_factor = 4, .original_max_position_embeddings = 8192};
    CHECK_OK(rope_inv_freq(&l3, 8, inv));
    RopeConfig bad = l3;
    bad.high_freq_factor = bad.low_freq_factor;
    CHECK_ERR(rope_inv_freq(&bad, 8, inv), "high_freq_factor (1) must be greater than low_freq_factor (1)");
    bad = l3;
    bad.factor = 0.5;
    CHECK_ERR(rope_inv_freq(&bad, 8, inv), "factor must be >= 1");
    bad = l3;
    bad.low_freq_factor = 0;
    CHECK_ERR(rope_inv_freq(&bad, 8, inv), "low_freq_factor must be positive");
    bad = l3;
    bad.original_max_position_embeddings = 0;
    CHECK_ERR(rope_inv_freq(&bad, 8, inv), "original_max_position_embeddings");
    float c[4], s[4];
    CHECK_ERR(rope_tables(inv, 4, 0, c, s), "max_pos must be positive");
}

static void test_tables(void) {
    enum { HEAD_DIM = 8, P = HEAD_DIM / 2, MAX_POS = 64 };
    RopeConfig cfg = {.theta = 10000.0, .scaling = ROPE_SCALING_NONE};
    float inv[P], cos_table[MAX_POS * P], sin_table[MAX_POS * P];
    CHECK_OK(rope_inv_freq(&cfg, HEAD_DIM, inv));
    CHECK_OK(rope_tables(inv, P, MAX_POS, cos_table, sin_table));

    int origin = 1;
    for (int i = 0; i < P; i++) origin &= cos_table[i] == 1.0f && sin_table[i] == 0.0f;
    CHECK(origin, "position 0: cos 1 and sin 0 exactly");
    /* inv_freq = 10000^(-2i/8) = 1, 0.1, 0.01, 0.001: position 37, pair 1 is the angle 3.7. */
    double e1 = fabs(cos_table[1 * P + 0] - cos(1.0)) + fabs(sin_table[1 * P + 0] - sin(1.0));
    double e2 = fabs(cos_table[37 * P + 1] - cos(3.7)) + fabs(sin_table[37 * P + 1] - sin(3.7));
    double e3 = fabs(cos_table[63 * P + 3] - cos(0.063)) + fabs(sin_table[63 * P + 3] - sin(0.063));
    CHECK(e1 < 1e-7 && e2 < 1e-6 && e3 < 1e-7, "spot values (1, 1.0), (37, 3.7), (63, 0.063): errors %.3g %.3g %.3g",
          e1, e2, e3);
    /* Every entry is the cosine/sine of the float32 angle pos * inv_freq, to float precision. */
    double worst = 0;
    for (int p = 0; p < MAX_POS; p++)
        for (int i = 0; i < P; i++) {
            double angle = (double)((float)p * inv[i]);
            worst = fmax(worst, fabs(cos_table[p * P + i] - cos(angle)));
            worst = fmax(worst, fabs(sin_table[p * P + i] - sin(angle)));
        }
    CHECK(worst < 2e-7, "cos/sin tables against float64 of the float32 angle: max abs error %.3g", worst);
}

/* ---- the rope op ---------------------------------------------------------------------------- */

typedef struct {
    int64_t N, H, S, offset, P;
    const double *cos, *sin;   /* (max_pos, P), the float32 tables widened */
    const int32_t *pos;        /* (N) */
    double *x, *dy;            /* (N, H, S) */
} RopeRef;

static void rope_reference(const RopeRef *r, const double *x, double *y) {
    memcpy(y, x, (size_t)(r->N * r->H * r->S) * sizeof(double));
    for (int64_t n = 0; n < r->N; n++)
        for (int64_t h = 0; h < r->H; h++) {
            const double *c = r->cos + r->pos[n] * r->P, *s = r->sin + r->pos[n] * r->P;
            const double *x1 = x + (n * r->H + h) * r->S + r->offset, *x2 = x1 + r->P;
            double *y1 = y + (n * r->H + h) * r->S + r->offset, *y2 = y1 + r->P;
            for (int64_t i = 0; i < r->P; i++) {
                y1[i] = x1[i] * c[i] - x2[i] * s[i];
                y2[i] = x2[i] * c[i] + x1[i] * s[i];
            }
        }
}

static double rope_loss(void *ctx) {
    const RopeRef *r = ctx;
    int64_t n = r->N * r->H * r->S;
    double *y = new_f64(n);
    rope_reference(r, r->x, y);
    double s = dot_f64(r->dy, y, n);
    free(y);
    return s;
}

/* One layout: N tokens of H heads of stride S, rotating [offset, offset + 2P) with the given
 * frequencies (any subset of a model's pairs). */
static void check_rope(int64_t N, int64_t H, int64_t S, int64_t offset, const float *inv, int64_t P) {
    enum { MAX_POS = 300 };
    int64_t n = N * H * S;
    float *cos = new_f32(MAX_POS * P), *sin = new_f32(MAX_POS * P);
    CHECK_OK(rope_tables(inv, (int)P, MAX_POS, cos, sin));
    int32_t *pos = test_alloc((size_t)N * sizeof(int32_t));
    for (int64_t t = 0; t < N; t++) pos[t] = (int32_t)((t * 37 + 5) % MAX_POS);
    pos[0] = MAX_POS - 1;
    float *x = new_f32(n), *y = new_f32(n), *back = new_f32(n), *dy = new_f32(n), *dx = new_f32(n);
    fill_normal(x, n, 60, 1.0f);
    fill_normal(dy, n, 61, 1.0f);

    double *cos_d = new_f64(MAX_POS * P), *sin_d = new_f64(MAX_POS * P), *y_ref = new_f64(n);
    copy_f32_to_f64(cos_d, cos, MAX_POS * P);
    copy_f32_to_f64(sin_d, sin, MAX_POS * P);
    RopeRef ref = {N, H, S, offset, P, cos_d, sin_d, pos, new_f64(n), new_f64(n)};
    copy_f32_to_f64(ref.x, x, n);
    copy_f32_to_f64(ref.dy, dy, n);
    rope_reference(&ref, ref.x, y_ref);

    Tensor tc = table_2d(cos, MAX_POS, P), ts = table_2d(sin, MAX_POS, P), tp = pos_1d(pos, N);
    memcpy(y, x, (size_t)n * sizeof(float));
    CHECK_OK(be->ops.rope_forward(be, heads_3d(y, N, H, S), offset, tc, ts, tp));
    double err = rel_error_f64(y, y_ref, n);
    CHECK(err < 1e-6, "rope forward N=%lld H=%lld S=%lld offset=%lld P=%lld: rel error %.3g", (long long)N,
          (long long)H, (long long)S, (long long)offset, (long long)P, err);

    /* Rotations keep each pair's length, and leave the dims outside the slice bit for bit. */
    double norm_err = 0;
    int outside_same = 1;
    for (int64_t row = 0; row < N * H; row++) {
        const float *xr = x + row * S, *yr = y + row * S;
        for (int64_t i = 0; i < P; i++) {
            double a = hypot(xr[offset + i], xr[offset + P + i]), b = hypot(yr[offset + i], yr[offset + P + i]);
            norm_err = fmax(norm_err, fabs(a - b) / fmax(a, 1e-30));
        }
        for (int64_t d = 0; d < S; d++)
            if (d < offset || d >= offset + 2 * P) outside_same &= memcmp(&xr[d], &yr[d], sizeof(float)) == 0;
    }
    CHECK(norm_err < 1e-6, "rope forward keeps pair norms: max rel change %.3g", norm_err);
    CHECK(outside_same, "rope forward leaves dims outside [%lld, %lld) untouched", (long long)offset,
          (long long)(offset + 2 * P));

    /* Backward undoes forward. */
    memcpy(back, y, (size_t)n * sizeof(float));
    CHECK_OK(be->ops.rope_backward(be, heads_3d(back, N, H, S), offset, tc, ts, tp));
    double err_id = rel_error_f32(back, x, n);
    CHECK(err_id < 1e-6, "rope backward after forward is the identity: rel error %.3g", err_id);
    outside_same = 1;
    for (int64_t row = 0; row < N * H; row++)
        for (int64_t d = 0; d < S; d++)
            if (d < offset || d >= offset + 2 * P)
                outside_same &= memcmp(&x[row * S + d], &back[row * S + d], sizeof(float)) == 0;
    CHECK(outside_same, "rope backward leaves dims outside the slice untouched");

    /* Backward is the gradient of <dy, rope(x)>. */
    memcpy(dx, dy, (size_t)n * sizeof(float));
    CHECK_OK(be->ops.rope_backward(be, heads_3d(dx, N, H, S), offset, tc, ts, tp));
    double *numeric = new_f64(n);
    finite_difference(rope_loss, &ref, ref.x, n, 1e-6, numeric);
    double err_dx = rel_error_f64(dx, numeric, n);
    CHECK(err_dx < 1e-4, "rope backward vs finite differences: rel error %.3g", err_dx);

    free(cos), free(sin), free(pos), free(x), free(y), free(back), free(dy), free(dx);
    free(cos_d), free(sin_d), free(y_ref), free(ref.x), free(ref.dy), free(numeric);
}

static void test_rope_op(void) {
    RopeConfig cfg = {.theta = 10000.0, .scaling = ROPE_SCALING_NONE};
    float inv16[8], inv6[3];
    CHECK_OK(rope_inv_freq(&cfg, 16, inv16));
    CHECK_OK(rope_inv_freq(&cfg, 6, inv6));
    /* GQA: the whole head. */
    check_rope(5, 3, 16, 0, inv16, 8);
    check_rope(1, 2, 6, 0, inv6, 3);
    /* MLA: the last dr = 6 dims of a 13-wide head, with a subset of a 16-dim head's pairs. */
    float kept[3] = {inv16[0], inv16[3], inv16[7]};
    check_rope(6, 4, 13, 7, kept, 3);
    /* A slice with untouched dims on both sides. */
    check_rope(3, 2, 12, 2, inv6, 3);
}

static void test_rope_thread_count_independence(void) {
    enum { N = 300, H = 8, S = 64, P = 24, OFFSET = 16, MAX_POS = 512 };
    RopeConfig cfg = {.theta = 500000.0, .scaling = ROPE_SCALING_NONE};
    float inv[P], *cos = new_f32(MAX_POS * P), *sin = new_f32(MAX_POS * P);
    CHECK_OK(rope_inv_freq(&cfg, 2 * P, inv));
    CHECK_OK(rope_tables(inv, P, MAX_POS, cos, sin));
    int32_t pos[N];
    for (int t = 0; t < N; t++) pos[t] = (t * 13) % MAX_POS;
    float *x = new_f32(N * H * S), *runs[2][2];
    fill_normal(x, N * H * S, 70, 1.0f);
    for (int r = 0; r < 2; r++) {
        Backend *b = test_cpu_backend(r + 1);
        for (int dir = 0; dir < 2; dir++) {
            runs[r][dir] = new_f32(N * H * S);
            memcpy(runs[r][dir], x, sizeof(float) * N * H * S);
            Tensor tx = heads_3d(runs[r][dir], N, H, S);
            Tensor tc = table_2d(cos, MAX_POS, P), ts = table_2d(sin, MAX_POS, P), tp = pos_1d(pos, N);
            CHECK_OK(dir == 0 ? b->ops.rope_forward(b, tx, OFFSET, tc, ts, tp)
                              : b->ops.rope_backward(b, tx, OFFSET, tc, ts, tp));
        }
        backend_destroy(b);
    }
    CHECK(memcmp(runs[0][0], runs[1][0], sizeof(float) * N * H * S) == 0,
          "rope forward: 1 and 2 threads agree bit for bit");
    CHECK(memcmp(runs[0][1], runs[1][1], sizeof(float) * N * H * S) == 0,
          "rope backward: 1 and 2 threads agree bit for bit");
    free(cos), free(sin), free(x);
    for (int r = 0; r < 2; r++) free(runs[r][0]), free(runs[r][1]);
}

static void test_rope_errors(void) {
    enum { N = 2, H = 2, S = 8, P = 3, MAX_POS = 10 };
    float x[N * H * S] = {0}, cos[MAX_POS * P] = {0}, sin[MAX_POS * P] = {0};
    int32_t pos[N] = {0, 9};
    Tensor tx = heads_3d(x, N, H, S), tc = table_2d(cos, MAX_POS, P), ts = table_2d(sin, MAX_POS, P);
    CHECK_OK(be->ops.rope_forward(be, tx, 2, tc, ts, pos_1d(pos, N)));
    CHECK_ERR(be->ops.rope_forward(be, tx, 3, tc, ts, pos_1d(pos, N)),
              "rope_forward: offset 3 + 2 x 3 pairs = 9 exceeds the head stride S = 8 of x");
    CHECK_ERR(be->ops.rope_backward(be, tx, 3, tc, ts, pos_1d(pos, N)), "rope_backward: offset 3");
    CHECK_ERR(be->ops.rope_forward(be, tx, -1, tc, ts, pos_1d(pos, N)), "offset -1 is negative");
    pos[1] = MAX_POS;
    CHECK_ERR(be->ops.rope_forward(be, tx, 0, tc, ts, pos_1d(pos, N)),
              "rope_forward: pos[1] = 10 is outside the tables' positions [0, 10)");
    pos[1] = -1;
    CHECK_ERR(be->ops.rope_backward(be, tx, 0, tc, ts, pos_1d(pos, N)), "rope_backward: pos[1] = -1");
    pos[1] = 0;
    CHECK_ERR(be->ops.rope_forward(be, tx, 0, tc, table_2d(sin, MAX_POS, P - 1), pos_1d(pos, N)),
              "rope_forward: sin has shape [10, 2], expected [10, 3]");
    CHECK_ERR(be->ops.rope_forward(be, tx, 0, tc, ts, pos_1d(pos, N - 1)), "rope_forward: pos has shape [1]");
    CHECK_ERR(be->ops.rope_forward(be, tensor_view(x, DT_F32, 2, (int64_t[]){N, H * S}), 0, tc, ts,
                                   pos_1d(pos, N)),
              "rope_forward: x has shape [2, 16]");
    CHECK_ERR(be->ops.rope_backward(be, tensor_none(), 0, tc, ts, pos_1d(pos, N)), "rope_backward: dx is missing");
}

int main(void) {
    be = test_cpu_backend(0);
    test_inv_freq_plain();
    test_inv_freq_llama3();
    test_inv_freq_errors();
    test_tables();
    test_rope_op();
    test_rope_thread_count_independence();
    test_rope_errors();
    backend_destroy(be);
    return test_finish("test_rope");
}
