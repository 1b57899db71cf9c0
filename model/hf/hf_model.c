/* Models in HuggingFace's on-disk layout: which file tensor holds which model tensor, loading a
 * teacher or an exported student, exporting a student as DeepSeek-V2, saving a GQA model. */
#include "model/hf/hf_model.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/file_io.h"
#include "core/progress.h"
#include "model/hf/export_eps.h"
#include "model/hf/hf_config.h"
#include "model/hf/linear_latent_norm.h"
#include "model/hf/safetensors.h"

/*
 * The file layout. GQA layers, norms, MLPs, the embedding and the head are stored as the model
 * names them (HF's Llama/Qwen2 names). An MLA layer differs from the model in three tensors:
 * - kv_a_proj_with_mqa [r + dr, D] is the model's kv_a_latent (W_dkv) over kv_a_rope (W_kr);
 * - kv_b_proj [H*(dn + dv), r] holds, per head, that head's dn rows of kv_b_k then its dv rows of
 *   kv_b_v (DeepSeek views it as [H, dn + dv, r] and splits the middle axis);
 * - rope rows are interleaved: mlatrain rotates the pair (j, dr/2 + j) of a rope slice (HF
 *   Llama's rotate-half), DeepSeek the pair (2j, 2j + 1) (its q_pe/k_pe view(d/2, 2).transpose),
 *   so stored row 2j is mlatrain row j and stored row 2j + 1 is mlatrain row dr/2 + j. This
 *   applies to W_kr and to the last dr rows of each head's dn + dr rows in q_proj / q_b_proj.
 */

typedef enum {
    FILE_COPY,     /* one model tensor, row for row */
    FILE_Q_ROPE,   /* q_proj or q_b_proj of an MLA layer: each head's rope rows interleaved */
    FILE_KV_A,     /* kv_a_proj_with_mqa: [kv_a_latent ; interleaved kv_a_rope] */
    FILE_KV_B,     /* kv_b_proj: per head, its kv_b_k rows then its kv_b_v rows */
    FILE_ZERO,     /* no model tensor: zeros (o_proj's bias under attention_bias; must be zero on load) */
} FileTensorKind;

typedef struct {
    char name[96];
    FileTensorKind kind;
    const Tensor *parts[2];   /* the model tensors it is made of; parts[1] only for KV_A and KV_B,
                                 and KV_B's parts[0] is absent (data NULL) when dn = 0 */
    int ndim;
    int64_t shape[2];
} FileTensor;

typedef struct {
    FileTensor *tensors;
    int count;
    int64_t dn, dr, dv, r;
} FileLayout;

/* Row `stored` of an interleaved rope slice of width dr holds this row of the rotate-half slice. */
static int64_t rope_row_from_interleaved(int64_t stored, int64_t dr) {
    return stored % 2 == 0 ? stored / 2 : dr / 2 + stored / 2;
}

/* Which part, and which row of it, row `row` of file tensor t holds. */
static void row_source(const FileLayout *lay, const FileTensor *t, int64_t row, int *part, int64_t *part_row) {
    int64_t dn = lay->dn, dr = lay->dr, dv = lay->dv;
    *part = 0;
    *part_row = row;
    switch (t->kind) {
    case FILE_COPY:
    case FILE_ZERO: break;
    case FILE_Q_ROPE: {
        int64_t head = row / (dn + dr), i = row % (dn + dr);
        if (i >= dn) *part_row = head * (dn + dr) + dn + rope_row_from_interleaved(i - dn, dr);
        break;
    }
    case FILE_KV_A:
        if (row >= lay->r) {
            *part = 1;
            *part_row = rope_row_from_interleaved(row - lay->r, dr);
        }
        break;
    case FILE_KV_B: {
        int64_t head = row / (dn + dv), i = row % (dn + dv);
        if (i < dn) {
            *part_row = head * dn + i;
        } else {
            *part = 1;
            *part_row = head * dv + (i - dn);
        }
        break;
    }
    }
}

static int64_t file_rows(const FileTensor *t) { return t->shape[0]; }
static int64_t file_cols(const FileTensor *t) { return t->ndim == 2 ? t->shape[1] : 1; }
static int64_t file_numel(const FileTensor *t) { return file_rows(t) * file_cols(t); }

/* file <- parts (export) */
static void gather_rows(const FileLayout *lay, const FileTensor *t, float *const parts[2], float *file) {
    int64_t cols = file_cols(t);
    for (int64_t row = 0; row < file_rows(t); row++) {
        int part;
        int64_t src;
        row_source(lay, t, row, &part, &src);
        memcpy(file + row * cols, parts[part] + src * cols, (size_t)cols * sizeof(float));
    }
}

