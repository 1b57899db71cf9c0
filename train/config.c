/* Reading a config: the file, then the --set overrides on its JSON tree, then the schema table
 * (config_schema.c) walked key by key, then the checks that relate one key to another. */
#include "train/config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/utf8.h"
#include "model/hf/hf_config.h"
#include "train/config_schema.h"

/* A config is a few kilobytes; anything this large is a wrong file. */
static const long CONFIG_FILE_MAX = 16L << 20;

enum { JSON_PATH_MAX = 768, MESSAGE_MAX = 1024 };

typedef struct {
    const char *name;        /* the config file's name, "" when none */
    unsigned char *given;    /* per schema row: the key was in the JSON */
} Reader;

static Status failv(const char *name, const char *path, const char *fmt, va_list ap) {
    char message[MESSAGE_MAX];
    vsnprintf(message, sizeof message, fmt, ap);
    return errorf("%s%s%s%s%s", name, *name ? ": " : "", path, *path ? ": " : "", message);
}

/* "<file>: <json path>: <message>", leaving out whichever of the first two is empty. */
static Status __attribute__((format(printf, 3, 4))) fail(const char *name, const char *path, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    failv(name, path, fmt, ap);
    va_end(ap);
    return STATUS_ERROR;
}

static const char *json_kind(const cJSON *v) {
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v) ? "true" : "false";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "a list";
    if (cJSON_IsObject(v)) return "an object";
    return "a number";
}

/* A JSON path into a JSON_PATH_MAX buffer; a longer one (only from absurd keys) is cut short. */
static const char *__attribute__((format(printf, 2, 3))) path_printf(char buf[JSON_PATH_MAX], const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, JSON_PATH_MAX, fmt, ap);
    va_end(ap);
    return buf;
}

static const char *join(char buf[JSON_PATH_MAX], const char *parent, const char *key) {
    return path_printf(buf, "%s%s%s", parent, *parent ? "." : "", key);
}

/* The node at a dotted path below root, or NULL when some part is absent or not an object. */
static cJSON *node_at(const cJSON *root, const char *path) {
    char part[JSON_PATH_MAX];
    const cJSON *node = root;
    while (node && *path) {
        const char *dot = strchr(path, '.');
        size_t n = dot ? (size_t)(dot - path) : strlen(path);
        if (n >= sizeof part || !cJSON_IsObject(node)) return NULL;
        memcpy(part, path, n);
        part[n] = '\0';
        node = cJSON_GetObjectItemCaseSensitive(node, part);
        path += n + (dot != NULL);
    }
    return (cJSON *)node;
}

static void line_column(const char *text, const char *at, int *line, int *column) {
    *line = 1, *column = 1;
    for (const char *p = text; p < at && *p; p++) {
        if (*p == '\n') *line += 1, *column = 1;
        else if (((unsigned char)*p & 0xC0) != 0x80) *column += 1;   /* characters, not bytes */
    }
}

static Status parse_text(const char *text, size_t len, const char *name, cJSON **out) {
    int line, column;
    size_t bad = utf8_invalid_at((const unsigned char *)text, len);
    if (bad < len) {
        line_column(text, text + bad, &line, &column);
        return fail(name, "", "invalid UTF-8 at line %d, column %d", line, column);
    }
    if (strlen(text) != len) {
        line_column(text, text + strlen(text), &line, &column);
        return fail(name, "", "invalid JSON at line %d, column %d (a NUL byte)", line, column);
    }
    const char *end = NULL;
    *out = cJSON_ParseWithLengthOpts(text, len + 1, &end, 1);
    if (!*out) {
        line_column(text, end ? end : text, &line, &column);
        return fail(name, "", "invalid JSON at line %d, column %d", line, column);
    }
    if (!cJSON_IsObject(*out)) {
        Status st = fail(name, "", "a config is a JSON object, got %s", json_kind(*out));
        cJSON_Delete(*out);
        *out = NULL;
        return st;
    }
    return STATUS_OK;
}

