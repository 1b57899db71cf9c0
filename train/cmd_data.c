/* `mlatrain data`: argument parsing for the preparation subcommands, the summary table and the
 * loader benchmark. The work itself is in data/. */
#include "train/cmd_data.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "data/hdf5_errors.h"
#include "data/loader.h"
#include "data/mc_convert.h"
#include "data/prepare.h"
#include "data/token_file.h"
#include "data/tokenizer/eos_id.h"
#include "data/tokenizer/tokenizer.h"

static const char *const USAGE_DATA =
    "usage: mlatrain data <subcommand> [options]\n"
    "\n"
    "Prepares token files (HDF5: /tokens uint16|uint32 with vocab_size and eos_id, see docs/data.md).\n"
    "\n"
    "subcommands:\n"
    "  text      text files -> tokens with the byte tokenizer (vocab 257, eos 256) or a tokenizer.json\n"
    "  llmc-bin  llm.c .bin shards (uint16 GPT-2 or uint32 Llama 3) -> tokens\n"
    "  jsonl     JSON lines of token-id arrays -> tokens\n"
    "  mc        HellaSwag-style multiple-choice JSON lines -> an eval.tasks file (byte tokenizer)\n"
    "  summary   files, tokens, vocabulary and documents of token files (reads every token)\n"
    "  bench     the loader's throughput on token files, in tokens/s\n"
    "\n"
    "`mlatrain data <subcommand> --help` for a subcommand's options.\n";

static const char *const USAGE_SPLIT =
    "  --out FILE           the training output (written atomically)\n"
    "  --val-out FILE       the validation output, with --val-fraction\n"
    "  --val-fraction F     each document goes to --val-out with probability F (0 <= F < 1; default 0)\n"
    "  --seed N             which documents the split draws (default 0)\n";

static const char *const USAGE_TEXT =
    "usage: mlatrain data text IN... --out OUT.h5 [--docs file|paragraph|line]\n"
    "                          [--tokenizer DIR|tokenizer.json [--eos-id E]]\n"
    "                          [--val-out VAL.h5 --val-fraction F] [--seed N]\n"
    "\n"
    "Byte-level tokens (byte b -> id b), eos 256 after each document, vocab_size 257. With\n"
    "--tokenizer, a model's own tokenizer (HF tokenizer.json, byte-level or byte-fallback BPE) encodes\n"
    "each document as HF tokenizers' encode(text) does, BOS included where the tokenizer adds one;\n"
    "vocab_size is the tokenizer's and eos (after each document) the model folder's eos_token_id,\n"
    "else <|endoftext|>, <|end_of_text|> or </s>, unless --eos-id says. Input must be UTF-8.\n"
    "  --docs file          each input file is one document, byte for byte (default)\n"
    "  --docs paragraph     documents are blocks of lines separated by blank lines\n"
    "  --docs line          each non-blank line is a document\n"
    "  --tokenizer PATH     a tokenizer.json, or a model folder holding one\n"
    "  --eos-id E           the id written after each document (with --tokenizer)\n";

static const char *const USAGE_LLMC =
    "usage: mlatrain data llmc-bin IN.bin... --out OUT.h5 [--vocab-size V] [--eos-id E]\n"
    "                              [--val-out VAL.h5 --val-fraction F] [--seed N]\n"
    "\n"
    "llm.c shards: 256 int32 header (magic, version, token count), then the tokens. Accepted:\n"
    "magic 20240520 version 1 (uint16, GPT-2: default vocab 50257, eos 50256) and magic 20240801\n"
    "version 7 (uint32, Llama 3: default vocab 128256, eos 128000). Shards are concatenated in the\n"
    "order given and their tokens copied unchanged.\n";

static const char *const USAGE_JSONL =
    "usage: mlatrain data jsonl IN.jsonl... --out OUT.h5 --vocab-size V --eos-id E\n"
    "                           [--val-out VAL.h5 --val-fraction F] [--seed N]\n"
    "\n"
    "One document per line: [1, 2, 3] or {\"tokens\": [...]} or {\"input_ids\": [...]}. eos is\n"
    "appended to each document that does not already end with it; blank lines are skipped.\n";

