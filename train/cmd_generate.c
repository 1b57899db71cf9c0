/* The generate command: loads a model (an HF folder, an export, run.dir/final, a checkpoint or a
 * run directory) and its tokenizer, generates from a prompt with the KV cache, and prints the new
 * text (or ids), or with --json the ids, the text, the timings and the cache's measured bytes. */
#include "train/cmd_generate.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/backend.h"
#include "data/tokenizer/tokenizer.h"
#include "infer/generate.h"
#include "model/hf/hf_model.h"
#include "train/models.h"

enum { GENERATE_PATH = 4096, GENERATE_DEFAULT_NEW = 64 };

void cmd_generate_usage(void) {
    printf("usage: mlatrain generate --model DIR (--prompt TEXT | --prompt-ids 1,2,3) [--max-new-tokens N]\n"
           "                         [--temperature T --top-p P --seed S | --greedy] [--json]\n"
           "                         [--tokenizer PATH] [--device cpu|cuda] [--dtype f32|bf16] [--threads N]\n"
           "                         [--ignore-eos]\n"
           "                         [--mla-attention absorbed|expanded]\n"
           "\n"
           "Generates up to N new tokens (default %d) after the prompt: the prompt in one forward pass,\n"
           "then one token at a time from the KV cache. DIR is an HF model folder (a Llama, Qwen2 or\n"
           "Mistral teacher, an MLA student that convert or export wrote, run.dir/final), a checkpoint\n"
           "folder (run.dir/checkpoints/step_N) or a run directory (its newest valid checkpoint). GQA layers\n"
           "cache their keys and values; MLA layers only the latent and the rope key, and attend in the\n"
           "latent space with absorbed weights (--mla-attention expanded instead re-expands every cached\n"
           "latent at each step: the reference, for comparisons). Generation stops at N tokens or at an\n"
           "end-of-sequence id (generation_config.json's eos_token_id, else config.json's; a list counts\n"
           "each id) unless --ignore-eos.\n"
           "--prompt TEXT is encoded with the model's tokenizer (DIR/tokenizer.json, or --tokenizer PATH: a\n"
           "tokenizer.json or its folder) as HF's encode(text) does, special tokens included; the new\n"
           "tokens are decoded to text (special tokens skipped) whenever a tokenizer is at hand.\n"
           "--dtype: what the weights, activations and KV cache are held in (math is float32 either way);\n"
           "default f32 on cpu, bf16 on cuda.\n"
           "Greedy by default; --temperature (default 1), --top-p (default 1) or --seed (default 0)\n"
           "sample instead, reproducibly for a seed.\n"
           "Prints the new text (without a tokenizer, the new ids comma-separated) and a timing line on\n"
           "stderr; --json prints one object:\n"
           "{\"ids\", \"text\", \"prompt_tokens\", \"new_tokens\", \"stopped_at_eos\", \"prefill_seconds\",\n"
           "\"prefill_tok_s\", \"decode_tokens\", \"decode_seconds\", \"decode_tok_s\", \"kv_cache\":\n"
           "{\"bytes_allocated\", \"bytes_filled\", \"bytes_per_token\", \"tokens\", \"dtype\", \"gqa_layers\",\n"
           "\"mla_layers\", \"mla_attention\"}}: the cache's bytes as allocated on the device and as\n"
           "filled by the tokens fed, summed over its tensors.\n",
           GENERATE_DEFAULT_NEW);
}

typedef struct {
    const char *model, *prompt, *prompt_ids, *device, *tokenizer, *dtype;
    int64_t max_new;
    int json, greedy, sampling_set, ignore_eos, threads;
    SamplingOptions sampling;
    DecodeMlaMode mla_mode;
} GenerateArgs;

static Status parse_int(const char *opt, const char *v, int64_t lo, int64_t hi, int64_t *out) {
    char *end = NULL;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi)
        return errorf("generate: %s: expected an integer in [%lld, %lld], got \"%s\"", opt, (long long)lo,
                      (long long)hi, v);
    *out = x;
    return STATUS_OK;
}

