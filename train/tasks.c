/* Multiple-choice scoring: task files read and checked line by line, every (context, ending) pair
 * run through the model in batches, the hidden states at the ending's positions gathered and put
 * through the LM head in chunks, and log-softmax taken on the host in float64. */
#include "train/tasks.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bytes of logits held at once: bounds the [rows, vocab] chunk whatever the vocabulary. */
enum { LOGITS_CHUNK_BYTES = 32 << 20 };

typedef struct {
    McTask *t;
    int64_t items_cap, endings_cap, pool_cap, pool_len;
    int64_t vocab, max_seq;
} TaskBuilder;

static Status grow(void **p, int64_t *cap, int64_t need, size_t elem, const char *path) {
    if (need <= *cap) return STATUS_OK;
    int64_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, (size_t)c * elem);
    if (!q) return errorf("%s: out of memory", path);
    *p = q;
    *cap = c;
    return STATUS_OK;
}

/* Appends the token ids of a JSON array to the pool; `what` names the array in messages. */
static Status read_ids(TaskBuilder *b, const cJSON *arr, const char *what, int64_t line, int64_t *offset,
                       int64_t *len) {
    const char *path = b->t->path;
    if (!cJSON_IsArray(arr)) return errorf("%s:%lld: %s must be a list of token ids", path, (long long)line, what);
    int64_t n = cJSON_GetArraySize(arr);
    if (n == 0) return errorf("%s:%lld: %s is empty", path, (long long)line, what);
    TRY(grow((void **)&b->t->pool, &b->pool_cap, b->pool_len + n, sizeof(int32_t), path));
    *offset = b->pool_len;
    *len = n;
    int64_t k = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        double v = cJSON_IsNumber(e) ? e->valuedouble : -1;
        if (!cJSON_IsNumber(e) || v != floor(v) || v < 0 || v >= (double)b->vocab) {
            char *shown = cJSON_PrintUnformatted(e);
            Status st = errorf("%s:%lld: %s[%lld] = %s is not a token id below the model's vocab_size %lld", path,
                               (long long)line, what, (long long)k, shown ? shown : "?", (long long)b->vocab);
            free(shown);
            return st;
        }
        b->t->pool[b->pool_len + k++] = (int32_t)v;
    }
    b->pool_len += n;
    return STATUS_OK;
}

static Status read_item(TaskBuilder *b, const char *text, int64_t line) {
    McTask *t = b->t;
    cJSON *root = cJSON_Parse(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return errorf("%s:%lld: not a JSON object", t->path, (long long)line);
    }
    const cJSON *context = cJSON_GetObjectItemCaseSensitive(root, "context");
    const cJSON *endings = cJSON_GetObjectItemCaseSensitive(root, "endings");
    const cJSON *label = cJSON_GetObjectItemCaseSensitive(root, "label");
    Status st = STATUS_OK;
    McItem it = {.line = line};
    if (!context) st = errorf("%s:%lld: \"context\" is missing", t->path, (long long)line);
    else if (!endings) st = errorf("%s:%lld: \"endings\" is missing", t->path, (long long)line);
    else if (!label) st = errorf("%s:%lld: \"label\" is missing", t->path, (long long)line);
    if (st == STATUS_OK) st = read_ids(b, context, "context", line, &it.context, &it.context_len);
    int n = cJSON_IsArray(endings) ? cJSON_GetArraySize(endings) : -1;
    if (st == STATUS_OK && n < 2)
        st = errorf("%s:%lld: \"endings\" must be a list of at least two lists of token ids (got %s)", t->path,
                    (long long)line, n < 0 ? "no list" : n == 0 ? "an empty list" : "one");
    it.n_endings = n;
    it.first_ending = t->n_endings;
    if (st == STATUS_OK) st = grow((void **)&t->endings, &b->endings_cap, t->n_endings + n, sizeof(McEnding), t->path);
    for (int j = 0; st == STATUS_OK && j < n; j++) {
        char what[32];
        snprintf(what, sizeof what, "endings[%d]", j);
        McEnding *e = &t->endings[t->n_endings + j];
        st = read_ids(b, cJSON_GetArrayItem(endings, j), what, line, &e->offset, &e->len);
        /* The last token is only predicted, never read: scoring needs one position fewer. */
        int64_t positions = it.context_len + (st == STATUS_OK ? e->len : 0) - 1;
        if (st == STATUS_OK && positions > b->max_seq)
            st = errorf("%s:%lld: context + endings[%d] are %lld tokens, longer than the model's %lld + 1 "
                        "(data.seq_len)", t->path, (long long)line, j, (long long)(positions + 1),
                        (long long)b->max_seq);
        if (st == STATUS_OK && positions > t->max_positions) t->max_positions = positions;
    }
    double k = cJSON_IsNumber(label) ? label->valuedouble : -1;
    if (st == STATUS_OK && (!cJSON_IsNumber(label) || k != floor(k) || k < 0 || k >= n))
        st = errorf("%s:%lld: \"label\" must be the index of an ending, 0 to %d", t->path, (long long)line, n - 1);
    it.label = (int)k;
    cJSON_Delete(root);
    TRY(st);
    TRY(grow((void **)&t->items, &b->items_cap, t->n_items + 1, sizeof(McItem), t->path));
    t->items[t->n_items++] = it;
    t->n_endings += n;
    return STATUS_OK;
}

