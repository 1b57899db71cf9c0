/* tokenizer.json as a whole: reading and checking the file, the post-processor's special tokens,
 * and the encode pipeline (added tokens, normalizer, added tokens again, pre-tokenizer, BPE). */
#include "data/tokenizer/tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/utf8.h"
#include "data/tokenizer/tokenizer_parts.h"

/* ---- the post-processor ---- */

static Status push_token_ids(Ids *ids, const cJSON *special, const char *name, const char *where) {
    const cJSON *entry = cJSON_GetObjectItemCaseSensitive(special, name);
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(entry, "ids");
    if (!cJSON_IsArray(list)) return errorf("%s.special_tokens: no ids for \"%.80s\"", where, name);
    const cJSON *e;
    cJSON_ArrayForEach(e, list) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > INT32_MAX - 1)
            return errorf("%s.special_tokens[\"%.80s\"].ids: expected token ids, got %s", where, name, json_kind(e));
        TRY(ids_push(ids, (int32_t)e->valuedouble));
    }
    return STATUS_OK;
}

/* TemplateProcessing's single-sequence template: special tokens before $A go to prefix, after to suffix. */
static Status load_template(const cJSON *j, const char *where, Ids *prefix, Ids *suffix) {
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(j, "single");
    const cJSON *special = cJSON_GetObjectItemCaseSensitive(j, "special_tokens");
    if (!cJSON_IsArray(single)) return errorf("%s.single: expected an array, got %s", where, json_kind(single));
    int seen_a = 0, index = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, single) {
        const cJSON *tok = cJSON_GetObjectItemCaseSensitive(e, "SpecialToken");
        const cJSON *seq = cJSON_GetObjectItemCaseSensitive(e, "Sequence");
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(tok ? tok : seq, "id");
        if (!cJSON_IsString(id))
            return errorf("%s.single[%d]: expected {\"SpecialToken\": {\"id\": ...}} or {\"Sequence\": {\"id\": \"A\"}}",
                          where, index);
        if (seq) {
            if (strcmp(id->valuestring, "A") != 0 || seen_a)
                return errorf("%s.single[%d]: a single-sequence template takes $A once (got $%s)", where, index,
                              id->valuestring);
            seen_a = 1;
        } else {
            TRY(push_token_ids(seen_a ? suffix : prefix, special, id->valuestring, where));
        }
        index++;
    }
    if (!seen_a) return errorf("%s.single: the template has no $A", where);
    return STATUS_OK;
}

static Status load_cls_sep(const cJSON *j, const char *where, Ids *prefix, Ids *suffix) {
    const char *keys[2] = {"cls", "sep"};
    Ids *dst[2] = {prefix, suffix};
    for (int i = 0; i < 2; i++) {
        const cJSON *pair = cJSON_GetObjectItemCaseSensitive(j, keys[i]);
        const cJSON *id = cJSON_GetArrayItem(pair, 1);
        if (!cJSON_IsArray(pair) || !cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble > INT32_MAX - 1)
            return errorf("%s.%s: expected [token, id], got %s", where, keys[i], json_kind(pair));
        TRY(ids_push(dst[i], (int32_t)id->valuedouble));
    }
    return STATUS_OK;
}

