/* bf16 storage on the CPU backend and the mixed-precision model: the cast op and AdamW's bf16 copy
 * bit for bit, the ops' storage contract (bf16 in, f32 math, one rounding out) against a manual
 * widening, the dtype errors, rounded frozen weights, and a whole training step in bf16 whose
 * compute copies stay the rounded master weights and whose loss and gradients track float32. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/half.h"
#include "harness.h"
#include "model/model.h"
#include "model_fixtures.h"

static Backend *be;

static Tensor alloc_as(DType dt, int ndim, const int64_t *shape) {
    Tensor t;
    CHECK_OK(be->alloc(be, &t, dt, ndim, shape));
    return t;
}

/* A tensor of dt holding `values` (rounded when bf16). */
static Tensor tensor_of(DType dt, int ndim, const int64_t *shape, const float *values) {
    Tensor t = alloc_as(dt, ndim, shape);
    CHECK_OK(backend_upload_f32(be, t, values));
    return t;
}

static float *values_of(Tensor t) {
    float *v = test_alloc((size_t)tensor_numel(t) * sizeof(float) + 1);
    CHECK_OK(backend_download_f32(be, v, t));
    return v;
}

static float *rounded(const float *x, int64_t n) {
    float *r = test_alloc((size_t)n * sizeof(float) + 1);
    for (int64_t i = 0; i < n; i++) r[i] = bf16_to_f32(f32_to_bf16(x[i]));
    return r;
}

static int same_bits(const float *a, const float *b, int64_t n) { return memcmp(a, b, (size_t)n * sizeof(float)) == 0; }

static void test_cast_and_adamw(void) {
    const int64_t n = 1000;
    float *x = test_alloc(n * sizeof(float));
    fill_normal(x, n, 1, 3.0f);
    x[0] = 1.0f + 1.0f / 256.0f;   /* exactly halfway between two bf16 values: ties to even, 1.0 */
    x[1] = NAN;
    x[2] = 3.4e38f;                /* rounds past bf16's largest finite value: +Inf */
    Tensor f = tensor_of(DT_F32, 1, &n, x), h = alloc_as(DT_BF16, 1, &n), back = alloc_as(DT_F32, 1, &n);
    CHECK_OK(be->ops.cast(be, h, f));
    CHECK_OK(be->ops.cast(be, back, h));
    float *got = values_of(back), *want = rounded(x, n);
    CHECK(got[0] == 1.0f && isnan(got[1]) && isinf(got[2]), "cast: ties to even, NaN kept, overflow to Inf");
    CHECK(memcmp(got + 3, want + 3, (size_t)(n - 3) * sizeof(float)) == 0, "cast f32 -> bf16 -> f32 = rounding");
    Tensor f2 = alloc_as(DT_F32, 1, &n);
    CHECK_OK(be->ops.cast(be, f2, f));
    free(got);
    got = values_of(f2);
    CHECK(memcmp(got + 3, x + 3, (size_t)(n - 3) * sizeof(float)) == 0, "cast to the same dtype copies");
    CHECK_ERR(be->ops.cast(be, alloc_as(DT_F32, 1, (int64_t[]){n - 1}), f), "cast: dst holds 999 values, src 1000");

    /* AdamW's bf16 copy is the rounding of the updated master weight, and the update is the f32 one. */
    fill_normal(x, n, 2, 0.5f);
    float *g = test_alloc(n * sizeof(float));
    fill_normal(g, n, 3, 1.0f);
    Tensor p1 = tensor_of(DT_F32, 1, &n, x), p2 = tensor_of(DT_F32, 1, &n, x), gr = tensor_of(DT_F32, 1, &n, g);
    Tensor m1 = alloc_as(DT_F32, 1, &n), v1 = alloc_as(DT_F32, 1, &n), m2 = alloc_as(DT_F32, 1, &n),
           v2 = alloc_as(DT_F32, 1, &n), copy = alloc_as(DT_BF16, 1, &n);
    AdamWConfig ac = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f, .step = 1};
    CHECK_OK(be->ops.adamw_step(be, p1, gr, m1, v1, copy, ac));
    CHECK_OK(be->ops.adamw_step(be, p2, gr, m2, v2, tensor_none(), ac));
    float *a = values_of(p1), *b = values_of(p2), *c = values_of(copy), *ra = rounded(a, n);
    CHECK(same_bits(a, b, n), "adamw: the master update does not depend on the copy");
    CHECK(same_bits(c, ra, n), "adamw: the copy is the rounded master weight");
    CHECK_ERR(be->ops.adamw_step(be, p1, gr, m1, v1, alloc_as(DT_F32, 1, &n), ac),
              "adamw_step: param_copy has dtype f32, expected bf16");
    free(x), free(g), free(got), free(want), free(a), free(b), free(c), free(ra);
}

