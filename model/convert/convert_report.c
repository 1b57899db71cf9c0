/* The conversion report: per layer the rank, the kept share of the spectrum and the attention
 * output error on calibration tokens; the KV-cache bytes per token of teacher and student. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/file_io.h"
#include "model/convert/convert.h"

void convert_report_print(const ConvertReport *r, FILE *out) {
    fprintf(out, "conversion: %s; kv_lora_rank %lld, qk_rope_head_dim %lld, qk_nope_head_dim %lld, v_head_dim %lld, "
                 "q_lora_rank %lld, latent norm %s; %lld calibration tokens\n",
            r->method, (long long)r->dims.kv_lora_rank, (long long)r->dims.qk_rope_head_dim,
            (long long)r->dims.qk_nope_head_dim, (long long)r->dims.v_head_dim, (long long)r->dims.q_lora_rank,
            r->dims.latent_norm ? "on" : "off", (long long)r->calib_tokens);
    fprintf(out, "%5s  %4s  %10s  %11s  %15s\n", "layer", "attn", "rank(energy)", "kept energy", "attn out error");
    for (int l = 0; l < r->n_layers; l++) {
        const LayerReport *lr = &r->layers[l];
        char rank[32] = "-";
        if (lr->rank_chosen > 0) snprintf(rank, sizeof rank, "%lld", (long long)lr->rank_chosen);
        fprintf(out, "%5d  %4s  %12s  %11.4f  %15.4g\n", l, lr->kind == ATTENTION_MLA ? "mla" : "gqa", rank,
                lr->kept_energy, lr->attn_rel_error);
    }
    fprintf(out, "KV cache per token (bf16, all layers): teacher %lld bytes, student %lld bytes, %.2fx smaller\n",
            (long long)r->kv_bytes_teacher, (long long)r->kv_bytes_student,
            r->kv_bytes_student ? (double)r->kv_bytes_teacher / (double)r->kv_bytes_student : 0.0);
}

static cJSON *report_json(const ConvertReport *r) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "method", r->method);
    cJSON *dims = cJSON_AddObjectToObject(root, "mla");
    cJSON_AddNumberToObject(dims, "kv_lora_rank", (double)r->dims.kv_lora_rank);
    cJSON_AddNumberToObject(dims, "qk_rope_head_dim", (double)r->dims.qk_rope_head_dim);
    cJSON_AddNumberToObject(dims, "qk_nope_head_dim", (double)r->dims.qk_nope_head_dim);
    cJSON_AddNumberToObject(dims, "v_head_dim", (double)r->dims.v_head_dim);
    cJSON_AddNumberToObject(dims, "q_lora_rank", (double)r->dims.q_lora_rank);
    cJSON_AddBoolToObject(dims, "latent_norm", r->dims.latent_norm);
    cJSON_AddNumberToObject(root, "calibration_tokens", (double)r->calib_tokens);
    cJSON *layers = cJSON_AddArrayToObject(root, "layers");
    for (int l = 0; l < r->n_layers; l++) {
        const LayerReport *lr = &r->layers[l];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "layer", l);
        cJSON_AddStringToObject(o, "attention", lr->kind == ATTENTION_MLA ? "mla" : "gqa");
        if (lr->rank_chosen > 0) cJSON_AddNumberToObject(o, "rank_by_energy", (double)lr->rank_chosen);
        cJSON_AddNumberToObject(o, "kept_energy", lr->kept_energy);
        cJSON_AddNumberToObject(o, "attn_out_rel_error", lr->attn_rel_error);
        if (lr->kind == ATTENTION_MLA && lr->n_rope_pairs > 0) {
            cJSON *pairs = cJSON_AddArrayToObject(o, "rope_pairs");
            for (int j = 0; j < lr->n_rope_pairs; j++) cJSON_AddItemToArray(pairs, cJSON_CreateNumber(lr->rope_pairs[j]));
        }
        cJSON_AddItemToArray(layers, o);
    }
    cJSON *kv = cJSON_AddObjectToObject(root, "kv_bytes_per_token");
    cJSON_AddNumberToObject(kv, "teacher", (double)r->kv_bytes_teacher);
    cJSON_AddNumberToObject(kv, "student", (double)r->kv_bytes_student);
    cJSON_AddNumberToObject(kv, "ratio", r->kv_bytes_student ? (double)r->kv_bytes_teacher / (double)r->kv_bytes_student : 0.0);
    return root;
}

Status convert_report_write_json(const ConvertReport *r, const char *path) {
    cJSON *root = report_json(r);
    char *text = root ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text) return errorf("%s: out of memory formatting the report", path);
    Status st = file_write_atomic(path, text, strlen(text));
    free(text);
    return st;
}
