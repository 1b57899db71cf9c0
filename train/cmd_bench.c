/* The bench command: the config's trainer on random token batches, warm-up steps, then N timed
 * steps. FLOPs are counted as shared/bench/torch_distill.py counts them (matrix products and
 * attention over the full T x T; the teacher's forward once, the student's forward and backward
 * three times), so that tok/s, TFLOP/s and MFU compare directly with that PyTorch baseline. MFU is
 * against this device's measured matrix-product peak: float32 sgemm on the CPU, a bf16 cuBLASLt
 * product on a GPU. On a GPU the line also carries the memory high-water mark of the steps. */
#include "train/cmd_bench.h"

#include <errno.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "model/ops/cpu/cpu_ops.h"
#include "train/models.h"
#include "train/trainer.h"
#ifdef MLATRAIN_HAVE_CUDA
#include "model/ops/cuda/cuda_backend.h"
#include "model/ops/cuda/matmul_peak.h"
#endif

/* CPU: 2 warm-up and 5 timed steps, as before. GPU: torch_distill.py's 3 warm-up and 10 timed steps,
 * so both sides average over the same number of steps after the same warm-up. */
enum { BENCH_MAX_SETS = 64, BENCH_CPU_WARMUP = 2, BENCH_CPU_STEPS = 5, BENCH_GPU_WARMUP = 3, BENCH_GPU_STEPS = 10 };
/* --op-times: profiled steps after the timed ones, and the ops listed (the table has fewer). */
enum { BENCH_PROFILE_STEPS = 2, BENCH_MAX_OPS = 32 };
/* 8192^3 (1.1 TFLOP, ~1.4 ms on an H100): large enough for cuBLASLt's bf16 kernels to reach their
 * peak, small enough that 20 timed runs take well under a second. */
enum { GPU_PEAK_N = 8192, GPU_PEAK_REPS = 20 };

void cmd_bench_usage(void) {
    printf("usage: mlatrain bench --config FILE [--steps N] [--op-times] [--set key.path=value ...]\n"
           "\n"
           "Times the config's training step (teacher forward, student forward and backward, loss,\n"
           "AdamW) on random token batches: warm-up steps (%d on the CPU, %d on a GPU), then N timed steps\n"
           "(default %d on the CPU, %d on a GPU, as shared/bench/torch_distill.py). Prints one JSON line.\n"
           "CPU: config, device, precision, recompute, threads, blas (the OpenBLAS loaded, how it was built\n"
           "to thread, the kernels it chose), B, T, step_s, tok_s, gflop_per_tok, gflops, peak_gflops (the\n"
           "measured float32 matrix-product rate), mfu, loss.\n"
           "GPU: config, device, gpu, teacher (its parameters, in billions), B, T, compile (always false),\n"
           "step_s, tok_s, tflops, gflop_per_tok, peak_tflops (the measured bf16 cuBLASLt rate of an\n"
           "%d^3 product), mfu (tflops / peak_tflops), peak_mem_gb (high-water mark of the backend's\n"
           "tensors and scratch over the steps, as PyTorch's max_memory_allocated), setup_peak_mem_gb (the\n"
           "same before the first step), device_used_gb (cudaMemGetInfo's used bytes after the steps:\n"
           "context and library workspaces included), loss. GB are 1e9 bytes.\n"
           "--op-times (GPU): then %d more steps with every op bracketed by CUDA events, and a second JSON\n"
           "line: op_times with the profiled step_ms, each op's GPU ms and calls per step and share of the\n"
           "step, largest first, and other_ms (what no op's kernels account for: memsets, copies, host gaps).\n",
           BENCH_CPU_WARMUP, BENCH_GPU_WARMUP, BENCH_CPU_STEPS, BENCH_GPU_STEPS, GPU_PEAK_N, BENCH_PROFILE_STEPS);
}

/* FLOPs per token of one model, as torch_distill.py's flops_per_token: 2 per weight of every matrix
 * product (the LM head included, the embedding lookup not) and 2 T (qk + pv) for attention, times 3
 * when training. The query bottleneck (q_lora_rank > 0), which that script has no form for, counts
 * its two products the same way. */
