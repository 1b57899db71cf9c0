/* The mlatrain command line: parses the subcommand and its options, runs it, and is the only
 * place that prints an error and chooses the exit status. */
#include <stdio.h>
#include <string.h>

#include "core/status.h"
#include "train/cmd_bench.h"
#include "train/cmd_convert.h"
#include "train/cmd_data.h"
#include "train/cmd_eval.h"
#include "train/cmd_export.h"
#include "train/cmd_teacher_cache.h"
#include "train/cmd_generate.h"
#include "train/cmd_train.h"

#define MLATRAIN_VERSION "0.1.0"

static void usage(FILE *out) {
    fprintf(out,
            "usage: mlatrain [train] --config FILE [--set key.path=value ...]\n"
            "       mlatrain <command> [options]\n"
            "\n"
            "Upcycles GQA language models into Multi-head Latent Attention and distills them.\n"
            "\n"
            "  --config    train (distill, or next-token train without a teacher) as FILE says\n"
            "\n"
            "commands:\n"
            "  train       the same as --config alone: `mlatrain train --config FILE`\n"
            "  convert     upcycle a GQA model into an MLA student and export it (DeepSeek-V2 layout)\n"
            "  eval        evaluate a student (the config's, a checkpoint's, or every checkpoint\n"
            "              of runs with --sweep) against the teacher on data.val and eval.tasks\n"
            "  export      write a student in DeepSeek-V2's HF layout (dtype, shards)\n"
            "  bench       time the training step (one JSON line: tok/s, FLOPs, MFU)\n"
            "  data        prepare token files (text, llm.c .bin, JSON lines) and summarise them\n"
            "  teacher-cache  write the teacher's top-k log-probs over data.train for teacher.cache\n"
            "  generate    generate from a prompt with a teacher or an MLA student (KV cache)\n"
            "\n"            "  --version   print the version\n"
            "  --help      this message; `mlatrain <command> --help` for a command's options\n");
}

int main(int argc, char **argv) {
    /* Lines reach a log file or a pipe (tee, Slurm's output) as they are printed, not in blocks. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0) {
        printf("mlatrain %s\n", MLATRAIN_VERSION);
        return 0;
    }
    Status st;
    int show_help = 0, preempted = 0;
    if (strcmp(cmd, "--config") == 0 || strcmp(cmd, "--set") == 0 || strcmp(cmd, "--restart") == 0) {
        st = cmd_train(argc - 1, argv + 1, &show_help, &preempted);
        if (show_help) cmd_train_usage();
    } else if (strcmp(cmd, "train") == 0) {
        st = cmd_train(argc - 2, argv + 2, &show_help, &preempted);
        if (show_help) cmd_train_usage();
    } else if (strcmp(cmd, "eval") == 0) {
        st = cmd_eval(argc - 2, argv + 2, &show_help);
        if (show_help) cmd_eval_usage();
    } else if (strcmp(cmd, "bench") == 0) {
        st = cmd_bench(argc - 2, argv + 2, &show_help);
        if (show_help) cmd_bench_usage();
    } else if (strcmp(cmd, "data") == 0) {
        st = cmd_data(argc - 2, argv + 2);
    } else if (strcmp(cmd, "convert") == 0) {
        st = cmd_convert(argc - 2, argv + 2, &show_help);
        if (show_help) cmd_convert_usage();
    } else if (strcmp(cmd, "generate") == 0) {
        st = cmd_generate(argc - 2, argv + 2, &show_help);
        if (show_help) cmd_generate_usage();
    } else if (strcmp(cmd, "teacher-cache") == 0) {
        st = cmd_teacher_cache(argc - 2, argv + 2, &show_help);
        if (show_help) cmd_teacher_cache_usage();
    } else if (strcmp(cmd, "export") == 0) {
        st = cmd_export(argc - 2, argv + 2, &show_help);
        if (show_help) cmd_export_usage();
    } else {
        fprintf(stderr, "mlatrain: unknown command \"%s\"\n", cmd);
        usage(stderr);
        return 2;
    }
    if (st != STATUS_OK) {
        fprintf(stderr, "mlatrain: error: %s\n", error_message());
        return 1;
    }
    return preempted ? EXIT_PREEMPTED : 0;
}
