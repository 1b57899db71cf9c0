/* Added and special tokens: read from "added_tokens" with HF's id assignment, and found in text
 * before pre-tokenization by leftmost-longest matching over a byte trie, with the single_word,
 * lstrip and rstrip rules of HF's AddedVocabulary. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer/tokenizer_parts.h"

/* Rust regex's \w (regex_compile gives \w that meaning: Alphabetic, marks, decimal digits,
 * connector punctuation, joiners). */
static const char WORD_CHAR[] = "\\w";

static Status trie_add(AddedTrie *t, const char *s, size_t len, int32_t token, const AddedVocab *av) {
    int32_t *link = &t->root[(unsigned char)s[0]];
    int32_t node = -1;
    for (size_t i = 0; i < len; i++) {
        unsigned char b = (unsigned char)s[i];
        node = *link;
        while (node >= 0 && t->nodes[node].byte != b) node = t->nodes[node].sibling;
        if (node < 0) {
            if (t->n == t->cap) {
                size_t cap = t->cap ? t->cap * 2 : 256;
                TrieNode *grown = realloc(t->nodes, cap * sizeof *grown);
                if (!grown) return errorf("out of memory for added tokens");
                t->nodes = grown;
                t->cap = cap;
            }
            node = (int32_t)t->n++;
            t->nodes[node] = (TrieNode){.first_child = -1, .sibling = *link, .token = -1, .byte = b};
            *link = node;
        }
        link = &t->nodes[node].first_child;
    }
    if (t->nodes[node].token >= 0)
        return errorf("added_tokens: \"%.80s\" and \"%.80s\" are matched by the same text", av->tokens[t->nodes[node].token].content,
                      av->tokens[token].content);
    t->nodes[node].token = token;
    t->empty = 0;
    return STATUS_OK;
}

static void trie_init(AddedTrie *t) {
    memset(t, 0, sizeof *t);
    for (int i = 0; i < 256; i++) t->root[i] = -1;
    t->empty = 1;
}

/* The longest token starting at s[0..n), its length in *len; -1 if none. */
static int32_t trie_longest(const AddedTrie *t, const char *s, size_t n, size_t *len) {
    int32_t node = t->root[(unsigned char)s[0]], best = -1;
    for (size_t i = 0; node >= 0;) {
        if (t->nodes[node].token >= 0) {
            best = t->nodes[node].token;
            *len = i + 1;
        }
        if (++i == n) break;
        unsigned char b = (unsigned char)s[i];
        node = t->nodes[node].first_child;
        while (node >= 0 && t->nodes[node].byte != b) node = t->nodes[node].sibling;
    }
    return best;
}

Status added_vocab_load(const cJSON *arr, const Bpe *model, const Normalizer *nz, AddedVocab *av) {
    memset(av, 0, sizeof *av);
    trie_init(&av->raw);
    trie_init(&av->normalized);
    int count = arr ? cJSON_GetArraySize(arr) : 0;
    if (arr && !cJSON_IsArray(arr)) return errorf("added_tokens: expected an array, got %s", json_kind(arr));
    TRY(str_map_init(&av->by_content, (size_t)count));
    av->tokens = calloc((size_t)(count ? count : 1), sizeof *av->tokens);
    if (!av->tokens) return errorf("out of memory for added tokens");
    /* HF numbers tokens that are new to the model from the model's vocabulary size on. */
    int64_t next_id = (int64_t)model->vocab.n;
    EncodeScratch sc;
    TRY(encode_scratch_init(&sc));
    Status st = STATUS_OK;
    int index = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        char where[64];
        snprintf(where, sizeof where, "added_tokens[%d]", index++);
        if (!cJSON_IsObject(e)) {
            st = errorf("%s: expected an object, got %s", where, json_kind(e));
            break;
        }
        AddedToken t = {0};
        const char *content = json_string(e, where, "content", &st);
        if (!content) break;
        int special;
        if ((st = json_bool(e, where, "special", 0, &special)) != STATUS_OK ||
            (st = json_bool(e, where, "single_word", 0, &t.single_word)) != STATUS_OK ||
            (st = json_bool(e, where, "lstrip", 0, &t.lstrip)) != STATUS_OK ||
            (st = json_bool(e, where, "rstrip", 0, &t.rstrip)) != STATUS_OK ||
            (st = json_bool(e, where, "normalized", !special, &t.is_normalized)) != STATUS_OK)
            break;
        t.special = special;
        const cJSON *jid = cJSON_GetObjectItemCaseSensitive(e, "id");
        if (!cJSON_IsNumber(jid) || jid->valuedouble < 0 || jid->valuedouble > INT32_MAX - 1) {
            st = errorf("%s.id: expected a token id, got %s", where, json_kind(jid));
            break;
        }
        t.len = strlen(content);
        if (t.len == 0) continue; /* HF ignores empty tokens */
        int32_t existing = str_map_get(&av->by_content, content, t.len);
        int64_t id = existing >= 0 ? av->tokens[existing].id : str_map_get(&model->vocab, content, t.len);
        if (id < 0) id = next_id++;
        if (id != (int64_t)jid->valuedouble) {
            st = errorf("%s \"%.80s\": the file gives id %lld but HF tokenizers assigns %lld", where, content,
                        (long long)jid->valuedouble, (long long)id);
            break;
        }
        t.id = (int32_t)id;
        t.content = strdup(content);
        const char *norm = content;
        size_t norm_len = t.len;
        if (t.content && t.is_normalized && nz) st = normalizer_apply(nz, content, t.len, &sc, &norm, &norm_len);
        t.normalized = st == STATUS_OK && t.content ? strndup(norm, norm_len) : NULL;
        t.normalized_len = norm_len;
        if (st == STATUS_OK && (!t.content || !t.normalized)) st = errorf("out of memory for added tokens");
        if (st != STATUS_OK) {
            free(t.content);
            free(t.normalized);
            break;
        }
        /* A later entry for the same content replaces the earlier one's options. */
        if (existing >= 0) {
            AddedToken *old = &av->tokens[existing];
            t.special |= old->special; /* HF's special set only grows */
            free(old->content);
            free(old->normalized);
            *old = t;
        } else {
            if ((st = str_map_put(&av->by_content, content, t.len, (int32_t)av->n)) != STATUS_OK) break;
            av->tokens[av->n++] = t;
        }
    }
    encode_scratch_free(&sc);
    if (st != STATUS_OK) return STATUS_ERROR;
    int need_word = 0;
    for (size_t i = 0; i < av->n; i++) {
        const AddedToken *t = &av->tokens[i];
        if (t->is_normalized) {
            if (t->normalized_len) TRY(trie_add(&av->normalized, t->normalized, t->normalized_len, (int32_t)i, av));
        } else {
            TRY(trie_add(&av->raw, t->content, t->len, (int32_t)i, av));
        }
        need_word |= t->single_word;
    }
    if (need_word) TRY(regex_compile(WORD_CHAR, strlen(WORD_CHAR), 0, &av->word_char));
    return STATUS_OK;
}

