/* What summing the gradients over ranks costs a GPU training step, and what overlapping the sums
 * with backward saves: the config's step on random batches (as `mlatrain bench`) timed three ways,
 *   none     no communicator: no sums (with N ranks, each rank alone with its share of the batch);
 *   after    the NCCL communicator, every layer's sum issued after backward (dist.overlap false);
 *   overlap  the NCCL communicator, each layer's sum issued as backward finishes it.
 * Run directly it is one rank, NCCL over one GPU, where a sum is an in-place copy: that measures
 * the machinery (events, groups, the waits) on its own. Under mpirun or srun, one rank per GPU, it
 * measures the real sums. Rank 0 prints one JSON line per way.
 *
 *   bench_grad_sync --config configs/bench_1b.json [--steps 10] [--set key.path=value ...]
 *   mpirun -np 8 bench_grad_sync --config configs/bench_1b.json --set train.global_batch=32 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "dist/comm.h"
#include "dist/comm_internal.h"
#include "train/trainer.h"

enum { MAX_SETS = 64, WARMUP = 3, DEFAULT_STEPS = 10 };

typedef struct {
    double step_s, loss;
} Timing;

/* Sets a trainer up on `c`, runs the warm-up steps, then times `steps` steps (each ends with the
 * backend synchronised, so the sums are inside the time). */
static Status time_steps(const Config *cfg, Comm *c, int steps, Timing *out) {
    Trainer *t = NULL;
    TRY(trainer_create(&t, cfg, (TrainerOptions){.random_batches = 1, .quiet = 1, .comm = c}));
    StepRecord r = {0};
    Status st = STATUS_OK;
    for (int i = 0; i < WARMUP && st == STATUS_OK; i++) st = trainer_step(t, &r);
    if (st == STATUS_OK) st = c->barrier(c); /* every rank starts the clock together */
    double t0 = monotonic_seconds();
    for (int i = 0; i < steps && st == STATUS_OK; i++) st = trainer_step(t, &r);
    out->step_s = (monotonic_seconds() - t0) / steps;
    out->loss = r.loss;
    trainer_destroy(t);
    return st;
}

static Status run(const char *config_path, const char *const *sets, int n_sets, int steps) {
    Config *cfg = calloc(1, sizeof *cfg), *run_cfg = calloc(1, sizeof *run_cfg);
    if (!cfg || !run_cfg) {
        free(cfg);
        free(run_cfg);
        return errorf("out of memory");
    }
    Comm *nccl = NULL, *single = NULL;
    Status st = config_load(cfg, config_path, sets, n_sets);
    if (st == STATUS_OK && cfg->device != CONFIG_DEVICE_CUDA)
        st = errorf("%s: device is \"%s\": the sums being measured run on a GPU (--set device=cuda)", config_path,
                    config_device_name(cfg->device));
    DistEnv env;
    if (st == STATUS_OK) st = dist_env_detect(&env);
    if (st == STATUS_OK)
        st = env.world == 1 ? comm_nccl_create(&nccl, &env, cfg->dist.timeout_s, NULL)
                            : comm_create(&nccl, "cuda", cfg->dist.timeout_s);
    if (st == STATUS_OK) st = comm_single_create(&single);
    int world = nccl ? nccl->env.world : 1, rank = nccl ? nccl->env.rank : 0;
    static const char *const modes[] = {"none", "after", "overlap"};
    Timing none = {0};
    for (int mode = 0; mode < 3 && st == STATUS_OK; mode++) {
        *run_cfg = *cfg;
        run_cfg->dist.overlap = mode == 2;
        /* Alone, a rank does the share of the batch it has in the job. */
        if (mode == 0) run_cfg->train.global_batch = cfg->train.global_batch / world;
        Timing tm;
        st = time_steps(run_cfg, mode == 0 ? single : nccl, steps, &tm);
        if (st != STATUS_OK) {
            st = error_context("%s: ", modes[mode]);
            break;
        }
        if (mode == 0) none = tm;
        if (rank == 0)
            printf("{\"mode\": \"%s\", \"ranks\": %d, \"B\": %lld, \"T\": %lld, \"step_s\": %.5f, \"tok_s\": %.0f, "
                   "\"vs_none\": %.4f, \"loss\": %.6g}\n",
                   modes[mode], world, (long long)cfg->train.global_batch, (long long)cfg->data.seq_len, tm.step_s,
                   (double)(cfg->train.global_batch * cfg->data.seq_len) / tm.step_s, tm.step_s / none.step_s,
                   tm.loss);
        fflush(stdout);
    }
    if (st != STATUS_OK && nccl && world > 1) {
        /* The other ranks may be inside a collective: take the job down. */
        fprintf(stderr, "bench_grad_sync: rank %d: error: %s\n", rank, error_message());
        nccl->abort(nccl, 1);
    }
    comm_destroy(single);
    comm_destroy(nccl);
    free(cfg);
    free(run_cfg);
    return st;
}

int main(int argc, char **argv) {
    const char *config_path = NULL;
    const char *sets[MAX_SETS];
    int n_sets = 0;
    long steps = DEFAULT_STEPS;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0 || i + 1 >= argc) {
            fprintf(stderr, "usage: bench_grad_sync --config FILE [--steps N] [--set key.path=value ...]\n");
            return strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0 ? 0 : 2;
        }
        const char *v = argv[++i];
        if (strcmp(a, "--config") == 0) {
            config_path = v;
        } else if (strcmp(a, "--steps") == 0) {
            char *end = NULL;
            steps = strtol(v, &end, 10);
            if (!end || *end || steps < 1 || steps > 100000) {
                fprintf(stderr, "bench_grad_sync: --steps '%s' is not a count of steps (1..100000)\n", v);
                return 2;
            }
        } else if (strcmp(a, "--set") == 0) {
            if (n_sets == MAX_SETS) {
                fprintf(stderr, "bench_grad_sync: more than %d --set options\n", MAX_SETS);
                return 2;
            }
            sets[n_sets++] = v;
        } else {
            fprintf(stderr, "bench_grad_sync: unknown option %s\n", a);
            return 2;
        }
    }
    if (!config_path) {
        fprintf(stderr, "usage: bench_grad_sync --config FILE [--steps N] [--set key.path=value ...]\n");
        return 2;
    }
    if (run(config_path, sets, n_sets, (int)steps) != STATUS_OK) {
        fprintf(stderr, "bench_grad_sync: error: %s\n", error_message());
        return 1;
    }
    return 0;
}
