/* The working memory of one encode call: an arena for rewritten text, growing lists of pieces
 * and ids, and the buffers the splitter and the BPE merge loop reuse from word to word. */
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer/tokenizer_parts.h"

enum { ARENA_BLOCK = 1 << 16 };

char *arena_alloc(Arena *a, size_t n) {
    ArenaBlock *b = a->head;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > ARENA_BLOCK ? n : ARENA_BLOCK;
        b = malloc(sizeof *b + cap);
        if (!b) return NULL;
        b->next = a->head;
        b->used = 0;
        b->cap = cap;
        a->head = b;
    }
    char *p = b->data + b->used;
    b->used += n;
    return p;
}

void arena_free(Arena *a) {
    while (a->head) {
        ArenaBlock *next = a->head->next;
        free(a->head);
        a->head = next;
    }
}

Status pieces_push(Pieces *ps, const char *s, size_t len, int32_t token, int at_start) {
    if (ps->n == ps->cap) {
        size_t cap = ps->cap ? ps->cap * 2 : 64;
        Piece *grown = realloc(ps->p, cap * sizeof *grown);
        if (!grown) return errorf("out of memory splitting text");
        ps->p = grown;
        ps->cap = cap;
    }
    ps->p[ps->n++] = (Piece){.s = s, .len = len, .token = token, .at_start = at_start};
    return STATUS_OK;
}

Status encode_scratch_init(EncodeScratch *sc) {
    memset(sc, 0, sizeof *sc);
    return regex_scratch_new(&sc->re);
}

void encode_scratch_free(EncodeScratch *sc) {
    arena_free(&sc->arena);
    regex_scratch_free(sc->re);
    free(sc->spans.p);
    free(sc->segments);
    free(sc->symbols);
    free(sc->heap);
    free(sc->word.p);
    memset(sc, 0, sizeof *sc);
}
