/* Multiple-choice tasks: every ending's log-likelihood against a float64 computation from the
 * model's hidden states and LM head, one sequence at a time; accuracy (summed and per token)
 * against the count made by hand from those; and each kind of bad task file refused with its line. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "model_fixtures.h"
#include "train/tasks.h"

enum { MAX_SEQ = 16, MAX_ITEMS = 8, MAX_ENDINGS = 4, MAX_LEN = 8 };

static char workdir[64];

/* A hand-made task: contexts and endings of different lengths (endings of one token included). */
typedef struct {
    int n_context, n_endings;
    int32_t context[MAX_LEN];
    int ending_len[MAX_ENDINGS];
    int32_t endings[MAX_ENDINGS][MAX_LEN];
} Item;

static const Item ITEMS[] = {
    {3, 2, {1, 5, 9}, {2, 3}, {{4, 7}, {11, 2, 8}}},
    {1, 4, {17}, {1, 1, 2, 4}, {{3}, {12}, {6, 6}, {20, 1, 0, 5}}},
    {5, 3, {2, 2, 2, 9, 14}, {3, 1, 2}, {{0, 22, 13}, {19}, {7, 18}}},
    {2, 2, {21, 4}, {6, 5}, {{1, 2, 3, 4, 5, 6}, {6, 5, 4, 3, 2}}},
    {4, 3, {8, 16, 3, 10}, {2, 2, 4}, {{15, 15}, {9, 1}, {11, 11, 11, 11}}},
    {6, 2, {5, 4, 3, 2, 1, 0}, {1, 3}, {{22}, {13, 14, 15}}},
    {2, 4, {7, 7}, {2, 3, 1, 2}, {{18, 3}, {2, 9, 16}, {10}, {12, 12}}},
};
enum { N_ITEMS = sizeof ITEMS / sizeof ITEMS[0] };

static void write_task(const char *path, const int *labels) {
    FILE *f = fopen(path, "w");
    if (!f) return;
    for (int i = 0; i < N_ITEMS; i++) {
        const Item *it = &ITEMS[i];
        fprintf(f, "{\"context\": [");
        for (int k = 0; k < it->n_context; k++) fprintf(f, "%s%d", k ? ", " : "", it->context[k]);
        fprintf(f, "], \"endings\": [");
        for (int j = 0; j < it->n_endings; j++) {
            fprintf(f, "%s[", j ? ", " : "");
            for (int k = 0; k < it->ending_len[j]; k++) fprintf(f, "%s%d", k ? ", " : "", it->endings[j][k]);
            fprintf(f, "]");
        }
        fprintf(f, "], \"label\": %d, \"id\": \"item%d\"}\n", labels[i], i);
        if (i == 2) fprintf(f, "\n"); /* blank lines are skipped */
    }
    fclose(f);
}

/* log p(ending | context) in float64: one forward over context + ending (less its last token),
 * logits = hidden . lm_head^T summed in double, log-softmax in double. */
static double reference_loglik(Model *m, const Item *it, int j) {
    int64_t P = it->n_context + it->ending_len[j] - 1, D = m->cfg.hidden_size, V = m->cfg.vocab_size;
    Backend *be = m->be;
    int32_t ids[2 * MAX_LEN];
    memcpy(ids, it->context, (size_t)it->n_context * sizeof(int32_t));
    memcpy(ids + it->n_context, it->endings[j], (size_t)(it->ending_len[j] - 1) * sizeof(int32_t));
    ForwardState *st = NULL;
    Tensor tids = {0}, hidden = {0};
    float *h = test_alloc((size_t)(P * D) * sizeof(float)), *w = test_alloc((size_t)(V * D) * sizeof(float));
    double total = NAN;
    if (CHECK_OK(forward_state_create(&st, m, 1, P, 0)) && CHECK_OK(be->alloc(be, &tids, DT_I32, 1, &P)) &&
        CHECK_OK(be->alloc(be, &hidden, DT_F32, 2, (int64_t[]){P, D})) && CHECK_OK(be->upload(be, tids, ids)) &&
        CHECK_OK(model_forward(m, st, tids, hidden)) && CHECK_OK(be->download(be, h, hidden)) &&
        CHECK_OK(be->download(be, w, m->lm_head))) {
        total = 0;
        double *z = test_alloc((size_t)V * sizeof(double));
        for (int k = 0; k < it->ending_len[j]; k++) {
            const float *hp = h + (int64_t)(it->n_context - 1 + k) * D;
            double mx = -INFINITY, s = 0;
            for (int64_t v = 0; v < V; v++) {
                z[v] = 0;
                for (int64_t d = 0; d < D; d++) z[v] += (double)hp[d] * (double)w[v * D + d];
                if (z[v] > mx) mx = z[v];
            }
            for (int64_t v = 0; v < V; v++) s += exp(z[v] - mx);
            total += z[it->endings[j][k]] - mx - log(s);
        }
        free(z);
    }
    if (tids.data) be->release(be, &tids);
    if (hidden.data) be->release(be, &hidden);
    forward_state_destroy(st);
    free(h);
    free(w);
    return total;
}

