/* HellaSwag-style JSON lines -> task lines of byte-tokenizer ids: each text read from the JSON, its
 * UTF-8 bytes written as ids, the whole output kept in memory and written atomically. */
#include "data/mc_convert.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/file_io.h"
#include "data/byte_tokenizer.h"

/* Writes the bytes of the given strings, one after the other, as a JSON list of token ids, after
 * `first` ids when first >= 0. Returns the number of ids. */
static uint64_t write_ids(FILE *out, int32_t first, const char *a, const char *b) {
    uint64_t n = 0;
    fputc('[', out);
    if (first >= 0) {
        fprintf(out, "%d", first);
        n++;
    }
    for (const char *s = a; s; s = s == a ? b : NULL) {
        for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
            int32_t id;
            byte_tokens_encode(p, 1, &id);
            fprintf(out, "%s%d", n++ ? ", " : "", id);
        }
    }
    fputc(']', out);
    return n;
}

static const char *string_item(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static Status convert_line(const char *path, unsigned long long line_no, const char *text, FILE *out,
                           McConvertResult *r) {
    cJSON *root = cJSON_Parse(text);
    Status st = cJSON_IsObject(root) ? STATUS_OK : errorf("%s:%llu: not a JSON object", path, line_no);
    const char *ctx = st == STATUS_OK ? string_item(root, "ctx") : NULL;
    const char *ctx_a = st == STATUS_OK ? string_item(root, "ctx_a") : NULL;
    const char *ctx_b = st == STATUS_OK ? string_item(root, "ctx_b") : NULL;
    char *joined = NULL;
    if (st == STATUS_OK && !ctx && ctx_a && ctx_b) {
        size_t n = strlen(ctx_a) + strlen(ctx_b) + 2;
        joined = malloc(n);
        if (!joined) st = errorf("%s:%llu: out of memory", path, line_no);
        else snprintf(joined, n, "%s %s", ctx_a, ctx_b);
        ctx = joined;
    }
    if (st == STATUS_OK && (!ctx || !ctx[0]))
        st = errorf("%s:%llu: no context: expected a non-empty string \"ctx\" (or \"ctx_a\" and \"ctx_b\")", path,
                    line_no);
    const cJSON *endings = st == STATUS_OK ? cJSON_GetObjectItemCaseSensitive(root, "endings") : NULL;
    int n_endings = cJSON_IsArray(endings) ? cJSON_GetArraySize(endings) : 0;
    if (st == STATUS_OK && n_endings < 2)
        st = errorf("%s:%llu: \"endings\" must be a list of at least two strings", path, line_no);
    for (int j = 0; st == STATUS_OK && j < n_endings; j++) {
        const cJSON *e = cJSON_GetArrayItem(endings, j);
        if (!cJSON_IsString(e) || !e->valuestring[0])
            st = errorf("%s:%llu: endings[%d] is not a non-empty string", path, line_no, j);
    }
    const cJSON *label = st == STATUS_OK ? cJSON_GetObjectItemCaseSensitive(root, "label") : NULL;
    long long k = -1;
    if (cJSON_IsNumber(label) && label->valuedouble == (double)(long long)label->valuedouble) {
        k = (long long)label->valuedouble;
    } else if (cJSON_IsString(label) && label->valuestring[0]) { /* the HF datasets' copy writes "3" */
        char *end = NULL;
        k = strtoll(label->valuestring, &end, 10);
        if (*end) k = -1;
    }
    if (st == STATUS_OK && (k < 0 || k >= n_endings))
        st = errorf("%s:%llu: \"label\" must be the index of an ending, 0 to %d (a test split without labels "
                    "cannot be scored)", path, line_no, n_endings - 1);
    if (st == STATUS_OK) {
        fprintf(out, "{\"context\": ");
        uint64_t n_ctx = write_ids(out, BYTE_TOKENIZER_EOS, ctx, NULL);
        fprintf(out, ", \"endings\": [");
        for (int j = 0; j < n_endings; j++) {
            if (j) fprintf(out, ", ");
            uint64_t n = write_ids(out, -1, " ", cJSON_GetArrayItem(endings, j)->valuestring);
            if (n_ctx + n > r->longest) r->longest = n_ctx + n;
        }
        fprintf(out, "], \"label\": %lld}\n", k);
        r->items++;
        r->endings += (uint64_t)n_endings;
    }
    free(joined);
    cJSON_Delete(root);
    return st;
}

static Status convert_file(const char *path, FILE *out, McConvertResult *r) {
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) return errorf("%s: is a directory", path);
    FILE *in = fopen(path, "rb");
    if (!in) return errorf("%s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    unsigned long long line_no = 0;
    Status st = STATUS_OK;
    while (st == STATUS_OK && (len = getline(&line, &cap, in)) >= 0) {
        line_no++;
        if (strspn(line, " \t\r\n") == (size_t)len) continue;
        if (strlen(line) != (size_t)len) st = errorf("%s:%llu: a NUL byte inside the line", path, line_no);
        else st = convert_line(path, line_no, line, out, r);
    }
    if (st == STATUS_OK && ferror(in)) st = errorf("%s: read error", path);
    free(line);
    fclose(in);
    r->inputs++;
    return st;
}

Status mc_convert_text(const char *const *inputs, int n_inputs, const char *out_path, McConvertResult *r) {
    memset(r, 0, sizeof *r);
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    if (!out) return errorf("%s: out of memory", out_path);
    Status st = STATUS_OK;
    for (int i = 0; i < n_inputs && st == STATUS_OK; i++) st = convert_file(inputs[i], out, r);
    if (fclose(out) != 0 && st == STATUS_OK) st = errorf("%s: out of memory", out_path);
    if (st == STATUS_OK && r->items == 0) st = errorf("%s: the input holds no items", n_inputs ? inputs[0] : "input");
    if (st == STATUS_OK) st = file_write_atomic(out_path, buf, len);
    free(buf);
    return st;
}
