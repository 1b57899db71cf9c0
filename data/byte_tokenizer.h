/* The byte-level tokenizer of the CPU demo: byte b is token b, and 256 ends a document, so any
 * text round-trips exactly and the vocabulary is 257. */
#pragma once

#include <stddef.h>
#include <stdint.h>

enum { BYTE_TOKENIZER_VOCAB = 257, BYTE_TOKENIZER_EOS = 256 };

static inline void byte_tokens_encode(const unsigned char *bytes, size_t n, int32_t *ids) {
    for (size_t i = 0; i < n; i++) ids[i] = bytes[i];
}

/* The bytes of ids into out (room for n bytes), eos written as `eos_byte`, or skipped when
 * eos_byte < 0; returns the bytes written. Ids outside the vocabulary are skipped. */
static inline size_t byte_tokens_decode(const int32_t *ids, size_t n, int eos_byte, unsigned char *out) {
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] >= 0 && ids[i] < 256)
            out[m++] = (unsigned char)ids[i];
        else if (ids[i] == BYTE_TOKENIZER_EOS && eos_byte >= 0)
            out[m++] = (unsigned char)eos_byte;
    }
    return m;
}
