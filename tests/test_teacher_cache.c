/* Teacher top-k caches: a cache written by the teacher-cache command reads back as the teacher's
 * own top-k (log-probs against a float64 log-softmax of its logits, no id left out more likely than
 * one kept), in f32 and f16; a flipped byte in a window's data is refused naming the shard and the
 * window; windows read against other tokens are refused; each rank of a data-parallel job finds the
 * rows of the windows its loader reads; top-k selection against a full sort. */
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/loader.h"
#include "data/prepare.h"
#include "data/teacher_cache.h"
#include "harness.h"
#include "train/cached_teacher.h"
#include "train/cmd_teacher_cache.h"
#include "train/config.h"
#include "train/models.h"
#include "train/teacher_topk.h"

static char workdir[64];
static char config_path[128];
enum { SEQ = 24, K = 16, SHARD = 40 };
#define TEMPERATURE 1.5

static const char *ARCH =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 257, "
    "\"hidden_size\": 32, \"intermediate_size\": 48, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
    "\"num_key_value_heads\": 2, \"head_dim\": 8, \"rope_theta\": 10000.0, \"rms_norm_eps\": 1e-5, "
    "\"tie_word_embeddings\": true, \"max_position_embeddings\": 64}";

static void prepare(void) {
    char train[128], val[128];
    snprintf(train, sizeof train, "%s/train.h5", workdir);
    snprintf(val, sizeof val, "%s/val.h5", workdir);
    const char *here = __FILE__;
    char input[1100];
    snprintf(input, sizeof input, "%.*s/../docs/config.md", (int)(strrchr(here, '/') - here), here);
    const char *inputs[1] = {input};
    SplitOptions split = {.out_path = train, .val_path = val, .val_fraction = 0.3, .seed = 3};
    PrepareResult res;
    CHECK_OK(prepare_text(inputs, 1, TEXT_DOCS_PARAGRAPH, &split, &res));
    /* Micro-batches of 3 over shards of 40 windows: a short last batch in every shard. */
    char json[4096];
    snprintf(json, sizeof json,
             "{\"run\": {\"dir\": \"%s/run\", \"seed\": 5, \"threads\": 2},"
             " \"teacher\": {\"arch\": %s, \"init\": \"random\", \"seed\": 4},"
             " \"student\": {\"init_from\": {\"arch\": %s, \"init\": \"random\", \"seed\": 9}},"
             " \"data\": {\"train\": [\"%s\"], \"seq_len\": %d},"
             " \"loss\": {\"temperature\": %g},"
             " \"train\": {\"micro_batch\": 3, \"global_batch\": 3}}",
             workdir, ARCH, ARCH, train, SEQ, TEMPERATURE);
    snprintf(config_path, sizeof config_path, "%s/config.json", workdir);
    FILE *f = fopen(config_path, "w");
    CHECK(f != NULL, "cannot write %s", config_path);
    if (f) {
        fputs(json, f);
        fclose(f);
    }
}

static Status make_cache(const char *dir, const char *logprobs) {
    char *argv[] = {"--config", config_path, "--out", (char *)dir, "--top-k", "16", "--shard-windows", "40",
                    "--logprobs", (char *)logprobs};
    int help = 0;
    return cmd_teacher_cache((int)(sizeof argv / sizeof argv[0]), argv, &help);
}

