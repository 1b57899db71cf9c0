/* Decoding: ids to token strings (skipping special tokens on request), then HF's decoder chain
 * (ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence) and the final join. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/utf8.h"
#include "data/tokenizer/tokenizer_parts.h"

Status decoder_load(const cJSON *j, const char *where, Decoder *d) {
    memset(d, 0, sizeof *d);
    if (!cJSON_IsObject(j)) return errorf("%s: expected an object, got %s", where, json_kind(j));
    Status st = STATUS_OK;
    const char *type = json_string(j, where, "type", &st);
    if (!type) return st;
    char sub[256];
    if (strcmp(type, "Sequence") == 0) {
        d->kind = DECODER_SEQUENCE;
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "decoders");
        if (!cJSON_IsArray(arr)) return errorf("%s.decoders: expected an array, got %s", where, json_kind(arr));
        int n = cJSON_GetArraySize(arr);
        d->children = calloc((size_t)(n ? n : 1), sizeof *d->children);
        if (!d->children) return errorf("out of memory");
        const cJSON *e;
        cJSON_ArrayForEach(e, arr) {
            snprintf(sub, sizeof sub, "%s.decoders[%d]", where, d->n_children);
            TRY(decoder_load(e, sub, &d->children[d->n_children++]));
        }
        return STATUS_OK;
    }
    if (strcmp(type, "ByteLevel") == 0) {
        d->kind = DECODER_BYTE_LEVEL;
        return STATUS_OK;
    }
    if (strcmp(type, "Metaspace") == 0) {
        d->kind = DECODER_METASPACE;
        return metaspace_load(j, where, d->replacement, &d->replacement_len, &d->prepend_scheme);
    }
    if (strcmp(type, "Replace") == 0) {
        d->kind = DECODER_REPLACE;
        snprintf(sub, sizeof sub, "%s.pattern", where);
        TRY(json_pattern(cJSON_GetObjectItemCaseSensitive(j, "pattern"), sub, &d->pattern));
        const char *s = json_string(j, where, "content", &st);
        if (!s) return st;
        d->content = strdup(s);
        d->content_len = strlen(s);
        return d->content ? STATUS_OK : errorf("out of memory");
    }
    if (strcmp(type, "ByteFallback") == 0) {
        d->kind = DECODER_BYTE_FALLBACK;
        return STATUS_OK;
    }
    if (strcmp(type, "Fuse") == 0) {
        d->kind = DECODER_FUSE;
        return STATUS_OK;
    }
    if (strcmp(type, "Strip") == 0) {
        d->kind = DECODER_STRIP;
        char ch[5];
        size_t cl;
        TRY(json_char(j, where, "content", ch, &cl));
        d->strip_char = utf8_decode_at(ch, &cl);
        const char *keys[2] = {"start", "stop"};
        size_t *dst[2] = {&d->strip_start, &d->strip_stop};
        for (int i = 0; i < 2; i++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, keys[i]);
            if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 1e9 || v->valuedouble != (double)(long)v->valuedouble)
                return errorf("%s.%s: expected a count, got %s", where, keys[i], json_kind(v));
            *dst[i] = (size_t)v->valuedouble;
        }
        return STATUS_OK;
    }
    return errorf("%s.type \"%s\" is not supported (Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse and "
                  "Strip are)",
                  where, type);
}

void decoder_free(Decoder *d) {
    if (!d) return;
    for (int i = 0; i < d->n_children; i++) decoder_free(&d->children[i]);
    free(d->children);
    regex_free(d->pattern);
    free(d->content);
    memset(d, 0, sizeof *d);
}

/* ---- running the chain over a list of strings ---- */

typedef struct {
    char *s;
    size_t len;
} Str;

typedef struct {
    Str *p;
    size_t n, cap;
} StrList;

static void list_free(StrList *l) {
    for (size_t i = 0; i < l->n; i++) free(l->p[i].s);
    free(l->p);
    memset(l, 0, sizeof *l);
}

/* Takes ownership of s (malloc'ed, room for a NUL). */
static Status list_push(StrList *l, char *s, size_t len) {
    if (!s) return errorf("out of memory decoding");
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        Str *grown = realloc(l->p, cap * sizeof *grown);
        if (!grown) {
            free(s);
            return errorf("out of memory decoding");
        }
        l->p = grown;
        l->cap = cap;
    }
    s[len] = '\0';
    l->p[l->n++] = (Str){s, len};
    return STATUS_OK;
}

static Status list_push_copy(StrList *l, const char *s, size_t len) {
    char *c = malloc(len + 1);
    if (c) memcpy(c, s, len);
    return list_push(l, c, len);
}

/* A growing string for building one output. */
typedef struct {
    char *p;
    size_t len, cap;
} Buf;