static Status parse_float(const char *opt, const char *v, float *out) {
    char *end = NULL;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end) return errorf("generate: %s: expected a number, got \"%s\"", opt, v);
    *out = (float)x;
    return STATUS_OK;
}

static Status parse_args(int argc, char **argv, GenerateArgs *a, int *show_help) {
    memset(a, 0, sizeof *a);
    a->device = "cpu";
    a->max_new = GENERATE_DEFAULT_NEW;
    a->sampling = (SamplingOptions){.greedy = 0, .temperature = 1.0f, .top_p = 1.0f, .seed = 0};
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i];
        if (strcmp(o, "--help") == 0 || strcmp(o, "-h") == 0) {
            *show_help = 1;
            return STATUS_OK;
        }
        if (strcmp(o, "--json") == 0) { a->json = 1; continue; }
        if (strcmp(o, "--greedy") == 0) { a->greedy = 1; continue; }
        if (strcmp(o, "--ignore-eos") == 0) { a->ignore_eos = 1; continue; }
        if (i + 1 >= argc)
            return errorf("generate: %s: unknown option or missing value (see mlatrain generate --help)", o);
        const char *v = argv[++i];
        int64_t n = 0;
        if (strcmp(o, "--model") == 0) a->model = v;
        else if (strcmp(o, "--prompt") == 0) a->prompt = v;
        else if (strcmp(o, "--prompt-ids") == 0) a->prompt_ids = v;
        else if (strcmp(o, "--device") == 0) a->device = v;
        else if (strcmp(o, "--tokenizer") == 0) a->tokenizer = v;
        else if (strcmp(o, "--dtype") == 0) a->dtype = v;
        else if (strcmp(o, "--max-new-tokens") == 0) {
            TRY(parse_int(o, v, 1, 1 << 24, &a->max_new));
        } else if (strcmp(o, "--threads") == 0) {
            TRY(parse_int(o, v, 0, 4096, &n));
            a->threads = (int)n;
        } else if (strcmp(o, "--temperature") == 0) {
            TRY(parse_float(o, v, &a->sampling.temperature));
            a->sampling_set = 1;
        } else if (strcmp(o, "--top-p") == 0) {
            TRY(parse_float(o, v, &a->sampling.top_p));
            a->sampling_set = 1;
        } else if (strcmp(o, "--seed") == 0) {
            TRY(parse_int(o, v, 0, INT64_MAX, &n));
            a->sampling.seed = (uint64_t)n;
            a->sampling_set = 1;
        } else if (strcmp(o, "--mla-attention") == 0) {
            if (strcmp(v, "absorbed") == 0) a->mla_mode = DECODE_MLA_ABSORBED;
            else if (strcmp(v, "expanded") == 0) a->mla_mode = DECODE_MLA_EXPANDED;
            else return errorf("generate: --mla-attention: expected absorbed or expanded, got \"%s\"", v);
        } else {
            return errorf("generate: unknown option %s (see mlatrain generate --help)", o);
        }
    }
    if (!a->model) return errorf("generate: --model DIR is required (see mlatrain generate --help)");
    if (!a->prompt == !a->prompt_ids)
        return errorf("generate: give exactly one of --prompt TEXT and --prompt-ids 1,2,3");
    if (a->greedy && a->sampling_set)
        return errorf("generate: --greedy cannot be combined with --temperature, --top-p or --seed (they sample)");
    a->sampling.greedy = !a->sampling_set;
    if (strcmp(a->device, "cpu") != 0 && strcmp(a->device, "cuda") != 0)
        return errorf("generate: --device: expected cpu or cuda, got \"%s\"", a->device);
    if (!a->dtype) a->dtype = strcmp(a->device, "cuda") == 0 ? "bf16" : "f32";
    if (strcmp(a->dtype, "f32") != 0 && strcmp(a->dtype, "bf16") != 0)
        return errorf("generate: --dtype: expected f32 or bf16, got \"%s\"", a->dtype);
    return sampling_check(&a->sampling) != STATUS_OK ? error_context("generate: ") : STATUS_OK;
}

