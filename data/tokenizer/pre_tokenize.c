/* Pre-tokenizers: Split (regex or string, every split behavior, invert), Digits, ByteLevel (GPT-2's
 * pattern and prefix space; its byte-to-character mapping is left to the BPE model) and Metaspace,
 * alone or in a Sequence. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer/tokenizer_parts.h"

/* GPT-2's pre-tokenization pattern, which ByteLevel applies when use_regex is set. */
static const char GPT2_PATTERN[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static Status load_behavior(const cJSON *j, const char *where, SplitBehavior *out) {
    static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "behavior");
    if (!cJSON_IsString(b)) return errorf("%s.behavior: expected a string, got %s", where, json_kind(b));
    for (int i = 0; i < 5; i++)
        if (strcmp(b->valuestring, names[i]) == 0) {
            *out = (SplitBehavior)i;
            return STATUS_OK;
        }
    return errorf("%s.behavior: unknown split behavior \"%s\"", where, b->valuestring);
}

static Status load_prepend_scheme(const cJSON *j, const char *where, PrependScheme *out) {
    *out = PREPEND_ALWAYS;
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "prepend_scheme");
    if (s && !cJSON_IsNull(s)) {
        if (!cJSON_IsString(s)) return errorf("%s.prepend_scheme: expected a string, got %s", where, json_kind(s));
        if (strcmp(s->valuestring, "always") == 0) *out = PREPEND_ALWAYS;
        else if (strcmp(s->valuestring, "first") == 0) *out = PREPEND_FIRST;
        else if (strcmp(s->valuestring, "never") == 0) *out = PREPEND_NEVER;
        else return errorf("%s.prepend_scheme: unknown scheme \"%s\"", where, s->valuestring);
    }
    /* Older files say add_prefix_space: false for "never". */
    const cJSON *legacy = cJSON_GetObjectItemCaseSensitive(j, "add_prefix_space");
    if (cJSON_IsFalse(legacy)) {
        if (s && cJSON_IsString(s) && *out != PREPEND_NEVER)
            return errorf("%s: add_prefix_space false contradicts prepend_scheme \"%s\"", where, s->valuestring);
        *out = PREPEND_NEVER;
    }
    return STATUS_OK;
}

Status metaspace_load(const cJSON *j, const char *where, char replacement[5], size_t *replacement_len,
                      PrependScheme *scheme) {
    TRY(json_char(j, where, "replacement", replacement, replacement_len));
    return load_prepend_scheme(j, where, scheme);
}

static Status load_one(const cJSON *j, const char *where, PreTokenizer *pt, int *seen_byte_level) {
    memset(pt, 0, sizeof *pt);
    if (!cJSON_IsObject(j)) return errorf("%s: expected an object, got %s", where, json_kind(j));
    Status st = STATUS_OK;
    const char *type = json_string(j, where, "type", &st);
    if (!type) return st;
    if (*seen_byte_level)
        return errorf("%s: a %s pre-tokenizer after ByteLevel is not supported (ByteLevel must come last)", where,
                      type);
    char sub[256];
    if (strcmp(type, "Sequence") == 0) {
        pt->kind = PRE_SEQUENCE;
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "pretokenizers");
        if (!cJSON_IsArray(arr)) return errorf("%s.pretokenizers: expected an array, got %s", where, json_kind(arr));
        int n = cJSON_GetArraySize(arr);
        pt->children = calloc((size_t)(n ? n : 1), sizeof *pt->children);
        if (!pt->children) return errorf("out of memory");
        const cJSON *e;
        cJSON_ArrayForEach(e, arr) {
            snprintf(sub, sizeof sub, "%s.pretokenizers[%d]", where, pt->n_children);
            TRY(load_one(e, sub, &pt->children[pt->n_children++], seen_byte_level));
        }
        return STATUS_OK;
    }
    if (strcmp(type, "Split") == 0) {
        pt->kind = PRE_SPLIT;
        snprintf(sub, sizeof sub, "%s.pattern", where);
        TRY(json_pattern(cJSON_GetObjectItemCaseSensitive(j, "pattern"), sub, &pt->pattern));
        TRY(load_behavior(j, where, &pt->behavior));
        return json_bool(j, where, "invert", 0, &pt->invert);
    }
    if (strcmp(type, "Digits") == 0) {
        int individual;
        TRY(json_bool(j, where, "individual_digits", 0, &individual));
        pt->kind = PRE_SPLIT;
        pt->behavior = individual ? SPLIT_ISOLATED : SPLIT_CONTIGUOUS;
        /* Rust's char::is_numeric is the general category N. */
        return regex_compile("\\p{N}", 5, 0, &pt->pattern);
    }
    if (strcmp(type, "ByteLevel") == 0) {
        int use_regex;
        pt->kind = PRE_BYTE_LEVEL;
        TRY(json_bool(j, where, "add_prefix_space", 1, &pt->add_prefix_space));
        TRY(json_bool(j, where, "use_regex", 1, &use_regex));
        *seen_byte_level = 1;
        return use_regex ? regex_compile(GPT2_PATTERN, strlen(GPT2_PATTERN), 0, &pt->pattern) : STATUS_OK;
    }
    if (strcmp(type, "Metaspace") == 0) {
        pt->kind = PRE_METASPACE;
        TRY(metaspace_load(j, where, pt->replacement, &pt->replacement_len, &pt->prepend_scheme));
        return json_bool(j, where, "split", 1, &pt->split);
    }
    return errorf("%s.type \"%s\" is not supported (Sequence, Split, Digits, ByteLevel and Metaspace are)", where, type);
}