static int argmax(const double *x, int n) {
    int best = 0;
    for (int j = 1; j < n; j++)
        if (x[j] > x[best]) best = j;
    return best;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* A task file holding `text` must be refused, naming the file and line and saying `needle`. */
static void check_refused(Model *m, const char *text, const char *line, const char *needle) {
    char path[128], where[160];
    snprintf(path, sizeof path, "%s/bad.jsonl", workdir);
    write_text(path, text);
    snprintf(where, sizeof where, "%s%s", path, line);
    McTask *t = NULL;
    Status st = mc_task_load(&t, path, m->cfg.vocab_size, m->max_seq);
    CHECK(st != STATUS_OK && strstr(error_message(), where) && strstr(error_message(), needle),
          "a bad task file (%s) is refused naming %s and '%s': got \"%s\"", needle, where, needle,
          st != STATUS_OK ? error_message() : "accepted");
    mc_task_free(t);
}

int main(void) {
    snprintf(workdir, sizeof workdir, "/tmp/mlatrain_tasks_XXXXXX");
    if (!mkdtemp(workdir)) return 1;
    Backend *be = test_cpu_backend(1);
    ModelConfig mc = tiny_student_config(0x2, 0, 1); /* layer 0 GQA, layer 1 MLA */
    Model *m = NULL;
    if (!CHECK_OK(model_create(&m, be, &mc, MAX_SEQ)) || !CHECK_OK(model_init_random(m, 5, 0.5f)))
        return test_finish("test_tasks");

    /* The hand computation: every ending's log-likelihood, then labels chosen so that the summed and
     * the per-token choice are right on different items. */
    double ref[N_ITEMS][MAX_ENDINGS], mean[N_ITEMS][MAX_ENDINGS];
    int labels[N_ITEMS], want_correct = 0, want_correct_norm = 0;
    double margin = INFINITY;
    for (int i = 0; i < N_ITEMS; i++) {
        const Item *it = &ITEMS[i];
        for (int j = 0; j < it->n_endings; j++) {
            ref[i][j] = reference_loglik(m, it, j);
            mean[i][j] = ref[i][j] / it->ending_len[j];
        }
        int best = argmax(ref[i], it->n_endings), best_norm = argmax(mean[i], it->n_endings);
        for (int j = 0; j < it->n_endings; j++) {
            if (j != best) margin = fmin(margin, ref[i][best] - ref[i][j]);
            if (j != best_norm) margin = fmin(margin, mean[i][best_norm] - mean[i][j]);
        }
        /* Where the two choices differ the label is the per-token one; elsewhere right or wrong. */
        int wrong = 0;
        while (wrong == best || wrong == best_norm) wrong++;
        labels[i] = best != best_norm ? best_norm : i % 3 == 2 ? wrong : best;
        want_correct += labels[i] == best;
        want_correct_norm += labels[i] == best_norm;
    }
    CHECK(margin > 1e-4, "the hand-made task has no near-ties (smallest margin %.3g)", margin);
    CHECK(want_correct != want_correct_norm, "the task tells the two scorings apart (%d vs %d right)", want_correct,
          want_correct_norm);

    char path[128];
    snprintf(path, sizeof path, "%s/tiny_mc.jsonl", workdir);
    write_task(path, labels);
    McTask *t = NULL;
    if (CHECK_OK(mc_task_load(&t, path, m->cfg.vocab_size, m->max_seq))) {
        CHECK(t->n_items == N_ITEMS && strcmp(t->name, "tiny_mc") == 0, "the task: %lld items named %s",
              (long long)t->n_items, t->name);
        CHECK(t->items[3].line == 5, "items keep their line numbers (item 3 on line %lld)",
              (long long)t->items[3].line);
        for (int64_t batch = 1; batch <= 5; batch += 2) {
            TaskScore s;
            double got[N_ITEMS * MAX_ENDINGS];
            if (!CHECK_OK(mc_task_score(m, t, batch, &s, got))) continue;
            double worst = 0;
            for (int i = 0, e = 0; i < N_ITEMS; i++)
                for (int j = 0; j < ITEMS[i].n_endings; j++, e++)
                    worst = fmax(worst, fabs(got[e] - ref[i][j]) / fmax(1.0, fabs(ref[i][j])));
            CHECK(worst < 1e-5, "batch %lld: log-likelihoods match the float64 computation (worst rel error %.3g)",
                  (long long)batch, worst);
            CHECK(s.n == N_ITEMS && s.correct == want_correct && s.correct_norm == want_correct_norm,
                  "batch %lld: %lld/%lld right by sum, %lld by mean; by hand %d and %d", (long long)batch,
                  (long long)s.correct, (long long)s.n, (long long)s.correct_norm, want_correct, want_correct_norm);
            CHECK(s.acc == (double)want_correct / N_ITEMS && s.acc_norm == (double)want_correct_norm / N_ITEMS,
                  "batch %lld: accuracy %.4f and %.4f", (long long)batch, s.acc, s.acc_norm);
        }
    }
    mc_task_free(t);

    /* tasks_evaluate: every file, by name; two files of one name are refused. */
    ConfigPathList files = {0};
    files.count = 1;
    snprintf(files.items[0], sizeof files.items[0], "%s", path);
    TaskScores scores;
    if (CHECK_OK(tasks_evaluate(m, &files, 4, &scores)))
        CHECK(scores.count == 1 && strcmp(scores.task[0].name, "tiny_mc") == 0 &&
                  scores.task[0].correct == want_correct,
              "tasks_evaluate scores the file");
    char sub[128];
    snprintf(sub, sizeof sub, "%s/again", workdir);
    CHECK(mkdir(sub, 0755) == 0, "mkdir %s", sub);
    files.count = 2;
    snprintf(files.items[1], sizeof files.items[1], "%s/tiny_mc.jsonl", sub);
    write_task(files.items[1], labels);
    CHECK_ERR(tasks_evaluate(m, &files, 4, &scores), "both named \"tiny_mc\"");

    /* Bad files: one error naming the file and the line. */
    const char *good = "{\"context\": [1], \"endings\": [[2], [3]], \"label\": 0}\n";
    char text[512];
    snprintf(text, sizeof text, "%s{\"context\": [1], \"endings\": [[2], [3]], \"label\": 0\n", good);
    check_refused(m, text, ":2:", "not a JSON object");
    snprintf(text, sizeof text, "%s%s{\"context\": [1], \"endings\": [[2], [3]], \"label\": 2}\n", good, good);
    check_refused(m, text, ":3:", "\"label\" must be the index of an ending, 0 to 1");
    check_refused(m, "{\"context\": [1], \"endings\": [[2], [3]], \"label\": -1}\n", ":1:", "label");
    check_refused(m, "{\"context\": [1], \"endings\": [[2], [23]], \"label\": 0}\n", ":1:",
                  "endings[1][0] = 23 is not a token id below the model's vocab_size 23");
    check_refused(m, "{\"context\": [1, 2.5], \"endings\": [[2], [3]], \"label\": 0}\n", ":1:", "context[1]");
    check_refused(m, "{\"context\": [1], \"endings\": [], \"label\": 0}\n", ":1:", "an empty list");
    check_refused(m, "{\"context\": [1], \"endings\": [[2]], \"label\": 0}\n", ":1:", "at least two");
    check_refused(m, "{\"context\": [1], \"endings\": [[2], []], \"label\": 0}\n", ":1:", "endings[1] is empty");
    check_refused(m, "{\"context\": [], \"endings\": [[2], [3]], \"label\": 0}\n", ":1:", "context is empty");
    check_refused(m, "{\"endings\": [[2], [3]], \"label\": 0}\n", ":1:", "\"context\" is missing");
    check_refused(m, "{\"context\": [1], \"endings\": [[2], [3]]}\n", ":1:", "\"label\" is missing");
    /* 10 + 8 tokens need 17 positions; the model has 16. */
    check_refused(m,
                  "{\"context\": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], \"endings\": [[2], [3, 3, 3, 3, 3, 3, 3, 3]], "
                  "\"label\": 0}\n",
                  ":1:", "context + endings[1] are 18 tokens, longer than the model's 16 + 1");
    {
        char empty[128];
        snprintf(empty, sizeof empty, "%s/empty.jsonl", workdir);
        write_text(empty, "\n\n");
        McTask *e = NULL;
        CHECK_ERR(mc_task_load(&e, empty, 23, MAX_SEQ), "no items");
        mc_task_free(e);
        CHECK_ERR(mc_task_load(&e, "/nonexistent/task.jsonl", 23, MAX_SEQ), "/nonexistent/task.jsonl");
    }

    model_destroy(m);
    backend_destroy(be);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf %s", workdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", workdir);
    return test_finish("test_tasks");
}
