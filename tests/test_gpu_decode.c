/* Decoding on the CUDA backend against the CPU: the attention_decode op (GQA and absorbed-MLA
 * shapes, one chunk and several, f32 and bf16 storage against the CPU's bf16 reference), and whole
 * models decoded from the cache (GQA, MLA, hybrid) against the CPU's logits at every position.
 * Reports "skipped: no CUDA device" where there is none. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "decode_fixtures.h"
#include "harness.h"
#include "model_fixtures.h"

/* attention_decode on both backends from the same host inputs, in `dt` storage. */
static void check_op(Backend *gpu, Backend *cpu, DType dt, int64_t H, int64_t Hk, int64_t Dk, int64_t Ds, int64_t Dv,
                     int64_t n) {
    const int64_t shapes[5][3] = {{H, Dk + Ds, 0}, {n, Hk, Dk}, {n, Ds, 0}, {n, Hk, Dv}, {H, Dv, 0}};
    const int ndims[5] = {2, 3, 2, 3, 2};
    float *host[5], *got[2];
    Tensor t[2][5];
    Backend *bes[2] = {gpu, cpu};
    for (int i = 0; i < 5; i++) {
        int64_t count = shapes[i][0] * shapes[i][1] * (ndims[i] == 3 ? shapes[i][2] : 1);
        host[i] = test_alloc((size_t)(count > 0 ? count : 1) * sizeof(float));
        fill_normal(host[i], count, 10 + (uint64_t)i, 1.0f);
        for (int b = 0; b < 2; b++) {
            if (i == 2 && Ds == 0) {
                t[b][i] = tensor_none();
                continue;
            }
            CHECK_OK(bes[b]->alloc(bes[b], &t[b][i], dt, ndims[i], shapes[i]));
            if (i < 4) CHECK_OK(backend_upload_f32(bes[b], t[b][i], host[i]));
        }
    }
    for (int b = 0; b < 2; b++) {
        got[b] = test_alloc((size_t)(H * Dv) * sizeof(float));
        CHECK_OK(bes[b]->ops.attention_decode(bes[b], t[b][4], t[b][0], t[b][1], t[b][2], t[b][3], 0.37f));
        CHECK_OK(backend_download_f32(bes[b], got[b], t[b][4]));
    }
    double err = rel_error_f32(got[0], got[1], H * Dv);
    CHECK(err < (dt == DT_BF16 ? 1e-2 : 1e-5),
          "attention_decode %s, H %lld over %lld, Dk %lld Ds %lld Dv %lld, %lld keys: gpu against cpu rel error %.3g", dtype_name(dt), (long long)H, (long long)Hk, (long long)Dk, (long long)Ds,
          (long long)Dv, (long long)n, err);
    for (int i = 0; i < 5; i++) {
        free(host[i]);
        for (int b = 0; b < 2; b++)
            if (tensor_present(t[b][i])) bes[b]->release(bes[b], &t[b][i]);
    }
    free(got[0]);
    free(got[1]);
}

/* The same random model on both backends, decoded after a 3-token prefill. */
static void check_model(Backend *gpu, Backend *cpu, const char *what, const ModelConfig *cfg, DType dt) {
    enum { N = 20 };
    Model *mg = random_model(gpu, cfg, N, 4), *mc = random_model(cpu, cfg, N, 4);
    if (!mg || !mc) return;
    CHECK_OK(model_set_precision(mg, DT_F32, dt));
    CHECK_OK(model_set_precision(mc, DT_F32, dt));
    int32_t ids[N];
    for (int i = 0; i < N; i++) ids[i] = (int32_t)((i * 5 + 2) % cfg->vocab_size);
    for (int mode = DECODE_MLA_ABSORBED; mode <= DECODE_MLA_EXPANDED; mode++) {
        float *g = decoded_logits(mg, ids, N, 3, (DecodeMlaMode)mode);
        float *c = decoded_logits(mc, ids, N, 3, (DecodeMlaMode)mode);
        int64_t at = -1;
        double err = worst_row_error(g, c, N, cfg->vocab_size, &at);
        CHECK(err < (dt == DT_BF16 ? 3e-2 : 1e-4), "%s, %s, %s: gpu logits against cpu rel error %.3g at position %lld",
              what, dtype_name(dt), mode == DECODE_MLA_ABSORBED ? "absorbed" : "expanded", err, (long long)at);
        free(g);
        free(c);
    }
    model_destroy(mg);
    model_destroy(mc);
}

int main(void) {
    if (backend_cuda_device_count() == 0) {
        printf("skipped: no CUDA device\n");
        return TEST_SKIPPED;
    }
    Backend *gpu = NULL, *cpu = test_cpu_backend(0);
    BackendOptions opts = {0, 0};
    if (!CHECK_OK(backend_create(&gpu, "cuda", opts))) return test_finish("test_gpu_decode");
    CHECK_OK(backend_check_ops(gpu));
    const DType dts[2] = {DT_F32, DT_BF16};
    for (int i = 0; i < 2; i++) {
        check_op(gpu, cpu, dts[i], 6, 2, 7, 0, 9, 1);        /* GQA, one cached token */
        check_op(gpu, cpu, dts[i], 6, 2, 7, 0, 9, 300);      /* past one chunk */
        check_op(gpu, cpu, dts[i], 5, 1, 12, 4, 12, 600);    /* absorbed MLA: latent as k and v, rope key shared */
        check_op(gpu, cpu, dts[i], 3, 3, 0, 4, 5, 257);      /* no per-head key part (dn = 0) */
        /* The chunk length follows n and Hk (256 keys down to 32): the 6x SmolLM2 student's absorbed
         * shapes at a 4k context (32-key chunks, 129 of them, more heads than warps), 256-key chunks,
         * and DeepSeek-V2's latent 512 + rope 64 (lanes striding over wide rows). */
        check_op(gpu, cpu, dts[i], 9, 1, 48, 16, 48, 4100);
        check_op(gpu, cpu, dts[i], 8, 8, 16, 0, 16, 8200);
        check_op(gpu, cpu, dts[i], 16, 1, 512, 64, 512, 300);
    }
    ModelConfig teacher = tiny_teacher_config(1), mla = tiny_student_config(0x3, 0, 1);
    ModelConfig hybrid = tiny_student_config(0x2, 6, 0);
    for (int i = 0; i < 2; i++) {
        check_model(gpu, cpu, "gqa with biases", &teacher, dts[i]);
        check_model(gpu, cpu, "mla", &mla, dts[i]);
        check_model(gpu, cpu, "hybrid with q_lora", &hybrid, dts[i]);
    }
    backend_destroy(gpu);
    backend_destroy(cpu);
    return test_finish("test_gpu_decode");
}
