/* UTF-8 stepping, White_Space, normalization forms through utf8proc, and lossy UTF-8 repair with
 * the same replacement rule as Rust (one U+FFFD per maximal invalid subsequence). */
#include "data/tokenizer/unicode.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

uint32_t utf8_decode_at(const char *s, size_t *len) {
    const unsigned char *p = (const unsigned char *)s;
    size_t n = utf8_char_len(p[0]);
    *len = n;
    switch (n) {
    case 1: return p[0];
    case 2: return (uint32_t)(p[0] & 0x1F) << 6 | (p[1] & 0x3F);
    case 3: return (uint32_t)(p[0] & 0x0F) << 12 | (uint32_t)(p[1] & 0x3F) << 6 | (p[2] & 0x3F);
    default:
        return (uint32_t)(p[0] & 0x07) << 18 | (uint32_t)(p[1] & 0x3F) << 12 | (uint32_t)(p[2] & 0x3F) << 6 |
               (p[3] & 0x3F);
    }
}

size_t utf8_encode(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

size_t utf8_last_char_start(const char *s, size_t n) {
    size_t i = n - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
    return i;
}

int unicode_is_white_space(uint32_t cp) {
    if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
    switch (cp) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
        return 1;
    default:
        return cp >= 0x2000 && cp <= 0x200A;
    }
}

Status unicode_normalize(const char *s, size_t n, UnicodeForm form, char **out, size_t *out_len) {
    int options = UTF8PROC_STABLE;
    switch (form) {
    case UNICODE_NFC: options |= UTF8PROC_COMPOSE; break;
    case UNICODE_NFD: options |= UTF8PROC_DECOMPOSE; break;
    case UNICODE_NFKC: options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    case UNICODE_NFKD: options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
    }
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t got = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst,
                                        (utf8proc_option_t)options);
    if (got < 0) return errorf("Unicode normalization failed: %s", utf8proc_errmsg(got));
    *out = (char *)dst;
    *out_len = (size_t)got;
    return STATUS_OK;
}

static Status reserve(char **buf, size_t *len, size_t *cap, size_t more) {
    if (*len + more <= *cap) return STATUS_OK;
    size_t want = *cap ? *cap : 64;
    while (want < *len + more) want *= 2;
    char *grown = realloc(*buf, want);
    if (!grown) return errorf("out of memory decoding %zu bytes", *len + more);
    *buf = grown;
    *cap = want;
    return STATUS_OK;
}

/* Bytes of the valid sequence starting at p[0..n), or 0 with *bad set to the length of the
 * maximal prefix of a valid sequence (at least 1) that has to be replaced. */
static size_t valid_sequence(const unsigned char *p, size_t n, size_t *bad) {
    unsigned char c = p[0];
    size_t want;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) want = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        want = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        want = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        *bad = 1;
        return 0;
    }
    size_t k = 1;
    if (k < n && p[k] >= lo && p[k] <= hi) {
        k++;
        while (k < want && k < n && (p[k] & 0xC0) == 0x80) k++;
    }
    if (k == want) return want;
    *bad = k;
    return 0;
}

Status utf8_append_lossy(char **buf, size_t *len, size_t *cap, const unsigned char *bytes, size_t n) {
    TRY(reserve(buf, len, cap, n + 1));
    size_t i = 0;
    while (i < n) {
        size_t bad = 0, ok = valid_sequence(bytes + i, n - i, &bad);
        if (ok) {
            memcpy(*buf + *len, bytes + i, ok);
            *len += ok;
            i += ok;
        } else {
            TRY(reserve(buf, len, cap, (n - i) + 3));
            memcpy(*buf + *len, "\xEF\xBF\xBD", 3);
            *len += 3;
            i += bad;
        }
    }
    return STATUS_OK;
}
