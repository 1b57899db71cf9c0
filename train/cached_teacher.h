/* The teacher read from a top-k cache (teacher.cache) instead of run: what a config expects of a
 * cache (its teacher's fingerprint, data, seq_len, temperature), and each micro-batch's rows. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "core/backend.h"
#include "data/loader.h"
#include "data/teacher_cache.h"
#include "train/config.h"

/* A fingerprint of the config's teacher, from its files without loading it: an HF folder's
 * config.json and, of each safetensors file, its size, its first MiB (the header and the first
 * tensors) and 64 blocks of 4 KiB spread over the rest; an inline arch's JSON, init and seed. desc
 * (n bytes) says what the teacher is ("teacher.path models/x"). */
Status teacher_fingerprint(const Config *cfg, uint32_t *fingerprint, char *desc, size_t n);

/* The teacher's vocab_size from its config.json or inline arch. */
Status teacher_vocab_size(const Config *cfg, int64_t *vocab);

/* What a cache of this config's teacher over `train` (data.train read in order, one rank) must be
 * made from: teacher, fingerprint, temperature, seq_len, vocab_size, windows, file_windows (owned:
 * teacher_cache_layout_free). top_k, the widths and the shard size are left 0. */
Status cached_teacher_expected(const Config *cfg, const Loader *train, uint32_t vocab, TeacherCacheLayout *out);

typedef struct CachedTeacher CachedTeacher;

/* Opens teacher.cache and refuses it unless it was made from this config's teacher, data.train
 * (train), data.seq_len and loss.temperature, with the student's vocabulary. rows and seq: the
 * micro-batch's shape; calls: micro-batches per step; rank and world: the data-parallel job. */
Status cached_teacher_open(CachedTeacher **out, const Config *cfg, Backend *be, const Loader *train,
                           int64_t student_vocab, int64_t rows, int64_t seq, int64_t calls, int rank, int world);
void cached_teacher_close(CachedTeacher *ct);

/* Records which windows loader_next(train, rows, ...) will return for micro-batch `call` of this
 * step: call it just before that loader_next. */
void cached_teacher_note_windows(CachedTeacher *ct, const Loader *train, int64_t call);

/* Reads micro-batch `call`'s rows from the cache, checks them against its windows (rows x (seq + 1)
 * token ids, as the loader returned them) and uploads them. */
Status cached_teacher_upload(CachedTeacher *ct, int64_t call, const int32_t *windows);

/* The uploaded rows: log-probs f32 [rows * seq, k] and ids i32 [rows * seq, k]. */
Tensor cached_teacher_logprobs(const CachedTeacher *ct);
Tensor cached_teacher_ids(const CachedTeacher *ct);
