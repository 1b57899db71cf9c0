/* Writing safetensors byte-for-byte as the Python library does, one file or HF-style shards with an
 * index, atomically: every file is written under a temporary name, fsynced, then renamed. */
#include "model/hf/safetensors.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/progress.h"
#include "core/utf8.h"

/* Elements converted per write() when narrowing to 16 bits: bounded memory whatever the tensor. */
enum { WRITE_CHUNK_ELEMS = 1 << 16 };

/* ---- a growable text buffer for the JSON we emit ---- */

typedef struct {
    char *p;
    size_t len, cap;
    int out_of_memory;
} Text;

static void text_add(Text *t, const char *s, size_t n) {
    if (t->out_of_memory) return;
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->len + n + 1) cap *= 2;
        char *p = realloc(t->p, cap);
        if (!p) {
            t->out_of_memory = 1;
            return;
        }
        t->p = p;
        t->cap = cap;
    }
    memcpy(t->p + t->len, s, n);
    t->len += n;
    t->p[t->len] = '\0';
}

static void text_printf(Text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void text_printf(Text *t, const char *fmt, ...) {
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    text_add(t, buf, n < 0 ? 0 : (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

/* A JSON string escaped as serde_json escapes it (the Python library's serializer): quote,
 * backslash and control characters; everything else, UTF-8 included, verbatim. */
static void text_json_string(Text *t, const char *s) {
    text_add(t, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        switch (*c) {
        case '"': text_add(t, "\\\"", 2); break;
        case '\\': text_add(t, "\\\\", 2); break;
        case '\b': text_add(t, "\\b", 2); break;
        case '\f': text_add(t, "\\f", 2); break;
        case '\n': text_add(t, "\\n", 2); break;
        case '\r': text_add(t, "\\r", 2); break;
        case '\t': text_add(t, "\\t", 2); break;
        default:
            if (*c < 0x20) text_printf(t, "\\u%04x", *c);
            else text_add(t, (const char *)c, 1);
        }
    }
    text_add(t, "\"", 1);
}

/* ---- what is written ---- */

static const char *file_dtype_name(DType dt) { return dt == DT_F32 ? "F32" : dt == DT_BF16 ? "BF16" : "F16"; }

static uint64_t entry_numel(const SafetensorsEntry *e) {
    uint64_t n = 1;
    for (int i = 0; i < e->ndim; i++) n *= (uint64_t)e->shape[i];
    return n;
}

static int compare_entries_by_name(const void *a, const void *b) {
    return strcmp((*(const SafetensorsEntry *const *)a)->name, (*(const SafetensorsEntry *const *)b)->name);
}

/* Checks what the caller gave and returns the entries in name order (the Python writer's order for
 * tensors of one dtype). */
static Status sort_entries(const char *where, const SafetensorsEntry *entries, int64_t count, DType dtype,
                           const SafetensorsEntry ***sorted) {
    *sorted = NULL;
    if (dtype != DT_F32 && dtype != DT_BF16 && dtype != DT_F16)
        return errorf("%s: cannot write dtype %s (F32, BF16 or F16)", where, dtype_name(dtype));
    if (count < 0 || (count > 0 && !entries)) return errorf("%s: invalid tensor list (%lld tensors)", where, (long long)count);
    for (int64_t i = 0; i < count; i++) {
        const SafetensorsEntry *e = &entries[i];
        if (!e->name || !e->name[0]) return errorf("%s: tensor %lld has no name", where, (long long)i);
        size_t len = strlen(e->name);
        if (utf8_invalid_at((const unsigned char *)e->name, len) < len)
            return errorf("%s: tensor name '%s' is not valid UTF-8", where, e->name);
        if (strcmp(e->name, "__metadata__") == 0)
            return errorf("%s: '__metadata__' is reserved and cannot name a tensor", where);
        if (e->ndim < 0 || e->ndim > TENSOR_MAX_DIMS)
            return errorf("%s: tensor '%s' has %d dimensions (0 to %d)", where, e->name, e->ndim, TENSOR_MAX_DIMS);
        uint64_t numel = 1;
        for (int d = 0; d < e->ndim; d++) {
            if (e->shape[d] < 0)
                return errorf("%s: tensor '%s' has shape[%d] = %lld", where, e->name, d, (long long)e->shape[d]);
            if (__builtin_mul_overflow(numel, (uint64_t)e->shape[d], &numel) || numel > ((uint64_t)1 << 60))
                return errorf("%s: tensor '%s' is too large", where, e->name);
        }
        if (numel > 0 && !e->data) return errorf("%s: tensor '%s' has no data", where, e->name);
    }
    const SafetensorsEntry **order = malloc((size_t)(count ? count : 1) * sizeof *order);
    if (!order) return errorf("%s: out of memory", where);
    for (int64_t i = 0; i < count; i++) order[i] = &entries[i];
    qsort(order, (size_t)count, sizeof *order, compare_entries_by_name);
    for (int64_t i = 1; i < count; i++)
        if (strcmp(order[i]->name, order[i - 1]->name) == 0) {
            Status st = errorf("%s: tensor '%s' is given twice", where, order[i]->name);
            free(order);
            return st;
        }
    *sorted = order;
    return STATUS_OK;
}

/* The header exactly as the Python library writes it: compact JSON, __metadata__ first, then the
 * tensors in data order, padded with spaces to a multiple of 8 bytes. */
static Status build_header(const char *path, const SafetensorsEntry *const *order, int64_t n, DType dtype,
                           Text *header) {
    memset(header, 0, sizeof *header);
    text_printf(header, "{\"__metadata__\":{\"format\":\"pt\"}");
    uint64_t offset = 0;
    for (int64_t i = 0; i < n; i++) {
        const SafetensorsEntry *e = order[i];
        uint64_t bytes = entry_numel(e) * dtype_size(dtype);
        text_add(header, ",", 1);
        text_json_string(header, e->name);
        text_printf(header, ":{\"dtype\":\"%s\",\"shape\":[", file_dtype_name(dtype));
        for (int d = 0; d < e->ndim; d++) text_printf(header, d ? ",%lld" : "%lld", (long long)e->shape[d]);
        text_printf(header, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
                    (unsigned long long)(offset + bytes));
        offset += bytes;
    }
    text_add(header, "}", 1);
    while (header->len % 8) text_add(header, " ", 1);
    if (header->out_of_memory) {
        free(header->p);
        return errorf("%s: out of memory building the header", path);
    }
    if (header->len > SAFETENSORS_MAX_HEADER_BYTES) {
        free(header->p);
        return errorf("%s: header of %zu bytes exceeds the %llu-byte limit readers enforce", path, header->len,
                      SAFETENSORS_MAX_HEADER_BYTES);
    }
    return STATUS_OK;
}

/* ---- files ---- */

static Status write_all(int fd, const char *path, const void *data, size_t n) {
    const unsigned char *p = data;
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return errorf("%s: write failed: %s", path, k < 0 ? strerror(errno) : "no progress");
        p += k;
        n -= (size_t)k;
    }
    return STATUS_OK;
}

/* A new file next to final_path (so the rename cannot cross filesystems), mode 0666 less umask. */
static Status create_temp(const char *final_path, char **tmp_path, int *fd) {
    static atomic_uint counter;
    size_t n = strlen(final_path) + 48;
    char *tmp = malloc(n);
    if (!tmp) return errorf("%s: out of memory", final_path);
    for (int attempt = 0; attempt < 100; attempt++) {
        snprintf(tmp, n, "%s.tmp.%ld.%u", final_path, (long)getpid(), atomic_fetch_add(&counter, 1u));
        *fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (*fd >= 0) {
            *tmp_path = tmp;
            return STATUS_OK;
        }
        if (errno != EEXIST) break;
    }
    Status st = errorf("%s: cannot create a temporary file next to it: %s", final_path, strerror(errno));
    free(tmp);
    return st;
}

/* Flushes fd to disk and closes it; on any failure the temporary file is removed. */
static Status finish_temp(int fd, const char *tmp_path, Status written) {
    if (written == STATUS_OK && fsync(fd) != 0) written = errorf("%s: fsync failed: %s", tmp_path, strerror(errno));
    if (close(fd) != 0 && written == STATUS_OK) written = errorf("%s: close failed: %s", tmp_path, strerror(errno));
    if (written != STATUS_OK) unlink(tmp_path);
    return written;
}

static Status write_tensor_data(int fd, const char *path, const SafetensorsEntry *e, DType dtype, void *scratch) {
    uint64_t numel = entry_numel(e);
    if (dtype == DT_F32) return write_all(fd, path, e->data, (size_t)numel * 4); /* host is little-endian */
    for (uint64_t at = 0; at < numel; at += WRITE_CHUNK_ELEMS) {
        int64_t k = (int64_t)(numel - at < WRITE_CHUNK_ELEMS ? numel - at : WRITE_CHUNK_ELEMS);
        if (dtype == DT_BF16) f32_to_bf16_array(scratch, e->data + at, k);
        else f32_to_f16_array(scratch, e->data + at, k);
        TRY(write_all(fd, path, scratch, (size_t)k * 2));
    }
    return STATUS_OK;
}

/* Writes order[0..n) as one safetensors file under a temporary name; *tmp_path on success. */
static Status write_temp_safetensors(const char *final_path, const SafetensorsEntry *const *order, int64_t n,
                                     DType dtype, char **tmp_path) {
    Text header;
    TRY(build_header(final_path, order, n, dtype, &header));
    void *scratch = malloc((size_t)WRITE_CHUNK_ELEMS * 2);
    int fd = -1;
    Status st = scratch ? create_temp(final_path, tmp_path, &fd) : errorf("%s: out of memory", final_path);
    if (st == STATUS_OK) {
        unsigned char len[8];
        for (int i = 0; i < 8; i++) len[i] = (unsigned char)((uint64_t)header.len >> (8 * i));
        st = write_all(fd, *tmp_path, len, 8);
        if (st == STATUS_OK) st = write_all(fd, *tmp_path, header.p, header.len);
        char what[160];
        const char *base = strrchr(final_path, '/');
        snprintf(what, sizeof what, "writing %s: tensor", base ? base + 1 : final_path);
        Progress progress;
        progress_begin(&progress, what, n);
        for (int64_t i = 0; i < n && st == STATUS_OK; i++) {
            st = write_tensor_data(fd, *tmp_path, order[i], dtype, scratch);
            progress_update(&progress, i + 1);
        }
        if (st == STATUS_OK) progress_end(&progress);
        st = finish_temp(fd, *tmp_path, st);
        if (st != STATUS_OK) {
            free(*tmp_path);
            *tmp_path = NULL;
        }
    }
    free(scratch);
    free(header.p);
    return st;
}

static Status write_temp_text(const char *final_path, const Text *text, char **tmp_path) {
    int fd;
    TRY(create_temp(final_path, tmp_path, &fd));
    Status st = finish_temp(fd, *tmp_path, write_all(fd, *tmp_path, text->p, text->len));
    if (st != STATUS_OK) {
        free(*tmp_path);
        *tmp_path = NULL;
    }
    return st;
}

static Status rename_into_place(const char *tmp_path, const char *final_path) {
    if (rename(tmp_path, final_path) == 0) return STATUS_OK;
    Status st = errorf("%s: cannot rename %s into place: %s", final_path, tmp_path, strerror(errno));
    unlink(tmp_path);
    return st;
}

/* Makes the renames themselves durable. Best effort: some filesystems refuse fsync on a directory. */
static void sync_directory(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    (void)fsync(fd);
    close(fd);
}

static char *directory_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    return strndup(path, slash == path ? 1 : (size_t)(slash - path));
}

static char *join_path(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

Status safetensors_write_file(const char *path, const SafetensorsEntry *entries, int64_t count, DType dtype) {
    const SafetensorsEntry **order;
    TRY(sort_entries(path, entries, count, dtype, &order));
    char *tmp = NULL;
    Status st = write_temp_safetensors(path, order, count, dtype, &tmp);
    free(order);
    if (st == STATUS_OK) st = rename_into_place(tmp, path);
    free(tmp);
    if (st == STATUS_OK) {
        char *dir = directory_of(path);
        if (dir) sync_directory(dir);
        free(dir);
    }
    return st;
}

/* ---- a model directory ---- */

/* "model-00002-of-00005.safetensors" -> 2 and 5; 0 if the name is not a shard's. */
static int parse_shard_name(const char *name, int *index, int *total) {
    if (strlen(name) != 32 || strncmp(name, "model-", 6) != 0 || strncmp(name + 11, "-of-", 4) != 0 ||
        strcmp(name + 20, ".safetensors") != 0)
        return 0;
    for (int i = 0; i < 5; i++)
        if (!isdigit((unsigned char)name[6 + i]) || !isdigit((unsigned char)name[15 + i])) return 0;
    *index = atoi(name + 6);
    *total = atoi(name + 15);
    return 1;
}

/* Removes what an earlier save in another layout left: the single file, the index, shards that are
 * not among the n_shards just written. */
static void remove_stale(const char *dir, int n_shards) {
    char *p;
    if (n_shards > 1) {
        if ((p = join_path(dir, "model.safetensors"))) unlink(p);
        free(p);
    } else {
        if ((p = join_path(dir, "model.safetensors.index.json"))) unlink(p);
        free(p);
    }
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *ent;
    while ((ent = readdir(d)) != NULL) {
        int index, total;
        if (!parse_shard_name(ent->d_name, &index, &total)) continue;
        if (n_shards > 1 && total == n_shards && index >= 1 && index <= n_shards) continue;
        if ((p = join_path(dir, ent->d_name))) unlink(p);
        free(p);
    }
    closedir(d);
}

static Status write_sharded(const char *dir, const SafetensorsEntry *const *order, int64_t count, DType dtype,
                            const int *shard_of, int n_shards) {
    char **finals = calloc((size_t)n_shards + 1, sizeof *finals), **tmps = calloc((size_t)n_shards + 1, sizeof *tmps);
    Status st = finals && tmps ? STATUS_OK : errorf("%s: out of memory", dir);
    char name[64];
    Text index = {0};
    uint64_t total = 0;
    for (int64_t i = 0; i < count; i++) total += entry_numel(order[i]) * dtype_size(dtype);
    text_printf(&index, "{\n  \"metadata\": {\n    \"total_size\": %llu\n  },\n  \"weight_map\": {",
                (unsigned long long)total);
    for (int64_t i = 0; i < count; i++) {
        snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", shard_of[i] + 1, n_shards);
        if (i) text_add(&index, ",", 1);
        text_add(&index, "\n    ", 5);
        text_json_string(&index, order[i]->name);
        text_printf(&index, ": \"%s\"", name);
    }
    text_add(&index, "\n  }\n}\n", 7);
    if (st == STATUS_OK && index.out_of_memory) st = errorf("%s: out of memory building the index", dir);

    /* Every file complete under a temporary name before any is renamed; the index goes last. */
    int64_t first = 0;
    for (int s = 0; s < n_shards && st == STATUS_OK; s++) {
        int64_t end = first;
        while (end < count && shard_of[end] == s) end++;
        snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
        if (!(finals[s] = join_path(dir, name))) st = errorf("%s: out of memory", dir);
        else st = write_temp_safetensors(finals[s], order + first, end - first, dtype, &tmps[s]);
        first = end;
    }
    if (st == STATUS_OK && !(finals[n_shards] = join_path(dir, "model.safetensors.index.json")))
        st = errorf("%s: out of memory", dir);
    if (st == STATUS_OK) st = write_temp_text(finals[n_shards], &index, &tmps[n_shards]);
    for (int s = 0; s <= n_shards && st == STATUS_OK; s++) {
        st = rename_into_place(tmps[s], finals[s]);
        free(tmps[s]);
        tmps[s] = NULL;
    }
    for (int s = 0; finals && tmps && s <= n_shards; s++) {
        if (tmps[s]) unlink(tmps[s]);
        free(tmps[s]);
        free(finals[s]);
    }
    free(finals);
    free(tmps);
    free(index.p);
    return st;
}

Status safetensors_write_model(const char *dir, const SafetensorsEntry *entries, int64_t count, DType dtype,
                               size_t max_shard_bytes) {
    struct stat st_dir;
    if (stat(dir, &st_dir) != 0 || !S_ISDIR(st_dir.st_mode))
        return errorf("%s: not an existing directory", dir);
    const SafetensorsEntry **order;
    TRY(sort_entries(dir, entries, count, dtype, &order));

    /* HF's split: a new shard whenever the next tensor would overflow the current one. */
    int *shard_of = malloc((size_t)(count ? count : 1) * sizeof *shard_of);
    if (!shard_of) {
        free(order);
        return errorf("%s: out of memory", dir);
    }
    int shard = 0;
    uint64_t in_shard = 0;
    for (int64_t i = 0; i < count; i++) {
        uint64_t bytes = entry_numel(order[i]) * dtype_size(dtype);
        if (max_shard_bytes && i > 0 && in_shard + bytes > max_shard_bytes) {
            shard++;
            in_shard = 0;
        }
        shard_of[i] = shard;
        in_shard += bytes;
    }
    int n_shards = shard + 1;

    Status st;
    if (n_shards == 1) {
        char *path = join_path(dir, "model.safetensors");
        char *tmp = NULL;
        st = path ? write_temp_safetensors(path, order, count, dtype, &tmp) : errorf("%s: out of memory", dir);
        if (st == STATUS_OK) st = rename_into_place(tmp, path);
        free(tmp);
        free(path);
    } else {
        st = write_sharded(dir, order, count, dtype, shard_of, n_shards);
    }
    free(shard_of);
    free(order);
    if (st == STATUS_OK) {
        remove_stale(dir, n_shards);
        sync_directory(dir);
    }
    return st;
}