/* "1,2,3" -> ids; every entry a non-negative integer below 2^31. */
static Status parse_ids(const char *s, int32_t **ids, int64_t *n) {
    *ids = NULL;
    *n = 0;
    int64_t cap = 1;
    for (const char *p = s; *p; p++) cap += *p == ',';
    int32_t *out = malloc((size_t)cap * sizeof *out);
    if (!out) return errorf("generate: out of memory for %lld prompt ids", (long long)cap);
    const char *p = s;
    for (int64_t i = 0; i < cap; i++) {
        char *end = NULL;
        errno = 0;
        long long v = (*p >= '0' && *p <= '9') ? strtoll(p, &end, 10) : -1;
        if (v < 0 || errno || v > INT32_MAX || (*end != ',' && *end != '\0')) {
            free(out);
            return errorf("generate: --prompt-ids: entry %lld is not a token id (expected comma-separated "
                          "non-negative integers, e.g. 1,2,3)", (long long)i + 1);
        }
        out[i] = (int32_t)v;
        p = *end ? end + 1 : end;
    }
    *ids = out;
    *n = cap;
    return STATUS_OK;
}

static int is_file(const char *dir, const char *name) {
    char path[GENERATE_PATH];
    struct stat sb;
    return snprintf(path, sizeof path, "%s/%s", dir, name) < (int)sizeof path && stat(path, &sb) == 0 &&
           S_ISREG(sb.st_mode);
}

/* An HF folder when it has config.json, else a checkpoint or a run directory. */
static Status load_model(const char *dir, Backend *be, int64_t max_seq, Model **out) {
    struct stat sb;
    if (stat(dir, &sb) != 0) return errorf("generate: --model %s: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return errorf("generate: --model %s: not a folder", dir);
    if (is_file(dir, "config.json")) return hf_model_load(out, be, dir, max_seq);
    if (is_checkpoint_path(dir)) return load_student_checkpoint(dir, be, max_seq, out, NULL, 0, NULL);
    return errorf("generate: --model %s: neither a model folder (no config.json) nor a checkpoint or run directory",
                  dir);
}

/* eos_token_id of <dir>/<file> (an integer or a list) into o; 1 when the file has the key. */
static Status read_eos(const char *dir, const char *file, GenerateOptions *o, int *found) {
    *found = 0;
    char path[GENERATE_PATH];
    if (snprintf(path, sizeof path, "%s/%s", dir, file) >= (int)sizeof path) return errorf("%s: path too long", dir);
    FILE *f = fopen(path, "rb");
    if (!f) return STATUS_OK;
    char *text = NULL;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (size >= 0 && fseek(f, 0, SEEK_SET) == 0 && (text = malloc((size_t)size + 1)) &&
        fread(text, 1, (size_t)size, f) == (size_t)size)
        text[size] = '\0';
    else {
        free(text);
        text = NULL;
    }
    fclose(f);
    if (!text) return errorf("%s: cannot read", path);
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root) return errorf("%s: not valid JSON", path);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    Status st = STATUS_OK;
    if (v && !cJSON_IsNull(v)) {
        int n = cJSON_IsArray(v) ? cJSON_GetArraySize(v) : 1;
        if (n > GENERATE_MAX_EOS) st = errorf("%s: eos_token_id lists %d ids, more than %d", path, n, GENERATE_MAX_EOS);
        for (int i = 0; st == STATUS_OK && i < n; i++) {
            const cJSON *e = cJSON_IsArray(v) ? cJSON_GetArrayItem(v, i) : v;
            if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble != (double)(int32_t)e->valuedouble)
                st = errorf("%s: eos_token_id: expected a token id or a list of them", path);
            else o->eos[o->n_eos++] = (int32_t)e->valuedouble;
        }
        *found = st == STATUS_OK;
    }
    cJSON_Delete(root);
    return st;
}

/* generation_config.json's, else the model config's (config.json's, or a checkpoint's). */
static Status eos_ids(const char *dir, const Model *m, GenerateOptions *o) {
    int found = 0;
    TRY(read_eos(dir, "generation_config.json", o, &found));
    if (found) return STATUS_OK;
    const ModelConfig *c = &m->cfg;
    for (int i = 0; i < c->n_eos_token_ids && o->n_eos < GENERATE_MAX_EOS; i++)
        o->eos[o->n_eos++] = (int32_t)c->eos_token_ids[i];
    if (c->n_eos_token_ids == 0 && c->eos_token_id >= 0) o->eos[o->n_eos++] = (int32_t)c->eos_token_id;
    return STATUS_OK;
}

