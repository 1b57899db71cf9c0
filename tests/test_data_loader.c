/* The loader: the shuffle is a permutation, ranks split each epoch disjointly and completely, the
 * window stream is the same for any rank count, cursors resume exactly, and the validation order. */
#include <hdf5.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/loader.h"
#include "data/shuffle.h"
#include "data/token_file.h"
#include "harness.h"

enum { SEQ = 7, WIN = SEQ + 1, FILE_STRIDE = 1 << 18, VOCAB = 1 << 22 };

static char dir[64];
static char pattern[128];
static const char *patterns[1] = {pattern};

/* Window lengths chosen so that files end with partial windows and one file holds one window. */
static const int file_tokens[3] = {WIN * 13 + 5, WIN * 1, WIN * 30 + 7};
enum { N_WINDOWS = 13 + 1 + 30 };

/* File f's token j is f * FILE_STRIDE + j, so a window names itself by its first token. */
static void write_files(void) {
    for (int f = 0; f < 3; f++) {
        char path[128];
        snprintf(path, sizeof path, "%s/part-%d.h5", dir, f);
        TokenWriter *w = NULL;
        if (!CHECK_OK(token_writer_create(&w, path, VOCAB, 0))) exit(1);
        for (int j = 0; j < file_tokens[f]; j++) {
            int32_t id = f * FILE_STRIDE + j;
            token_writer_append(w, &id, 1);
        }
        if (!CHECK_OK(token_writer_commit(w))) exit(1);
    }
    snprintf(pattern, sizeof pattern, "%s/part-*.h5", dir);
}

static Loader *open_loader(uint64_t seed, int rank, int world, int shuffle, int max_open) {
    LoaderOptions o = {.patterns = patterns, .n_patterns = 1, .seq_len = SEQ, .seed = seed, .rank = rank,
                       .world = world, .shuffle = shuffle, .max_open_files = max_open};
    Loader *L = NULL;
    if (!CHECK_OK(loader_open(&L, &o))) exit(1);
    return L;
}

/* The first tokens of `calls` batches of `rows` windows, and every token when `tokens` is not
 * NULL; every window is also checked to be consecutive ids of one file from a window boundary. */
static int read_stream_tokens(Loader *L, int rows, int calls, int32_t *firsts, int32_t *tokens) {
    int32_t buf[64 * WIN];
    int bad = 0;
    for (int c = 0; c < calls; c++) {
        if (!CHECK_OK(loader_next(L, rows, buf))) return 0;
        for (int r = 0; r < rows; r++) {
            const int32_t *w = buf + r * WIN;
            int32_t j = w[0] % FILE_STRIDE;
            if (j % WIN != 0) bad++;
            for (int k = 1; k < WIN; k++)
                if (w[k] != w[0] + k) bad++;
            firsts[c * rows + r] = w[0];
        }
        if (tokens) memcpy(tokens + (size_t)c * rows * WIN, buf, (size_t)rows * WIN * sizeof *buf);
    }
    CHECK(bad == 0, "windows must be consecutive ids starting at a window boundary (%d bad)", bad);
    return 1;
}

static int read_stream(Loader *L, int rows, int calls, int32_t *firsts) {
    return read_stream_tokens(L, rows, calls, firsts, NULL);
}