static const char *const USAGE_MC =
    "usage: mlatrain data mc IN.jsonl... --out TASK.jsonl\n"
    "\n"
    "Multiple-choice items as HellaSwag writes them, one JSON object per line with \"ctx\" (or\n"
    "\"ctx_a\" and \"ctx_b\"), \"endings\" (strings) and \"label\", into a task file for eval.tasks\n"
    "with the byte tokenizer: {\"context\": [256, bytes of ctx], \"endings\": [[bytes of \" \" +\n"
    "ending], ...], \"label\": k}. 256 (eos) starts the context as it starts a document in\n"
    "training data. See docs/eval.md.\n";

static const char *const USAGE_SUMMARY =
    "usage: mlatrain data summary FILE.h5...\n"
    "\n"
    "Reads every token of each file (checking ids against vocab_size and every chunk's checksum)\n"
    "and prints tokens, dtype, vocab_size, eos_id, documents and the largest id.\n";

static const char *const USAGE_BENCH =
    "usage: mlatrain data bench FILE_OR_GLOB... [--seq-len T] [--rows B] [--seconds S] [--seed N]\n"
    "\n"
    "Reads batches of B windows of T + 1 tokens through the loader, in the shuffled training order\n"
    "and in the validation order, for about S seconds each (defaults T 1024, B 8, S 2), and prints\n"
    "tokens/s: compare with the tokens/s a training step consumes.\n";

typedef struct {
    const char **inputs;
    int n_inputs;
    const char *out, *val_out, *docs, *tokenizer;
    double val_fraction;
    long long seed, vocab_size, eos_id, seq_len, rows;
    double seconds;
} DataArgs;

static Status parse_int(const char *opt, const char *text, long long lo, long long hi, long long *out) {
    char *end = NULL;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || end == text || *end != '\0' || v < lo || v > hi)
        return errorf("%s: expected an integer in [%lld, %lld], got \"%s\"", opt, lo, hi, text);
    *out = v;
    return STATUS_OK;
}

static Status parse_real(const char *opt, const char *text, double *out) {
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end != '\0') return errorf("%s: expected a number, got \"%s\"", opt, text);
    *out = v;
    return STATUS_OK;
}

/* Positional arguments are inputs; `allowed` lists the options (with values) this subcommand takes. */
static Status parse_args(const char *sub, int argc, char **argv, const char *allowed, DataArgs *a, int *help) {
    a->inputs = calloc((size_t)argc + 1, sizeof *a->inputs);
    if (!a->inputs) return errorf("out of memory");
    for (int i = 0; i < argc; i++) {
        const char *opt = argv[i];
        if (strcmp(opt, "--help") == 0 || strcmp(opt, "-h") == 0) {
            *help = 1;
            return STATUS_OK;
        }
        if (strncmp(opt, "--", 2) != 0) {
            a->inputs[a->n_inputs++] = opt;
            continue;
        }
        char key[48];
        snprintf(key, sizeof key, "%s ", opt);
        if (!strstr(allowed, key)) return errorf("data %s: unknown option %s (see mlatrain data %s --help)", sub, opt, sub);
        if (i + 1 >= argc) return errorf("data %s: %s needs a value", sub, opt);
        const char *v = argv[++i];
        if (strcmp(opt, "--out") == 0) a->out = v;
        else if (strcmp(opt, "--val-out") == 0) a->val_out = v;
        else if (strcmp(opt, "--docs") == 0) a->docs = v;
        else if (strcmp(opt, "--tokenizer") == 0) a->tokenizer = v;
        else if (strcmp(opt, "--val-fraction") == 0) TRY(parse_real(opt, v, &a->val_fraction));
        else if (strcmp(opt, "--seconds") == 0) TRY(parse_real(opt, v, &a->seconds));
        else if (strcmp(opt, "--seed") == 0) TRY(parse_int(opt, v, 0, INT64_MAX, &a->seed));
        else if (strcmp(opt, "--vocab-size") == 0) TRY(parse_int(opt, v, 1, TOKEN_FILE_MAX_VOCAB, &a->vocab_size));
        else if (strcmp(opt, "--eos-id") == 0) TRY(parse_int(opt, v, 0, TOKEN_FILE_MAX_VOCAB - 1, &a->eos_id));
        else if (strcmp(opt, "--seq-len") == 0) TRY(parse_int(opt, v, 1, 1 << 24, &a->seq_len));
        else if (strcmp(opt, "--rows") == 0) TRY(parse_int(opt, v, 1, 1 << 16, &a->rows));
    }
    return STATUS_OK;
}

