/* safetensors I/O: bf16/f16 rounding against float64, write/read round trips (single, sharded), the
 * Python library's exact bytes, and malformed files each refused in one line without a bad read. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "model/hf/safetensors.h"

static char work_dir[64];

/* work_dir/name[/...] into a rotating static buffer (several may be live in one call). */
static const char *at(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *at(const char *fmt, ...) {
    static char bufs[8][512];
    static int next;
    char *b = bufs[next++ % 8];
    int n = snprintf(b, 512, "%s/", work_dir);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b + n, (size_t)(512 - n), fmt, ap);
    va_end(ap);
    return b;
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    fclose(f);
}

static unsigned char *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = test_alloc((size_t)size + 1);
    *n = fread(p, 1, (size_t)size, f);
    p[*n] = 0;
    fclose(f);
    return p;
}

/* A safetensors file from a header string: 8-byte length, the header padded with spaces to a
 * multiple of 8 when pad is set, then data_len bytes of data (a counting pattern). */
static void make_file(const char *path, const char *header, int pad, size_t data_len) {
    size_t h = strlen(header), padded = pad ? (h + 7) / 8 * 8 : h;
    unsigned char *buf = test_alloc(8 + padded + data_len + 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, header, h);
    memset(buf + 8 + h, ' ', padded - h);
    for (size_t i = 0; i < data_len; i++) buf[8 + padded + i] = (unsigned char)i;
    write_bytes(path, buf, 8 + padded + data_len);
    free(buf);
}

static void make_dir(const char *path) { mkdir(path, 0777); }

/* Entries of dir whose names contain `part`. */
static int count_names(const char *dir, const char *part) {
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    while (d && (e = readdir(d)) != NULL)
        if (strstr(e->d_name, part)) n++;
    if (d) closedir(d);
    return n;
}

static int file_exists(const char *path) { return access(path, F_OK) == 0; }

/* Opening must fail with one line that names the file and contains `needle`. */
static void expect_open_error(const char *path, const char *file_part, const char *needle) {
    SafetensorsSet *s = (SafetensorsSet *)1;
    Status st = safetensors_open(&s, path);
    const char *msg = error_message();
    CHECK(st != STATUS_OK && s == NULL && strstr(msg, needle) && strstr(msg, file_part) && !strchr(msg, '\n'),
          "open %s should fail naming '%s' and mentioning '%s'; got %s", path, file_part, needle,
          st == STATUS_OK ? "success" : msg);
    if (st == STATUS_OK) safetensors_close(s);
    error_clear();
}

static int same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

/* ---- float16 / bfloat16 ---- */

/* x rounded to nearest even in a binary format with p significant bits, smallest normal 2^emin and
 * largest finite max_finite (beyond which it overflows to Inf), computed in float64. */
static double round_reference(double x, int p, int emin, double max_finite) {
    if (x == 0 || isinf(x)) return x;
    int e;
    frexp(fabs(x), &e);
    int exp = e - 1 < emin ? emin : e - 1;
    double quantum = ldexp(1.0, exp - (p - 1));
    double r = nearbyint(fabs(x) / quantum) * quantum;
    return copysign(r > max_finite ? INFINITY : r, x);
}

