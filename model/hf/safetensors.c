/* Reading safetensors: files mapped read-only, headers validated as strictly as the reference
 * implementation does (huggingface/safetensors), shard indexes checked against their shards. */
#include "model/hf/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/utf8.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian and is handed out in place: a little-endian host is required"
#endif

/* Shapes and offsets arrive as JSON doubles; above 2^53 a double no longer holds every integer. */
#define JSON_MAX_EXACT_INTEGER 9007199254740992.0

typedef struct {
    char *path;
    const unsigned char *base; /* the whole file, mapped; NULL for an empty file */
    size_t size;
} MappedFile;

typedef struct {
    SafetensorsTensor t;   /* first, so a pointer to an Entry is a pointer to its tensor */
    uint64_t begin, end;   /* data_offsets, relative to the start of the data section */
} Entry;

struct SafetensorsSet {
    char *root;            /* the path the caller opened */
    MappedFile *files;
    int n_files, files_cap;
    Entry *entries;        /* sorted by name once open succeeds */
    int64_t count, cap;
};

/* ---- small pieces ---- */

static uint64_t read_le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static char *join_path(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int is_json_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static const char *json_type_name(const cJSON *j) {
    if (cJSON_IsObject(j)) return "object";
    if (cJSON_IsArray(j)) return "array";
    if (cJSON_IsString(j)) return "string";
    if (cJSON_IsNumber(j)) return "number";
    if (cJSON_IsBool(j)) return "boolean";
    return "null";
}

/* A JSON value as an error message shows it: numbers by value, anything else by type. */
static const char *json_describe(const cJSON *j, char *buf, size_t n) {
    if (cJSON_IsNumber(j))
        snprintf(buf, n, "%.17g", j->valuedouble);
    else
        snprintf(buf, n, "a JSON %s", json_type_name(j));
    return buf;
}

/* A non-negative integer that a double holds exactly (cJSON numbers are doubles). */
static int json_u64(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return 0;
    double d = j->valuedouble;
    if (!(d >= 0 && d <= JSON_MAX_EXACT_INTEGER) || d != (double)(uint64_t)d) return 0;
    *out = (uint64_t)d;
    return 1;
}

/* How many times key is a member of obj (case-sensitive: cJSON's own lookup is not), and the first. */
static int json_member(const cJSON *obj, const char *key, const cJSON **first) {
    int n = 0;
    *first = NULL;
    for (const cJSON *c = obj->child; c; c = c->next)
        if (c->string && strcmp(c->string, key) == 0 && n++ == 0) *first = c;
    return n;
}

/* Parses text[0..n) as one JSON value with nothing after it but whitespace. JSON allows no control
 * bytes except whitespace, and the reference wants UTF-8: both are checked here because cJSON
 * treats every byte <= 0x20 as whitespace and does not check encodings. */
static Status parse_json(const char *path, const char *what, const unsigned char *text, size_t n,
                         cJSON **out) {
    *out = NULL;
    size_t bad = utf8_invalid_at(text, n);
    if (bad < n) return errorf("%s: %s is not valid UTF-8 (byte 0x%02x at offset %zu)", path, what, text[bad], bad);
    for (size_t i = 0; i < n; i++)
        if (text[i] < 0x20 && !is_json_space(text[i]))
            return errorf("%s: %s is not valid JSON (control byte 0x%02x at offset %zu)", path, what, text[i], i);
    char *copy = malloc(n + 1);
    if (!copy) return errorf("%s: out of memory reading a %zu-byte %s", path, n, what);
    memcpy(copy, text, n);
    copy[n] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(copy, &end, 0);
    size_t at = end ? (size_t)(end - copy) : 0;
    if (!root) {
        free(copy);
        return errorf("%s: %s is not valid JSON (parsing stopped at offset %zu of %zu)", path, what, at, n);
    }
    while (at < n && is_json_space((unsigned char)copy[at])) at++;
    free(copy);
    if (at < n) {
        cJSON_Delete(root);
        return errorf("%s: %s has trailing bytes after its JSON value (at offset %zu of %zu)", path, what, at, n);
    }
    *out = root;
    return STATUS_OK;
}

/* ---- one file ---- */

static Status add_file(SafetensorsSet *s, const char *path, int *index) {
    if (s->n_files == s->files_cap) {
        int cap = s->files_cap ? 2 * s->files_cap : 4;
        MappedFile *f = realloc(s->files, (size_t)cap * sizeof *f);
        if (!f) return errorf("%s: out of memory", path);
        s->files = f;
        s->files_cap = cap;
    }
    MappedFile *f = &s->files[s->n_files];
    memset(f, 0, sizeof *f);
    f->path = strdup(path);
    if (!f->path) return errorf("%s: out of memory", path);
    *index = s->n_files++;

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errorf("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return errorf("%s: not a regular file", path);
    }
    f->size = (size_t)st.st_size;
    if (f->size > 0) {
        void *p = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            return errorf("%s: cannot map %zu bytes: %s", path, f->size, strerror(e));
        }
        f->base = p;
    }
    close(fd);
    return STATUS_OK;
}