/* Every window of the dataset, in dataset order, by first token. */
static void all_windows(int32_t *firsts) {
    int n = 0;
    for (int f = 0; f < 3; f++)
        for (int j = 0; j + WIN <= file_tokens[f]; j += WIN) firsts[n++] = f * FILE_STRIDE + j;
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static int same_set(const int32_t *a, const int32_t *b, int n) {
    int32_t *x = test_alloc((size_t)n * 4), *y = test_alloc((size_t)n * 4);
    memcpy(x, a, (size_t)n * 4);
    memcpy(y, b, (size_t)n * 4);
    qsort(x, (size_t)n, 4, cmp_i32);
    qsort(y, (size_t)n, 4, cmp_i32);
    int same = memcmp(x, y, (size_t)n * 4) == 0;
    free(x);
    free(y);
    return same;
}

static void test_shuffle_is_a_permutation(void) {
    const uint64_t sizes[] = {1, 2, 3, 5, 17, 64, 1000, 4097, 65537};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        uint64_t n = sizes[k];
        unsigned char *seen = calloc(n, 1);
        int ok = 1;
        uint64_t fixed = 0, same_as_other_seed = 0;
        for (uint64_t p = 0; p < n; p++) {
            uint64_t w = shuffle_window(42, 3, n, p);
            if (w >= n || seen[w]) ok = 0;
            else seen[w] = 1;
            fixed += w == p;
            same_as_other_seed += w == shuffle_window(43, 3, n, p);
        }
        CHECK(ok, "shuffle over n=%llu must be a permutation", (unsigned long long)n);
        if (n >= 64)
            CHECK(fixed < n / 8 && same_as_other_seed < n / 8,
                  "n=%llu: %llu fixed points, %llu positions equal under another seed: not shuffled",
                  (unsigned long long)n, (unsigned long long)fixed, (unsigned long long)same_as_other_seed);
        free(seen);
    }
}

static void test_dataset_and_validation_order(void) {
    Loader *L = open_loader(1, 0, 1, 0, 0);
    CHECK(loader_windows_per_epoch(L) == N_WINDOWS, "windows per epoch %llu, expected %d",
          (unsigned long long)loader_windows_per_epoch(L), N_WINDOWS);
    CHECK(loader_file_count(L) == 3 && strstr(loader_file_path(L, 2), "part-2.h5"), "globbed files in name order");
    CHECK(loader_total_tokens(L) == (uint64_t)(file_tokens[0] + file_tokens[1] + file_tokens[2]), "total tokens");
    CHECK(loader_vocab_size(L) == VOCAB && loader_eos_id(L) == 0, "vocab and eos from the files");
    int32_t expected[N_WINDOWS], got[2 * N_WINDOWS];
    all_windows(expected);
    /* The validation order: dataset order, one window after another, and round again. */
    read_stream(L, 4, 2 * N_WINDOWS / 4, got);
    CHECK(memcmp(got, expected, sizeof expected) == 0, "validation order is dataset order");
    CHECK(memcmp(got + N_WINDOWS, expected, sizeof expected) == 0, "in order, the next epoch starts over");
    int32_t win[WIN];
    int ok = 1;
    for (uint64_t w = 0; w < N_WINDOWS; w++) {
        ok &= loader_read_window(L, w, win) == STATUS_OK && win[0] == expected[w];
        ok &= loader_window_at(L, w) == w;
    }
    CHECK(ok, "loader_read_window(w) reads the w-th window in file order");
    CHECK_ERR(loader_read_window(L, N_WINDOWS, win), "past the dataset");
    loader_close(L);
}

