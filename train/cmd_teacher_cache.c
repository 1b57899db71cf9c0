/* The teacher-cache command: data.train's windows in order through the teacher, train.micro_batch
 * windows per forward, the logits a slice of rows at a time into top-k, a shard at a time into the
 * cache; shards already in place are skipped, so a killed run continues where it stopped. */
#include "train/cmd_teacher_cache.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/progress.h"
#include "data/loader.h"
#include "data/teacher_cache.h"
#include "train/cached_teacher.h"
#include "train/models.h"
#include "train/teacher_topk.h"

enum { CACHE_MAX_SETS = 64, DEFAULT_TOP_K = 64 };
/* Default shard size, and the logits held at once (rows x vocab floats). */
#define SHARD_TARGET_BYTES ((int64_t)64 << 20)
#define LOGITS_BYTES ((int64_t)64 << 20)

void cmd_teacher_cache_usage(void) {
    printf("usage: mlatrain teacher-cache --config FILE [--out DIR] [--top-k K] [--shard-windows N]\n"
           "                              [--logprobs f16|f32] [--set key.path=value ...]\n"
           "\n"
           "Runs the config's teacher over every window of data.train (seq_len + 1 tokens, in order) and\n"
           "writes, for each of a window's seq_len positions, log-softmax(logits / loss.temperature) at\n"
           "the teacher's K most likely ids (default %d) to DIR (default teacher.cache): HDF5 shards of N\n"
           "windows (default: about 64 MiB each) with a CRC-32 per window, and manifest.json naming the\n"
           "teacher, the data, seq_len and the temperature. Training with teacher.cache = DIR reads these\n"
           "instead of running the teacher. Run again after an interruption: shards already written are\n"
           "kept, the missing ones computed. Log-probs are stored as IEEE half (f16, default) or float32;\n"
           "ids as uint16 when the vocabulary allows, else uint32. See docs/data.md.\n",
           DEFAULT_TOP_K);
}

static Status parse_count(const char *opt, const char *v, int64_t lo, int64_t *out) {
    char *end = NULL;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < lo)
        return errorf("teacher-cache: %s: expected an integer >= %lld, got \"%s\"", opt, (long long)lo, v);
    *out = x;
    return STATUS_OK;
}

typedef struct {
    const Config *cfg;
    Backend *be;
    Model *teacher;
    ForwardState *st;
    Loader *data;
    int64_t B, T, V, D, k, logit_rows;
    Tensor ids, hidden, logits;
    int32_t *windows, *host_ids;
    float *host_logits;
    float *shard_logprobs;  /* [shard_windows, T, k] */
    int32_t *shard_ids;
    uint32_t *token_crcs;
    Progress progress;      /* windows computed by this run */
    int64_t computed;
} CacheRun;

static void run_free(CacheRun *r) {
    Tensor *ts[] = {&r->ids, &r->hidden, &r->logits};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
        if (ts[i]->data) r->be->release(r->be, ts[i]);
    forward_state_destroy(r->st);
    model_destroy(r->teacher);
    loader_close(r->data);
    if (r->be) backend_destroy(r->be);
    free(r->windows);
    free(r->host_ids);
    free(r->host_logits);
    free(r->shard_logprobs);
    free(r->shard_ids);
    free(r->token_crcs);
}

/* Windows [first, first + n) into r->shard_*: B windows per forward (a short last batch repeats
 * its last window, whose rows are then not used). */
