/* The parts of a loaded tokenizer.json (normalizers, pre-tokenizers, the BPE model, added tokens,
 * decoders) and the working memory of one encode call, shared by the files of data/tokenizer/. */
#pragma once

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "data/tokenizer/regex.h"
#include "data/tokenizer/str_map.h"
#include "data/tokenizer/tokenizer.h"
#include "data/tokenizer/unicode.h"

/* ---- working memory of one encode call ---- */

/* Bump allocation for text an encode call rewrites (normalized pieces, inserted prefixes);
 * everything is released at once when the call ends, and pointers stay valid until then. */
typedef struct ArenaBlock {
    struct ArenaBlock *next;
    size_t used, cap;
    char data[];
} ArenaBlock;

typedef struct {
    ArenaBlock *head;
} Arena;

char *arena_alloc(Arena *a, size_t n);
void arena_free(Arena *a);

/* A stretch of text on its way through the pipeline: either still text (token < 0), or an added
 * token already recognised. at_start: it begins at offset 0 of the original text (what Metaspace's
 * prepend_scheme "first" asks). */
typedef struct {
    const char *s;
    size_t len;
    int32_t token;
    int at_start;
} Piece;

typedef struct {
    Piece *p;
    size_t n, cap;
} Pieces;

Status pieces_push(Pieces *ps, const char *s, size_t len, int32_t token, int at_start);

typedef struct {
    int32_t *p;
    size_t n, cap;
} Ids;

Status ids_push(Ids *ids, int32_t id);

/* One symbol of a word during BPE merging (HF's Symbol): removed symbols have len 0. */
typedef struct {
    int32_t id;
    int32_t prev, next;
    uint32_t len;
} BpeSymbol;

typedef struct {
    uint64_t key;   /* rank << 32 | position: the heap pops the lowest rank, then the leftmost */
    int32_t merged;
} BpeCandidate;

/* A stretch of a piece as HF's Pattern::find_matches reports it: matched or between matches. */
typedef struct {
    size_t start, end;
    int match;
} Segment;

typedef struct {
    Arena arena;
    RegexScratch *re;
    Spans spans;
    Segment *segments;
    size_t segments_cap;
    BpeSymbol *symbols;
    size_t symbols_cap;
    BpeCandidate *heap;
    size_t heap_cap;
    Ids word;           /* one word's ids */
    int cache_held;     /* this call holds the word cache's lock */
} EncodeScratch;

Status encode_scratch_init(EncodeScratch *sc);
void encode_scratch_free(EncodeScratch *sc);

/* ---- normalizers ---- */

typedef enum { NORMALIZER_SEQUENCE, NORMALIZER_PREPEND, NORMALIZER_REPLACE, NORMALIZER_UNICODE } NormalizerKind;

typedef struct Normalizer {
    NormalizerKind kind;
    struct Normalizer *children;   /* Sequence */
    int n_children;
    char *text;                    /* Prepend's prefix, Replace's content */
    size_t text_len;
    Regex *pattern;                /* Replace */
    UnicodeForm form;              /* NFC, NFD, NFKC, NFKD */
} Normalizer;

/* `where` names the JSON path in errors ("normalizer", "normalizer.normalizers[1]"). */
Status normalizer_load(const cJSON *j, const char *where, Normalizer *out);
void normalizer_free(Normalizer *nz);
/* s[0..n) normalized; the result points into sc's arena or is s itself. */
Status normalizer_apply(const Normalizer *nz, const char *s, size_t n, EncodeScratch *sc, const char **out,
                        size_t *out_len);

/* ---- pre-tokenizers ---- */

typedef enum { PRE_SEQUENCE, PRE_SPLIT, PRE_BYTE_LEVEL, PRE_METASPACE } PreTokenizerKind;

typedef enum {
    SPLIT_REMOVED,
    SPLIT_ISOLATED,
    SPLIT_MERGED_WITH_PREVIOUS,
    SPLIT_MERGED_WITH_NEXT,
    SPLIT_CONTIGUOUS,
} SplitBehavior;

typedef enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } PrependScheme;

typedef struct PreTokenizer {
    PreTokenizerKind kind;
    struct PreTokenizer *children; /* Sequence */
    int n_children;
    Regex *pattern;                /* Split, Digits, ByteLevel's GPT-2 pattern when use_regex */
    SplitBehavior behavior;
    int invert;
    int add_prefix_space;          /* ByteLevel */
    char replacement[5];           /* Metaspace: the character standing for a space, as UTF-8 */
    size_t replacement_len;
    PrependScheme prepend_scheme;
    int split;                     /* Metaspace */
} PreTokenizer;

/* Metaspace's replacement character and prepend scheme (its pre-tokenizer and decoder share them). */
Status metaspace_load(const cJSON *j, const char *where, char replacement[5], size_t *replacement_len,
                      PrependScheme *scheme);
/* Sets *byte_level when the chain ends in ByteLevel (the BPE model then sees raw bytes). */
Status pre_tokenizer_load(const cJSON *j, const char *where, PreTokenizer *out, int *byte_level);
void pre_tokenizer_free(PreTokenizer *pt);
/* Splits every text piece of `in` into `out` (added tokens pass through). */
Status pre_tokenize(const PreTokenizer *pt, const Pieces *in, Pieces *out, EncodeScratch *sc);

/* ---- the BPE model ---- */

typedef struct WordCache WordCache;

