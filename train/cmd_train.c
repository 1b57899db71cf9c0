/* The training command: parse options, load the config, build the trainer, run it. */
#include "train/cmd_train.h"

#include <signal.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "train/trainer.h"

enum { TRAIN_MAX_SETS = 64 };

static void on_stop_signal(int sig) {
    (void)sig;
    trainer_request_stop();
}

static volatile sig_atomic_t interrupted;

/* Ctrl-C: the first finishes the step and checkpoints, as SIGTERM does; the second ends the
 * process at once, as SIGINT's default would (status 130 from the shell). */
static void on_interrupt(int sig) {
    if (interrupted) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    interrupted = 1;
    static const char msg[] = "\nmlatrain: interrupt: finishing this step and writing a checkpoint "
                              "(Ctrl-C again aborts at once, without one)\n";
    ssize_t unused = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)unused;
    trainer_request_stop();
}

/* SIGTERM (Slurm's preemption, a scheduler's kill), SIGUSR1 (sbatch --signal) and SIGINT (Ctrl-C)
 * finish the current step, write a checkpoint and exit with EXIT_PREEMPTED. A SIGINT that the
 * launching shell ignores (a background job of a script) stays ignored. */
static Status install_stop_handlers(void) {
    struct sigaction sa, old_int;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGUSR1, &sa, NULL) != 0)
        return errorf("cannot install the SIGTERM/SIGUSR1 handlers");
    if (sigaction(SIGINT, NULL, &old_int) != 0) return errorf("cannot read the SIGINT disposition");
    if (old_int.sa_handler == SIG_IGN) return STATUS_OK;
    sa.sa_handler = on_interrupt;
    if (sigaction(SIGINT, &sa, NULL) != 0) return errorf("cannot install the SIGINT handler");
    return STATUS_OK;
}

void cmd_train_usage(void) {
    printf("usage: mlatrain [train] --config FILE [--set key.path=value ...] [--restart]\n"
           "\n"
           "Trains as FILE says (docs/config.md): with a teacher, distillation of the student\n"
           "(0.5 T^2 KL + 0.5 CE by default); without one, next-token training. The student starts from\n"
           "student.init_from, converted to MLA when student.mla is given. Writes run.dir/metrics.jsonl,\n"
           "run.dir/effective_config.json and the final model in run.dir/final.\n"
           "--set overrides a key: --set optim.lr=3e-4 --set data.train='[\"a.h5\",\"b.h5\"]'\n"
           "\n"
           "A run whose run.dir holds a complete checkpoint resumes from it, bitwise as if never stopped;\n"
           "--restart starts over instead (removing the run's metrics and checkpoints). A run already at\n"
           "train.max_steps trains nothing and says so; raise train.max_steps to go on.\n"
           "SIGTERM, SIGUSR1 or Ctrl-C (SIGINT) finish the current step, write a checkpoint and exit with\n"
           "status %d; a second Ctrl-C aborts at once, without a checkpoint.\n"
           "`mlatrain train --config FILE ...` is the same command spelled out.\n",
           EXIT_PREEMPTED);
}

Status cmd_train(int argc, char **argv, int *show_help, int *preempted) {
    *preempted = 0;
    int restart = 0;
    const char *config_path = NULL;
    const char *sets[TRAIN_MAX_SETS];
    int n_sets = 0;
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            *show_help = 1;
            return STATUS_OK;
        }
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--restart") == 0) {
            restart = 1;
            continue;
        }
        if (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0)
            return errorf("%s: unknown option or missing value (see mlatrain --help)", a);
        const char *v = argv[++i];
        if (strcmp(a, "--config") == 0) config_path = v;
        else if (strcmp(a, "--set") == 0) {
            if (n_sets == TRAIN_MAX_SETS) return errorf("more than %d --set options", TRAIN_MAX_SETS);
            sets[n_sets++] = v;
        } else {
            return errorf("unknown option %s (see mlatrain --help)", a);
        }
    }
    if (!config_path) return errorf("--config FILE is required (see mlatrain --help)");
    Config *cfg = calloc(1, sizeof *cfg);
    if (!cfg) return errorf("out of memory");
    Status st = config_load(cfg, config_path, sets, n_sets);
    Trainer *t = NULL;
    Comm *comm = NULL;
    if (st == STATUS_OK) st = comm_create(&comm, config_device_name(cfg->device), cfg->dist.timeout_s);
    TrainerOptions opts = {.random_batches = 0, .quiet = 0, .restart = restart, .stop_at_step = 0, .comm = comm};
    if (st == STATUS_OK) st = install_stop_handlers();
    if (st == STATUS_OK) st = trainer_create(&t, cfg, opts);
    if (st == STATUS_OK) st = trainer_run(t);
    if (st == STATUS_OK) *preempted = t->preempted;
    trainer_destroy(t);
    if (st != STATUS_OK && comm && comm->env.world > 1) {
        /* One rank failing must end the job: the others would wait in their next collective. */
        fprintf(stderr, "mlatrain: rank %d: error: %s\n", comm->env.rank, error_message());
        fflush(stderr);
        comm->abort(comm, 1);
    }
    comm_destroy(comm);
    free(cfg);
    return st;
}
