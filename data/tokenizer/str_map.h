/* Hash maps of the tokenizer: byte strings to ids (vocabulary, added tokens) and id pairs to merges,
 * open addressing with linear probing, sized once at load. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

/* A 64-bit hash of bytes, 8 at a time (the maps hash every word the encoder looks up). */
uint64_t bytes_hash(const void *data, size_t len);

typedef struct {
    uint64_t hash;
    char *key;        /* owned, NUL-terminated; NULL marks an empty slot */
    uint32_t len;
    int32_t value;
} StrMapSlot;

typedef struct {
    StrMapSlot *slots;
    size_t cap, n;    /* cap: a power of two, at least twice the entries */
} StrMap;

/* Room for `expected` entries without growing. */
Status str_map_init(StrMap *m, size_t expected);
void str_map_free(StrMap *m);
/* Inserts or overwrites key -> value (the key is copied). */
Status str_map_put(StrMap *m, const char *key, size_t len, int32_t value);
/* The value of key, or -1. */
int32_t str_map_get(const StrMap *m, const char *key, size_t len);

/* (left id, right id) -> (rank, merged id): the merges of a BPE model. */
typedef struct {
    uint64_t key;     /* left << 32 | right; PAIR_MAP_EMPTY marks an empty slot */
    uint32_t rank;
    int32_t merged;
} PairMapSlot;

typedef struct {
    PairMapSlot *slots;
    size_t cap, n;
} PairMap;

Status pair_map_init(PairMap *m, size_t expected);
void pair_map_free(PairMap *m);
/* Inserts or overwrites: a later merge of the same pair replaces the earlier, as HF's map does. */
void pair_map_put(PairMap *m, int32_t left, int32_t right, uint32_t rank, int32_t merged);
/* The slot of (left, right), or NULL. */
static inline const PairMapSlot *pair_map_get(const PairMap *m, int32_t left, int32_t right) {
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    size_t mask = m->cap - 1, i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 17) & mask;
    for (;;) {
        const PairMapSlot *s = &m->slots[i];
        if (s->key == key) return s;
        if (s->key == UINT64_MAX) return NULL;
        i = (i + 1) & mask;
    }
}