/* The storage contract: each op on bf16 tensors equals its f32 kernel on the widened values with
 * the outputs rounded once; f32-only arguments stay f32. */
static void test_storage_contract(void) {
    const int64_t N = 37, In = 19, O = 11;
    float *x = test_alloc(N * In * 4), *w = test_alloc(O * In * 4), *b = test_alloc(O * 4), *dy = test_alloc(N * O * 4);
    fill_normal(x, N * In, 10, 1.0f);
    fill_normal(w, O * In, 11, 0.3f);
    fill_normal(b, O, 12, 1.0f);
    fill_normal(dy, N * O, 13, 1.0f);
    float *xr = rounded(x, N * In), *wr = rounded(w, O * In), *br = rounded(b, O), *dyr = rounded(dy, N * O);
    int64_t sx[2] = {N, In}, sw[2] = {O, In}, sy[2] = {N, O};
    /* bf16 */
    Tensor hx = tensor_of(DT_BF16, 2, sx, x), hw = tensor_of(DT_BF16, 2, sw, w), hb = tensor_of(DT_BF16, 1, &O, b);
    Tensor hdy = tensor_of(DT_BF16, 2, sy, dy), hy = alloc_as(DT_BF16, 2, sy), hdx = alloc_as(DT_BF16, 2, sx);
    Tensor hdw = alloc_as(DT_F32, 2, sw), hdb = alloc_as(DT_F32, 1, &O), yf = alloc_as(DT_F32, 2, sy);
    CHECK_OK(be->ops.linear_forward(be, hy, hx, hw, hb));
    CHECK_OK(be->ops.linear_forward(be, yf, hx, hw, tensor_none()));
    CHECK_OK(be->ops.linear_backward(be, hdx, hdw, hdb, hdy, hx, hw));
    /* f32 on the rounded values */
    Tensor fx = tensor_of(DT_F32, 2, sx, xr), fw = tensor_of(DT_F32, 2, sw, wr), fb = tensor_of(DT_F32, 1, &O, br);
    Tensor fdy = tensor_of(DT_F32, 2, sy, dyr), fy = alloc_as(DT_F32, 2, sy), fdx = alloc_as(DT_F32, 2, sx);
    Tensor fdw = alloc_as(DT_F32, 2, sw), fdb = alloc_as(DT_F32, 1, &O), fy_nobias = alloc_as(DT_F32, 2, sy);
    CHECK_OK(be->ops.linear_forward(be, fy, fx, fw, fb));
    CHECK_OK(be->ops.linear_forward(be, fy_nobias, fx, fw, tensor_none()));
    CHECK_OK(be->ops.linear_backward(be, fdx, fdw, fdb, fdy, fx, fw));
    float *got, *ref, *want;
    got = values_of(hy), ref = values_of(fy), want = rounded(ref, N * O);
    CHECK(same_bits(got, want, N * O), "linear_forward bf16 = round(f32 on rounded inputs)");
    free(got), free(ref), free(want);
    got = values_of(yf), ref = values_of(fy_nobias);
    CHECK(same_bits(got, ref, N * O), "linear_forward with an f32 output from bf16 inputs is not rounded");
    free(got), free(ref);
    got = values_of(hdx), ref = values_of(fdx), want = rounded(ref, N * In);
    CHECK(same_bits(got, want, N * In), "linear_backward dx bf16 = round(f32)");
    free(got), free(ref), free(want);
    got = values_of(hdw), ref = values_of(fdw);
    CHECK(same_bits(got, ref, O * In), "linear_backward dw accumulates in f32 from bf16 inputs");
    free(got), free(ref);

    /* In place (RoPE): the rounded rotation of the rounded input. */
    const int64_t H = 3, S = 8, P = 4, maxpos = 40;
    float *q = test_alloc(N * H * S * 4), *cs = test_alloc(maxpos * P * 4), *sn = test_alloc(maxpos * P * 4);
    fill_normal(q, N * H * S, 14, 1.0f);
    for (int64_t i = 0; i < maxpos * P; i++) {
        cs[i] = cosf(0.1f * (float)i);
        sn[i] = sinf(0.1f * (float)i);
    }
    int32_t pos_h[37];
    for (int64_t n = 0; n < N; n++) pos_h[n] = (int32_t)n;
    Tensor pos = alloc_as(DT_I32, 1, &N);
    CHECK_OK(be->upload(be, pos, pos_h));
    int64_t sq[3] = {N, H, S}, st[2] = {maxpos, P};
    Tensor tc = tensor_of(DT_F32, 2, st, cs), ts = tensor_of(DT_F32, 2, st, sn);
    float *qr = rounded(q, N * H * S);
    Tensor hq = tensor_of(DT_BF16, 3, sq, q), fq = tensor_of(DT_F32, 3, sq, qr);
    CHECK_OK(be->ops.rope_forward(be, hq, 0, tc, ts, pos));
    CHECK_OK(be->ops.rope_forward(be, fq, 0, tc, ts, pos));
    got = values_of(hq), ref = values_of(fq), want = rounded(ref, N * H * S);
    CHECK(same_bits(got, want, N * H * S), "rope in place on bf16 = round(f32)");
    free(got), free(ref), free(want);

    /* Errors: one storage dtype per call; statistics and parameter gradients are f32 only. */
    CHECK_ERR(be->ops.linear_forward(be, hy, hx, fw, tensor_none()),
              "linear_forward: w is f32 but the call's other storage tensors are bf16");
    CHECK_ERR(be->ops.linear_backward(be, hdx, alloc_as(DT_BF16, 2, sw), tensor_none(), hdy, hx, hw),
              "linear_backward: dw has dtype bf16, expected f32");
    CHECK_ERR(be->ops.rmsnorm_forward(be, hx, alloc_as(DT_BF16, 1, &N), hx, alloc_as(DT_BF16, 1, &In), 1e-5f),
              "rmsnorm_forward: rstd has dtype bf16, expected f32");
    CHECK_ERR(be->ops.rope_forward(be, hq, 0, tensor_of(DT_BF16, 2, st, cs), ts, pos),
              "rope_forward: cos has dtype bf16, expected f32");
    free(x), free(w), free(b), free(dy), free(xr), free(wr), free(br), free(dyr), free(q), free(cs), free(sn), free(qr);
}