static Status buf_add(Buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1) cap *= 2;
        char *grown = realloc(b->p, cap);
        if (!grown) return errorf("out of memory decoding");
        b->p = grown;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return STATUS_OK;
}

static Status buf_into_list(Buf *b, StrList *l) {
    if (!b->p) TRY(buf_add(b, "", 0));
    Status st = list_push(l, b->p, b->len);
    *b = (Buf){0};
    return st;
}

static Status byte_level(const StrList *in, StrList *out) {
    Buf raw = {0};
    Status st = STATUS_OK;
    for (size_t i = 0; i < in->n && st == STATUS_OK; i++) {
        const Str *t = &in->p[i];
        size_t at = 0, start = raw.len;
        int all = 1;
        while (at < t->len && st == STATUS_OK) {
            size_t cl;
            int b = byte_level_byte(utf8_decode_at(t->s + at, &cl));
            if (b < 0) {
                all = 0;
                break;
            }
            char c = (char)b;
            st = buf_add(&raw, &c, 1);
            at += cl;
        }
        /* A token with a character outside the byte table is kept as it is. */
        if (!all && st == STATUS_OK) {
            raw.len = start;
            st = buf_add(&raw, t->s, t->len);
        }
    }
    char *text = NULL;
    size_t len = 0, cap = 0;
    if (st == STATUS_OK) st = utf8_append_lossy(&text, &len, &cap, (const unsigned char *)raw.p, raw.len);
    if (st == STATUS_OK && !text) st = (text = malloc(1)) ? STATUS_OK : errorf("out of memory decoding");
    free(raw.p);
    if (st != STATUS_OK) {
        free(text);
        return st;
    }
    if (len + 1 > cap) {
        char *grown = realloc(text, len + 1);
        if (!grown) {
            free(text);
            return errorf("out of memory decoding");
        }
        text = grown;
    }
    return list_push(out, text, len);
}

static Status metaspace(const Decoder *d, const StrList *in, StrList *out) {
    for (size_t i = 0; i < in->n; i++) {
        const Str *t = &in->p[i];
        Buf b = {0};
        TRY(buf_add(&b, "", 0));
        for (size_t at = 0; at < t->len;) {
            size_t cl = utf8_char_len((unsigned char)t->s[at]);
            if (cl == d->replacement_len && memcmp(t->s + at, d->replacement, cl) == 0) {
                if (!(i == 0 && d->prepend_scheme != PREPEND_NEVER)) TRY(buf_add(&b, " ", 1));
            } else {
                TRY(buf_add(&b, t->s + at, cl));
            }
            at += cl;
        }
        TRY(buf_into_list(&b, out));
    }
    return STATUS_OK;
}

