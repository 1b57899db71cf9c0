/* Copying the tokenizer and generation files from the model folder a student came from: its
 * tokenizer, chat template and stop ids (generation_config.json's eos list) go with it. */
#include "train/tokenizer_files.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/file_io.h"
#include "train/checkpoint.h"

static const char *const TOKENIZER_FILES[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                              "tokenizer.model", "generation_config.json"};
enum { N_TOKENIZER_FILES = sizeof TOKENIZER_FILES / sizeof TOKENIZER_FILES[0], TOKENIZER_PATH_MAX = 4096 };

/* A tokenizer file is megabytes; this much is not one. */
static const long TOKENIZER_FILE_MAX = 1L << 30;

static Status copy_file(const char *src, const char *dst, int *copied) {
    FILE *f = fopen(src, "rb");
    if (!f) return errno == ENOENT ? STATUS_OK : errorf("%s: cannot read: %s", src, strerror(errno));
    Status st = STATUS_OK;
    char *data = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n < 0 || n > TOKENIZER_FILE_MAX || fseek(f, 0, SEEK_SET) != 0)
        st = errorf("%s: cannot read (or larger than a tokenizer file)", src);
    if (st == STATUS_OK) {
        data = malloc((size_t)n + 1);
        if (!data) st = errorf("%s: out of memory (%ld bytes)", src, n);
        else if (fread(data, 1, (size_t)n, f) != (size_t)n) st = errorf("%s: cannot read: %s", src, strerror(errno));
    }
    fclose(f);
    if (st == STATUS_OK) st = file_write_atomic(dst, data, (size_t)n);
    if (st == STATUS_OK) (*copied)++;
    free(data);
    return st;
}

Status tokenizer_files_copy(const char *src_dir, const char *out_dir, int *copied) {
    int n = 0;
    for (int i = 0; i < N_TOKENIZER_FILES; i++) {
        char src[TOKENIZER_PATH_MAX], dst[TOKENIZER_PATH_MAX];
        if (snprintf(src, sizeof src, "%s/%s", src_dir, TOKENIZER_FILES[i]) >= (int)sizeof src ||
            snprintf(dst, sizeof dst, "%s/%s", out_dir, TOKENIZER_FILES[i]) >= (int)sizeof dst)
            return errorf("%s: path too long", src_dir);
        TRY(copy_file(src, dst, &n));
    }
    if (copied) *copied = n;
    return STATUS_OK;
}

static int holds_tokenizer_files(const char *dir) {
    for (int i = 0; i < N_TOKENIZER_FILES; i++) {
        char path[TOKENIZER_PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s", dir, TOKENIZER_FILES[i]) >= (int)sizeof path) return 0;
        FILE *f = fopen(path, "rb");
        if (f) {
            fclose(f);
            return 1;
        }
    }
    return 0;
}

const char *tokenizer_files_source(const Config *cfg) {
    if (cfg->student.init_from.path[0] && holds_tokenizer_files(cfg->student.init_from.path))
        return cfg->student.init_from.path;
    if (cfg->has_teacher && cfg->teacher.path[0] && holds_tokenizer_files(cfg->teacher.path)) return cfg->teacher.path;
    return NULL;
}

Status tokenizer_files_copy_for_checkpoint(const char *ckpt_dir, const char *out_dir, char *from, size_t n,
                                           int *copied) {
    if (from && n) from[0] = '\0';
    if (copied) *copied = 0;
    ModelConfig mc;
    CheckpointState cs;
    char *saved = NULL;
    TRY(checkpoint_read_header(ckpt_dir, &mc, &cs, &saved));
    Config *cfg = calloc(1, sizeof *cfg);
    Status st = cfg ? STATUS_OK : errorf("%s: out of memory", ckpt_dir);
    if (st == STATUS_OK && config_parse_json(cfg, saved, ckpt_dir, NULL, 0) != STATUS_OK)
        st = error_context("%s: the run's config: ", ckpt_dir);
    const char *src = st == STATUS_OK ? tokenizer_files_source(cfg) : NULL;
    if (src) {
        st = tokenizer_files_copy(src, out_dir, copied);
        if (from && n) snprintf(from, n, "%s", src);
    }
    free(cfg);
    free(saved);
    return st;
}