/* A frozen model rounded to bf16: every parameter is the rounding of its f32 value, a tied head
 * follows the embedding, and a model with gradients refuses. */
static void test_frozen_rounding(void) {
    ModelConfig c = tiny_teacher_config(1);
    c.tie_word_embeddings = 1;
    Model *f = NULL, *h = NULL;
    CHECK_OK(model_create(&f, be, &c, 16));
    CHECK_OK(model_create(&h, be, &c, 16));
    CHECK_OK(model_init_random(f, 5, 0.3f));
    CHECK_OK(model_init_random(h, 5, 0.3f));
    CHECK_OK(model_set_precision(h, DT_BF16, DT_BF16));
    CHECK(h->weight_dtype == DT_BF16 && h->dtype == DT_BF16 && h->compute_layers == NULL, "bf16 weights, no copies");
    int ok = 1;
    for (int i = 0; i < f->n_params; i++) {
        float *a = values_of(*f->params[i].value), *b = values_of(*h->params[i].value);
        int64_t n = tensor_numel(*f->params[i].value);
        float *ra = rounded(a, n);
        ok &= h->params[i].value->dtype == DT_BF16 && same_bits(b, ra, n);
        free(a), free(b), free(ra);
    }
    CHECK(ok, "frozen bf16 parameters are the rounded f32 ones");
    /* Created in bf16 from the start: the same values, never an f32 copy. */
    Model *direct = NULL;
    CHECK_OK(model_create_as(&direct, be, &c, 16, DT_BF16));
    CHECK_OK(model_init_random(direct, 5, 0.3f));
    ok = direct->dtype == DT_BF16;
    for (int i = 0; i < h->n_params; i++) {
        int64_t n = tensor_numel(*h->params[i].value);
        ok &= direct->params[i].value->dtype == DT_BF16 &&
              memcmp(direct->params[i].value->data, h->params[i].value->data, (size_t)n * 2) == 0;
    }
    CHECK(ok, "a model created in bf16 holds the same values as one rounded after creation");
    model_destroy(direct);
    CHECK(h->lm_head.data == h->embed.data && h->lm_head.dtype == DT_BF16, "the tied head follows the embedding");
    CHECK_ERR(model_set_precision(h, DT_BF16, DT_F32), "bf16 weights with f32 compute");
    CHECK_OK(model_alloc_grads(f));
    CHECK_ERR(model_set_precision(f, DT_BF16, DT_BF16), "only the f32 weights of a model without gradients");
    model_destroy(f);
    model_destroy(h);
}

