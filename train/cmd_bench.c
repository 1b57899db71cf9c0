/* The bench command: the config's trainer on random token batches, 2 warm-up steps, then N timed
 * steps. FLOPs are counted as shared/bench/torch_distill.py counts them (matrix products and causal
 * attention; the teacher's forward once, the student's forward and backward three times), and MFU
 * is against this machine's measured float32 matrix-product peak on the CPU. */
#include "train/cmd_bench.h"

#include <errno.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "model/ops/cpu/cpu_ops.h"
#include "train/trainer.h"

enum { BENCH_MAX_SETS = 64, BENCH_WARMUP = 2 };

void cmd_bench_usage(void) {
    printf("usage: mlatrain bench --config FILE [--steps N] [--set key.path=value ...]\n"
           "\n"
           "Times the config's training step (teacher forward, student forward and backward, loss,\n"
           "AdamW) on random token batches: %d warm-up steps, then N timed steps (default 5). Prints one\n"
           "JSON line: config, threads, B, T, step_s, tok_s, gflop_per_tok, gflops, peak_gflops (the\n"
           "measured float32 matrix-product rate on this device, cpu only), mfu, loss.\n", BENCH_WARMUP);
}

/* FLOPs per token of one model, as torch_distill.py's flops_per_token. */
static double flops_per_token(const ModelConfig *c, int64_t T, int train) {
    double d = (double)c->hidden_size, V = (double)c->vocab_size, F = (double)c->intermediate_size;
    double H = (double)c->num_attention_heads, p = 0, attention = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        double attnp, qk, pv;
        if (c->layer_attention[l] == ATTENTION_MLA) {
            const MlaDims *a = &c->mla;
            double dn = (double)a->qk_nope_head_dim, dr = (double)a->qk_rope_head_dim, dv = (double)a->v_head_dim;
            double r = (double)a->kv_lora_rank;
            attnp = d * H * (dn + dr) + d * (r + dr) + r * H * (dn + dv) + H * dv * d;
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

static Status run_bench(const Config *cfg, int steps) {
    Trainer *t = NULL;
    TrainerOptions opts = {.random_batches = 1, .quiet = 1};
    TRY(trainer_create(&t, cfg, opts));
    StepRecord r;
    Status st = STATUS_OK;
    for (int i = 0; i < BENCH_WARMUP && st == STATUS_OK; i++) st = trainer_step(t, &r);
    double t0 = monotonic_seconds();
    for (int i = 0; i < steps && st == STATUS_OK; i++) st = trainer_step(t, &r);
    double dt = (monotonic_seconds() - t0) / steps;
    if (st == STATUS_OK) {
        double tokens = (double)(cfg->train.global_batch * cfg->data.seq_len);
        double fl = flops_per_token(&t->student->cfg, t->T, 1) + (t->teacher ? flops_per_token(&t->teacher->cfg, t->T, 0) : 0);
        double gflops = tokens / dt * fl / 1e9;
        int cpu = cfg->device == CONFIG_DEVICE_CPU;
        double peak = cpu ? measure_cpu_peak_gflops() : 0;
        const char *slash = strrchr(cfg->name, '/');
        printf("{\"config\": \"%s\", \"device\": \"%s\", \"threads\": %d, \"B\": %lld, \"T\": %lld, \"step_s\": %.4f, "
               "\"tok_s\": %.1f, \"gflop_per_tok\": %.4f, \"gflops\": %.1f",
               slash ? slash + 1 : cfg->name, config_device_name(cfg->device), cpu ? omp_get_max_threads() : 0,
               (long long)cfg->train.global_batch, (long long)t->T, dt, tokens / dt, fl / 1e9, gflops);
        if (peak > 0) printf(", \"peak_gflops\": %.1f, \"mfu\": %.3f", peak, gflops / peak);
        printf(", \"loss\": %.6g}\n", r.loss);
    }
    trainer_destroy(t);
    return st;
}

Status cmd_bench(int argc, char **argv, int *show_help) {
    const char *config_path = NULL;
    const char *sets[BENCH_MAX_SETS];
    int n_sets = 0;
    long steps = 5;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            *show_help = 1;
            return STATUS_OK;
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
    if (st == STATUS_OK) st = run_bench(cfg, (int)steps);
    free(cfg);
    return st;
}
