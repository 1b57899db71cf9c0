/* The tokenizer against HF tokenizers: ids, ids with special tokens and decoded text on every
 * fixture of tests/fixtures/tokenizer (tools/tokenizer-fixtures.py), round trips, concurrent
 * encoding, and one clear error for each kind of malformed or unsupported tokenizer.json. */
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/prepare.h"
#include "data/token_file.h"
#include "data/tokenizer/eos_id.h"
#include "data/tokenizer/tokenizer.h"
#include "harness.h"

static const char *const FAMILIES[] = {"gpt2",   "added_options",     "llama3",          "qwen2",     "smollm",
                                       "llama2", "mistral_metaspace", "split_behaviors", "unk_fused", "unk_separate"};

/* The fixtures sit beside this source file; CMake compiles it by its absolute path. */
static void fixture_path(char *buf, size_t n, const char *family, const char *file) {
    const char *src = __FILE__, *slash = strrchr(src, '/');
    int dir_len = slash ? (int)(slash - src) : 1;
    snprintf(buf, n, "%.*s/fixtures/tokenizer/%s%s%s", dir_len, slash ? src : ".", family, file ? "/" : "",
             file ? file : "");
}

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    if (s) s[n] = '\0';
    fclose(f);
    return s;
}

/* Where two id lists first differ, -1 if equal. */
static long first_difference(const int32_t *ids, int64_t n, const cJSON *expected) {
    int64_t m = cJSON_GetArraySize(expected);
    const cJSON *e = expected ? expected->child : NULL;
    for (int64_t i = 0; i < n || i < m; i++, e = e ? e->next : NULL)
        if (i >= n || i >= m || (int32_t)e->valuedouble != ids[i]) return (long)i;
    return -1;
}

static void check_case(const Tokenizer *tok, const char *family, int index, const cJSON *c, int roundtrip) {
    const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
    const char *shown = strlen(text) > 60 ? "(long text)" : text;
    int32_t *ids = NULL, *ids_special = NULL;
    int64_t n = 0, n_special = 0;
    if (!CHECK_OK(tokenizer_encode(tok, text, strlen(text), 0, &ids, &n))) return;
    long at = first_difference(ids, n, cJSON_GetObjectItem(c, "ids"));
    CHECK(at < 0, "%s case %d \"%s\": ids differ from HF's at %ld (%lld ids, HF %d)", family, index, shown, at,
          (long long)n, cJSON_GetArraySize(cJSON_GetObjectItem(c, "ids")));
    if (CHECK_OK(tokenizer_encode(tok, text, strlen(text), 1, &ids_special, &n_special))) {
        at = first_difference(ids_special, n_special, cJSON_GetObjectItem(c, "ids_special"));
        CHECK(at < 0, "%s case %d \"%s\": ids with special tokens differ from HF's at %ld", family, index, shown, at);
    }
    char *decoded = NULL;
    size_t len = 0;
    if (CHECK_OK(tokenizer_decode(tok, ids, n, 0, &decoded, &len))) {
        const char *want = cJSON_GetObjectItem(c, "decoded")->valuestring;
        CHECK(len == strlen(decoded) && strcmp(decoded, want) == 0, "%s case %d: decode gives \"%s\", HF \"%s\"", family,
              index, decoded, want);
        if (roundtrip) CHECK(strcmp(decoded, text) == 0, "%s case %d: decode(encode(x)) != x for \"%s\"", family, index, shown);
        free(decoded);
    }
    /* Every other id: characters cut apart, as a decode of a partial generation may see them. */
    int32_t odd[4096];
    int64_t n_odd = 0;
    for (int64_t i = 1; i < n && n_odd < 4096; i += 2) odd[n_odd++] = ids[i];
    if (CHECK_OK(tokenizer_decode(tok, odd, n_odd, 0, &decoded, &len))) {
        const char *want = cJSON_GetObjectItem(c, "decoded_odd")->valuestring;
        CHECK(strcmp(decoded, want) == 0, "%s case %d: decode of every other id gives \"%s\", HF \"%s\"", family,
              index, decoded, want);
        free(decoded);
    }
    if (ids_special && CHECK_OK(tokenizer_decode(tok, ids_special, n_special, 1, &decoded, &len))) {
        const char *want = cJSON_GetObjectItem(c, "decoded_skip")->valuestring;
        CHECK(strcmp(decoded, want) == 0, "%s case %d: decode skipping special tokens gives \"%s\", HF \"%s\"", family,
              index, decoded, want);
        free(decoded);
    }
    free(ids);
    free(ids_special);
}