/* cJSON reads the first of two equal keys and Python's json the last: a duplicate is ambiguous. */
static Status check_duplicates(const Reader *r, const cJSON *node, const char *path) {
    char child_path[JSON_PATH_MAX];
    int i = 0;
    for (const cJSON *a = node->child; a; a = a->next, i++) {
        if (cJSON_IsObject(node)) {
            join(child_path, path, a->string);
            for (const cJSON *b = a->next; b; b = b->next)
                if (strcmp(a->string, b->string) == 0) return fail(r->name, child_path, "key given twice");
        } else {
            path_printf(child_path, "%s[%d]", path, i);
        }
        if (cJSON_IsObject(a) || cJSON_IsArray(a)) TRY(check_duplicates(r, a, child_path));
    }
    return STATUS_OK;
}

static Status unknown_key(const char *name, const char *parent, const char *key, const char *shown) {
    const char *suggestion = config_key_suggest(parent, key);
    if (suggestion) return fail(name, shown, "unknown key (did you mean \"%s\"?)", suggestion);
    return fail(name, shown, "unknown key");
}

/* Every key of every section must be in the schema; sections must be objects. Inline
 * architectures are left to hf_config_from_json. */
static Status check_known_keys(const Reader *r, const cJSON *obj, const char *path) {
    char child_path[JSON_PATH_MAX];
    for (const cJSON *e = obj->child; e; e = e->next) {
        join(child_path, path, e->string);
        const KeySpec *key = config_key_find(child_path);
        if (!key) return unknown_key(r->name, path, e->string, child_path);
        if (key->type == KEY_OBJECT) {
            if (!cJSON_IsObject(e)) return fail(r->name, child_path, "expected an object, got %s", json_kind(e));
            TRY(check_known_keys(r, e, child_path));
        } else if (key->type == KEY_SOURCE) {
            if (cJSON_IsObject(e)) TRY(check_known_keys(r, e, child_path));
            else if (!cJSON_IsString(e))
                return fail(r->name, child_path, "expected a model folder (a string) or an object with \"arch\", got %s",
                            json_kind(e));
        } else if (key->type == KEY_ARCH && !cJSON_IsObject(e)) {
            return fail(r->name, child_path, "expected an object of HF config.json keys, got %s", json_kind(e));
        }
    }
    return STATUS_OK;
}

/* ---- --set ---- */

/* Checks a --set path against the schema and gives its row; *target is NULL below an inline arch,
 * whose keys are HF's, checked later. */
static Status check_set_path(const Reader *r, const char *set_path, const KeySpec **target) {
    char prefix[JSON_PATH_MAX] = "", part[JSON_PATH_MAX], path[JSON_PATH_MAX];
    const char *p = set_path;
    *target = NULL;
    for (;;) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        if (n == 0 || n >= sizeof part) return fail(r->name, "", "--set %s: expected key.path=value", set_path);
        memcpy(part, p, n);
        part[n] = '\0';
        join(path, prefix, part);
        const KeySpec *key = config_key_find(path);
        char shown[JSON_PATH_MAX];
        path_printf(shown, "--set %s", set_path);
        if (!key) {
            if (!dot) return unknown_key(r->name, prefix, part, shown);
            const char *suggestion = config_key_suggest(prefix, part);
            if (suggestion) return fail(r->name, shown, "unknown key \"%s\" (did you mean \"%s\"?)", part, suggestion);
            return fail(r->name, shown, "unknown key \"%s\"", part);
        }
        if (!dot) {
            *target = key;
            return STATUS_OK;
        }
        if (key->type == KEY_ARCH) return STATUS_OK;
        if (key->type != KEY_OBJECT && key->type != KEY_SOURCE)
            return fail(r->name, shown, "%s is not an object", path);
        snprintf(prefix, sizeof prefix, "%s", path);
        p = dot + 1;
    }
}

/* "key.path=value": value is JSON when it parses as JSON, else a bare string; null removes the key.
 * For a shell's sake, an unquoted number or bool given to a string key is the string as written
 * (run.dir=2024), and one string given to a list of strings is that list of one (data.train=a.h5). */
