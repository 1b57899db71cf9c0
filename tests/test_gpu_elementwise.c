/* The CUDA backend's memory, AdamW (with its bf16 copy), casts and reductions against the CPU
 * backend; two runs give the same bits. Reports "skipped: no CUDA device" where there is none. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/half.h"
#include "harness.h"
#ifdef MLATRAIN_HAVE_CUDA
#include "model/ops/cuda/cuda_backend.h"
#endif

static Tensor upload_f32(Backend *be, const float *host, int64_t n) {
    Tensor t;
    CHECK_OK(be->alloc(be, &t, DT_F32, 1, &n));
    CHECK_OK(be->upload(be, t, host));
    return t;
}

static void download_f32(Backend *be, float *host, Tensor t) { CHECK_OK(be->download(be, host, t)); }

#ifdef MLATRAIN_HAVE_CUDA
/* The op profile (bench --op-times) counts every call while on, through more calls than its event
 * pool holds, passes the arguments through unchanged, and off restores the plain table. */
static void test_op_profile(Backend *gpu) {
    const int64_t n = 256;
    const int adds = 1100;
    Ops plain = gpu->ops;
    Tensor a, b;
    CHECK_OK(gpu->alloc(gpu, &a, DT_F32, 1, &n));
    CHECK_OK(gpu->alloc(gpu, &b, DT_F32, 1, &n));
    float *ones = test_alloc((size_t)n * 4), *got = test_alloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) ones[i] = 1.0f;
    CHECK_OK(gpu->upload(gpu, b, ones));
    CHECK_OK(cuda_backend_profile_ops(gpu, 1));
    CHECK(gpu->ops.accumulate != plain.accumulate, "profiling installs the timed table");
    CHECK_ERR(cuda_backend_profile_ops(gpu, 1), "op profiling is already on");
    for (int i = 0; i < 3; i++) CHECK_OK(gpu->ops.scale(gpu, a, 2.0f));
    for (int i = 0; i < adds; i++) CHECK_OK(gpu->ops.accumulate(gpu, a, b));
    double s = 0;
    CHECK_OK(gpu->ops.sum_squares(gpu, &s, a));
    CHECK(s == (double)adds * adds * (double)n, "the timed ops compute what the plain ones do: %.17g", s);
    CudaOpTime t[8];
    int count = 0;
    CHECK_OK(cuda_backend_op_times(gpu, t, 8, &count));
    CHECK(count == 3, "three ops were called, %d listed", count);
    int64_t calls_scale = 0, calls_add = 0, calls_sq = 0;
    for (int i = 0; i < count; i++) {
        CHECK(t[i].ms >= 0 && (i == 0 || t[i - 1].ms >= t[i].ms), "op times are >= 0 and largest first");
        if (strcmp(t[i].op, "scale") == 0) calls_scale = t[i].calls;
        if (strcmp(t[i].op, "accumulate") == 0) calls_add = t[i].calls;
        if (strcmp(t[i].op, "sum_squares") == 0) calls_sq = t[i].calls;
    }
    CHECK(calls_scale == 3 && calls_add == adds && calls_sq == 1, "calls counted: scale %lld, accumulate %lld, "
          "sum_squares %lld", (long long)calls_scale, (long long)calls_add, (long long)calls_sq);
    /* Room for one: the largest of the three, accumulate's 1100 calls. */
    CudaOpTime top;
    CHECK_OK(cuda_backend_op_times(gpu, &top, 1, &count));
    CHECK(count == 1 && strcmp(top.op, t[0].op) == 0 && top.ms == t[0].ms, "with room for one op, the largest: %s",
          count == 1 ? top.op : "none");
    CHECK_OK(cuda_backend_profile_ops(gpu, 0));
    CHECK(memcmp(&gpu->ops, &plain, sizeof plain) == 0, "profiling off restores the plain table");
    CHECK_ERR(cuda_backend_op_times(gpu, t, 8, &count), "op profiling is off");
    CHECK_OK(gpu->download(gpu, got, a));
    CHECK(got[0] == (float)adds && got[n - 1] == (float)adds, "accumulated %g", got[0]);
    free(ones);
    free(got);
    gpu->release(gpu, &a);
    gpu->release(gpu, &b);
}
#endif

/* The multi-tensor ops over more tensors than one launch takes (MULTI_TENSOR_BATCH = 32), of sizes
 * around the chunk boundaries: adamw_step_multi bitwise equal to scale + adamw_step per tensor on
 * the GPU, and within float rounding of the CPU's multi step; sum_squares_multi against the CPU's
 * and bitwise equal run to run. */