static void check_family(const char *family) {
    char path[4096];
    fixture_path(path, sizeof path, family, NULL);
    Tokenizer *tok = NULL;
    /* A folder holding tokenizer.json loads as the file itself does. */
    if (!CHECK_OK(tokenizer_load(path, &tok))) return;
    fixture_path(path, sizeof path, family, "expected.json");
    char *json = read_text(path);
    cJSON *expected = json ? cJSON_Parse(json) : NULL;
    free(json);
    CHECK(expected != NULL, "%s: cannot read %s", family, path);
    if (!expected) {
        tokenizer_free(tok);
        return;
    }
    int roundtrip = cJSON_IsTrue(cJSON_GetObjectItem(expected, "roundtrip"));
    const cJSON *c;
    int index = 0, max_id = -1;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(expected, "cases")) {
        check_case(tok, family, index++, c, roundtrip);
        const cJSON *id;
        cJSON_ArrayForEach(id, cJSON_GetObjectItem(c, "ids_special")) if (id->valueint > max_id) max_id = id->valueint;
    }
    CHECK(index > 40, "%s: only %d cases", family, index);
    CHECK(max_id < tokenizer_vocab_size(tok), "%s: id %d is not below vocab_size %lld", family, max_id,
          (long long)tokenizer_vocab_size(tok));
    cJSON_Delete(expected);
    tokenizer_free(tok);
}

/* Token ids by name, against the vocabulary the fixture script wrote. */
static void check_token_ids(void) {
    char path[4096];
    fixture_path(path, sizeof path, "smollm", "tokenizer.json");
    Tokenizer *tok = NULL;
    if (!CHECK_OK(tokenizer_load(path, &tok))) return;
    CHECK(tokenizer_token_id(tok, "<|endoftext|>") == 0, "smollm: <|endoftext|> is id 0");
    CHECK(tokenizer_token_id(tok, "<|im_end|>") == 2, "smollm: <|im_end|> is id 2");
    CHECK(tokenizer_token_id(tok, "<|no such token|>") == -1, "an unknown token is -1");
    int32_t space = tokenizer_token_id(tok, "\xC4\xA0"); /* GPT-2's character for the space byte */
    int32_t *ids = NULL;
    int64_t n = 0;
    if (CHECK_OK(tokenizer_encode(tok, " ", 1, 0, &ids, &n)))
        CHECK(n == 1 && ids[0] == space && space >= 0, "smollm: \" \" encodes to the token of its byte character");
    free(ids);
    tokenizer_free(tok);
    fixture_path(path, sizeof path, "llama2", NULL);
    if (!CHECK_OK(tokenizer_load(path, &tok))) return;
    CHECK(tokenizer_token_id(tok, "<0x0A>") == 13, "llama2: <0x0A> is id 13");
    /* A character outside the vocabulary becomes its bytes (byte fallback), and decodes back. */
    const char *snow = "\xE2\x98\x83"; /* U+2603 */
    if (CHECK_OK(tokenizer_encode(tok, snow, 3, 0, &ids, &n))) {
        int has_bytes = n >= 3 && ids[n - 3] == 3 + 0xE2 && ids[n - 2] == 3 + 0x98 && ids[n - 1] == 3 + 0x83;
        CHECK(has_bytes, "llama2: U+2603 falls back to <0xE2><0x98><0x83>");
        char *text = NULL;
        size_t len = 0;
        if (CHECK_OK(tokenizer_decode(tok, ids, n, 0, &text, &len)))
            CHECK(strcmp(text, snow) == 0, "llama2: byte fallback decodes to U+2603, got \"%s\"", text);
        free(text);
    }
    free(ids);
    /* Invalid UTF-8 is refused rather than guessed at. */
    CHECK_ERR(tokenizer_encode(tok, "ab\xFF", 3, 0, &ids, &n), "not valid UTF-8");
    tokenizer_free(tok);
}

typedef struct {
    const Tokenizer *tok;
    const char *text;
    size_t len;
    int64_t n;
    int32_t *ids;
    Status st;
} EncodeJob;

