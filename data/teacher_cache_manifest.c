/* The teacher cache's manifest: the layout as JSON, read back strictly, and the comparisons that
 * refuse a cache made from another teacher, other data or other settings, naming the difference. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/crc32.h"
#include "data/teacher_cache_shard.h"

void teacher_cache_layout_free(TeacherCacheLayout *l) {
    if (!l) return;
    free(l->file_windows);
    l->file_windows = NULL;
    l->n_files = 0;
}

uint64_t teacher_cache_shards(const TeacherCacheLayout *l) {
    return l->shard_windows ? (l->windows + l->shard_windows - 1) / l->shard_windows : 0;
}

uint64_t teacher_cache_windows_in_shard(const TeacherCacheLayout *l, uint64_t s) {
    uint64_t first = s * l->shard_windows, left = l->windows > first ? l->windows - first : 0;
    return left < l->shard_windows ? left : l->shard_windows;
}

int64_t teacher_cache_bytes_per_token(const TeacherCacheLayout *l) {
    return l->top_k * (int64_t)(l->logprob_bytes + l->id_bytes);
}

uint32_t teacher_cache_token_crc(const int32_t *tokens, int64_t n) {
    uint32_t crc = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t)tokens[i];
        unsigned char le[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                               (unsigned char)(v >> 24)};
        crc = crc32_update(crc, le, 4);
    }
    return crc;
}

Status teacher_cache_shard_path(char *buf, size_t n, const char *dir, uint64_t s) {
    if (snprintf(buf, n, "%s/shard-%05llu.h5", dir, (unsigned long long)s) >= (int)n)
        return errorf("%s: path too long", dir);
    return STATUS_OK;
}

Status teacher_cache_manifest_text(const TeacherCacheLayout *l, char **out) {
    *out = NULL;
    cJSON *root = cJSON_CreateObject();
    char fingerprint[16];
    snprintf(fingerprint, sizeof fingerprint, "%08x", l->teacher_fingerprint);
    cJSON *files = cJSON_CreateArray();
    int ok = root && files;
    for (int i = 0; ok && i < l->n_files; i++) ok = cJSON_AddItemToArray(files, cJSON_CreateNumber((double)l->file_windows[i]));
    ok = ok && cJSON_AddStringToObject(root, "format", TEACHER_CACHE_FORMAT) &&
         cJSON_AddNumberToObject(root, "version", TEACHER_CACHE_VERSION) &&
         cJSON_AddStringToObject(root, "teacher", l->teacher) &&
         cJSON_AddStringToObject(root, "teacher_fingerprint", fingerprint) &&
         cJSON_AddNumberToObject(root, "temperature", l->temperature) &&
         cJSON_AddNumberToObject(root, "top_k", (double)l->top_k) &&
         cJSON_AddNumberToObject(root, "seq_len", (double)l->seq_len) &&
         cJSON_AddNumberToObject(root, "vocab_size", (double)l->vocab_size) &&
         cJSON_AddStringToObject(root, "logprobs", l->logprob_bytes == 2 ? "f16" : "f32") &&
         cJSON_AddStringToObject(root, "ids", l->id_bytes == 2 ? "u16" : "u32") &&
         cJSON_AddNumberToObject(root, "bytes_per_token", (double)teacher_cache_bytes_per_token(l)) &&
         cJSON_AddNumberToObject(root, "windows", (double)l->windows) &&
         cJSON_AddNumberToObject(root, "shard_windows", (double)l->shard_windows) &&
         cJSON_AddNumberToObject(root, "shards", (double)teacher_cache_shards(l));
    if (ok) {
        cJSON_AddItemToObject(root, "data_file_windows", files);
        files = NULL;
    }
    char *text = ok ? cJSON_Print(root) : NULL;
    cJSON_Delete(files);
    cJSON_Delete(root);
    if (!text) return errorf("teacher cache manifest: out of memory");
    size_t n = strlen(text);
    char *with_newline = realloc(text, n + 2);
    if (!with_newline) {
        free(text);
        return errorf("teacher cache manifest: out of memory");
    }
    memcpy(with_newline + n, "\n", 2);
    *out = with_newline;
    return STATUS_OK;
}

static Status read_text(const char *path, char **out, size_t *len) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return errorf("%s: %s", path, strerror(errno));
    enum { MANIFEST_MAX = 64 << 20 };
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t k = fread(buf + n, 1, cap - n - 1, f);
        n += k;
        if (k == 0) break;
        if (n + 1 == cap) {
            char *grown = cap < MANIFEST_MAX ? realloc(buf, cap * 2) : NULL;
            if (!grown) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = grown;
            cap *= 2;
        }
    }
    int failed = ferror(f);
    fclose(f);
    if (!buf) return errorf("%s: out of memory (or larger than %d bytes)", path, MANIFEST_MAX);
    if (failed) {
        free(buf);
        return errorf("%s: cannot read", path);
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return STATUS_OK;
}

/* A non-negative integer member no larger than hi. */
static Status get_count(const char *path, const cJSON *root, const char *key, double hi, uint64_t *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > hi || v->valuedouble != floor(v->valuedouble))
        return errorf("%s: \"%s\" must be an integer in [0, %.0f]", path, key, hi);
    *out = (uint64_t)v->valuedouble;
    return STATUS_OK;
}