static Status apply_set(const Reader *r, cJSON *root, const char *set) {
    const char *eq = strchr(set, '=');
    char set_path[JSON_PATH_MAX];
    if (!eq || eq == set || (size_t)(eq - set) >= sizeof set_path)
        return fail(r->name, "", "--set %s: expected key.path=value", set);
    memcpy(set_path, set, (size_t)(eq - set));
    set_path[eq - set] = '\0';
    const KeySpec *target;
    TRY(check_set_path(r, set_path, &target));

    const char *value_text = eq + 1;
    cJSON *value = cJSON_ParseWithOpts(value_text, NULL, 1);
    KeyType type = target ? target->type : KEY_OBJECT;
    if (value && (cJSON_IsNumber(value) || cJSON_IsBool(value)) && (type == KEY_STRING || type == KEY_SOURCE)) {
        cJSON_Delete(value);
        value = NULL;
    }
    if (!value) value = cJSON_CreateString(value_text);
    if (value && cJSON_IsString(value) && type == KEY_STRINGS) {
        cJSON *list = cJSON_CreateArray();
        if (list) cJSON_AddItemToArray(list, value);
        else cJSON_Delete(value);
        value = list;
    }
    if (!value) return fail(r->name, "", "--set %s: out of memory", set_path);

    cJSON *node = root;
    char walked[JSON_PATH_MAX], part[JSON_PATH_MAX];
    const char *p = set_path;
    for (const char *dot; (dot = strchr(p, '.')); p = dot + 1) {
        size_t n = (size_t)(dot - p);
        memcpy(part, p, n);
        part[n] = '\0';
        path_printf(walked, "%.*s", (int)(dot - set_path), set_path);
        cJSON *child = cJSON_GetObjectItemCaseSensitive(node, part);
        if (!child && cJSON_IsNull(value)) {   /* removing what is not there */
            cJSON_Delete(value);
            return STATUS_OK;
        }
        if (!child) {
            child = cJSON_CreateObject();
            if (!child || !cJSON_AddItemToObject(node, part, child)) {
                cJSON_Delete(child);
                cJSON_Delete(value);
                return fail(r->name, "", "--set %s: out of memory", set_path);
            }
        } else if (!cJSON_IsObject(child)) {
            Status st = fail(r->name, "", "--set %s: %s is %s, not an object", set_path, walked, json_kind(child));
            cJSON_Delete(value);
            return st;
        }
        node = child;
    }
    if (cJSON_IsNull(value)) {
        cJSON_DeleteItemFromObjectCaseSensitive(node, p);
        cJSON_Delete(value);
    } else if (cJSON_GetObjectItemCaseSensitive(node, p)) {
        cJSON_ReplaceItemInObjectCaseSensitive(node, p, value);
    } else if (!cJSON_AddItemToObject(node, p, value)) {
        cJSON_Delete(value);
        return fail(r->name, "", "--set %s: out of memory", set_path);
    }
    return STATUS_OK;
}

/* ---- values ---- */

static Status check_range(const Reader *r, const KeySpec *key, const char *path, double x) {
    int below = (key->flags & KEY_LO_OPEN) ? x <= key->lo : x < key->lo;
    int above = (key->flags & KEY_HI_OPEN) ? x >= key->hi : x > key->hi;
    if (!below && !above) return STATUS_OK;
    char lo[40], hi[40], got[40];
    config_format_number(lo, sizeof lo, key->lo);
    config_format_number(hi, sizeof hi, key->hi);
    config_format_number(got, sizeof got, x);
    const char *lo_op = (key->flags & KEY_LO_OPEN) ? ">" : ">=";
    if (isinf(key->hi) || (key->hi == CONFIG_JSON_INT_MAX && below))
        return fail(r->name, path, "must be %s %s, got %s", lo_op, lo, got);
    if (key->hi == CONFIG_JSON_INT_MAX) return fail(r->name, path, "must be <= %s, got %s", hi, got);
    return fail(r->name, path, "must be in %c%s, %s%c, got %s", (key->flags & KEY_LO_OPEN) ? '(' : '[', lo, hi,
                (key->flags & KEY_HI_OPEN) ? ')' : ']', got);
}

