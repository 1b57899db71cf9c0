/* Conversions into token files. Every source feeds one token stream into a sink that routes
 * whole documents (runs ending in eos) to the training or validation writer. */
#include "data/prepare.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/progress.h"
#include "core/rng.h"
#include "data/byte_tokenizer.h"
#include "data/tokenizer/tokenizer.h"
#include "data/token_file.h"

/* Keeps the split's Philox draws apart from other users of the same seed. */
static const uint64_t SPLIT_STREAM = 0x73706c6974000000ull;

enum { READ_BLOCK = 1 << 16 };

typedef struct {
    TokenWriter *train, *val;
    const SplitOptions *split;
    uint32_t eos;
    uint64_t doc;   /* index of the current document over all inputs */
    int in_doc;     /* the current document has tokens */
    int to_val;
    PrepareResult *result;
} Sink;

static Status sink_put(Sink *s, const int32_t *ids, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (!s->in_doc) {
            s->to_val = s->val && rng_uniform(s->split->seed, SPLIT_STREAM, s->doc) < s->split->val_fraction;
            s->in_doc = 1;
        }
        size_t j = i;
        while (j < n && (uint32_t)ids[j] != s->eos) j++;
        size_t end = j < n ? j + 1 : n;
        SplitCounts *counts = s->to_val ? &s->result->val : &s->result->train;
        TRY(token_writer_append(s->to_val ? s->val : s->train, ids + i, end - i));
        counts->tokens += end - i;
        if (j < n) {
            counts->documents++;
            s->doc++;
            s->in_doc = 0;
        }
        i = end;
    }
    return STATUS_OK;
}

/* A stream that stops without eos still ends its last document. */
static void sink_end(Sink *s) {
    if (!s->in_doc) return;
    (s->to_val ? &s->result->val : &s->result->train)->documents++;
    s->doc++;
    s->in_doc = 0;
}

typedef Status (*SourceFn)(void *ctx, const char *path, Sink *sink);

/* Writers for the split, every input through `source`, then both outputs published or neither. */
static Status run_split(const char *const *inputs, int n_inputs, uint32_t vocab, uint32_t eos,
                        const SplitOptions *split, SourceFn source, void *ctx, PrepareResult *result) {
    memset(result, 0, sizeof *result);
    result->vocab_size = vocab;
    result->eos_id = eos;
    if (n_inputs <= 0) return errorf("no input files given");
    if (!split->out_path) return errorf("no output file given");
    if (!(split->val_fraction >= 0 && split->val_fraction < 1))
        return errorf("val fraction %g is not in [0, 1)", split->val_fraction);
    if (split->val_fraction > 0 && !split->val_path) return errorf("a val fraction needs a validation output file");
    if (split->val_path && strcmp(split->val_path, split->out_path) == 0)
        return errorf("%s: the training and validation outputs are the same file", split->out_path);
    Sink s = {.split = split, .eos = eos, .result = result};
    TRY(token_writer_create(&s.train, split->out_path, vocab, eos));
    Status st = STATUS_OK;
    if (split->val_fraction > 0) st = token_writer_create(&s.val, split->val_path, vocab, eos);
    Progress progress;
    progress_begin(&progress, "data: input file", n_inputs);
    for (int i = 0; i < n_inputs && st == STATUS_OK; i++) {
        st = source(ctx, inputs[i], &s);
        result->inputs++;
        progress_update(&progress, i + 1);
    }
    if (st == STATUS_OK) progress_end(&progress);
    if (st == STATUS_OK) sink_end(&s);
    if (st == STATUS_OK && result->train.documents + result->val.documents == 0)
        st = errorf("the inputs hold no document");
    if (st == STATUS_OK && s.val && result->val.documents == 0)
        st = errorf("the split drew no validation document out of %llu; raise the val fraction",
                    (unsigned long long)result->train.documents);
    if (st == STATUS_OK && s.val && result->train.documents == 0)
        st = errorf("the split drew every one of %llu documents for validation; lower the val fraction",
                    (unsigned long long)result->val.documents);
    if (st == STATUS_OK) st = token_writer_finish(s.train);
    if (st == STATUS_OK && s.val) st = token_writer_finish(s.val);
    if (st != STATUS_OK) {
        token_writer_discard(s.train);
        token_writer_discard(s.val);
        return STATUS_ERROR;
    }
    st = token_writer_commit(s.train);
    if (st == STATUS_OK && s.val) return token_writer_commit(s.val);
    token_writer_discard(s.val);
    return st;
}

