/* The loader's machinery: glob expansion, per-file window counts and their prefix sums, the
 * shuffled or in-order position -> window map, and a small cache of open files. */
#include "data/loader.h"

#include <glob.h>
#include <stdlib.h>
#include <string.h>

#include "data/shuffle.h"
#include "data/token_file.h"

typedef struct {
    int file;       /* index into L->paths; -1 when empty */
    TokenFile *handle;
    uint64_t last_used;
} OpenSlot;

struct Loader {
    LoaderOptions opt;
    char **paths;
    int n_files;
    uint64_t *first_window; /* [n_files + 1]: windows before file i; the last is the total */
    uint64_t total_tokens;
    uint32_t vocab_size, eos_id;
    uint64_t window_tokens; /* seq_len + 1 */
    uint64_t epoch, position;
    OpenSlot *slots;
    int n_slots;
    uint64_t clock;
};

static int has_glob_chars(const char *s) { return strpbrk(s, "*?[") != NULL; }

static int compare_strings(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static Status add_path(Loader *L, int *cap, const char *path) {
    if (L->n_files == *cap) {
        int grown = *cap ? *cap * 2 : 16;
        char **p = realloc(L->paths, (size_t)grown * sizeof *p);
        if (!p) return errorf("out of memory listing data files");
        L->paths = p;
        *cap = grown;
    }
    if (!(L->paths[L->n_files] = strdup(path))) return errorf("out of memory listing data files");
    L->n_files++;
    return STATUS_OK;
}

/* Each pattern's matches sorted with strcmp, not the locale, so every rank lists the same order. */
static Status expand_patterns(Loader *L) {
    int cap = 0;
    for (int i = 0; i < L->opt.n_patterns; i++) {
        const char *pattern = L->opt.patterns[i];
        if (!pattern || !pattern[0]) return errorf("data file pattern %d is empty", i);
        if (!has_glob_chars(pattern)) {
            TRY(add_path(L, &cap, pattern));
            continue;
        }
        glob_t g;
        int rc = glob(pattern, GLOB_NOSORT, NULL, &g);
        if (rc == GLOB_NOMATCH || (rc == 0 && g.gl_pathc == 0)) {
            globfree(&g);
            return errorf("%s: the pattern matches no file", pattern);
        }
        if (rc != 0) {
            globfree(&g);
            return errorf("%s: cannot expand the pattern", pattern);
        }
        qsort(g.gl_pathv, g.gl_pathc, sizeof *g.gl_pathv, compare_strings);
        Status st = STATUS_OK;
        for (size_t k = 0; k < g.gl_pathc && st == STATUS_OK; k++) st = add_path(L, &cap, g.gl_pathv[k]);
        globfree(&g);
        TRY(st);
    }
    return STATUS_OK;
}

static Status index_files(Loader *L) {
    if (!(L->first_window = calloc((size_t)L->n_files + 1, sizeof *L->first_window)))
        return errorf("out of memory indexing data files");
    for (int i = 0; i < L->n_files; i++) {
        TokenFile *f = NULL;
        TRY(token_file_open(&f, L->paths[i]));
        TokenFileInfo info = *token_file_info(f);
        token_file_close(f);
        if (i == 0) {
            L->vocab_size = info.vocab_size;
            L->eos_id = info.eos_id;
        } else if (info.vocab_size != L->vocab_size || info.eos_id != L->eos_id) {
            return errorf("%s: vocab_size %u, eos_id %u differ from %s's (%u, %u)", L->paths[i], info.vocab_size,
                          info.eos_id, L->paths[0], L->vocab_size, L->eos_id);
        }
        uint64_t windows = info.n_tokens / L->window_tokens;
        if (windows == 0)
            return errorf("%s: %llu tokens, fewer than one window of seq_len + 1 = %llu", L->paths[i],
                          (unsigned long long)info.n_tokens, (unsigned long long)L->window_tokens);
        L->first_window[i + 1] = L->first_window[i] + windows;
        L->total_tokens += info.n_tokens;
    }
    return STATUS_OK;
}

Status loader_open(Loader **out, const LoaderOptions *o) {
    *out = NULL;
    if (o->n_patterns <= 0) return errorf("no data files given");
    if (o->seq_len < 1) return errorf("seq_len must be at least 1, got %d", o->seq_len);
    if (o->world < 1 || o->rank < 0 || o->rank >= o->world)
        return errorf("rank %d is not in [0, world %d)", o->rank, o->world);
    Loader *L = calloc(1, sizeof *L);
    if (!L) return errorf("out of memory opening the loader");
    L->opt = *o;
    L->window_tokens = (uint64_t)o->seq_len + 1;
    L->n_slots = o->max_open_files > 0 ? o->max_open_files : 16;
    Status st = expand_patterns(L);
    L->opt.patterns = NULL; /* the caller's strings are not kept past loader_open */
    if (st == STATUS_OK) st = index_files(L);
    if (st == STATUS_OK && !(L->slots = calloc((size_t)L->n_slots, sizeof *L->slots)))
        st = errorf("out of memory opening the loader");
    if (st != STATUS_OK) {
        loader_close(L);
        return STATUS_ERROR;
    }
    for (int i = 0; i < L->n_slots; i++) L->slots[i].file = -1;
    *out = L;
    return STATUS_OK;
}

void loader_close(Loader *L) {
    if (!L) return;
    for (int i = 0; L->slots && i < L->n_slots; i++) token_file_close(L->slots[i].handle);
    for (int i = 0; i < L->n_files; i++) free(L->paths[i]);
    free(L->paths);
    free(L->first_window);
    free(L->slots);
    free(L);
}

uint64_t loader_windows_per_epoch(const Loader *L) { return L->first_window[L->n_files]; }
uint64_t loader_total_tokens(const Loader *L) { return L->total_tokens; }
uint32_t loader_vocab_size(const Loader *L) { return L->vocab_size; }
uint32_t loader_eos_id(const Loader *L) { return L->eos_id; }
int loader_file_count(const Loader *L) { return L->n_files; }
const char *loader_file_path(const Loader *L, int i) { return i >= 0 && i < L->n_files ? L->paths[i] : NULL; }

void loader_window_source(const Loader *L, uint64_t w, int *file, uint64_t *first_token) {
    /* The last file whose first window is <= w. */
    int lo = 0, hi = L->n_files - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (L->first_window[mid] <= w)
            lo = mid;
        else
            hi = mid - 1;
    }
    *file = lo;
    *first_token = (w - L->first_window[lo]) * L->window_tokens;
}

