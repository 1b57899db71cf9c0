/* PCRE2 (8-bit, UTF + UCP, JIT where available) behind the tokenizer's Split, Replace and
 * ByteLevel patterns. Oniguruma and PCRE2 share Perl's leftmost-first semantics for these patterns;
 * what differs is the iteration after an empty match, which follows Oniguruma here. */
#include "data/tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdlib.h>

#include "data/tokenizer/unicode.h"

struct Regex {
    pcre2_code *code;
    int jit;
};

struct RegexScratch {
    pcre2_match_data *md;
};

Status regex_compile(const char *pattern, size_t len, int literal, Regex **out) {
    *out = NULL;
    int err = 0;
    PCRE2_SIZE at = 0;
    uint32_t options = PCRE2_UTF | PCRE2_NO_UTF_CHECK | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    pcre2_code *code = pcre2_compile((PCRE2_SPTR)pattern, len, options, &err, &at, NULL);
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