static Status replace(const Decoder *d, const StrList *in, StrList *out, RegexScratch *rs) {
    Spans spans = {0};
    Status st = STATUS_OK;
    for (size_t i = 0; i < in->n && st == STATUS_OK; i++) {
        const Str *t = &in->p[i];
        st = regex_find_all(d->pattern, t->s, t->len, rs, &spans);
        Buf b = {0};
        size_t prev = 0;
        if (st == STATUS_OK) st = buf_add(&b, "", 0);
        for (size_t k = 0; k < spans.n && st == STATUS_OK; k++) {
            st = buf_add(&b, t->s + prev, spans.p[k].start - prev);
            if (st == STATUS_OK) st = buf_add(&b, d->content, d->content_len);
            prev = spans.p[k].end;
        }
        if (st == STATUS_OK) st = buf_add(&b, t->s + prev, t->len - prev);
        if (st == STATUS_OK) st = buf_into_list(&b, out);
        else free(b.p);
    }
    free(spans.p);
    return st;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Pending bytes become one string when they are valid UTF-8, else one U+FFFD per byte. */
static Status flush_bytes(Buf *bytes, StrList *out) {
    if (bytes->len == 0) return STATUS_OK;
    Status st;
    if (utf8_invalid_at((const unsigned char *)bytes->p, bytes->len) == bytes->len) {
        st = list_push_copy(out, bytes->p, bytes->len);
    } else {
        st = STATUS_OK;
        for (size_t i = 0; i < bytes->len && st == STATUS_OK; i++) st = list_push_copy(out, "\xEF\xBF\xBD", 3);
    }
    bytes->len = 0;
    return st;
}

static Status byte_fallback(const StrList *in, StrList *out) {
    Buf bytes = {0};
    Status st = STATUS_OK;
    for (size_t i = 0; i < in->n && st == STATUS_OK; i++) {
        const Str *t = &in->p[i];
        int hi = -1, lo = -1;
        if (t->len == 6 && memcmp(t->s, "<0x", 3) == 0 && t->s[5] == '>') {
            hi = hex_digit(t->s[3]);
            lo = hex_digit(t->s[4]);
        }
        if (hi >= 0 && lo >= 0) {
            char c = (char)(hi * 16 + lo);
            st = buf_add(&bytes, &c, 1);
            continue;
        }
        st = flush_bytes(&bytes, out);
        if (st == STATUS_OK) st = list_push_copy(out, t->s, t->len);
    }
    if (st == STATUS_OK) st = flush_bytes(&bytes, out);
    free(bytes.p);
    return st;
}

static Status fuse(const StrList *in, StrList *out) {
    Buf b = {0};
    Status st = buf_add(&b, "", 0);
    for (size_t i = 0; i < in->n && st == STATUS_OK; i++) st = buf_add(&b, in->p[i].s, in->p[i].len);
    if (st != STATUS_OK) {
        free(b.p);
        return st;
    }
    return buf_into_list(&b, out);
}

static Status strip(const Decoder *d, const StrList *in, StrList *out) {
    for (size_t i = 0; i < in->n; i++) {
        const Str *t = &in->p[i];
        size_t from = 0, to = t->len, cl;
        for (size_t k = 0; k < d->strip_start && from < t->len; k++) {
            if (utf8_decode_at(t->s + from, &cl) != d->strip_char) break;
            from += cl;
        }
        for (size_t k = 0; k < d->strip_stop && to > from; k++) {
            size_t cs = utf8_last_char_start(t->s, to);
            if (utf8_decode_at(t->s + cs, &cl) != d->strip_char) break;
            to = cs;
        }
        TRY(list_push_copy(out, t->s + from, to - from));
    }
    return STATUS_OK;
}

static Status run_decoder(const Decoder *d, StrList *tokens, RegexScratch *rs) {
    StrList out = {0};
    Status st = STATUS_OK;
    switch (d->kind) {
    case DECODER_SEQUENCE:
        for (int i = 0; i < d->n_children && st == STATUS_OK; i++) st = run_decoder(&d->children[i], tokens, rs);
        return st;
    case DECODER_BYTE_LEVEL: st = byte_level(tokens, &out); break;
    case DECODER_METASPACE: st = metaspace(d, tokens, &out); break;
    case DECODER_REPLACE: st = replace(d, tokens, &out, rs); break;
    case DECODER_BYTE_FALLBACK: st = byte_fallback(tokens, &out); break;
    case DECODER_FUSE: st = fuse(tokens, &out); break;
    case DECODER_STRIP: st = strip(d, tokens, &out); break;
    }
    if (st != STATUS_OK) {
        list_free(&out);
        return st;
    }
    list_free(tokens);
    *tokens = out;
    return STATUS_OK;
}

Status decoder_run(const Tokenizer *tok, const int32_t *ids, int64_t n, int skip_special, char **text,
                   size_t *len) {
    *text = NULL;
    *len = 0;
    StrList tokens = {0};
    Status st = STATUS_OK;
    for (int64_t i = 0; i < n && st == STATUS_OK; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= tok->vocab_size) continue;
        const char *s = NULL;
        size_t sl = 0;
        int32_t a = tok->added_of_id[id];
        if (a >= 0) {
            s = tok->added.tokens[a].normalized;
            sl = tok->added.tokens[a].normalized_len;
        } else if (id < tok->bpe.n_ids && tok->bpe.token_of[id]) {
            s = tok->bpe.token_of[id];
            sl = tok->bpe.token_len[id];
        }
        if (!s) continue;
        if (skip_special) {
            /* HF asks whether the token's text is the content of a special token. */
            int32_t k = str_map_get(&tok->added.by_content, s, sl);
            if (k >= 0 && tok->added.tokens[k].special) continue;
        }
        st = list_push_copy(&tokens, s, sl);
    }
    RegexScratch *rs = NULL;
    if (st == STATUS_OK && tok->decoder) st = regex_scratch_new(&rs);
    if (st == STATUS_OK && tok->decoder) st = run_decoder(tok->decoder, &tokens, rs);
    regex_scratch_free(rs);
    Buf out = {0};
    if (st == STATUS_OK) st = buf_add(&out, "", 0);
    for (size_t i = 0; i < tokens.n && st == STATUS_OK; i++) {
        /* Without a decoder HF joins the tokens with spaces. */
        if (i > 0 && !tok->decoder) st = buf_add(&out, " ", 1);
        if (st == STATUS_OK) st = buf_add(&out, tokens.p[i].s, tokens.p[i].len);
    }
    list_free(&tokens);
    if (st != STATUS_OK) {
        free(out.p);
        return st;
    }
    out.p[out.len] = '\0';
    *text = out.p;
    *len = out.len;
    return STATUS_OK;
}
