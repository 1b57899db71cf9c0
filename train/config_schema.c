/* The config schema as a table: adding a key is one row here, one field in Config and one line in
 * docs/config.md. Also the look-ups over the table and the did-you-mean suggestion. */
#include "train/config_schema.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *const DEVICE_NAMES[] = {"cpu", "cuda", NULL};
static const char *const PRECISION_NAMES[] = {"auto", "fp32", "bf16", NULL};
static const char *const MODEL_INIT_NAMES[] = {"random", NULL};
static const char *const MLA_INIT_NAMES[] = {"svd", "exact", "random", NULL};
static const char *const ROPE_SELECT_NAMES[] = {"high", "low", "uniform", "norm", "rorope", "rorope_free", NULL};
static const char *const LATENT_BASIS_NAMES[] = {"activations", "weights", NULL};
static const char *const OUTPUT_FIT_NAMES[] = {"student_input", "teacher_input", "none", NULL};
static const char *const SCHEDULE_NAMES[] = {"cosine", "linear", "constant", NULL};
static const char *const RECOMPUTE_NAMES[] = {"none", "layers", "mlp", NULL};
static const char *const LOSS_KIND_NAMES[] = {"forward_kl", "reverse_kl", "jsd", NULL};

const char *config_device_name(ConfigDevice d) { return DEVICE_NAMES[d]; }
const char *config_mla_init_name(ConfigMlaInit m) { return MLA_INIT_NAMES[m]; }
const char *config_rope_select_name(ConfigRopeSelect r) { return ROPE_SELECT_NAMES[r]; }
const char *config_schedule_name(ConfigSchedule s) { return SCHEDULE_NAMES[s]; }
const char *config_recompute_name(ConfigRecompute r) { return RECOMPUTE_NAMES[r]; }

#define FIELD(f) offsetof(Config, f)
#define SIZE(f) ((int)sizeof(((Config *)0)->f))
#define ANY_INT CONFIG_JSON_INT_MAX

#define OBJECT(p) {.path = p, .type = KEY_OBJECT}
#define OPTIONAL_OBJECT(p, flag) {.path = p, .type = KEY_OBJECT, .flags = KEY_OPTIONAL, .offset = FIELD(flag)}
#define STRING(p, f, fl) {.path = p, .type = KEY_STRING, .flags = fl, .offset = FIELD(f), .capacity = SIZE(f)}
#define INT(p, f, d, l, h, fl) \
    {.path = p, .type = KEY_INT, .flags = fl, .offset = FIELD(f), .dflt = d, .lo = l, .hi = h}
#define NUMBER(p, f, d, l, h, fl) \
    {.path = p, .type = KEY_NUMBER, .flags = fl, .offset = FIELD(f), .dflt = d, .lo = l, .hi = h}
#define BOOL(p, f, d) {.path = p, .type = KEY_BOOL, .offset = FIELD(f), .dflt = d}
#define ENUM(p, f, n, d) {.path = p, .type = KEY_ENUM, .offset = FIELD(f), .names = n, .dflt = d}
#define STRINGS(p, items, count)                                                                   \
    {.path = p, .type = KEY_STRINGS, .offset = FIELD(items), .count_offset = FIELD(count),        \
     .capacity = CONFIG_LIST_MAX, .item_size = SIZE(items[0])}
#define INTS(p, items, count, l, h, fl)                                                            \
    {.path = p, .type = KEY_INTS, .flags = fl, .offset = FIELD(items), .count_offset = FIELD(count), \
     .capacity = (int)(sizeof(((Config *)0)->items) / sizeof(int64_t)), .lo = l, .hi = h}
#define ARCH(p, f, fl) {.path = p, .type = KEY_ARCH, .flags = fl, .offset = FIELD(f)}
#define SOURCE(p, f, fl) {.path = p, .type = KEY_SOURCE, .flags = fl, .offset = FIELD(f)}
/* init and seed of an inline architecture: they mean nothing next to a model folder. */
#define ARCH_INIT(p, f) {.path = p, .type = KEY_ENUM, .offset = FIELD(f), .names = MODEL_INIT_NAMES, .needs = "arch"}
#define ARCH_SEED(p, f) {.path = p, .type = KEY_INT, .offset = FIELD(f), .lo = 0, .hi = ANY_INT, .needs = "arch"}

