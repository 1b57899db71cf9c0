/* Token files and data preparation: write/read round trips, atomic outputs, text -> tokens ->
 * bytes, llm.c shards, JSON lines, the train/val split, the CLI, and every malformed input
 * (wrong dtype, missing parts, ids out of range, truncation, flipped bytes) refused in one line. */
#include <dirent.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/rng.h"
#include "data/byte_tokenizer.h"
#include "data/hdf5_errors.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "data/token_file.h"
#include "harness.h"
#include "train/cmd_data.h"

static char work_dir[64];

/* work_dir/name, kept for the whole test (the same name gives the same pointer). */
static char *paths[256];
static int n_paths;

static const char *at(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *at(const char *fmt, ...) {
    char b[256];
    int n = snprintf(b, sizeof b, "%s/", work_dir);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b + n, sizeof b - (size_t)n, fmt, ap);
    va_end(ap);
    for (int i = 0; i < n_paths; i++)
        if (strcmp(paths[i], b) == 0) return paths[i];
    if (n_paths == 256) exit(1);
    paths[n_paths] = test_alloc(strlen(b) + 1);
    strcpy(paths[n_paths], b);
    return paths[n_paths++];
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    fclose(f);
}

static unsigned char *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = test_alloc((size_t)size + 1);
    *n = fread(p, 1, (size_t)size, f);
    fclose(f);
    return p;
}

static int file_exists(const char *path) { return access(path, F_OK) == 0; }

static int count_names(const char *part) {
    DIR *d = opendir(work_dir);
    struct dirent *e;
    int n = 0;
    while (d && (e = readdir(d)) != NULL) n += strstr(e->d_name, part) != NULL;
    if (d) closedir(d);
    return n;
}

/* An error must be one line naming the file (file_part) and saying what (needle). */
static void expect_error(Status st, const char *file_part, const char *needle, const char *what) {
    const char *msg = error_message();
    CHECK(st != STATUS_OK && strstr(msg, needle) && strstr(msg, file_part) && !strchr(msg, '\n'),
          "%s should fail naming '%s' and saying '%s'; got %s", what, file_part, needle,
          st == STATUS_OK ? "success" : msg);
    error_clear();
}

/* Every token of a file (NULL on error, the error left set). */
static int32_t *read_all(const char *path, uint64_t *n) {
    TokenFile *f = NULL;
    if (token_file_open(&f, path) != STATUS_OK) return NULL;
    *n = token_file_info(f)->n_tokens;
    int32_t *ids = test_alloc((size_t)(*n ? *n : 1) * sizeof *ids);
    Status st = token_file_read(f, 0, *n, ids);
    token_file_close(f);
    if (st != STATUS_OK) {
        free(ids);
        return NULL;
    }
    return ids;
}

static void write_tokens(const char *path, uint32_t vocab, uint32_t eos, const int32_t *ids, size_t n) {
    TokenWriter *w = NULL;
    if (!CHECK_OK(token_writer_create(&w, path, vocab, eos))) exit(1);
    CHECK_OK(token_writer_append(w, ids, n));
    if (!CHECK_OK(token_writer_commit(w))) exit(1);
}

/* ---- the format ---- */