/* The cached windows against the teacher run here on one window at a time, in float64. */
static void check_read_back(const char *dir, int f16) {
    Config *cfg = calloc(1, sizeof *cfg);
    CHECK_OK(config_load(cfg, config_path, NULL, 0));
    Backend *be = test_cpu_backend(2);
    Model *teacher = NULL;
    CHECK_OK(build_teacher(cfg, be, SEQ, &teacher));
    const char *pattern = cfg->data.train.items[0];
    LoaderOptions lo = {.patterns = &pattern, .n_patterns = 1, .seq_len = SEQ, .seed = 1, .rank = 0, .world = 1};
    Loader *L = NULL;
    CHECK_OK(loader_open(&L, &lo));
    TeacherCache *c = NULL;
    if (!CHECK_OK(teacher_cache_open(&c, dir)) || !teacher) goto done;
    const TeacherCacheLayout *l = teacher_cache_layout(c);
    uint64_t n = loader_windows_per_epoch(L);
    CHECK(l->windows == n && l->top_k == K && l->seq_len == SEQ && l->vocab_size == 257 && l->shard_windows == SHARD &&
              l->temperature == TEMPERATURE && l->logprob_bytes == (f16 ? 2 : 4) && l->id_bytes == 2,
          "layout: %llu windows (data %llu), k %lld, seq %lld, vocab %u, shard %llu, T %g, widths %d %d",
          (unsigned long long)l->windows, (unsigned long long)n, (long long)l->top_k, (long long)l->seq_len,
          l->vocab_size, (unsigned long long)l->shard_windows, l->temperature, l->logprob_bytes, l->id_bytes);
    CHECK(n > 3 * SHARD, "the data makes several shards (%llu windows)", (unsigned long long)n);
    int64_t V = 257, D = 32;
    ForwardState *st = NULL;
    CHECK_OK(forward_state_create(&st, teacher, 1, SEQ, 0));
    int32_t window[SEQ + 1], ids[SEQ * K];
    float lp[SEQ * K], *h = test_alloc(SEQ * D * sizeof(float)), *z = test_alloc(SEQ * V * sizeof(float));
    double *ref = test_alloc((size_t)V * sizeof(double));
    uint64_t picks[] = {0, 2, SHARD - 1, SHARD, n / 2, n - 2, n - 1};
    double worst = 0;
    int64_t same_order = 0, rows = 0, bad_rank = 0, bad_sort = 0;
    for (size_t p = 0; p < sizeof picks / sizeof picks[0]; p++) {
        uint64_t w = picks[p];
        CHECK_OK(loader_read_window(L, w, window));
        if (!CHECK_OK(teacher_cache_read_window(c, w, window, lp, ids))) continue;
        int64_t T = SEQ;
        CHECK_OK(model_forward(teacher, st, tensor_view(window, DT_I32, 1, &T), tensor_view(h, DT_F32, 2, (int64_t[]){T, D})));
        CHECK_OK(be->ops.linear_forward(be, tensor_view(z, DT_F32, 2, (int64_t[]){T, V}),
                                        tensor_view(h, DT_F32, 2, (int64_t[]){T, D}), teacher->lm_head, tensor_none()));
        for (int64_t i = 0; i < T; i++, rows++) {
            double m = -INFINITY, s = 0;
            for (int64_t v = 0; v < V; v++) m = fmax(m, z[i * V + v] / TEMPERATURE);
            for (int64_t v = 0; v < V; v++) s += exp(z[i * V + v] / TEMPERATURE - m);
            for (int64_t v = 0; v < V; v++) ref[v] = z[i * V + v] / TEMPERATURE - m - log(s);
            /* Kept ids: each log-prob as the reference's, sorted; nothing left out ranks above the last. */
            char kept[257] = {0};
            for (int j = 0; j < K; j++) {
                int32_t id = ids[i * K + j];
                double r = ref[id], tol = f16 ? fabs(r) * 0x1p-11 + 1e-6 : 1e-5;
                worst = fmax(worst, fabs(lp[i * K + j] - r) / tol);
                kept[id] = 1;
                if (j > 0 && lp[i * K + j] > lp[i * K + j - 1]) bad_sort++;
            }
            double last = ref[ids[i * K + K - 1]];
            for (int64_t v = 0; v < V; v++)
                if (!kept[v] && ref[v] > last + 1e-5) bad_rank++;
            /* The same ids in the same order as a float64 sort of the reference. */
            int same = 1;
            for (int j = 0; j < K && same; j++) {
                int64_t better = 0;
                for (int64_t v = 0; v < V; v++) better += ref[v] > ref[ids[i * K + j]];
                same = better == j;
            }
            same_order += same;
        }
    }
    CHECK(worst <= 1.0, "%s log-probs against float64: worst error %.3g of the tolerance", f16 ? "f16" : "f32", worst);
    CHECK(bad_rank == 0, "%lld ids left out rank above the last kept one", (long long)bad_rank);
    CHECK(bad_sort == 0, "%lld rows not sorted most likely first", (long long)bad_sort);
    CHECK(same_order == rows, "ids in the reference's order in %lld of %lld rows", (long long)same_order, (long long)rows);

    /* The window's tokens are part of what it is: other tokens are refused. */
    CHECK_OK(loader_read_window(L, 3, window));
    window[SEQ / 2] = (window[SEQ / 2] + 1) % 257;
    CHECK_ERR(teacher_cache_read_window(c, 3, window, lp, ids), "made from other tokens");
    CHECK_ERR(teacher_cache_read_window(c, n, NULL, lp, ids), "past the cache's");
    forward_state_destroy(st);
    free(h);
    free(z);
    free(ref);
done:
    teacher_cache_close(c);
    loader_close(L);
    model_destroy(teacher);
    backend_destroy(be);
    free(cfg);
}