static void test_half_conversions(void) {
    /* Every 16-bit pattern survives widening and narrowing; NaNs stay NaNs. */
    int bad_bf16 = 0, bad_f16 = 0, bad_widen = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float b = bf16_to_f32((uint16_t)h), f = f16_to_f32((uint16_t)h);
        if (isnan(b) ? !isnan(bf16_to_f32(f32_to_bf16(b))) : f32_to_bf16(b) != h) bad_bf16++;
        if (isnan(f) ? !isnan(f16_to_f32(f32_to_f16(f))) : f32_to_f16(f) != h) bad_f16++;
        uint32_t exp = (h >> 10) & 31, mant = h & 1023;
        double want = exp == 31 ? (mant ? NAN : INFINITY)
                                : exp == 0 ? ldexp(mant, -24) : ldexp(1024 + mant, (int)exp - 25);
        want = h & 0x8000 ? -want : want;
        if (isnan(want) ? !isnan(f) : ((double)f != want || !signbit(f) != !signbit(want))) bad_widen++;
    }
    CHECK(bad_bf16 == 0, "bf16 -> f32 -> bf16 changed %d of 65536 patterns", bad_bf16);
    CHECK(bad_f16 == 0, "f16 -> f32 -> f16 changed %d of 65536 patterns", bad_f16);
    CHECK(bad_widen == 0, "f16 -> f32 gave a wrong value for %d of 65536 patterns", bad_widen);

    /* Narrowing against the float64 reference over every sign/exponent/kept-mantissa pattern, with
     * the dropped bits at zero, just below, at and just above the halfway point, and all ones. */
    const double bf16_max = ldexp(255.0, 120), f16_max = 65504.0;
    int wrong_bf16 = 0, wrong_f16 = 0;
    const uint32_t bf16_low[] = {0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF};
    for (uint32_t hi = 0; hi < (1u << 16); hi++)
        for (int k = 0; k < 6; k++) {
            float x;
            uint32_t u = hi << 16 | bf16_low[k];
            memcpy(&x, &u, 4);
            float got = bf16_to_f32(f32_to_bf16(x));
            double want = isnan(x) ? NAN : round_reference(x, 8, -126, bf16_max);
            if (isnan(want) ? !isnan(got) : ((double)got != want || !signbit(got) != !signbit(want))) wrong_bf16++;
        }
    const uint32_t f16_low[] = {0, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFF};
    for (uint32_t hi = 0; hi < (1u << 19); hi++)
        for (int k = 0; k < 6; k++) {
            float x;
            uint32_t u = hi << 13 | f16_low[k];
            memcpy(&x, &u, 4);
            float got = f16_to_f32(f32_to_f16(x));
            double want = isnan(x) ? NAN : round_reference(x, 11, -14, f16_max);
            if (isnan(want) ? !isnan(got) : ((double)got != want || !signbit(got) != !signbit(want))) wrong_f16++;
        }
    CHECK(wrong_bf16 == 0, "f32 -> bf16 rounding differs from round-to-nearest-even in %d cases", wrong_bf16);
    CHECK(wrong_f16 == 0, "f32 -> f16 rounding differs from round-to-nearest-even in %d cases", wrong_f16);

    /* Cases worth naming. */
    float nan_low_payload, snan = 0;
    uint32_t u = 0x7F800001u;
    memcpy(&nan_low_payload, &u, 4);
    u = 0xFF800123u;
    memcpy(&snan, &u, 4);
    CHECK(isnan(bf16_to_f32(f32_to_bf16(nan_low_payload))) && isnan(f16_to_f32(f32_to_f16(nan_low_payload))),
          "a NaN whose payload is in the low bits must stay NaN (bf16 %04x, f16 %04x)",
          f32_to_bf16(nan_low_payload), f32_to_f16(nan_low_payload));
    CHECK((f32_to_bf16(snan) & 0x8000) && (f32_to_f16(snan) & 0x8000), "NaN keeps its sign");
    CHECK(f32_to_bf16(INFINITY) == 0x7F80 && f32_to_bf16(-INFINITY) == 0xFF80 && f32_to_f16(INFINITY) == 0x7C00 &&
              f32_to_f16(-INFINITY) == 0xFC00,
          "infinities");
    CHECK(f32_to_bf16(-0.0f) == 0x8000 && f32_to_f16(-0.0f) == 0x8000, "negative zero keeps its sign");
    CHECK(f32_to_bf16(1.00390625f) == 0x3F80 && f32_to_bf16(1.01171875f) == 0x3F82,
          "bf16 ties to even: 1+2^-8 -> 1, 1+3*2^-8 -> 1+2^-6");
    CHECK(f32_to_bf16(3.4028235e38f) == 0x7F80, "FLT_MAX rounds up to Inf in bf16");
    CHECK(f32_to_f16(65504.0f) == 0x7BFF && f32_to_f16(65519.996f) == 0x7BFF && f32_to_f16(65520.0f) == 0x7C00,
          "f16 overflow boundary at 65520");
    CHECK(f32_to_f16(ldexpf(1, -24)) == 0x0001 && f32_to_f16(ldexpf(1, -25)) == 0 &&
              f32_to_f16(ldexpf(3, -26)) == 0x0001 && f32_to_f16(ldexpf(1023, -24)) == 0x03FF &&
              f32_to_f16(ldexpf(2047, -25)) == 0x0400,
          "f16 subnormals: 2^-24, the 2^-25 tie to zero, 1.5*2^-25 up, the largest subnormal, rounding into normal");
    CHECK(f16_to_f32(0x0001) == ldexpf(1, -24) && f16_to_f32(0x03FF) == ldexpf(1023, -24),
          "f16 subnormals widen exactly");
    CHECK(f32_to_bf16(ldexpf(1, -133)) == 0x0001 && bf16_to_f32(0x0001) == ldexpf(1, -133), "bf16 subnormals");

    /* The array forms agree with the scalar ones, at odd byte addresses too. */
    float src[37], back[37];
    unsigned char raw[2 * 37 + 1];
    fill_normal(src, 37, 1, 100.0f);
    int mismatches = 0;
    f32_to_bf16_array(raw + 1, src, 37);
    bf16_to_f32_array(back, raw + 1, 37);
    for (int i = 0; i < 37; i++) mismatches += !same_bits(back[i], bf16_to_f32(f32_to_bf16(src[i])));
    f32_to_f16_array(raw + 1, src, 37);
    f16_to_f32_array(back, raw + 1, 37);
    for (int i = 0; i < 37; i++) mismatches += !same_bits(back[i], f16_to_f32(f32_to_f16(src[i])));
    CHECK(mismatches == 0, "array conversions differ from scalar ones in %d places", mismatches);
}

/* ---- round trips ---- */

enum { N_TENSORS = 6 };

typedef struct {
    SafetensorsEntry e[N_TENSORS];
    float *data[N_TENSORS];
} Sample;

