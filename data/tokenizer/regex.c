/* PCRE2 (8-bit, UTF + UCP, JIT where available) behind the tokenizer's Split, Replace and
 * ByteLevel patterns. Oniguruma and PCRE2 share Perl's leftmost-first semantics for these patterns;
 * what differs is the iteration after an empty match and the Unicode meaning of \s and \w, both
 * made Oniguruma's here. */
#include "data/tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer/unicode.h"

struct Regex {
    pcre2_code *code;
    int jit;
};

struct RegexScratch {
    pcre2_match_data *md;
};

/* Oniguruma's \s is Unicode's White_Space, where PCRE2's also takes U+180E; its \w is Alphabetic,
 * marks, decimal digits, connector punctuation and joiners, where PCRE2 10.42's is letters, numbers
 * and '_'. The pattern is rewritten with the properties themselves (\W inside a class is left). */
static const char WORD_PROPERTIES[] = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}";

static char *with_oniguruma_classes(const char *p, size_t n, size_t *out_len) {
    size_t cap = n * 40 + 128, k = 0; /* each \w grows 36-fold */
    char *o = malloc(cap);
    if (!o) return NULL;
    int in_class = 0, quoted = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (quoted) {
            if (c == '\\' && i + 1 < n && p[i + 1] == 'E') quoted = 0;
        } else if (c == '\\' && i + 1 < n) {
            char e = p[i + 1];
            const char *rep = NULL;
            char buf[128];
            if (e == 's') rep = "\\p{White_Space}";
            else if (e == 'S') rep = "\\P{White_Space}";
            else if (e == 'w') {
                snprintf(buf, sizeof buf, in_class ? "%s" : "[%s]", WORD_PROPERTIES);
                rep = buf;
            } else if (e == 'W' && !in_class) {
                snprintf(buf, sizeof buf, "[^%s]", WORD_PROPERTIES);
                rep = buf;
            } else if (e == 'Q') {
                quoted = 1;
            }
            if (rep) {
                size_t rl = strlen(rep);
                memcpy(o + k, rep, rl);
                k += rl;
                i++;
                continue;
            }
            o[k++] = c;
            c = p[++i];
        } else if (c == '[' && !in_class) {
            in_class = 1;
            o[k++] = c;
            /* A ']' right after '[' or '[^' is a literal member. */
            if (i + 1 < n && p[i + 1] == '^') o[k++] = p[++i];
            if (i + 1 < n && p[i + 1] == ']') o[k++] = p[++i];
            continue;
        } else if (c == '[' && in_class) {
            in_class++;
        } else if (c == ']' && in_class) {
            in_class--;
        }
        o[k++] = c;
    }
    *out_len = k;
    return o;
}

Status regex_compile(const char *pattern, size_t len, int literal, Regex **out) {
    *out = NULL;
    int err = 0;
    PCRE2_SIZE at = 0;
    uint32_t options = PCRE2_UTF | PCRE2_NO_UTF_CHECK | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    size_t rewritten_len = len;
    char *rewritten = literal ? NULL : with_oniguruma_classes(pattern, len, &rewritten_len);
    if (!literal && !rewritten) return errorf("out of memory compiling a regex");
    pcre2_code *code =
        pcre2_compile((PCRE2_SPTR)(literal ? pattern : rewritten), rewritten_len, options, &err, &at, NULL);
    free(rewritten);
    if (!code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return errorf("regex \"%.*s\": %s at offset %zu", (int)(len > 200 ? 200 : len), pattern, (const char *)msg,
                      (size_t)at);
    }
    Regex *re = malloc(sizeof *re);
    if (!re) {
        pcre2_code_free(code);
        return errorf("out of memory compiling a regex");
    }
    re->code = code;
    re->jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
    *out = re;
    return STATUS_OK;
}

void regex_free(Regex *re) {
    if (!re) return;
    pcre2_code_free(re->code);
    free(re);
}

Status regex_scratch_new(RegexScratch **out) {
    RegexScratch *sc = malloc(sizeof *sc);
    if (sc) sc->md = pcre2_match_data_create(1, NULL);
    if (!sc || !sc->md) {
        free(sc);
        return errorf("out of memory for regex match data");
    }
    *out = sc;
    return STATUS_OK;
}

void regex_scratch_free(RegexScratch *sc) {
    if (!sc) return;
    pcre2_match_data_free(sc->md);
    free(sc);
}

Status spans_push(Spans *sp, size_t start, size_t end) {
    if (sp->n == sp->cap) {
        size_t cap = sp->cap ? sp->cap * 2 : 64;
        Span *grown = realloc(sp->p, cap * sizeof *grown);
        if (!grown) return errorf("out of memory splitting text");
        sp->p = grown;
        sp->cap = cap;
    }
    sp->p[sp->n++] = (Span){start, end};
    return STATUS_OK;
}

static int match_from(const Regex *re, const char *s, size_t n, size_t from, uint32_t options, RegexScratch *sc) {
    /* The text was checked as UTF-8 once, on entry to the encoder. */
    options |= PCRE2_NO_UTF_CHECK;
    if (re->jit) return pcre2_jit_match(re->code, (PCRE2_SPTR)s, n, from, options, sc->md, NULL);
    return pcre2_match(re->code, (PCRE2_SPTR)s, n, from, options, sc->md, NULL);
}

Status regex_find_all(const Regex *re, const char *s, size_t n, RegexScratch *sc, Spans *out) {
    out->n = 0;
    size_t from = 0;
    int have_last = 0;
    size_t last_end = 0;
    while (from <= n) {
        int rc = match_from(re, s, n, from, 0, sc);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return errorf("regex match failed: %s", (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(sc->md);
        size_t ms = ov[0], me = ov[1];
        if (ms == me && have_last && last_end == me) {
            from += from < n ? utf8_char_len((unsigned char)s[from]) : 1;
            continue;
        }
        TRY(spans_push(out, ms, me));
        from = me;
        last_end = me;
        have_last = 1;
    }
    return STATUS_OK;
}

int regex_matches_at_start(const Regex *re, const char *s, size_t n, RegexScratch *sc) {
    /* JIT code does not take PCRE2_ANCHORED at match time; pcre2_match falls back by itself. */
    return pcre2_match(re->code, (PCRE2_SPTR)s, n, 0, PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, sc->md, NULL) >= 0;
}
