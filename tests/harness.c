/* The test harness's implementation: counters, error measures, finite differences. */
#include "harness.h"

#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/rng.h"

int test_failures = 0;
int test_checks = 0;

static const uint64_t TEST_SEED = 0x6d6c6174726169ull; /* fixed: tests are reproducible */

void test_check(int ok, const char *file, int line, const char *fmt, ...) {
    test_checks++;
    if (!ok) test_failures++;
    if (!ok || getenv("MLATRAIN_TEST_VERBOSE")) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "%s %s:%d: ", ok ? "ok  " : "FAIL", file, line);
        vfprintf(stderr, fmt, ap);
        fprintf(stderr, "\n");
        va_end(ap);
    }
}

int test_check_ok(Status s, const char *file, int line, const char *what) {
    test_check(s == STATUS_OK, file, line, "%s -> %s", what, s == STATUS_OK ? "ok" : error_message());
    return s == STATUS_OK;
}

int test_check_err(Status s, const char *needle, const char *file, int line, const char *what) {
    int ok = s != STATUS_OK && strstr(error_message(), needle) != NULL;
    test_check(ok, file, line, "%s should fail mentioning '%s'; got %s", what, needle,
               s == STATUS_OK ? "success" : error_message());
    error_clear();
    return ok;
}

int test_finish(const char *name) {
    printf("%s: %d checks, %d failed\n", name, test_checks, test_failures);
    return test_failures == 0 && test_checks > 0 ? 0 : 1;
}

double rel_error_f64(const float *a, const double *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += b[i] * b[i];
    }
    if (isnan(num)) return INFINITY;
    return sqrt(num) / fmax(sqrt(den), 1e-30);
}

double rel_error_f32(const float *a, const float *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    if (isnan(num)) return INFINITY;
    return sqrt(num) / fmax(sqrt(den), 1e-30);
}

double max_abs_diff_f64(const float *a, const double *b, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (isnan(d)) return INFINITY;
        if (d > m) m = d;
    }
    return m;
}

void fill_normal(float *x, int64_t n, uint64_t stream, float std) {
    rng_fill_normal(x, n, TEST_SEED, stream, 0.0f, std);
}

void fill_normal_f64(double *x, int64_t n, uint64_t stream, double std) {
    for (int64_t i = 0; i < n; i++) x[i] = std * rng_normal(TEST_SEED, stream, (uint64_t)i);
}

void copy_f32_to_f64(double *dst, const float *src, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = src[i];
}

void copy_f64_to_f32(float *dst, const double *src, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = (float)src[i];
}

void finite_difference(double (*f)(void *ctx), void *ctx, double *x, int64_t n, double eps,
                       double *grad) {
    for (int64_t i = 0; i < n; i++) {
        double saved = x[i];
        x[i] = saved + eps;
        double fp = f(ctx);
        x[i] = saved - eps;
        double fm = f(ctx);
        x[i] = saved;
        grad[i] = (fp - fm) / (2 * eps);
    }
}

double dot_f64(const double *a, const double *b, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

Backend *test_cpu_backend(int threads) {
    Backend *be = NULL;
    BackendOptions opts = {.threads = threads, .device = 0};
    if (backend_create(&be, "cpu", opts) != STATUS_OK) {
        fprintf(stderr, "cannot create the cpu backend: %s\n", error_message());
        exit(1);
    }
    return be;
}

void *test_alloc(size_t bytes) {
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "test: out of memory allocating %zu bytes\n", bytes);
        exit(1);
    }
    return p;
}

void test_make_tmp_dir(char path[64], const char *tag) {
    snprintf(path, 64, "/tmp/mlatrain_%s_XXXXXX", tag);
    if (!mkdtemp(path)) {
        perror("mkdtemp");
        exit(1);
    }
}

void test_remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return;
    if (!S_ISDIR(st.st_mode)) {
        unlink(path);
        return;
    }
    DIR *d = opendir(path);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char child[1024];
        snprintf(child, sizeof child, "%s/%s", path, e->d_name);
        test_remove_tree(child);
    }
    if (d) closedir(d);
    rmdir(path);
}
