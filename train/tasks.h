/* Multiple-choice tasks (eval.tasks): JSON lines of {"context": [ids], "endings": [[ids], ...],
 * "label": k}, each ending scored by the log-likelihood of its tokens given the context, summed and
 * per token, and the accuracy of both choices. The format and its converter: docs/eval.md. */
#pragma once

#include <stdint.h>

#include "model/model.h"
#include "train/config.h"

enum { TASKS_MAX = CONFIG_LIST_MAX, TASK_NAME_MAX = 64 };

/* One line of a task file. Its tokens live in the task's token pool. */
typedef struct {
    int64_t line;               /* 1-based line in the file, for messages */
    int label;
    int n_endings;
    int64_t context, context_len;   /* offset and length in the pool */
    int64_t first_ending;           /* index of its first ending in McTask.endings */
} McItem;

typedef struct {
    int64_t offset, len;        /* in the pool; len >= 1 */
} McEnding;

typedef struct {
    char path[CONFIG_PATH_MAX];
    char name[TASK_NAME_MAX];   /* the file name without its directory and .jsonl */
    McItem *items;
    int64_t n_items;
    McEnding *endings;          /* every item's endings, in item order */
    int64_t n_endings;
    int32_t *pool;
    int64_t max_positions;      /* the longest context + ending, less one: the positions scoring needs */
} McTask;

/* Reads and checks a task file for a model with vocab_size tokens and max_seq positions. Every
 * error is one line naming the file and line: not JSON, a missing or empty context or ending,
 * fewer than two endings, a label out of range, a token id not below vocab_size, a context +
 * ending longer than max_seq + 1 tokens, or a file with no items. */
Status mc_task_load(McTask **out, const char *path, int64_t vocab_size, int64_t max_seq);
void mc_task_free(McTask *t);

typedef struct {
    char name[TASK_NAME_MAX];
    int64_t n, correct, correct_norm;
    double acc;                 /* share of items whose highest summed log-likelihood is the label's */
    double acc_norm;            /* the same with the log-likelihood per ending token */
} TaskScore;

typedef struct {
    int count;
    TaskScore task[TASKS_MAX];
} TaskScores;

/* Scores every ending of t with m: log p(ending | context) = sum over the ending's tokens of
 * log softmax(logits)[token], logits from m->lm_head at the position before each token, in
 * float64. Sequences go `batch` at a time (context + ending, padded to the task's longest).
 * logliks, when not NULL, receives [t->n_endings] summed log-likelihoods in file order. The
 * first of equal scores wins. */
Status mc_task_score(Model *m, const McTask *t, int64_t batch, TaskScore *out, double *logliks);

/* Loads and scores every file of eval.tasks (names must differ); out->count = 0 when none. */
Status tasks_evaluate(Model *m, const ConfigPathList *files, int64_t batch, TaskScores *out);