/* "tasks/hellaswag_val.jsonl" -> "hellaswag_val". The name is a JSON key and a CSV column, so
 * characters other than letters, digits, '.', '-' and '_' become '_'. */
static void task_name(const char *path, char *name, size_t n) {
    const char *slash = strrchr(path, '/');
    snprintf(name, n, "%s", slash ? slash + 1 : path);
    size_t len = strlen(name);
    if (len > 6 && strcmp(name + len - 6, ".jsonl") == 0) name[len - 6] = '\0';
    else if (len > 5 && strcmp(name + len - 5, ".json") == 0) name[len - 5] = '\0';
    for (char *c = name; *c; c++)
        if (!isalnum((unsigned char)*c) && *c != '.' && *c != '-' && *c != '_') *c = '_';
}

Status mc_task_load(McTask **out, const char *path, int64_t vocab_size, int64_t max_seq) {
    *out = NULL;
    McTask *t = calloc(1, sizeof *t);
    if (!t) return errorf("%s: out of memory", path);
    if (snprintf(t->path, sizeof t->path, "%s", path) >= (int)sizeof t->path) {
        free(t);
        return errorf("%.80s...: task path too long", path);
    }
    task_name(path, t->name, sizeof t->name);
    FILE *f = fopen(path, "r");
    if (!f) {
        free(t);
        return errorf("%s: cannot read: %s", path, strerror(errno));
    }
    TaskBuilder b = {.t = t, .vocab = vocab_size, .max_seq = max_seq};
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int64_t line_no = 0;
    Status st = STATUS_OK;
    while (st == STATUS_OK && (len = getline(&line, &cap, f)) >= 0) {
        line_no++;
        if (strspn(line, " \t\r\n") == (size_t)len) continue;
        if (strlen(line) != (size_t)len) st = errorf("%s:%lld: a NUL byte inside the line", path, (long long)line_no);
        else st = read_item(&b, line, line_no);
    }
    if (st == STATUS_OK && ferror(f)) st = errorf("%s: read error", path);
    if (st == STATUS_OK && t->n_items == 0) st = errorf("%s: no items (one JSON object per line)", path);
    free(line);
    fclose(f);
    if (st != STATUS_OK) {
        mc_task_free(t);
        return st;
    }
    *out = t;
    return STATUS_OK;
}

void mc_task_free(McTask *t) {
    if (!t) return;
    free(t->items);
    free(t->endings);
    free(t->pool);
    free(t);
}

/* Device and host buffers of one scoring pass. */
typedef struct {
    Backend *be;
    ForwardState *st;
    Tensor ids, hidden, rows, logits;
    int32_t *host_ids, *targets;
    int64_t *owner;
    float *host_hidden, *host_rows, *host_logits;
} ScoreBuffers;