/* Flips one byte inside window w's chunk of dataset `name` in its shard. */
static void flip_byte(const char *dir, uint64_t w, const char *name, uint64_t into) {
    char path[256];
    snprintf(path, sizeof path, "%s/shard-%05llu.h5", dir, (unsigned long long)(w / SHARD));
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t ds = f < 0 ? -1 : H5Dopen2(f, name, H5P_DEFAULT);
    hsize_t coord[3] = {w % SHARD, 0, 0};
    haddr_t addr = HADDR_UNDEF;
    hsize_t size = 0;
    unsigned mask = 0;
    herr_t rc = ds < 0 ? -1 : H5Dget_chunk_info_by_coord(ds, coord, &mask, &addr, &size);
    if (ds >= 0) H5Dclose(ds);
    if (f >= 0) H5Fclose(f);
    CHECK(rc >= 0 && addr != HADDR_UNDEF && into < size, "%s: chunk of window %llu of /%s found", path,
          (unsigned long long)w, name);
    FILE *fp = fopen(path, "r+b");
    if (rc < 0 || !fp) {
        if (fp) fclose(fp);
        return;
    }
    fseek(fp, (long)(addr + into), SEEK_SET);
    int byte = fgetc(fp);
    fseek(fp, (long)(addr + into), SEEK_SET);
    fputc(byte ^ 0x10, fp);
    fclose(fp);
}

static void check_corruption(const char *dir) {
    int32_t ids[SEQ * K];
    float lp[SEQ * K];
    flip_byte(dir, SHARD + 2, "logprobs", 101);
    flip_byte(dir, 2 * SHARD + 5, "ids", 7);
    TeacherCache *c = NULL;
    if (!CHECK_OK(teacher_cache_open(&c, dir))) return;
    char want[128];
    snprintf(want, sizeof want, "shard-00001.h5: window %d fails its checksum", SHARD + 2);
    CHECK_ERR(teacher_cache_read_window(c, SHARD + 2, NULL, lp, ids), want);
    snprintf(want, sizeof want, "shard-00002.h5: window %d fails its checksum", 2 * SHARD + 5);
    CHECK_ERR(teacher_cache_read_window(c, 2 * SHARD + 5, NULL, lp, ids), want);
    /* Only the damaged windows: their neighbours in the same shards still read. */
    CHECK_OK(teacher_cache_read_window(c, SHARD + 1, NULL, lp, ids));
    CHECK_OK(teacher_cache_read_window(c, 2 * SHARD + 4, NULL, lp, ids));
    teacher_cache_close(c);

    char path[256];
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    FILE *f = fopen(path, "r+b");
    if (f) {
        CHECK(ftruncate(fileno(f), 40) == 0, "truncate the manifest");
        fclose(f);
    }
    CHECK_ERR(teacher_cache_open(&c, dir), "manifest.json: not valid JSON");
}

/* Two ranks, shuffled, two micro-batches a step: the rows looked up for each window are the ones
 * made from its tokens (cached_teacher_upload checks every window's token CRC). */