static double flops_per_token(const ModelConfig *c, int64_t T, int train) {
    double d = (double)c->hidden_size, V = (double)c->vocab_size, F = (double)c->intermediate_size;
    double H = (double)c->num_attention_heads, p = 0, attention = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        double attnp, qk, pv;
        if (c->layer_attention[l] == ATTENTION_MLA) {
            const MlaDims *a = &c->mla;
            double dn = (double)a->qk_nope_head_dim, dr = (double)a->qk_rope_head_dim, dv = (double)a->v_head_dim;
            double r = (double)a->kv_lora_rank, qr = (double)a->q_lora_rank;
            double q = qr > 0 ? d * qr + qr * H * (dn + dr) : d * H * (dn + dr);
            attnp = q + d * (r + dr) + r * H * (dn + dv) + H * dv * d;
            qk = H * (dn + dr);
            pv = H * dv;
        } else {
            double K = (double)c->num_key_value_heads, hd = (double)c->head_dim;
            attnp = d * H * hd + 2 * d * K * hd + H * hd * d;
            qk = pv = H * hd;
        }
        p += attnp + 3 * d * F;
        attention += 2 * (double)T * (qk + pv);
    }
    p += d * V;
    double f = 2 * p + attention;
    return train ? 3 * f : f;
}

/* The float32 matrix-product rate of the CPU backend's own sgemm at a size that reaches its peak. */
static double measure_cpu_peak_gflops(void) {
    const int64_t n = 1024;
    float *a = malloc((size_t)(n * n) * 4), *b = malloc((size_t)(n * n) * 4), *c = malloc((size_t)(n * n) * 4);
    if (!a || !b || !c) {
        free(a), free(b), free(c);
        return 0;
    }
    for (int64_t i = 0; i < n * n; i++) a[i] = b[i] = 1e-3f * (float)(i % 97);
    cpu_sgemm(CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n); /* warm-up */
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = monotonic_seconds();
        cpu_sgemm(CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double g = 2.0 * (double)(n * n * n) / (monotonic_seconds() - t0) / 1e9;
        if (g > best) best = g;
    }
    free(a), free(b), free(c);
    return best;
}

/* What a run measured, whichever the device. */
typedef struct {
    double step_s, tokens_per_step, flop_per_token, loss;
    double teacher_params;           /* 0 without a teacher */
    /* GPU only, in bytes */
    double setup_peak, steps_peak, device_used;
#ifdef MLATRAIN_HAVE_CUDA
    /* GPU with --op-times: the profiled steps' time and each op's share of it */
    double profiled_step_s;
    CudaOpTime ops[BENCH_MAX_OPS];
    int n_ops;
    int profile_failed;              /* the figures above stand; the profile's error follows them */
#endif
} BenchFigures;

static double model_parameter_count(const Model *m) {
    double n = 0;
    for (int i = 0; i < m->n_params; i++) n += (double)tensor_numel(*m->params[i].value);
    return n;
}

#ifdef MLATRAIN_HAVE_CUDA
/* Folds the backend's present memory figures into the run's maxima. */
static Status sample_gpu_memory(Backend *be, BenchFigures *f) {
    CudaMemoryFigures m;
    TRY(cuda_backend_memory(be, &m));
    if ((double)m.peak_allocated > f->steps_peak) f->steps_peak = (double)m.peak_allocated;
    if ((double)m.device_used > f->device_used) f->device_used = (double)m.device_used;
    return STATUS_OK;
}
#endif

/* Sets up the trainer, runs `warmup` untimed steps and `steps` timed ones. On a GPU the memory
 * high-water mark is restarted after setup, so setup (which briefly holds the model the student
 * is converted from) and the steps are reported apart; the used bytes are sampled after each warm-up
 * step and after the timed steps, never inside the timed region. */
#ifdef MLATRAIN_HAVE_CUDA
/* BENCH_PROFILE_STEPS steps with per-op events, after (and apart from) the timed ones. */
static Status profile_steps(Trainer *t, BenchFigures *f) {
    TRY(cuda_backend_profile_ops(t->be, 1));
    StepRecord r = {0};
    double t0 = monotonic_seconds();
    Status st = STATUS_OK;
    for (int i = 0; i < BENCH_PROFILE_STEPS && st == STATUS_OK; i++) st = trainer_step(t, &r);
    f->profiled_step_s = (monotonic_seconds() - t0) / BENCH_PROFILE_STEPS;
    if (st == STATUS_OK) st = cuda_backend_op_times(t->be, f->ops, BENCH_MAX_OPS, &f->n_ops);
    Status off = cuda_backend_profile_ops(t->be, 0);
    return st != STATUS_OK ? st : off;
}
#endif

