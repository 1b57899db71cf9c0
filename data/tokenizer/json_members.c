/* The JSON readers every part of tokenizer.json's loader shares: members by kind, with errors
 * naming where in the file they are. */
#include <string.h>

#include "core/utf8.h"
#include "data/tokenizer/tokenizer_parts.h"

const char *json_kind(const cJSON *j) {
    if (!j) return "nothing";
    if (cJSON_IsNull(j)) return "null";
    if (cJSON_IsBool(j)) return "a boolean";
    if (cJSON_IsNumber(j)) return "a number";
    if (cJSON_IsString(j)) return "a string";
    if (cJSON_IsArray(j)) return "an array";
    return "an object";
}

const char *json_string(const cJSON *obj, const char *where, const char *key, Status *st) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (cJSON_IsString(v)) return v->valuestring;
    *st = errorf("%s.%s: expected a string, got %s", where, key, json_kind(v));
    return NULL;
}

Status json_bool(const cJSON *obj, const char *where, const char *key, int dflt, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = dflt;
    if (!v || cJSON_IsNull(v)) return STATUS_OK;
    if (!cJSON_IsBool(v)) return errorf("%s.%s: expected true or false, got %s", where, key, json_kind(v));
    *out = cJSON_IsTrue(v);
    return STATUS_OK;
}

Status json_char(const cJSON *obj, const char *where, const char *key, char out[5], size_t *len) {
    Status st = STATUS_OK;
    const char *s = json_string(obj, where, key, &st);
    if (!s) return st;
    size_t n = strlen(s);
    if (n == 0 || n > 4 || utf8_invalid_at((const unsigned char *)s, n) != n || utf8_char_len((unsigned char)s[0]) != n)
        return errorf("%s.%s: expected one character, got \"%.40s\"", where, key, s);
    memcpy(out, s, n);
    out[n] = '\0';
    *len = n;
    return STATUS_OK;
}

Status json_pattern(const cJSON *j, const char *where, Regex **out) {
    const cJSON *str = cJSON_GetObjectItemCaseSensitive(j, "String");
    const cJSON *re = cJSON_GetObjectItemCaseSensitive(j, "Regex");
    if (!cJSON_IsObject(j) || (!cJSON_IsString(str) && !cJSON_IsString(re)))
        return errorf("%s: expected {\"String\": ...} or {\"Regex\": ...}, got %s", where, json_kind(j));
    const char *p = cJSON_IsString(str) ? str->valuestring : re->valuestring;
    if (!*p) return errorf("%s: an empty pattern is not supported", where);
    if (regex_compile(p, strlen(p), cJSON_IsString(str), out) != STATUS_OK) return error_context("%s: ", where);
    return STATUS_OK;
}