static void make_sample(Sample *s) {
    const struct { const char *name; int ndim; int64_t shape[4]; } spec[N_TENSORS] = {
        {"model.layers.0.self_attn.q_proj.weight", 2, {4, 5}},
        {"model.embed_tokens.weight", 2, {5, 3}},
        {"empty.weight", 2, {0, 3}},
        {"scalar", 0, {0}},
        {"model.norm.bias", 1, {7}},
        {"four.d.tensor", 4, {2, 1, 3, 2}},
    };
    for (int i = 0; i < N_TENSORS; i++) {
        SafetensorsEntry *e = &s->e[i];
        memset(e, 0, sizeof *e);
        e->name = spec[i].name;
        e->ndim = spec[i].ndim;
        int64_t n = 1;
        for (int d = 0; d < e->ndim; d++) n *= (e->shape[d] = spec[i].shape[d]);
        s->data[i] = test_alloc((size_t)(n ? n : 1) * sizeof(float));
        fill_normal(s->data[i], n, 100 + (uint64_t)i, 3.0f);
        e->data = s->data[i];
    }
    /* Values whose bits must survive F32 and whose rounding is checked for BF16/F16. */
    float *x = s->data[0];
    uint32_t nan_bits = 0x7FA00001u;
    memcpy(&x[0], &nan_bits, 4);
    x[1] = INFINITY;
    x[2] = -0.0f;
    x[3] = 1e-40f;         /* float32 subnormal */
    x[4] = 1.00390625f;    /* 1 + 2^-8: a bf16 tie */
    x[5] = 1.00048828125f; /* 1 + 2^-11: an f16 tie */
    x[6] = 70000.0f;       /* Inf in f16 */
    x[7] = 1e-8f;          /* 0 in f16 */
}

static void free_sample(Sample *s) {
    for (int i = 0; i < N_TENSORS; i++) free(s->data[i]);
}

static float expected_after(float x, DType dt) {
    return dt == DT_BF16 ? bf16_to_f32(f32_to_bf16(x)) : dt == DT_F16 ? f16_to_f32(f32_to_f16(x)) : x;
}

/* Every sample tensor is in the set with its shape and reads back as `dt` rounding predicts. */
static void check_sample(const SafetensorsSet *set, const Sample *s, DType dt, const char *label) {
    CHECK(safetensors_count(set) == N_TENSORS, "%s: %lld tensors, expected %d", label,
          (long long)safetensors_count(set), N_TENSORS);
    for (int64_t i = 1; i < safetensors_count(set); i++)
        CHECK(strcmp(safetensors_tensor(set, i - 1)->name, safetensors_tensor(set, i)->name) < 0,
              "%s: iteration is in name order", label);
    for (int i = 0; i < N_TENSORS; i++) {
        const SafetensorsEntry *e = &s->e[i];
        const SafetensorsTensor *t = safetensors_find(set, e->name);
        if (!t) {
            CHECK(0, "%s: tensor %s missing", label, e->name);
            continue;
        }
        int64_t n = 1;
        int shape_ok = t->ndim == e->ndim && t->dtype == dt;
        for (int d = 0; d < e->ndim; d++) {
            shape_ok &= t->shape[d] == e->shape[d];
            n *= e->shape[d];
        }
        CHECK(shape_ok && t->bytes == (size_t)n * dtype_size(dt), "%s: %s has the written dtype and shape", label,
              e->name);
        float *got = test_alloc((size_t)(n ? n : 1) * sizeof(float));
        if (!CHECK_OK(safetensors_read_f32(set, e->name, got, e->ndim, e->shape))) {
            free(got);
            continue;
        }
        int64_t wrong = 0;
        for (int64_t k = 0; k < n; k++) {
            float want = expected_after(e->data[k], dt);
            wrong += isnan(want) ? !isnan(got[k]) : !same_bits(got[k], want);
        }
        CHECK(wrong == 0, "%s: %s: %lld of %lld values differ from the expected %s rounding", label, e->name,
              (long long)wrong, (long long)n, dtype_name(dt));
        if (dt == DT_F32 && i == 0) CHECK(same_bits(got[0], e->data[0]), "%s: a NaN payload survives F32", label);
        free(got);
    }
    CHECK(!safetensors_find(set, "Scalar") && !safetensors_find(set, "absent"), "%s: lookups are exact", label);
}

static void test_round_trips(void) {
    Sample s;
    make_sample(&s);
    const DType dts[3] = {DT_F32, DT_BF16, DT_F16};
    for (int k = 0; k < 3; k++) {
        const char *dir = at("single_%s", dtype_name(dts[k]));
        make_dir(dir);
        SafetensorsSet *set;
        if (!CHECK_OK(safetensors_write_model(dir, s.e, N_TENSORS, dts[k], 0))) continue;
        CHECK(file_exists(at("single_%s/model.safetensors", dtype_name(dts[k]))) &&
                  count_names(dir, "index") == 0 && count_names(dir, ".tmp.") == 0,
              "one file, no index, no temporary left");
        if (!CHECK_OK(safetensors_open(&set, dir))) continue;
        CHECK(safetensors_file_count(set) == 1, "single file");
        check_sample(set, &s, dts[k], dir);
        safetensors_close(set);
    }

    /* The rounded values, spelled out. */
    float x[4] = {1.00390625f, 1.01171875f, 1.00048828125f, 1.00146484375f}, got[4];
    SafetensorsEntry one = {"x", 1, {4}, x};
    SafetensorsSet *set;
    CHECK_OK(safetensors_write_file(at("bf16.safetensors"), &one, 1, DT_BF16));
    if (CHECK_OK(safetensors_open(&set, at("bf16.safetensors")))) {
        const SafetensorsTensor *t = safetensors_find(set, "x");
        const unsigned char *raw = t->data;
        CHECK(raw[0] == 0x80 && raw[1] == 0x3F && raw[2] == 0x82 && raw[3] == 0x3F, "bf16 bits on disk");
        CHECK_OK(safetensors_read_f32(set, "x", got, 1, (int64_t[]){4}));
        CHECK(got[0] == 1.0f && got[1] == 1.015625f, "bf16 ties to even: %.9g %.9g", got[0], got[1]);
        safetensors_close(set);
    }
    CHECK_OK(safetensors_write_file(at("f16.safetensors"), &one, 1, DT_F16));
    if (CHECK_OK(safetensors_open(&set, at("f16.safetensors")))) {
        CHECK_OK(safetensors_read_f32(set, "x", got, 1, (int64_t[]){-1}));
        CHECK(got[2] == 1.0f && got[3] == 1.001953125f, "f16 ties to even: %.12g %.12g", got[2], got[3]);
        safetensors_close(set);
    }
    free_sample(&s);
}