typedef struct {
    StrMap vocab;                  /* token -> id */
    char **token_of;               /* id -> token (NULL where no token has the id) */
    uint32_t *token_len;
    int64_t n_ids;                 /* largest id + 1 */
    PairMap merges;
    int32_t unk;                   /* -1: none */
    int fuse_unk, byte_fallback, ignore_merges;
    int32_t byte_token[256];       /* <0xNN> for byte fallback, -1 where missing */
    int byte_level;                /* words arrive as raw bytes; symbol b is GPT-2's character for b */
    int32_t byte_char_id[256];     /* byte level: the id of byte b's character, -1 if missing */
    StrMap raw_vocab;              /* byte level with ignore_merges: a token's raw bytes -> id */
    int32_t ascii_id[128];         /* not byte level: the id of a one-character ASCII token */
    WordCache *cache;
} Bpe;

Status bpe_load(const cJSON *model, int byte_level, Bpe *m);
void bpe_free(Bpe *m);
/* Appends the ids of one word (a pre-tokenized piece). */
Status bpe_encode_word(const Bpe *m, const char *s, size_t n, EncodeScratch *sc, Ids *out);
/* Takes the word cache for this call when no other thread holds it; bpe_release_cache gives it back. */
void bpe_acquire_cache(const Bpe *m, EncodeScratch *sc);
void bpe_release_cache(const Bpe *m, EncodeScratch *sc);

/* GPT-2's byte-to-character table (printable bytes map to themselves, the rest to U+0100..). */
uint32_t byte_level_char(unsigned char b);
/* The byte of a GPT-2 character, or -1. */
int byte_level_byte(uint32_t cp);

/* ---- added tokens ---- */

typedef struct {
    char *content;                 /* as in tokenizer.json */
    size_t len;
    char *normalized;              /* what is matched and decoded: the content through the
                                      normalizer when the token is "normalized", else content */
    size_t normalized_len;
    int32_t id;
    int single_word, lstrip, rstrip, is_normalized, special;
} AddedToken;

typedef struct {
    int32_t first_child, sibling;  /* node indices, -1: none */
    int32_t token;                 /* index of the added token ending here, -1: none */
    unsigned char byte;
} TrieNode;

typedef struct {
    TrieNode *nodes;
    size_t n, cap;
    int32_t root[256];             /* the node for each first byte, -1: none */
    int empty;
} AddedTrie;

typedef struct {
    AddedToken *tokens;
    size_t n;
    StrMap by_content;             /* content -> index in tokens */
    AddedTrie raw, normalized;     /* tokens matched before / after normalization */
    Regex *word_char;              /* \w as Rust's regex defines it, for single_word tokens */
} AddedVocab;

/* Reads "added_tokens" and assigns ids as HF does (the model's id of the content, else the next
 * free id); each normalized token's content goes through `nz` first. */
Status added_vocab_load(const cJSON *arr, const Bpe *model, const Normalizer *nz, AddedVocab *av);
void added_vocab_free(AddedVocab *av);
/* Splits the text pieces of `in` around the added tokens of one trie, appending to `out`. */
Status added_vocab_split(const AddedVocab *av, const AddedTrie *trie, const Pieces *in, Pieces *out,
                         EncodeScratch *sc);

/* ---- decoders ---- */

typedef enum {
    DECODER_SEQUENCE,
    DECODER_BYTE_LEVEL,
    DECODER_METASPACE,
    DECODER_REPLACE,
    DECODER_BYTE_FALLBACK,
    DECODER_FUSE,
    DECODER_STRIP,
} DecoderKind;

typedef struct Decoder {
    DecoderKind kind;
    struct Decoder *children;
    int n_children;
    Regex *pattern;                /* Replace */
    char *content;                 /* Replace */
    size_t content_len;
    uint32_t strip_char;           /* Strip */
    size_t strip_start, strip_stop;
    char replacement[5];           /* Metaspace */
    size_t replacement_len;
    PrependScheme prepend_scheme;
} Decoder;

Status decoder_load(const cJSON *j, const char *where, Decoder *out);
void decoder_free(Decoder *d);

/* ---- the whole tokenizer ---- */

struct Tokenizer {
    char *path;
    Normalizer *normalizer;        /* NULL: none */
    PreTokenizer *pre_tokenizer;   /* NULL: none */
    Bpe bpe;
    AddedVocab added;
    Decoder *decoder;              /* NULL: tokens joined by spaces, as HF does without one */
    Ids prefix, suffix;            /* the post-processor's ids around a sequence (add_special) */
    int64_t vocab_size;            /* largest id + 1 over the model and the added tokens */
    int32_t *added_of_id;          /* id -> index in added.tokens, -1: none (vocab_size entries) */
};

/* The strings of ids through the decoder chain (decode.c). */
Status decoder_run(const Tokenizer *tok, const int32_t *ids, int64_t n, int skip_special, char **text,
                   size_t *len);

/* The JSON value's name for errors: "a string", "null", ... */
const char *json_kind(const cJSON *j);
/* A {"String": s} or {"Regex": r} pattern (Split, Replace). */
Status json_pattern(const cJSON *j, const char *where, Regex **out);
/* A JSON string member, or NULL with an error naming where.key. */
const char *json_string(const cJSON *obj, const char *where, const char *key, Status *st);
/* A boolean member; `dflt` when absent or null. */
Status json_bool(const cJSON *obj, const char *where, const char *key, int dflt, int *out);
/* A one-character string member (Metaspace's replacement, Strip's content) as UTF-8. */
Status json_char(const cJSON *obj, const char *where, const char *key, char out[5], size_t *len);
