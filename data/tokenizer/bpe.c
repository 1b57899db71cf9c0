/* The BPE model of tokenizer.json: the vocabulary and merges in hash maps, HF's merge loop (a heap
 * of candidate pairs by rank, then position) and a cache of encoded words. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer/tokenizer_parts.h"

/* Words this long or longer are not cached (HF's MAX_LENGTH). */
enum { CACHE_MAX_WORD = 256, CACHE_SLOTS = 1 << 17, CACHE_MAX_ENTRIES = 1 << 16 };

typedef struct {
    uint64_t hash;
    uint32_t key_off, ids_off;
    uint16_t key_len, n_ids;      /* key_len 0: an empty slot (words are never empty) */
} CacheSlot;

struct WordCache {
    pthread_mutex_t lock;
    CacheSlot *slots;
    size_t n;
    char *keys;
    size_t keys_len, keys_cap;
    int32_t *ids;
    size_t ids_len, ids_cap;
};

/* ---- GPT-2's byte <-> character table ---- */

static int byte_is_printable(unsigned b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE; }

uint32_t byte_level_char(unsigned char b) {
    if (byte_is_printable(b)) return b;
    /* The others, in byte order, take U+0100 onwards. */
    uint32_t k = 0;
    for (unsigned i = 0; i < b; i++) k += !byte_is_printable(i);
    return 256 + k;
}

int byte_level_byte(uint32_t cp) {
    if (cp < 256) return byte_is_printable(cp) ? (int)cp : -1;
    if (cp >= 256 + 68) return -1; /* 68 bytes are not printable */
    uint32_t k = cp - 256;
    for (unsigned b = 0; b < 256; b++)
        if (!byte_is_printable(b) && k-- == 0) return (int)b;
    return -1;
}

/* ---- loading ---- */

/* Keys that change what BPE produces and that this implementation does not do. */
static Status refuse_unsupported(const cJSON *model) {
    static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, affixes[i]);
        if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && v->valuestring[0] == '\0'))
            return errorf("model.%s is not supported (BPE with subword affixes, as in WordPiece-style models)",
                          affixes[i]);
    }
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (dropout && !cJSON_IsNull(dropout) && !(cJSON_IsNumber(dropout) && dropout->valuedouble == 0))
        return errorf("model.dropout is set: BPE dropout (random merges) is not supported");
    return STATUS_OK;
}

static Status load_vocab(const cJSON *vocab, Bpe *m) {
    if (!cJSON_IsObject(vocab)) return errorf("model.vocab: expected an object of token -> id, got %s", json_kind(vocab));
    int count = cJSON_GetArraySize(vocab);
    TRY(str_map_init(&m->vocab, (size_t)count));
    int64_t max_id = -1;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        double v = cJSON_IsNumber(e) ? e->valuedouble : -1;
        if (!cJSON_IsNumber(e) || v != (double)(int64_t)v || v < 0 || v > INT32_MAX - 1)
            return errorf("model.vocab: token \"%.80s\" has id %s, not an integer in [0, 2^31-1)", e->string,
                          cJSON_IsNumber(e) ? "out of range" : json_kind(e));
        if ((int64_t)v > max_id) max_id = (int64_t)v;
    }
    /* Ids index tables: a vocabulary far sparser than any real one would only waste memory. */
    if (max_id >= 2 * (int64_t)count + 65536)
        return errorf("model.vocab: the largest id is %lld for %d tokens; ids this sparse are not supported",
                      (long long)max_id, count);
    m->n_ids = max_id + 1;
    m->token_of = calloc((size_t)(m->n_ids > 0 ? m->n_ids : 1), sizeof *m->token_of);
    m->token_len = calloc((size_t)(m->n_ids > 0 ? m->n_ids : 1), sizeof *m->token_len);
    if (!m->token_of || !m->token_len) return errorf("out of memory for a vocabulary of %d tokens", count);
    cJSON_ArrayForEach(e, vocab) {
        int32_t id = (int32_t)e->valuedouble;
        size_t len = strlen(e->string);
        if (m->token_of[id])
            return errorf("model.vocab: tokens \"%.80s\" and \"%.80s\" share id %d", m->token_of[id], e->string, id);
        if (str_map_get(&m->vocab, e->string, len) >= 0)
            return errorf("model.vocab: token \"%.80s\" appears twice", e->string);
        TRY(str_map_put(&m->vocab, e->string, len, id));
        m->token_of[id] = strdup(e->string);
        if (!m->token_of[id]) return errorf("out of memory for the vocabulary");
        m->token_len[id] = (uint32_t)len;
    }
    return STATUS_OK;
}