static Status check_split_args(const char *sub, const DataArgs *a, SplitOptions *split) {
    if (a->n_inputs == 0) return errorf("data %s: no input files (see mlatrain data %s --help)", sub, sub);
    if (!a->out) return errorf("data %s: --out is required", sub);
    if (a->val_fraction > 0 && !a->val_out) return errorf("data %s: --val-fraction needs --val-out", sub);
    if (a->val_out && !(a->val_fraction > 0)) return errorf("data %s: --val-out needs --val-fraction > 0", sub);
    *split = (SplitOptions){.out_path = a->out, .val_path = a->val_out, .val_fraction = a->val_fraction,
                            .seed = (uint64_t)a->seed};
    return STATUS_OK;
}

static void print_result(const DataArgs *a, const PrepareResult *r) {
    printf("read %llu input file%s; vocab_size %u, eos_id %u\n", (unsigned long long)r->inputs,
           r->inputs == 1 ? "" : "s", r->vocab_size, r->eos_id);
    printf("wrote %s: %llu tokens, %llu documents\n", a->out, (unsigned long long)r->train.tokens,
           (unsigned long long)r->train.documents);
    if (a->val_out)
        printf("wrote %s: %llu tokens, %llu documents\n", a->val_out, (unsigned long long)r->val.tokens,
               (unsigned long long)r->val.documents);
}

/* `data text --tokenizer`: the tokenizer and its eos id, then the documents through it. */
static Status run_text_tokenized(const DataArgs *a, const SplitOptions *split) {
    TextDocs docs = TEXT_DOCS_FILE;
    if (!a->docs || strcmp(a->docs, "file") == 0) docs = TEXT_DOCS_FILE;
    else if (strcmp(a->docs, "paragraph") == 0) docs = TEXT_DOCS_PARAGRAPH;
    else if (strcmp(a->docs, "line") == 0) docs = TEXT_DOCS_LINE;
    else return errorf("data text: --docs must be file, paragraph or line, got \"%s\"", a->docs);
    Tokenizer *tok = NULL;
    TRY(tokenizer_load(a->tokenizer, &tok));
    int32_t eos = (int32_t)a->eos_id;
    char source[64] = "--eos-id";
    Status st = STATUS_OK;
    if (a->eos_id < 0) st = tokenizer_eos_id(a->tokenizer, tok, &eos, source, sizeof source);
    else if (a->eos_id >= tokenizer_vocab_size(tok))
        st = errorf("data text: --eos-id %lld is not below the tokenizer's vocabulary size %lld", a->eos_id,
                    (long long)tokenizer_vocab_size(tok));
    PrepareResult r;
    if (st == STATUS_OK) st = prepare_text_tokenized(a->inputs, a->n_inputs, docs, tok, (uint32_t)eos, split, &r);
    tokenizer_free(tok);
    if (st != STATUS_OK) return STATUS_ERROR;
    printf("tokenizer %s: eos_id %d from %s\n", a->tokenizer, eos, source);
    print_result(a, &r);
    return STATUS_OK;
}

