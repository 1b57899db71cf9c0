/* The cached teacher in a run: the config's teacher fingerprinted from its files, the cache checked
 * against the config at start, and each micro-batch's windows read, verified and uploaded. */
#include "train/cached_teacher.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/crc32.h"
#include "model/hf/hf_config.h"
#include "model/hf/safetensors.h"

enum { SAMPLE_HEAD = 1 << 20, SAMPLE_BLOCKS = 64, SAMPLE_BLOCK = 4096 };

static uint32_t crc_u64(uint32_t crc, uint64_t v) {
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)(v >> (8 * i));
    return crc32_update(crc, le, 8);
}

/* CRC-32 of bytes [off, off + n) of f, continued from crc. */
static Status crc_range(FILE *f, const char *path, uint64_t off, uint64_t n, unsigned char *buf, uint32_t *crc) {
    if (fseeko(f, (off_t)off, SEEK_SET) != 0) return errorf("%s: cannot seek: %s", path, strerror(errno));
    while (n > 0) {
        size_t want = n < SAMPLE_HEAD ? (size_t)n : SAMPLE_HEAD;
        size_t got = fread(buf, 1, want, f);
        if (got != want) return errorf("%s: cannot read %zu bytes at %llu", path, want, (unsigned long long)off);
        *crc = crc32_update(*crc, buf, got);
        n -= got;
        off += got;
    }
    return STATUS_OK;
}

static Status fingerprint_file(const char *path, unsigned char *buf, uint32_t *crc) {
    FILE *f = fopen(path, "rb");
    if (!f) return errorf("%s: %s", path, strerror(errno));
    struct stat sb;
    Status st = fstat(fileno(f), &sb) == 0 ? STATUS_OK : errorf("%s: %s", path, strerror(errno));
    uint64_t size = st == STATUS_OK ? (uint64_t)sb.st_size : 0;
    *crc = crc_u64(*crc, size);
    if (st == STATUS_OK) st = crc_range(f, path, 0, size < SAMPLE_HEAD ? size : SAMPLE_HEAD, buf, crc);
    if (st == STATUS_OK && size > SAMPLE_HEAD + SAMPLE_BLOCK)
        for (int i = 0; i < SAMPLE_BLOCKS && st == STATUS_OK; i++) {
            uint64_t span = size - SAMPLE_HEAD - SAMPLE_BLOCK;
            st = crc_range(f, path, SAMPLE_HEAD + span * (uint64_t)i / (SAMPLE_BLOCKS - 1), SAMPLE_BLOCK, buf, crc);
        }
    fclose(f);
    return st;
}

Status teacher_fingerprint(const Config *cfg, uint32_t *fingerprint, char *desc, size_t n) {
    *fingerprint = 0;
    if (!cfg->has_teacher) return errorf("%s: teacher: required (a cache holds the teacher's predictions)", cfg->name);
    const ConfigModelSource *src = &cfg->teacher;
    if (!src->path[0]) {
        char text[64];
        snprintf(text, sizeof text, " init random seed %lld", (long long)src->seed);
        uint32_t crc = crc32_update(0, src->arch.json, strlen(src->arch.json));
        *fingerprint = crc32_update(crc, text, strlen(text));
        snprintf(desc, n, "teacher.arch (random, seed %lld)", (long long)src->seed);
        return STATUS_OK;
    }
    snprintf(desc, n, "teacher.path %s", src->path);
    unsigned char *buf = malloc(SAMPLE_HEAD);
    if (!buf) return errorf("teacher: out of memory");
    char path[4096];
    uint32_t crc = 0;
    Status st = snprintf(path, sizeof path, "%s/config.json", src->path) < (int)sizeof path
                    ? fingerprint_file(path, buf, &crc)
                    : errorf("%s: path too long", src->path);
    SafetensorsSet *set = NULL;
    if (st == STATUS_OK) st = safetensors_open(&set, src->path);
    for (int i = 0; st == STATUS_OK && i < safetensors_file_count(set); i++)
        st = fingerprint_file(safetensors_file_path(set, i), buf, &crc);
    safetensors_close(set);
    free(buf);
    if (st != STATUS_OK) return error_context("teacher: ");
    *fingerprint = crc;
    return STATUS_OK;
}

Status teacher_vocab_size(const Config *cfg, int64_t *vocab) {
    if (!cfg->teacher.path[0]) {
        *vocab = cfg->teacher.arch.model.vocab_size;
        return STATUS_OK;
    }
    char path[4096];
    if (snprintf(path, sizeof path, "%s/config.json", cfg->teacher.path) >= (int)sizeof path)
        return errorf("%s: path too long", cfg->teacher.path);
    ModelConfig mc;
    if (hf_config_read(path, &mc) != STATUS_OK) return error_context("teacher: ");
    *vocab = mc.vocab_size;
    return STATUS_OK;
}