/* One merge as [left, right] or the legacy "left right"; both parts are copied out. */
static Status merge_parts(const cJSON *e, int index, char **left, char **right) {
    *left = *right = NULL;
    if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(cJSON_GetArrayItem(e, 0)) &&
        cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
        *left = strdup(cJSON_GetArrayItem(e, 0)->valuestring);
        *right = strdup(cJSON_GetArrayItem(e, 1)->valuestring);
    } else if (cJSON_IsString(e)) {
        const char *s = e->valuestring, *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' '))
            return errorf("model.merges[%d]: \"%.80s\" is not two tokens separated by one space", index, s);
        *left = strndup(s, (size_t)(sp - s));
        *right = strdup(sp + 1);
    } else {
        return errorf("model.merges[%d]: expected [left, right] or \"left right\", got %s", index, json_kind(e));
    }
    if (!*left || !*right) {
        free(*left);
        free(*right);
        return errorf("out of memory reading merges");
    }
    return STATUS_OK;
}

static Status load_merges(const cJSON *merges, Bpe *m) {
    if (!cJSON_IsArray(merges)) return errorf("model.merges: expected an array, got %s", json_kind(merges));
    TRY(pair_map_init(&m->merges, (size_t)cJSON_GetArraySize(merges)));
    const cJSON *e;
    int index = 0;
    uint32_t rank = 0;
    char *buf = NULL;
    size_t buf_cap = 0;
    cJSON_ArrayForEach(e, merges) {
        char *left, *right;
        if (merge_parts(e, index, &left, &right) != STATUS_OK) {
            free(buf);
            return STATUS_ERROR;
        }
        Status st = STATUS_OK;
        if (cJSON_IsString(e) && strncmp(e->valuestring, "#version", 8) == 0) goto next;
        int32_t a = str_map_get(&m->vocab, left, strlen(left)), b = str_map_get(&m->vocab, right, strlen(right));
        size_t la = strlen(left), lb = strlen(right);
        int32_t ab = -1;
        if (la + lb > buf_cap) {
            char *grown = realloc(buf, la + lb);
            if (!grown) {
                st = errorf("out of memory reading merges");
                goto next;
            }
            buf = grown;
            buf_cap = la + lb;
        }
        memcpy(buf, left, la);
        memcpy(buf + la, right, lb);
        ab = str_map_get(&m->vocab, buf, la + lb);
        if (a < 0) st = errorf("model.merges[%d]: \"%.80s\" is not in the vocabulary", index, left);
        else if (b < 0) st = errorf("model.merges[%d]: \"%.80s\" is not in the vocabulary", index, right);
        else if (ab < 0)
            st = errorf("model.merges[%d]: the merge \"%.80s%.80s\" is not in the vocabulary", index, left, right);
        else pair_map_put(&m->merges, a, b, rank++, ab);
    next:
        free(left);
        free(right);
        if (st != STATUS_OK) {
            free(buf);
            return st;
        }
        index++;
    }
    free(buf);
    return STATUS_OK;
}

static Status cache_new(WordCache **out) {
    WordCache *c = calloc(1, sizeof *c);
    if (!c) return errorf("out of memory for the word cache");
    c->slots = calloc(CACHE_SLOTS, sizeof *c->slots);
    if (!c->slots || pthread_mutex_init(&c->lock, NULL) != 0) {
        free(c->slots);
        free(c);
        return errorf("out of memory for the word cache");
    }
    *out = c;
    return STATUS_OK;
}

static void cache_free(WordCache *c) {
    if (!c) return;
    pthread_mutex_destroy(&c->lock);
    free(c->slots);
    free(c->keys);
    free(c->ids);
    free(c);
}