static FILE *open_input(const char *path) {
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        errno = EISDIR;
        return NULL;
    }
    return fopen(path, "rb");
}

/* ---- text ---- */

static int is_blank(const char *line, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (line[i] != ' ' && line[i] != '\t' && line[i] != '\r' && line[i] != '\n') return 0;
    return 1;
}

/* How text becomes tokens: byte by byte, or a whole document at a time through a tokenizer. */
typedef struct {
    TextDocs docs;
    const Tokenizer *tok;   /* NULL: the byte tokenizer */
    uint32_t eos;
    const char *path;       /* the input being read, for errors */
    char *doc;              /* the current document's text (tokenizer only) */
    size_t doc_len, doc_cap;
    uint64_t doc_index;     /* documents of this input so far */
} TextContext;

static Status put_bytes(Sink *s, TextContext *t, const char *bytes, size_t n) {
    if (t->tok) {
        if (t->doc_len + n > t->doc_cap) {
            size_t cap = t->doc_cap ? t->doc_cap : READ_BLOCK;
            while (cap < t->doc_len + n) cap *= 2;
            char *grown = realloc(t->doc, cap);
            if (!grown) return errorf("%s: out of memory for a document of %zu bytes", t->path, t->doc_len + n);
            t->doc = grown;
            t->doc_cap = cap;
        }
        memcpy(t->doc + t->doc_len, bytes, n);
        t->doc_len += n;
        return STATUS_OK;
    }
    int32_t ids[1024];
    for (size_t at = 0; at < n; at += 1024) {
        size_t m = n - at < 1024 ? n - at : 1024;
        byte_tokens_encode((const unsigned char *)bytes + at, m, ids);
        TRY(sink_put(s, ids, m));
    }
    return STATUS_OK;
}

/* Ends a document. A tokenizer encodes it whole, with its special tokens (a BOS where its
 * post-processor adds one), and eos follows unless the encoding already ends with it. */
static Status put_eos(Sink *s, TextContext *t) {
    int32_t eos = t->tok ? (int32_t)t->eos : BYTE_TOKENIZER_EOS;
    t->doc_index++;
    if (!t->tok) return sink_put(s, &eos, 1);
    int32_t *ids = NULL;
    int64_t n = 0;
    Status st = tokenizer_encode(t->tok, t->doc, t->doc_len, 1, &ids, &n);
    if (st != STATUS_OK) return error_context("%s: document %llu: ", t->path, (unsigned long long)t->doc_index);
    t->doc_len = 0;
    st = sink_put(s, ids, (size_t)n);
    if (st == STATUS_OK && (n == 0 || ids[n - 1] != eos)) st = sink_put(s, &eos, 1);
    free(ids);
    return st;
}

static Status text_whole_file(FILE *in, const char *path, Sink *s, TextContext *t) {
    char *block = malloc(READ_BLOCK);
    if (!block) return errorf("%s: out of memory", path);
    size_t n, total = 0;
    Status st = STATUS_OK;
    while (st == STATUS_OK && (n = fread(block, 1, READ_BLOCK, in)) > 0) {
        st = put_bytes(s, t, block, n);
        total += n;
    }
    free(block);
    if (st == STATUS_OK && ferror(in)) st = errorf("%s: read error", path);
    return st == STATUS_OK && total > 0 ? put_eos(s, t) : st;
}

/* Paragraph and line modes; a line's own "\n" or "\r\n" is dropped and, inside a paragraph,
 * written back as "\n" between lines. */