static void check_ranks(const char *dir) {
    char set[256];
    snprintf(set, sizeof set, "teacher.cache=%s", dir);
    const char *sets[1] = {set};
    Config *cfg = calloc(1, sizeof *cfg);
    if (!CHECK_OK(config_load(cfg, config_path, sets, 1))) {
        free(cfg);
        return;
    }
    Backend *be = test_cpu_backend(1);
    const char *pattern = cfg->data.train.items[0];
    int32_t *windows = test_alloc(3 * (SEQ + 1) * sizeof(int32_t));
    for (int rank = 0; rank < 2; rank++) {
        LoaderOptions lo = {.patterns = &pattern, .n_patterns = 1, .seq_len = SEQ, .seed = 77, .rank = rank,
                            .world = 2, .shuffle = 1};
        Loader *L = NULL;
        CachedTeacher *ct = NULL;
        if (CHECK_OK(loader_open(&L, &lo)) && CHECK_OK(cached_teacher_open(&ct, cfg, be, L, 257, 3, SEQ, 2, rank, 2))) {
            int ok = 1;
            /* Past the end of the first epoch: 2 ranks x 2 x 3 rows a step. */
            int64_t steps = (int64_t)loader_windows_per_epoch(L) / 12 + 3;
            for (int64_t step = 0; step < steps && ok; step++)
                for (int64_t call = 0; call < 2 && ok; call++) {
                    cached_teacher_note_windows(ct, L, call);
                    ok = CHECK_OK(loader_next(L, 3, windows)) && CHECK_OK(cached_teacher_upload(ct, call, windows));
                }
            CHECK(ok, "rank %d: %lld steps of cached rows match their windows", rank, (long long)steps);
            Tensor lp = cached_teacher_logprobs(ct), ids = cached_teacher_ids(ct);
            CHECK(lp.shape[0] == 3 * SEQ && lp.shape[1] == K && ids.shape[0] == 3 * SEQ && ids.shape[1] == K,
                  "rows [3 x %d, %d]", SEQ, K);
        }
        cached_teacher_close(ct);
        loader_close(L);
    }
    free(windows);
    backend_destroy(be);
    free(cfg);
}

/* Selection against a full sort, with ties (equal logits rank the lower id first). */
static void check_topk_selection(void) {
    enum { ROWS = 5, V = 61, KK = 9 };
    float z[ROWS * V];
    fill_normal(z, ROWS * V, 11, 2.0f);
    for (int v = 0; v < V; v += 3) z[2 * V + v] = 0.75f; /* a row of many equal logits */
    for (int v = 0; v < V; v++) z[3 * V + v] = 1.0f;     /* every logit equal */
    float lp[ROWS * KK];
    int32_t ids[ROWS * KK];
    CHECK_OK(teacher_topk_rows(z, ROWS, V, 0.5f, KK, lp, ids));
    int wrong = 0;
    double worst = 0;
    for (int r = 0; r < ROWS; r++) {
        int order[V];
        for (int v = 0; v < V; v++) order[v] = v;
        for (int a = 1; a < V; a++) /* insertion sort: descending logit, then ascending id */
            for (int b = a; b > 0 && (z[r * V + order[b]] > z[r * V + order[b - 1]]); b--) {
                int t = order[b];
                order[b] = order[b - 1];
                order[b - 1] = t;
            }
        double m = -INFINITY, s = 0;
        for (int v = 0; v < V; v++) m = fmax(m, z[r * V + v] / 0.5);
        for (int v = 0; v < V; v++) s += exp(z[r * V + v] / 0.5 - m);
        for (int j = 0; j < KK; j++) {
            wrong += ids[r * KK + j] != order[j];
            worst = fmax(worst, fabs(lp[r * KK + j] - (z[r * V + order[j]] / 0.5 - m - log(s))));
        }
    }
    CHECK(wrong == 0, "top-k ids against a stable full sort: %d differ", wrong);
    CHECK(worst < 1e-5, "top-k log-probs against float64: max error %.3g", worst);
    CHECK(fabs(lp[3 * KK] + log((double)V)) < 1e-6, "equal logits: log-prob %.7g = -log V", lp[3 * KK]);
    z[4 * V + 7] = NAN;
    CHECK_ERR(teacher_topk_rows(z, ROWS, V, 0.5f, KK, lp, ids), "row 4: logit of id 7 is nan");
}

int main(void) {
    snprintf(workdir, sizeof workdir, "/tmp/mlatrain_test_tcache_XXXXXX");
    if (!mkdtemp(workdir)) return 1;
    check_topk_selection();
    prepare();
    char f32[128], f16[128];
    snprintf(f32, sizeof f32, "%s/cache_f32", workdir);
    snprintf(f16, sizeof f16, "%s/cache_f16", workdir);
    if (CHECK_OK(make_cache(f32, "f32"))) check_read_back(f32, 0);
    if (CHECK_OK(make_cache(f16, "f16"))) check_read_back(f16, 1);
    check_ranks(f16);
    check_corruption(f32);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", workdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", workdir);
    return test_finish("test_teacher_cache");
}
