/* The tokenizer's regular expressions through PCRE2 (Unicode classes, JIT), iterated the way HF
 * tokenizers iterates its Oniguruma matches, so splits agree on empty matches too. */
#pragma once

#include <stddef.h>

#include "core/status.h"

typedef struct Regex Regex;

typedef struct {
    size_t start, end;
} Span;

typedef struct {
    Span *p;
    size_t n, cap;
} Spans;

/* A pattern in Oniguruma/Perl syntax, or with `literal` a plain string to find. */
Status regex_compile(const char *pattern, size_t len, int literal, Regex **out);
void regex_free(Regex *re);

/* Per-thread match state for regex_find_all. */
typedef struct RegexScratch RegexScratch;
Status regex_scratch_new(RegexScratch **out);
void regex_scratch_free(RegexScratch *sc);

/* Replaces *out with the successive matches in s[0..n): leftmost, non-overlapping; an empty match
 * right where the previous match ended is skipped by one character, as Oniguruma's iterator does. */
Status regex_find_all(const Regex *re, const char *s, size_t n, RegexScratch *sc, Spans *out);

/* Whether the pattern matches starting exactly at s[0..n) (an anchored match of any length). */
int regex_matches_at_start(const Regex *re, const char *s, size_t n, RegexScratch *sc);

Status spans_push(Spans *sp, size_t start, size_t end);