Status bpe_load(const cJSON *model, int byte_level, Bpe *m) {
    memset(m, 0, sizeof *m);
    m->unk = -1;
    if (!cJSON_IsObject(model)) return errorf("model: expected an object, got %s", json_kind(model));
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (!cJSON_IsString(type)) return errorf("model.type: expected a string, got %s", json_kind(type));
    if (strcmp(type->valuestring, "BPE") != 0)
        return errorf("model.type \"%s\" is not supported (only BPE: byte-level or with byte fallback)",
                      type->valuestring);
    TRY(refuse_unsupported(model));
    TRY(json_bool(model, "model", "fuse_unk", 0, &m->fuse_unk));
    TRY(json_bool(model, "model", "byte_fallback", 0, &m->byte_fallback));
    TRY(json_bool(model, "model", "ignore_merges", 0, &m->ignore_merges));
    TRY(load_vocab(cJSON_GetObjectItemCaseSensitive(model, "vocab"), m));
    TRY(load_merges(cJSON_GetObjectItemCaseSensitive(model, "merges"), m));
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    if (unk && !cJSON_IsNull(unk)) {
        if (!cJSON_IsString(unk)) return errorf("model.unk_token: expected a string, got %s", json_kind(unk));
        m->unk = str_map_get(&m->vocab, unk->valuestring, strlen(unk->valuestring));
        if (m->unk < 0) return errorf("model.unk_token \"%.80s\" is not in the vocabulary", unk->valuestring);
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        m->byte_token[b] = str_map_get(&m->vocab, name, 6);
    }
    m->byte_level = byte_level;
    for (int b = 0; b < 256; b++) {
        char ch[4];
        size_t n = utf8_encode(byte_level_char((unsigned char)b), ch);
        m->byte_char_id[b] = str_map_get(&m->vocab, ch, n);
    }
    for (int c = 0; c < 128; c++) {
        char ch = (char)c;
        m->ascii_id[c] = str_map_get(&m->vocab, &ch, 1);
    }
    if (byte_level && m->ignore_merges) {
        TRY(str_map_init(&m->raw_vocab, m->vocab.n));
        char *raw = malloc(1024);
        if (!raw) return errorf("out of memory");
        for (size_t i = 0; i < m->vocab.cap; i++) {
            const StrMapSlot *s = &m->vocab.slots[i];
            if (!s->key) continue;
            size_t k = 0, at = 0;
            int ok = 1;
            while (at < s->len && k < 1024) {
                size_t cl;
                int b = byte_level_byte(utf8_decode_at(s->key + at, &cl));
                if (b < 0) {
                    ok = 0;
                    break;
                }
                raw[k++] = (char)b;
                at += cl;
            }
            if (ok && at == s->len && str_map_put(&m->raw_vocab, raw, k, s->value) != STATUS_OK) {
                free(raw);
                return STATUS_ERROR;
            }
        }
        free(raw);
    }
    return cache_new(&m->cache);
}

void bpe_free(Bpe *m) {
    str_map_free(&m->vocab);
    str_map_free(&m->raw_vocab);
    pair_map_free(&m->merges);
    if (m->token_of)
        for (int64_t i = 0; i < m->n_ids; i++) free(m->token_of[i]);
    free(m->token_of);
    free(m->token_len);
    cache_free(m->cache);
    memset(m, 0, sizeof *m);
}

/* ---- the word cache ---- */

void bpe_acquire_cache(const Bpe *m, EncodeScratch *sc) {
    sc->cache_held = m->cache && pthread_mutex_trylock(&m->cache->lock) == 0;
}

void bpe_release_cache(const Bpe *m, EncodeScratch *sc) {
    if (sc->cache_held) pthread_mutex_unlock(&m->cache->lock);
    sc->cache_held = 0;
}

static CacheSlot *cache_find(WordCache *c, const char *s, size_t n, uint64_t h) {
    size_t mask = CACHE_SLOTS - 1, i = (size_t)h & mask;
    for (;;) {
        CacheSlot *slot = &c->slots[i];
        if (slot->key_len == 0) return slot;
        if (slot->hash == h && slot->key_len == n && memcmp(c->keys + slot->key_off, s, n) == 0) return slot;
        i = (i + 1) & mask;
    }
}

static int grow_buf(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 1;
    size_t want = *cap ? *cap : 4096;
    while (want < need) want *= 2;
    void *grown = realloc(*p, want * elem);
    if (!grown) return 0;
    *p = grown;
    *cap = want;
    return 1;
}

/* A full cache starts over: which words it holds never changes a result. Out of memory only
 * means the word is not cached. */
