/* Tokenizer throughput: encodes a text file with a tokenizer.json, single-threaded, and prints
 * tokens/s; with --ids writes the ids (int32, little-endian) for comparison with HF tokenizers.
 * tools/bench-tokenizer.sh runs it beside HF tokenizers on the same text. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "data/tokenizer/tokenizer.h"

static int fail(const char *what) {
    fprintf(stderr, "bench_tokenizer: %s%s\n", what, error_message());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: bench_tokenizer TOKENIZER TEXT [--ids OUT.bin] [--repeat N] [--lines]\n");
        return 2;
    }
    const char *ids_out = NULL;
    int repeat = 3, by_line = 0;
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--ids") == 0 && i + 1 < argc) ids_out = argv[++i];
        else if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) repeat = atoi(argv[++i]);
        else if (strcmp(argv[i], "--lines") == 0) by_line = 1;
        else {
            fprintf(stderr, "bench_tokenizer: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    double t0 = monotonic_seconds();
    Tokenizer *tok = NULL;
    if (tokenizer_load(argv[1], &tok) != STATUS_OK) return fail("");
    double t_load = monotonic_seconds() - t0;
    FILE *f = fopen(argv[2], "rb");
    if (!f) {
        fprintf(stderr, "bench_tokenizer: cannot open %s\n", argv[2]);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)size + 1);
    if (!text || fread(text, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "bench_tokenizer: cannot read %s\n", argv[2]);
        return 1;
    }
    fclose(f);
    double best = 1e30;
    int64_t total = 0;
    int32_t *all = NULL;
    for (int r = 0; r < repeat; r++) {
        /* A fresh tokenizer each round: the word cache starts empty, as HF's does in a new process. */
        Tokenizer *t = NULL;
        if (tokenizer_load(argv[1], &t) != STATUS_OK) return fail("");
        double s = monotonic_seconds();
        total = 0;
        int32_t *ids = NULL;
        int64_t n = 0;
        size_t at = 0;
        while (at < (size_t)size || (size == 0 && at == 0)) {
            size_t end = (size_t)size;
            if (by_line) {
                const char *nl = memchr(text + at, '\n', (size_t)size - at);
                end = nl ? (size_t)(nl - text) + 1 : (size_t)size;
            }
            if (tokenizer_encode(t, text + at, end - at, 0, &ids, &n) != STATUS_OK) return fail("encode: ");
            if (r == 0 && ids_out) {
                int32_t *grown = realloc(all, (size_t)(total + n) * sizeof *grown + 1);
                if (!grown) return fail("out of memory");
                all = grown;
                memcpy(all + total, ids, (size_t)n * sizeof *ids);
            }
            total += n;
            free(ids);
            at = end;
            if (size == 0) break;
        }
        double dt = monotonic_seconds() - s;
        if (dt < best) best = dt;
        tokenizer_free(t);
    }
    if (ids_out) {
        FILE *o = fopen(ids_out, "wb");
        if (!o || fwrite(all, sizeof *all, (size_t)total, o) != (size_t)total || fclose(o) != 0) {
            fprintf(stderr, "bench_tokenizer: cannot write %s\n", ids_out);
            return 1;
        }
    }
    printf("mlatrain tokenizer: %lld tokens from %ld bytes in %.3f s (best of %d): %.0f tokens/s, %.1f MB/s "
           "(load %.3f s)\n",
           (long long)total, size, best, repeat, (double)total / best, (double)size / best / 1e6, t_load);
    free(all);
    free(text);
    tokenizer_free(tok);
    return 0;
}
