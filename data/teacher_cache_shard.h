/* What the teacher cache's reader and writer share: shard names, the manifest's text and CRC, and
 * opening a shard with its layout checked against the manifest. Not part of the cache's interface. */
#pragma once

#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "data/teacher_cache.h"

/* dir/shard-NNNNN.h5 into buf. */
Status teacher_cache_shard_path(char *buf, size_t n, const char *dir, uint64_t s);

/* The manifest as JSON text (deterministic: the same layout gives the same bytes). Caller frees. */
Status teacher_cache_manifest_text(const TeacherCacheLayout *l, char **out);
/* Reads and validates dir's manifest into *l; *crc is the CRC-32 of its bytes. */
Status teacher_cache_manifest_read(const char *dir, TeacherCacheLayout *l, uint32_t *crc);

/* The HDF5 type of stored log-probs: IEEE half (which h5py reads as float16) or float32. Close it. */
hid_t teacher_cache_logprob_type(int bytes);

/* An open shard: its datasets, checked against the layout and the manifest's CRC. */
typedef struct {
    hid_t file, logprobs, ids, crc, token_crc;
    uint64_t windows;
} CacheShard;

Status teacher_cache_shard_open(CacheShard *sh, const char *path, const TeacherCacheLayout *l, uint64_t s,
                                uint32_t manifest_crc);
void teacher_cache_shard_close(CacheShard *sh);
