/* The mlatrain command line: parses the subcommand and its options, runs it, and is the only
 * place that prints an error and chooses the exit status. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "train/cmd_convert.h"
#include "train/cmd_export.h"
#include "train/demo.h"

#define MLATRAIN_VERSION "0.1.0"

static void usage(FILE *out) {
    fprintf(out,
            "usage: mlatrain <command> [options]\n"
            "\n"
            "Upcycles GQA language models into Multi-head Latent Attention and distills them.\n"
            "\n"
            "commands:\n"
            "  convert     upcycle a GQA model into an MLA student and export it (DeepSeek-V2 layout)\n"
            "  export      write a student in DeepSeek-V2's HF layout (dtype, shards)\n"
            "  demo        a small end-to-end distillation on the CPU (nothing to download)\n"
            "  --version   print the version\n"
            "  --help      this message; `mlatrain <command> --help` for a command's options\n");
}

static void demo_usage(FILE *out) {
    fprintf(out,
            "usage: mlatrain demo [--device cpu|cuda] [--threads N] [--teacher-steps N]\n"
            "                     [--student-steps N] [--seed N]\n"
            "\n"
            "Trains a tiny GQA teacher on a synthetic Markov language, then distills a tiny MLA\n"
            "student from it (0.5 T^2 KL + 0.5 CE), printing the losses and the KV-cache saving.\n");
}

/* A non-negative integer option value, or an error naming the option. */
static Status parse_count(const char *opt, const char *text, long long max, long long *out) {
    char *end = NULL;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || end == text || *end != '\0' || v < 0 || v > max)
        return errorf("%s: expected an integer in [0, %lld], got \"%s\"", opt, max, text);
    *out = v;
    return STATUS_OK;
}

static Status cmd_demo(int argc, char **argv, int *show_help) {
    DemoOptions o = {.device = "cpu", .threads = 0, .teacher_steps = 300, .student_steps = 300, .seed = 1234};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            *show_help = 1;
            return STATUS_OK;
        }
        if (i + 1 >= argc) return errorf("demo: unknown option or missing value: %s", a);
        const char *val = argv[++i];
        long long v = 0;
        if (strcmp(a, "--device") == 0) {
            o.device = val;
        } else if (strcmp(a, "--threads") == 0) {
            TRY(parse_count(a, val, 1024, &v));
            o.threads = (int)v;
        } else if (strcmp(a, "--teacher-steps") == 0) {
            TRY(parse_count(a, val, 1000000, &v));
            o.teacher_steps = (int)v;
        } else if (strcmp(a, "--student-steps") == 0) {
            TRY(parse_count(a, val, 1000000, &v));
            o.student_steps = (int)v;
        } else if (strcmp(a, "--seed") == 0) {
            TRY(parse_count(a, val, (long long)1 << 62, &v));
            o.seed = (uint64_t)v;
        } else {
            return errorf("demo: unknown option %s (see mlatrain demo --help)", a);
        }
    }
    return demo_run(&o);
}

int main(int argc, char **argv) {
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
    int show_help = 0;
    if (strcmp(cmd, "demo") == 0) {
        st = cmd_demo(argc - 2, argv + 2, &show_help);
        if (show_help) demo_usage(stdout);
    } else if (strcmp(cmd, "convert") == 0) {
        st = cmd_convert(argc - 2, argv + 2, &show_help);
        if (show_help) cmd_convert_usage();
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
    return 0;
}