static Status dtype_from_name(const char *path, const char *tensor, const char *name, DType *dt) {
    static const char *const unsupported[] = {"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64",
                                              "I64", "F64", "C64", "F8_E5M2", "F8_E4M3", "F8_E8M0",
                                              "F4", "F6_E2M3", "F6_E3M2"};
    if (strcmp(name, "F32") == 0) *dt = DT_F32;
    else if (strcmp(name, "BF16") == 0) *dt = DT_BF16;
    else if (strcmp(name, "F16") == 0) *dt = DT_F16;
    else {
        for (size_t i = 0; i < sizeof unsupported / sizeof *unsupported; i++)
            if (strcmp(name, unsupported[i]) == 0)
                return errorf("%s: tensor '%s' has unsupported dtype %s (mlatrain reads F32, BF16 and F16)",
                              path, tensor, name);
        return errorf("%s: tensor '%s' has unknown dtype '%s'", path, tensor, name);
    }
    return STATUS_OK;
}

static const char *dtype_file_name(DType dt) {
    return dt == DT_F32 ? "F32" : dt == DT_BF16 ? "BF16" : dt == DT_F16 ? "F16" : "?";
}

/* One tensor's entry: {"dtype": ..., "shape": [...], "data_offsets": [begin, end]}. Like the
 * reference, other keys are ignored; a key given twice is an error. */
