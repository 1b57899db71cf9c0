/* Tokenizer throughput: encodes a text file with a tokenizer.json on one thread, as one document
 * or as documents split at blank lines ("\n\n"), and prints tokens/s; --ids writes the ids (int32,
 * little-endian) for comparison with HF tokenizers. tools/bench-tokenizer.sh runs it beside HF. */
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
        fprintf(stderr, "usage: bench_tokenizer TOKENIZER TEXT [--ids OUT.bin] [--repeat N] [--paragraphs]\n");
        return 2;
    }
    const char *ids_out = NULL;
    int repeat = 3, by_paragraph = 0;
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--ids") == 0 && i + 1 < argc) ids_out = argv[++i];
        else if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) repeat = atoi(argv[++i]);
        else if (strcmp(argv[i], "--paragraphs") == 0) by_paragraph = 1;
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
    /* Documents as [start, end) offsets, found before timing (HF's side splits in Python first). */
    size_t *bounds = malloc(2 * ((size_t)size / 2 + 2) * sizeof *bounds), n_docs = 0, start = 0;
    if (!bounds) return fail("out of memory");
    for (size_t i = 0; by_paragraph && i + 1 < (size_t)size; i++)
        if (text[i] == '\n' && text[i + 1] == '\n') {
            bounds[2 * n_docs] = start;
            bounds[2 * n_docs++ + 1] = i;
            start = ++i + 1;
        }
    bounds[2 * n_docs] = start;
    bounds[2 * n_docs++ + 1] = (size_t)size;
    /* Rounds after the first find the word cache warm, as HF's does in one process. */
    double best = 1e30;
    int64_t total = 0;
    int32_t *all = NULL;
    for (int r = 0; r < repeat; r++) {
        double s = monotonic_seconds();
        total = 0;
        for (size_t d = 0; d < n_docs; d++) {
            int32_t *ids = NULL;
            int64_t n = 0;
            if (tokenizer_encode(tok, text + bounds[2 * d], bounds[2 * d + 1] - bounds[2 * d], 0, &ids, &n) != STATUS_OK)
                return fail("encode: ");
            if (r == 0 && ids_out) {
                int32_t *grown = realloc(all, (size_t)(total + n) * sizeof *grown + 1);
                if (!grown) return fail("out of memory");
                all = grown;
                memcpy(all + total, ids, (size_t)n * sizeof *ids);
            }
            total += n;
            free(ids);
        }
        double dt = monotonic_seconds() - s;
        if (dt < best) best = dt;
    }
    int64_t docs = (int64_t)n_docs;
    free(bounds);
    if (ids_out) {
        FILE *o = fopen(ids_out, "wb");
        if (!o || fwrite(all, sizeof *all, (size_t)total, o) != (size_t)total || fclose(o) != 0) {
            fprintf(stderr, "bench_tokenizer: cannot write %s\n", ids_out);
            return 1;
        }
    }
    printf("mlatrain (C): %lld tokens in %lld documents, %ld bytes, %.3f s (best of %d): %.0f tokens/s, %.1f MB/s "
           "(load %.2f s)\n",
           (long long)total, (long long)docs, size, best, repeat, (double)total / best, (double)size / best / 1e6,
           t_load);
    free(all);
    free(text);
    tokenizer_free(tok);
    return 0;
}
