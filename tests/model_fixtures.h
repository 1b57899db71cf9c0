/* Tiny model configs shared by the model and training tests: a Llama-like GQA teacher and MLA
 * students of awkward sizes (nothing a multiple of 8). */
#pragma once

#include <string.h>

#include "harness.h"
#include "model/config.h"
#include "model/model.h"

/* GQA teacher: D=12, H=4 over K=2, hd=6, F=20, V=23, 2 layers, Qwen2-style q/k/v bias optional. */
static inline ModelConfig tiny_teacher_config(int qkv_bias) {
    ModelConfig c;
    memset(&c, 0, sizeof c);
    strcpy(c.architecture, "LlamaForCausalLM");
    strcpy(c.model_type, "llama");
    c.vocab_size = 23;
    c.hidden_size = 12;
    c.intermediate_size = 20;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 6;
    c.max_position_embeddings = 64;
    c.rms_norm_eps = 1e-5;
    c.rope.theta = 10000.0;
    c.rope.scaling = ROPE_SCALING_NONE;
    c.qkv_bias = qkv_bias;
    c.bos_token_id = -1;
    c.eos_token_id = 0;
    return c;
}

/* The teacher's shape with MLA attention in the layers where mla_mask has bit l set:
 * r=5, dn=3, dr=4, dv=7, and an optional q bottleneck of width q_lora. norms: DeepSeek's two norms
 * (kv_a_layernorm, and q_a_layernorm with a bottleneck) trained, or neither (a new conversion's
 * default); tests of one without the other set the field themselves. */
static inline ModelConfig tiny_student_config(unsigned mla_mask, int64_t q_lora, int norms) {
    ModelConfig c = tiny_teacher_config(0);
    c.mla.kv_lora_rank = 5;
    c.mla.q_lora_rank = q_lora;
    c.mla.qk_nope_head_dim = 3;
    c.mla.qk_rope_head_dim = 4;
    c.mla.v_head_dim = 7;
    c.mla.latent_norm = norms;
    c.mla.q_norm = norms;
    for (int l = 0; l < c.num_hidden_layers; l++)
        c.layer_attention[l] = (mla_mask >> l) & 1 ? ATTENTION_MLA : ATTENTION_GQA;
    return c;
}

/* Every parameter of m (or, with grads, every gradient) in registry order, as host float32 in one
 * array of *n values, whatever the backend and storage dtype. */
static inline float *model_host_copy(Model *m, int grads, int64_t *n) {
    *n = model_num_parameters(m);
    float *out = test_alloc((size_t)(*n > 0 ? *n : 1) * sizeof(float));
    int64_t off = 0;
    for (int i = 0; i < m->n_params; i++) {
        Tensor t = grads ? *m->params[i].grad : *m->params[i].value;
        CHECK_OK(backend_download_f32(m->be, out + off, t));
        off += tensor_numel(t);
    }
    return out;
}