static void cache_insert(WordCache *c, const char *s, size_t n, uint64_t h, const int32_t *ids, size_t n_ids) {
    if (n_ids > UINT16_MAX) return;
    if (c->n >= CACHE_MAX_ENTRIES) {
        memset(c->slots, 0, CACHE_SLOTS * sizeof *c->slots);
        c->n = c->keys_len = c->ids_len = 0;
    }
    if (!grow_buf((void **)&c->keys, &c->keys_cap, c->keys_len + n, 1) ||
        !grow_buf((void **)&c->ids, &c->ids_cap, c->ids_len + n_ids, sizeof *c->ids))
        return;
    CacheSlot *slot = cache_find(c, s, n, h);
    memcpy(c->keys + c->keys_len, s, n);
    memcpy(c->ids + c->ids_len, ids, n_ids * sizeof *ids);
    *slot = (CacheSlot){.hash = h, .key_off = (uint32_t)c->keys_len, .ids_off = (uint32_t)c->ids_len,
                        .key_len = (uint16_t)n, .n_ids = (uint16_t)n_ids};
    c->keys_len += n;
    c->ids_len += n_ids;
    c->n++;
}

/* ---- merging ---- */

Status ids_push(Ids *ids, int32_t id) {
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 256;
        int32_t *grown = realloc(ids->p, cap * sizeof *grown);
        if (!grown) return errorf("out of memory for token ids");
        ids->p = grown;
        ids->cap = cap;
    }
    ids->p[ids->n++] = id;
    return STATUS_OK;
}

static void heap_push(BpeCandidate *h, size_t *n, BpeCandidate c) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (h[parent].key <= c.key) break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = c;
}

static BpeCandidate heap_pop(BpeCandidate *h, size_t *n) {
    BpeCandidate top = h[0], last = h[--*n];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m) break;
        if (c + 1 < m && h[c + 1].key < h[c].key) c++;
        if (last.key <= h[c].key) break;
        h[i] = h[c];
        i = c;
    }
    if (m > 0) h[i] = last;
    return top;
}

static void push_pair(const Bpe *m, EncodeScratch *sc, size_t *heap_n, int32_t pos) {
    const BpeSymbol *sym = sc->symbols;
    const PairMapSlot *pm = pair_map_get(&m->merges, sym[pos].id, sym[sym[pos].next].id);
    if (pm) heap_push(sc->heap, heap_n, (BpeCandidate){(uint64_t)pm->rank << 32 | (uint32_t)pos, pm->merged});
}

/* HF's Word::merge_all without dropout: repeatedly merge the lowest-ranked pair, leftmost first. */
static void merge_symbols(const Bpe *m, EncodeScratch *sc, size_t n) {
    BpeSymbol *sym = sc->symbols;
    size_t heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++) push_pair(m, sc, &heap_n, (int32_t)i);
    while (heap_n > 0) {
        BpeCandidate top = heap_pop(sc->heap, &heap_n);
        int32_t pos = (int32_t)(uint32_t)top.key;
        if (sym[pos].len == 0 || sym[pos].next < 0) continue;
        int32_t right = sym[pos].next;
        /* A candidate whose pair has changed since it was queued is stale. */
        const PairMapSlot *pm = pair_map_get(&m->merges, sym[pos].id, sym[right].id);
        if (!pm || pm->merged != top.merged) continue;
        sym[pos].id = top.merged;
        sym[pos].len += sym[right].len;
        sym[pos].next = sym[right].next;
        sym[right].len = 0;
        if (sym[pos].next >= 0) sym[sym[pos].next].prev = pos;
        if (sym[pos].prev >= 0) push_pair(m, sc, &heap_n, sym[pos].prev);
        if (sym[pos].next >= 0) push_pair(m, sc, &heap_n, pos);
    }
}

static Status reserve_symbols(EncodeScratch *sc, size_t n) {
    if (n > INT32_MAX / 4) return errorf("a word of %zu symbols is too long to encode", n);
    if (n > sc->symbols_cap) {
        size_t cap = n < 256 ? 256 : n;
        BpeSymbol *s = realloc(sc->symbols, cap * sizeof *s);
        if (!s) return errorf("out of memory for a word of %zu symbols", n);
        sc->symbols = s;
        sc->symbols_cap = cap;
    }
    return STATUS_OK;
}

/* The queue holds at most the first pairs and two per merge: under 3 entries per symbol. */
static Status reserve_heap(EncodeScratch *sc, size_t n_symbols) {
    size_t need = 3 * n_symbols;
    if (need > sc->heap_cap) {
        size_t cap = need < 768 ? 768 : need;
        BpeCandidate *h = realloc(sc->heap, cap * sizeof *h);
        if (!h) return errorf("out of memory for a word of %zu symbols", n_symbols);
        sc->heap = h;
        sc->heap_cap = cap;
    }
    return STATUS_OK;
}