Status pre_tokenizer_load(const cJSON *j, const char *where, PreTokenizer *out, int *byte_level) {
    *byte_level = 0;
    return load_one(j, where, out, byte_level);
}

void pre_tokenizer_free(PreTokenizer *pt) {
    if (!pt) return;
    for (int i = 0; i < pt->n_children; i++) pre_tokenizer_free(&pt->children[i]);
    free(pt->children);
    regex_free(pt->pattern);
    memset(pt, 0, sizeof *pt);
}

/* ---- splitting ---- */

static Status segment_push(EncodeScratch *sc, size_t *n, size_t start, size_t end, int match) {
    if (*n == sc->segments_cap) {
        size_t cap = sc->segments_cap ? sc->segments_cap * 2 : 64;
        Segment *grown = realloc(sc->segments, cap * sizeof *grown);
        if (!grown) return errorf("out of memory splitting text");
        sc->segments = grown;
        sc->segments_cap = cap;
    }
    sc->segments[(*n)++] = (Segment){start, end, match};
    return STATUS_OK;
}

/* HF's NormalizedString::split: the matches and the stretches between them, grouped by behavior;
 * removed and empty pieces are dropped. segments[0..n) alternate as find_matches gives them. */
static Status emit_split(const Piece *p, Segment *seg, size_t n, SplitBehavior behavior, Pieces *out) {
    size_t k = 0; /* groups written back into seg[0..k) with .match meaning "remove" */
    int previous = 0;
    switch (behavior) {
    case SPLIT_ISOLATED:
        for (size_t i = 0; i < n; i++) seg[i].match = 0;
        k = n;
        break;
    case SPLIT_REMOVED:
        k = n;
        break;
    case SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < n; i++) {
            Segment s = seg[i];
            if (s.match == previous && k > 0) seg[k - 1].end = s.end;
            else seg[k++] = (Segment){s.start, s.end, 0};
            previous = s.match;
        }
        break;
    case SPLIT_MERGED_WITH_PREVIOUS:
        for (size_t i = 0; i < n; i++) {
            Segment s = seg[i];
            if (s.match && !previous && k > 0) seg[k - 1].end = s.end;
            else seg[k++] = (Segment){s.start, s.end, 0};
            previous = s.match;
        }
        break;
    case SPLIT_MERGED_WITH_NEXT:
        /* The fold runs from the end; groups are written from the back of the array. */
        for (size_t i = n; i-- > 0;) {
            Segment s = seg[i];
            if (s.match && !previous && k > 0) seg[n - k].start = s.start;
            else seg[n - 1 - k++] = (Segment){s.start, s.end, 0};
            previous = s.match;
        }
        seg += n - k;
        break;
    }
    for (size_t i = 0; i < k; i++)
        if (!seg[i].match && seg[i].end > seg[i].start)
            TRY(pieces_push(out, p->s + seg[i].start, seg[i].end - seg[i].start, -1, p->at_start && seg[i].start == 0));
    return STATUS_OK;
}

/* Segments of a piece from a regex's matches (find_matches of a SysRegex), flags flipped by invert. */
static Status regex_segments(const Regex *re, const Piece *p, int invert, EncodeScratch *sc, size_t *n) {
    *n = 0;
    TRY(regex_find_all(re, p->s, p->len, sc->re, &sc->spans));
    size_t prev = 0;
    for (size_t i = 0; i < sc->spans.n; i++) {
        Span m = sc->spans.p[i];
        if (prev != m.start) TRY(segment_push(sc, n, prev, m.start, invert));
        TRY(segment_push(sc, n, m.start, m.end, !invert));
        prev = m.end;
    }
    if (prev != p->len) TRY(segment_push(sc, n, prev, p->len, invert));
    return STATUS_OK;
}