static Status compute_windows(CacheRun *r, uint64_t first, uint64_t n) {
    int64_t W = r->T + 1;
    for (uint64_t b0 = 0; b0 < n; b0 += (uint64_t)r->B) {
        uint64_t m = n - b0 < (uint64_t)r->B ? n - b0 : (uint64_t)r->B;
        for (int64_t i = 0; i < r->B; i++) {
            uint64_t w = first + b0 + ((uint64_t)i < m ? (uint64_t)i : m - 1);
            TRY(loader_read_window(r->data, w, r->windows + i * W));
            memcpy(r->host_ids + i * r->T, r->windows + i * W, (size_t)r->T * sizeof(int32_t));
            if ((uint64_t)i < m) r->token_crcs[b0 + (uint64_t)i] = teacher_cache_token_crc(r->windows + i * W, W);
        }
        TRY(r->be->upload(r->be, r->ids, r->host_ids));
        TRY(model_forward(r->teacher, r->st, r->ids, r->hidden));
        int64_t rows = (int64_t)m * r->T;
        size_t hidden_row = (size_t)r->D * dtype_size(r->hidden.dtype);
        for (int64_t r0 = 0; r0 < rows; r0 += r->logit_rows) {
            int64_t nr = rows - r0 < r->logit_rows ? rows - r0 : r->logit_rows;
            Tensor h = tensor_view((char *)r->hidden.data + (size_t)r0 * hidden_row, r->hidden.dtype, 2,
                                   (int64_t[]){nr, r->D});
            Tensor z = tensor_view(r->logits.data, DT_F32, 2, (int64_t[]){nr, r->V});
            TRY(r->be->ops.linear_forward(r->be, z, h, model_compute_lm_head(r->teacher), tensor_none()));
            TRY(r->be->download(r->be, r->host_logits, z));
            int64_t at = ((int64_t)b0 * r->T + r0) * r->k;
            if (teacher_topk_rows(r->host_logits, nr, r->V, (float)r->cfg->loss.temperature, r->k,
                                  r->shard_logprobs + at, r->shard_ids + at) != STATUS_OK)
                return error_context("window %llu: ", (unsigned long long)(first + b0 + (uint64_t)(r0 / r->T)));
        }
        r->computed += (int64_t)m;
        progress_update(&r->progress, r->computed);
    }
    return STATUS_OK;
}