static void add_symbol(EncodeScratch *sc, size_t *n, int32_t id, uint32_t len) {
    int32_t i = (int32_t)*n;
    sc->symbols[i] = (BpeSymbol){.id = id, .prev = i - 1, .next = -1, .len = len};
    if (i > 0) sc->symbols[i - 1].next = i;
    (*n)++;
}

/* The id of one character of the word (its UTF-8 in ch[0..cl)), or -1. */
static int32_t char_id(const Bpe *m, const char *ch, size_t cl) {
    if (cl == 1 && (unsigned char)ch[0] < 128) return m->ascii_id[(unsigned char)ch[0]];
    return str_map_get(&m->vocab, ch, cl);
}

/* HF's BPE::merge_word: one symbol per character, unknown characters through byte fallback or
 * the unk token (fused when fuse_unk) or dropped, then the merges. */
static Status word_symbols(const Bpe *m, const char *s, size_t n, EncodeScratch *sc, size_t *n_sym) {
    /* A symbol per byte at most, except byte fallback of a byte-level character (2 bytes of UTF-8). */
    TRY(reserve_symbols(sc, (m->byte_level && m->byte_fallback ? 2 * n : n) + 1));
    size_t k = 0;
    int32_t unk_id = -1;
    uint32_t unk_len = 0;
    size_t at = 0;
    while (at < n) {
        char mapped[4];
        const char *ch;
        size_t cl, byte_len;
        int32_t id;
        if (m->byte_level) {
            unsigned char b = (unsigned char)s[at];
            id = m->byte_char_id[b];
            byte_len = 1;
            ch = mapped;
            cl = id >= 0 ? 0 : utf8_encode(byte_level_char(b), mapped);
        } else {
            ch = s + at;
            cl = byte_len = utf8_char_len((unsigned char)s[at]);
            id = char_id(m, ch, cl);
        }
        at += byte_len;
        if (id >= 0) {
            if (unk_id >= 0) add_symbol(sc, &k, unk_id, unk_len);
            unk_id = -1;
            add_symbol(sc, &k, id, (uint32_t)byte_len);
            continue;
        }
        if (m->byte_fallback) {
            int all = 1;
            for (size_t i = 0; i < cl; i++) all &= m->byte_token[(unsigned char)ch[i]] >= 0;
            if (all) {
                for (size_t i = 0; i < cl; i++) add_symbol(sc, &k, m->byte_token[(unsigned char)ch[i]], 1);
                continue;
            }
        }
        if (m->unk >= 0) {
            if (unk_id >= 0 && m->fuse_unk) {
                unk_len += (uint32_t)byte_len;
            } else {
                if (unk_id >= 0) add_symbol(sc, &k, unk_id, unk_len);
                unk_id = m->unk;
                unk_len = (uint32_t)byte_len;
            }
        }
    }
    if (unk_id >= 0) add_symbol(sc, &k, unk_id, unk_len);
    *n_sym = k;
    return STATUS_OK;
}

Status bpe_encode_word(const Bpe *m, const char *s, size_t n, EncodeScratch *sc, Ids *out) {
    if (n == 0) return STATUS_OK;
    if (m->ignore_merges) {
        int32_t id = str_map_get(m->byte_level ? &m->raw_vocab : &m->vocab, s, n);
        if (id >= 0) return ids_push(out, id);
    }
    WordCache *c = m->cache;
    uint64_t h = 0;
    if (sc->cache_held && n < CACHE_MAX_WORD) {
        h = bytes_hash(s, n);
        CacheSlot *slot = cache_find(c, s, n, h);
        if (slot->key_len) {
            for (size_t i = 0; i < slot->n_ids; i++) TRY(ids_push(out, c->ids[slot->ids_off + i]));
            return STATUS_OK;
        }
    }
    size_t k;
    TRY(word_symbols(m, s, n, sc, &k));
    if (k > 1) {
        TRY(reserve_heap(sc, k));
        merge_symbols(m, sc, k);
    }
    size_t first = out->n;
    for (int32_t i = k ? 0 : -1; i >= 0; i = sc->symbols[i].next)
        if (sc->symbols[i].len) TRY(ids_push(out, sc->symbols[i].id));
    if (sc->cache_held && n < CACHE_MAX_WORD) cache_insert(c, s, n, h, out->p + first, out->n - first);
    return STATUS_OK;
}
