/* The end-of-document id of a tokenizer, from the HF model folder's config files or, for a bare
 * tokenizer.json, from the end-of-text token that GPT-2, Llama 3 and Llama 2 style vocabularies name. */
#include "data/tokenizer/eos_id.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static cJSON *read_json(const char *dir, const char *name) {
    char path[4096 + 64];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *text = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n >= 0 && n < (1L << 26) && fseek(f, 0, SEEK_SET) == 0 && (text = malloc((size_t)n + 1)) &&
        fread(text, 1, (size_t)n, f) == (size_t)n)
        text[n] = '\0';
    else {
        free(text);
        text = NULL;
    }
    fclose(f);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    free(text);
    return j;
}

/* An id from "eos_token_id": a number, or the first of a list. */
static int64_t id_field(const cJSON *j) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "eos_token_id");
    if (cJSON_IsArray(v)) v = cJSON_GetArrayItem(v, 0);
    return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < 2147483647.0 ? (int64_t)v->valuedouble : -1;
}

/* The id of tokenizer_config.json's "eos_token": a string or {"content": ...}. */
static int64_t token_field(const cJSON *j, const Tokenizer *tok) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "eos_token");
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(v) ? tokenizer_token_id(tok, v->valuestring) : -1;
}

Status tokenizer_eos_id(const char *path, const Tokenizer *tok, int32_t *eos, char *source, size_t n) {
    char dir[4096];
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        snprintf(dir, sizeof dir, "%s", path);
    } else {
        const char *slash = strrchr(path, '/');
        snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
    }
    static const char *const files[] = {"config.json", "tokenizer_config.json", "generation_config.json"};
    for (int i = 0; i < 3; i++) {
        cJSON *j = read_json(dir, files[i]);
        int64_t id = i == 1 ? token_field(j, tok) : id_field(j);
        cJSON_Delete(j);
        if (id < 0) continue;
        if (id >= tokenizer_vocab_size(tok))
            return errorf("%s/%s: eos id %lld is not below the tokenizer's vocabulary size %lld", dir, files[i],
                          (long long)id, (long long)tokenizer_vocab_size(tok));
        *eos = (int32_t)id;
        snprintf(source, n, "%s", files[i]);
        return STATUS_OK;
    }
    static const char *const names[] = {"<|endoftext|>", "<|end_of_text|>", "</s>"};
    for (int i = 0; i < 3; i++) {
        int32_t id = tokenizer_token_id(tok, names[i]);
        if (id < 0) continue;
        *eos = id;
        snprintf(source, n, "the token %s", names[i]);
        return STATUS_OK;
    }
    return errorf("%s: no eos id in the model folder's config files and none of <|endoftext|>, <|end_of_text|>, "
                  "</s> in the vocabulary; give one with --eos-id",
                  path);
}