static void test_sharded(void) {
    /* Ten 128-byte tensors and one of 1 KiB, in 300-byte shards: two small tensors per shard, the
     * big one alone. */
    enum { N = 11 };
    SafetensorsEntry e[N];
    float *data[N];
    char names[N][48];
    for (int i = 0; i < N; i++) {
        int big = i == 5;
        snprintf(names[i], sizeof names[i], "model.layers.%d.mlp.weight", i);
        memset(&e[i], 0, sizeof e[i]);
        e[i].name = names[i];
        e[i].ndim = 2;
        e[i].shape[0] = big ? 64 : 8;
        e[i].shape[1] = 4;
        data[i] = test_alloc((size_t)e[i].shape[0] * 4 * sizeof(float));
        fill_normal(data[i], e[i].shape[0] * 4, 200 + (uint64_t)i, 1.0f);
        e[i].data = data[i];
    }
    const char *dir = at("sharded");
    make_dir(dir);
    SafetensorsSet *set;
    /* A stale single file from an earlier save must go once the sharded model is in place. */
    CHECK_OK(safetensors_write_model(dir, e, 2, DT_F32, 0));
    CHECK_OK(safetensors_write_model(dir, e, N, DT_F32, 300));
    CHECK(file_exists(at("sharded/model.safetensors.index.json")) && !file_exists(at("sharded/model.safetensors")),
          "sharded: an index and no single file");
    int shards = count_names(dir, "-of-");
    CHECK(shards == 6 && file_exists(at("sharded/model-00006-of-00006.safetensors")) && count_names(dir, ".tmp.") == 0,
          "sharded: 6 shards (got %d), no temporaries", shards);
    if (CHECK_OK(safetensors_open(&set, dir))) {
        CHECK(safetensors_count(set) == N && safetensors_file_count(set) == 6, "sharded: %lld tensors in %d files",
              (long long)safetensors_count(set), safetensors_file_count(set));
        const SafetensorsTensor *big = safetensors_find(set, "model.layers.5.mlp.weight");
        int with_big = 0;
        for (int64_t i = 0; big && i < safetensors_count(set); i++)
            with_big += safetensors_tensor(set, i)->file_index == big->file_index;
        CHECK(big && with_big == 1, "the tensor over the shard limit has a shard of its own (%d share it)", with_big);
        for (int i = 0; i < N; i++) {
            float *got = test_alloc((size_t)e[i].shape[0] * 4 * sizeof(float));
            CHECK_OK(safetensors_read_f32(set, e[i].name, got, 2, e[i].shape));
            CHECK(memcmp(got, data[i], (size_t)e[i].shape[0] * 4 * sizeof(float)) == 0, "sharded: %s bitwise",
                  e[i].name);
            free(got);
        }
        safetensors_close(set);
    }
    /* The index as transformers writes it. */
    size_t n;
    unsigned char *text = read_bytes(at("sharded/model.safetensors.index.json"), &n);
    cJSON *index = text ? cJSON_ParseWithLength((const char *)text, n) : NULL;
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(index, "metadata");
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(index, "weight_map");
    const cJSON *total = cJSON_GetObjectItemCaseSensitive(meta, "total_size");
    const cJSON *first = cJSON_GetObjectItemCaseSensitive(map, "model.layers.0.mlp.weight");
    CHECK(cJSON_GetArraySize(map) == N && cJSON_IsNumber(total) && total->valuedouble == (10 * 128 + 1024) &&
              cJSON_IsString(first) && strcmp(first->valuestring, "model-00001-of-00006.safetensors") == 0,
          "index: weight_map of %d tensors, total_size, shard names", N);
    cJSON_Delete(index);
    free(text);
    /* The index file itself opens the model too. */
    if (CHECK_OK(safetensors_open(&set, at("sharded/model.safetensors.index.json")))) {
        CHECK(safetensors_count(set) == N, "open through the index path");
        safetensors_close(set);
    }
    /* Saving a single file over a sharded model leaves only the single file. */
    CHECK_OK(safetensors_write_model(dir, e, N, DT_BF16, 0));
    CHECK(file_exists(at("sharded/model.safetensors")) && count_names(dir, "-of-") == 0 &&
              count_names(dir, "index") == 0,
          "a single-file save removes the old index and shards");
    if (CHECK_OK(safetensors_open(&set, dir))) {
        CHECK(safetensors_count(set) == N && safetensors_find(set, names[3])->dtype == DT_BF16, "re-saved as bf16");
        safetensors_close(set);
    }
    for (int i = 0; i < N; i++) free(data[i]);
}

/* ---- the exact layout ---- */