static Status text_by_lines(FILE *in, const char *path, Sink *s, TextContext *t) {
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int open_doc = 0;
    Status st = STATUS_OK;
    while (st == STATUS_OK && (len = getline(&line, &cap, in)) >= 0) {
        size_t n = (size_t)len;
        if (is_blank(line, n)) {
            if (open_doc) st = put_eos(s, t);
            open_doc = 0;
            continue;
        }
        if (n && line[n - 1] == '\n') n--;
        if (n && line[n - 1] == '\r') n--;
        if (open_doc) st = put_bytes(s, t, "\n", 1);
        if (st == STATUS_OK) st = put_bytes(s, t, line, n);
        open_doc = 1;
        if (st == STATUS_OK && t->docs == TEXT_DOCS_LINE) {
            st = put_eos(s, t);
            open_doc = 0;
        }
    }
    free(line);
    if (st == STATUS_OK && ferror(in)) st = errorf("%s: read error", path);
    if (st == STATUS_OK && open_doc) st = put_eos(s, t);
    return st;
}

static Status text_source(void *ctx, const char *path, Sink *s) {
    TextContext *t = ctx;
    FILE *in = open_input(path);
    if (!in) return errorf("%s: %s", path, strerror(errno));
    t->path = path;
    t->doc_len = 0;
    t->doc_index = 0;
    Status st = t->docs == TEXT_DOCS_FILE ? text_whole_file(in, path, s, t) : text_by_lines(in, path, s, t);
    fclose(in);
    return st;
}

Status prepare_text(const char *const *inputs, int n_inputs, TextDocs docs, const SplitOptions *split,
                    PrepareResult *result) {
    TextContext t = {.docs = docs};
    return run_split(inputs, n_inputs, BYTE_TOKENIZER_VOCAB, BYTE_TOKENIZER_EOS, split, text_source, &t, result);
}

Status prepare_text_tokenized(const char *const *inputs, int n_inputs, TextDocs docs, const Tokenizer *tok,
                              uint32_t eos_id, const SplitOptions *split, PrepareResult *result) {
    memset(result, 0, sizeof *result);
    int64_t vocab = tokenizer_vocab_size(tok);
    if (vocab > (int64_t)TOKEN_FILE_MAX_VOCAB)
        return errorf("the tokenizer's vocabulary (%lld) is larger than a token file holds", (long long)vocab);
    if ((int64_t)eos_id >= vocab) return errorf("eos_id %u is not below vocab_size %lld", eos_id, (long long)vocab);
    TextContext t = {.docs = docs, .tok = tok, .eos = eos_id};
    Status st = run_split(inputs, n_inputs, (uint32_t)vocab, eos_id, split, text_source, &t, result);
    free(t.doc);
    return st;
}

/* ---- llm.c shards ---- */

enum { LLMC_HEADER_INTS = 256 };

typedef struct {
    int token_bytes;
    uint32_t vocab_size;
} LlmcContext;

static int32_t le_int32(const unsigned char *p) {
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
}

/* The token width the header declares, after checking that the file holds exactly its tokens. */
static Status llmc_header(const char *path, int *token_bytes, uint64_t *n_tokens) {
    FILE *in = open_input(path);
    if (!in) return errorf("%s: %s", path, strerror(errno));
    unsigned char header[LLMC_HEADER_INTS * 4];
    size_t got = fread(header, 1, sizeof header, in);
    struct stat sb;
    int stat_ok = fstat(fileno(in), &sb) == 0;
    fclose(in);
    if (got != sizeof header)
        return errorf("%s: %zu bytes, shorter than llm.c's %zu-byte header", path, got, sizeof header);
    int32_t magic = le_int32(header), version = le_int32(header + 4), count = le_int32(header + 8);
    if (magic == 20240520 && version == 1)
        *token_bytes = 2;
    else if (magic == 20240801 && version == 7)
        *token_bytes = 4;
    else
        return errorf("%s: not an llm.c token shard (magic %d version %d; expected 20240520 version 1 or "
                      "20240801 version 7)",
                      path, magic, version);
    if (count < 0) return errorf("%s: the header declares %d tokens", path, count);
    if (!stat_ok) return errorf("%s: cannot stat", path);
    uint64_t expected = sizeof header + (uint64_t)count * (uint64_t)*token_bytes, size = (uint64_t)sb.st_size;
    if (size < expected)
        return errorf("%s: truncated: the header declares %d tokens (%llu bytes) but the file has %llu bytes", path,
                      count, (unsigned long long)expected, (unsigned long long)size);
    if (size > expected)
        return errorf("%s: %llu bytes after the %d tokens the header declares", path,
                      (unsigned long long)(size - expected), count);
    *n_tokens = (uint64_t)count;
    return STATUS_OK;
}