static void test_multi_tensor(Backend *gpu, Backend *cpu) {
    enum { P = 41 };
    static const int64_t base[] = {1, 7, 16383, 16384, 16385, 70001, 0, 300};
    Tensor t[3][5][P]; /* [gpu multi, gpu per tensor, cpu multi][p, g, m, v, copy][i] */
    int64_t sizes[P];
    for (int i = 0; i < P; i++) sizes[i] = base[i % 8] + (i / 8);
    for (int r = 0; r < 3; r++) {
        Backend *be = r < 2 ? gpu : cpu;
        for (int i = 0; i < P; i++) {
            float *init = test_alloc((size_t)(sizes[i] > 0 ? sizes[i] : 1) * 4);
            for (int k = 0; k < 5; k++) {
                CHECK_OK(be->alloc(be, &t[r][k][i], k == 4 ? DT_BF16 : DT_F32, 1, &sizes[i]));
                if (k < 2 && sizes[i] > 0) {
                    fill_normal(init, sizes[i], 60 + 2 * (uint64_t)i + (uint64_t)k, k ? 0.1f : 1.0f);
                    CHECK_OK(be->upload(be, t[r][k][i], init));
                }
            }
            free(init);
        }
    }
    const float grad_scale = 0.61f;
    for (int step = 1; step <= 2; step++) {
        AdamWConfig cfg = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f, .step = step};
        for (int r = 0; r < 3; r += 2) {
            AdamWParam list[P];
            for (int i = 0; i < P; i++)
                list[i] = (AdamWParam){t[r][0][i], t[r][1][i], t[r][2][i], t[r][3][i],
                                       i % 3 ? t[r][4][i] : tensor_none(), i % 4 != 1};
            CHECK_OK((r ? cpu : gpu)->ops.adamw_step_multi(r ? cpu : gpu, list, P, cfg, grad_scale));
        }
        for (int i = 0; i < P; i++) {
            AdamWConfig one = cfg;
            one.weight_decay = i % 4 != 1 ? cfg.weight_decay : 0.0f;
            if (step == 1 && sizes[i] > 0) CHECK_OK(gpu->ops.scale(gpu, t[1][1][i], grad_scale));
            CHECK_OK(gpu->ops.adamw_step(gpu, t[1][0][i], t[1][1][i], t[1][2][i], t[1][3][i],
                                         i % 3 ? t[1][4][i] : tensor_none(), one));
        }
    }
    int differ = 0;
    double worst = 0;
    for (int i = 0; i < P; i++) {
        if (sizes[i] == 0) continue;
        size_t bytes = (size_t)sizes[i] * 4;
        float *a = test_alloc(bytes), *b = test_alloc(bytes);
        for (int k = 0; k < 5; k++) {
            if (k == 1) continue; /* the gradient: scaled in place by one path only */
            size_t kb = k == 4 ? bytes / 2 : bytes;
            CHECK_OK(gpu->download(gpu, a, t[0][k][i]));
            CHECK_OK(gpu->download(gpu, b, t[1][k][i]));
            differ += memcmp(a, b, kb) != 0;
        }
        CHECK_OK(gpu->download(gpu, a, t[0][0][i]));
        CHECK_OK(cpu->download(cpu, b, t[2][0][i]));
        double e = rel_error_f32(a, b, sizes[i]);
        worst = e > worst ? e : worst;
        free(a);
        free(b);
    }
    CHECK(differ == 0, "adamw_step_multi == scale + adamw_step on the GPU, bitwise: %d tensors differ", differ);
    CHECK(worst < 1e-6, "adamw_step_multi gpu vs cpu: worst rel error %.3g", worst);

    double s1 = 0, s2 = 0, sc = 0;
    CHECK_OK(gpu->ops.sum_squares_multi(gpu, &s1, t[0][1], P));
    CHECK_OK(gpu->ops.sum_squares_multi(gpu, &s2, t[0][1], P));
    CHECK_OK(cpu->ops.sum_squares_multi(cpu, &sc, t[2][1], P));
    CHECK(fabs(s1 - sc) <= 1e-12 * sc, "sum_squares_multi gpu %.17g vs cpu %.17g", s1, sc);
    CHECK(memcmp(&s1, &s2, sizeof s1) == 0, "sum_squares_multi: two runs give the same bits");
    Tensor mixed[2] = {t[0][0][2], t[0][4][2]};
    CHECK_ERR(gpu->ops.sum_squares_multi(gpu, &s1, mixed, 2), "sum_squares_multi");
    for (int r = 0; r < 3; r++)
        for (int k = 0; k < 5; k++)
            for (int i = 0; i < P; i++) (r < 2 ? gpu : cpu)->release(r < 2 ? gpu : cpu, &t[r][k][i]);
}