static Status parse_entry(const char *path, const cJSON *item, uint64_t data_size, Entry *e) {
    const char *name = item->string;
    char desc[64];
    if (!cJSON_IsObject(item))
        return errorf("%s: tensor '%s' is %s, expected an object with dtype, shape and data_offsets", path,
                      name, json_describe(item, desc, sizeof desc));
    const cJSON *jdtype, *jshape, *joffsets;
    const char *keys[3] = {"dtype", "shape", "data_offsets"};
    const cJSON **vals[3] = {&jdtype, &jshape, &joffsets};
    for (int k = 0; k < 3; k++) {
        int n = json_member(item, keys[k], vals[k]);
        if (n == 0) return errorf("%s: tensor '%s' has no '%s'", path, name, keys[k]);
        if (n > 1) return errorf("%s: tensor '%s' has the key '%s' twice", path, name, keys[k]);
    }

    if (!cJSON_IsString(jdtype))
        return errorf("%s: tensor '%s': dtype is %s, expected a string", path, name,
                      json_describe(jdtype, desc, sizeof desc));
    TRY(dtype_from_name(path, name, jdtype->valuestring, &e->t.dtype));

    if (!cJSON_IsArray(jshape))
        return errorf("%s: tensor '%s': shape is %s, expected an array", path, name,
                      json_describe(jshape, desc, sizeof desc));
    int ndim = cJSON_GetArraySize(jshape);
    if (ndim > TENSOR_MAX_DIMS)
        return errorf("%s: tensor '%s' has %d dimensions; mlatrain reads at most %d", path, name, ndim,
                      TENSOR_MAX_DIMS);
    e->t.ndim = ndim;
    uint64_t numel = 1;
    int d = 0;
    for (const cJSON *c = jshape->child; c; c = c->next, d++) {
        uint64_t v;
        if (!json_u64(c, &v))
            return errorf("%s: tensor '%s': shape[%d] is %s, not a non-negative integer", path, name, d,
                          json_describe(c, desc, sizeof desc));
        e->t.shape[d] = (int64_t)v;
        if (__builtin_mul_overflow(numel, v, &numel))
            return errorf("%s: tensor '%s': shape overflows 64 bits", path, name);
    }
    uint64_t bytes;
    if (__builtin_mul_overflow(numel, (uint64_t)dtype_size(e->t.dtype), &bytes))
        return errorf("%s: tensor '%s': shape overflows 64 bits", path, name);

    if (!cJSON_IsArray(joffsets) || cJSON_GetArraySize(joffsets) != 2 ||
        !json_u64(joffsets->child, &e->begin) || !json_u64(joffsets->child->next, &e->end))
        return errorf("%s: tensor '%s': data_offsets must be [begin, end], two non-negative integers", path,
                      name);
    if (e->begin > e->end)
        return errorf("%s: tensor '%s': data_offsets [%llu, %llu] run backwards", path, name,
                      (unsigned long long)e->begin, (unsigned long long)e->end);
    if (e->end - e->begin != bytes) {
        char shape[96];
        Tensor view = tensor_view(NULL, e->t.dtype, e->t.ndim, e->t.shape);
        return errorf("%s: tensor '%s': data_offsets [%llu, %llu] span %llu bytes, but shape %s of %s needs %llu",
                      path, name, (unsigned long long)e->begin, (unsigned long long)e->end,
                      (unsigned long long)(e->end - e->begin), tensor_shape_str(view, shape, sizeof shape),
                      dtype_file_name(e->t.dtype), (unsigned long long)bytes);
    }
    if (e->end > data_size)
        return errorf("%s: tensor '%s': data_offsets [%llu, %llu] run past the end of the data section "
                      "(%llu bytes; is the file truncated?)",
                      path, name, (unsigned long long)e->begin, (unsigned long long)e->end,
                      (unsigned long long)data_size);
    e->t.bytes = (size_t)bytes;
    return STATUS_OK;
}

static Status check_metadata(const char *path, const cJSON *meta) {
    char desc[64];
    if (!cJSON_IsObject(meta))
        return errorf("%s: __metadata__ is %s, expected an object of strings", path,
                      json_describe(meta, desc, sizeof desc));
    for (const cJSON *c = meta->child; c; c = c->next)
        if (!cJSON_IsString(c))
            return errorf("%s: __metadata__ key '%s' is %s, expected a string", path, c->string,
                          json_describe(c, desc, sizeof desc));
    return STATUS_OK;
}

static int compare_by_name(const void *a, const void *b) {
    const Entry *x = a, *y = b;
    int c = strcmp(x->t.name, y->t.name);
    return c ? c : (x->t.file_index > y->t.file_index) - (x->t.file_index < y->t.file_index);
}

static int compare_by_offsets(const void *a, const void *b) {
    const Entry *x = *(const Entry *const *)a, *y = *(const Entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->t.name, y->t.name);
}

/* The reference's rule: sorted by offsets, each tensor begins where the previous one ended, and
 * the last ends at the end of the file. So no gaps, no overlaps, no trailing bytes. */
