/* The effective config: a Config written back as JSON with every default filled in, in the schema's
 * order, so a run directory says exactly what ran and the text reads back into the same Config. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "train/config.h"
#include "train/config_schema.h"

enum { NUMBER_TEXT_MAX = 48 };

/* Numbers of number-typed keys keep a decimal point ("temperature": 1.0), integers do not. */
static cJSON *number_node(double x, int is_integer) {
    char text[NUMBER_TEXT_MAX];
    config_format_number(text, sizeof text - 2, x);
    if (!is_integer && !strpbrk(text, ".eEn")) strcat(text, ".0");
    return cJSON_CreateRaw(text);
}

/* Whether a sibling a key needs (an inline arch for init and seed) is in cfg. */
static int needs_met(const Config *cfg, const KeySpec *key) {
    if (!key->needs) return 1;
    const KeySpec *parent = config_key_parent(key);
    char path[256];
    snprintf(path, sizeof path, "%s.%s", parent ? parent->path : "", key->needs);
    const KeySpec *sibling = config_key_find(path);
    return sibling && sibling->type == KEY_ARCH && ((const ConfigArch *)((const char *)cfg + sibling->offset))->present;
}

/* The JSON of one key of cfg, or NULL with *skip set when the key is not written. */
static cJSON *key_node(const Config *cfg, const KeySpec *key, int *skip) {
    const char *field = (const char *)cfg + key->offset;
    *skip = 0;
    switch (key->type) {
    case KEY_OBJECT:
        if ((key->flags & KEY_OPTIONAL) && !*(const int *)field) break;
        return cJSON_CreateObject();
    case KEY_STRING:
        if (!field[0]) break;
        return cJSON_CreateString(field);
    case KEY_INT: return number_node((double)*(const int64_t *)field, 1);
    case KEY_NUMBER: return number_node(*(const double *)field, 0);
    case KEY_BOOL: return cJSON_CreateBool(*(const int *)field);
    case KEY_ENUM: return cJSON_CreateString(key->names[*(const int *)field]);
    case KEY_STRINGS:
    case KEY_INTS: {
        cJSON *list = cJSON_CreateArray();
        int count = *(const int *)((const char *)cfg + key->count_offset);
        for (int i = 0; list && i < count; i++) {
            cJSON *item = key->type == KEY_STRINGS
                              ? cJSON_CreateString(field + (size_t)i * (size_t)key->item_size)
                              : number_node((double)((const int64_t *)field)[i], 1);
            if (!item || !cJSON_AddItemToArray(list, item)) {
                cJSON_Delete(item);
                cJSON_Delete(list);
                return NULL;
            }
        }
        return list;
    }
    case KEY_ARCH: {
        const ConfigArch *arch = (const ConfigArch *)field;
        if (!arch->present) break;
        return cJSON_Parse(arch->json);
    }
    case KEY_SOURCE: {
        const ConfigModelSource *src = (const ConfigModelSource *)field;
        return src->path[0] ? cJSON_CreateString(src->path) : cJSON_CreateObject();
    }
    }
    *skip = 1;
    return NULL;
}

static cJSON *effective_tree(const Config *cfg) {
    cJSON *root = cJSON_CreateObject();
    for (int i = 0; root && i < CONFIG_N_KEYS; i++) {
        const KeySpec *key = &CONFIG_KEYS[i];
        if (!config_key_active(cfg, key) || !needs_met(cfg, key)) continue;
        int skip;
        cJSON *node = key_node(cfg, key, &skip);
        if (skip) continue;
        const KeySpec *parent_key = config_key_parent(key);
        cJSON *parent = root;
        /* Sections come before their keys in the table, and an inactive one hides its keys. */
        if (parent_key) {
            parent = root;
            char part[256];
            const char *p = parent_key->path;
            while (parent && *p) {
                size_t n = strcspn(p, ".");
                snprintf(part, sizeof part, "%.*s", (int)n, p);
                parent = cJSON_GetObjectItemCaseSensitive(parent, part);
                p += n + (p[n] == '.');
            }
        }
        if (!node || !parent || !cJSON_AddItemToObject(parent, config_key_leaf(key->path), node)) {
            cJSON_Delete(node);
            cJSON_Delete(root);
            return NULL;
        }
    }
    return root;
}

/* ---- printing: two-space indents, one key per line, lists of scalars on one line ---- */

typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} Text;

static void put(Text *t, const char *s) {
    size_t n = strlen(s);
    if (t->failed) return;
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 4096;
        while (t->len + n + 1 > cap) cap *= 2;
        char *grown = realloc(t->buf, cap);
        if (!grown) {
            t->failed = 1;
            return;
        }
        t->buf = grown, t->cap = cap;
    }
    memcpy(t->buf + t->len, s, n + 1);
    t->len += n;
}

static void put_indent(Text *t, int depth) {
    for (int i = 0; i < depth; i++) put(t, "  ");
}

static void put_scalar(Text *t, const cJSON *v) {
    if (cJSON_IsRaw(v)) {
        put(t, v->valuestring);
    } else if (cJSON_IsNumber(v)) {
        char text[NUMBER_TEXT_MAX];
        config_format_number(text, sizeof text, v->valuedouble);
        put(t, text);
    } else {
        char *text = cJSON_PrintUnformatted(v);   /* strings escaped as JSON requires */
        if (!text) t->failed = 1;
        else put(t, text);
        free(text);
    }
}

static void put_value(Text *t, const cJSON *v, int depth) {
    int is_object = cJSON_IsObject(v);
    if (!is_object && !cJSON_IsArray(v)) {
        put_scalar(t, v);
        return;
    }
    int flat = !is_object;
    for (const cJSON *e = v->child; flat && e; e = e->next) flat = !cJSON_IsObject(e) && !cJSON_IsArray(e);
    if (!v->child) {
        put(t, is_object ? "{}" : "[]");
        return;
    }
    put(t, is_object ? "{" : "[");
    for (const cJSON *e = v->child; e; e = e->next) {
        if (!flat) {
            put(t, "\n");
            put_indent(t, depth + 1);
        }
        if (is_object) {
            cJSON key = {.type = cJSON_String, .valuestring = e->string};
            put_scalar(t, &key);
            put(t, ": ");
        }
        put_value(t, e, depth + 1);
        if (e->next) put(t, flat ? ", " : ",");
    }
    if (!flat) {
        put(t, "\n");
        put_indent(t, depth);
    }
    put(t, is_object ? "}" : "]");
}

Status config_effective_json(const Config *cfg, char **out_text) {
    *out_text = NULL;
    cJSON *tree = effective_tree(cfg);
    if (!tree) return errorf("%s%seffective config: out of memory", cfg->name, cfg->name[0] ? ": " : "");
    Text t = {0};
    put_value(&t, tree, 0);
    put(&t, "\n");
    cJSON_Delete(tree);
    if (t.failed) {
        free(t.buf);
        return errorf("%s%seffective config: out of memory", cfg->name, cfg->name[0] ? ": " : "");
    }
    *out_text = t.buf;
    return STATUS_OK;
}

static Status write_all(int fd, const char *text, size_t n, const char *path) {
    while (n > 0) {
        ssize_t k = write(fd, text, n);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return errorf("%s: cannot write: %s", path, strerror(errno));
        text += k, n -= (size_t)k;
    }
    return STATUS_OK;
}

/* A reader sees the old file or the whole new one, never a part, even after a crash. */
Status config_write_effective(const Config *cfg, const char *path) {
    char *text;
    TRY(config_effective_json(cfg, &text));
    char tmp[CONFIG_PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        free(text);
        return errorf("%s: cannot write: %s", tmp, strerror(errno));
    }
    Status st = write_all(fd, text, strlen(text), tmp);
    free(text);
    if (st == STATUS_OK && fsync(fd) != 0) st = errorf("%s: cannot sync: %s", tmp, strerror(errno));
    if (close(fd) != 0 && st == STATUS_OK) st = errorf("%s: cannot write: %s", tmp, strerror(errno));
    if (st == STATUS_OK && rename(tmp, path) != 0) st = errorf("%s: cannot rename to %s: %s", tmp, path, strerror(errno));
    if (st != STATUS_OK) {
        unlink(tmp);
        return st;
    }
    /* The rename itself is durable once the folder holding it is synced. */
    char dir[CONFIG_PATH_MAX + 32];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) slash[1] = '\0';
    else if (slash) *slash = '\0';
    else snprintf(dir, sizeof dir, ".");
    int dfd = open(dir, O_RDONLY);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return STATUS_OK;
}