static void score_buffers_free(ScoreBuffers *s) {
    Tensor *ts[] = {&s->ids, &s->hidden, &s->rows, &s->logits};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
        if (ts[i]->data) s->be->release(s->be, ts[i]);
    forward_state_destroy(s->st);
    free(s->host_ids);
    free(s->targets);
    free(s->owner);
    free(s->host_hidden);
    free(s->host_rows);
    free(s->host_logits);
}

/* log softmax(z)[target] over V logits, in float64. */
static double log_prob(const float *z, int64_t V, int32_t target) {
    double mx = -INFINITY;
    for (int64_t v = 0; v < V; v++)
        if (z[v] > mx) mx = z[v];
    double s = 0;
    for (int64_t v = 0; v < V; v++) s += exp((double)z[v] - mx);
    return (double)z[target] - (mx + log(s));
}

/* Puts gathered hidden rows through the LM head, C at a time, adding each row's log-probability of
 * its target to the sum of the ending it belongs to. */
static Status score_rows(Model *m, ScoreBuffers *s, int64_t n, int64_t C, double *sums) {
    int64_t D = m->cfg.hidden_size, V = m->cfg.vocab_size;
    for (int64_t c0 = 0; c0 < n; c0 += C) {
        int64_t c = n - c0 < C ? n - c0 : C;
        Tensor x = s->rows, y = s->logits;
        x.shape[0] = c;
        y.shape[0] = c;
        TRY(backend_upload_f32(s->be, x, s->host_rows + c0 * D));
        TRY(s->be->ops.linear_forward(s->be, y, x, model_compute_lm_head(m), tensor_none()));
        TRY(backend_download_f32(s->be, s->host_logits, y));
        for (int64_t r = 0; r < c; r++)
            sums[s->owner[c0 + r]] += log_prob(s->host_logits + r * V, V, s->targets[c0 + r]);
    }
    return STATUS_OK;
}