/* Sections come before their keys; the effective config is written in this order. Defaults that
 * depend on other keys (min_lr, global_batch, the loss weights without a teacher, the seeds of
 * inline architectures) are filled in by config.c after the table is read. */
const KeySpec CONFIG_KEYS[] = {
    OBJECT("run"),
    STRING("run.dir", run.dir, KEY_REQUIRED),
    INT("run.seed", run.seed, 1234, 0, ANY_INT, 0),
    INT("run.threads", run.threads, 0, 0, 65536, 0),
    ENUM("device", device, DEVICE_NAMES, CONFIG_DEVICE_CPU),
    ENUM("precision", precision, PRECISION_NAMES, CONFIG_PRECISION_AUTO),

    OPTIONAL_OBJECT("teacher", has_teacher),
    STRING("teacher.path", teacher.path, 0),
    ARCH("teacher.arch", teacher.arch, 0),
    ARCH_INIT("teacher.init", teacher.init),
    ARCH_SEED("teacher.seed", teacher.seed),
    STRING("teacher.cache", teacher_cache, 0),

    OBJECT("student"),
    SOURCE("student.init_from", student.init_from, KEY_REQUIRED),
    ARCH("student.init_from.arch", student.init_from.arch, KEY_REQUIRED),
    ARCH_INIT("student.init_from.init", student.init_from.init),
    ARCH_SEED("student.init_from.seed", student.init_from.seed),
    OPTIONAL_OBJECT("student.mla", student.has_mla),
    INT("student.mla.kv_lora_rank", student.mla.kv_lora_rank, 0, 0, ANY_INT, 0),
    INT("student.mla.qk_rope_head_dim", student.mla.qk_rope_head_dim, 0, 2, ANY_INT, KEY_REQUIRED | KEY_EVEN),
    INT("student.mla.qk_nope_head_dim", student.mla.qk_nope_head_dim, 0, 0, ANY_INT, KEY_REQUIRED),
    INT("student.mla.v_head_dim", student.mla.v_head_dim, 0, 1, ANY_INT, KEY_REQUIRED),
    INT("student.mla.q_lora_rank", student.mla.q_lora_rank, 0, 0, ANY_INT, 0),
    INTS("student.mla.gqa_layers", student.mla.gqa_layers, student.mla.n_gqa_layers, 0, MODEL_MAX_LAYERS - 1,
         KEY_DISTINCT),
    INT("student.mla.auto_gqa_layers", student.mla.auto_gqa_layers, 0, 0, MODEL_MAX_LAYERS - 1, 0),
    ENUM("student.mla.init", student.mla.init, MLA_INIT_NAMES, CONFIG_MLA_INIT_SVD),
    ENUM("student.mla.rope_select", student.mla.rope_select, ROPE_SELECT_NAMES, CONFIG_ROPE_SELECT_ROROPE),
    ENUM("student.mla.latent_basis", student.mla.latent_basis, LATENT_BASIS_NAMES, CONFIG_LATENT_BASIS_ACTIVATIONS),
    ENUM("student.mla.output_fit", student.mla.output_fit, OUTPUT_FIT_NAMES, CONFIG_OUTPUT_FIT_STUDENT_INPUT),
    NUMBER("student.mla.energy", student.mla.energy, 0, 0, 1, 0),
    BOOL("student.mla.latent_norm", student.mla.latent_norm, 0),
    BOOL("student.mla.q_norm", student.mla.q_norm, 0),
    BOOL("student.mla.drop_biases", student.mla.drop_biases, 0),
    INT("student.mla.calibration_tokens", student.mla.calibration_tokens, 16384, 1, ANY_INT, 0),
    BOOL("student.mla.allow_rebase", student.mla.allow_rebase, 0),

    OBJECT("data"),
    STRINGS("data.train", data.train.items, data.train.count),
    STRINGS("data.val", data.val.items, data.val.count),
    INT("data.seq_len", data.seq_len, 2048, 1, ANY_INT, 0),

    OBJECT("loss"),
    NUMBER("loss.kl_weight", loss.kl_weight, 0.5, 0, INFINITY, 0),
    NUMBER("loss.ce_weight", loss.ce_weight, 0.5, 0, INFINITY, 0),
    NUMBER("loss.temperature", loss.temperature, 1.0, 0, INFINITY, KEY_LO_OPEN),
    ENUM("loss.kind", loss.kind, LOSS_KIND_NAMES, CONFIG_LOSS_FORWARD_KL),
    NUMBER("loss.jsd_beta", loss.jsd_beta, 0.5, 0, 1, KEY_LO_OPEN | KEY_HI_OPEN),
    INT("loss.chunk_tokens", loss.chunk_tokens, 0, 0, ANY_INT, 0),

    OBJECT("optim"),
    NUMBER("optim.lr", optim.lr, 1e-4, 0, INFINITY, KEY_LO_OPEN),
    NUMBER("optim.min_lr", optim.min_lr, 0, 0, INFINITY, 0),
    INT("optim.warmup_steps", optim.warmup_steps, 0, 0, ANY_INT, 0),
    ENUM("optim.schedule", optim.schedule, SCHEDULE_NAMES, CONFIG_SCHEDULE_COSINE),
    NUMBER("optim.weight_decay", optim.weight_decay, 0.1, 0, INFINITY, 0),
    NUMBER("optim.beta1", optim.beta1, 0.9, 0, 1, KEY_HI_OPEN),
    NUMBER("optim.beta2", optim.beta2, 0.95, 0, 1, KEY_HI_OPEN),
    NUMBER("optim.eps", optim.eps, 1e-8, 0, INFINITY, KEY_LO_OPEN),
    NUMBER("optim.grad_clip", optim.grad_clip, 1.0, 0, INFINITY, 0),
    BOOL("optim.decay_norms_and_embeddings", optim.decay_norms_and_embeddings, 0),

    OBJECT("train"),
    INT("train.micro_batch", train.micro_batch, 1, 1, ANY_INT, 0),
    INT("train.global_batch", train.global_batch, 0, 1, ANY_INT, 0),
    INT("train.max_steps", train.max_steps, 1000, 1, ANY_INT, 0),
    ENUM("train.recompute", train.recompute, RECOMPUTE_NAMES, CONFIG_RECOMPUTE_NONE),

    OBJECT("checkpoint"),
    INT("checkpoint.every_steps", checkpoint.every_steps, 500, 0, ANY_INT, 0),
    INT("checkpoint.keep_last", checkpoint.keep_last, 3, 1, ANY_INT, 0),

    OBJECT("eval"),
    INT("eval.every_steps", eval.every_steps, 0, 0, ANY_INT, 0),
    INT("eval.max_windows", eval.max_windows, 512, 0, ANY_INT, 0),
    STRINGS("eval.tasks", eval.tasks.items, eval.tasks.count),

    OBJECT("log"),
    INT("log.every_steps", log.every_steps, 10, 1, ANY_INT, 0),

    OBJECT("dist"),
    BOOL("dist.zero1", dist.zero1, 0),
    NUMBER("dist.timeout_s", dist.timeout_s, 600, 0, INFINITY, KEY_LO_OPEN),
    BOOL("dist.overlap", dist.overlap, 1),
};
const int CONFIG_N_KEYS = (int)(sizeof CONFIG_KEYS / sizeof CONFIG_KEYS[0]);