static Status read_number(const Reader *r, const KeySpec *key, const char *path, const cJSON *v, double *out) {
    if (!cJSON_IsNumber(v)) return fail(r->name, path, "expected a number, got %s", json_kind(v));
    if (!isfinite(v->valuedouble)) return fail(r->name, path, "must be finite, got %s", v->valuedouble > 0 ? "inf" : "-inf");
    TRY(check_range(r, key, path, v->valuedouble));
    *out = v->valuedouble;
    return STATUS_OK;
}

static Status read_int(const Reader *r, const KeySpec *key, const char *path, const cJSON *v, int64_t *out) {
    if (!cJSON_IsNumber(v)) return fail(r->name, path, "expected an integer, got %s", json_kind(v));
    double x = v->valuedouble;
    if (!isfinite(x) || x != floor(x)) {
        char got[40];
        config_format_number(got, sizeof got, x);
        return fail(r->name, path, "expected an integer, got %s", got);
    }
    TRY(check_range(r, key, path, x));
    if ((key->flags & KEY_EVEN) && fmod(x, 2.0) != 0)
        return fail(r->name, path, "must be even, got %lld", (long long)x);
    *out = (int64_t)x;
    return STATUS_OK;
}

static Status read_string(const Reader *r, const char *path, const cJSON *v, char *out, int capacity) {
    if (!cJSON_IsString(v)) return fail(r->name, path, "expected a string, got %s", json_kind(v));
    size_t n = strlen(v->valuestring);
    if (n == 0) return fail(r->name, path, "must not be empty");
    if (n >= (size_t)capacity) return fail(r->name, path, "is %zu bytes long, at most %d", n, capacity - 1);
    memcpy(out, v->valuestring, n + 1);
    return STATUS_OK;
}

static Status read_enum(const Reader *r, const KeySpec *key, const char *path, const cJSON *v, int *out) {
    char choices[256] = "";
    for (int i = 0; key->names[i]; i++) {
        if (cJSON_IsString(v) && strcmp(v->valuestring, key->names[i]) == 0) {
            *out = i;
            return STATUS_OK;
        }
        size_t n = strlen(choices);
        snprintf(choices + n, sizeof choices - n, "%s\"%s\"", i == 0 ? "" : key->names[i + 1] ? ", " : " or ",
                 key->names[i]);
    }
    if (!cJSON_IsString(v)) return fail(r->name, path, "expected %s, got %s", choices, json_kind(v));
    const char *suggestion = config_closest_name(v->valuestring, key->names);
    if (suggestion)
        return fail(r->name, path, "expected %s, got \"%s\" (did you mean \"%s\"?)", choices, v->valuestring, suggestion);
    return fail(r->name, path, "expected %s, got \"%s\"", choices, v->valuestring);
}

static Status read_list(const Reader *r, const KeySpec *key, const char *path, const cJSON *v, char *base) {
    const char *what = key->type == KEY_STRINGS ? "a list of strings" : "a list of integers";
    if (!cJSON_IsArray(v)) return fail(r->name, path, "expected %s, got %s", what, json_kind(v));
    int n = cJSON_GetArraySize(v);
    if (n > key->capacity) return fail(r->name, path, "has %d entries, at most %d", n, key->capacity);
    int *count = (int *)(base + key->count_offset);
    *count = 0;
    char item_path[JSON_PATH_MAX];
    for (const cJSON *e = v->child; e; e = e->next) {
        path_printf(item_path, "%s[%d]", path, *count);
        if (key->type == KEY_STRINGS) {
            TRY(read_string(r, item_path, e, base + key->offset + (size_t)*count * (size_t)key->item_size,
                            key->item_size));
        } else {
            int64_t *items = (int64_t *)(base + key->offset);
            TRY(read_int(r, key, item_path, e, &items[*count]));
            for (int j = 0; (key->flags & KEY_DISTINCT) && j < *count; j++)
                if (items[j] == items[*count])
                    return fail(r->name, item_path, "%lld is listed twice", (long long)items[j]);
        }
        *count += 1;
    }
    return STATUS_OK;
}