/* Processors wrap the sequence in order: each one's tokens go around what the previous made. */
static Status load_post_processor(const cJSON *j, const char *where, Ids *prefix, Ids *suffix) {
    if (!cJSON_IsObject(j)) return errorf("%s: expected an object, got %s", where, json_kind(j));
    Status st = STATUS_OK;
    const char *type = json_string(j, where, "type", &st);
    if (!type) return st;
    if (strcmp(type, "ByteLevel") == 0) return STATUS_OK; /* offsets only */
    Ids pre = {0}, suf = {0};
    if (strcmp(type, "TemplateProcessing") == 0) {
        st = load_template(j, where, &pre, &suf);
    } else if (strcmp(type, "RobertaProcessing") == 0 || strcmp(type, "BertProcessing") == 0) {
        st = load_cls_sep(j, where, &pre, &suf);
    } else if (strcmp(type, "Sequence") == 0) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "processors");
        if (!cJSON_IsArray(arr)) return errorf("%s.processors: expected an array, got %s", where, json_kind(arr));
        int i = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, arr) {
            char sub[256];
            snprintf(sub, sizeof sub, "%s.processors[%d]", where, i++);
            TRY(load_post_processor(e, sub, prefix, suffix));
        }
        return STATUS_OK;
    } else {
        return errorf("%s.type \"%s\" is not supported (TemplateProcessing, ByteLevel, RobertaProcessing, "
                      "BertProcessing and Sequence are)",
                      where, type);
    }
    for (size_t i = 0; i < prefix->n && st == STATUS_OK; i++) st = ids_push(&pre, prefix->p[i]);
    for (size_t i = 0; i < suf.n && st == STATUS_OK; i++) st = ids_push(suffix, suf.p[i]);
    if (st == STATUS_OK) {
        free(prefix->p);
        *prefix = pre;
        pre = (Ids){0};
    }
    free(pre.p);
    free(suf.p);
    return st;
}

/* ---- loading ---- */

static Status read_file(const char *path, char **data, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return errorf("%s: %s", path, strerror(errno));
    Status st = STATUS_OK;
    char *buf = NULL;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) st = errorf("%s: cannot find its size", path);
    if (st == STATUS_OK && !(buf = malloc((size_t)size + 1))) st = errorf("%s: out of memory (%ld bytes)", path, size);
    if (st == STATUS_OK && fread(buf, 1, (size_t)size, f) != (size_t)size) st = errorf("%s: read error", path);
    fclose(f);
    if (st != STATUS_OK) {
        free(buf);
        return st;
    }
    buf[size] = '\0';
    *data = buf;
    *len = (size_t)size;
    return STATUS_OK;
}

static Status check_top_level(const cJSON *root) {
    if (!cJSON_IsObject(root)) return errorf("expected a JSON object at the top, got %s", json_kind(root));
    const cJSON *version = cJSON_GetObjectItemCaseSensitive(root, "version");
    if (version && !(cJSON_IsString(version) && strcmp(version->valuestring, "1.0") == 0))
        return errorf("version: expected \"1.0\", got %s", cJSON_IsString(version) ? version->valuestring : json_kind(version));
    const char *unsupported[2] = {"truncation", "padding"};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, unsupported[i]);
        if (v && !cJSON_IsNull(v))
            return errorf("%s is set: encoding with %s is not supported (set it to null)", unsupported[i],
                          unsupported[i]);
    }
    if (!cJSON_GetObjectItemCaseSensitive(root, "model")) return errorf("no \"model\"");
    return STATUS_OK;
}