static void test_round_trip(void) {
    enum { N = 200000 };
    int32_t *ids = test_alloc(N * sizeof *ids);
    for (int i = 0; i < N; i++) ids[i] = (int32_t)rng_below(1, 1, (uint64_t)i, 257);
    ids[N - 1] = 17; /* ends without eos: the last document still counts */
    write_tokens(at("u16.h5"), 257, 256, ids, N);
    TokenFile *f = NULL;
    if (CHECK_OK(token_file_open(&f, at("u16.h5")))) {
        const TokenFileInfo *info = token_file_info(f);
        CHECK(info->n_tokens == N && info->token_bytes == 2 && info->vocab_size == 257 && info->eos_id == 256 &&
                  info->chunk == TOKEN_FILE_CHUNK && info->fletcher32,
              "uint16 file: n %llu bytes %d vocab %u eos %u chunk %llu fletcher32 %d",
              (unsigned long long)info->n_tokens, info->token_bytes, info->vocab_size, info->eos_id,
              (unsigned long long)info->chunk, info->fletcher32);
        int32_t part[40];
        CHECK_OK(token_file_read(f, TOKEN_FILE_CHUNK - 20, 40, part));
        CHECK(memcmp(part, ids + TOKEN_FILE_CHUNK - 20, sizeof part) == 0, "a read across a chunk boundary");
        expect_error(token_file_read(f, N - 5, 6, part), "u16.h5", "past the end", "a read past the end");
        token_file_close(f);
    }
    uint64_t n = 0;
    int32_t *back = read_all(at("u16.h5"), &n);
    CHECK(back && n == N && memcmp(back, ids, N * sizeof *ids) == 0, "uint16 round trip");
    free(back);
    uint64_t eos_count = 0;
    uint32_t max_id = 0;
    for (int i = 0; i < N; i++) {
        eos_count += ids[i] == 256;
        if ((uint32_t)ids[i] > max_id) max_id = (uint32_t)ids[i];
    }
    TokenFileStats s;
    if (CHECK_OK(token_file_scan(at("u16.h5"), &s)))
        CHECK(s.eos_count == eos_count && s.documents == eos_count + 1 && s.max_id == max_id,
              "scan: %llu eos, %llu documents, max %u", (unsigned long long)s.eos_count,
              (unsigned long long)s.documents, s.max_id);

    /* A vocabulary past 65536 is stored as uint32. */
    for (int i = 0; i < 1000; i++) ids[i] = (int32_t)rng_below(1, 2, (uint64_t)i, 100000);
    write_tokens(at("u32.h5"), 100000, 5, ids, 1000);
    back = read_all(at("u32.h5"), &n);
    if (CHECK_OK(token_file_scan(at("u32.h5"), &s)))
        CHECK(s.info.token_bytes == 4 && s.info.chunk == 1000, "uint32 storage, one chunk of the file's size");
    CHECK(back && n == 1000 && memcmp(back, ids, 1000 * sizeof *ids) == 0, "uint32 round trip");
    free(back);

    write_tokens(at("empty.h5"), 257, 256, ids, 0);
    if (CHECK_OK(token_file_scan(at("empty.h5"), &s)))
        CHECK(s.info.n_tokens == 0 && s.documents == 0, "an empty file holds no document");
    free(ids);
}

static void test_atomic_writes(void) {
    TokenWriter *w = NULL;
    int32_t ids[3] = {1, 2, 3};
    CHECK_OK(token_writer_create(&w, at("atomic.h5"), 10, 0));
    CHECK_OK(token_writer_append(w, ids, 3));
    CHECK(!file_exists(at("atomic.h5")) && count_names("atomic.h5.tmp.") == 1,
          "while writing, only the temporary file exists");
    ids[1] = 10;
    expect_error(token_writer_append(w, ids, 3), "atomic.h5", "token 10 at position 4 is not below vocab_size 10",
                 "appending an id >= vocab_size");
    token_writer_discard(w);
    CHECK(!file_exists(at("atomic.h5")) && count_names("atomic.h5") == 0, "a discarded writer leaves nothing");
    expect_error(token_writer_create(&w, at("x.h5"), 10, 10), "x.h5", "eos_id 10 is not below vocab_size 10",
                 "eos outside the vocabulary");
    expect_error(token_writer_create(&w, at("no-such-dir/x.h5"), 10, 0), "no-such-dir/x.h5", "cannot create",
                 "a file in a missing directory");
    CHECK(count_names(".tmp.") == 0, "no temporary file is left behind");
}

/* ---- malformed files ---- */

typedef struct {
    hid_t type;        /* dtype of /tokens; 0 for no /tokens */
    int rank;          /* 1, or 2 for [n / 2, 2] */
    int chunked;
    int attrs_on_dataset;
    int64_t vocab, eos; /* < 0: the attribute is absent */
    int vocab_is_float;
    int tokens_is_group;
} RawFile;

