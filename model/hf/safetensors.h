/* HuggingFace safetensors I/O: a validating, memory-mapped reader for one file or a sharded model
 * (model.safetensors.index.json), and an atomic writer of float32 tensors as F32, BF16 or F16. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "core/half.h"
#include "core/status.h"
#include "core/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The reference implementation's header limit; a larger header is refused, not read. */
#define SAFETENSORS_MAX_HEADER_BYTES 100000000ull

/* ---- reading ---- */

typedef struct {
    const char *name;       /* case-sensitive, as in the file; valid until safetensors_close */
    DType dtype;            /* DT_F32, DT_BF16 or DT_F16 (the only dtypes a file may hold) */
    int ndim;               /* 0 (a scalar) to TENSOR_MAX_DIMS */
    int64_t shape[TENSOR_MAX_DIMS];
    const void *data;       /* inside the read-only mapping, little-endian, NOT necessarily aligned */
    size_t bytes;           /* numel * dtype_size */
    int file_index;         /* which file holds it: safetensors_file_path(s, file_index) */
} SafetensorsTensor;

typedef struct SafetensorsSet SafetensorsSet;

/* Opens and validates a model:
 * - a directory: its model.safetensors, or else its model.safetensors.index.json (the order
 *   HF transformers uses when both exist);
 * - a file whose name ends in ".json": a shard index, its shards next to it;
 * - any other file: one safetensors file.
 * Every file is checked as the reference implementation checks it (header length, JSON, dtypes,
 * shapes, offsets that tile the data section exactly, no duplicate names), and a shard index must
 * agree exactly with its shards: every listed tensor in the shard named, no tensor in a shard that
 * the index does not list, no tensor in two shards. Errors name the file and the tensor or key. */
Status safetensors_open(SafetensorsSet **out, const char *dir_or_file);
void safetensors_close(SafetensorsSet *s);

/* Tensors in name order (strcmp), whatever file they are in: for i in [0, count). */
int64_t safetensors_count(const SafetensorsSet *s);
const SafetensorsTensor *safetensors_tensor(const SafetensorsSet *s, int64_t i);
/* NULL when absent. */
const SafetensorsTensor *safetensors_find(const SafetensorsSet *s, const char *name);

int safetensors_file_count(const SafetensorsSet *s);
const char *safetensors_file_path(const SafetensorsSet *s, int file_index);

/* Copies a tensor into dst as float32 (F32 bit for bit; BF16/F16 widened exactly) after checking
 * that its shape is expected_shape[0..ndim) (-1 matches any extent). dst holds numel floats. */
Status safetensors_read_f32(const SafetensorsSet *s, const char *name, float *dst, int ndim,
                            const int64_t *expected_shape);

/* ---- writing ---- */

typedef struct {
    const char *name;
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    const float *data;      /* numel floats, row-major */
} SafetensorsEntry;

/* Writes the tensors into one safetensors file at path, converted to dtype (DT_F32, DT_BF16 or
 * DT_F16, rounding to nearest even), in the layout the Python library writes: header
 * {"__metadata__":{"format":"pt"}, tensors sorted by name}, padded with spaces to a multiple of
 * 8 bytes, data in the same order. Atomic: a temporary file in the same directory, fsync, rename;
 * on error nothing is left behind and an existing file at path is untouched. */
Status safetensors_write_file(const char *path, const SafetensorsEntry *entries, int64_t count,
                              DType dtype);

/* Writes a model into the existing directory dir as HF save_pretrained does: model.safetensors
 * when the data fits in max_shard_bytes (0: no limit), else model-0000N-of-0000M.safetensors
 * (tensors in name order, a new shard whenever the next tensor would overflow the current one; a
 * tensor larger than the limit gets a shard of its own) plus model.safetensors.index.json. All
 * files are complete on disk before any is renamed into place, the index last. Files of a
 * previous save in the other layout (or stale shards) are then removed, so dir holds one model. */
Status safetensors_write_model(const char *dir, const SafetensorsEntry *entries, int64_t count,
                               DType dtype, size_t max_shard_bytes);

#ifdef __cplusplus
}
#endif