static void test_layout(void) {
    /* What we write, byte for byte: length, compact JSON with __metadata__ first, spaces, data. */
    float ab[2] = {1.0f, 2.0f};
    SafetensorsEntry a = {"a", 1, {2}, ab};
    const char *path = at("layout.safetensors");
    CHECK_OK(safetensors_write_file(path, &a, 1, DT_F32));
    const char *json = "{\"__metadata__\":{\"format\":\"pt\"},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    size_t h = strlen(json), padded = (h + 7) / 8 * 8;
    unsigned char want[256];
    for (int i = 0; i < 8; i++) want[i] = (unsigned char)(padded >> (8 * i));
    memcpy(want + 8, json, h);
    memset(want + 8 + h, ' ', padded - h);
    const unsigned char data[8] = {0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0x40};
    memcpy(want + 8 + padded, data, 8);
    size_t n;
    unsigned char *got = read_bytes(path, &n);
    CHECK(got && n == 16 + padded && memcmp(got, want, n) == 0, "file bytes match the Python layout (%zu bytes)", n);
    free(got);

    /* Names are escaped in JSON and come back intact. */
    float one = 3.0f;
    SafetensorsEntry odd = {"we\"ird\\name\t", 0, {0}, &one};
    SafetensorsSet *set;
    CHECK_OK(safetensors_write_file(at("escaped.safetensors"), &odd, 1, DT_F32));
    got = read_bytes(at("escaped.safetensors"), &n);
    CHECK(got && strstr((const char *)got + 8, "\"we\\\"ird\\\\name\\t\""), "name escaped as serde_json does");
    free(got);
    if (CHECK_OK(safetensors_open(&set, at("escaped.safetensors")))) {
        CHECK(safetensors_find(set, odd.name) != NULL, "escaped name reads back");
        safetensors_close(set);
    }

    /* Files as the Python library writes them, built by hand: __metadata__ anywhere, tensors
     * listed in any order, F32 before BF16 (descending alignment), unaligned BF16 offsets. */
    make_file(at("python1.safetensors"),
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"__metadata__\":{\"format\":\"pt\"}}", 1,
              8);
    if (CHECK_OK(safetensors_open(&set, at("python1.safetensors")))) {
        float v[2];
        CHECK_OK(safetensors_read_f32(set, "a", v, 1, (int64_t[]){2}));
        uint32_t b0, b1;
        memcpy(&b0, &v[0], 4);
        memcpy(&b1, &v[1], 4);
        CHECK(b0 == 0x03020100u && b1 == 0x07060504u, "python layout: little-endian data read in place");
        safetensors_close(set);
    }
    make_file(at("python2.safetensors"),
              "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"x\"},"
              "\"z.bias\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[12,18]},"
              "\"c\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[18,20]},"
              "\"y\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}",
              1, 20);
    if (CHECK_OK(safetensors_open(&set, at("python2.safetensors")))) {
        const SafetensorsTensor *z = safetensors_find(set, "z.bias"), *c = safetensors_find(set, "c");
        float v[3];
        CHECK(z && c && z->dtype == DT_BF16 && c->dtype == DT_F16 && safetensors_count(set) == 3,
              "python layout: mixed dtypes");
        CHECK_OK(safetensors_read_f32(set, "z.bias", v, 1, (int64_t[]){3}));
        CHECK(same_bits(v[0], bf16_to_f32(0x0D0C)) && same_bits(v[2], bf16_to_f32(0x1110)), "BF16 data at offset 12");
        safetensors_close(set);
    }
    /* No __metadata__, JSON whitespace around the object, no tensors at all. */
    make_file(at("python3.safetensors"), " \n{\"a\" : {\"shape\": [], \"dtype\": \"F32\", \"data_offsets\": [0, 4]}}\n", 1, 4);
    make_file(at("python4.safetensors"), "{\"__metadata__\":{\"format\":\"pt\"}}", 1, 0);
    if (CHECK_OK(safetensors_open(&set, at("python3.safetensors")))) {
        CHECK(safetensors_count(set) == 1 && safetensors_find(set, "a")->ndim == 0, "scalar, whitespace");
        safetensors_close(set);
    }
    if (CHECK_OK(safetensors_open(&set, at("python4.safetensors")))) {
        CHECK(safetensors_count(set) == 0, "a file of no tensors");
        safetensors_close(set);
    }
}

/* ---- what must be refused ---- */

#define T_A "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"