static void test_ranks_partition_each_epoch(void) {
    int32_t expected[N_WINDOWS];
    all_windows(expected);
    /* One rank, 11 batches of 4 = one epoch. */
    int32_t one[N_WINDOWS];
    Loader *L = open_loader(1234, 0, 1, 1, 0);
    read_stream(L, 4, 11, one);
    loader_close(L);
    CHECK(same_set(one, expected, N_WINDOWS), "one rank's epoch is every window once");
    CHECK(memcmp(one, expected, sizeof one) != 0, "the training order is shuffled");

    /* Two ranks, 2 rows each per call: disjoint, together the epoch, and rank r's row i of call c
     * is global position 4c + 2i + r of the one-rank stream. */
    int32_t r0[22], r1[22];
    Loader *A = open_loader(1234, 0, 2, 1, 0), *B = open_loader(1234, 1, 2, 1, 0);
    read_stream(A, 2, 11, r0);
    read_stream(B, 2, 11, r1);
    int32_t both[N_WINDOWS];
    memcpy(both, r0, sizeof r0);
    memcpy(both + 22, r1, sizeof r1);
    CHECK(same_set(both, expected, N_WINDOWS), "two ranks' windows: disjoint, and their union is the epoch");
    int interleaved = 1;
    for (int c = 0; c < 11; c++)
        for (int i = 0; i < 2; i++)
            interleaved &= r0[c * 2 + i] == one[c * 4 + i * 2] && r1[c * 2 + i] == one[c * 4 + i * 2 + 1];
    CHECK(interleaved, "ranks split the one-rank stream: the same windows whatever the rank count");
    LoaderCursor ca = loader_cursor(A), cb = loader_cursor(B);
    CHECK(ca.epoch == 1 && ca.position == 0 && cb.epoch == 1 && cb.position == 0,
          "after one epoch both ranks' cursors say epoch 1 position 0");
    loader_close(A);
    loader_close(B);

    /* Three ranks over 3 epochs (44 is not a multiple of 3): the stream still matches. */
    int32_t ref[3 * N_WINDOWS + 3], ranks[3][N_WINDOWS + 1];
    L = open_loader(1234, 0, 1, 1, 0);
    read_stream(L, 3, N_WINDOWS + 1, ref);
    loader_close(L);
    for (int r = 0; r < 3; r++) {
        L = open_loader(1234, r, 3, 1, 0);
        read_stream(L, 1, N_WINDOWS + 1, ranks[r]);
        loader_close(L);
    }
    int match = 1;
    for (int c = 0; c < N_WINDOWS + 1; c++)
        for (int r = 0; r < 3; r++) match &= ranks[r][c] == ref[3 * c + r];
    CHECK(match, "three ranks across epoch boundaries read the one-rank stream");
    CHECK(same_set(ref + N_WINDOWS, expected, N_WINDOWS) && same_set(ref + 2 * N_WINDOWS, expected, N_WINDOWS),
          "each later epoch is every window once");
    CHECK(memcmp(ref, ref + N_WINDOWS, N_WINDOWS * 4) != 0, "each epoch has its own order");
}

static void test_seed_decides_the_order(void) {
    int32_t a[N_WINDOWS], b[N_WINDOWS], c[N_WINDOWS];
    Loader *L = open_loader(7, 0, 1, 1, 0);
    read_stream(L, 4, 11, a);
    loader_close(L);
    L = open_loader(7, 0, 1, 1, 1); /* one open file at a time: only the cost changes */
    read_stream(L, 4, 11, b);
    loader_close(L);
    L = open_loader(8, 0, 1, 1, 0);
    read_stream(L, 4, 11, c);
    loader_close(L);
    CHECK(memcmp(a, b, sizeof a) == 0, "the same seed gives the same order");
    CHECK(memcmp(a, c, sizeof a) != 0, "another seed gives another order");
}

static void test_cursor_resume(void) {
    /* Reference: 40 calls of 3 rows (about 2.7 epochs), with the cursor after each call. */
    enum { CALLS = 40, ROWS = 3, CALL_TOKENS = ROWS * WIN };
    static int32_t ref[CALLS * CALL_TOKENS], rest[CALLS * CALL_TOKENS];
    int32_t firsts[CALLS * ROWS];
    LoaderCursor cursors[CALLS + 1];
    Loader *L = open_loader(99, 0, 1, 1, 0);
    cursors[0] = loader_cursor(L);
    for (int c = 0; c < CALLS; c++) {
        read_stream_tokens(L, ROWS, 1, firsts, ref + c * CALL_TOKENS);
        cursors[c + 1] = loader_cursor(L);
    }
    loader_close(L);
    int all_same = 1;
    for (int k = 0; k <= CALLS; k++) {
        L = open_loader(99, 0, 1, 1, 0);
        if (!CHECK_OK(loader_seek(L, cursors[k]))) break;
        read_stream_tokens(L, ROWS, CALLS - k, firsts, rest);
        all_same &= memcmp(rest, ref + k * CALL_TOKENS, (size_t)(CALLS - k) * CALL_TOKENS * sizeof *rest) == 0;
        loader_close(L);
    }
    CHECK(all_same, "restoring the cursor saved after any call continues with the identical token stream");

    /* Two ranks of 2 rows for 5 calls, then resumed on four ranks of 1 row and on one rank of 4. */
    int32_t one[20 * 4];
    L = open_loader(5, 0, 1, 1, 0);
    read_stream(L, 4, 20, one);
    loader_close(L);
    int32_t skip[10];
    Loader *A = open_loader(5, 0, 2, 1, 0), *B = open_loader(5, 1, 2, 1, 0);
    read_stream(A, 2, 5, skip);
    read_stream(B, 2, 5, skip);
    LoaderCursor saved = loader_cursor(A), saved_b = loader_cursor(B);
    CHECK(saved.epoch == saved_b.epoch && saved.position == saved_b.position && saved.position == 20,
          "every rank holds the same cursor, in global windows");
    loader_close(A);
    loader_close(B);
    int32_t four[4][15];
    int match = 1;
    for (int r = 0; r < 4; r++) {
        L = open_loader(5, r, 4, 1, 0);
        CHECK_OK(loader_seek(L, saved));
        read_stream(L, 1, 15, four[r]);
        loader_close(L);
        for (int c = 0; c < 15; c++) match &= four[r][c] == one[20 + 4 * c + r];
    }
    CHECK(match, "a run saved on 2 ranks resumes on 4 with the windows it would have read");
    int32_t single[60];
    L = open_loader(5, 0, 1, 1, 0);
    CHECK_OK(loader_seek(L, saved));
    read_stream(L, 4, 15, single);
    loader_close(L);
    CHECK(memcmp(single, one + 20, sizeof single) == 0, "and on 1 rank");

    L = open_loader(5, 0, 1, 1, 0);
    LoaderCursor other = saved;
    other.windows_per_epoch++;
    CHECK_ERR(loader_seek(L, other), "windows per epoch");
    other = saved;
    other.position = N_WINDOWS;
    CHECK_ERR(loader_seek(L, other), "past the epoch");
    loader_close(L);
}

