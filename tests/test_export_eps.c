/* The epsilon-independent export: the residual rescale computes the same function at rms_norm_eps =
 * 1e-6, and an export of a student trained with another epsilon reads back as that student. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "model/hf/export_eps.h"
#include "model/hf/hf_model.h"
#include "convert_fixtures.h"
#include "model_fixtures.h"

enum { BATCH = 2, SEQ = 9 };

/* The residual rescale is the same function at the export's epsilon, and an export of a student
 * trained with another epsilon reads back as that student. */
static void test_export_eps(Backend *be, int tied, int latent_norm) {
    char what[64], dir[64];
    snprintf(what, sizeof what, "eps rescale%s, latent norm %d", tied ? " (tied)" : "", latent_norm);
    ModelConfig cfg = tiny_student_config(0x1, 0, latent_norm); /* layer 1 keeps GQA: its o_proj too */
    cfg.qkv_bias = 1;
    cfg.tie_word_embeddings = tied;
    cfg.rms_norm_eps = 1e-2; /* large, so a missed rescale shows */
    Model *m = NULL, *scaled = NULL;
    CHECK_OK(model_create(&m, be, &cfg, SEQ));
    CHECK_OK(model_init_random(m, 9, 0.3f));
    randomize_biases(m, 19, 0.3f);
    int64_t n = BATCH * SEQ * cfg.vocab_size;
    float *ref = convert_logits_of(be, m, BATCH, SEQ);
    if (CHECK_OK(model_with_export_eps(m, &scaled)) && scaled) {
        CHECK(scaled->cfg.rms_norm_eps == EXPORT_RMS_NORM_EPS && scaled->cfg.rms_norm_eps_trained == 1e-2,
              "%s: rms_norm_eps %g, trained %g", what, scaled->cfg.rms_norm_eps, scaled->cfg.rms_norm_eps_trained);
        float *got = convert_logits_of(be, scaled, BATCH, SEQ);
        double err = rel_error_f32(got, ref, n);
        CHECK(err < 1e-6, "%s: the rescaled model's logits: rel error %.3g", what, err);
        /* The rescale is not a no-op: the same weights at the export's epsilon compute another model. */
        scaled->cfg.rms_norm_eps_trained = 0;
        Model *plain = NULL;
        ModelConfig at_export = cfg;
        at_export.rms_norm_eps = EXPORT_RMS_NORM_EPS;
        CHECK_OK(model_create(&plain, be, &at_export, SEQ));
        int64_t k = 0;
        float *w = model_host_copy(m, 0, &k);
        int64_t off = 0;
        for (int i = 0; i < plain->n_params; i++) {
            CHECK_OK(backend_upload_f32(be, *plain->params[i].value, w + off));
            off += tensor_numel(*plain->params[i].value);
        }
        model_weights_changed(plain);
        float *other = convert_logits_of(be, plain, BATCH, SEQ);
        CHECK(rel_error_f32(other, ref, n) > 1e-3, "%s: without the rescale the epsilon changes the logits (%.3g)",
              what, rel_error_f32(other, ref, n));
        free(w), free(other), free(got);
        model_destroy(plain);
        model_destroy(scaled);
    }
    free(ref);

    /* Through the file: an all-MLA student (the export needs one), read back with its own epsilon. */
    ModelConfig mla_cfg = tiny_student_config(0x3, 6, latent_norm);
    mla_cfg.tie_word_embeddings = tied;
    mla_cfg.rms_norm_eps = 1e-5;
    Model *s = NULL, *back = NULL;
    CHECK_OK(model_create(&s, be, &mla_cfg, SEQ));
    CHECK_OK(model_init_random(s, 21, 0.3f));
    test_make_tmp_dir(dir, "eps");
    ExportOptions opts = {.dtype = DT_F32};
    CHECK_OK(hf_model_export(s, dir, &opts));
    if (CHECK_OK(hf_model_load(&back, be, dir, SEQ))) {
        CHECK(back->cfg.rms_norm_eps == 1e-5 && back->cfg.rms_norm_eps_trained == 0 &&
              back->cfg.tie_word_embeddings == tied,
              "%s: read back with rms_norm_eps %g (tied %d)", what, back->cfg.rms_norm_eps, back->cfg.tie_word_embeddings);
        int64_t nl = BATCH * SEQ * mla_cfg.vocab_size;
        float *la = convert_logits_of(be, s, BATCH, SEQ), *lb = convert_logits_of(be, back, BATCH, SEQ);
        double err = rel_error_f32(lb, la, nl);
        CHECK(err < 2e-6, "%s: export and import: logits rel error %.3g", what, err);
        free(la), free(lb);
        model_destroy(back);
    }
    test_remove_tree(dir);
    model_destroy(s);
    model_destroy(m);
}

int main(void) {
    Backend *be = test_cpu_backend(0);
    test_export_eps(be, 0, 1);
    test_export_eps(be, 1, 0);
    backend_destroy(be);
    return test_finish("test_export_eps");
}
