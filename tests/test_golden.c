/* Logits of models loaded from HF's layout (Llama, Qwen2, Mistral, DeepSeek-V2 students) against golden
 * values from an independent float32 PyTorch implementation of HF's modeling code (tools/fixtures/make_golden.py). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "model/hf/hf_model.h"
#include "model/model.h"
#include "model/hf/safetensors.h"

/* tests/fixtures/golden/<case>/{config.json, model.safetensors, expected.safetensors}; README.md there
 * says what each case covers. */
static const char *const CASES[] = {
    "llama_tied_llama3rope", "qwen2_bias", "mistral_headdim", "deepseek_v2_student", "deepseek_v2_student_qlora",
};
enum { N_CASES = sizeof CASES / sizeof CASES[0], PATH_BYTES = 4096 };

/* Both sides compute in float32 and the reference is within ~5e-7 of a float64 forward, so this
 * leaves room for summation order only; a wrong eps, rope layout or frequency shows as 2e-4 or more. */
static const double GOLDEN_TOLERANCE = 1e-5;

/* The fixtures sit beside this source file; CMake compiles it by its absolute path, so the test
 * runs from any build folder. */
static void case_dir(char *buf, size_t n, const char *name) {
    const char *file = __FILE__, *slash = strrchr(file, '/');
    int dir_len = slash ? (int)(slash - file) : 1;
    snprintf(buf, n, "%.*s/fixtures/golden/%s", dir_len, slash ? file : ".", name);
}

typedef struct {
    int64_t B, T, V;
    int32_t *ids;      /* [B*T] */
    float *logits;     /* [B*T*V] */
} Expected;

static int read_expected(const char *dir, Expected *e) {
    char path[PATH_BYTES + 32];
    snprintf(path, sizeof path, "%s/expected.safetensors", dir);
    SafetensorsSet *s = NULL;
    if (!CHECK_OK(safetensors_open(&s, path))) return 0;
    const SafetensorsTensor *ids = safetensors_find(s, "input_ids"), *logits = safetensors_find(s, "logits");
    int ok = ids && ids->ndim == 2 && logits && logits->ndim == 3 && logits->shape[0] == ids->shape[0] &&
             logits->shape[1] == ids->shape[1];
    CHECK(ok, "%s: input_ids [B, T] and logits [B, T, V]", path);
    if (ok) {
        e->B = ids->shape[0], e->T = ids->shape[1], e->V = logits->shape[2];
        int64_t N = e->B * e->T;
        float *idf = test_alloc((size_t)N * sizeof(float));
        e->ids = test_alloc((size_t)N * sizeof(int32_t));
        e->logits = test_alloc((size_t)(N * e->V) * sizeof(float));
        ok = CHECK_OK(safetensors_read_f32(s, "input_ids", idf, 2, ids->shape)) &&
             CHECK_OK(safetensors_read_f32(s, "logits", e->logits, 3, logits->shape));
        /* Token ids travel as float32 values of integers (the format has no integer dtype here). */
        for (int64_t i = 0; ok && i < N; i++) {
            ok = idf[i] == floorf(idf[i]) && idf[i] >= 0 && idf[i] < (float)e->V;
            CHECK(ok, "%s: input_ids[%lld] = %g is a token id", path, (long long)i, idf[i]);
            e->ids[i] = ok ? (int32_t)idf[i] : 0;
        }
        free(idf);
    }
    safetensors_close(s);
    return ok;
}

/* Our logits for the expected token ids: model_forward, then the LM head on the final-norm output. */
static void run_case(Backend *be, const char *name, const char *dir, const Expected *e) {
    Model *m = NULL;
    if (!CHECK_OK(hf_model_load(&m, be, dir, e->T))) return;
    int64_t N = e->B * e->T, D = m->cfg.hidden_size, V = e->V;
    ForwardState *st = NULL;
    Tensor ids = tensor_none(), hidden = tensor_none(), logits = tensor_none();
    float *ours = test_alloc((size_t)(N * V) * sizeof(float));
    int ok = m->cfg.vocab_size == V;
    CHECK(ok, "%s: vocab_size %lld, the expected logits have %lld", name, (long long)m->cfg.vocab_size, (long long)V);
    ok = ok && CHECK_OK(forward_state_create(&st, m, e->B, e->T, 0)) &&
         CHECK_OK(be->alloc(be, &ids, DT_I32, 1, &N)) &&
         CHECK_OK(be->alloc(be, &hidden, DT_F32, 2, (int64_t[]){N, D})) &&
         CHECK_OK(be->alloc(be, &logits, DT_F32, 2, (int64_t[]){N, V})) && CHECK_OK(be->upload(be, ids, e->ids)) &&
         CHECK_OK(model_forward(m, st, ids, hidden)) &&
         CHECK_OK(be->ops.linear_forward(be, logits, hidden, m->lm_head, tensor_none())) &&
         CHECK_OK(be->download(be, ours, logits));
    if (ok) {
        double err = rel_error_f32(ours, e->logits, N * V), max_abs = 0;
        for (int64_t i = 0; i < N * V; i++) max_abs = fmax(max_abs, fabs((double)ours[i] - e->logits[i]));
        printf("%-26s B=%lld T=%lld V=%lld: rel error %.3g, max abs diff %.3g\n", name, (long long)e->B,
               (long long)e->T, (long long)V, err, max_abs);
        CHECK(err < GOLDEN_TOLERANCE, "%s: logits rel error %.3g (max abs diff %.3g) against the PyTorch reference",
              name, err, max_abs);
    }
    free(ours);
    be->release(be, &ids);
    be->release(be, &hidden);
    be->release(be, &logits);
    forward_state_destroy(st);
    model_destroy(m);
}

static void check_case(Backend *be, const char *name) {
    char dir[PATH_BYTES];
    case_dir(dir, sizeof dir, name);
    Expected e = {0};
    if (read_expected(dir, &e)) run_case(be, name, dir, &e);
    free(e.ids);
    free(e.logits);
}

int main(void) {
    Backend *be = test_cpu_backend(0);
    for (int i = 0; i < N_CASES; i++) check_case(be, CASES[i]);
    backend_destroy(be);
    return test_finish("test_golden");
}