static Status run_convert(const char *sub, DataArgs *a) {
    SplitOptions split;
    PrepareResult r;
    TRY(check_split_args(sub, a, &split));
    if (a->tokenizer) return run_text_tokenized(a, &split);
    if (strcmp(sub, "text") == 0 && a->eos_id >= 0) return errorf("data text: --eos-id needs --tokenizer");
    if (strcmp(sub, "text") == 0) {
        TextDocs docs = TEXT_DOCS_FILE;
        if (!a->docs || strcmp(a->docs, "file") == 0) docs = TEXT_DOCS_FILE;
        else if (strcmp(a->docs, "paragraph") == 0) docs = TEXT_DOCS_PARAGRAPH;
        else if (strcmp(a->docs, "line") == 0) docs = TEXT_DOCS_LINE;
        else return errorf("data text: --docs must be file, paragraph or line, got \"%s\"", a->docs);
        if (prepare_text(a->inputs, a->n_inputs, docs, &split, &r) != STATUS_OK) {
            /* With whole files as documents, a few files give the split too few documents to draw from. */
            if (docs == TEXT_DOCS_FILE && split.val_fraction > 0 && r.val.documents == 0 && r.train.documents > 0)
                return errorf("data text: the split drew no validation document out of %llu: --docs file (the "
                              "default) makes each input file one document; --docs paragraph or --docs line cuts "
                              "them into more (or raise --val-fraction)", (unsigned long long)r.train.documents);
            return STATUS_ERROR;
        }
    } else if (strcmp(sub, "llmc-bin") == 0) {
        TRY(prepare_llmc_bin(a->inputs, a->n_inputs, a->vocab_size, a->eos_id, &split, &r));
    } else {
        if (a->vocab_size < 0 || a->eos_id < 0) return errorf("data jsonl: --vocab-size and --eos-id are required");
        TRY(prepare_jsonl(a->inputs, a->n_inputs, (uint32_t)a->vocab_size, (uint32_t)a->eos_id, &split, &r));
    }
    print_result(a, &r);
    return STATUS_OK;
}

static Status run_mc(const DataArgs *a) {
    if (a->n_inputs == 0) return errorf("data mc: no input files (see mlatrain data mc --help)");
    if (!a->out) return errorf("data mc: --out is required");
    McConvertResult r;
    TRY(mc_convert_text(a->inputs, a->n_inputs, a->out, &r));
    printf("read %llu input file%s; wrote %s: %llu items, %llu endings, the longest context + ending %llu tokens\n",
           (unsigned long long)r.inputs, r.inputs == 1 ? "" : "s", a->out, (unsigned long long)r.items,
           (unsigned long long)r.endings, (unsigned long long)r.longest);
    return STATUS_OK;
}

static Status run_summary(const DataArgs *a) {
    if (a->n_inputs == 0) return errorf("data summary: no files (see mlatrain data summary --help)");
    TokenFileStats *stats = calloc((size_t)a->n_inputs, sizeof *stats);
    if (!stats) return errorf("out of memory");
    for (int i = 0; i < a->n_inputs; i++) {
        if (token_file_scan(a->inputs[i], &stats[i]) != STATUS_OK) {
            free(stats);
            return STATUS_ERROR;
        }
    }
    unsigned long long tokens = 0, documents = 0;
    printf("%-40s %14s %6s %10s %10s %12s %10s %8s %5s\n", "file", "tokens", "dtype", "vocab_size", "eos_id",
           "documents", "max_id", "chunk", "crc");
    for (int i = 0; i < a->n_inputs; i++) {
        const TokenFileStats *s = &stats[i];
        printf("%-40s %14llu %6s %10u %10u %12llu %10u %8llu %5s\n", a->inputs[i], (unsigned long long)s->info.n_tokens,
               s->info.token_bytes == 2 ? "uint16" : "uint32", s->info.vocab_size, s->info.eos_id,
               (unsigned long long)s->documents, s->max_id, (unsigned long long)s->info.chunk,
               s->info.fletcher32 ? "yes" : "no");
        tokens += s->info.n_tokens;
        documents += s->documents;
    }
    printf("total: %d file%s, %llu tokens, %llu documents\n", a->n_inputs, a->n_inputs == 1 ? "" : "s", tokens,
           documents);
    free(stats);
    return STATUS_OK;
}

