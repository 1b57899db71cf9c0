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
                 "q_lora_rank %lld%s, latent norm %s; %lld calibration tokens\n",
            r->method, (long long)r->dims.kv_lora_rank, (long long)r->dims.qk_rope_head_dim,
            (long long)r->dims.qk_nope_head_dim, (long long)r->dims.v_head_dim, (long long)r->dims.q_lora_rank,
            r->dims.q_lora_rank == 0 ? "" : r->dims.q_norm ? " (q norm on)" : " (q norm off)",
            r->dims.latent_norm ? "on" : "off", (long long)r->calib_tokens);
    fprintf(out, "%5s  %4s  %10s  %11s  %15s  %12s\n", "layer", "attn", "rank(energy)", "kept energy", "attn out error",
            "vs stream");
    for (int l = 0; l < r->n_layers; l++) {
        const LayerReport *lr = &r->layers[l];
        char rank[32] = "-";
        if (lr->rank_chosen > 0) snprintf(rank, sizeof rank, "%lld", (long long)lr->rank_chosen);
        fprintf(out, "%5d  %4s  %12s  %11.4f  %15.4g  %12.4g%s\n", l, lr->kind == ATTENTION_MLA ? "mla" : "gqa", rank,
                lr->kept_energy, lr->attn_rel_error, lr->stream_error, lr->auto_gqa ? "  (kept as GQA by measurement)" : "");
    }
    int n_bad = 0;
    char bad[256] = "";
    for (int l = 0; l < r->n_layers; l++)
        if (r->layers[l].attn_rel_error > 1.0 && n_bad++ < 16) {
            size_t used = strlen(bad);
            snprintf(bad + used, sizeof bad - used, "%s%d", used ? ", " : "", l);
        }
    if (n_bad)
        fprintf(out, "warning: %d layer%s (%s%s) ha%s an attention-output error above 1, worse than no attention at all: "
                     "more rank, a larger qk_rope_head_dim or gqa_layers would help\n",
                n_bad, n_bad > 1 ? "s" : "", bad, n_bad > 16 ? ", ..." : "", n_bad > 1 ? "ve" : "s");
    fprintf(out, "KV cache per token (bf16, all layers): teacher %lld bytes, student %lld bytes, %.2fx smaller\n",
            (long long)r->kv_bytes_teacher, (long long)r->kv_bytes_student,
            r->kv_bytes_student ? (double)r->kv_bytes_teacher / (double)r->kv_bytes_student : 0.0);
    if (r->eval_tokens > 0)
        fprintf(out, "training-free, on data.val (%lld windows, %lld tokens): source ppl %.3f, student ppl %.3f "
                     "(%.2fx), KL %.4f, top-1 agreement %.3f\n",
                (long long)r->eval_windows, (long long)r->eval_tokens, r->source_ppl, r->student_ppl,
                r->source_ppl > 0 ? r->student_ppl / r->source_ppl : 0.0, r->kl, r->top1_agree);
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
    cJSON_AddBoolToObject(dims, "q_norm", r->dims.q_norm);
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
        cJSON_AddNumberToObject(o, "stream_rel_error", lr->stream_error);
        if (lr->auto_gqa) cJSON_AddBoolToObject(o, "auto_gqa", 1);
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
    if (r->eval_tokens > 0) {
        cJSON *q = cJSON_AddObjectToObject(root, "training_free");
        cJSON_AddNumberToObject(q, "source_ppl", r->source_ppl);
        cJSON_AddNumberToObject(q, "student_ppl", r->student_ppl);
        cJSON_AddNumberToObject(q, "kl", r->kl);
        cJSON_AddNumberToObject(q, "top1_agree", r->top1_agree);
        cJSON_AddNumberToObject(q, "windows", (double)r->eval_windows);
        cJSON_AddNumberToObject(q, "tokens", (double)r->eval_tokens);
    }
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
