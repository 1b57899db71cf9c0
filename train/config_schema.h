/* The config's schema, shared by the reader (config.c) and the writer (config_effective.c): one row
 * per key, naming its JSON path, its type, the Config field it fills, its default and its range. */
#pragma once

#include <stddef.h>

#include "train/config.h"

typedef enum {
    KEY_OBJECT,    /* a section; its keys are the rows under its path */
    KEY_STRING,    /* char[capacity], never empty */
    KEY_INT,       /* int64_t */
    KEY_NUMBER,    /* double, finite */
    KEY_BOOL,      /* int 0/1 */
    KEY_ENUM,      /* int, the index of the string in names */
    KEY_STRINGS,   /* count at count_offset, capacity entries of item_size bytes */
    KEY_INTS,      /* count at count_offset, capacity int64_t entries */
    KEY_ARCH,      /* ConfigArch: an object of HF config.json keys */
    KEY_SOURCE,    /* ConfigModelSource: a folder (string) or an object of the rows under its path */
} KeyType;

enum {
    KEY_REQUIRED = 1 << 0,   /* an error when absent (and its section applies) */
    KEY_OPTIONAL = 1 << 1,   /* objects: absent means off; offset is the int presence flag */
    KEY_LO_OPEN = 1 << 2,    /* the lower bound is excluded */
    KEY_HI_OPEN = 1 << 3,    /* the upper bound is excluded */
    KEY_EVEN = 1 << 4,       /* integers: must be even */
    KEY_DISTINCT = 1 << 5,   /* integer lists: no entry twice */
};

typedef struct {
    const char *path;            /* "student.mla.kv_lora_rank" */
    KeyType type;
    unsigned flags;
    size_t offset;               /* the field in Config */
    size_t count_offset;         /* lists: their int count */
    int capacity;                /* strings: bytes; lists: entries */
    int item_size;               /* string lists: bytes per entry */
    double lo, hi;               /* numbers, integers, integer list entries */
    double dflt;                 /* numbers, integers, bools, enums (the index) */
    const char *const *names;    /* enums: the values, NULL-terminated */
    const char *needs;           /* a sibling key that must be present for this one to be given */
} KeySpec;

extern const KeySpec CONFIG_KEYS[];
extern const int CONFIG_N_KEYS;

/* Integers beyond 2^53 cannot be told apart in a JSON double. */
#define CONFIG_JSON_INT_MAX 9007199254740992.0

/* The row of a JSON path, or NULL. */
const KeySpec *config_key_find(const char *path);

/* The row of the section holding key (NULL at the top level). */
const KeySpec *config_key_parent(const KeySpec *key);

/* The last component of a path ("kv_lora_rank"). */
const char *config_key_leaf(const char *path);

/* The known key under the section at parent_path ("" = top level) closest to a misspelt one; when
 * none is close, the full path of the one key of that name in some section ("lr" -> "optim.lr");
 * else NULL. */
const char *config_key_suggest(const char *parent_path, const char *key);

/* The entry of names (NULL-terminated) closest to word, or NULL when none is close. */
const char *config_closest_name(const char *word, const char *const *names);

/* The shortest decimal that reads back as x. */
void config_format_number(char *buf, size_t n, double x);

/* Whether the section holding key applies in cfg: every optional object above it is present and
 * every model source above it is given as an object. */
int config_key_active(const Config *cfg, const KeySpec *key);