static Status check_tiling(const char *path, Entry *entries, int64_t n, uint64_t data_size) {
    Entry **order = malloc((size_t)(n ? n : 1) * sizeof *order);
    if (!order) return errorf("%s: out of memory", path);
    for (int64_t i = 0; i < n; i++) order[i] = &entries[i];
    qsort(order, (size_t)n, sizeof *order, compare_by_offsets);
    uint64_t covered = 0;
    const char *previous = NULL;
    Status st = STATUS_OK;
    for (int64_t i = 0; i < n && st == STATUS_OK; i++) {
        const Entry *e = order[i];
        if (e->begin > covered)
            st = errorf("%s: tensor '%s': data_offsets [%llu, %llu] leave a gap of %llu bytes after %s%s%s",
                        path, e->t.name, (unsigned long long)e->begin, (unsigned long long)e->end,
                        (unsigned long long)(e->begin - covered), previous ? "tensor '" : "the start of the data section",
                        previous ? previous : "", previous ? "'" : "");
        else if (e->begin < covered)
            st = errorf("%s: tensor '%s': data_offsets [%llu, %llu] overlap tensor '%s', which ends at %llu", path,
                        e->t.name, (unsigned long long)e->begin, (unsigned long long)e->end, previous,
                        (unsigned long long)covered);
        covered = e->end;
        previous = e->t.name;
    }
    free(order);
    if (st == STATUS_OK && covered != data_size)
        st = errorf("%s: the data section has %llu bytes but the tensors cover only %llu", path,
                    (unsigned long long)data_size, (unsigned long long)covered);
    return st;
}

static Status grow_entries(SafetensorsSet *s, const char *path) {
    if (s->count < s->cap) return STATUS_OK;
    int64_t cap = s->cap ? 2 * s->cap : 64;
    Entry *e = realloc(s->entries, (size_t)cap * sizeof *e);
    if (!e) return errorf("%s: out of memory", path);
    s->entries = e;
    s->cap = cap;
    return STATUS_OK;
}

static Status read_header(SafetensorsSet *s, int file_index, const cJSON *root, const unsigned char *data,
                          uint64_t data_size) {
    const char *path = s->files[file_index].path;
    if (!cJSON_IsObject(root))
        return errorf("%s: header is a JSON %s, expected an object", path, json_type_name(root));
    int64_t first = s->count;
    int metadata_seen = 0;
    for (const cJSON *c = root->child; c; c = c->next) {
        if (strcmp(c->string, "__metadata__") == 0) {
            if (metadata_seen++) return errorf("%s: header has the key '__metadata__' twice", path);
            TRY(check_metadata(path, c));
            continue;
        }
        TRY(grow_entries(s, path));
        Entry *e = &s->entries[s->count];
        memset(e, 0, sizeof *e);
        TRY(parse_entry(path, c, data_size, e));
        e->t.name = strdup(c->string);
        if (!e->t.name) return errorf("%s: out of memory", path);
        e->t.file_index = file_index;
        e->t.data = data + e->begin;
        s->count++;
    }
    /* Duplicates first: two entries of one name would otherwise surface as an overlap. */
    int64_t n = s->count - first;
    if (n == 0) return check_tiling(path, NULL, 0, data_size);
    Entry *mine = s->entries + first;
    qsort(mine, (size_t)n, sizeof *mine, compare_by_name);
    for (int64_t i = 1; i < n; i++)
        if (strcmp(mine[i].t.name, mine[i - 1].t.name) == 0)
            return errorf("%s: header lists tensor '%s' twice", path, mine[i].t.name);
    return check_tiling(path, mine, n, data_size);
}

static Status parse_file(SafetensorsSet *s, int file_index) {
    const MappedFile *f = &s->files[file_index];
    if (f->size < 8)
        return errorf("%s: file is %zu bytes, too short for a safetensors file (an 8-byte header length, "
                      "then the header)", f->path, f->size);
    uint64_t n = read_le64(f->base);
    if (n > SAFETENSORS_MAX_HEADER_BYTES)
        return errorf("%s: header length %llu exceeds the limit of %llu bytes (not a safetensors file?)", f->path,
                      (unsigned long long)n, SAFETENSORS_MAX_HEADER_BYTES);
    if (n > f->size - 8)
        return errorf("%s: header length %llu runs past the end of the file (%zu bytes)", f->path,
                      (unsigned long long)n, f->size);
    cJSON *root;
    TRY(parse_json(f->path, "header", f->base + 8, (size_t)n, &root));
    Status st = read_header(s, file_index, root, f->base + 8 + n, f->size - 8 - n);
    cJSON_Delete(root);
    return st;
}

