/* CRC-32 (IEEE 802.3, as zlib computes it): the whole-file checksum in checkpoint manifests. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

/* Continues crc over data; start with crc = 0. */
uint32_t crc32_update(uint32_t crc, const void *data, size_t n);

/* CRC-32 and size of a whole file. */
Status crc32_file(const char *path, uint32_t *crc, uint64_t *size);