static const cJSON *present(const cJSON *root, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

static Status load_parts(Tokenizer *tok, const cJSON *root) {
    TRY(check_top_level(root));
    const cJSON *j;
    if ((j = present(root, "normalizer"))) {
        if (!(tok->normalizer = calloc(1, sizeof *tok->normalizer))) return errorf("out of memory");
        TRY(normalizer_load(j, "normalizer", tok->normalizer));
    }
    int byte_level = 0;
    if ((j = present(root, "pre_tokenizer"))) {
        if (!(tok->pre_tokenizer = calloc(1, sizeof *tok->pre_tokenizer))) return errorf("out of memory");
        TRY(pre_tokenizer_load(j, "pre_tokenizer", tok->pre_tokenizer, &byte_level));
    }
    TRY(bpe_load(cJSON_GetObjectItemCaseSensitive(root, "model"), byte_level, &tok->bpe));
    TRY(added_vocab_load(present(root, "added_tokens"), &tok->bpe, tok->normalizer, &tok->added));
    if ((j = present(root, "post_processor"))) TRY(load_post_processor(j, "post_processor", &tok->prefix, &tok->suffix));
    if ((j = present(root, "decoder"))) {
        if (!(tok->decoder = calloc(1, sizeof *tok->decoder))) return errorf("out of memory");
        TRY(decoder_load(j, "decoder", tok->decoder));
    }
    tok->vocab_size = tok->bpe.n_ids;
    for (size_t i = 0; i < tok->added.n; i++)
        if (tok->added.tokens[i].id >= tok->vocab_size) tok->vocab_size = (int64_t)tok->added.tokens[i].id + 1;
    if (tok->vocab_size == 0) return errorf("the vocabulary is empty");
    Ids *lists[2] = {&tok->prefix, &tok->suffix};
    for (int l = 0; l < 2; l++)
        for (size_t i = 0; i < lists[l]->n; i++)
            if (lists[l]->p[i] >= tok->vocab_size)
                return errorf("post_processor: special token id %d is not below the vocabulary size %lld", lists[l]->p[i],
                              (long long)tok->vocab_size);
    tok->added_of_id = malloc((size_t)tok->vocab_size * sizeof *tok->added_of_id);
    if (!tok->added_of_id) return errorf("out of memory");
    for (int64_t i = 0; i < tok->vocab_size; i++) tok->added_of_id[i] = -1;
    for (size_t i = 0; i < tok->added.n; i++) tok->added_of_id[tok->added.tokens[i].id] = (int32_t)i;
    return STATUS_OK;
}

Status tokenizer_load(const char *path, Tokenizer **out) {
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0) return errorf("%s: %s", path, strerror(errno));
    size_t n = strlen(path);
    char *file = malloc(n + sizeof "/tokenizer.json");
    if (!file) return errorf("out of memory");
    if (S_ISDIR(sb.st_mode)) snprintf(file, n + sizeof "/tokenizer.json", "%s/tokenizer.json", path);
    else memcpy(file, path, n + 1);
    char *text = NULL;
    size_t len = 0;
    if (read_file(file, &text, &len) != STATUS_OK) {
        free(file);
        return STATUS_ERROR;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        size_t at = end ? (size_t)(end - text) : 0;
        Status st = errorf("%s: not valid JSON (near byte %zu)", file, at);
        free(text);
        free(file);
        return st;
    }
    free(text);
    Tokenizer *tok = calloc(1, sizeof *tok);
    Status st = tok ? load_parts(tok, root) : errorf("out of memory");
    cJSON_Delete(root);
    if (st != STATUS_OK) {
        error_context("%s: ", file);
        free(file);
        tokenizer_free(tok);
        return STATUS_ERROR;
    }
    tok->path = file;
    *out = tok;
    return STATUS_OK;
}

void tokenizer_free(Tokenizer *tok) {
    if (!tok) return;
    if (tok->normalizer) normalizer_free(tok->normalizer);
    free(tok->normalizer);
    if (tok->pre_tokenizer) pre_tokenizer_free(tok->pre_tokenizer);
    free(tok->pre_tokenizer);
    if (tok->decoder) decoder_free(tok->decoder);
    free(tok->decoder);
    bpe_free(&tok->bpe);
    added_vocab_free(&tok->added);
    free(tok->prefix.p);
    free(tok->suffix.p);
    free(tok->added_of_id);
    free(tok->path);
    free(tok);
}

int64_t tokenizer_vocab_size(const Tokenizer *tok) { return tok->vocab_size; }

int32_t tokenizer_token_id(const Tokenizer *tok, const char *token) {
    size_t n = strlen(token);
    int32_t k = str_map_get(&tok->added.by_content, token, n);
    if (k >= 0) return tok->added.tokens[k].id;
    return str_map_get(&tok->bpe.vocab, token, n);
}

/* ---- encoding ---- */

static void swap_pieces(Pieces *a, Pieces *b) {
    Pieces t = *a;
    *a = *b;
    *b = t;
}