static Status read_arch(const Reader *r, const char *path, const cJSON *v, ConfigArch *arch) {
    char *text = cJSON_PrintUnformatted(v);
    if (!text) return fail(r->name, path, "out of memory");
    size_t n = strlen(text);
    if (n >= sizeof arch->json) {
        free(text);
        return fail(r->name, path, "is %zu bytes as JSON, at most %zu", n, sizeof arch->json - 1);
    }
    memcpy(arch->json, text, n + 1);
    free(text);
    char where[JSON_PATH_MAX];
    path_printf(where, "%s%s%s", r->name, *r->name ? ": " : "", path);
    TRY(hf_config_from_json(v, where, HF_KEYS_REJECT_UNKNOWN, &arch->model));
    arch->present = 1;
    return STATUS_OK;
}

static void set_default(Config *cfg, const KeySpec *key) {
    char *field = (char *)cfg + key->offset;
    switch (key->type) {
    case KEY_INT: *(int64_t *)field = (int64_t)key->dflt; break;
    case KEY_NUMBER: *(double *)field = key->dflt; break;
    case KEY_BOOL:
    case KEY_ENUM: *(int *)field = (int)key->dflt; break;
    default: break;   /* strings, lists, sections and sources start empty */
    }
}

static Status read_key(const Reader *r, const KeySpec *key, const cJSON *v, Config *cfg) {
    char *field = (char *)cfg + key->offset;
    const char *path = key->path;
    switch (key->type) {
    case KEY_OBJECT:
        if (key->flags & KEY_OPTIONAL) *(int *)field = 1;
        return STATUS_OK;
    case KEY_STRING: return read_string(r, path, v, field, key->capacity);
    case KEY_INT: return read_int(r, key, path, v, (int64_t *)field);
    case KEY_NUMBER: return read_number(r, key, path, v, (double *)field);
    case KEY_BOOL:
        if (!cJSON_IsBool(v)) return fail(r->name, path, "expected true or false, got %s", json_kind(v));
        *(int *)field = cJSON_IsTrue(v);
        return STATUS_OK;
    case KEY_ENUM: return read_enum(r, key, path, v, (int *)field);
    case KEY_STRINGS:
    case KEY_INTS: return read_list(r, key, path, v, (char *)cfg);
    case KEY_ARCH: return read_arch(r, path, v, (ConfigArch *)field);
    case KEY_SOURCE: {
        ConfigModelSource *src = (ConfigModelSource *)field;
        if (cJSON_IsObject(v)) return STATUS_OK;   /* its keys are rows of their own */
        return read_string(r, path, v, src->path, (int)sizeof src->path);
    }
    }
    return STATUS_OK;
}

/* Every row in table order: sections before their keys, so whether a section applies is known
 * before its keys are read. */
static Status read_keys(const Reader *r, const cJSON *root, Config *cfg) {
    for (int i = 0; i < CONFIG_N_KEYS; i++) set_default(cfg, &CONFIG_KEYS[i]);
    for (int i = 0; i < CONFIG_N_KEYS; i++) {
        const KeySpec *key = &CONFIG_KEYS[i];
        if (!config_key_active(cfg, key)) continue;
        const cJSON *v = node_at(root, key->path);
        if (!v) {
            if (key->flags & KEY_REQUIRED) return fail(r->name, key->path, "required key is missing");
            continue;
        }
        r->given[i] = 1;
        if (key->needs) {
            const KeySpec *parent = config_key_parent(key);
            char sibling[JSON_PATH_MAX];
            join(sibling, parent ? parent->path : "", key->needs);
            if (!node_at(root, sibling)) return fail(r->name, key->path, "given without %s", sibling);
        }
        TRY(read_key(r, key, v, cfg));
    }
    return STATUS_OK;
}

/* ---- checks across keys, and defaults that follow other keys ---- */

static int given(const Reader *r, const char *path) {
    const KeySpec *key = config_key_find(path);
    return key && r->given[key - CONFIG_KEYS];
}