Status mc_task_score(Model *m, const McTask *t, int64_t batch, TaskScore *out, double *logliks) {
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", t->name);
    Backend *be = m->be;
    int64_t E = t->n_endings, T = t->max_positions, D = m->cfg.hidden_size, V = m->cfg.vocab_size;
    int64_t B = batch < 1 ? 1 : batch < E ? batch : E, max_len = 0;
    int64_t *item_of = malloc((size_t)E * sizeof *item_of);
    double *sums = calloc((size_t)E, sizeof *sums);
    if (!item_of || !sums) {
        free(item_of);
        free(sums);
        return errorf("%s: out of memory", t->path);
    }
    for (int64_t i = 0; i < t->n_items; i++)
        for (int j = 0; j < t->items[i].n_endings; j++) item_of[t->items[i].first_ending + j] = i;
    for (int64_t e = 0; e < E; e++)
        if (t->endings[e].len > max_len) max_len = t->endings[e].len;
    /* At most B * max_len gathered rows per batch, put through the head C at a time. */
    int64_t R = B * max_len, C = LOGITS_CHUNK_BYTES / (V * (int64_t)sizeof(float));
    if (C < 1) C = 1;
    if (C > R) C = R;

    ScoreBuffers s;
    memset(&s, 0, sizeof s);
    s.be = be;
    int64_t N = B * T;
    Status st = forward_state_create(&s.st, m, B, T, 0);
    if (st == STATUS_OK) st = be->alloc(be, &s.ids, DT_I32, 1, &N);
    if (st == STATUS_OK) st = be->alloc(be, &s.hidden, m->dtype, 2, (int64_t[]){N, D});
    if (st == STATUS_OK) st = be->alloc(be, &s.rows, m->dtype, 2, (int64_t[]){C, D});
    /* Logits in f32 whatever the compute dtype: bf16 would round them by up to 1/16 at |z| ~ 16. */
    if (st == STATUS_OK) st = be->alloc(be, &s.logits, DT_F32, 2, (int64_t[]){C, V});
    if (st == STATUS_OK) {
        s.host_ids = malloc((size_t)N * sizeof(int32_t));
        s.targets = malloc((size_t)R * sizeof(int32_t));
        s.owner = malloc((size_t)R * sizeof(int64_t));
        s.host_hidden = malloc((size_t)(N * D) * sizeof(float));
        s.host_rows = malloc((size_t)(R * D) * sizeof(float));
        s.host_logits = malloc((size_t)(C * V) * sizeof(float));
        if (!s.host_ids || !s.targets || !s.owner || !s.host_hidden || !s.host_rows || !s.host_logits)
            st = errorf("%s: out of memory", t->path);
    }
    for (int64_t e0 = 0; st == STATUS_OK && e0 < E; e0 += B) {
        int64_t b = E - e0 < B ? E - e0 : B, n = 0;
        /* Row i reads context + ending without the ending's last token; padding after it is never
         * attended to by the positions scored (attention is causal). */
        memset(s.host_ids, 0, (size_t)N * sizeof(int32_t));
        for (int64_t i = 0; i < b; i++) {
            const McItem *it = &t->items[item_of[e0 + i]];
            const McEnding *en = &t->endings[e0 + i];
            int32_t *row = s.host_ids + i * T;
            memcpy(row, t->pool + it->context, (size_t)it->context_len * sizeof(int32_t));
            memcpy(row + it->context_len, t->pool + en->offset, (size_t)(en->len - 1) * sizeof(int32_t));
        }
        st = be->upload(be, s.ids, s.host_ids);
        if (st == STATUS_OK) st = model_forward(m, s.st, s.ids, s.hidden);
        if (st == STATUS_OK) st = backend_download_f32(be, s.host_hidden, s.hidden);
        for (int64_t i = 0; st == STATUS_OK && i < b; i++) {
            const McItem *it = &t->items[item_of[e0 + i]];
            const McEnding *en = &t->endings[e0 + i];
            for (int64_t k = 0; k < en->len; k++) {
                /* Ending token k is predicted at the position before it. */
                int64_t pos = it->context_len - 1 + k;
                memcpy(s.host_rows + n * D, s.host_hidden + (i * T + pos) * D, (size_t)D * sizeof(float));
                s.targets[n] = t->pool[en->offset + k];
                s.owner[n] = e0 + i;
                n++;
            }
        }
        if (st == STATUS_OK) st = score_rows(m, &s, n, C, sums);
    }
    score_buffers_free(&s);
    if (st == STATUS_OK) {
        for (int64_t i = 0; i < t->n_items; i++) {
            const McItem *it = &t->items[i];
            int best = 0, best_norm = 0;
            double top = -INFINITY, top_norm = -INFINITY;
            for (int j = 0; j < it->n_endings; j++) {
                int64_t e = it->first_ending + j;
                double ll = sums[e], norm = sums[e] / (double)t->endings[e].len;
                if (ll > top) top = ll, best = j;
                if (norm > top_norm) top_norm = norm, best_norm = j;
            }
            out->correct += best == it->label;
            out->correct_norm += best_norm == it->label;
        }
        out->n = t->n_items;
        out->acc = (double)out->correct / (double)out->n;
        out->acc_norm = (double)out->correct_norm / (double)out->n;
        if (logliks) memcpy(logliks, sums, (size_t)E * sizeof *sums);
    }
    free(item_of);
    free(sums);
    if (st != STATUS_OK) return error_context("%s: ", t->path);
    return STATUS_OK;
}

Status tasks_evaluate(Model *m, const ConfigPathList *files, int64_t batch, TaskScores *out) {
    memset(out, 0, sizeof *out);
    for (int i = 0; i < files->count; i++) {
        McTask *t = NULL;
        TRY(mc_task_load(&t, files->items[i], m->cfg.vocab_size, m->max_seq));
        Status st = STATUS_OK;
        for (int j = 0; j < out->count; j++)
            if (strcmp(out->task[j].name, t->name) == 0)
                st = errorf("eval.tasks: %s and %s are both named \"%s\" (the file name without .jsonl)",
                            files->items[j], files->items[i], t->name);
        if (st == STATUS_OK) st = mc_task_score(m, t, batch, &out->task[out->count], NULL);
        mc_task_free(t);
        TRY(st);
        out->count++;
    }
    return STATUS_OK;
}
