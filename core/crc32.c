/* Table-driven CRC-32, reflected polynomial 0xEDB88320. */
#include "core/crc32.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint32_t table[256];
static int table_ready;

static void build_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
    table_ready = 1;
}

uint32_t crc32_update(uint32_t crc, const void *data, size_t n) {
    if (!table_ready) build_table();
    const unsigned char *p = data;
    crc = ~crc;
    for (size_t i = 0; i < n; i++) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

Status crc32_file(const char *path, uint32_t *crc, uint64_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return errorf("%s: cannot read: %s", path, strerror(errno));
    enum { BUF = 1 << 20 };
    unsigned char *buf = malloc(BUF);
    if (!buf) {
        fclose(f);
        return errorf("%s: out of memory", path);
    }
    uint32_t c = 0;
    uint64_t total = 0;
    size_t n;
    while ((n = fread(buf, 1, BUF, f)) > 0) {
        c = crc32_update(c, buf, n);
        total += n;
    }
    int bad = ferror(f);
    free(buf);
    fclose(f);
    if (bad) return errorf("%s: read error", path);
    *crc = c;
    *size = total;
    return STATUS_OK;
}