static Status get_string(const char *path, const cJSON *root, const char *key, const char **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!cJSON_IsString(v)) return errorf("%s: \"%s\" must be a string", path, key);
    *out = v->valuestring;
    return STATUS_OK;
}

static Status parse_manifest(const char *path, const cJSON *root, TeacherCacheLayout *l) {
    const char *s = NULL;
    uint64_t u = 0;
    const double big = 9007199254740992.0; /* 2^53: exact in JSON numbers */
    if (!cJSON_IsObject(root)) return errorf("%s: not a JSON object", path);
    TRY(get_string(path, root, "format", &s));
    if (strcmp(s, TEACHER_CACHE_FORMAT) != 0) return errorf("%s: \"format\" is \"%s\", not %s", path, s, TEACHER_CACHE_FORMAT);
    TRY(get_count(path, root, "version", 1e9, &u));
    if (u != TEACHER_CACHE_VERSION)
        return errorf("%s: format version %llu, this mlatrain reads version %d", path, (unsigned long long)u,
                      TEACHER_CACHE_VERSION);
    TRY(get_string(path, root, "teacher", &s));
    snprintf(l->teacher, sizeof l->teacher, "%s", s);
    TRY(get_string(path, root, "teacher_fingerprint", &s));
    char *end = NULL;
    unsigned long fp = strtoul(s, &end, 16);
    if (strlen(s) != 8 || *end || fp > 0xffffffffUL)
        return errorf("%s: \"teacher_fingerprint\" must be 8 hex digits, got \"%s\"", path, s);
    l->teacher_fingerprint = (uint32_t)fp;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "temperature");
    if (!cJSON_IsNumber(t) || !(t->valuedouble > 0) || !isfinite(t->valuedouble))
        return errorf("%s: \"temperature\" must be a number > 0", path);
    l->temperature = t->valuedouble;
    TRY(get_count(path, root, "vocab_size", 2147483647.0, &u));
    l->vocab_size = (uint32_t)u;
    TRY(get_count(path, root, "top_k", l->vocab_size, &u));
    l->top_k = (int64_t)u;
    TRY(get_count(path, root, "seq_len", 2147483647.0, &u));
    l->seq_len = (int64_t)u;
    if (l->vocab_size < 1 || l->top_k < 1 || l->seq_len < 1)
        return errorf("%s: vocab_size, top_k and seq_len must be >= 1", path);
    TRY(get_string(path, root, "logprobs", &s));
    if (strcmp(s, "f16") != 0 && strcmp(s, "f32") != 0) return errorf("%s: \"logprobs\" must be f16 or f32, got \"%s\"", path, s);
    l->logprob_bytes = s[1] == '1' ? 2 : 4;
    TRY(get_string(path, root, "ids", &s));
    if (strcmp(s, "u16") != 0 && strcmp(s, "u32") != 0) return errorf("%s: \"ids\" must be u16 or u32, got \"%s\"", path, s);
    l->id_bytes = s[1] == '1' ? 2 : 4;
    if (l->id_bytes == 2 && l->vocab_size > 65536)
        return errorf("%s: u16 ids cannot hold a vocabulary of %u", path, l->vocab_size);
    TRY(get_count(path, root, "windows", big, &l->windows));
    TRY(get_count(path, root, "shard_windows", big, &l->shard_windows));
    if (l->windows < 1 || l->shard_windows < 1) return errorf("%s: windows and shard_windows must be >= 1", path);
    TRY(get_count(path, root, "shards", big, &u));
    if (u != teacher_cache_shards(l))
        return errorf("%s: %llu shards, but %llu windows of %llu per shard make %llu", path, (unsigned long long)u,
                      (unsigned long long)l->windows, (unsigned long long)l->shard_windows,
                      (unsigned long long)teacher_cache_shards(l));
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(root, "data_file_windows");
    if (!cJSON_IsArray(files) || cJSON_GetArraySize(files) < 1)
        return errorf("%s: \"data_file_windows\" must be a non-empty list", path);
    int n = cJSON_GetArraySize(files);
    if (!(l->file_windows = calloc((size_t)n, sizeof *l->file_windows))) return errorf("%s: out of memory", path);
    l->n_files = n;
    uint64_t total = 0;
    int i = 0;
    for (const cJSON *v = files->child; v; v = v->next, i++) {
        if (!cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble > big || v->valuedouble != floor(v->valuedouble))
            return errorf("%s: data_file_windows[%d] must be an integer >= 1", path, i);
        l->file_windows[i] = (uint64_t)v->valuedouble;
        total += l->file_windows[i];
    }
    if (total != l->windows)
        return errorf("%s: data_file_windows add up to %llu windows, not %llu", path, (unsigned long long)total,
                      (unsigned long long)l->windows);
    return STATUS_OK;
}

