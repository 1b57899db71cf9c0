/* The Unicode the tokenizer needs beyond its regexes: stepping through UTF-8, White_Space,
 * Unicode normalization forms, and turning arbitrary bytes into UTF-8 as Rust's from_utf8_lossy does. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

/* The length of the UTF-8 sequence starting with byte c (1 for a stray byte). */
static inline size_t utf8_char_len(unsigned char c) {
    return c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
}

/* The code point at s (valid UTF-8 of at least one character). */
uint32_t utf8_decode_at(const char *s, size_t *len);
/* Writes the UTF-8 of cp into out (room for 4); returns the bytes written. */
size_t utf8_encode(uint32_t cp, char *out);
/* The start of the last character of s[0..n), n > 0. */
size_t utf8_last_char_start(const char *s, size_t n);

/* Unicode's White_Space property (Rust's char::is_whitespace, regex's \s). */
int unicode_is_white_space(uint32_t cp);

typedef enum { UNICODE_NFC, UNICODE_NFD, UNICODE_NFKC, UNICODE_NFKD } UnicodeForm;

/* s[0..n) (valid UTF-8) in the given normalization form; *out is malloc'ed. */
Status unicode_normalize(const char *s, size_t n, UnicodeForm form, char **out, size_t *out_len);

/* Appends bytes to a growing buffer as UTF-8, each maximal invalid subsequence replaced by U+FFFD
 * (Rust's String::from_utf8_lossy). *buf grows by realloc; *len and *cap track it. */
Status utf8_append_lossy(char **buf, size_t *len, size_t *cap, const unsigned char *bytes, size_t n);
