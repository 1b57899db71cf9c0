/* The test harness: checks that report and continue, error measures against float64 references,
 * random inputs, and central finite differences in float64. Each tests/test_*.c is one ctest. */
#pragma once

#include <stdint.h>
#include <stdio.h>

#include "core/backend.h"

/* Exit code a test returns when it cannot run here (ctest SKIP_RETURN_CODE). */
enum { TEST_SKIPPED = 77 };

extern int test_failures;
extern int test_checks;

/* Records a check; prints the message on failure (and always when MLATRAIN_TEST_VERBOSE is set). */
#define CHECK(cond, ...) test_check((cond) ? 1 : 0, __FILE__, __LINE__, __VA_ARGS__)
void test_check(int ok, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* An op call that must succeed: on error prints error_message() and counts a failure.
 * Evaluates to 1 when the call succeeded. */
#define CHECK_OK(call) test_check_ok((call), __FILE__, __LINE__, #call)
int test_check_ok(Status s, const char *file, int line, const char *what);

/* A call that must fail with a message containing `needle`. */
#define CHECK_ERR(call, needle) test_check_err((call), needle, __FILE__, __LINE__, #call)
int test_check_err(Status s, const char *needle, const char *file, int line, const char *what);

/* Prints "name: N checks, M failed" and returns the process exit code. */
int test_finish(const char *name);

/* ||a - b|| / max(||b||, tiny), a float32 result against a float64 reference. */
double rel_error_f64(const float *a, const double *b, int64_t n);
/* ||a - b|| / max(||b||, tiny), both float32. */
double rel_error_f32(const float *a, const float *b, int64_t n);
/* max |a - b| */
double max_abs_diff_f64(const float *a, const double *b, int64_t n);

/* Random inputs from the project's counter-based RNG (a fixed seed per test, a stream per tensor). */
void fill_normal(float *x, int64_t n, uint64_t stream, float std);
void fill_normal_f64(double *x, int64_t n, uint64_t stream, double std);
void copy_f32_to_f64(double *dst, const float *src, int64_t n);
void copy_f64_to_f32(float *dst, const double *src, int64_t n);

/* Central finite differences of a float64 function f(ctx) with respect to x[0..n):
 * grad[i] = (f(x + eps e_i) - f(x - eps e_i)) / (2 eps). x is restored. */
void finite_difference(double (*f)(void *ctx), void *ctx, double *x, int64_t n, double eps,
                       double *grad);

/* sum_i a[i] * b[i] in float64 (the scalar "loss" <dy, y> used for gradient checks). */
double dot_f64(const double *a, const double *b, int64_t n);

/* A CPU backend with the given thread count (0 = default); aborts the test on failure. */
Backend *test_cpu_backend(int threads);

/* Allocating helpers that abort the test (not the library) on out-of-memory. */
void *test_alloc(size_t bytes);

/* A fresh folder /tmp/mlatrain_<tag>_XXXXXX in path (aborts the test if none can be made), and
 * a folder's whole tree removed (files, links and sub-folders; a missing path is no error). */
void test_make_tmp_dir(char path[64], const char *tag);
void test_remove_tree(const char *path);