/* Sorts the whole set by name and refuses a name held by two files. */
static Status finish_set(SafetensorsSet *s) {
    if (s->count < 2) return STATUS_OK;
    qsort(s->entries, (size_t)s->count, sizeof *s->entries, compare_by_name);
    for (int64_t i = 1; i < s->count; i++)
        if (strcmp(s->entries[i].t.name, s->entries[i - 1].t.name) == 0)
            return errorf("tensor '%s' is in both %s and %s", s->entries[i].t.name,
                          s->files[s->entries[i - 1].t.file_index].path,
                          s->files[s->entries[i].t.file_index].path);
    return STATUS_OK;
}

static Status open_single(SafetensorsSet *s, const char *path) {
    int fi;
    TRY(add_file(s, path, &fi));
    TRY(parse_file(s, fi));
    return finish_set(s);
}

/* ---- a sharded model ---- */

typedef struct {
    const char *tensor, *shard; /* strings inside the parsed index */
    int file_index;
} IndexPair;

static int compare_pairs_by_shard(const void *a, const void *b) {
    const IndexPair *x = a, *y = b;
    int c = strcmp(x->shard, y->shard);
    return c ? c : strcmp(x->tensor, y->tensor);
}

static int compare_pairs_by_tensor(const void *a, const void *b) {
    return strcmp(((const IndexPair *)a)->tensor, ((const IndexPair *)b)->tensor);
}

/* A shard is named by a plain file name next to the index: nothing that walks out of the folder. */
static int shard_name_ok(const char *name) {
    return name[0] != '\0' && strchr(name, '/') == NULL && strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

static Status read_whole_file(const char *path, unsigned char **out, size_t *size) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return errorf("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return errorf("%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > SAFETENSORS_MAX_HEADER_BYTES) {
        fclose(f);
        return errorf("%s: %lld bytes is too large for a shard index", path, (long long)st.st_size);
    }
    unsigned char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        fclose(f);
        return errorf("%s: out of memory", path);
    }
    size_t got = fread(buf, 1, (size_t)st.st_size, f);
    int failed = ferror(f);
    fclose(f);
    if (failed || got != (size_t)st.st_size) {
        free(buf);
        return errorf("%s: read error", path);
    }
    *out = buf;
    *size = got;
    return STATUS_OK;
}

/* Checks the index's weight_map against what the shards hold, both sorted by tensor name. */
static Status match_index(SafetensorsSet *s, const char *index_path, const IndexPair *pairs, int64_t n) {
    int64_t i = 0, j = 0;
    while (i < n || j < s->count) {
        int c = i == n ? 1 : j == s->count ? -1 : strcmp(pairs[i].tensor, s->entries[j].t.name);
        if (c < 0)
            return errorf("%s: weight_map puts tensor '%s' in %s, which does not hold it", index_path,
                          pairs[i].tensor, pairs[i].shard);
        if (c > 0)
            return errorf("%s: shard %s holds tensor '%s', which weight_map does not list", index_path,
                          s->files[s->entries[j].t.file_index].path, s->entries[j].t.name);
        if (pairs[i].file_index != s->entries[j].t.file_index)
            return errorf("%s: weight_map puts tensor '%s' in %s, but it is in %s", index_path, pairs[i].tensor,
                          pairs[i].shard, s->files[s->entries[j].t.file_index].path);
        i++;
        j++;
    }
    return STATUS_OK;
}