static void print_json(const GenerateArgs *a, const Model *m, const GenerateResult *r, const char *text) {
    cJSON *root = cJSON_CreateObject();
    cJSON *ids = cJSON_AddArrayToObject(root, "ids");
    for (int64_t i = 0; i < r->n_new; i++) cJSON_AddItemToArray(ids, cJSON_CreateNumber(r->ids[i]));
    if (text) cJSON_AddStringToObject(root, "text", text);
    else cJSON_AddNullToObject(root, "text");
    cJSON_AddStringToObject(root, "model", a->model);
    cJSON_AddStringToObject(root, "device", a->device);
    cJSON_AddNumberToObject(root, "prompt_tokens", (double)r->prompt_tokens);
    cJSON_AddNumberToObject(root, "new_tokens", (double)r->n_new);
    cJSON_AddBoolToObject(root, "stopped_at_eos", r->stopped_at_eos);
    cJSON_AddNumberToObject(root, "prefill_seconds", r->prefill_seconds);
    cJSON_AddNumberToObject(root, "prefill_tok_s", r->prompt_tokens / r->prefill_seconds);
    cJSON_AddNumberToObject(root, "decode_tokens", (double)r->decode_tokens);
    cJSON_AddNumberToObject(root, "decode_seconds", r->decode_seconds);
    if (r->decode_tokens > 0) cJSON_AddNumberToObject(root, "decode_tok_s", r->decode_tokens / r->decode_seconds);
    else cJSON_AddNullToObject(root, "decode_tok_s");
    cJSON *kv = cJSON_AddObjectToObject(root, "kv_cache");
    cJSON_AddNumberToObject(kv, "bytes_allocated", (double)r->kv_bytes_allocated);
    cJSON_AddNumberToObject(kv, "bytes_filled", (double)r->kv_bytes_filled);
    cJSON_AddNumberToObject(kv, "bytes_per_token", (double)r->kv_bytes_per_token);
    cJSON_AddNumberToObject(kv, "tokens", (double)r->kv_tokens);
    cJSON_AddStringToObject(kv, "dtype", dtype_name(m->dtype));
    int mla = model_config_mla_layers(&m->cfg);
    cJSON_AddNumberToObject(kv, "gqa_layers", (double)(m->cfg.num_hidden_layers - mla));
    cJSON_AddNumberToObject(kv, "mla_layers", mla);
    cJSON_AddStringToObject(kv, "mla_attention", a->mla_mode == DECODE_MLA_ABSORBED ? "absorbed" : "expanded");
    char *s = cJSON_PrintUnformatted(root);
    if (s) printf("%s\n", s);
    free(s);
    cJSON_Delete(root);
}

static void print_plain(const Model *m, const GenerateResult *r, const char *text) {
    if (text) printf("%s\n", text);
    else {
        for (int64_t i = 0; i < r->n_new; i++) printf("%s%d", i ? "," : "", (int)r->ids[i]);
        printf("\n");
    }
    fprintf(stderr, "prefill: %lld tokens in %.3f s (%.1f tok/s); decode: %lld tokens in %.3f s (%.1f tok/s)%s; "
            "KV cache: %zu bytes for %lld tokens (%zu per token, %s)\n",
            (long long)r->prompt_tokens, r->prefill_seconds, r->prompt_tokens / r->prefill_seconds,
            (long long)r->decode_tokens, r->decode_seconds,
            r->decode_tokens ? r->decode_tokens / r->decode_seconds : 0.0, r->stopped_at_eos ? "; stopped at eos" : "",
            r->kv_bytes_filled, (long long)r->kv_tokens, r->kv_bytes_per_token, dtype_name(m->dtype));
}

/* The new tokens as text, special tokens skipped (NULL without a tokenizer). */
static Status decode_text(const Tokenizer *tok, const GenerateResult *r, char **text) {
    *text = NULL;
    if (!tok) return STATUS_OK;
    size_t len = 0;
    if (tokenizer_decode(tok, r->ids, r->n_new, 1, text, &len) != STATUS_OK)
        return error_context("generate: decoding the new tokens: ");
    return STATUS_OK;
}