int main(void) {
    if (backend_cuda_device_count() == 0) {
        printf("skipped: no CUDA device\n");
        return TEST_SKIPPED;
    }
    Backend *gpu = NULL, *cpu = test_cpu_backend(0);
    BackendOptions opts = {0, 0};
    if (!CHECK_OK(backend_create(&gpu, "cuda", opts))) return test_finish("test_gpu_elementwise");

    const int64_t n = 1000003; /* more than one grid's worth, not a multiple of the block */
    float *p = test_alloc((size_t)n * 4), *g = test_alloc((size_t)n * 4), *zeros = test_alloc((size_t)n * 4);
    float *out_gpu = test_alloc((size_t)n * 4), *poison = test_alloc((size_t)n * 4);
    fill_normal(p, n, 1, 1.0f);
    fill_normal(g, n, 2, 0.1f);
    for (int64_t i = 0; i < n; i++) poison[i] = NAN;

    /* Round trip through device memory. */
    Tensor dp = upload_f32(gpu, p, n);
    download_f32(gpu, out_gpu, dp);
    CHECK(memcmp(out_gpu, p, (size_t)n * 4) == 0, "upload then download returns the same bytes");

    /* AdamW: GPU vs CPU, three steps; the output is poisoned first so an unwritten element fails. */
    Tensor dg = upload_f32(gpu, g, n), dm = upload_f32(gpu, zeros, n), dv = upload_f32(gpu, zeros, n);
    Tensor cp, cg, cm, cv;
    int64_t shape[1] = {n};
    CHECK_OK(cpu->alloc(cpu, &cp, DT_F32, 1, shape));
    CHECK_OK(cpu->alloc(cpu, &cg, DT_F32, 1, shape));
    CHECK_OK(cpu->alloc(cpu, &cm, DT_F32, 1, shape));
    CHECK_OK(cpu->alloc(cpu, &cv, DT_F32, 1, shape));
    memcpy(cp.data, p, (size_t)n * 4);
    memcpy(cg.data, g, (size_t)n * 4);
    for (int step = 1; step <= 3; step++) {
        AdamWConfig cfg = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f, .step = step};
        CHECK_OK(gpu->ops.adamw_step(gpu, dp, dg, dm, dv, tensor_none(), cfg));
        CHECK_OK(cpu->ops.adamw_step(cpu, cp, cg, cm, cv, tensor_none(), cfg));
    }
    memcpy(out_gpu, poison, (size_t)n * 4);
    download_f32(gpu, out_gpu, dp);
    double err = rel_error_f32(out_gpu, tensor_f32(cp), n);
    CHECK(err < 1e-6, "adamw gpu vs cpu (fp32 both): rel error %.3g", err);

    /* AdamW's bf16 copy is exactly the rounding of the master it just wrote; casts round to nearest
     * even both ways, bit for bit as on the host. */
    Tensor copy, back;
    CHECK_OK(gpu->alloc(gpu, &copy, DT_BF16, 1, shape));
    CHECK_OK(gpu->alloc(gpu, &back, DT_F32, 1, shape));
    AdamWConfig c4 = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f, .step = 4};
    CHECK_OK(gpu->ops.adamw_step(gpu, dp, dg, dm, dv, copy, c4));
    uint16_t *copy_h = test_alloc((size_t)n * 2);
    float *master = test_alloc((size_t)n * 4);
    CHECK_OK(gpu->download(gpu, copy_h, copy));
    download_f32(gpu, master, dp);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) bad += copy_h[i] != f32_to_bf16(master[i]);
    CHECK(bad == 0, "adamw's bf16 copy: %lld of %lld values are not the rounded master", (long long)bad, (long long)n);
    CHECK_OK(gpu->ops.cast(gpu, copy, dg));
    CHECK_OK(gpu->ops.cast(gpu, back, copy));
    download_f32(gpu, out_gpu, back);
    bad = 0;
    for (int64_t i = 0; i < n; i++) bad += out_gpu[i] != bf16_to_f32(f32_to_bf16(g[i]));
    CHECK(bad == 0, "cast f32 -> bf16 -> f32 on the GPU: %lld values differ from the host's rounding", (long long)bad);
    gpu->release(gpu, &copy);
    gpu->release(gpu, &back);
    free(copy_h);
    free(master);

    /* Sum of squares: against the CPU's, and bitwise equal run to run. */
    double s_gpu1 = 0, s_gpu2 = 0, s_cpu = 0;
    CHECK_OK(gpu->ops.sum_squares(gpu, &s_gpu1, dg));
    CHECK_OK(gpu->ops.sum_squares(gpu, &s_gpu2, dg));
    CHECK_OK(cpu->ops.sum_squares(cpu, &s_cpu, cg));
    CHECK(fabs(s_gpu1 - s_cpu) <= 1e-12 * s_cpu, "sum_squares gpu %.17g vs cpu %.17g", s_gpu1, s_cpu);
    CHECK(memcmp(&s_gpu1, &s_gpu2, sizeof(double)) == 0, "sum_squares: two runs give the same bits");

    test_multi_tensor(gpu, cpu);
#ifdef MLATRAIN_HAVE_CUDA
    test_op_profile(gpu);
#endif

    /* Scale and accumulate. */
    CHECK_OK(gpu->ops.scale(gpu, dg, 0.5f));
    CHECK_OK(gpu->ops.accumulate(gpu, dg, dg));
    download_f32(gpu, out_gpu, dg);
    CHECK(memcmp(out_gpu, g, (size_t)n * 4) == 0, "scale by 0.5 then doubling is exact");

    gpu->release(gpu, &dp);
    gpu->release(gpu, &dg);
    gpu->release(gpu, &dm);
    gpu->release(gpu, &dv);
    backend_destroy(gpu);
    cpu->release(cpu, &cp);
    cpu->release(cpu, &cg);
    cpu->release(cpu, &cm);
    cpu->release(cpu, &cv);
    backend_destroy(cpu);
    free(p);
    free(g);
    free(zeros);
    free(out_gpu);
    free(poison);
    return test_finish("test_gpu_elementwise");
}