static Status check_source(const Reader *r, const char *path, ConfigModelSource *src, int64_t run_seed) {
    char seed_path[JSON_PATH_MAX];
    if (!src->path[0] && !src->arch.present)
        return fail(r->name, path, "give \"path\" (an HF model folder) or \"arch\" (an inline architecture)");
    if (src->path[0] && src->arch.present)
        return fail(r->name, path, "give \"path\" or \"arch\", not both");
    if (src->arch.present && !given(r, join(seed_path, path, "seed"))) src->seed = run_seed;
    return STATUS_OK;
}

static Status check_mla(const Reader *r, Config *cfg) {
    ConfigMla *m = &cfg->student.mla;
    if (m->energy == 0 && m->kv_lora_rank < 1) {
        if (!given(r, "student.mla.kv_lora_rank"))
            return fail(r->name, "student.mla.kv_lora_rank", "required key is missing (or give student.mla.energy)");
        return fail(r->name, "student.mla.kv_lora_rank", "must be >= 1 (or 0 with student.mla.energy > 0), got %lld",
                    (long long)m->kv_lora_rank);
    }
    if (cfg->student.init_from.arch.present)
        TRY(config_check_layers(cfg, cfg->student.init_from.arch.model.num_hidden_layers));
    return STATUS_OK;
}

/* x / 10 as the double nearest the decimal one tenth of x's shortest form (1e-4 -> 1e-5, 3e-4 -> 3e-5),
 * so that a default min_lr reads as the number a person would write. */
static double one_tenth(double x) {
    char text[48], shifted[96];
    config_format_number(text, sizeof text, x);
    char *e = strpbrk(text, "eE");
    long exponent = 0;
    if (e) {
        exponent = strtol(e + 1, NULL, 10);
        *e = '\0';
    }
    snprintf(shifted, sizeof shifted, "%se%ld", text, exponent - 1);
    return strtod(shifted, NULL);
}

static Status check_across(const Reader *r, Config *cfg) {
    char a[40], b[40];
    if (cfg->has_teacher) TRY(check_source(r, "teacher", &cfg->teacher, cfg->run.seed));
    TRY(check_source(r, "student.init_from", &cfg->student.init_from, cfg->run.seed));
    if (cfg->student.has_mla) TRY(check_mla(r, cfg));

    /* Without a teacher the loss is next-token cross-entropy alone. */
    if (!cfg->has_teacher) {
        if (!given(r, "loss.kl_weight")) cfg->loss.kl_weight = 0;
        if (!given(r, "loss.ce_weight")) cfg->loss.ce_weight = 1;
        if (cfg->loss.kl_weight != 0) {
            config_format_number(a, sizeof a, cfg->loss.kl_weight);
            return fail(r->name, "loss.kl_weight", "must be 0 without a teacher, got %s", a);
        }
    }
    if (cfg->loss.kl_weight == 0 && cfg->loss.ce_weight == 0)
        return fail(r->name, "loss", "kl_weight and ce_weight are both 0: there is nothing to train on");

    if (!given(r, "optim.min_lr")) cfg->optim.min_lr = one_tenth(cfg->optim.lr);
    if (cfg->optim.min_lr > cfg->optim.lr) {
        config_format_number(a, sizeof a, cfg->optim.lr);
        config_format_number(b, sizeof b, cfg->optim.min_lr);
        return fail(r->name, "optim.min_lr", "must be <= optim.lr = %s, got %s", a, b);
    }

    int64_t micro = cfg->train.micro_batch, global = cfg->train.global_batch;
    if (!given(r, "train.global_batch")) cfg->train.global_batch = micro;
    else if (global < micro || global % micro != 0)
        return fail(r->name, "train.global_batch", "must be a multiple of train.micro_batch = %lld, got %lld",
                    (long long)micro, (long long)global);
    return STATUS_OK;
}

/* ---- entry points ---- */