/* Normalizes each text piece and splits it around the normalized added tokens. */
static Status normalize_pieces(const Tokenizer *tok, const Pieces *in, Pieces *out, EncodeScratch *sc) {
    out->n = 0;
    Pieces one = {0};
    Status st = STATUS_OK;
    for (size_t i = 0; i < in->n && st == STATUS_OK; i++) {
        Piece p = in->p[i];
        if (p.token < 0 && tok->normalizer) st = normalizer_apply(tok->normalizer, p.s, p.len, sc, &p.s, &p.len);
        if (st != STATUS_OK) break;
        if (p.token >= 0 || tok->added.normalized.empty) {
            if (p.len > 0 || p.token >= 0) st = pieces_push(out, p.s, p.len, p.token, p.at_start);
            continue;
        }
        one.n = 0;
        st = pieces_push(&one, p.s, p.len, -1, p.at_start);
        if (st == STATUS_OK) st = added_vocab_split(&tok->added, &tok->added.normalized, &one, out, sc);
    }
    free(one.p);
    return st;
}

static Status encode_pieces(const Tokenizer *tok, const char *text, size_t len, EncodeScratch *sc, Pieces *a,
                            Pieces *b) {
    if (len > 0) TRY(pieces_push(a, text, len, -1, 1));
    if (!tok->added.raw.empty) {
        b->n = 0;
        TRY(added_vocab_split(&tok->added, &tok->added.raw, a, b, sc));
        swap_pieces(a, b);
    }
    if (tok->normalizer || !tok->added.normalized.empty) {
        TRY(normalize_pieces(tok, a, b, sc));
        swap_pieces(a, b);
    }
    if (tok->pre_tokenizer) {
        TRY(pre_tokenize(tok->pre_tokenizer, a, b, sc));
        swap_pieces(a, b);
    }
    return STATUS_OK;
}

Status tokenizer_encode(const Tokenizer *tok, const char *text, size_t len, int add_special, int32_t **ids,
                        int64_t *n) {
    *ids = NULL;
    *n = 0;
    size_t bad = utf8_invalid_at((const unsigned char *)text, len);
    if (bad != len) return errorf("the text is not valid UTF-8 (byte %zu of %zu)", bad, len);
    EncodeScratch sc;
    TRY(encode_scratch_init(&sc));
    Pieces a = {0}, b = {0};
    Ids out = {0};
    Status st = encode_pieces(tok, text, len, &sc, &a, &b);
    if (add_special)
        for (size_t i = 0; i < tok->prefix.n && st == STATUS_OK; i++) st = ids_push(&out, tok->prefix.p[i]);
    bpe_acquire_cache(&tok->bpe, &sc);
    for (size_t i = 0; i < a.n && st == STATUS_OK; i++) {
        const Piece *p = &a.p[i];
        st = p->token >= 0 ? ids_push(&out, p->token) : bpe_encode_word(&tok->bpe, p->s, p->len, &sc, &out);
    }
    bpe_release_cache(&tok->bpe, &sc);
    if (add_special)
        for (size_t i = 0; i < tok->suffix.n && st == STATUS_OK; i++) st = ids_push(&out, tok->suffix.p[i]);
    /* An empty result is still a block the caller frees. */
    if (st == STATUS_OK && !out.p && !(out.p = malloc(sizeof *out.p))) st = errorf("out of memory");
    free(a.p);
    free(b.p);
    encode_scratch_free(&sc);
    if (st != STATUS_OK) {
        free(out.p);
        return STATUS_ERROR;
    }
    *ids = out.p;
    *n = (int64_t)out.n;
    return STATUS_OK;
}

Status tokenizer_decode(const Tokenizer *tok, const int32_t *ids, int64_t n, int skip_special, char **text,
                        size_t *len) {
    return decoder_run(tok, ids, n, skip_special, text, len);
}