/* Batches of a.rows windows for about a.seconds; the first batch is not timed (file opening). */
static Status bench_order(const DataArgs *a, int shuffle) {
    LoaderOptions o = {.patterns = a->inputs, .n_patterns = a->n_inputs, .seq_len = (int)a->seq_len,
                       .seed = (uint64_t)a->seed, .rank = 0, .world = 1, .shuffle = shuffle};
    Loader *L = NULL;
    TRY(loader_open(&L, &o));
    size_t per_batch = (size_t)a->rows * (size_t)(a->seq_len + 1);
    int32_t *buf = malloc(per_batch * sizeof *buf);
    Status st = buf ? loader_next(L, (int)a->rows, buf) : errorf("out of memory");
    long long batches = 0;
    double t0 = monotonic_seconds(), t = t0;
    while (st == STATUS_OK && t - t0 < a->seconds) {
        st = loader_next(L, (int)a->rows, buf);
        batches++;
        t = monotonic_seconds();
    }
    if (st == STATUS_OK) {
        double tokens = (double)batches * (double)a->rows * (double)a->seq_len, dt = t - t0;
        printf("%-8s  %lld x %lld tokens: %8lld batches  %9.1f us/batch  %12.0f tokens/s  (%llu windows, %d file%s)\n",
               shuffle ? "shuffled" : "in order", a->rows, a->seq_len, batches, 1e6 * dt / (double)batches,
               tokens / dt, (unsigned long long)loader_windows_per_epoch(L), loader_file_count(L),
               loader_file_count(L) == 1 ? "" : "s");
    }
    free(buf);
    loader_close(L);
    return st;
}

static Status run_bench(DataArgs *a) {
    if (a->n_inputs == 0) return errorf("data bench: no files (see mlatrain data bench --help)");
    if (a->seq_len <= 0) a->seq_len = 1024;
    if (a->rows <= 0) a->rows = 8;
    if (!(a->seconds > 0)) a->seconds = 2;
    TRY(bench_order(a, 1));
    return bench_order(a, 0);
}

Status cmd_data(int argc, char **argv) {
    /* This process uses HDF5 only through data/, which closes what it opens. */
    hdf5_skip_exit_cleanup();
    if (argc < 1)
        return errorf("data: missing subcommand (text, llmc-bin, jsonl, mc, summary, bench; see mlatrain data --help)");
    const char *sub = argv[0];
    if (strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0 || strcmp(sub, "help") == 0) {
        fputs(USAGE_DATA, stdout);
        return STATUS_OK;
    }
    const char *split_opts = "--out --val-out --val-fraction --seed ";
    const char *allowed = NULL, *usage = NULL;
    char buf[256];
    if (strcmp(sub, "text") == 0) {
        snprintf(buf, sizeof buf, "%s--docs --tokenizer --eos-id ", split_opts);
        allowed = buf;
        usage = USAGE_TEXT;
    } else if (strcmp(sub, "llmc-bin") == 0) {
        snprintf(buf, sizeof buf, "%s--vocab-size --eos-id ", split_opts);
        allowed = buf;
        usage = USAGE_LLMC;
    } else if (strcmp(sub, "jsonl") == 0) {
        snprintf(buf, sizeof buf, "%s--vocab-size --eos-id ", split_opts);
        allowed = buf;
        usage = USAGE_JSONL;
    } else if (strcmp(sub, "mc") == 0) {
        allowed = "--out ";
        usage = USAGE_MC;
    } else if (strcmp(sub, "summary") == 0) {
        allowed = "";
        usage = USAGE_SUMMARY;
    } else if (strcmp(sub, "bench") == 0) {
        allowed = "--seq-len --rows --seconds --seed ";
        usage = USAGE_BENCH;
    } else {
        return errorf("data: unknown subcommand \"%s\" (text, llmc-bin, jsonl, mc, summary, bench)", sub);
    }
    DataArgs a = {.vocab_size = -1, .eos_id = -1};
    int help = 0;
    Status st = parse_args(sub, argc - 1, argv + 1, allowed, &a, &help);
    if (st == STATUS_OK && help) {
        fputs(usage, stdout);
        if (usage != USAGE_SUMMARY && usage != USAGE_BENCH && usage != USAGE_MC) fputs(USAGE_SPLIT, stdout);
    } else if (st == STATUS_OK) {
        if (strcmp(sub, "summary") == 0) st = run_summary(&a);
        else if (strcmp(sub, "mc") == 0) st = run_mc(&a);
        else if (strcmp(sub, "bench") == 0) st = run_bench(&a);
        else st = run_convert(sub, &a);
    }
    free(a.inputs);
    return st;
}