static Status read_index(SafetensorsSet *s, const char *index_path, const cJSON *weight_map, IndexPair *pairs,
                         int64_t n_pairs) {
    char desc[64];
    int64_t n = 0;
    for (const cJSON *c = weight_map->child; c; c = c->next, n++) {
        if (!cJSON_IsString(c))
            return errorf("%s: weight_map['%s'] is %s, expected a shard file name", index_path, c->string,
                          json_describe(c, desc, sizeof desc));
        if (!shard_name_ok(c->valuestring))
            return errorf("%s: weight_map['%s'] names '%s', which is not a file name in the index's directory",
                          index_path, c->string, c->valuestring);
        pairs[n].tensor = c->string;
        pairs[n].shard = c->valuestring;
    }

    /* Open each shard once, in name order. */
    const char *slash = strrchr(index_path, '/');
    char *dir = slash ? strndup(index_path, (size_t)(slash - index_path) + (slash == index_path)) : strdup(".");
    if (!dir) return errorf("%s: out of memory", index_path);
    qsort(pairs, (size_t)n_pairs, sizeof *pairs, compare_pairs_by_shard);
    Status st = STATUS_OK;
    for (int64_t i = 0; i < n_pairs && st == STATUS_OK; i++) {
        if (i > 0 && strcmp(pairs[i].shard, pairs[i - 1].shard) == 0) {
            pairs[i].file_index = pairs[i - 1].file_index;
            continue;
        }
        char *shard_path = join_path(dir, pairs[i].shard);
        if (!shard_path) {
            st = errorf("%s: out of memory", index_path);
            break;
        }
        st = add_file(s, shard_path, &pairs[i].file_index);
        if (st == STATUS_OK) st = parse_file(s, pairs[i].file_index);
        else error_context("%s: shard '%s' (listed for tensor '%s'): ", index_path, pairs[i].shard, pairs[i].tensor);
        free(shard_path);
    }
    free(dir);
    TRY(st);

    qsort(pairs, (size_t)n_pairs, sizeof *pairs, compare_pairs_by_tensor);
    for (int64_t i = 1; i < n_pairs; i++)
        if (strcmp(pairs[i].tensor, pairs[i - 1].tensor) == 0)
            return errorf("%s: weight_map lists tensor '%s' twice", index_path, pairs[i].tensor);
    TRY(finish_set(s));
    return match_index(s, index_path, pairs, n_pairs);
}

static Status open_index(SafetensorsSet *s, const char *index_path) {
    unsigned char *text = NULL;
    size_t size = 0;
    TRY(read_whole_file(index_path, &text, &size));
    cJSON *root;
    Status st = parse_json(index_path, "shard index", text, size, &root);
    free(text);
    TRY(st);
    const cJSON *weight_map = NULL;
    char desc[64];
    int n_maps = cJSON_IsObject(root) ? json_member(root, "weight_map", &weight_map) : 0;
    if (!cJSON_IsObject(root))
        st = errorf("%s: shard index is a JSON %s, expected an object", index_path, json_type_name(root));
    else if (n_maps != 1)
        st = errorf(n_maps ? "%s: shard index has the key 'weight_map' twice" : "%s: shard index has no 'weight_map'",
                    index_path);
    else if (!cJSON_IsObject(weight_map))
        st = errorf("%s: weight_map is %s, expected an object", index_path, json_describe(weight_map, desc, sizeof desc));
    else if (!weight_map->child)
        st = errorf("%s: weight_map lists no tensors", index_path);
    if (st == STATUS_OK) {
        int64_t n_pairs = 0;
        for (const cJSON *c = weight_map->child; c; c = c->next) n_pairs++;
        IndexPair *pairs = calloc((size_t)n_pairs, sizeof *pairs);
        st = pairs ? read_index(s, index_path, weight_map, pairs, n_pairs)
                   : errorf("%s: out of memory", index_path);
        free(pairs);
    }
    cJSON_Delete(root);
    return st;
}

/* ---- the public interface ---- */

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