static void test_open_errors(void) {
    char bad[160], short_file[160];
    snprintf(bad, sizeof bad, "%s/nothing-*.h5", dir);
    const char *p1[] = {bad};
    LoaderOptions o = {.patterns = p1, .n_patterns = 1, .seq_len = SEQ, .world = 1};
    Loader *L = NULL;
    CHECK_ERR(loader_open(&L, &o), "nothing-*.h5: the pattern matches no file");
    snprintf(bad, sizeof bad, "%s/missing.h5", dir);
    CHECK_ERR(loader_open(&L, &o), "missing.h5: No such file");
    o.n_patterns = 0;
    CHECK_ERR(loader_open(&L, &o), "no data files");

    /* part-1.h5 holds exactly one window of 8: too short for seq_len 8. */
    const char *p2[] = {pattern};
    o = (LoaderOptions){.patterns = p2, .n_patterns = 1, .seq_len = SEQ + 1, .world = 1};
    CHECK_ERR(loader_open(&L, &o), "part-1.h5: 8 tokens, fewer than one window");
    o.seq_len = SEQ;
    o.rank = 2;
    o.world = 2;
    CHECK_ERR(loader_open(&L, &o), "rank 2");

    /* A file with another vocabulary in the same dataset. */
    snprintf(short_file, sizeof short_file, "%s/other-vocab.h5", dir);
    TokenWriter *w = NULL;
    CHECK_OK(token_writer_create(&w, short_file, 300, 1));
    int32_t ids[64] = {0};
    token_writer_append(w, ids, 64);
    CHECK_OK(token_writer_commit(w));
    const char *p3[] = {pattern, short_file};
    o = (LoaderOptions){.patterns = p3, .n_patterns = 2, .seq_len = SEQ, .world = 1};
    CHECK_ERR(loader_open(&L, &o), "other-vocab.h5: vocab_size 300");
    unlink(short_file);
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

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/mlatrain-loader-XXXXXX");
    if (!mkdtemp(dir)) return 1;
    write_files();
    test_shuffle_is_a_permutation();
    test_dataset_and_validation_order();
    test_ranks_partition_each_epoch();
    test_seed_decides_the_order();
    test_cursor_resume();
    test_open_errors();
    for (int f = 0; f < 3; f++) {
        char path[128];
        snprintf(path, sizeof path, "%s/part-%d.h5", dir, f);
        unlink(path);
    }
    rmdir(dir);
    check_hdf5_all_closed();
    return test_finish("test_data_loader");
}