enum { B = 2, T = 13 };

typedef struct {
    double loss;
    float *hidden, *grads;
    int64_t n_hidden, n_grads;
} StepOut;

/* One distillation step (teacher and student forward, loss, backward, AdamW with the copies) in
 * the given precision; checks the copies against the masters before and after the update. */
static StepOut step(DType dtype) {
    StepOut o = {0};
    ModelConfig tc = tiny_teacher_config(1), sc = tiny_student_config(0x1, 0, 1);
    Model *teacher = NULL, *student = NULL;
    ForwardState *tst = NULL, *sst = NULL;
    CHECK_OK(model_create(&teacher, be, &tc, T));
    CHECK_OK(model_create(&student, be, &sc, T));
    CHECK_OK(model_init_random(teacher, 1, 0.3f));
    CHECK_OK(model_init_random(student, 2, 0.3f));
    CHECK_OK(model_set_precision(teacher, dtype, dtype));
    CHECK_OK(model_set_precision(student, DT_F32, dtype));
    CHECK_OK(model_alloc_grads(student));
    CHECK_OK(forward_state_create(&tst, teacher, B, T, 0));
    CHECK_OK(forward_state_create(&sst, student, B, T, 1));
    int64_t N = B * T;
    int32_t ids_h[B * T], tg_h[B * T];
    for (int64_t i = 0; i < N; i++) {
        ids_h[i] = (int32_t)((i * 7 + 3) % tc.vocab_size);
        tg_h[i] = (int32_t)((i * 7 + 10) % tc.vocab_size);
    }
    Tensor ids = alloc_as(DT_I32, 1, &N), targets = alloc_as(DT_I32, 1, &N);
    CHECK_OK(be->upload(be, ids, ids_h));
    CHECK_OK(be->upload(be, targets, tg_h));
    Tensor th = alloc_as(dtype, 2, (int64_t[]){N, tc.hidden_size}), sh = alloc_as(dtype, 2, (int64_t[]){N, sc.hidden_size});
    Tensor dh = alloc_as(dtype, 2, (int64_t[]){N, sc.hidden_size});
    CHECK_OK(model_forward(teacher, tst, ids, th));
    CHECK_OK(model_forward(student, sst, ids, sh));
    LossSums sums = {0};
    LossConfig lc = {.kl_weight = 0.5f, .ce_weight = 0.5f, .temperature = 2.0f, .ignore_index = -100, .chunk_tokens = 5};
    CHECK_OK(be->ops.lm_head_loss(be, &sums, dh, student->grad_lm_head, sh, model_compute_lm_head(student), th,
                                  model_compute_lm_head(teacher), targets, lc, 1.0f / (float)N));
    CHECK_OK(model_backward(student, sst, dh));
    o.loss = sums.loss / (double)N;
    o.n_hidden = N * sc.hidden_size;
    o.hidden = values_of(sh);
    o.n_grads = 0;
    for (int i = 0; i < student->n_params; i++) o.n_grads += tensor_numel(*student->params[i].grad);
    o.grads = test_alloc((size_t)o.n_grads * sizeof(float));
    int64_t off = 0;
    for (int i = 0; i < student->n_params; i++) {
        CHECK_OK(backend_download_f32(be, o.grads + off, *student->params[i].grad));
        off += tensor_numel(*student->params[i].grad);
    }
    if (dtype == DT_BF16) {
        /* After the first forward the copies are the rounded masters; after AdamW they still are. */
        int ok_before = 1, ok_after = 1;
        for (int pass = 0; pass < 2; pass++) {
            for (int i = 0; i < student->n_params; i++) {
                Param *p = &student->params[i];
                if (pass == 1) {
                    Tensor m = alloc_as(DT_F32, p->value->ndim, p->value->shape);
                    Tensor v = alloc_as(DT_F32, p->value->ndim, p->value->shape);
                    AdamWConfig ac = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0, .step = 1};
                    CHECK_OK(be->ops.adamw_step(be, *p->value, *p->grad, m, v, *p->compute, ac));
                    be->release(be, &m);
                    be->release(be, &v);
                }
                int64_t n = tensor_numel(*p->value);
                float *mv = values_of(*p->value), *cv = values_of(*p->compute), *rm = rounded(mv, n);
                int ok = p->value->dtype == DT_F32 && p->compute->dtype == DT_BF16 && same_bits(cv, rm, n);
                if (pass == 0) ok_before &= ok;
                else ok_after &= ok;
                free(mv), free(cv), free(rm);
            }
        }
        CHECK(ok_before, "bf16 student: compute copies are the rounded f32 masters after the first forward");
        CHECK(ok_after, "bf16 student: AdamW keeps the copies the rounded masters");
        /* A write to the masters from outside AdamW: the next forward refreshes the copies. */
        Param *p = &student->params[0];
        int64_t n = tensor_numel(*p->value);
        float *ones = test_alloc((size_t)n * sizeof(float));
        for (int64_t i = 0; i < n; i++) ones[i] = 1.0f + (float)i / 1024.0f;
        CHECK_OK(backend_upload_f32(be, *p->value, ones));
        model_weights_changed(student);
        CHECK_OK(model_forward(student, sst, ids, sh));
        float *cv = values_of(*p->compute), *r1 = rounded(ones, n);
        CHECK(same_bits(cv, r1, n), "bf16 student: a forward after model_weights_changed refreshes the copies");
        free(ones), free(cv), free(r1);
    }
    Tensor *all[] = {&ids, &targets, &th, &sh, &dh};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) be->release(be, all[i]);
    forward_state_destroy(tst);
    forward_state_destroy(sst);
    model_destroy(teacher);
    model_destroy(student);
    return o;
}

/* bf16 tracks float32: the hidden state to bf16's precision over two layers (a few 2^-8), the
 * loss to 1e-2, each gradient to a few percent; and it does round (it is not float32 in disguise). */
static void test_training_step(void) {
    StepOut f = step(DT_F32), h = step(DT_BF16);
    double eh = rel_error_f32(h.hidden, f.hidden, f.n_hidden), eg = rel_error_f32(h.grads, f.grads, f.n_grads);
    CHECK(eh < 3e-2 && eh > 1e-5, "bf16 vs f32 student hidden state: rel error %.3g (expected bf16-sized)", eh);
    CHECK(fabs(h.loss - f.loss) <= 1e-2 * fabs(f.loss), "bf16 loss %.6f vs f32 %.6f", h.loss, f.loss);
    CHECK(eg < 5e-2, "bf16 vs f32 student gradients: rel error %.3g", eg);
    free(f.hidden), free(f.grads), free(h.hidden), free(h.grads);
}

int main(void) {
    be = test_cpu_backend(0);
    test_cast_and_adamw();
    test_storage_contract();
    test_frozen_rounding();
    test_training_step();
    backend_destroy(be);
    return test_finish("test_bf16");
}