static Status run_cache(CacheRun *r, const char *out, int64_t top_k, int64_t shard_windows, int logprob_bytes) {
    const Config *cfg = r->cfg;
    TRY(config_check_train(cfg));
    BackendOptions bo = {.threads = (int)cfg->run.threads, .device = 0};
    TRY(backend_create(&r->be, config_device_name(cfg->device), bo));
    r->T = cfg->data.seq_len;
    r->B = cfg->train.micro_batch;
    const char *patterns[CONFIG_LIST_MAX];
    for (int i = 0; i < cfg->data.train.count; i++) patterns[i] = cfg->data.train.items[i];
    LoaderOptions lo = {.patterns = patterns, .n_patterns = cfg->data.train.count, .seq_len = (int)r->T,
                        .seed = (uint64_t)cfg->run.seed, .rank = 0, .world = 1, .shuffle = 0};
    if (loader_open(&r->data, &lo) != STATUS_OK) return error_context("%s: data.train: ", cfg->name);

    TeacherCacheLayout layout;
    int64_t vocab = 0;
    TRY(teacher_vocab_size(cfg, &vocab));
    if ((int64_t)loader_vocab_size(r->data) > vocab)
        return errorf("%s: data.train holds token ids up to vocab_size %u, more than the teacher's %lld", cfg->name,
                      loader_vocab_size(r->data), (long long)vocab);
    if (top_k > vocab)
        return errorf("teacher-cache: --top-k %lld is more than the teacher's vocab_size %lld", (long long)top_k,
                      (long long)vocab);
    TRY(cached_teacher_expected(cfg, r->data, (uint32_t)vocab, &layout));
    layout.top_k = top_k;
    layout.logprob_bytes = logprob_bytes;
    layout.id_bytes = vocab <= 65536 ? 2 : 4;
    int64_t window_bytes = r->T * teacher_cache_bytes_per_token(&layout);
    if (shard_windows == 0) shard_windows = SHARD_TARGET_BYTES / window_bytes > 0 ? SHARD_TARGET_BYTES / window_bytes : 1;
    if ((uint64_t)shard_windows > layout.windows) shard_windows = (int64_t)layout.windows;
    layout.shard_windows = (uint64_t)shard_windows;

    TeacherCacheWriter *w = NULL;
    Status st = teacher_cache_writer_open(&w, out, &layout);
    uint64_t shards = teacher_cache_shards(&layout), skipped = 0;
    if (st == STATUS_OK) {
        /* Whether there is work at all, before the teacher is loaded. */
        for (uint64_t s = 0; s < shards && st == STATUS_OK; s++) {
            int done = 0;
            st = teacher_cache_shard_done(w, s, &done);
            skipped += (uint64_t)done;
        }
    }
    if (st == STATUS_OK && skipped < shards) {
        st = build_teacher(cfg, r->be, r->T, &r->teacher);
        if (st == STATUS_OK && r->teacher->cfg.vocab_size != vocab)
            st = errorf("teacher: vocab_size %lld differs from its config's %lld", (long long)r->teacher->cfg.vocab_size,
                        (long long)vocab);
        r->V = vocab;
        r->D = st == STATUS_OK ? r->teacher->cfg.hidden_size : 0;
        r->k = top_k;
        int64_t N = r->B * r->T;
        r->logit_rows = LOGITS_BYTES / (4 * r->V) > 0 ? LOGITS_BYTES / (4 * r->V) : 1;
        if (r->logit_rows > N) r->logit_rows = N;
        if (st == STATUS_OK) st = forward_state_create(&r->st, r->teacher, r->B, r->T, 0);
        if (st == STATUS_OK) st = r->be->alloc(r->be, &r->ids, DT_I32, 1, &N);
        if (st == STATUS_OK) st = r->be->alloc(r->be, &r->hidden, r->teacher->dtype, 2, (int64_t[]){N, r->D});
        if (st == STATUS_OK) st = r->be->alloc(r->be, &r->logits, DT_F32, 2, (int64_t[]){r->logit_rows, r->V});
        size_t per_shard = (size_t)shard_windows * (size_t)r->T * (size_t)r->k;
        r->windows = malloc((size_t)(r->B * (r->T + 1)) * sizeof(int32_t));
        r->host_ids = malloc((size_t)N * sizeof(int32_t));
        r->host_logits = malloc((size_t)(r->logit_rows * r->V) * sizeof(float));
        r->shard_logprobs = malloc(per_shard * sizeof(float));
        r->shard_ids = malloc(per_shard * sizeof(int32_t));
        r->token_crcs = malloc((size_t)shard_windows * sizeof(uint32_t));
        if (st == STATUS_OK && (!r->windows || !r->host_ids || !r->host_logits || !r->shard_logprobs ||
                                !r->shard_ids || !r->token_crcs))
            st = errorf("teacher-cache: out of memory for a shard of %lld windows", (long long)shard_windows);
    }
    if (st == STATUS_OK)
        printf("teacher-cache: %s: %llu windows of %lld tokens at top-k %lld, T %g, in %llu shards (%llu already "
               "written)\n",
               out, (unsigned long long)layout.windows, (long long)r->T, (long long)top_k, cfg->loss.temperature,
               (unsigned long long)shards, (unsigned long long)skipped);
    fflush(stdout);
    uint64_t todo = 0;
    for (uint64_t s = 0; s < shards; s++) {
        int done = 0;
        if (st == STATUS_OK) st = teacher_cache_shard_done(w, s, &done);
        if (!done) todo += teacher_cache_windows_in_shard(&layout, s);
    }
    progress_begin(&r->progress, "teacher-cache: window", (int64_t)todo);
    double t0 = monotonic_seconds();
    for (uint64_t s = 0; s < shards && st == STATUS_OK; s++) {
        int done = 0;
        st = teacher_cache_shard_done(w, s, &done);
        if (st != STATUS_OK || done) continue;
        uint64_t first = s * layout.shard_windows, n = teacher_cache_windows_in_shard(&layout, s);
        st = compute_windows(r, first, n);
        if (st == STATUS_OK) st = teacher_cache_write_shard(w, s, r->shard_logprobs, r->shard_ids, r->token_crcs);
        if (st != STATUS_OK) st = error_context("%s: shard %llu: ", out, (unsigned long long)s);
    }
    progress_end(&r->progress);
    double seconds = monotonic_seconds() - t0;
    uint64_t bytes = 0;
    if (st == STATUS_OK) st = teacher_cache_disk_bytes(out, &layout, &bytes);
    if (st == STATUS_OK)
        printf("teacher-cache: %s complete: %llu tokens (%lld computed by this run, %.0f tok/s), %llu bytes on disk, "
               "%.1f bytes per token (%lld stored)\n",
               out, (unsigned long long)(layout.windows * (uint64_t)r->T), (long long)(r->computed * r->T),
               r->computed ? (double)(r->computed * r->T) / seconds : 0.0, (unsigned long long)bytes,
               (double)bytes / (double)(layout.windows * (uint64_t)r->T),
               (long long)teacher_cache_bytes_per_token(&layout));
    teacher_cache_writer_close(w);
    teacher_cache_layout_free(&layout);
    return st;
}