const KeySpec *config_key_find(const char *path) {
    for (int i = 0; i < CONFIG_N_KEYS; i++)
        if (strcmp(CONFIG_KEYS[i].path, path) == 0) return &CONFIG_KEYS[i];
    return NULL;
}

const char *config_key_leaf(const char *path) {
    const char *dot = strrchr(path, '.');
    return dot ? dot + 1 : path;
}

/* Whether key sits directly in the section at parent_path ("" = top level). */
static int is_child_of(const KeySpec *key, const char *parent_path) {
    size_t n = strlen(parent_path);
    if (n == 0) return strchr(key->path, '.') == NULL;
    return strncmp(key->path, parent_path, n) == 0 && key->path[n] == '.' && !strchr(key->path + n + 1, '.');
}

const KeySpec *config_key_parent(const KeySpec *key) {
    const char *leaf = config_key_leaf(key->path);
    if (leaf == key->path) return NULL;
    size_t n = (size_t)(leaf - 1 - key->path);
    for (int i = 0; i < CONFIG_N_KEYS; i++)
        if (strlen(CONFIG_KEYS[i].path) == n && strncmp(CONFIG_KEYS[i].path, key->path, n) == 0)
            return &CONFIG_KEYS[i];
    return NULL;
}

int config_key_active(const Config *cfg, const KeySpec *key) {
    const char *base = (const char *)cfg;
    for (const KeySpec *p = config_key_parent(key); p; p = config_key_parent(p)) {
        if ((p->flags & KEY_OPTIONAL) && !*(const int *)(base + p->offset)) return 0;
        if (p->type == KEY_SOURCE && ((const ConfigModelSource *)(base + p->offset))->path[0]) return 0;
    }
    return 1;
}

