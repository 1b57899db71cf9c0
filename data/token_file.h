/* Token files: HDF5 with a 1-D dataset /tokens (uint16 or uint32, chunked, fletcher32) and the
 * integer attributes vocab_size and eos_id; read by window, written atomically. See docs/data.md. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Tokens per HDF5 chunk in files we write. A random window costs a read and checksum of its whole
 * chunk: 16 Ki tokens read shuffled windows 3x faster than 64 Ki, and in order only 5-10% slower
 * (docs/data.md has the figures). */
enum { TOKEN_FILE_CHUNK = 16384 };

/* The largest vocabulary a file may declare: ids reach the model as int32. */
#define TOKEN_FILE_MAX_VOCAB 2147483647u

typedef struct {
    uint64_t n_tokens;
    uint32_t vocab_size;
    uint32_t eos_id;
    int token_bytes;     /* 2 (uint16) or 4 (uint32) on disk */
    uint64_t chunk;      /* tokens per chunk; 0 when the dataset is not chunked */
    int fletcher32;      /* the dataset carries per-chunk checksums */
} TokenFileInfo;

typedef struct TokenFile TokenFile;

/* Opens and validates the layout (the file, /tokens, its rank and dtype, the two attributes).
 * Token values are checked as they are read. Errors name the file. */
Status token_file_open(TokenFile **out, const char *path);
void token_file_close(TokenFile *f);
const TokenFileInfo *token_file_info(const TokenFile *f);
const char *token_file_path(const TokenFile *f);

/* tokens[start, start + count) into dst; an id >= vocab_size, a range past the end or an
 * unreadable chunk (a checksum mismatch) is an error naming the file and the position. */
Status token_file_read(TokenFile *f, uint64_t start, uint64_t count, int32_t *dst);

/* What a full pass over a file finds; every token is read and checked. */
typedef struct {
    TokenFileInfo info;
    uint64_t documents;  /* eos-separated; a trailing run without eos counts as one */
    uint64_t eos_count;
    uint32_t max_id;     /* largest id present (0 for an empty file) */
} TokenFileStats;

Status token_file_scan(const char *path, TokenFileStats *stats);

/* ---- writing ---- */

typedef struct TokenWriter TokenWriter;

/* Starts `path` as a temporary file beside it (path.tmp.<pid>); nothing appears under `path`
 * until token_writer_commit. uint16 storage when vocab_size <= 65536, else uint32. */
Status token_writer_create(TokenWriter **out, const char *path, uint32_t vocab_size, uint32_t eos_id);

/* Appends ids; each must be < vocab_size. */
Status token_writer_append(TokenWriter *w, const int32_t *ids, size_t n);

uint64_t token_writer_count(const TokenWriter *w);

/* Writes the last chunk and closes and fsyncs the temporary file. Calling it before commit lets
 * a caller with several outputs publish none of them unless all were written. */
Status token_writer_finish(TokenWriter *w);

/* Finishes if needed, renames the temporary file to its path and syncs the directory; frees w
 * in every case (on error the temporary file is removed). */
Status token_writer_commit(TokenWriter *w);

/* Removes the temporary file and frees w. NULL is allowed. */
void token_writer_discard(TokenWriter *w);

#ifdef __cplusplus
}
#endif