/* A token file written directly with HDF5, for layouts our writer never produces. */
static void write_raw(const char *path, const RawFile *spec, const uint32_t *ids, hsize_t n) {
    hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), obj = file;
    hid_t ds = -1;
    if (spec->tokens_is_group) {
        H5Gclose(H5Gcreate2(file, "tokens", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    } else if (spec->type) {
        hsize_t dims[2] = {spec->rank == 2 ? n / 2 : n, 2}, chunk[2] = {16, 2};
        hid_t space = H5Screate_simple(spec->rank, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
        if (spec->chunked) H5Pset_chunk(dcpl, spec->rank, chunk);
        ds = H5Dcreate2(file, "tokens", spec->type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
        H5Dwrite(ds, H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, ids);
        H5Pclose(dcpl);
        H5Sclose(space);
        if (spec->attrs_on_dataset) obj = ds;
    } else {
        hsize_t one = 1;
        hid_t space = H5Screate_simple(1, &one, NULL);
        H5Dclose(H5Dcreate2(file, "other", H5T_STD_U16LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
        H5Sclose(space);
    }
    hid_t scalar = H5Screate(H5S_SCALAR);
    if (spec->vocab >= 0) {
        hid_t a = H5Acreate2(obj, "vocab_size", spec->vocab_is_float ? H5T_IEEE_F64LE : H5T_STD_I64LE, scalar,
                             H5P_DEFAULT, H5P_DEFAULT);
        double vf = (double)spec->vocab;
        H5Awrite(a, spec->vocab_is_float ? H5T_NATIVE_DOUBLE : H5T_NATIVE_INT64,
                 spec->vocab_is_float ? (const void *)&vf : (const void *)&spec->vocab);
        H5Aclose(a);
    }
    if (spec->eos >= 0) {
        hid_t a = H5Acreate2(obj, "eos_id", H5T_STD_U32LE, scalar, H5P_DEFAULT, H5P_DEFAULT);
        uint32_t e = (uint32_t)spec->eos;
        H5Awrite(a, H5T_NATIVE_UINT32, &e);
        H5Aclose(a);
    }
    H5Sclose(scalar);
    if (ds >= 0) H5Dclose(ds);
    H5Fclose(file);
}

static void test_malformed_files(void) {
    uint32_t ids[64];
    for (int i = 0; i < 64; i++) ids[i] = (uint32_t)(i % 50);
    const RawFile good = {.type = H5T_STD_U16LE, .rank = 1, .chunked = 1, .vocab = 100, .eos = 0};
    RawFile r;
    TokenFile *f = NULL;

    /* Layouts other tools write are accepted: attributes on /tokens, contiguous, big-endian. */
    r = good;
    r.attrs_on_dataset = 1;
    r.chunked = 0;
    r.type = H5T_STD_U16BE;
    write_raw(at("foreign.h5"), &r, ids, 64);
    uint64_t n = 0;
    int32_t *back = read_all(at("foreign.h5"), &n);
    int same = back && n == 64;
    for (int i = 0; same && i < 64; i++) same = back[i] == (int32_t)ids[i];
    CHECK(same, "a contiguous big-endian /tokens with attributes on the dataset reads back: %s",
          back ? "ok" : error_message());
    free(back);

    struct {
        const char *name, *needle;
        RawFile spec;
    } cases[] = {
        {"no-tokens.h5", "no dataset /tokens", {.vocab = 100, .eos = 0}},
        {"group.h5", "/tokens is not a readable dataset", {.tokens_is_group = 1, .vocab = 100, .eos = 0}},
        {"int32.h5", "dtype int32, expected uint16 or uint32", {.type = H5T_STD_I32LE, .rank = 1, .vocab = 100, .eos = 0}},
        {"float.h5", "dtype float32", {.type = H5T_IEEE_F32LE, .rank = 1, .vocab = 100, .eos = 0}},
        {"uint8.h5", "dtype uint8", {.type = H5T_STD_U8LE, .rank = 1, .vocab = 100, .eos = 0}},
        {"uint64.h5", "dtype uint64", {.type = H5T_STD_U64LE, .rank = 1, .vocab = 100, .eos = 0}},
        {"2d.h5", "must be 1-D, it has 2 dimensions", {.type = H5T_STD_U16LE, .rank = 2, .vocab = 100, .eos = 0}},
        {"no-vocab.h5", "attribute 'vocab_size' is missing", {.type = H5T_STD_U16LE, .rank = 1, .vocab = -1, .eos = 0}},
        {"no-eos.h5", "attribute 'eos_id' is missing", {.type = H5T_STD_U16LE, .rank = 1, .vocab = 100, .eos = -1}},
        {"float-vocab.h5", "attribute 'vocab_size' must be an integer",
         {.type = H5T_STD_U16LE, .rank = 1, .vocab = 100, .eos = 0, .vocab_is_float = 1}},
        {"eos-big.h5", "eos_id 100 is not below vocab_size 100", {.type = H5T_STD_U16LE, .rank = 1, .vocab = 100, .eos = 100}},
        {"vocab-zero.h5", "vocab_size 0 is out of range", {.type = H5T_STD_U16LE, .rank = 1, .vocab = 0, .eos = 0}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        write_raw(at("%s", cases[i].name), &cases[i].spec, ids, 64);
        expect_error(token_file_open(&f, at("%s", cases[i].name)), cases[i].name, cases[i].needle, cases[i].name);
        CHECK(f == NULL, "%s: no handle on error", cases[i].name);
    }

    write_bytes(at("text.h5"), "hello, world\n", 13);
    expect_error(token_file_open(&f, at("text.h5")), "text.h5", "not a readable HDF5 file", "a text file");
    write_bytes(at("zero.h5"), "", 0);
    expect_error(token_file_open(&f, at("zero.h5")), "zero.h5", "not a readable HDF5 file", "an empty file");
    expect_error(token_file_open(&f, at("absent.h5")), "absent.h5", "No such file", "a missing file");
    expect_error(token_file_open(&f, work_dir), work_dir, "not a regular file", "a directory");

    /* An id >= vocab_size: the file opens (ids are checked as read), a read or scan that covers it
     * fails naming the position, and so does the loader's window holding it. */
    ids[37] = 150;
    write_raw(at("big-id.h5"), &good, ids, 64);
    int32_t buf[64];
    if (CHECK_OK(token_file_open(&f, at("big-id.h5")))) {
        CHECK_OK(token_file_read(f, 0, 30, buf));
        expect_error(token_file_read(f, 30, 10, buf), "big-id.h5", "token 150 at position 37 is not below vocab_size 100",
                     "reading an id >= vocab_size");
        token_file_close(f);
    }
    TokenFileStats s;
    expect_error(token_file_scan(at("big-id.h5"), &s), "big-id.h5", "token 150 at position 37", "scanning it");
    const char *pattern[] = {at("big-id.h5")};
    LoaderOptions o = {.patterns = pattern, .n_patterns = 1, .seq_len = 15, .world = 1};
    Loader *L = NULL;
    if (CHECK_OK(loader_open(&L, &o))) {
        CHECK_OK(loader_read_window(L, 1, buf));
        expect_error(loader_read_window(L, 2, buf), "big-id.h5", "token 150 at position 37", "the loader's window");
        loader_close(L);
    }
}

/* Truncations and single flipped bytes of a good file: each either fails in one line naming
 * the file, or (a byte HDF5 never reads) reads back the original tokens. Never a crash. */
static void test_damaged_files(void) {
    enum { N = 3000 };
    int32_t ids[N];
    for (int i = 0; i < N; i++) ids[i] = (int32_t)rng_below(2, 1, (uint64_t)i, 1000);
    write_tokens(at("intact.h5"), 1000, 0, ids, N);
    size_t size = 0;
    unsigned char *bytes = read_bytes(at("intact.h5"), &size);
    const char *damaged = at("damaged.h5");

    int bad_truncated = 0;
    for (size_t cut = 0; cut < size; cut += size / 61 + 1) {
        write_bytes(damaged, bytes, cut);
        TokenFileStats s;
        Status st = token_file_scan(damaged, &s);
        const char *msg = error_message();
        if (st == STATUS_OK || !strstr(msg, "damaged.h5") || strchr(msg, '\n')) {
            if (!bad_truncated++)
                fprintf(stderr, "truncated at %zu of %zu: %s\n", cut, size, st == STATUS_OK ? "accepted" : msg);
        }
        error_clear();
    }
    CHECK(bad_truncated == 0, "every truncation is refused in one line naming the file (%d were not)", bad_truncated);

    int bad_flips = 0, refused = 0, flips = 0;
    for (size_t i = 0; i < size; i++) {
        bytes[i] ^= 0x5A;
        write_bytes(damaged, bytes, size);
        bytes[i] ^= 0x5A;
        flips++;
        uint64_t n = 0;
        int32_t *back = read_all(damaged, &n);
        TokenFileStats s;
        Status scan = back ? token_file_scan(damaged, &s) : STATUS_ERROR;
        if (back && scan == STATUS_OK) {
            int same = n == N && memcmp(back, ids, sizeof ids) == 0 && s.info.vocab_size == 1000 && s.info.eos_id == 0;
            if (!same && bad_flips++ < 8) fprintf(stderr, "flip at byte %zu: read back different tokens\n", i);
        } else {
            const char *msg = error_message();
            refused++;
            if ((!strstr(msg, "damaged.h5") || strchr(msg, '\n')) && !bad_flips++)
                fprintf(stderr, "flip at byte %zu: %s\n", i, msg);
        }
        free(back);
        error_clear();
    }
    CHECK(bad_flips == 0, "every flipped byte is refused naming the file or harmless (%d of %d were not)", bad_flips,
          flips);
    CHECK(refused > flips / 2, "most flipped bytes are detected (%d of %d)", refused, flips);
    free(bytes);
    unlink(damaged);
}

/* ---- preparation ---- */

/* The documents of a token file: runs ended by eos (or by the end), decoded as bytes. */
typedef struct {
    char **text;
    size_t *len;
    int n;
} Docs;

static Docs read_docs(const char *path) {
    Docs d = {0};
    uint64_t n = 0;
    int32_t *ids = read_all(path, &n);
    if (!ids) return d;
    d.text = test_alloc((n + 1) * sizeof *d.text);
    d.len = test_alloc((n + 1) * sizeof *d.len);
    uint64_t start = 0;
    for (uint64_t i = 0; i <= n; i++) {
        if (i < n && ids[i] != BYTE_TOKENIZER_EOS) continue;
        if (i == n && start == n) break;
        d.text[d.n] = test_alloc(i - start + 1);
        d.len[d.n] = byte_tokens_decode(ids + start, i - start, -1, (unsigned char *)d.text[d.n]);
        d.text[d.n][d.len[d.n]] = 0;
        d.n++;
        start = i + 1;
    }
    free(ids);
    return d;
}

static void free_docs(Docs *d) {
    for (int i = 0; i < d->n; i++) free(d->text[i]);
    free(d->text);
    free(d->len);
}

static void test_text(void) {
    /* Every byte value, UTF-8, CRLF and NUL survive; each file is a document. */
    static const char tail[] = "caf\xc3\xa9 \xe2\x82\xac\r\n\x00 end\n\n\n";
    enum { TAIL = sizeof tail - 1, ALL = 256 + TAIL };
    unsigned char all[ALL];
    for (int i = 0; i < 256; i++) all[i] = (unsigned char)i;
    memcpy(all + 256, tail, TAIL);
    write_bytes(at("a.txt"), all, ALL);
    write_bytes(at("b.txt"), "In the beginning.\n", 18);
    write_bytes(at("c.txt"), "", 0);
    const char *inputs[] = {at("a.txt"), at("b.txt"), at("c.txt")};
    SplitOptions split = {.out_path = at("text.h5")};
    PrepareResult r;
    CHECK_OK(prepare_text(inputs, 3, TEXT_DOCS_FILE, &split, &r));
    CHECK(r.train.documents == 2 && r.train.tokens == ALL + 18 + 2 && r.inputs == 3 && r.vocab_size == 257 &&
              r.eos_id == 256,
          "text: %llu documents, %llu tokens (an empty file is no document)", (unsigned long long)r.train.documents,
          (unsigned long long)r.train.tokens);
    Docs d = read_docs(at("text.h5"));
    CHECK(d.n == 2 && d.len[0] == ALL && memcmp(d.text[0], all, ALL) == 0 && d.len[1] == 18 &&
              memcmp(d.text[1], "In the beginning.\n", 18) == 0,
          "text -> tokens -> bytes gives back each file exactly");
    free_docs(&d);

    const char *para = "\n\nfirst line\r\nsecond line\n\n \t\nthird\n\n\nfourth\nlast line without newline";
    write_bytes(at("p.txt"), para, strlen(para));
    const char *pin[] = {at("p.txt")};
    split.out_path = at("para.h5");
    CHECK_OK(prepare_text(pin, 1, TEXT_DOCS_PARAGRAPH, &split, &r));
    d = read_docs(at("para.h5"));
    CHECK(d.n == 3 && strcmp(d.text[0], "first line\nsecond line") == 0 && strcmp(d.text[1], "third") == 0 &&
              strcmp(d.text[2], "fourth\nlast line without newline") == 0,
          "paragraph documents (got %d)", d.n);
    free_docs(&d);
    split.out_path = at("lines.h5");
    CHECK_OK(prepare_text(pin, 1, TEXT_DOCS_LINE, &split, &r));
    d = read_docs(at("lines.h5"));
    CHECK(d.n == 5 && strcmp(d.text[1], "second line") == 0 && strcmp(d.text[4], "last line without newline") == 0,
          "line documents (got %d)", d.n);
    free_docs(&d);

    const char *missing[] = {at("b.txt"), at("missing.txt")};
    split.out_path = at("never.h5");
    expect_error(prepare_text(missing, 2, TEXT_DOCS_FILE, &split, &r), "missing.txt", "No such file", "a missing input");
    CHECK(!file_exists(at("never.h5")) && count_names(".tmp.") == 0, "a failed conversion leaves no output");
}

static int doc_index(const Docs *d, const char *text) {
    for (int i = 0; i < d->n; i++)
        if (strcmp(d->text[i], text) == 0) return i;
    return -1;
}

static void test_split(void) {
    enum { LINES = 400 };
    FILE *f = fopen(at("corpus.txt"), "w");
    for (int i = 0; i < LINES; i++) fprintf(f, "document number %d\n", i);
    fclose(f);
    const char *in[] = {at("corpus.txt")};
    SplitOptions split = {.out_path = at("train.h5"), .val_path = at("val.h5"), .val_fraction = 0.25, .seed = 9};
    PrepareResult r;
    CHECK_OK(prepare_text(in, 1, TEXT_DOCS_LINE, &split, &r));
    Docs train = read_docs(at("train.h5")), val = read_docs(at("val.h5"));
    int each_once = train.n + val.n == LINES;
    for (int i = 0; i < LINES && each_once; i++) {
        char line[64];
        snprintf(line, sizeof line, "document number %d", i);
        each_once = (doc_index(&train, line) >= 0) != (doc_index(&val, line) >= 0);
    }
    CHECK(each_once, "every document goes to exactly one of train and val");
    CHECK(val.n > LINES / 8 && val.n < LINES * 3 / 8 && r.val.documents == (uint64_t)val.n &&
              r.train.documents == (uint64_t)train.n,
          "val holds %d of %d documents for fraction 0.25", val.n, LINES);
    free_docs(&train);

    split.out_path = at("train2.h5");
    split.val_path = at("val2.h5");
    CHECK_OK(prepare_text(in, 1, TEXT_DOCS_LINE, &split, &r));
    Docs again = read_docs(at("val2.h5"));
    int same = again.n == val.n;
    for (int i = 0; same && i < val.n; i++) same = strcmp(again.text[i], val.text[i]) == 0;
    CHECK(same, "the same seed draws the same split");
    free_docs(&again);
    split.seed = 10;
    CHECK_OK(prepare_text(in, 1, TEXT_DOCS_LINE, &split, &r));
    again = read_docs(at("val2.h5"));
    same = again.n == val.n;
    for (int i = 0; same && i < val.n; i++) same = strcmp(again.text[i], val.text[i]) == 0;
    CHECK(!same, "another seed draws another split");
    free_docs(&again);
    free_docs(&val);

    write_bytes(at("tiny.txt"), "one\ntwo\n", 8);
    const char *tiny[] = {at("tiny.txt")};
    split = (SplitOptions){.out_path = at("tiny-train.h5"), .val_path = at("tiny-val.h5"), .val_fraction = 0.001};
    expect_error(prepare_text(tiny, 1, TEXT_DOCS_LINE, &split, &r), "", "drew no validation document",
                 "a split that draws nothing");
    CHECK(!file_exists(at("tiny-train.h5")) && !file_exists(at("tiny-val.h5")) && count_names(".tmp.") == 0,
          "a failed split writes neither output");
    split.val_fraction = 1.5;
    expect_error(prepare_text(tiny, 1, TEXT_DOCS_LINE, &split, &r), "", "not in [0, 1)", "a fraction of 1.5");
}

static void write_llmc(const char *path, int32_t magic, int32_t version, int32_t count, const void *tokens,
                       size_t token_bytes, size_t extra) {
    int32_t header[256] = {0};
    header[0] = magic;
    header[1] = version;
    header[2] = count;
    FILE *f = fopen(path, "wb");
    fwrite(header, 4, 256, f);
    fwrite(tokens, token_bytes, (size_t)count + extra, f);
    fclose(f);
}

static void test_llmc_bin(void) {
    uint16_t small[300];
    uint32_t large[300];
    for (int i = 0; i < 300; i++) {
        small[i] = (uint16_t)(i % 7 == 0 ? 50256 : rng_below(3, 1, (uint64_t)i, 50000));
        large[i] = (uint32_t)(i % 7 == 0 ? 128000 : rng_below(3, 2, (uint64_t)i, 128256));
    }
    write_llmc(at("gpt2_000.bin"), 20240520, 1, 200, small, 2, 0);
    write_llmc(at("gpt2_001.bin"), 20240520, 1, 100, small + 200, 2, 0);
    const char *in[] = {at("gpt2_000.bin"), at("gpt2_001.bin")};
    SplitOptions split = {.out_path = at("gpt2.h5")};
    PrepareResult r;
    CHECK_OK(prepare_llmc_bin(in, 2, -1, -1, &split, &r));
    uint64_t n = 0;
    int32_t *back = read_all(at("gpt2.h5"), &n);
    int same = back && n == 300;
    for (int i = 0; same && i < 300; i++) same = back[i] == small[i];
    /* 43 eos (llm.c writes one before each document) and the run after the last. */
    CHECK(same && r.vocab_size == 50257 && r.eos_id == 50256 && r.train.documents == 44,
          "GPT-2 shards concatenate unchanged (vocab %u eos %u, %llu documents)", r.vocab_size, r.eos_id,
          (unsigned long long)r.train.documents);
    free(back);

    write_llmc(at("llama.bin"), 20240801, 7, 300, large, 4, 0);
    const char *in32[] = {at("llama.bin")};
    split.out_path = at("llama.h5");
    CHECK_OK(prepare_llmc_bin(in32, 1, -1, -1, &split, &r));
    back = read_all(at("llama.h5"), &n);
    same = back && n == 300;
    for (int i = 0; same && i < 300; i++) same = back[i] == (int32_t)large[i];
    TokenFileStats s;
    CHECK_OK(token_file_scan(at("llama.h5"), &s));
    CHECK(same && r.vocab_size == 128256 && r.eos_id == 128000 && s.info.token_bytes == 4,
          "a Llama 3 shard converts to uint32 with vocab 128256, eos 128000");
    free(back);

    split.out_path = at("bad.h5");
    write_llmc(at("magic.bin"), 20240521, 1, 10, small, 2, 0);
    const char *one[] = {at("magic.bin")};
    expect_error(prepare_llmc_bin(one, 1, -1, -1, &split, &r), "magic.bin", "not an llm.c token shard (magic 20240521",
                 "a wrong magic");
    write_llmc(at("short.bin"), 20240520, 1, 100, small, 2, 0);
    truncate(at("short.bin"), 1024 + 150);
    one[0] = at("short.bin");
    expect_error(prepare_llmc_bin(one, 1, -1, -1, &split, &r), "short.bin", "truncated: the header declares 100 tokens",
                 "a truncated shard");
    write_llmc(at("long.bin"), 20240520, 1, 100, small, 2, 3);
    one[0] = at("long.bin");
    expect_error(prepare_llmc_bin(one, 1, -1, -1, &split, &r), "long.bin", "6 bytes after the 100 tokens", "trailing bytes");
    write_bytes(at("headerless.bin"), small, 100);
    one[0] = at("headerless.bin");
    expect_error(prepare_llmc_bin(one, 1, -1, -1, &split, &r), "headerless.bin", "shorter than llm.c's 1024-byte header",
                 "a file shorter than the header");
    const char *mixed[] = {at("gpt2_000.bin"), at("llama.bin")};
    expect_error(prepare_llmc_bin(mixed, 2, -1, -1, &split, &r), "llama.bin", "holds uint32 tokens", "mixed widths");
    expect_error(prepare_llmc_bin(in, 2, 50000, 0, &split, &r), "gpt2_000.bin", "is not below vocab_size 50000",
                 "an id >= --vocab-size");
    CHECK(!file_exists(at("bad.h5")) && count_names(".tmp.") == 0, "no output from a failed conversion");
}

static void test_jsonl(void) {
    const char *lines = "[1, 2, 3]\n\n{\"tokens\": [4, 5]}\n{\"input_ids\": [6, 9], \"text\": \"x\"}\n[]\n[7]\n";
    write_bytes(at("ok.jsonl"), lines, strlen(lines));
    const char *in[] = {at("ok.jsonl")};
    SplitOptions split = {.out_path = at("jsonl.h5")};
    PrepareResult r;
    CHECK_OK(prepare_jsonl(in, 1, 10, 9, &split, &r));
    uint64_t n = 0;
    int32_t *back = read_all(at("jsonl.h5"), &n);
    const int32_t want[] = {1, 2, 3, 9, 4, 5, 9, 6, 9, 7, 9};
    CHECK(back && n == 11 && memcmp(back, want, sizeof want) == 0 && r.train.documents == 4,
          "JSON lines: arrays and objects, eos appended unless present, blank and empty lines skipped");
    free(back);

    struct {
        const char *text, *needle;
    } bad[] = {
        {"[1, 2]\n[1, 2\n", "bad.jsonl:2: not valid JSON"},
        {"[1.5]\n", "bad.jsonl:1: element 0 (1.5) is not a token id in [0, vocab_size 10)"},
        {"[0, -1]\n", "bad.jsonl:1: element 1 (-1)"},
        {"[3, 10]\n", "bad.jsonl:1: element 1 (10)"},
        {"[\"a\"]\n", "element 0 (\"a\")"},
        {"{\"ids\": [1]}\n", "bad.jsonl:1: expected an array of token ids"},
        {"7\n", "bad.jsonl:1: expected an array"},
    };
    in[0] = at("bad.jsonl");
    split.out_path = at("bad-jsonl.h5");
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        write_bytes(at("bad.jsonl"), bad[i].text, strlen(bad[i].text));
        expect_error(prepare_jsonl(in, 1, 10, 9, &split, &r), "bad.jsonl", bad[i].needle, bad[i].text);
    }
    CHECK(!file_exists(at("bad-jsonl.h5")), "no output from bad JSON lines");
}

/* ---- the CLI ---- */

static Status run_cli(const char *first, ...) {
    char *argv[32];
    int argc = 0;
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && argc < 32; a = va_arg(ap, const char *)) argv[argc++] = (char *)a;
    va_end(ap);
    /* The subcommands print their results; keep the test's own output readable. */
    fflush(stdout);
    int saved = dup(1), null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    Status st = cmd_data(argc, argv);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    close(null);
    return st;
}

static void test_cli(void) {
    CHECK_OK(run_cli("--help", NULL));
    CHECK_OK(run_cli("text", "--help", NULL));
    CHECK_OK(run_cli("llmc-bin", "--help", NULL));
    CHECK_OK(run_cli("jsonl", "--help", NULL));
    CHECK_OK(run_cli("summary", "--help", NULL));
    CHECK_OK(run_cli("bench", "--help", NULL));
    CHECK_ERR(cmd_data(0, NULL), "missing subcommand");
    CHECK_ERR(run_cli("bogus", NULL), "unknown subcommand \"bogus\"");
    CHECK_ERR(run_cli("text", at("corpus.txt"), "--out", at("cli.h5"), "--frobnicate", "1", NULL),
              "unknown option --frobnicate");
    CHECK_ERR(run_cli("text", at("corpus.txt"), NULL), "--out is required");
    CHECK_ERR(run_cli("text", "--out", at("cli.h5"), NULL), "no input files");
    CHECK_ERR(run_cli("text", at("corpus.txt"), "--out", at("cli.h5"), "--val-fraction", "0.1", NULL),
              "--val-fraction needs --val-out");
    CHECK_ERR(run_cli("text", at("corpus.txt"), "--out", at("cli.h5"), "--docs", "chapter", NULL),
              "--docs must be file, paragraph or line");
    CHECK_ERR(run_cli("jsonl", at("ok.jsonl"), "--out", at("cli.h5"), NULL), "--vocab-size and --eos-id are required");
    CHECK_ERR(run_cli("llmc-bin", at("gpt2_000.bin"), "--out", at("cli.h5"), "--vocab-size", "x", NULL),
              "--vocab-size: expected an integer");
    CHECK(!file_exists(at("cli.h5")), "no output from refused commands");

    CHECK_OK(run_cli("text", at("corpus.txt"), "--docs", "line", "--out", at("cli.h5"), "--val-out", at("cli-val.h5"),
                     "--val-fraction", "0.1", "--seed", "3", NULL));
    CHECK(file_exists(at("cli.h5")) && file_exists(at("cli-val.h5")), "data text writes both outputs");
    CHECK_OK(run_cli("llmc-bin", at("gpt2_000.bin"), "--out", at("cli-llmc.h5"), NULL));
    CHECK_OK(run_cli("jsonl", at("ok.jsonl"), "--vocab-size", "10", "--eos-id", "9", "--out", at("cli-jsonl.h5"), NULL));
    CHECK_OK(run_cli("summary", at("cli.h5"), at("cli-val.h5"), at("cli-llmc.h5"), NULL));
    CHECK_ERR(run_cli("summary", at("cli.h5"), at("absent.h5"), NULL), "absent.h5");
    CHECK_OK(run_cli("bench", at("cli.h5"), "--seq-len", "15", "--rows", "2", "--seconds", "0.02", NULL));
    CHECK_ERR(run_cli("bench", at("cli.h5"), "--seq-len", "100000", "--seconds", "0.02", NULL),
              "fewer than one window");
}

static void remove_work_dir(void) {
    DIR *d = opendir(work_dir);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) unlink(at("%s", e->d_name));
    if (d) closedir(d);
    rmdir(work_dir);
    for (int i = 0; i < n_paths; i++) free(paths[i]);
}

/* Every file, dataset, attribute, dataspace, datatype and property list opened was closed. */
static void check_hdf5_all_closed(void) {
    const H5I_type_t kinds[] = {H5I_FILE, H5I_DATASET, H5I_ATTR, H5I_DATASPACE, H5I_DATATYPE, H5I_GENPROP_LST};
    hsize_t open_ids = 0;
    for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) {
        hsize_t n = 0;
        H5Inmembers(kinds[i], &n);
        open_ids += n;
    }
    CHECK(open_ids == 0, "%llu HDF5 objects were left open", (unsigned long long)open_ids);
}

/* LeakSanitizer's hook (unused in other builds): the blocks HDF5 1.10 leaks on corrupted files are
 * its own; anything leaked from our code still fails the sanitizer run. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) { return "leak:libhdf5_serial.so\n"; }

int main(void) {
    /* test_damaged_files makes HDF5 1.10 leak internal blocks, which its exit handler reports. */
    hdf5_skip_exit_cleanup();
    snprintf(work_dir, sizeof work_dir, "/tmp/mlatrain-data-XXXXXX");
    if (!mkdtemp(work_dir)) return 1;
    test_round_trip();
    test_atomic_writes();
    test_malformed_files();
    test_damaged_files();
    test_text();
    test_split();
    test_llmc_bin();
    test_jsonl();
    test_cli();
    remove_work_dir();
    check_hdf5_all_closed();
    return test_finish("test_data");
}