/* Edit distance with adjacent transpositions ("lrr" -> "lr" is 1, "rnak" -> "rank" is 1), ignoring
 * case; words too long to be keys are far from everything. */
static int edit_distance(const char *a, const char *b) {
    enum { MAX_WORD = 64 };
    size_t n = strlen(a), m = strlen(b);
    if (n >= MAX_WORD || m >= MAX_WORD) return 1 << 20;
    int d[MAX_WORD + 1][MAX_WORD + 1];
    for (size_t i = 0; i <= n; i++) d[i][0] = (int)i;
    for (size_t j = 0; j <= m; j++) d[0][j] = (int)j;
    for (size_t i = 1; i <= n; i++)
        for (size_t j = 1; j <= m; j++) {
            int ca = tolower((unsigned char)a[i - 1]), cb = tolower((unsigned char)b[j - 1]);
            int best = d[i - 1][j - 1] + (ca != cb);
            if (d[i - 1][j] + 1 < best) best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && ca == tolower((unsigned char)b[j - 2]) && tolower((unsigned char)a[i - 2]) == cb &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    return d[n][m];
}

/* Close enough to be a slip of the keyboard rather than a different word. Short words must also
 * start alike: "lrr" is "lr" mistyped, but "gpu" is not "cpu". A word that spells the name out
 * ("optimizer" for "optim") or stops short of it ("kv_lora" for "kv_lora_rank") is close whatever
 * the distance. */
static int is_close(const char *word, const char *name, int distance) {
    size_t n = strlen(word), m = strlen(name);
    if (m >= 4 && n > m && strncasecmp(word, name, m) == 0) return 1;
    if (n >= 4 && m > n && strncasecmp(name, word, n) == 0) return 1; /* and one that stops short */
    int limit = n <= 3 ? 1 : n <= 7 ? 2 : 3;
    if (n <= 4 && tolower((unsigned char)word[0]) != tolower((unsigned char)name[0])) return 0;
    return distance <= limit;
}

const char *config_closest_name(const char *word, const char *const *names) {
    const char *best = NULL;
    int best_distance = 1 << 20;
    /* The nearest of the close names: a nearer one that is not close (a short other key, "q_norm"
     * beside "kv_lora") must not hide the one the word stops short of ("kv_lora_rank"). */
    for (int i = 0; names[i]; i++) {
        int d = edit_distance(word, names[i]);
        if (d < best_distance && is_close(word, names[i], d)) best = names[i], best_distance = d;
    }
    return best;
}

const char *config_key_suggest(const char *parent_path, const char *key) {
    const char *names[64];
    int n = 0;
    for (int i = 0; i < CONFIG_N_KEYS && n < 63; i++)
        if (is_child_of(&CONFIG_KEYS[i], parent_path)) names[n++] = config_key_leaf(CONFIG_KEYS[i].path);
    names[n] = NULL;
    const char *close = config_closest_name(key, names);
    if (close) return close;
    /* A key given without its section ("lr" for "optim.lr"): the one key of that name anywhere. */
    const char *found = NULL;
    for (int i = 0; i < CONFIG_N_KEYS; i++)
        if (strcasecmp(config_key_leaf(CONFIG_KEYS[i].path), key) == 0 && strchr(CONFIG_KEYS[i].path, '.')) {
            if (found) return NULL;
            found = CONFIG_KEYS[i].path;
        }
    return found;
}

void config_format_number(char *buf, size_t n, double x) {
    if (x == floor(x) && fabs(x) < 1e16) {
        snprintf(buf, n, "%.0f", x);
        return;
    }
    for (int digits = 1; digits <= 17; digits++) {
        snprintf(buf, n, "%.*g", digits, x);
        if (strtod(buf, NULL) == x) return;
    }
}
