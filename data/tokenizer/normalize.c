/* Normalizers: Prepend, Replace (string or regex), the Unicode normalization forms, and Sequence of
 * them, as Llama 2 / Mistral (Prepend "▁" + Replace " " -> "▁") and Qwen2 (NFC) use them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer/tokenizer_parts.h"

Status normalizer_load(const cJSON *j, const char *where, Normalizer *nz) {
    memset(nz, 0, sizeof *nz);
    if (!cJSON_IsObject(j)) return errorf("%s: expected an object, got %s", where, json_kind(j));
    Status st = STATUS_OK;
    const char *type = json_string(j, where, "type", &st);
    if (!type) return st;
    char sub[256];
    if (strcmp(type, "Sequence") == 0) {
        nz->kind = NORMALIZER_SEQUENCE;
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "normalizers");
        if (!cJSON_IsArray(arr)) return errorf("%s.normalizers: expected an array, got %s", where, json_kind(arr));
        int n = cJSON_GetArraySize(arr);
        nz->children = calloc((size_t)(n ? n : 1), sizeof *nz->children);
        if (!nz->children) return errorf("out of memory");
        const cJSON *e;
        cJSON_ArrayForEach(e, arr) {
            snprintf(sub, sizeof sub, "%s.normalizers[%d]", where, nz->n_children);
            TRY(normalizer_load(e, sub, &nz->children[nz->n_children++]));
        }
        return STATUS_OK;
    }
    if (strcmp(type, "Prepend") == 0) {
        nz->kind = NORMALIZER_PREPEND;
        const char *s = json_string(j, where, "prepend", &st);
        if (!s) return st;
        nz->text = strdup(s);
        nz->text_len = strlen(s);
        return nz->text ? STATUS_OK : errorf("out of memory");
    }
    if (strcmp(type, "Replace") == 0) {
        nz->kind = NORMALIZER_REPLACE;
        snprintf(sub, sizeof sub, "%s.pattern", where);
        TRY(json_pattern(cJSON_GetObjectItemCaseSensitive(j, "pattern"), sub, &nz->pattern));
        const char *s = json_string(j, where, "content", &st);
        if (!s) return st;
        nz->text = strdup(s);
        nz->text_len = strlen(s);
        return nz->text ? STATUS_OK : errorf("out of memory");
    }
    static const char *const forms[] = {"NFC", "NFD", "NFKC", "NFKD"};
    for (int f = 0; f < 4; f++)
        if (strcmp(type, forms[f]) == 0) {
            nz->kind = NORMALIZER_UNICODE;
            nz->form = (UnicodeForm)f;
            return STATUS_OK;
        }
    return errorf("%s.type \"%s\" is not supported (Sequence, Prepend, Replace, NFC, NFD, NFKC and NFKD are)", where,
                  type);
}

void normalizer_free(Normalizer *nz) {
    if (!nz) return;
    for (int i = 0; i < nz->n_children; i++) normalizer_free(&nz->children[i]);
    free(nz->children);
    free(nz->text);
    regex_free(nz->pattern);
    memset(nz, 0, sizeof *nz);
}

static int is_ascii(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80) return 0;
    return 1;
}

static Status replace_all(const Normalizer *nz, const char *s, size_t n, EncodeScratch *sc, const char **out,
                          size_t *out_len) {
    TRY(regex_find_all(nz->pattern, s, n, sc->re, &sc->spans));
    const Spans *m = &sc->spans;
    if (m->n == 0) {
        *out = s;
        *out_len = n;
        return STATUS_OK;
    }
    size_t len = n;
    for (size_t i = 0; i < m->n; i++) len = len - (m->p[i].end - m->p[i].start) + nz->text_len;
    char *r = arena_alloc(&sc->arena, len ? len : 1), *o = r;
    if (!r) return errorf("out of memory normalizing");
    size_t prev = 0;
    for (size_t i = 0; i < m->n; i++) {
        memcpy(o, s + prev, m->p[i].start - prev);
        o += m->p[i].start - prev;
        memcpy(o, nz->text, nz->text_len);
        o += nz->text_len;
        prev = m->p[i].end;
    }
    memcpy(o, s + prev, n - prev);
    *out = r;
    *out_len = len;
    return STATUS_OK;
}

Status normalizer_apply(const Normalizer *nz, const char *s, size_t n, EncodeScratch *sc, const char **out,
                        size_t *out_len) {
    *out = s;
    *out_len = n;
    switch (nz->kind) {
    case NORMALIZER_SEQUENCE:
        for (int i = 0; i < nz->n_children; i++) TRY(normalizer_apply(&nz->children[i], *out, *out_len, sc, out, out_len));
        return STATUS_OK;
    case NORMALIZER_PREPEND: {
        if (n == 0) return STATUS_OK;
        char *r = arena_alloc(&sc->arena, nz->text_len + n);
        if (!r) return errorf("out of memory normalizing");
        memcpy(r, nz->text, nz->text_len);
        memcpy(r + nz->text_len, s, n);
        *out = r;
        *out_len = nz->text_len + n;
        return STATUS_OK;
    }
    case NORMALIZER_REPLACE:
        return replace_all(nz, s, n, sc, out, out_len);
    case NORMALIZER_UNICODE: {
        /* ASCII is the same text in every form. */
        if (is_ascii(s, n)) return STATUS_OK;
        char *u;
        size_t ulen;
        TRY(unicode_normalize(s, n, nz->form, &u, &ulen));
        char *r = arena_alloc(&sc->arena, ulen ? ulen : 1);
        if (r) memcpy(r, u, ulen);
        free(u);
        if (!r) return errorf("out of memory normalizing");
        *out = r;
        *out_len = ulen;
        return STATUS_OK;
    }
    }
    return STATUS_OK;
}