void added_vocab_free(AddedVocab *av) {
    for (size_t i = 0; i < av->n; i++) {
        free(av->tokens[i].content);
        free(av->tokens[i].normalized);
    }
    free(av->tokens);
    str_map_free(&av->by_content);
    free(av->raw.nodes);
    free(av->normalized.nodes);
    regex_free(av->word_char);
    memset(av, 0, sizeof *av);
}

static int is_word_char_at(const AddedVocab *av, const char *s, size_t n, EncodeScratch *sc) {
    return regex_matches_at_start(av->word_char, s, n, sc->re);
}

/* HF's AddedVocabulary::find_matches on one piece. */
static Status split_piece(const AddedVocab *av, const AddedTrie *trie, const Piece *p, Pieces *out,
                          EncodeScratch *sc) {
    const char *s = p->s;
    size_t n = p->len, start_offset = 0, pos = 0;
    while (pos < n) {
        size_t i = pos, mlen = 0;
        int32_t k = -1;
        for (; i < n; i++)
            if (trie->root[(unsigned char)s[i]] >= 0 && (k = trie_longest(trie, s + i, n - i, &mlen)) >= 0) break;
        if (k < 0) break;
        const AddedToken *t = &av->tokens[k];
        size_t start = i, stop = i + mlen;
        pos = stop; /* the matcher resumes after the match, whatever the strips add */
        if (t->single_word) {
            int start_space = start == 0 || !is_word_char_at(av, s + utf8_last_char_start(s, start),
                                                             start - utf8_last_char_start(s, start), sc);
            int stop_space = stop == n || !is_word_char_at(av, s + stop, utf8_char_len((unsigned char)s[stop]), sc);
            if (!start_space || !stop_space) continue;
        }
        if (t->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                size_t cs = utf8_last_char_start(s, ns), cl;
                if (!unicode_is_white_space(utf8_decode_at(s + cs, &cl))) break;
                ns = cs;
            }
            start = ns > start_offset ? ns : start_offset;
        }
        if (t->rstrip) {
            while (stop < n) {
                size_t cl;
                if (!unicode_is_white_space(utf8_decode_at(s + stop, &cl))) break;
                stop += cl;
            }
        }
        if (start_offset < start) TRY(pieces_push(out, s + start_offset, start - start_offset, -1, p->at_start && start_offset == 0));
        TRY(pieces_push(out, s + start, stop - start, t->id, p->at_start && start == 0));
        start_offset = stop;
    }
    if (start_offset < n) TRY(pieces_push(out, s + start_offset, n - start_offset, -1, p->at_start && start_offset == 0));
    return STATUS_OK;
}

Status added_vocab_split(const AddedVocab *av, const AddedTrie *trie, const Pieces *in, Pieces *out,
                         EncodeScratch *sc) {
    for (size_t i = 0; i < in->n; i++) {
        const Piece *p = &in->p[i];
        if (p->token >= 0 || trie->empty) TRY(pieces_push(out, p->s, p->len, p->token, p->at_start));
        else TRY(split_piece(av, trie, p, out, sc));
    }
    return STATUS_OK;
}