static Status run(const GenerateArgs *a, Backend *be, const Tokenizer *tok, const int32_t *prompt, int64_t n_prompt) {
    const int64_t capacity = n_prompt + a->max_new - 1;
    Model *m = NULL;
    TRY(load_model(a->model, be, capacity, &m));
    /* A model that only runs forward: bf16 weights are rounded in place, no float32 copy kept. */
    DType dt = strcmp(a->dtype, "bf16") == 0 ? DT_BF16 : DT_F32;
    Status st = model_set_precision(m, dt, dt);
    if (st == STATUS_OK && capacity > m->cfg.max_position_embeddings)
        st = errorf("generate: the prompt (%lld tokens) and --max-new-tokens %lld need %lld positions, more than "
                    "the model's max_position_embeddings (%lld)", (long long)n_prompt, (long long)a->max_new,
                    (long long)capacity, (long long)m->cfg.max_position_embeddings);
    for (int64_t i = 0; st == STATUS_OK && i < n_prompt; i++)
        if (prompt[i] >= m->cfg.vocab_size)
            st = errorf("generate: the prompt's id %d (entry %lld) is outside the model's vocabulary of %lld",
                        (int)prompt[i], (long long)i + 1, (long long)m->cfg.vocab_size);
    GenerateOptions o = {.max_new_tokens = a->max_new, .sampling = a->sampling, .mla_mode = a->mla_mode};
    if (st == STATUS_OK && !a->ignore_eos) st = eos_ids(a->model, m, &o);
    GenerateResult r;
    memset(&r, 0, sizeof r);
    if (st == STATUS_OK) st = generate(m, prompt, n_prompt, &o, &r);
    char *text = NULL;
    if (st == STATUS_OK) st = decode_text(tok, &r, &text);
    if (st == STATUS_OK) {
        if (a->json) print_json(a, m, &r, text);
        else print_plain(m, &r, text);
    }
    free(text);
    generate_result_free(&r);
    model_destroy(m);
    return st;
}

/* --tokenizer when given, else the model folder's tokenizer.json: required for --prompt, otherwise
 * only for text output (absent is fine then). */
static Status open_tokenizer(const GenerateArgs *a, Tokenizer **tok) {
    *tok = NULL;
    if (!a->tokenizer && !a->prompt && !is_file(a->model, "tokenizer.json")) return STATUS_OK;
    const char *path = a->tokenizer ? a->tokenizer : a->model;
    if (tokenizer_load(path, tok) != STATUS_OK)
        return error_context("generate: %s: ", a->tokenizer ? "--tokenizer" : "the model's tokenizer");
    return STATUS_OK;
}

static Status prompt_tokens(const GenerateArgs *a, const Tokenizer *tok, int32_t **prompt, int64_t *n) {
    if (!a->prompt) return parse_ids(a->prompt_ids, prompt, n);
    if (tokenizer_encode(tok, a->prompt, strlen(a->prompt), 1, prompt, n) != STATUS_OK)
        return error_context("generate: encoding --prompt: ");
    if (*n == 0) return errorf("generate: --prompt encodes to no tokens");
    return STATUS_OK;
}

Status cmd_generate(int argc, char **argv, int *show_help) {
    GenerateArgs a;
    TRY(parse_args(argc, argv, &a, show_help));
    if (*show_help) return STATUS_OK;
    Tokenizer *tok = NULL;
    TRY(open_tokenizer(&a, &tok));
    int32_t *prompt = NULL;
    int64_t n_prompt = 0;
    Backend *be = NULL;
    Status st = prompt_tokens(&a, tok, &prompt, &n_prompt);
    BackendOptions bo = {.threads = a.threads, .device = 0};
    if (st == STATUS_OK) st = backend_create(&be, a.device, bo);
    if (st == STATUS_OK) st = run(&a, be, tok, prompt, n_prompt);
    backend_destroy(be);
    free(prompt);
    tokenizer_free(tok);
    return st;
}