/* parts <- file (load) */
static void scatter_rows(const FileLayout *lay, const FileTensor *t, const float *file, float *const parts[2]) {
    int64_t cols = file_cols(t);
    for (int64_t row = 0; row < file_rows(t); row++) {
        int part;
        int64_t dst;
        row_source(lay, t, row, &part, &dst);
        memcpy(parts[part] + dst * cols, file + row * cols, (size_t)cols * sizeof(float));
    }
}

static void add_file_tensor(FileLayout *lay, const char *name, FileTensorKind kind, const Tensor *a,
                            const Tensor *b, int64_t rows, int64_t cols) {
    FileTensor *t = &lay->tensors[lay->count++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->kind = kind;
    t->parts[0] = a;
    t->parts[1] = b;
    t->ndim = cols > 0 ? 2 : 1;
    t->shape[0] = rows;
    t->shape[1] = cols;
}

/* Walks the model's parameter registry, so a tensor the model gains is stored without a change
 * here. with_tied_head adds lm_head.weight as a copy of the embedding when the two are tied. */
static Status layout_build(const Model *m, int with_tied_head, FileLayout *lay) {
    const ModelConfig *c = &m->cfg;
    memset(lay, 0, sizeof *lay);
    lay->dn = c->mla.qk_nope_head_dim;
    lay->dr = c->mla.qk_rope_head_dim;
    lay->dv = c->mla.v_head_dim;
    lay->r = c->mla.kv_lora_rank;
    lay->tensors = calloc((size_t)m->n_params + 1, sizeof *lay->tensors);
    if (!lay->tensors) return errorf("out of memory for the tensor list");
    int64_t H = c->num_attention_heads;
    for (int i = 0; i < m->n_params; i++) {
        const Param *p = &m->params[i];
        const Tensor *v = p->value;
        int64_t cols = v->ndim == 2 ? v->shape[1] : 0;
        int l;
        if (sscanf(p->name, "model.layers.%d.", &l) != 1 || l < 0 || l >= c->num_hidden_layers ||
            c->layer_attention[l] != ATTENTION_MLA) {
            add_file_tensor(lay, p->name, FILE_COPY, v, NULL, v->shape[0], cols);
            continue;
        }
        const LayerWeights *w = &m->layers[l];
        char name[96];
        if (v == &w->kv_a_latent_bias) {
            /* DeepSeek-V2's attention_bias: kv_a_proj_with_mqa's bias, like its weight, and o_proj's,
             * which the student does not have (zero). */
            snprintf(name, sizeof name, "model.layers.%d.self_attn.kv_a_proj_with_mqa.bias", l);
            add_file_tensor(lay, name, FILE_KV_A, &w->kv_a_latent_bias, &w->kv_a_rope_bias, lay->r + lay->dr, 0);
            snprintf(name, sizeof name, "model.layers.%d.self_attn.o_proj.bias", l);
            add_file_tensor(lay, name, FILE_ZERO, NULL, NULL, c->hidden_size, 0);
        } else if (v == &w->kv_a_rope_bias) {
            continue; /* inside the one above */
        } else if (v == &w->kv_a_latent) {
            snprintf(name, sizeof name, "model.layers.%d.self_attn.kv_a_proj_with_mqa.weight", l);
            add_file_tensor(lay, name, FILE_KV_A, &w->kv_a_latent, &w->kv_a_rope, lay->r + lay->dr, cols);
        } else if (v == &w->kv_b_v) {
            snprintf(name, sizeof name, "model.layers.%d.self_attn.kv_b_proj.weight", l);
            add_file_tensor(lay, name, FILE_KV_B, &w->kv_b_k, &w->kv_b_v, H * (lay->dn + lay->dv), cols);
        } else if (v == &w->kv_a_rope || v == &w->kv_b_k) {
            continue; /* inside the two above */
        } else if (v == &w->q_proj || v == &w->q_b_proj || v == &w->q_bias) {
            add_file_tensor(lay, p->name, FILE_Q_ROPE, v, NULL, v->shape[0], cols);
        } else {
            add_file_tensor(lay, p->name, FILE_COPY, v, NULL, v->shape[0], cols);
        }
    }
    if (with_tied_head && c->tie_word_embeddings)
        add_file_tensor(lay, "lm_head.weight", FILE_COPY, &m->embed, NULL, c->vocab_size, c->hidden_size);
    return STATUS_OK;
}

static const char *shape_str(int ndim, const int64_t *shape, char *buf, size_t n) {
    return tensor_shape_str(tensor_view(NULL, DT_F32, ndim, shape), buf, n);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* ---- loading ---- */

/* Tensors a file may carry that the model does not read: a tied model's head (checked against the
 * embedding), and the rotary_emb.inv_freq buffers of older checkpoints (recomputed from the
 * config). */
static int ignored_on_load(const ModelConfig *c, const char *name) {
    if (c->tie_word_embeddings && strcmp(name, "lm_head.weight") == 0) return 1;
    return ends_with(name, "rotary_emb.inv_freq");
}

/* Every tensor the layout needs is present with its shape, and nothing else is there: checked
 * on names and headers before any data is read. */
static Status check_tensor_names(const SafetensorsSet *s, const FileLayout *lay, const ModelConfig *c,
                                 const char *dir) {
    for (int i = 0; i < lay->count; i++) {
        const FileTensor *t = &lay->tensors[i];
        const SafetensorsTensor *f = safetensors_find(s, t->name);
        if (!f)
            return errorf("%s: tensor '%s' is missing (the %s model of config.json has it)", dir, t->name,
                          c->model_type);
        int same = f->ndim == t->ndim;
        for (int d = 0; same && d < t->ndim; d++) same = f->shape[d] == t->shape[d];
        if (!same) {
            char got[96], want[96];
            return errorf("%s: tensor '%s' has shape %s, expected %s from config.json",
                          safetensors_file_path(s, f->file_index), t->name, shape_str(f->ndim, f->shape, got, sizeof got),
                          shape_str(t->ndim, t->shape, want, sizeof want));
        }
    }
    for (int64_t i = 0; i < safetensors_count(s); i++) {
        const SafetensorsTensor *f = safetensors_tensor(s, i);
        if (ignored_on_load(c, f->name)) continue;
        int known = 0;
        for (int k = 0; !known && k < lay->count; k++) known = strcmp(lay->tensors[k].name, f->name) == 0;
        if (!known)
            return errorf("%s: tensor '%s' is not part of the %s model that config.json describes",
                          safetensors_file_path(s, f->file_index), f->name, c->model_type);
    }
    return STATUS_OK;
}

static Status load_tensor(Backend *be, const SafetensorsSet *s, const FileLayout *lay, const FileTensor *t) {
    int64_t n = file_numel(t);
    float *file = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    float *parts[2] = {NULL, NULL};
    Status st = file ? STATUS_OK : errorf("out of memory reading tensor '%s'", t->name);
    if (st == STATUS_OK) st = safetensors_read_f32(s, t->name, file, t->ndim, t->shape);
    for (int64_t i = 0; st == STATUS_OK && t->kind == FILE_ZERO && i < n; i++)
        if (file[i] != 0)
            st = errorf("tensor '%s' is %.9g at %lld: mlatrain's MLA attention has no output bias (only zeros "
                        "load)", t->name, file[i], (long long)i);
    if (st == STATUS_OK && t->kind == FILE_ZERO) {
        /* checked above; nothing to store */
    } else if (st == STATUS_OK && t->kind == FILE_COPY) {
        st = backend_upload_f32(be, *t->parts[0], file);
    } else if (st == STATUS_OK) {
        /* An absent part (kv_b_k when dn = 0) gets no rows; its buffer is never touched. */
        for (int k = 0; k < 2 && st == STATUS_OK; k++) {
            int64_t pn = t->parts[k] && tensor_present(*t->parts[k]) ? tensor_numel(*t->parts[k]) : 1;
            parts[k] = malloc((size_t)pn * sizeof(float));
            if (!parts[k]) st = errorf("out of memory reading tensor '%s'", t->name);
        }
        if (st == STATUS_OK) scatter_rows(lay, t, file, parts);
        for (int k = 0; k < 2 && st == STATUS_OK; k++)
            if (t->parts[k] && tensor_present(*t->parts[k])) st = backend_upload_f32(be, *t->parts[k], parts[k]);
    }
    free(file);
    free(parts[0]);
    free(parts[1]);
    return st;
}

/* HF omits a tied head; a file that has one anyway must hold the embedding there. */
static Status check_tied_head(const SafetensorsSet *s, const ModelConfig *c) {
    const SafetensorsTensor *head = safetensors_find(s, "lm_head.weight");
    if (!c->tie_word_embeddings || !head) return STATUS_OK;
    int64_t shape[2] = {c->vocab_size, c->hidden_size}, n = shape[0] * shape[1];
    float *embed = malloc((size_t)n * sizeof(float)), *lm = malloc((size_t)n * sizeof(float));
    Status st = embed && lm ? STATUS_OK : errorf("out of memory comparing lm_head.weight with the embedding");
    if (st == STATUS_OK) st = safetensors_read_f32(s, "model.embed_tokens.weight", embed, 2, shape);
    if (st == STATUS_OK) st = safetensors_read_f32(s, "lm_head.weight", lm, 2, shape);
    for (int64_t i = 0; st == STATUS_OK && i < n; i++)
        if (memcmp(&embed[i], &lm[i], sizeof(float)) != 0)
            st = errorf("%s: tensor 'lm_head.weight' differs from model.embed_tokens.weight at [%lld, %lld] "
                        "(%.9g vs %.9g), but config.json has tie_word_embeddings = true",
                        safetensors_file_path(s, head->file_index), (long long)(i / shape[1]),
                        (long long)(i % shape[1]), lm[i], embed[i]);
    free(embed);
    free(lm);
    return st;
}

/* An exported student's rope is what stock loaders compute from its config.json: DeepSeek's
 * base^(-2i/dr) with the MLA base and the config's scaling, whatever the conversion had chosen. */
static Status set_config_rope(Model *m) {
    int dr = (int)m->cfg.mla.qk_rope_head_dim;
    if (model_config_mla_layers(&m->cfg) == 0) return STATUS_OK;
    float *inv = malloc((size_t)(dr / 2) * sizeof(float));
    if (!inv) return errorf("out of memory");
    RopeConfig rope = m->cfg.rope;
    rope.theta = model_config_mla_rope_theta(&m->cfg);
    Status st = rope_inv_freq(&rope, dr, inv);
    for (int l = 0; l < m->cfg.num_hidden_layers && st == STATUS_OK; l++)
        if (m->cfg.layer_attention[l] == ATTENTION_MLA) st = model_set_mla_rope(m, l, inv);
    free(inv);
    return st;
}

static Status rope_sidecar_read(Model *m, const char *dir);

Status hf_model_load(Model **out, Backend *be, const char *dir, int64_t max_seq) {
    return hf_model_load_as(out, be, dir, max_seq, DT_F32);
}

Status hf_model_load_as(Model **out, Backend *be, const char *dir, int64_t max_seq, DType weight_dtype) {
    *out = NULL;
    char path[4096];
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path)
        return errorf("%s: the path is too long", dir);
    ModelConfig cfg;
    TRY(hf_config_read(path, &cfg));
    Model *m = NULL;
    if (model_create_as(&m, be, &cfg, max_seq, weight_dtype) != STATUS_OK) return error_context("%s: ", dir);

    SafetensorsSet *s = NULL;
    FileLayout lay = {0};
    Status st = set_config_rope(m);
    if (st == STATUS_OK) st = rope_sidecar_read(m, dir);
    if (st == STATUS_OK) st = safetensors_open(&s, dir);
    if (st == STATUS_OK) st = layout_build(m, 0, &lay);
    if (st == STATUS_OK) st = check_tensor_names(s, &lay, &cfg, dir);
    if (st == STATUS_OK) st = check_tied_head(s, &cfg);
    char what[160];
    snprintf(what, sizeof what, "loading %s: tensor", dir);
    Progress progress;
    progress_begin(&progress, what, lay.count);
    for (int i = 0; i < lay.count && st == STATUS_OK; i++) {
        st = load_tensor(be, s, &lay, &lay.tensors[i]);
        progress_update(&progress, i + 1);
    }
    if (st == STATUS_OK) progress_end(&progress);
    free(lay.tensors);
    safetensors_close(s);
    if (st != STATUS_OK) {
        model_destroy(m);
        return STATUS_ERROR;
    }
    model_weights_changed(m);
    /* What export wrote only for stock loaders is undone, in this order, so the student trains as it
     * was trained: a latent norm in its linear regime; a q bias's linear-regime bottleneck (back to
     * q_proj whole); the linear q_a_layernorm of a bottleneck trained without it; the residual
     * scaling of an epsilon-independent export. Each returns NULL when there is nothing to undo. */
    static Status (*const undo[])(const Model *, Model **) = {model_fold_linear_latent_norm,
                                                              model_fold_linear_q_bottleneck,
                                                              model_fold_linear_q_norm, model_without_export_eps};
    for (size_t i = 0; i < sizeof undo / sizeof undo[0]; i++) {
        Model *undone = NULL;
        if (undo[i](m, &undone) != STATUS_OK) {
            model_destroy(m);
            return error_context("%s: ", dir);
        }
        if (undone) {
            model_destroy(m);
            m = undone;
        }
    }
    *out = m;
    return STATUS_OK;
}

/* ---- writing ---- */

/* config.json marks a complete model: it goes first, so that a crash from here on leaves a
 * directory that loaders refuse rather than a new config over old weights or the reverse. */
static Status remove_config(const char *dir, const char *config_path) {
    if (unlink(config_path) != 0 && errno != ENOENT)
        return errorf("%s: cannot remove the previous config.json: %s", config_path, strerror(errno));
    int fd = open(dir, O_RDONLY);
    if (fd >= 0) (void)fsync(fd), close(fd); /* best effort: some filesystems refuse fsync on a folder */
    return STATUS_OK;
}

typedef struct {
    SafetensorsEntry *entries;
    float **buffers;
    int count;
} HostTensors;

static void host_tensors_free(HostTensors *h) {
    for (int i = 0; h->buffers && i < h->count; i++) free(h->buffers[i]);
    free(h->buffers);
    free(h->entries);
    memset(h, 0, sizeof *h);
}

/* Downloads the model's tensors and lays them out as the file stores them. */
static Status download_layout(const Model *m, const FileLayout *lay, HostTensors *h) {
    Backend *be = m->be;
    h->entries = calloc((size_t)lay->count, sizeof *h->entries);
    h->buffers = calloc((size_t)lay->count, sizeof *h->buffers);
    h->count = lay->count;
    if (!h->entries || !h->buffers) return errorf("out of memory for %d tensors", lay->count);
    for (int i = 0; i < lay->count; i++) {
        const FileTensor *t = &lay->tensors[i];
        int64_t n = file_numel(t);
        float *file = h->buffers[i] = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
        if (!file) return errorf("out of memory for tensor '%s'", t->name);
        if (t->kind == FILE_ZERO) {
            memset(file, 0, (size_t)(n > 0 ? n : 1) * sizeof(float));
        } else if (t->kind == FILE_COPY) {
            TRY(backend_download_f32(be, file, *t->parts[0]));
        } else {
            float *parts[2] = {NULL, NULL};
            Status st = STATUS_OK;
            for (int k = 0; k < 2 && st == STATUS_OK; k++) {
                if (!t->parts[k] || !tensor_present(*t->parts[k])) continue;
                parts[k] = malloc((size_t)tensor_numel(*t->parts[k]) * sizeof(float));
                if (!parts[k]) st = errorf("out of memory for tensor '%s'", t->name);
                else st = backend_download_f32(be, parts[k], *t->parts[k]);
            }
            if (st == STATUS_OK) gather_rows(lay, t, parts, file);
            free(parts[0]);
            free(parts[1]);
            TRY(st);
        }
        SafetensorsEntry *e = &h->entries[i];
        e->name = t->name;
        e->ndim = t->ndim;
        e->shape[0] = t->shape[0];
        e->shape[1] = t->shape[1];
        e->data = file;
    }
    return STATUS_OK;
}

typedef Status (*ConfigWriter)(const ModelConfig *cfg, DType dtype, const char *path);

/* Weights first, config.json last (see remove_config); each file is written atomically. */
static Status write_model_dir(const Model *m, const ModelConfig *cfg, const char *dir, int with_tied_head,
                              DType dtype, size_t max_shard_bytes, ConfigWriter write_config) {
    if (dtype != DT_F32 && dtype != DT_BF16 && dtype != DT_F16)
        return errorf("%s: dtype %s cannot be written (f32, bf16 or f16)", dir, dtype_name(dtype));
    char config_path[4096];
    if (snprintf(config_path, sizeof config_path, "%s/config.json", dir) >= (int)sizeof config_path)
        return errorf("%s: the path is too long", dir);
    FileLayout lay;
    HostTensors host = {0};
    Status st = layout_build(m, with_tied_head, &lay);
    if (st != STATUS_OK) st = error_context("%s: ", dir);
    if (st == STATUS_OK && download_layout(m, &lay, &host) != STATUS_OK) st = error_context("%s: ", dir);
    if (st == STATUS_OK) st = make_dirs(dir);
    if (st == STATUS_OK) st = remove_config(dir, config_path);
    if (st == STATUS_OK) st = safetensors_write_model(dir, host.entries, host.count, dtype, max_shard_bytes);
    if (st == STATUS_OK) st = write_config(cfg, dtype, config_path);
    host_tensors_free(&host);
    free(lay.tensors);
    return st;
}

/* ---- the rope sidecar ---- */

/* mlatrain_rope.json: {"mla_inv_freq": [[...], ...]}, one list of dr/2 frequencies per MLA layer in
 * layer order, each printed with %.9g so it reads back as the same float32. */
static Status rope_sidecar_path(const char *dir, char *path, size_t n) {
    if (snprintf(path, n, "%s/%s", dir, HF_ROPE_SIDECAR) >= (int)n) return errorf("%s: the path is too long", dir);
    return STATUS_OK;
}

static Status rope_sidecar_write(const Model *m, const char *dir, int needed) {
    char path[4096];
    TRY(rope_sidecar_path(dir, path, sizeof path));
    if (!needed) {
        if (unlink(path) != 0 && errno != ENOENT) return errorf("%s: cannot remove: %s", path, strerror(errno));
        return STATUS_OK;
    }
    int pairs = (int)(m->cfg.mla.qk_rope_head_dim / 2);
    size_t cap = (size_t)m->cfg.num_hidden_layers * (size_t)pairs * 20 + 64, len = 0;
    char *text = malloc(cap);
    if (!text) return errorf("%s: out of memory", path);
    len += (size_t)snprintf(text + len, cap - len, "{\"mla_inv_freq\": [");
    int first_layer = 1;
    for (int l = 0; l < m->cfg.num_hidden_layers; l++) {
        if (m->cfg.layer_attention[l] != ATTENTION_MLA) continue;
        len += (size_t)snprintf(text + len, cap - len, "%s[", first_layer ? "" : ", ");
        first_layer = 0;
        for (int j = 0; j < pairs; j++)
            len += (size_t)snprintf(text + len, cap - len, "%s%.9g", j ? ", " : "",
                                    (double)m->mla_inv_freq[(size_t)l * (size_t)pairs + (size_t)j]);
        len += (size_t)snprintf(text + len, cap - len, "]");
    }
    len += (size_t)snprintf(text + len, cap - len, "]}\n");
    Status st = file_write_atomic(path, text, len);
    free(text);
    return st;
}

/* Applies mlatrain_rope.json when the folder has one. */
static Status rope_sidecar_read(Model *m, const char *dir) {
    char path[4096];
    TRY(rope_sidecar_path(dir, path, sizeof path));
    FILE *f = fopen(path, "rb");
    if (!f) return errno == ENOENT ? STATUS_OK : errorf("%s: cannot read: %s", path, strerror(errno));
    char *text = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    Status st = n >= 0 && n < (64 << 20) && fseek(f, 0, SEEK_SET) == 0 ? STATUS_OK : errorf("%s: cannot read", path);
    if (st == STATUS_OK) {
        text = malloc((size_t)n + 1);
        if (!text || fread(text, 1, (size_t)n, f) != (size_t)n) st = errorf("%s: cannot read", path);
        else text[n] = '\0';
    }
    fclose(f);
    cJSON *root = st == STATUS_OK ? cJSON_Parse(text) : NULL;
    free(text);
    if (st == STATUS_OK && !root) st = errorf("%s: invalid JSON", path);
    const cJSON *layers = root ? cJSON_GetObjectItemCaseSensitive(root, "mla_inv_freq") : NULL;
    if (st == STATUS_OK && !cJSON_IsArray(layers)) st = errorf("%s: mla_inv_freq: expected an array", path);
    int pairs = (int)(m->cfg.mla.qk_rope_head_dim / 2);
    if (st == STATUS_OK && cJSON_GetArraySize(layers) != model_config_mla_layers(&m->cfg))
        st = errorf("%s: mla_inv_freq has %d layers, the model %d MLA layers", path, cJSON_GetArraySize(layers),
                    model_config_mla_layers(&m->cfg));
    float *inv = malloc((size_t)(pairs > 0 ? pairs : 1) * sizeof(float));
    if (st == STATUS_OK && !inv) st = errorf("%s: out of memory", path);
    const cJSON *row = layers ? layers->child : NULL;
    for (int l = 0; st == STATUS_OK && l < m->cfg.num_hidden_layers; l++) {
        if (m->cfg.layer_attention[l] != ATTENTION_MLA) continue;
        if (!cJSON_IsArray(row) || cJSON_GetArraySize(row) != pairs) {
            st = errorf("%s: mla_inv_freq: MLA layer %d needs %d frequencies", path, l, pairs);
            break;
        }
        int j = 0;
        for (const cJSON *v = row->child; v; v = v->next, j++) {
            if (!cJSON_IsNumber(v) || !(v->valuedouble > 0) || !isfinite(v->valuedouble)) {
                st = errorf("%s: mla_inv_freq: layer %d, pair %d is not a positive number", path, l, j);
                break;
            }
            inv[j] = (float)v->valuedouble;
        }
        if (st == STATUS_OK) st = model_set_mla_rope(m, l, inv);
        row = row->next;
    }
    free(inv);
    cJSON_Delete(root);
    return st;
}

/* ---- export ---- */

/* The first pair (or -1) where MLA layer l's frequencies differ from DeepSeek's base^(-2i/dr)
 * with the config's scaling by more than float32 rounding. */
static Status rope_mismatch(const Model *m, int l, double theta, int *pair) {
    int pairs = (int)(m->cfg.mla.qk_rope_head_dim / 2);
    float *want = malloc((size_t)pairs * sizeof(float));
    *pair = -1;
    if (!want) return errorf("out of memory");
    RopeConfig rope = m->cfg.rope;
    rope.theta = theta;
    Status st = rope_inv_freq(&rope, (int)m->cfg.mla.qk_rope_head_dim, want);
    const float *have = m->mla_inv_freq + (size_t)l * (size_t)pairs;
    for (int i = 0; st == STATUS_OK && i < pairs && *pair < 0; i++)
        if (!(fabs((double)have[i] - (double)want[i]) <= 1e-6 * fabs((double)want[i]))) *pair = i;
    free(want);
    return st;
}

/* The rope_theta to export. DeepSeek loaders compute the rope key's frequencies as
 * theta^(-2i/dr); the student's are the teacher's theta^(-2i/hd) for the pairs conversion kept.
 * The bases that express selections exactly: the student's MLA base (DeepSeek's default, 'uniform'
 * selection: every hd/dr-th pair) and theta^(s dr/hd) for the pairs 0, s, 2s, ... ('high' is s = 1,
 * 'rorope' chooses an s). Llama 3 scaling depends only on each frequency's wavelength, so it
 * carries over to any of them. */
static Status export_rope_theta(const Model *m, const char *dir, int allow_rebase, int keep_rope, double *theta_out,
                                int *needs_sidecar) {
    *needs_sidecar = 0;
    const ModelConfig *c = &m->cfg;
    long long dr = (long long)c->mla.qk_rope_head_dim, hd = (long long)c->head_dim;
    enum { MAX_CANDIDATES = 64 };
    double candidates[MAX_CANDIDATES] = {model_config_mla_rope_theta(c), pow(c->rope.theta, (double)dr / (double)hd)};
    int n_cand = 2;
    for (long long step = 2; n_cand < MAX_CANDIDATES && (dr / 2 - 1) * step < hd / 2; step++)
        candidates[n_cand++] = pow(c->rope.theta, (double)(step * dr) / (double)hd);
    /* Per layer, the first base that fits it (-1: none); and the first layer each base fits. */
    int fits[MAX_CANDIDATES], unfit_layer = -1, unfit_pair = -1, first_fit[MAX_CANDIDATES];
    for (int k = 0; k < MAX_CANDIDATES; k++) fits[k] = 1, first_fit[k] = -1;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        if (c->layer_attention[l] != ATTENTION_MLA) continue;
        int layer_fits = 0, pair0 = -1;
        for (int k = 0; k < n_cand; k++) {
            int pair;
            TRY(rope_mismatch(m, l, candidates[k], &pair));
            if (pair >= 0) fits[k] = 0;
            else if (first_fit[k] < 0) first_fit[k] = l;
            layer_fits |= pair < 0;
            if (k == 0) pair0 = pair;
        }
        if (!layer_fits && unfit_layer < 0) unfit_layer = l, unfit_pair = pair0;
    }
    for (int k = 0; k < n_cand; k++)
        if (fits[k]) {
            *theta_out = candidates[k];
            return STATUS_OK;
        }
    char why[512];
    int pairs = (int)(dr / 2);
    if (unfit_layer >= 0)
        snprintf(why, sizeof why, "MLA layer %d's rope frequencies (pair %d: %.9g) are DeepSeek's rope_theta^(-2i/%lld) "
                 "neither for rope_theta = %g (the student's base) nor for %g (= %g^(%lld/%lld), the teacher's "
                 "fastest pairs)", unfit_layer, unfit_pair,
                 m->mla_inv_freq[(size_t)unfit_layer * (size_t)pairs + (size_t)unfit_pair], dr, candidates[0],
                 candidates[1], c->rope.theta, dr, hd);
    else
        snprintf(why, sizeof why, "MLA layer %d's rope frequencies are DeepSeek's for rope_theta = %g and MLA layer "
                 "%d's for %g, but config.json has one rope_theta", first_fit[0], candidates[0], first_fit[1],
                 candidates[1]);
    if (keep_rope) {
        *theta_out = candidates[0];
        *needs_sidecar = 1;
        return STATUS_OK;
    }
    if (!allow_rebase)
        return errorf("%s: %s; pass allow_rebase (ExportOptions) to export with rope_theta = %g, which changes the "
                      "model's rope", dir, why, candidates[1]);
    fprintf(stderr, "%s: exporting with rope_theta = %g: the exported model's rope differs from the trained "
                    "student's (%s)\n", dir, candidates[1], why);
    *theta_out = candidates[1];
    return STATUS_OK;
}