Status safetensors_open(SafetensorsSet **out, const char *dir_or_file) {
    *out = NULL;
    struct stat st;
    if (stat(dir_or_file, &st) != 0) return errorf("%s: cannot open: %s", dir_or_file, strerror(errno));
    SafetensorsSet *s = calloc(1, sizeof *s);
    if (!s || !(s->root = strdup(dir_or_file))) {
        free(s);
        return errorf("%s: out of memory", dir_or_file);
    }
    Status r;
    if (S_ISDIR(st.st_mode)) {
        char *single = join_path(dir_or_file, "model.safetensors");
        char *index = join_path(dir_or_file, "model.safetensors.index.json");
        if (!single || !index) r = errorf("%s: out of memory", dir_or_file);
        else if (access(single, F_OK) == 0) r = open_single(s, single);
        else if (access(index, F_OK) == 0) r = open_index(s, index);
        else r = errorf("%s: no model.safetensors or model.safetensors.index.json in this directory", dir_or_file);
        free(single);
        free(index);
    } else if (ends_with(dir_or_file, ".json")) {
        r = open_index(s, dir_or_file);
    } else {
        r = open_single(s, dir_or_file);
    }
    if (r != STATUS_OK) {
        safetensors_close(s);
        return STATUS_ERROR;
    }
    *out = s;
    return STATUS_OK;
}

void safetensors_close(SafetensorsSet *s) {
    if (!s) return;
    for (int64_t i = 0; i < s->count; i++) free((char *)s->entries[i].t.name);
    for (int i = 0; i < s->n_files; i++) {
        if (s->files[i].base) munmap((void *)s->files[i].base, s->files[i].size);
        free(s->files[i].path);
    }
    free(s->entries);
    free(s->files);
    free(s->root);
    free(s);
}

int64_t safetensors_count(const SafetensorsSet *s) { return s->count; }

const SafetensorsTensor *safetensors_tensor(const SafetensorsSet *s, int64_t i) {
    return i >= 0 && i < s->count ? &s->entries[i].t : NULL;
}

const SafetensorsTensor *safetensors_find(const SafetensorsSet *s, const char *name) {
    int64_t lo = 0, hi = s->count;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, s->entries[mid].t.name);
        if (c == 0) return &s->entries[mid].t;
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return NULL;
}

int safetensors_file_count(const SafetensorsSet *s) { return s->n_files; }

const char *safetensors_file_path(const SafetensorsSet *s, int file_index) {
    return file_index >= 0 && file_index < s->n_files ? s->files[file_index].path : NULL;
}

Status safetensors_read_f32(const SafetensorsSet *s, const char *name, float *dst, int ndim,
                            const int64_t *expected_shape) {
    const SafetensorsTensor *t = safetensors_find(s, name);
    if (!t) return errorf("%s: no tensor named '%s'", s->root, name);
    const char *path = s->files[t->file_index].path;
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        if (expected_shape[i] >= 0 && expected_shape[i] != t->shape[i]) ok = 0;
    if (!ok) {
        char got[96], want[96];
        Tensor expected = tensor_view(NULL, DT_F32, ndim < 0 ? 0 : ndim > TENSOR_MAX_DIMS ? TENSOR_MAX_DIMS : ndim,
                                      expected_shape);
        Tensor actual = tensor_view(NULL, t->dtype, t->ndim, t->shape);
        return errorf("%s: tensor '%s' has shape %s, expected %s", path, name,
                      tensor_shape_str(actual, got, sizeof got), tensor_shape_str(expected, want, sizeof want));
    }
    int64_t numel = (int64_t)(t->bytes / dtype_size(t->dtype));
    if (numel == 0) return STATUS_OK;
    switch (t->dtype) {
    case DT_F32: memcpy(dst, t->data, t->bytes); break;
    case DT_BF16: bf16_to_f32_array(dst, t->data, numel); break;
    case DT_F16: f16_to_f32_array(dst, t->data, numel); break;
    default: return errorf("%s: tensor '%s' has dtype %s, which cannot be read as f32", path, name, dtype_name(t->dtype));
    }
    return STATUS_OK;
}