static Status split_regex(const Regex *re, SplitBehavior behavior, int invert, const Piece *p, Pieces *out,
                          EncodeScratch *sc) {
    size_t n;
    TRY(regex_segments(re, p, invert, sc, &n));
    return emit_split(p, sc->segments, n, behavior, out);
}

static Status byte_level_piece(const PreTokenizer *pt, const Piece *p, Pieces *out, EncodeScratch *sc) {
    Piece q = *p;
    if (pt->add_prefix_space && q.s[0] != ' ') {
        char *s = arena_alloc(&sc->arena, q.len + 1);
        if (!s) return errorf("out of memory pre-tokenizing");
        s[0] = ' ';
        memcpy(s + 1, q.s, q.len);
        q.s = s;
        q.len++;
    }
    if (!pt->pattern) return pieces_push(out, q.s, q.len, -1, q.at_start);
    return split_regex(pt->pattern, SPLIT_ISOLATED, 0, &q, out, sc);
}

static Status metaspace_piece(const PreTokenizer *pt, const Piece *p, Pieces *out, EncodeScratch *sc) {
    const char *rep = pt->replacement;
    size_t rl = pt->replacement_len, spaces = 0;
    for (size_t i = 0; i < p->len; i++) spaces += p->s[i] == ' ';
    /* Spaces become the replacement first; room is left in front for a prepended one. */
    size_t body = p->len + spaces * (rl - 1);
    char *buf = arena_alloc(&sc->arena, rl + body), *o = buf + rl;
    if (!buf) return errorf("out of memory pre-tokenizing");
    for (size_t i = 0; i < p->len; i++) {
        if (p->s[i] == ' ') {
            memcpy(o, rep, rl);
            o += rl;
        } else {
            *o++ = p->s[i];
        }
    }
    int starts = body >= rl && memcmp(buf + rl, rep, rl) == 0;
    int prepend = !starts && (pt->prepend_scheme == PREPEND_ALWAYS || (pt->prepend_scheme == PREPEND_FIRST && p->at_start));
    if (prepend) memcpy(buf, rep, rl);
    const char *s = prepend ? buf : buf + rl;
    size_t len = prepend ? body + rl : body;
    Piece q = {.s = s, .len = len, .token = -1, .at_start = p->at_start};
    if (!pt->split) return pieces_push(out, q.s, q.len, -1, q.at_start);
    /* Every replacement character is a match, merged with what follows it. */
    size_t n = 0, prev = 0;
    for (size_t i = 0; i + rl <= len;) {
        if (memcmp(s + i, rep, rl) == 0) {
            if (prev < i) TRY(segment_push(sc, &n, prev, i, 0));
            TRY(segment_push(sc, &n, i, i + rl, 1));
            i += rl;
            prev = i;
        } else {
            i += utf8_char_len((unsigned char)s[i]);
        }
    }
    if (prev < len) TRY(segment_push(sc, &n, prev, len, 0));
    return emit_split(&q, sc->segments, n, SPLIT_MERGED_WITH_NEXT, out);
}

static Status apply_one(const PreTokenizer *pt, const Pieces *in, Pieces *out, EncodeScratch *sc) {
    out->n = 0;
    for (size_t i = 0; i < in->n; i++) {
        const Piece *p = &in->p[i];
        if (p->token >= 0) {
            TRY(pieces_push(out, p->s, p->len, p->token, p->at_start));
            continue;
        }
        switch (pt->kind) {
        case PRE_SPLIT: TRY(split_regex(pt->pattern, pt->behavior, pt->invert, p, out, sc)); break;
        case PRE_BYTE_LEVEL: TRY(byte_level_piece(pt, p, out, sc)); break;
        case PRE_METASPACE: TRY(metaspace_piece(pt, p, out, sc)); break;
        case PRE_SEQUENCE: break;
        }
    }
    return STATUS_OK;
}

Status pre_tokenize(const PreTokenizer *pt, const Pieces *in, Pieces *out, EncodeScratch *sc) {
    if (pt->kind != PRE_SEQUENCE) return apply_one(pt, in, out, sc);
    /* Alternate between out and a second list; the result ends in out. */
    Pieces tmp = {0}, cur = {0};
    Status st = STATUS_OK;
    for (size_t i = 0; i < in->n && st == STATUS_OK; i++)
        st = pieces_push(&cur, in->p[i].s, in->p[i].len, in->p[i].token, in->p[i].at_start);
    for (int c = 0; c < pt->n_children && st == STATUS_OK; c++) {
        st = pre_tokenize(&pt->children[c], &cur, &tmp, sc);
        Pieces swap = cur;
        cur = tmp;
        tmp = swap;
    }
    free(tmp.p);
    if (st != STATUS_OK) {
        free(cur.p);
        return st;
    }
    free(out->p);
    *out = cur;
    return STATUS_OK;
}