Status teacher_cache_manifest_read(const char *dir, TeacherCacheLayout *l, uint32_t *crc) {
    memset(l, 0, sizeof *l);
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, TEACHER_CACHE_MANIFEST) >= (int)sizeof path)
        return errorf("%s: path too long", dir);
    struct stat sb;
    if (stat(dir, &sb) != 0) return errorf("%s: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return errorf("%s: not a folder (a teacher cache is a folder)", dir);
    if (stat(path, &sb) != 0)
        return errorf("%s: no %s: not a teacher cache (mlatrain teacher-cache makes one)", dir, TEACHER_CACHE_MANIFEST);
    char *text = NULL;
    size_t len = 0;
    TRY(read_text(path, &text, &len));
    *crc = crc32_update(0, text, len);
    cJSON *root = cJSON_ParseWithLength(text, len);
    Status st = root ? parse_manifest(path, root, l) : errorf("%s: not valid JSON", path);
    cJSON_Delete(root);
    free(text);
    if (st != STATUS_OK) teacher_cache_layout_free(l);
    return st;
}

static void format_number(char *buf, size_t n, double x) {
    for (int digits = 1; digits <= 17; digits++) {
        snprintf(buf, n, "%.*g", digits, x);
        if (strtod(buf, NULL) == x) return;
    }
}

Status teacher_cache_check_made_from(const char *dir, const TeacherCacheLayout *cache,
                                     const TeacherCacheLayout *want) {
    if (cache->teacher_fingerprint != want->teacher_fingerprint)
        return errorf("%s was made from another teacher (%s, fingerprint %08x); this config's teacher is %s, "
                      "fingerprint %08x",
                      dir, cache->teacher, cache->teacher_fingerprint, want->teacher, want->teacher_fingerprint);
    if (cache->seq_len != want->seq_len)
        return errorf("%s was made at data.seq_len %lld; this config's data.seq_len is %lld", dir,
                      (long long)cache->seq_len, (long long)want->seq_len);
    if (cache->temperature != want->temperature) {
        char a[32], b[32];
        format_number(a, sizeof a, cache->temperature);
        format_number(b, sizeof b, want->temperature);
        return errorf("%s holds log-probs at loss.temperature %s; this config's loss.temperature is %s", dir, a, b);
    }
    if (cache->vocab_size != want->vocab_size)
        return errorf("%s was made with a vocabulary of %u; this config's teacher has %u", dir, cache->vocab_size,
                      want->vocab_size);
    if (cache->windows != want->windows || cache->n_files != want->n_files)
        return errorf("%s was made from other tokens: %llu windows in %d data file(s); this config's data.train "
                      "has %llu in %d",
                      dir, (unsigned long long)cache->windows, cache->n_files, (unsigned long long)want->windows,
                      want->n_files);
    for (int i = 0; i < cache->n_files; i++)
        if (cache->file_windows[i] != want->file_windows[i])
            return errorf("%s was made from other tokens: data file %d had %llu windows; this config's data.train "
                          "file %d has %llu",
                          dir, i, (unsigned long long)cache->file_windows[i], i,
                          (unsigned long long)want->file_windows[i]);
    return STATUS_OK;
}

/* The HDF5 1.10 library has no predefined half type; this is the one h5py writes for float16. */
hid_t teacher_cache_logprob_type(int bytes) {
    hid_t t = H5Tcopy(H5T_IEEE_F32LE);
    if (t < 0 || bytes == 4) return t;
    if (H5Tset_fields(t, 15, 10, 5, 0, 10) < 0 || H5Tset_precision(t, 16) < 0 || H5Tset_size(t, 2) < 0 ||
        H5Tset_ebias(t, 15) < 0) {
        H5Tclose(t);
        return H5I_INVALID_HID;
    }
    return t;
}