Status hf_model_export(const Model *m, const char *dir, const ExportOptions *opts) {
    ExportOptions o = opts ? *opts : (ExportOptions){.dtype = DT_BF16};
    const ModelConfig *c = &m->cfg;
    if (model_config_mla_layers(c) == 0)
        return errorf("%s: the model has no MLA layer: export writes DeepSeek-V2 students (hf_model_save_gqa "
                      "writes a GQA model)", dir);
    if (!c->mla.latent_norm) {
        /* Every DeepSeek-V2 loader applies kv_a_layernorm: write one that leaves the student as it is. */
        if (o.dtype == DT_F16)
            return errorf("%s: f16 cannot hold the scales of the linear-regime latent norm this student is exported "
                          "with (kv_a_layernorm's weight exceeds f16's range); export bf16 or f32", dir);
        Model *with_norm = NULL;
        if (model_with_linear_latent_norm(m, &with_norm) != STATUS_OK) return error_context("%s: ", dir);
        Status st = hf_model_export(with_norm, dir, opts);
        model_destroy(with_norm);
        return st;
    }
    if (c->mla.q_lora_rank > 0 && !c->mla.q_norm) {
        /* Likewise q_a_layernorm, for a q bottleneck trained linear. */
        if (o.dtype == DT_F16)
            return errorf("%s: f16 cannot hold the scales of the linear-regime q norm this student is exported with "
                          "(q_a_layernorm's weight exceeds f16's range); export bf16 or f32", dir);
        Model *with_norm = NULL;
        if (model_with_linear_q_norm(m, &with_norm) != STATUS_OK) return error_context("%s: ", dir);
        Status st = hf_model_export(with_norm, dir, opts);
        model_destroy(with_norm);
        return st;
    }
    if (c->mla.attention_bias && c->mla.q_lora_rank == 0) {
        /* DeepSeek-V2's q_proj has no bias, its q_a_proj has: write the queries through a bottleneck
         * that computes what q_proj did. */
        if (o.dtype == DT_F16)
            return errorf("%s: f16 cannot hold the scales of the linear-regime q bottleneck that carries this "
                          "student's q bias (q_a_layernorm's weight exceeds f16's range); export bf16 or f32", dir);
        Model *with_q = NULL;
        if (model_with_linear_q_bottleneck(m, &with_q) != STATUS_OK) return error_context("%s: ", dir);
        Status st = hf_model_export(with_q, dir, opts);
        model_destroy(with_q);
        return st;
    }
    if (c->rms_norm_eps != EXPORT_RMS_NORM_EPS) {
        /* The latent norms' epsilon is 1e-6 in HF transformers and rms_norm_eps in vLLM and SGLang:
         * export with rms_norm_eps = 1e-6 so both read one model. */
        Model *rescaled = NULL;
        if (model_with_export_eps(m, &rescaled) != STATUS_OK) return error_context("%s: ", dir);
        Status st = hf_model_export(rescaled, dir, opts);
        model_destroy(rescaled);
        return st;
    }
    ModelConfig out = *c;
    int sidecar = 0;
    TRY(export_rope_theta(m, dir, o.allow_rebase, o.keep_rope, &out.mla.rope_theta, &sidecar));
    /* Refuse what the config cannot say before any file is touched. */
    cJSON *json = NULL;
    if (hf_config_deepseek_v2_json(&out, o.dtype, &json) != STATUS_OK) return error_context("%s: ", dir);
    cJSON_Delete(json);
    /* Stock loaders read lm_head.weight whatever tie_word_embeddings says. */
    TRY(write_model_dir(m, &out, dir, 1, o.dtype, o.max_shard_bytes, hf_config_write_deepseek_v2));
    return rope_sidecar_write(m, dir, sidecar);
}

Status hf_model_save_gqa(const Model *m, const char *dir, DType dtype) {
    int mla = model_config_mla_layers(&m->cfg);
    if (mla > 0)
        return errorf("%s: %d layers have MLA attention, which the GQA families cannot store: export the student "
                      "with hf_model_export", dir, mla);
    cJSON *json = NULL;
    if (hf_config_gqa_json(&m->cfg, dtype, &json) != STATUS_OK) return error_context("%s: ", dir);
    cJSON_Delete(json);
    /* HF omits a tied head, and its loaders tie it back. */
    return write_model_dir(m, &m->cfg, dir, 0, dtype, 0, hf_config_write_gqa);
}