static Status llmc_source(void *ctx, const char *path, Sink *s) {
    const LlmcContext *c = ctx;
    int token_bytes = 0;
    uint64_t n = 0;
    TRY(llmc_header(path, &token_bytes, &n));
    if (token_bytes != c->token_bytes)
        return errorf("%s: holds uint%d tokens where the first shard holds uint%d", path, token_bytes * 8,
                      c->token_bytes * 8);
    FILE *in = open_input(path);
    if (!in) return errorf("%s: %s", path, strerror(errno));
    unsigned char *raw = malloc((size_t)READ_BLOCK * 4);
    int32_t *ids = malloc((size_t)READ_BLOCK * sizeof *ids);
    Status st = raw && ids ? STATUS_OK : errorf("%s: out of memory", path);
    if (st == STATUS_OK && fseek(in, LLMC_HEADER_INTS * 4, SEEK_SET) != 0) st = errorf("%s: cannot seek", path);
    for (uint64_t at = 0; at < n && st == STATUS_OK; at += READ_BLOCK) {
        size_t m = n - at < READ_BLOCK ? (size_t)(n - at) : READ_BLOCK;
        if (fread(raw, (size_t)token_bytes, m, in) != m) {
            st = errorf("%s: read error at token %llu", path, (unsigned long long)at);
            break;
        }
        for (size_t i = 0; i < m; i++) {
            const unsigned char *p = raw + i * (size_t)token_bytes;
            uint32_t id = token_bytes == 2 ? (uint32_t)p[0] | (uint32_t)p[1] << 8 : (uint32_t)le_int32(p);
            if (id >= c->vocab_size) {
                st = errorf("%s: token %u at position %llu is not below vocab_size %u", path, id,
                            (unsigned long long)(at + i), c->vocab_size);
                break;
            }
            ids[i] = (int32_t)id;
        }
        if (st == STATUS_OK) st = sink_put(s, ids, m);
    }
    free(raw);
    free(ids);
    fclose(in);
    return st;
}

Status prepare_llmc_bin(const char *const *inputs, int n_inputs, int64_t vocab_size, int64_t eos_id,
                        const SplitOptions *split, PrepareResult *result) {
    memset(result, 0, sizeof *result);
    if (n_inputs <= 0) return errorf("no input files given");
    /* Every header first: a bad shard is reported before anything is written. */
    LlmcContext c = {0};
    for (int i = 0; i < n_inputs; i++) {
        int token_bytes = 0;
        uint64_t n = 0;
        TRY(llmc_header(inputs[i], &token_bytes, &n));
        if (i == 0) c.token_bytes = token_bytes;
        if (token_bytes != c.token_bytes)
            return errorf("%s: holds uint%d tokens where %s holds uint%d", inputs[i], token_bytes * 8, inputs[0],
                          c.token_bytes * 8);
    }
    int64_t vocab = vocab_size >= 0 ? vocab_size : c.token_bytes == 2 ? 50257 : 128256;
    int64_t eos = eos_id >= 0 ? eos_id : c.token_bytes == 2 ? 50256 : 128000;
    if (vocab < 1 || vocab > (int64_t)TOKEN_FILE_MAX_VOCAB)
        return errorf("vocab_size %lld is out of range [1, %u]", (long long)vocab, TOKEN_FILE_MAX_VOCAB);
    if (eos >= vocab) return errorf("eos_id %lld is not below vocab_size %lld", (long long)eos, (long long)vocab);
    c.vocab_size = (uint32_t)vocab;
    return run_split(inputs, n_inputs, (uint32_t)vocab, (uint32_t)eos, split, llmc_source, &c, result);
}

