/* Open-addressing hash maps for the tokenizer's vocabulary and merges. Both are filled once at
 * load and then only read, so lookups from several encoding threads need no lock. */
#include "data/tokenizer/str_map.h"

#include <stdlib.h>
#include <string.h>

static uint64_t mix64(uint64_t x) {
    x ^= x >> 32;
    x *= 0xD6E8FEB86659FD93ull;
    x ^= x >> 32;
    x *= 0xD6E8FEB86659FD93ull;
    x ^= x >> 32;
    return x;
}

uint64_t bytes_hash(const void *data, size_t len) {
    const unsigned char *p = data;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)len;
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = mix64(h ^ w) ;
        p += 8;
        len -= 8;
    }
    uint64_t w = 0;
    for (size_t i = 0; i < len; i++) w |= (uint64_t)p[i] << (8 * i);
    return mix64(h ^ w ^ 0x2545F4914F6CDD1Dull);
}

static size_t table_size(size_t expected) {
    size_t cap = 16;
    while (cap < 2 * expected + 2) cap *= 2;
    return cap;
}

Status str_map_init(StrMap *m, size_t expected) {
    m->cap = table_size(expected);
    m->n = 0;
    m->slots = calloc(m->cap, sizeof *m->slots);
    return m->slots ? STATUS_OK : errorf("out of memory for a %zu-entry token map", expected);
}

void str_map_free(StrMap *m) {
    if (m->slots)
        for (size_t i = 0; i < m->cap; i++) free(m->slots[i].key);
    free(m->slots);
    m->slots = NULL;
    m->cap = m->n = 0;
}

static StrMapSlot *find_slot(const StrMap *m, const char *key, size_t len, uint64_t h) {
    size_t mask = m->cap - 1, i = (size_t)h & mask;
    for (;;) {
        StrMapSlot *s = &m->slots[i];
        if (!s->key || (s->hash == h && s->len == len && memcmp(s->key, key, len) == 0)) return s;
        i = (i + 1) & mask;
    }
}

static Status grow(StrMap *m) {
    StrMap bigger = {.cap = m->cap * 2};
    bigger.slots = calloc(bigger.cap, sizeof *bigger.slots);
    if (!bigger.slots) return errorf("out of memory growing a token map");
    for (size_t i = 0; i < m->cap; i++) {
        StrMapSlot *s = &m->slots[i];
        if (s->key) *find_slot(&bigger, s->key, s->len, s->hash) = *s;
    }
    free(m->slots);
    m->slots = bigger.slots;
    m->cap = bigger.cap;
    return STATUS_OK;
}

Status str_map_put(StrMap *m, const char *key, size_t len, int32_t value) {
    if (len > UINT32_MAX) return errorf("a token of %zu bytes", len);
    if (2 * (m->n + 1) > m->cap) TRY(grow(m));
    uint64_t h = bytes_hash(key, len);
    StrMapSlot *s = find_slot(m, key, len, h);
    if (!s->key) {
        s->key = malloc(len + 1);
        if (!s->key) return errorf("out of memory for a token of %zu bytes", len);
        memcpy(s->key, key, len);
        s->key[len] = '\0';
        s->len = (uint32_t)len;
        s->hash = h;
        m->n++;
    }
    s->value = value;
    return STATUS_OK;
}

int32_t str_map_get(const StrMap *m, const char *key, size_t len) {
    if (!m->slots) return -1;
    const StrMapSlot *s = find_slot(m, key, len, bytes_hash(key, len));
    return s->key ? s->value : -1;
}

Status pair_map_init(PairMap *m, size_t expected) {
    m->cap = table_size(expected);
    m->n = 0;
    m->slots = malloc(m->cap * sizeof *m->slots);
    if (!m->slots) return errorf("out of memory for %zu merges", expected);
    for (size_t i = 0; i < m->cap; i++) m->slots[i].key = UINT64_MAX;
    return STATUS_OK;
}

void pair_map_free(PairMap *m) {
    free(m->slots);
    m->slots = NULL;
    m->cap = m->n = 0;
}

void pair_map_put(PairMap *m, int32_t left, int32_t right, uint32_t rank, int32_t merged) {
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    size_t mask = m->cap - 1, i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 17) & mask;
    while (m->slots[i].key != UINT64_MAX && m->slots[i].key != key) i = (i + 1) & mask;
    if (m->slots[i].key == UINT64_MAX) m->n++;
    m->slots[i] = (PairMapSlot){.key = key, .rank = rank, .merged = merged};
}