Status cached_teacher_expected(const Config *cfg, const Loader *train, uint32_t vocab, TeacherCacheLayout *out) {
    memset(out, 0, sizeof *out);
    TRY(teacher_fingerprint(cfg, &out->teacher_fingerprint, out->teacher, sizeof out->teacher));
    out->temperature = cfg->loss.temperature;
    out->seq_len = cfg->data.seq_len;
    out->vocab_size = vocab;
    out->windows = loader_windows_per_epoch(train);
    int n = loader_file_count(train);
    if (!(out->file_windows = calloc((size_t)n, sizeof *out->file_windows))) return errorf("out of memory");
    out->n_files = n;
    /* Windows are numbered file by file: file i's end is the first window of a later file, found
     * by bisection over the loader's window map. */
    uint64_t w = 0;
    for (int i = 0; i < n; i++) {
        int file = 0;
        uint64_t first = 0;
        uint64_t lo = w, hi = out->windows;
        while (lo < hi) {
            uint64_t mid = lo + (hi - lo) / 2;
            loader_window_source(train, mid, &file, &first);
            if (file <= i)
                lo = mid + 1;
            else
                hi = mid;
        }
        out->file_windows[i] = lo - w;
        w = lo;
    }
    return STATUS_OK;
}

struct CachedTeacher {
    TeacherCache *cache;
    Backend *be;
    int64_t rows, seq, calls, k;
    int rank, world;
    uint64_t *windows;     /* [calls][rows]: each row's window in the dataset */
    float *host_logprobs;  /* [rows * seq, k] */
    int32_t *host_ids;
    Tensor logprobs, ids;
};

Status cached_teacher_open(CachedTeacher **out, const Config *cfg, Backend *be, const Loader *train,
                           int64_t student_vocab, int64_t rows, int64_t seq, int64_t calls, int rank, int world) {
    *out = NULL;
    CachedTeacher *ct = calloc(1, sizeof *ct);
    if (!ct) return errorf("teacher.cache: out of memory");
    ct->be = be;
    ct->rows = rows;
    ct->seq = seq;
    ct->calls = calls;
    ct->rank = rank;
    ct->world = world;
    TeacherCacheLayout want;
    memset(&want, 0, sizeof want);
    int64_t vocab = 0;
    Status st = teacher_vocab_size(cfg, &vocab);
    if (st == STATUS_OK && vocab != student_vocab)
        st = errorf("%s: the teacher's vocab_size %lld differs from the student's %lld (KL needs one vocabulary)",
                    cfg->name, (long long)vocab, (long long)student_vocab);
    if (st == STATUS_OK) st = cached_teacher_expected(cfg, train, (uint32_t)vocab, &want);
    if (st == STATUS_OK) st = teacher_cache_open(&ct->cache, cfg->teacher_cache);
    if (st == STATUS_OK) st = teacher_cache_check_made_from(cfg->teacher_cache, teacher_cache_layout(ct->cache), &want);
    teacher_cache_layout_free(&want);
    if (st == STATUS_OK) {
        ct->k = teacher_cache_layout(ct->cache)->top_k;
        int64_t n = rows * seq;
        ct->windows = calloc((size_t)(calls * rows), sizeof *ct->windows);
        ct->host_logprobs = malloc((size_t)(n * ct->k) * sizeof(float));
        ct->host_ids = malloc((size_t)(n * ct->k) * sizeof(int32_t));
        if (!ct->windows || !ct->host_logprobs || !ct->host_ids) st = errorf("teacher.cache: out of memory");
        if (st == STATUS_OK) st = be->alloc(be, &ct->logprobs, DT_F32, 2, (int64_t[]){n, ct->k});
        if (st == STATUS_OK) st = be->alloc(be, &ct->ids, DT_I32, 2, (int64_t[]){n, ct->k});
    }
    if (st != STATUS_OK) {
        cached_teacher_close(ct);
        return error_context("%s: teacher.cache: ", cfg->name);
    }
    *out = ct;
    return STATUS_OK;
}

void cached_teacher_close(CachedTeacher *ct) {
    if (!ct) return;
    if (ct->logprobs.data) ct->be->release(ct->be, &ct->logprobs);
    if (ct->ids.data) ct->be->release(ct->be, &ct->ids);
    teacher_cache_close(ct->cache);
    free(ct->windows);
    free(ct->host_logprobs);
    free(ct->host_ids);
    free(ct);
}

void cached_teacher_note_windows(CachedTeacher *ct, const Loader *train, int64_t call) {
    /* loader_next's rows for this rank: global positions cursor + i * world + rank. */
    LoaderCursor c = loader_cursor(train);
    uint64_t base = c.epoch * c.windows_per_epoch + c.position;
    for (int64_t i = 0; i < ct->rows; i++)
        ct->windows[call * ct->rows + i] =
            loader_window_at(train, base + (uint64_t)i * (uint64_t)ct->world + (uint64_t)ct->rank);
}

Status cached_teacher_upload(CachedTeacher *ct, int64_t call, const int32_t *windows) {
    int64_t per_row = ct->seq * ct->k;
    for (int64_t i = 0; i < ct->rows; i++)
        TRY(teacher_cache_read_window(ct->cache, ct->windows[call * ct->rows + i], windows + i * (ct->seq + 1),
                                      ct->host_logprobs + i * per_row, ct->host_ids + i * per_row));
    TRY(ct->be->upload(ct->be, ct->logprobs, ct->host_logprobs));
    return ct->be->upload(ct->be, ct->ids, ct->host_ids);
}

Tensor cached_teacher_logprobs(const CachedTeacher *ct) { return ct->logprobs; }
Tensor cached_teacher_ids(const CachedTeacher *ct) { return ct->ids; }