static Status time_steps(const Config *cfg, int warmup, int steps, int op_times, BenchFigures *f) {
    Trainer *t = NULL;
    TrainerOptions opts = {.random_batches = 1, .quiet = 1};
    TRY(trainer_create(&t, cfg, opts));
    int cuda = cfg->device == CONFIG_DEVICE_CUDA;
    (void)cuda; /* read only where the CUDA backend is built */
    Status st = STATUS_OK;
#ifdef MLATRAIN_HAVE_CUDA
    if (cuda) {
        CudaMemoryFigures m;
        st = cuda_backend_memory(t->be, &m);
        f->setup_peak = (double)m.peak_allocated;
        cuda_backend_reset_peak_memory(t->be);
    }
#endif
    StepRecord r = {0};
    for (int i = 0; i < warmup && st == STATUS_OK; i++) {
        st = trainer_step(t, &r);
#ifdef MLATRAIN_HAVE_CUDA
        if (st == STATUS_OK && cuda) st = sample_gpu_memory(t->be, f);
#endif
    }
    double t0 = monotonic_seconds();
    for (int i = 0; i < steps && st == STATUS_OK; i++) st = trainer_step(t, &r);
    f->step_s = (monotonic_seconds() - t0) / steps;
#ifdef MLATRAIN_HAVE_CUDA
    if (st == STATUS_OK && cuda) st = sample_gpu_memory(t->be, f);
#endif
    if (st == STATUS_OK) {
        f->tokens_per_step = (double)(cfg->train.global_batch * cfg->data.seq_len);
        f->flop_per_token = flops_per_token(&t->student->cfg, t->T, 1) +
                            (t->teacher ? flops_per_token(&t->teacher->cfg, t->T, 0) : 0);
        f->teacher_params = t->teacher ? model_parameter_count(t->teacher) : 0;
        f->loss = r.loss;
    }
#ifdef MLATRAIN_HAVE_CUDA
    /* After the figures are complete, so that a failing profile does not take them with it. */
    if (st == STATUS_OK && cuda && op_times && profile_steps(t, f) != STATUS_OK) {
        f->profile_failed = 1;
        st = error_context("bench: --op-times: ");
    }
#else
    (void)op_times;
#endif
    trainer_destroy(t);
    return st;
}

static const char *config_file_name(const Config *cfg) {
    const char *slash = strrchr(cfg->name, '/');
    return slash ? slash + 1 : cfg->name;
}

/* The storage precision the run resolved to. */
static const char *precision_name(const Config *cfg) {
    return config_compute_dtype(cfg) == DT_BF16 ? "bf16" : "fp32";
}

/* The FLOPs counted are the model's; with recomputation the hardware also runs part of the
 * student's forward a second time, which the figures do not count. */
static const char *recompute_name(const Config *cfg) { return config_recompute_name(cfg->train.recompute); }

static void print_cpu_line(const Config *cfg, const BenchFigures *f) {
    double tok_s = f->tokens_per_step / f->step_s, gflops = tok_s * f->flop_per_token / 1e9;
    double peak = measure_cpu_peak_gflops();
    char blas[160];
    cpu_blas_describe(blas, sizeof blas);
    printf("{\"config\": \"%s\", \"device\": \"%s\", \"precision\": \"%s\", \"recompute\": \"%s\", "
           "\"threads\": %d, \"blas\": \"%s\", \"B\": %lld, "
           "\"T\": %lld, \"step_s\": %.4f, \"tok_s\": %.1f, \"gflop_per_tok\": %.4f, \"gflops\": %.1f",
           config_file_name(cfg), config_device_name(cfg->device), precision_name(cfg), recompute_name(cfg),
           omp_get_max_threads(), blas,
           (long long)cfg->train.global_batch, (long long)cfg->data.seq_len, f->step_s, tok_s, f->flop_per_token / 1e9,
           gflops);
    if (peak > 0) printf(", \"peak_gflops\": %.1f, \"mfu\": %.3f", peak, gflops / peak);
    printf(", \"loss\": %.6g}\n", f->loss);
}

#ifdef MLATRAIN_HAVE_CUDA
/* The peak is measured after the trainer is gone, so its buffers neither add to the run's memory
 * figures nor compete with the model for device memory; the card is still warm from the steps. */