static void *encode_job(void *arg) {
    EncodeJob *j = arg;
    for (int r = 0; r < 20; r++) {
        free(j->ids);
        j->st = tokenizer_encode(j->tok, j->text, j->len, 1, &j->ids, &j->n);
        if (j->st != STATUS_OK) break;
    }
    return NULL;
}

/* Several threads on one tokenizer (the word cache serves one at a time) give the same ids. */
static void check_threads(void) {
    char path[4096];
    fixture_path(path, sizeof path, "llama3", "tokenizer.json");
    Tokenizer *tok = NULL;
    if (!CHECK_OK(tokenizer_load(path, &tok))) return;
    char text[8192];
    size_t len = 0;
    while (len + 64 < sizeof text)
        len += (size_t)snprintf(text + len, sizeof text - len, "word%zu and 12345 more, ", len % 97);
    int32_t *ref = NULL;
    int64_t n_ref = 0;
    CHECK_OK(tokenizer_encode(tok, text, len, 1, &ref, &n_ref));
    EncodeJob jobs[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (EncodeJob){.tok = tok, .text = text, .len = len};
        pthread_create(&th[i], NULL, encode_job, &jobs[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK(jobs[i].st == STATUS_OK && jobs[i].n == n_ref && memcmp(jobs[i].ids, ref, (size_t)n_ref * 4) == 0,
              "thread %d: the same ids as one thread", i);
        free(jobs[i].ids);
    }
    free(ref);
    tokenizer_free(tok);
}

/* `mlatrain data text --tokenizer`: paragraphs encoded with the BOS of Llama 3's template and
 * followed by eos, read back from the token file. */
static void check_prepare(void) {
    char dir[] = "/tmp/mlatrain_tokenizer_prep_XXXXXX", in[128], out[128], path[4096];
    if (!mkdtemp(dir)) {
        CHECK(0, "mkdtemp %s", dir);
        return;
    }
    snprintf(in, sizeof in, "%s/in.txt", dir);
    snprintf(out, sizeof out, "%s/out.h5", dir);
    const char *paragraphs[] = {"The first paragraph, 12345 words.\nIts second line.", "Zweiter Absatz: Größe 日本語 👍",
                                "<|eot_id|> third"};
    FILE *f = fopen(in, "wb");
    for (int i = 0; i < 3; i++) fprintf(f, "%s\n\n", paragraphs[i]);
    fclose(f);
    fixture_path(path, sizeof path, "llama3", NULL);
    Tokenizer *tok = NULL;
    if (!CHECK_OK(tokenizer_load(path, &tok))) return;
    int32_t eos = -1;
    char source[64];
    CHECK_OK(tokenizer_eos_id(path, tok, &eos, source, sizeof source));
    CHECK(eos == tokenizer_token_id(tok, "<|end_of_text|>") && eos >= 0, "llama3: eos is <|end_of_text|> (got %d)", eos);
    int32_t want[512];
    size_t n_want = 0;
    for (int i = 0; i < 3; i++) {
        int32_t *ids = NULL;
        int64_t n = 0;
        CHECK_OK(tokenizer_encode(tok, paragraphs[i], strlen(paragraphs[i]), 1, &ids, &n));
        CHECK(n > 1 && ids[0] == tokenizer_token_id(tok, "<|begin_of_text|>"), "paragraph %d starts with BOS", i);
        for (int64_t k = 0; k < n && n_want < 500; k++) want[n_want++] = ids[k];
        want[n_want++] = eos;
        free(ids);
    }
    const char *inputs[] = {in};
    SplitOptions split = {.out_path = out};
    PrepareResult r;
    if (CHECK_OK(prepare_text_tokenized(inputs, 1, TEXT_DOCS_PARAGRAPH, tok, (uint32_t)eos, &split, &r))) {
        CHECK(r.train.documents == 3 && r.train.tokens == n_want, "3 documents, %zu tokens (got %llu, %llu)", n_want,
              (unsigned long long)r.train.documents, (unsigned long long)r.train.tokens);
        TokenFile *tf = NULL;
        if (CHECK_OK(token_file_open(&tf, out))) {
            const TokenFileInfo *info = token_file_info(tf);
            CHECK(info->vocab_size == (uint32_t)tokenizer_vocab_size(tok) && info->eos_id == (uint32_t)eos,
                  "the file carries the tokenizer's vocab_size and eos");
            int32_t got[512];
            if (info->n_tokens == n_want && CHECK_OK(token_file_read(tf, 0, n_want, got)))
                CHECK(memcmp(got, want, n_want * sizeof *got) == 0, "the file holds the encoded paragraphs");
            token_file_close(tf);
        }
    }
    /* Invalid UTF-8 fails with the file and document named, and leaves no output behind. */
    f = fopen(in, "wb");
    fputs("fine\n\nbad \xC3\x28 byte\n", f);
    fclose(f);
    unlink(out);
    CHECK_ERR(prepare_text_tokenized(inputs, 1, TEXT_DOCS_PARAGRAPH, tok, (uint32_t)eos, &split, &r),
              "document 2: the text is not valid UTF-8");
    CHECK(access(out, F_OK) != 0, "no output after a failed preparation");
    tokenizer_free(tok);
    unlink(in);
    rmdir(dir);
}

/* ---- malformed and unsupported files ---- */

static char tmp_dir[] = "/tmp/mlatrain_tokenizer_XXXXXX";

static void expect_refused(const char *what, const char *json, const char *needle) {
    char path[256];
    snprintf(path, sizeof path, "%s/tokenizer.json", tmp_dir);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL, "%s: cannot write %s", what, path);
    if (!f) return;
    fputs(json, f);
    fclose(f);
    Tokenizer *tok = NULL;
    int failed = tokenizer_load(path, &tok) != STATUS_OK;
    CHECK(failed && tok == NULL, "%s: loads, but should be refused", what);
    if (failed) {
        CHECK(strstr(error_message(), needle) != NULL, "%s: the error \"%s\" does not mention \"%s\"", what,
              error_message(), needle);
        CHECK(strstr(error_message(), path) != NULL, "%s: the error \"%s\" does not name the file", what, error_message());
    }
    tokenizer_free(tok);
}

/* A minimal byte-level tokenizer.json with one part replaced. */
static void refused_with(const char *what, const char *key, const char *value, const char *needle) {
    char json[4096];
    const char *model = "{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[[\"a\",\"b\"]]}";
    snprintf(json, sizeof json,
             "{\"version\":\"1.0\",\"added_tokens\":%s,\"normalizer\":%s,\"pre_tokenizer\":%s,\"model\":%s,"
             "\"post_processor\":%s,\"decoder\":%s,\"truncation\":%s}",
             strcmp(key, "added_tokens") == 0 ? value : "[]", strcmp(key, "normalizer") == 0 ? value : "null",
             strcmp(key, "pre_tokenizer") == 0 ? value : "null", strcmp(key, "model") == 0 ? value : model,
             strcmp(key, "post_processor") == 0 ? value : "null", strcmp(key, "decoder") == 0 ? value : "null",
             strcmp(key, "truncation") == 0 ? value : "null");
    expect_refused(what, json, needle);
}

static void check_errors(void) {
    int made = mkdtemp(tmp_dir) != NULL;
    CHECK(made, "mkdtemp %s", tmp_dir);
    if (!made) return;
    Tokenizer *tok = NULL;
    CHECK_ERR(tokenizer_load("/nonexistent/tokenizer.json", &tok), "/nonexistent/tokenizer.json");
    CHECK_ERR(tokenizer_load(tmp_dir, &tok), "tokenizer.json"); /* a folder without one */
    expect_refused("empty file", "", "not valid JSON");
    expect_refused("truncated JSON", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0", "not valid JSON");
    expect_refused("not an object", "[1, 2]", "expected a JSON object");
    expect_refused("no model", "{\"version\": \"1.0\"}", "no \"model\"");
    expect_refused("bad version", "{\"version\": \"2.0\", \"model\": {}}", "version");
    refused_with("WordPiece", "model", "{\"type\":\"WordPiece\",\"vocab\":{}}", "model.type \"WordPiece\" is not supported");
    refused_with("Unigram", "model", "{\"type\":\"Unigram\",\"vocab\":[]}", "model.type \"Unigram\" is not supported");
    refused_with("model without type", "model", "{\"vocab\":{}}", "model.type");
    refused_with("vocab not an object", "model", "{\"type\":\"BPE\",\"vocab\":[1],\"merges\":[]}", "model.vocab");
    refused_with("negative id", "model", "{\"type\":\"BPE\",\"vocab\":{\"a\":-1},\"merges\":[]}", "model.vocab: token \"a\"");
    refused_with("sparse ids", "model", "{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":2000000000},\"merges\":[]}",
                 "ids this sparse are not supported");
    refused_with("shared id", "model", "{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":0},\"merges\":[]}", "share id 0");
    refused_with("merge of unknown token", "model", "{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[[\"a\",\"z\"]]}",
                 "model.merges[0]: \"z\" is not in the vocabulary");
    refused_with("merge result unknown", "model",
                 "{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a b\"]}", "the merge \"ab\"");
    refused_with("bad legacy merge", "model", "{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a\"]}",
                 "model.merges[0]");
    refused_with("merge not a pair", "model", "{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[[\"a\"]]}",
                 "model.merges[0]");
    refused_with("dropout", "model", "{\"type\":\"BPE\",\"dropout\":0.1,\"vocab\":{},\"merges\":[]}", "model.dropout");
    refused_with("subword prefix", "model",
                 "{\"type\":\"BPE\",\"continuing_subword_prefix\":\"##\",\"vocab\":{},\"merges\":[]}",
                 "model.continuing_subword_prefix");
    refused_with("unk not in vocab", "model", "{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"vocab\":{},\"merges\":[]}",
                 "model.unk_token \"<unk>\"");
    refused_with("Lowercase", "normalizer", "{\"type\":\"Lowercase\"}", "normalizer.type \"Lowercase\" is not supported");
    refused_with("Precompiled in a sequence", "normalizer",
                 "{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFC\"},{\"type\":\"Precompiled\"}]}",
                 "normalizer.normalizers[1].type \"Precompiled\"");
    refused_with("bad regex", "pre_tokenizer",
                 "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(a\"},\"behavior\":\"Isolated\",\"invert\":false}",
                 "pre_tokenizer.pattern: regex");
    refused_with("bad behavior", "pre_tokenizer",
                 "{\"type\":\"Split\",\"pattern\":{\"String\":\"a\"},\"behavior\":\"Sideways\",\"invert\":false}",
                 "unknown split behavior \"Sideways\"");
    refused_with("Whitespace", "pre_tokenizer", "{\"type\":\"Whitespace\"}", "pre_tokenizer.type \"Whitespace\"");
    refused_with("after ByteLevel", "pre_tokenizer",
                 "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"ByteLevel\"},{\"type\":\"Digits\"}]}",
                 "after ByteLevel");
    refused_with("Metaspace replacement", "pre_tokenizer", "{\"type\":\"Metaspace\",\"replacement\":\"ab\"}",
                 "pre_tokenizer.replacement: expected one character");
    refused_with("WordPiece decoder", "decoder", "{\"type\":\"WordPiece\"}", "decoder.type \"WordPiece\"");
    refused_with("BertProcessing without sep", "post_processor", "{\"type\":\"BertProcessing\",\"cls\":[\"a\",0]}",
                 "post_processor.sep");
    refused_with("template without $A", "post_processor",
                 "{\"type\":\"TemplateProcessing\",\"single\":[],\"special_tokens\":{}}", "has no $A");
    refused_with("template special without ids", "post_processor",
                 "{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},"
                 "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"special_tokens\":{}}",
                 "no ids for \"<s>\"");
    refused_with("truncation", "truncation", "{\"max_length\":8}", "truncation is set");
    refused_with("added token not an object", "added_tokens", "[1]", "added_tokens[0]");
    refused_with("added token id mismatch", "added_tokens",
                 "[{\"id\":7,\"content\":\"ab\",\"special\":true,\"normalized\":false}]",
                 "the file gives id 7 but HF tokenizers assigns 2");
    refused_with("added token without content", "added_tokens", "[{\"id\":3}]", "added_tokens[0].content");
    char path[256];
    snprintf(path, sizeof path, "%s/tokenizer.json", tmp_dir);
    unlink(path);
    rmdir(tmp_dir);
}

int main(void) {
    for (size_t i = 0; i < sizeof FAMILIES / sizeof FAMILIES[0]; i++) check_family(FAMILIES[i]);
    check_token_ids();
    check_threads();
    check_prepare();
    check_errors();
    return test_finish("test_tokenizer");
}
