/* Teacher top-k caches: the teacher's log-softmax(logits / T) at its k most likely ids for every
 * position of every window of a dataset, in checksummed HDF5 shards under one folder (docs/data.md). */
#pragma once

#include <stdint.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The folder's description of itself, and the file it is kept in. */
#define TEACHER_CACHE_MANIFEST "manifest.json"
#define TEACHER_CACHE_FORMAT "mlatrain-teacher-cache"
enum { TEACHER_CACHE_VERSION = 1, TEACHER_CACHE_TEACHER_MAX = 640 };

/* What a cache was made from and how it is laid out. Window w of the cache is window w of the
 * dataset (data/loader.h: each file cut into windows of seq_len + 1 tokens, files in order); its
 * seq_len rows are the teacher's view of positions 0..seq_len-1, i.e. of the targets 1..seq_len. */
typedef struct {
    char teacher[TEACHER_CACHE_TEACHER_MAX]; /* what the teacher was, for messages ("teacher.path ...") */
    uint32_t teacher_fingerprint;            /* train/teacher_fingerprint.h */
    double temperature;                      /* T of log-softmax(logits / T) */
    int64_t top_k;                           /* k, 1 <= k <= vocab_size */
    int64_t seq_len;
    uint32_t vocab_size;                     /* the teacher's */
    int logprob_bytes;                       /* 2: IEEE half, 4: float32 */
    int id_bytes;                            /* 2: uint16 (vocab_size <= 65536), 4: uint32 */
    uint64_t windows;                        /* the dataset's windows */
    uint64_t shard_windows;                  /* windows per shard file; the last may hold fewer */
    int n_files;
    uint64_t *file_windows;                  /* [n_files]: each data file's windows, in order */
} TeacherCacheLayout;

void teacher_cache_layout_free(TeacherCacheLayout *l);
uint64_t teacher_cache_shards(const TeacherCacheLayout *l);
/* Windows of shard s (shard_windows, or fewer in the last). */
uint64_t teacher_cache_windows_in_shard(const TeacherCacheLayout *l, uint64_t s);
/* Bytes of one position's k log-probs and ids. */
int64_t teacher_cache_bytes_per_token(const TeacherCacheLayout *l);
/* CRC-32 of a window's seq_len + 1 token ids as little-endian int32: ties a cached window to its tokens. */
uint32_t teacher_cache_token_crc(const int32_t *tokens, int64_t n);

/* ---- what a run expects of a cache ---- */

/* Refuses a cache that is not the teacher's view of this data: the first difference, by name (the
 * teacher, data.seq_len, loss.temperature, the vocabulary, the data's windows). dir starts the
 * message. k, the storage widths and the shard size are the cache's own. */
Status teacher_cache_check_made_from(const char *dir, const TeacherCacheLayout *cache,
                                     const TeacherCacheLayout *want);

/* ---- reading ---- */

typedef struct TeacherCache TeacherCache;

/* Reads dir's manifest and checks that every shard is present (an incomplete cache is refused,
 * naming the first missing shard). Shards are opened as windows are read. */
Status teacher_cache_open(TeacherCache **out, const char *dir);
void teacher_cache_close(TeacherCache *c);
const TeacherCacheLayout *teacher_cache_layout(const TeacherCache *c);

/* Window w: logprobs f32 [seq_len, k] and ids i32 [seq_len, k], each row sorted by log-prob, most
 * likely first. The window's stored CRC-32 is verified (a mismatch is an error naming the shard
 * and the window); tokens (seq_len + 1 ids, may be NULL) must be the tokens the window was made
 * from, else the error says the cache was made from other data. */
Status teacher_cache_read_window(TeacherCache *c, uint64_t w, const int32_t *tokens, float *logprobs,
                                 int32_t *ids);

/* ---- writing ---- */

typedef struct TeacherCacheWriter TeacherCacheWriter;

/* Starts or continues a cache in dir (created when missing). A new folder gets the manifest; a
 * folder holding one must describe the same layout (else an error names what differs: a cache is
 * never mixed from two teachers, datasets or settings). Temporary files a killed writer left are
 * removed. */
Status teacher_cache_writer_open(TeacherCacheWriter **out, const char *dir, const TeacherCacheLayout *layout);
void teacher_cache_writer_close(TeacherCacheWriter *w);

/* Whether shard s is already in place (complete: shards appear only whole). One that is present
 * but unreadable or of another layout is an error. */
Status teacher_cache_shard_done(TeacherCacheWriter *w, uint64_t s, int *done);

/* Writes shard s whole: its windows' logprobs [n, seq_len, k] (f32, stored in the layout's width),
 * ids [n, seq_len, k] (each < vocab_size) and token CRCs [n], n being the shard's window count.
 * Written beside and renamed, so a killed writer leaves the shard absent, never partial. */
Status teacher_cache_write_shard(TeacherCacheWriter *w, uint64_t s, const float *logprobs, const int32_t *ids,
                                 const uint32_t *token_crcs);

/* Bytes of dir's manifest and shards on disk. */
Status teacher_cache_disk_bytes(const char *dir, const TeacherCacheLayout *l, uint64_t *bytes);

#ifdef __cplusplus
}
#endif