Status cmd_teacher_cache(int argc, char **argv, int *show_help) {
    const char *config_path = NULL, *out = NULL;
    const char *sets[CACHE_MAX_SETS];
    int n_sets = 0, logprob_bytes = 2;
    int64_t top_k = DEFAULT_TOP_K, shard_windows = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            *show_help = 1;
            return STATUS_OK;
        }
        if (i + 1 >= argc)
            return errorf("teacher-cache: %s: unknown option or missing value (see mlatrain teacher-cache --help)", a);
        const char *v = argv[++i];
        if (strcmp(a, "--config") == 0) config_path = v;
        else if (strcmp(a, "--out") == 0) out = v;
        else if (strcmp(a, "--top-k") == 0) TRY(parse_count(a, v, 1, &top_k));
        else if (strcmp(a, "--shard-windows") == 0) TRY(parse_count(a, v, 1, &shard_windows));
        else if (strcmp(a, "--logprobs") == 0) {
            if (strcmp(v, "f16") == 0) logprob_bytes = 2;
            else if (strcmp(v, "f32") == 0) logprob_bytes = 4;
            else return errorf("teacher-cache: --logprobs: expected f16 or f32, got \"%s\"", v);
        } else if (strcmp(a, "--set") == 0) {
            if (n_sets == CACHE_MAX_SETS) return errorf("teacher-cache: more than %d --set options", CACHE_MAX_SETS);
            sets[n_sets++] = v;
        } else {
            return errorf("teacher-cache: unknown option %s (see mlatrain teacher-cache --help)", a);
        }
    }
    if (!config_path) return errorf("teacher-cache: --config FILE is required (see mlatrain teacher-cache --help)");
    Config *cfg = calloc(1, sizeof *cfg);
    if (!cfg) return errorf("teacher-cache: out of memory");
    Status st = config_load(cfg, config_path, sets, n_sets);
    if (st == STATUS_OK && !cfg->has_teacher)
        st = errorf("%s: teacher: required (the cache holds the teacher's predictions)", cfg->name);
    if (st == STATUS_OK && !out) out = cfg->teacher_cache[0] ? cfg->teacher_cache : NULL;
    if (st == STATUS_OK && !out) st = errorf("teacher-cache: --out DIR is required (or teacher.cache in the config)");
    CacheRun r;
    memset(&r, 0, sizeof r);
    r.cfg = cfg;
    if (st == STATUS_OK) st = run_cache(&r, out, top_k, shard_windows, logprob_bytes);
    run_free(&r);
    free(cfg);
    return st;
}