static void test_malformed_files(void) {
    make_dir(at("bad"));
    struct {
        const char *file, *header;
        size_t data_len;
        const char *needle;
    } cases[] = {
        {"not_json", "hello", 0, "not valid JSON"},
        {"zero_header", "", 0, "not valid JSON"},
        {"trailing", "{" T_A "} xx", 8, "trailing bytes"},
        {"array", "[1,2,3]", 0, "expected an object"},
        {"f64", "{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, "unsupported dtype F64"},
        {"i64", "{\"a\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, "unsupported dtype I64"},
        {"f8", "{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "unsupported dtype F8_E4M3"},
        {"unknown", "{\"a\":{\"dtype\":\"Q7\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "unknown dtype 'Q7'"},
        {"lower", "{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype 'f32'"},
        {"negative", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "shape[0] is -2, not a non-negative integer"},
        {"fraction", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,1.5],\"data_offsets\":[0,8]}}", 8, "shape[1] is 1.5"},
        {"string_dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8, "not a non-negative integer"},
        {"five_dims", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,2],\"data_offsets\":[0,8]}}", 8, "5 dimensions"},
        {"overflow", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8, "overflows"},
        {"out_of_range", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 8, "past the end of the data section"},
        {"truncated", "{" T_A ",\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 13, "is the file truncated?"},
        {"overlap", "{" T_A ",\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "overlap tensor 'a'"},
        {"gap", "{" T_A ",\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}", 20, "gap of 4 bytes after tensor 'a'"},
        {"leading_gap", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "gap of 4 bytes"},
        {"extra_data", "{" T_A "}", 12, "cover only 8"},
        {"size", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", 12,
         "span 12 bytes, but shape [2, 2] of F32 needs 16"},
        {"backwards", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8, "run backwards"},
        {"offsets_form", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, "data_offsets must be [begin, end]"},
        {"duplicate", "{" T_A "," T_A "}", 8, "lists tensor 'a' twice"},
        {"dup_field", "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "key 'dtype' twice"},
        {"no_dtype", "{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "has no 'dtype'"},
        {"case", "{\"a\":{\"DTYPE\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "has no 'dtype'"},
        {"not_object", "{\"a\":5}", 0, "tensor 'a' is 5, expected an object"},
        {"meta_value", "{\"__metadata__\":{\"format\":1}," T_A "}", 8, "__metadata__ key 'format' is 1"},
        {"meta_array", "{\"__metadata__\":[]," T_A "}", 8, "__metadata__ is a JSON array"},
        {"meta_twice", "{\"__metadata__\":{},\"__metadata__\":{}," T_A "}", 8, "'__metadata__' twice"},
        {"bad_utf8", "{\"\xff\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "not valid UTF-8"},
        {"surrogate", "{\"\xed\xa0\x80\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "not valid UTF-8"},
        {"control", "{\"a\x01\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "control byte 0x01"},
        {"unclosed", "{\"a\":[[[", 0, "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *path = at("bad/%s.safetensors", cases[i].file);
        make_file(path, cases[i].header, 1, cases[i].data_len);
        expect_open_error(path, cases[i].file, cases[i].needle);
    }
    /* Headers with an embedded NUL byte cannot be built from a C string. */
    unsigned char nul[16] = {8, 0, 0, 0, 0, 0, 0, 0, '{', '}', 0, ' ', ' ', ' ', ' ', ' '};
    write_bytes(at("bad/nul.safetensors"), nul, 16);
    expect_open_error(at("bad/nul.safetensors"), "nul", "control byte 0x00");

    /* Nesting far beyond cJSON's limit is refused, not recursed into. */
    char *deep = test_alloc(20001);
    memset(deep, '[', 20000);
    deep[20000] = 0;
    make_file(at("bad/deeper.safetensors"), deep, 1, 0);
    expect_open_error(at("bad/deeper.safetensors"), "deeper", "not valid JSON");
    free(deep);

    /* Broken lengths. */
    write_bytes(at("bad/empty.safetensors"), "", 0);
    expect_open_error(at("bad/empty.safetensors"), "empty", "file is 0 bytes, too short");
    write_bytes(at("bad/seven.safetensors"), "\x02\0\0\0\0\0\0", 7);
    expect_open_error(at("bad/seven.safetensors"), "seven", "file is 7 bytes, too short");
    unsigned char past[18] = {100, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
    write_bytes(at("bad/past.safetensors"), past, sizeof past);
    expect_open_error(at("bad/past.safetensors"), "past", "header length 100 runs past the end of the file (18 bytes)");
    unsigned char huge[16] = {0x00, 0xC2, 0xEB, 0x0B, 0, 0, 0, 0, '{', '}'}; /* 200,000,000 */
    write_bytes(at("bad/huge.safetensors"), huge, sizeof huge);
    expect_open_error(at("bad/huge.safetensors"), "huge", "exceeds the limit of 100000000 bytes");
    unsigned char wrap[16] = {0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, '{', '}'}; /* 2^64 - 8 */
    write_bytes(at("bad/wrap.safetensors"), wrap, sizeof wrap);
    expect_open_error(at("bad/wrap.safetensors"), "wrap", "exceeds the limit");

    /* Not there at all, or not a model directory. */
    expect_open_error(at("bad/absent.safetensors"), "absent", "No such file");
    expect_open_error(at("bad"), "bad", "no model.safetensors or model.safetensors.index.json");
}

/* A sharded model by hand: shards written by safetensors_write_file, the index as given. */
static void make_index_case(const char *dir, const char *index_json, const char *shard1_names,
                            const char *shard2_names) {
    make_dir(at("%s", dir));
    float v[2] = {1, 2};
    const char *lists[2] = {shard1_names, shard2_names};
    for (int s = 0; s < 2; s++) {
        if (!lists[s]) continue;
        SafetensorsEntry e[4];
        char names[4][8];
        int n = 0;
        for (const char *p = lists[s]; *p && n < 4; p++, n++) {
            snprintf(names[n], sizeof names[n], "%c", *p);
            e[n] = (SafetensorsEntry){names[n], 1, {2}, v};
        }
        CHECK_OK(safetensors_write_file(at("%s/model-0000%d-of-00002.safetensors", dir, s + 1), e, n, DT_BF16));
    }
    write_bytes(at("%s/model.safetensors.index.json", dir), index_json, strlen(index_json));
}

#define S1 "\"model-00001-of-00002.safetensors\""
#define S2 "\"model-00002-of-00002.safetensors\""

static void test_malformed_indexes(void) {
    make_dir(at("idx"));
    struct {
        const char *dir, *index, *shard1, *shard2, *file_part, *needle;
    } cases[] = {
        {"idx/ok", "{\"metadata\":{\"total_size\":8},\"weight_map\":{\"a\":" S1 ",\"b\":" S2 ",\"c\":" S2 "}}", "a", "bc",
         NULL, NULL},
        {"idx/bad_json", "{\"weight_map\": {\"a\": " S1, "a", NULL, "index.json", "not valid JSON"},
        {"idx/trailing", "{\"weight_map\":{\"a\":" S1 "}}}", "a", NULL, "index.json", "trailing bytes"},
        {"idx/no_map", "{\"metadata\":{}}", "a", NULL, "index.json", "has no 'weight_map'"},
        {"idx/map_case", "{\"Weight_Map\":{\"a\":" S1 "}}", "a", NULL, "index.json", "has no 'weight_map'"},
        {"idx/empty_map", "{\"weight_map\":{}}", "a", NULL, "index.json", "lists no tensors"},
        {"idx/map_array", "{\"weight_map\":[]}", "a", NULL, "index.json", "weight_map is a JSON array"},
        {"idx/value", "{\"weight_map\":{\"a\":1}}", "a", NULL, "index.json", "weight_map['a'] is 1"},
        {"idx/escape", "{\"weight_map\":{\"a\":\"../x.safetensors\"}}", "a", NULL, "index.json", "not a file name"},
        {"idx/missing_shard", "{\"weight_map\":{\"a\":" S1 ",\"b\":" S2 "}}", "a", NULL,
         "model-00002-of-00002.safetensors", "No such file"},
        {"idx/absent", "{\"weight_map\":{\"a\":" S1 ",\"b\":" S1 "}}", "a", NULL, "index.json",
         "puts tensor 'b' in model-00001-of-00002.safetensors, which does not hold it"},
        {"idx/unlisted", "{\"weight_map\":{\"a\":" S1 "}}", "ab", NULL, "index.json", "holds tensor 'b', which weight_map does not list"},
        {"idx/wrong_shard", "{\"weight_map\":{\"a\":" S1 ",\"b\":" S1 ",\"c\":" S2 "}}", "a", "bc", "index.json",
         "puts tensor 'b' in model-00001-of-00002.safetensors, but it is in"},
        {"idx/both", "{\"weight_map\":{\"a\":" S1 ",\"b\":" S2 "}}", "a", "ab", "model-00002", "tensor 'a' is in both"},
        {"idx/listed_twice", "{\"weight_map\":{\"a\":" S1 ",\"a\":" S1 "}}", "a", NULL, "index.json", "lists tensor 'a' twice"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        make_index_case(cases[i].dir, cases[i].index, cases[i].shard1, cases[i].shard2);
        if (!cases[i].needle) {
            SafetensorsSet *set;
            if (CHECK_OK(safetensors_open(&set, at("%s", cases[i].dir)))) {
                CHECK(safetensors_count(set) == 3 && safetensors_file_count(set) == 2, "hand-made sharded model opens");
                safetensors_close(set);
            }
            continue;
        }
        expect_open_error(at("%s", cases[i].dir), cases[i].file_part, cases[i].needle);
    }
    /* A broken shard is reported with the shard's name. */
    make_index_case("idx/bad_shard", "{\"weight_map\":{\"a\":" S1 ",\"b\":" S2 "}}", "a", NULL);
    write_bytes(at("idx/bad_shard/model-00002-of-00002.safetensors"), "1234567", 7);
    expect_open_error(at("idx/bad_shard"), "model-00002-of-00002.safetensors", "too short");
}

static void test_read_errors(void) {
    float v[6] = {0, 1, 2, 3, 4, 5}, got[6];
    SafetensorsEntry e = {"w", 2, {2, 3}, v};
    SafetensorsSet *set;
    CHECK_OK(safetensors_write_file(at("read.safetensors"), &e, 1, DT_F32));
    if (!CHECK_OK(safetensors_open(&set, at("read.safetensors")))) return;
    CHECK_ERR(safetensors_read_f32(set, "w", got, 2, (int64_t[]){3, 2}), "read.safetensors: tensor 'w' has shape [2, 3], expected [3, 2]");
    CHECK_ERR(safetensors_read_f32(set, "w", got, 1, (int64_t[]){6}), "has shape [2, 3], expected [6]");
    CHECK_ERR(safetensors_read_f32(set, "W", got, 2, (int64_t[]){2, 3}), "no tensor named 'W'");
    CHECK_OK(safetensors_read_f32(set, "w", got, 2, (int64_t[]){-1, 3}));
    CHECK(memcmp(got, v, sizeof v) == 0, "read with a wildcard extent");
    safetensors_close(set);
}

static void test_write_errors(void) {
    float v[2] = {1, 2};
    const char *dir = at("werr");
    make_dir(dir);
    SafetensorsEntry dup[2] = {{"x", 1, {2}, v}, {"x", 1, {2}, v}};
    SafetensorsEntry reserved = {"__metadata__", 1, {2}, v};
    SafetensorsEntry five = {"f", 5, {1, 1, 1, 1}, v};
    SafetensorsEntry negative = {"n", 1, {-1}, v};
    SafetensorsEntry no_data = {"d", 1, {2}, NULL};
    CHECK_ERR(safetensors_write_model(dir, dup, 2, DT_BF16, 0), "tensor 'x' is given twice");
    CHECK_ERR(safetensors_write_model(dir, &reserved, 1, DT_F32, 0), "reserved");
    CHECK_ERR(safetensors_write_model(dir, &five, 1, DT_F32, 0), "5 dimensions");
    CHECK_ERR(safetensors_write_model(dir, &negative, 1, DT_F32, 0), "shape[0] = -1");
    CHECK_ERR(safetensors_write_model(dir, &no_data, 1, DT_F32, 0), "has no data");
    CHECK_ERR(safetensors_write_model(dir, dup, 1, DT_I32, 0), "cannot write dtype i32");
    CHECK_ERR(safetensors_write_model(at("werr/absent"), dup, 1, DT_F32, 0), "not an existing directory");
    CHECK_ERR(safetensors_write_file(at("werr/absent/x.safetensors"), dup, 1, DT_F32), "cannot create a temporary file");
    CHECK(count_names(dir, "") == 2, "failed writes leave nothing behind");

    /* A failure after the data is written (the rename onto a directory) removes the temporary, and
     * an existing file is never half-replaced. */
    make_dir(at("werr/occupied.safetensors"));
    CHECK_ERR(safetensors_write_file(at("werr/occupied.safetensors"), dup, 1, DT_F32), "cannot rename");
    CHECK(count_names(dir, ".tmp.") == 0, "the temporary file is removed after a failed rename");
    CHECK_OK(safetensors_write_file(at("werr/kept.safetensors"), dup, 1, DT_F32));
    CHECK_ERR(safetensors_write_file(at("werr/kept.safetensors"), dup, 2, DT_F32), "given twice");
    SafetensorsSet *set;
    if (CHECK_OK(safetensors_open(&set, at("werr/kept.safetensors")))) {
        CHECK(safetensors_count(set) == 1, "the earlier file is intact");
        safetensors_close(set);
    }
}

/* ---- robustness: truncations and mutations of a valid file must never read out of bounds ---- */

static uint64_t xorshift(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Opens path; when it opens, reads every tensor (so ASan sees any bad pointer). 1 if it opened. */
static int open_and_touch(const char *path) {
    SafetensorsSet *set;
    if (safetensors_open(&set, path) != STATUS_OK) {
        CHECK(strlen(error_message()) > 0 && !strchr(error_message(), '\n'), "mutant refused with one line");
        error_clear();
        return 0;
    }
    for (int64_t i = 0; i < safetensors_count(set); i++) {
        const SafetensorsTensor *t = safetensors_tensor(set, i);
        float *buf = test_alloc(t->bytes * 2 + 4);
        CHECK_OK(safetensors_read_f32(set, t->name, buf, t->ndim, t->shape));
        free(buf);
    }
    safetensors_close(set);
    return 1;
}

static void test_mutations(void) {
    float v[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    SafetensorsEntry e[3] = {{"a.w", 2, {2, 3}, v}, {"b", 1, {3}, v}, {"c", 0, {0}, v}};
    const char *base_path = at("base.safetensors"), *path = at("mutant.safetensors");
    CHECK_OK(safetensors_write_file(base_path, e, 3, DT_BF16));
    size_t n;
    unsigned char *base = read_bytes(base_path, &n);
    unsigned char *m = test_alloc(n + 16);
    int refused = 0;
    for (size_t len = 0; len < n; len++) {
        write_bytes(path, base, len);
        refused += !open_and_touch(path);
    }
    CHECK(refused == (int)n, "every truncation is refused (%d of %zu)", refused, n);

    const unsigned char values[] = {0x00, 0xFF, '{', '}', '"', '1', '9', '-', ' ', ',', '[', '.', 'e'};
    int opened = 0, tried = 0;
    for (size_t pos = 0; pos < n - 18; pos++)
        for (size_t k = 0; k < sizeof values; k++) {
            memcpy(m, base, n);
            m[pos] = values[k];
            write_bytes(path, m, n);
            opened += open_and_touch(path);
            tried++;
        }
    uint64_t seed = 0x9E3779B97F4A7C15ull;
    for (int iter = 0; iter < 1500; iter++, tried++) {
        memcpy(m, base, n);
        int edits = 1 + (int)(xorshift(&seed) % 4);
        for (int k = 0; k < edits; k++) m[xorshift(&seed) % n] = (unsigned char)xorshift(&seed);
        size_t len = n - (xorshift(&seed) % 3 == 0 ? xorshift(&seed) % 8 : 0);
        write_bytes(path, m, len);
        opened += open_and_touch(path);
    }
    CHECK(opened < tried, "mutations: %d of %d still valid files, the rest refused, none crashed", opened, tried);
    free(m);
    free(base);
}

int main(void) {
    snprintf(work_dir, sizeof work_dir, "/tmp/mlatrain_safetensors_XXXXXX");
    if (!mkdtemp(work_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_half_conversions();
    test_round_trips();
    test_sharded();
    test_layout();
    test_malformed_files();
    test_malformed_indexes();
    test_read_errors();
    test_write_errors();
    test_mutations();
    test_remove_tree(work_dir);
    return test_finish("test_safetensors");
}