/* ---- JSON lines ---- */

typedef struct {
    uint32_t vocab_size, eos_id;
    int32_t *ids;
    size_t cap;
} JsonlContext;

static Status jsonl_line(JsonlContext *c, const char *path, unsigned long long line_no, const char *text,
                         Sink *s) {
    cJSON *root = cJSON_Parse(text);
    if (!root) return errorf("%s:%llu: not valid JSON", path, line_no);
    const cJSON *arr = root;
    if (cJSON_IsObject(root)) {
        arr = cJSON_GetObjectItemCaseSensitive(root, "tokens");
        if (!arr) arr = cJSON_GetObjectItemCaseSensitive(root, "input_ids");
    }
    Status st = STATUS_OK;
    if (!cJSON_IsArray(arr)) {
        st = errorf("%s:%llu: expected an array of token ids (or an object with \"tokens\" or \"input_ids\")",
                    path, line_no);
        goto done;
    }
    size_t n = (size_t)cJSON_GetArraySize(arr);
    if (n + 1 > c->cap) {
        int32_t *grown = realloc(c->ids, (n + 1) * sizeof *grown);
        if (!grown) {
            st = errorf("%s:%llu: out of memory", path, line_no);
            goto done;
        }
        c->ids = grown;
        c->cap = n + 1;
    }
    size_t k = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, arr) {
        double v = cJSON_IsNumber(item) ? item->valuedouble : -1;
        if (!cJSON_IsNumber(item) || v != floor(v) || v < 0 || v >= (double)c->vocab_size) {
            char *shown = cJSON_PrintUnformatted(item);
            st = errorf("%s:%llu: element %zu (%s) is not a token id in [0, vocab_size %u)", path, line_no, k,
                        shown ? shown : "?", c->vocab_size);
            free(shown);
            goto done;
        }
        c->ids[k++] = (int32_t)v;
    }
    if (k == 0) goto done;
    if ((uint32_t)c->ids[k - 1] != c->eos_id) c->ids[k++] = (int32_t)c->eos_id;
    st = sink_put(s, c->ids, k);
done:
    cJSON_Delete(root);
    return st;
}

static Status jsonl_source(void *ctx, const char *path, Sink *s) {
    JsonlContext *c = ctx;
    FILE *in = open_input(path);
    if (!in) return errorf("%s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    unsigned long long line_no = 0;
    Status st = STATUS_OK;
    while (st == STATUS_OK && (len = getline(&line, &cap, in)) >= 0) {
        line_no++;
        if (is_blank(line, (size_t)len)) continue;
        if (strlen(line) != (size_t)len) {
            st = errorf("%s:%llu: a NUL byte inside the line", path, line_no);
            break;
        }
        st = jsonl_line(c, path, line_no, line, s);
    }
    if (st == STATUS_OK && ferror(in)) st = errorf("%s: read error", path);
    free(line);
    fclose(in);
    return st;
}

Status prepare_jsonl(const char *const *inputs, int n_inputs, uint32_t vocab_size, uint32_t eos_id,
                     const SplitOptions *split, PrepareResult *result) {
    memset(result, 0, sizeof *result);
    if (vocab_size < 1 || vocab_size > TOKEN_FILE_MAX_VOCAB)
        return errorf("vocab_size %u is out of range [1, %u]", vocab_size, TOKEN_FILE_MAX_VOCAB);
    if (eos_id >= vocab_size) return errorf("eos_id %u is not below vocab_size %u", eos_id, vocab_size);
    JsonlContext c = {.vocab_size = vocab_size, .eos_id = eos_id};
    Status st = run_split(inputs, n_inputs, vocab_size, eos_id, split, jsonl_source, &c, result);
    free(c.ids);
    return st;
}