static Status print_gpu_line(const Config *cfg, const BenchFigures *f) {
    CudaMatmulPeak peak;
    TRY(cuda_matmul_peak(0, GPU_PEAK_N, GPU_PEAK_REPS, &peak));
    double tok_s = f->tokens_per_step / f->step_s, tflops = tok_s * f->flop_per_token / 1e12;
    char teacher[32] = "null";
    if (f->teacher_params > 0) snprintf(teacher, sizeof teacher, "\"%.2fb\"", f->teacher_params / 1e9);
    printf("{\"config\": \"%s\", \"device\": \"cuda\", \"precision\": \"%s\", \"recompute\": \"%s\", "
           "\"gpu\": \"%s\", \"teacher\": %s, "
           "\"B\": %lld, \"T\": %lld, \"compile\": false, \"step_s\": %.4f, \"tok_s\": %.0f, \"tflops\": %.1f, \"gflop_per_tok\": %.2f, "
           "\"peak_tflops\": %.1f, \"mfu\": %.3f, \"peak_mem_gb\": %.2f, \"setup_peak_mem_gb\": %.2f, "
           "\"device_used_gb\": %.2f, \"loss\": %.6g}\n",
           config_file_name(cfg), precision_name(cfg), recompute_name(cfg), peak.device_name, teacher, (long long)cfg->train.global_batch,
           (long long)cfg->data.seq_len, f->step_s, tok_s, tflops, f->flop_per_token / 1e9, peak.tflops,
           tflops / peak.tflops, f->steps_peak / 1e9, f->setup_peak / 1e9, f->device_used / 1e9, f->loss);
    if (f->n_ops > 0) {
        double step_ms = 1e3 * f->profiled_step_s, ops_ms = 0;
        printf("{\"config\": \"%s\", \"op_times\": {\"steps\": %d, \"step_ms\": %.2f, \"ops\": [", config_file_name(cfg),
               BENCH_PROFILE_STEPS, step_ms);
        for (int i = 0; i < f->n_ops; i++) {
            double ms = f->ops[i].ms / BENCH_PROFILE_STEPS;
            ops_ms += ms;
            printf("%s{\"op\": \"%s\", \"ms\": %.3f, \"calls\": %.0f, \"share\": %.3f}", i ? ", " : "", f->ops[i].op,
                   ms, (double)f->ops[i].calls / BENCH_PROFILE_STEPS, ms / step_ms);
        }
        printf("], \"other_ms\": %.2f}}\n", step_ms - ops_ms);
    }
    return STATUS_OK;
}
#endif

/* steps = 0: the device's default. */
static Status run_bench(const Config *cfg, int steps, int op_times) {
    int cuda = cfg->device == CONFIG_DEVICE_CUDA;
    int warmup = cuda ? BENCH_GPU_WARMUP : BENCH_CPU_WARMUP;
    if (steps == 0) steps = cuda ? BENCH_GPU_STEPS : BENCH_CPU_STEPS;
    BenchFigures f = {0};
    if (op_times && !cuda) return errorf("bench: --op-times needs \"device\": \"cuda\" (the config's is \"%s\")",
                                         config_device_name(cfg->device));
    Status st = time_steps(cfg, warmup, steps, op_times, &f);
#ifdef MLATRAIN_HAVE_CUDA
    if (st != STATUS_OK && f.profile_failed) {
        /* the timed steps' line still, then the profile's error */
        char why[512];
        snprintf(why, sizeof why, "%s", error_message());
        error_clear();
        TRY(print_gpu_line(cfg, &f));
        return errorf("%s", why);
    }
#endif
    TRY(st);
#ifdef MLATRAIN_HAVE_CUDA
    if (cuda) return print_gpu_line(cfg, &f);
#endif
    print_cpu_line(cfg, &f);
    return STATUS_OK;
}

Status cmd_bench(int argc, char **argv, int *show_help) {
    const char *config_path = NULL;
    const char *sets[BENCH_MAX_SETS];
    int n_sets = 0;
    long steps = 0;
    int op_times = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            *show_help = 1;
            return STATUS_OK;
        }
        if (strcmp(a, "--op-times") == 0) {
            op_times = 1;
            continue;
        }
        if (i + 1 >= argc) return errorf("bench: %s: unknown option or missing value (see mlatrain bench --help)", a);
        const char *v = argv[++i];
        if (strcmp(a, "--config") == 0) config_path = v;
        else if (strcmp(a, "--steps") == 0) {
            char *end = NULL;
            errno = 0;
            steps = strtol(v, &end, 10);
            if (errno || end == v || *end || steps < 1 || steps > 100000)
                return errorf("bench: --steps: expected an integer in [1, 100000], got \"%s\"", v);
        } else if (strcmp(a, "--set") == 0) {
            if (n_sets == BENCH_MAX_SETS) return errorf("bench: more than %d --set options", BENCH_MAX_SETS);
            sets[n_sets++] = v;
        } else {
            return errorf("bench: unknown option %s (see mlatrain bench --help)", a);
        }
    }
    if (!config_path) return errorf("bench: --config FILE is required (see mlatrain bench --help)");
    Config *cfg = calloc(1, sizeof *cfg);
    if (!cfg) return errorf("bench: out of memory");
    Status st = config_load(cfg, config_path, sets, n_sets);
    if (st == STATUS_OK) st = run_bench(cfg, (int)steps, op_times);
    free(cfg);
    return st;
}