uint64_t loader_window_at(const Loader *L, uint64_t s) {
    uint64_t n = loader_windows_per_epoch(L);
    uint64_t epoch = s / n, position = s % n;
    return L->opt.shuffle ? shuffle_window(L->opt.seed, epoch, n, position) : position;
}

/* The file's handle, opening it into the least recently used slot when it is not open. */
static Status file_handle(Loader *L, int file, TokenFile **out) {
    OpenSlot *victim = &L->slots[0];
    for (int i = 0; i < L->n_slots; i++) {
        OpenSlot *s = &L->slots[i];
        if (s->file == file) {
            s->last_used = ++L->clock;
            *out = s->handle;
            return STATUS_OK;
        }
        if (s->file < 0 || (victim->file >= 0 && s->last_used < victim->last_used)) victim = s;
    }
    token_file_close(victim->handle);
    victim->handle = NULL;
    victim->file = -1;
    TRY(token_file_open(&victim->handle, L->paths[file]));
    /* The file may have been replaced since loader_open counted its windows. */
    uint64_t need = (L->first_window[file + 1] - L->first_window[file]) * L->window_tokens;
    if (token_file_info(victim->handle)->n_tokens < need) {
        token_file_close(victim->handle);
        victim->handle = NULL;
        return errorf("%s: the file shrank since the loader opened it", L->paths[file]);
    }
    victim->file = file;
    victim->last_used = ++L->clock;
    *out = victim->handle;
    return STATUS_OK;
}

Status loader_read_window(Loader *L, uint64_t w, int32_t *dst) {
    if (w >= loader_windows_per_epoch(L))
        return errorf("window %llu is past the dataset's %llu windows", (unsigned long long)w,
                      (unsigned long long)loader_windows_per_epoch(L));
    int file = 0;
    uint64_t first = 0;
    loader_window_source(L, w, &file, &first);
    TokenFile *f = NULL;
    TRY(file_handle(L, file, &f));
    return token_file_read(f, first, L->window_tokens, dst);
}

Status loader_next(Loader *L, int rows, int32_t *windows) {
    if (rows < 0) return errorf("loader_next: rows must be >= 0, got %d", rows);
    uint64_t n = loader_windows_per_epoch(L), world = (uint64_t)L->opt.world;
    for (int i = 0; i < rows; i++) {
        /* Global position of this rank's i-th row, as (epoch, position) to stay exact at any size. */
        uint64_t offset = (uint64_t)i * world + (uint64_t)L->opt.rank;
        uint64_t epoch = L->epoch + (L->position + offset) / n, position = (L->position + offset) % n;
        uint64_t w = L->opt.shuffle ? shuffle_window(L->opt.seed, epoch, n, position) : position;
        TRY(loader_read_window(L, w, windows + (size_t)i * L->window_tokens));
    }
    uint64_t advance = (uint64_t)rows * world;
    L->epoch += (L->position + advance) / n;
    L->position = (L->position + advance) % n;
    return STATUS_OK;
}

LoaderCursor loader_cursor(const Loader *L) {
    return (LoaderCursor){.epoch = L->epoch, .position = L->position, .windows_per_epoch = loader_windows_per_epoch(L)};
}

Status loader_seek(Loader *L, LoaderCursor c) {
    uint64_t n = loader_windows_per_epoch(L);
    if (c.windows_per_epoch != n)
        return errorf("the data cursor was saved over %llu windows per epoch but the dataset now has %llu "
                      "(the files or seq_len changed)",
                      (unsigned long long)c.windows_per_epoch, (unsigned long long)n);
    if (c.position >= n)
        return errorf("the data cursor's position %llu is past the epoch's %llu windows", (unsigned long long)c.position,
                      (unsigned long long)n);
    L->epoch = c.epoch;
    L->position = c.position;
    return STATUS_OK;
}