static Status parse_config(Config *out, const char *text, size_t len, const char *name, const char *const *sets,
                           int n_sets) {
    memset(out, 0, sizeof *out);
    if (!name) name = "";
    if (strlen(name) >= sizeof out->name) return errorf("%.100s...: config file name too long", name);
    memcpy(out->name, name, strlen(name) + 1);
    Reader r = {.name = name, .given = calloc((size_t)CONFIG_N_KEYS, 1)};
    if (!r.given) return fail(name, "", "out of memory");
    cJSON *root = NULL;
    Status st = parse_text(text, len, name, &root);
    for (int i = 0; st == STATUS_OK && i < n_sets; i++) st = apply_set(&r, root, sets[i]);
    if (st == STATUS_OK) st = check_duplicates(&r, root, "");
    if (st == STATUS_OK) st = check_known_keys(&r, root, "");
    if (st == STATUS_OK) st = read_keys(&r, root, out);
    if (st == STATUS_OK) st = check_across(&r, out);
    cJSON_Delete(root);
    free(r.given);
    return st;
}

Status config_parse_json(Config *out, const char *json_text, const char *name, const char *const *sets,
                         int n_sets) {
    return parse_config(out, json_text, strlen(json_text), name, sets, n_sets);
}

/* The whole file; pipes (--config <(...)) as well as regular files. */
static Status read_file(const char *path, char **out, size_t *len) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return errorf("%s: cannot read: %s", path, strerror(errno));
    struct stat info;
    int err = fstat(fileno(f), &info) != 0 ? errno : S_ISDIR(info.st_mode) ? EISDIR : 0;
    size_t n = 0, cap = 0;
    char *text = NULL;
    while (!err) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 16384;
            char *grown = cap <= (size_t)CONFIG_FILE_MAX * 2 ? realloc(text, cap) : NULL;
            if (!grown) {
                err = ENOMEM;
                break;
            }
            text = grown;
        }
        size_t k = fread(text + n, 1, cap - n - 1, f);
        n += k;
        if (n > (size_t)CONFIG_FILE_MAX) {
            fclose(f);
            free(text);
            return errorf("%s: more than %ld bytes is too large for a config", path, CONFIG_FILE_MAX);
        }
        if (k == 0) {
            if (ferror(f)) err = errno ? errno : EIO;
            break;
        }
    }
    fclose(f);
    if (err) {
        free(text);
        return errorf("%s: cannot read: %s", path, strerror(err));
    }
    text[n] = '\0';
    *out = text;
    *len = n;
    return STATUS_OK;
}

Status config_load(Config *out, const char *path, const char *const *sets, int n_sets) {
    char *text;
    size_t len = 0;
    TRY(read_file(path, &text, &len));
    Status st = parse_config(out, text, len, path, sets, n_sets);
    free(text);
    return st;
}

/* ---- checks once more is known ---- */

Status config_check_train(const Config *cfg) {
    if (cfg->data.train.count == 0)
        return fail(cfg->name, "data.train", "required for training (a list of token files or globs)");
    return STATUS_OK;
}

Status config_check_world(const Config *cfg, int world_size) {
    if (world_size < 1) return errorf("world size %d must be >= 1", world_size);
    int64_t per_step = cfg->train.micro_batch * world_size;
    if (cfg->train.global_batch % per_step != 0)
        return fail(cfg->name, "train.global_batch",
                    "must be a multiple of train.micro_batch x ranks = %lld x %d = %lld, got %lld",
                    (long long)cfg->train.micro_batch, world_size, (long long)per_step,
                    (long long)cfg->train.global_batch);
    return STATUS_OK;
}

Status config_check_layers(const Config *cfg, int64_t num_layers) {
    const ConfigMla *m = &cfg->student.mla;
    for (int i = 0; cfg->student.has_mla && i < m->n_gqa_layers; i++)
        if (m->gqa_layers[i] >= num_layers) {
            char path[64];
            snprintf(path, sizeof path, "student.mla.gqa_layers[%d]", i);
            return fail(cfg->name, path, "layer %lld does not exist: the student has %lld layers",
                        (long long)m->gqa_layers[i], (long long)num_layers);
        }
    return STATUS_OK;
}
