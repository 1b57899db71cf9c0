/* The model config a checkpoint records (model/config_json.c): the MLA fields round-trip, and a
 * config written before the linear q bottleneck existed (no q_norm) reads as the model it held, a
 * q bottleneck with q_a_layernorm. */
#include <stdlib.h>

#include "harness.h"
#include "model/config_json.h"
#include "model/model.h"
#include "model_fixtures.h"

static void test_round_trip(int q_norm) {
    ModelConfig c = tiny_student_config(0x3, 6, 0), back;
    c.mla.q_norm = q_norm;
    cJSON *o = model_config_to_json(&c);
    CHECK(o != NULL, "model_config_to_json");
    if (!o) return;
    if (CHECK_OK(model_config_from_json(o, "t", &back)))
        CHECK(back.mla.q_norm == q_norm && back.mla.latent_norm == 0 && back.mla.q_lora_rank == 6,
              "q_norm %d read back as %d (latent_norm %d, q_lora_rank %lld)", q_norm, back.mla.q_norm,
              back.mla.latent_norm, (long long)back.mla.q_lora_rank);
    cJSON_Delete(o);
}

static void test_old_config(Backend *be) {
    ModelConfig c = tiny_student_config(0x3, 6, 1), back;
    cJSON *o = model_config_to_json(&c);
    CHECK(o != NULL, "model_config_to_json");
    if (!o) return;
    cJSON_DeleteItemFromObjectCaseSensitive(o, "q_norm");
    if (CHECK_OK(model_config_from_json(o, "old", &back))) {
        CHECK(back.mla.q_norm == 1, "a config without q_norm has q_a_layernorm (q_norm %d)", back.mla.q_norm);
        Model *m = NULL;
        if (CHECK_OK(model_create(&m, be, &back, 8)))
            CHECK(model_find_param(m, "model.layers.0.self_attn.q_a_layernorm.weight") != NULL,
                  "its model has the q_a_layernorm parameter its checkpoint holds");
        model_destroy(m);
    }
    cJSON_AddStringToObject(o, "q_norm", "yes");
    CHECK_ERR(model_config_from_json(o, "bad", &back), "bad: model config: q_norm must be a number");
    cJSON_Delete(o);

    /* Without the norm the parameter is absent. */
    c.mla.q_norm = 0;
    Model *m = NULL;
    if (CHECK_OK(model_create(&m, be, &c, 8)))
        CHECK(model_find_param(m, "model.layers.0.self_attn.q_a_layernorm.weight") == NULL &&
                  model_find_param(m, "model.layers.0.self_attn.q_a_proj.weight") != NULL,
              "q_norm 0: q_a_proj without q_a_layernorm");
    model_destroy(m);
}

int main(void) {
    Backend *be = test_cpu_backend(0);
    test_round_trip(0);
    test_round_trip(1);
    test_old_config(be);
    backend_destroy(be);
    return test_finish("test_config_json");
}
