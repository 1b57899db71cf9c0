/* Checkpoint files: HDF5 writing and reading of named float32 tensors and attributes, the manifest
 * of CRC-32s, the atomic publish (temporary folder -> rename -> `latest`), pruning, and finding the
 * newest valid checkpoint after a crash. */
#include "train/checkpoint.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/crc32.h"
#include "core/file_io.h"
#include "data/hdf5_errors.h"
#include "model/config_json.h"

enum { PATH_LEN = 4096, CHUNK_ELEMENTS = 1 << 20 };


/* snprintf into a PATH_LEN buffer; a path that does not fit is an error, never a truncation. */
static Status pathf(char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static Status pathf(char *out, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, PATH_LEN, fmt, ap);
    va_end(ap);
    if (n < 0 || n >= PATH_LEN) return errorf("a checkpoint path is longer than %d bytes: %.80s...", PATH_LEN, out);
    return STATUS_OK;
}

/* ---- HDF5 helpers ---- */

static Status h5_fail(const char *path, const char *what) {
    return errorf("%s: %s: %s", path, what, hdf5_error_detail());
}

static Status write_string_attr(hid_t obj, const char *path, const char *name, const char *value) {
    hid_t type = H5Tcopy(H5T_C_S1), space = H5Screate(H5S_SCALAR);
    hid_t attr = -1;
    herr_t rc = type < 0 || space < 0 ? -1 : H5Tset_size(type, strlen(value) + 1);
    if (rc >= 0) attr = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr >= 0) rc = H5Awrite(attr, type, value);
    if (attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    return rc < 0 || attr < 0 ? h5_fail(path, name) : STATUS_OK;
}

static Status read_string_attr(hid_t obj, const char *path, const char *name, char **out) {
    *out = NULL;
    hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
    if (attr < 0) return h5_fail(path, name);
    hid_t type = H5Aget_type(attr);
    size_t size = type >= 0 ? H5Tget_size(type) : 0;
    Status st = STATUS_OK;
    if (type < 0 || H5Tget_class(type) != H5T_STRING || size == 0 || size > (64u << 20))
        st = errorf("%s: attribute %s is not a string", path, name);
    hid_t mem = st == STATUS_OK ? H5Tcopy(H5T_C_S1) : -1;
    if (mem >= 0) H5Tset_size(mem, size);
    char *buf = st == STATUS_OK ? calloc(1, size + 1) : NULL;
    if (st == STATUS_OK && (!buf || H5Aread(attr, mem, buf) < 0)) st = h5_fail(path, name);
    if (mem >= 0) H5Tclose(mem);
    if (type >= 0) H5Tclose(type);
    H5Aclose(attr);
    if (st != STATUS_OK) {
        free(buf);
        return st;
    }
    *out = buf;
    return STATUS_OK;
}

static Status write_i64_attr(hid_t obj, const char *path, const char *name, int64_t v) {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = space >= 0 ? H5Acreate2(obj, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT) : -1;
    herr_t rc = attr >= 0 ? H5Awrite(attr, H5T_NATIVE_INT64, &v) : -1;
    if (attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    return rc < 0 ? h5_fail(path, name) : STATUS_OK;
}

static Status read_i64_attr(hid_t obj, const char *path, const char *name, int64_t *v) {
    hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
    herr_t rc = attr >= 0 ? H5Aread(attr, H5T_NATIVE_INT64, v) : -1;
    if (attr >= 0) H5Aclose(attr);
    return rc < 0 ? h5_fail(path, name) : STATUS_OK;
}

/* A float32 dataset, chunked with fletcher32 so a flipped bit in the data is an error on read. */
static Status write_f32(hid_t group, const char *path, const char *name, const float *data, int ndim,
                        const int64_t *shape) {
    hsize_t dims[TENSOR_MAX_DIMS] = {0}, chunk[TENSOR_MAX_DIMS] = {0};
    hsize_t n = 1;
    for (int i = 0; i < ndim; i++) {
        dims[i] = (hsize_t)shape[i];
        n *= dims[i];
    }
    /* Whole rows per chunk, up to CHUNK_ELEMENTS values. */
    hsize_t row = n / (dims[0] ? dims[0] : 1);
    for (int i = 0; i < ndim; i++) chunk[i] = dims[i] ? dims[i] : 1;
    hsize_t rows = row ? CHUNK_ELEMENTS / row : 1;
    chunk[0] = rows < 1 ? 1 : rows < dims[0] ? rows : (dims[0] ? dims[0] : 1);
    hid_t space = H5Screate_simple(ndim, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    herr_t rc = space < 0 || dcpl < 0 ? -1 : 0;
    if (rc >= 0 && n > 0) rc = H5Pset_chunk(dcpl, ndim, chunk);
    if (rc >= 0 && n > 0) rc = H5Pset_fletcher32(dcpl);
    hid_t ds = rc >= 0 ? H5Dcreate2(group, name, H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT) : -1;
    if (ds >= 0 && n > 0) rc = H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
    if (ds >= 0) H5Dclose(ds);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    return rc < 0 || ds < 0 ? h5_fail(path, name) : STATUS_OK;
}

static Status read_f32(hid_t group, const char *path, const char *name, float *data, int ndim, const int64_t *shape) {
    hid_t ds = H5Dopen2(group, name, H5P_DEFAULT);
    if (ds < 0) return errorf("%s: dataset %s is missing", path, name);
    hid_t space = H5Dget_space(ds);
    hsize_t dims[TENSOR_MAX_DIMS + 1];
    int nd = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
    Status st = STATUS_OK;
    if (nd != ndim || nd > TENSOR_MAX_DIMS) st = errorf("%s: dataset %s has %d dimensions, expected %d", path, name, nd, ndim);
    if (st == STATUS_OK) H5Sget_simple_extent_dims(space, dims, NULL);
    for (int i = 0; st == STATUS_OK && i < ndim; i++)
        if ((int64_t)dims[i] != shape[i])
            st = errorf("%s: dataset %s has extent %llu in dimension %d, expected %lld", path, name,
                        (unsigned long long)dims[i], i, (long long)shape[i]);
    hsize_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (hsize_t)shape[i];
    if (st == STATUS_OK && n > 0 && H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
        st = h5_fail(path, name);
    if (space >= 0) H5Sclose(space);
    H5Dclose(ds);
    return st;
}

/* ---- files ---- */

static Status write_tensor_group(hid_t file, const char *path, const char *group_name, const Model *m,
                                 const Tensor *tensors /* [n_params] or NULL for the weights */) {
    hid_t g = H5Gcreate2(file, group_name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) return h5_fail(path, group_name);
    Status st = STATUS_OK;
    for (int i = 0; i < m->n_params && st == STATUS_OK; i++) {
        Tensor t = tensors ? tensors[i] : *m->params[i].value;
        float *host = malloc((size_t)tensor_numel(t) * sizeof(float) + 1);
        if (!host) st = errorf("%s: out of memory", path);
        if (st == STATUS_OK) st = backend_download_f32(m->be, host, t);
        if (st == STATUS_OK) st = write_f32(g, path, m->params[i].name, host, t.ndim, t.shape);
        free(host);
    }
    H5Gclose(g);
    return st;
}

static Status read_tensor_group(hid_t file, const char *path, const char *group_name, Model *m, Tensor *tensors) {
    hid_t g = H5Gopen2(file, group_name, H5P_DEFAULT);
    if (g < 0) return errorf("%s: group %s is missing", path, group_name);
    hsize_t count = 0;
    Status st = H5Gget_num_objs(g, &count) < 0 ? h5_fail(path, group_name) : STATUS_OK;
    if (st == STATUS_OK && count != (hsize_t)m->n_params)
        st = errorf("%s: %s holds %llu tensors, the model has %d", path, group_name, (unsigned long long)count, m->n_params);
    for (int i = 0; i < m->n_params && st == STATUS_OK; i++) {
        Tensor t = tensors ? tensors[i] : *m->params[i].value;
        float *host = malloc((size_t)tensor_numel(t) * sizeof(float) + 1);
        if (!host) st = errorf("%s: out of memory", path);
        if (st == STATUS_OK) st = read_f32(g, path, m->params[i].name, host, t.ndim, t.shape);
        if (st == STATUS_OK) st = backend_upload_f32(m->be, t, host);
        free(host);
    }
    H5Gclose(g);
    return st;
}

static Status write_model_file(const char *path, const Model *m, const CheckpointState *s, const char *config_json) {
    hid_t f = H5Fcreate(path, H5F_ACC_EXCL, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) return h5_fail(path, "cannot create");
    cJSON *mc = model_config_to_json(&m->cfg);
    char *mc_text = mc ? cJSON_PrintUnformatted(mc) : NULL;
    cJSON_Delete(mc);
    Status st = mc_text ? STATUS_OK : errorf("%s: out of memory", path);
    if (st == STATUS_OK) st = write_i64_attr(f, path, "format_version", CHECKPOINT_FORMAT_VERSION);
    if (st == STATUS_OK) st = write_i64_attr(f, path, "step", s->step);
    if (st == STATUS_OK) st = write_i64_attr(f, path, "tokens", s->tokens);
    if (st == STATUS_OK) st = write_i64_attr(f, path, "world_size", s->world_size);
    if (st == STATUS_OK) st = write_i64_attr(f, path, "has_cursor", s->has_cursor);
    if (st == STATUS_OK) st = write_i64_attr(f, path, "cursor_epoch", (int64_t)s->cursor.epoch);
    if (st == STATUS_OK) st = write_i64_attr(f, path, "cursor_position", (int64_t)s->cursor.position);
    if (st == STATUS_OK) st = write_i64_attr(f, path, "cursor_windows_per_epoch", (int64_t)s->cursor.windows_per_epoch);
    if (st == STATUS_OK) st = write_string_attr(f, path, "model_config", mc_text);
    if (st == STATUS_OK) st = write_string_attr(f, path, "effective_config", config_json);
    free(mc_text);
    if (st == STATUS_OK) st = write_tensor_group(f, path, "model", m, NULL);
    int pairs = (int)(m->cfg.mla.qk_rope_head_dim / 2);
    if (st == STATUS_OK && model_config_mla_layers(&m->cfg) > 0)
        st = write_f32(f, path, "mla_inv_freq", m->mla_inv_freq, 2, (int64_t[]){m->cfg.num_hidden_layers, pairs});
    if (H5Fclose(f) < 0 && st == STATUS_OK) st = h5_fail(path, "close");
    return st;
}

static Status write_optimizer_file(const char *path, const OptimizerShard *o) {
    hid_t f = H5Fcreate(path, H5F_ACC_EXCL, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) return h5_fail(path, "cannot create");
    Status st = write_i64_attr(f, path, "adamw_step", o->adamw_step);
    if (st == STATUS_OK) st = write_i64_attr(f, path, "n_total", o->n_total);
    if (st == STATUS_OK) st = write_i64_attr(f, path, "lo", o->lo);
    if (st == STATUS_OK) st = write_i64_attr(f, path, "hi", o->hi);
    if (st == STATUS_OK) st = write_f32(f, path, "m", o->m, 1, (int64_t[]){o->hi - o->lo});
    if (st == STATUS_OK) st = write_f32(f, path, "v", o->v, 1, (int64_t[]){o->hi - o->lo});
    if (H5Fclose(f) < 0 && st == STATUS_OK) st = h5_fail(path, "close");
    return st;
}

static Status fsync_path(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return errorf("%s: cannot open to sync: %s", path, strerror(errno));
    int rc = fsync(fd);
    close(fd);
    return rc == 0 ? STATUS_OK : errorf("%s: fsync failed: %s", path, strerror(errno));
}

/* The checkpoint's files: model.h5 and optimizer_rank<R>.h5, sorted by name. */
static int is_checkpoint_file(const char *name) {
    return strcmp(name, "model.h5") == 0 || (strncmp(name, "optimizer_rank", 14) == 0 && strstr(name, ".h5"));
}

static int compare_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static Status write_manifest(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return errorf("%s: cannot open: %s", dir, strerror(errno));
    char *names[1024];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 1024)
        if (is_checkpoint_file(e->d_name)) names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], compare_names);
    cJSON *root = cJSON_CreateObject(), *files = cJSON_AddObjectToObject(root, "files");
    cJSON_AddNumberToObject(root, "format_version", CHECKPOINT_FORMAT_VERSION);
    Status st = STATUS_OK;
    char path[PATH_LEN];
    for (int i = 0; i < n && st == STATUS_OK; i++) {
        uint32_t crc = 0;
        uint64_t size = 0;
        st = names[i] ? pathf(path, "%s/%s", dir, names[i]) : errorf("%s: out of memory", dir);
        if (st == STATUS_OK) st = fsync_path(path);
        if (st == STATUS_OK) st = crc32_file(path, &crc, &size);
        cJSON *o = cJSON_AddObjectToObject(files, names[i] ? names[i] : "?");
        cJSON_AddNumberToObject(o, "bytes", (double)size);
        cJSON_AddNumberToObject(o, "crc32", (double)crc);
    }
    for (int i = 0; i < n; i++) free(names[i]);
    char *text = st == STATUS_OK ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (st == STATUS_OK && !text) st = errorf("%s: out of memory", dir);
    if (st == STATUS_OK) st = pathf(path, "%s/manifest.json", dir);
    if (st == STATUS_OK) st = file_write_atomic(path, text, strlen(text));
    free(text);
    return st;
}

static Status remove_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? STATUS_OK : errorf("%s: cannot open: %s", dir, strerror(errno));
    struct dirent *e;
    Status st = STATUS_OK;
    while ((e = readdir(d)) && st == STATUS_OK) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char path[PATH_LEN];
        struct stat sb;
        st = pathf(path, "%s/%s", dir, e->d_name);
        if (st != STATUS_OK) break;
        if (lstat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) st = remove_tree(path);
        else if (unlink(path) != 0 && errno != ENOENT) st = errorf("%s: cannot remove: %s", path, strerror(errno));
    }
    closedir(d);
    if (st == STATUS_OK && rmdir(dir) != 0 && errno != ENOENT) st = errorf("%s: cannot remove: %s", dir, strerror(errno));
    return st;
}

/* The step of a folder named step_<N>, or -1. */
static int64_t step_of(const char *name) {
    if (strncmp(name, "step_", 5) != 0 || !name[5]) return -1;
    char *end = NULL;
    long long v = strtoll(name + 5, &end, 10);
    return *end == '\0' && v >= 0 ? v : -1;
}

static int compare_desc(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Steps of the step_<N> folders, newest first. */
static Status list_steps(const char *ckdir, int64_t **steps, int *n) {
    *steps = NULL;
    *n = 0;
    DIR *d = opendir(ckdir);
    if (!d) return errno == ENOENT ? STATUS_OK : errorf("%s: cannot open: %s", ckdir, strerror(errno));
    int cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int64_t s = step_of(e->d_name);
        if (s < 0) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            int64_t *grown = realloc(*steps, (size_t)cap * sizeof **steps);
            if (!grown) {
                closedir(d);
                return errorf("%s: out of memory", ckdir);
            }
            *steps = grown;
        }
        (*steps)[(*n)++] = s;
    }
    closedir(d);
    qsort(*steps, (size_t)*n, sizeof **steps, compare_desc);
    return STATUS_OK;
}

static Status step_dir(char *out, const char *ckdir, int64_t step) {
    return pathf(out, "%s/step_%09lld", ckdir, (long long)step);
}

/* Every rank learns whether all ranks succeeded; a failure anywhere fails the save everywhere. */
static Status agree(Comm *comm, Status mine, const char *what) {
    int32_t failed = mine != STATUS_OK;
    if (comm->all_reduce_max_i32(comm, &failed, 1) != STATUS_OK) return STATUS_ERROR;
    if (mine != STATUS_OK) return mine;
    if (failed) return errorf("%s failed on another rank", what);
    return STATUS_OK;
}

Status checkpoint_save(Comm *comm, const char *run_dir, const Model *m, const OptimizerShard *shard,
                       const CheckpointState *s, const char *config_json, int keep_last) {
    hdf5_quiet();
    int rank = comm->env.rank;
    char ckdir[PATH_LEN], tmp[PATH_LEN], final[PATH_LEN], path[PATH_LEN];
    TRY(pathf(ckdir, "%s/checkpoints", run_dir));
    /* One temporary folder for the job, named by the step, so every rank writes into it. */
    TRY(pathf(tmp, "%s/.tmp_step_%09lld", ckdir, (long long)s->step));
    TRY(step_dir(final, ckdir, s->step));
    Status st = STATUS_OK;
    if (rank == 0) {
        if (mkdir(ckdir, 0755) != 0 && errno != EEXIST) st = errorf("%s: cannot create: %s", ckdir, strerror(errno));
        if (st == STATUS_OK) st = remove_tree(tmp);
        if (st == STATUS_OK && mkdir(tmp, 0755) != 0) st = errorf("%s: cannot create: %s", tmp, strerror(errno));
        if (st == STATUS_OK) st = pathf(path, "%s/model.h5", tmp);
        if (st == STATUS_OK) st = write_model_file(path, m, s, config_json);
    }
    TRY(agree(comm, st, "writing model.h5"));
    if (shard) {
        st = pathf(path, "%s/optimizer_rank%05d.h5", tmp, rank);
        if (st == STATUS_OK) st = write_optimizer_file(path, shard);
    }
    TRY(agree(comm, st, "writing the optimizer state"));
    if (rank == 0) {
        st = write_manifest(tmp);
        if (st == STATUS_OK) st = fsync_path(tmp);
        /* A checkpoint of the same step (a rerun after a resume) is replaced whole. */
        if (st == STATUS_OK) st = remove_tree(final);
        if (st == STATUS_OK && rename(tmp, final) != 0)
            st = errorf("%s: cannot rename into place: %s", final, strerror(errno));
        if (st == STATUS_OK) st = fsync_path(ckdir);
        if (st != STATUS_OK) remove_tree(tmp);
        char text[64];
        int len = snprintf(text, sizeof text, "step_%09lld\n", (long long)s->step);
        if (st == STATUS_OK) st = pathf(path, "%s/latest", ckdir);
        if (st == STATUS_OK) st = file_write_atomic(path, text, (size_t)len);

        /* Older checkpoints go only now that the new one is complete and `latest` names it. */
        int64_t *steps = NULL;
        int n = 0;
        if (st == STATUS_OK) st = list_steps(ckdir, &steps, &n);
        for (int i = 0, kept = 0; i < n && st == STATUS_OK; i++) {
            if (steps[i] > s->step) continue; /* newer ones from a run that was resumed earlier */
            if (++kept <= keep_last) continue;
            st = step_dir(path, ckdir, steps[i]);
            if (st == STATUS_OK) st = remove_tree(path);
        }
        free(steps);
    }
    if (agree(comm, st, "publishing the checkpoint") != STATUS_OK)
        return error_context("checkpoint at step %lld: ", (long long)s->step);
    return STATUS_OK;
}

Status checkpoint_remove_all(const char *run_dir) {
    char ckdir[PATH_LEN];
    TRY(pathf(ckdir, "%s/checkpoints", run_dir));
    return remove_tree(ckdir);
}

Status checkpoint_verify(const char *dir) {
    char path[PATH_LEN];
    TRY(pathf(path, "%s/manifest.json", dir));
    FILE *f = fopen(path, "rb");
    if (!f) return errorf("%s: incomplete checkpoint (no manifest.json)", dir);
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    cJSON *root = cJSON_Parse(buf);
    const cJSON *files = root ? cJSON_GetObjectItemCaseSensitive(root, "files") : NULL;
    const cJSON *version = root ? cJSON_GetObjectItemCaseSensitive(root, "format_version") : NULL;
    Status st = cJSON_IsObject(files) ? STATUS_OK : errorf("%s: manifest.json is not a checkpoint manifest", dir);
    if (st == STATUS_OK && (!cJSON_IsNumber(version) || version->valueint != CHECKPOINT_FORMAT_VERSION))
        st = errorf("%s: checkpoint format version %d, this mlatrain reads version %d", dir,
                    cJSON_IsNumber(version) ? version->valueint : -1, CHECKPOINT_FORMAT_VERSION);
    for (const cJSON *e = files ? files->child : NULL; e && st == STATUS_OK; e = e->next) {
        const cJSON *bytes = cJSON_GetObjectItemCaseSensitive(e, "bytes"), *crc = cJSON_GetObjectItemCaseSensitive(e, "crc32");
        if (!cJSON_IsNumber(bytes) || !cJSON_IsNumber(crc) || strchr(e->string, '/')) {
            st = errorf("%s: manifest.json: bad entry %s", dir, e->string);
            break;
        }
        uint32_t have = 0;
        uint64_t size = 0;
        st = pathf(path, "%s/%s", dir, e->string);
        if (st == STATUS_OK) st = crc32_file(path, &have, &size);
        if (st == STATUS_OK && size != (uint64_t)bytes->valuedouble)
            st = errorf("%s: %llu bytes, the manifest says %.0f (truncated or replaced)", path, (unsigned long long)size,
                        bytes->valuedouble);
        else if (st == STATUS_OK && have != (uint32_t)crc->valuedouble)
            st = errorf("%s: CRC-32 %08x, the manifest says %08x (corrupted)", path, have, (uint32_t)crc->valuedouble);
    }
    cJSON_Delete(root);
    return st;
}

Status checkpoint_find(const char *run_dir, char *out, size_t n, int *found) {
    *found = 0;
    char ckdir[PATH_LEN], path[PATH_LEN], name[64] = "";
    TRY(pathf(ckdir, "%s/checkpoints", run_dir));
    TRY(pathf(path, "%s/latest", ckdir));
    FILE *f = fopen(path, "r");
    if (f) {
        if (!fgets(name, sizeof name, f)) name[0] = '\0';
        fclose(f);
        name[strcspn(name, "\n")] = '\0';
    }
    int64_t latest = step_of(name);
    int64_t *steps = NULL;
    int count = 0;
    TRY(list_steps(ckdir, &steps, &count));
    /* `latest` first, then every other folder newest first. */
    for (int i = -1; i < count && !*found; i++) {
        int64_t s = i < 0 ? latest : steps[i];
        if (s < 0 || (i >= 0 && s == latest)) continue;
        char dir[PATH_LEN];
        if (step_dir(dir, ckdir, s) == STATUS_OK && checkpoint_verify(dir) == STATUS_OK) {
            snprintf(out, n, "%s", dir);
            *found = 1;
        } else {
            fprintf(stderr, "mlatrain: skipping checkpoint %s: %s\n", dir, error_message());
        }
    }
    free(steps);
    return STATUS_OK;
}

Status checkpoint_read_header(const char *dir, ModelConfig *mc, CheckpointState *s, char **config_json) {
    hdf5_quiet();
    *config_json = NULL;
    char path[PATH_LEN];
    TRY(pathf(path, "%s/model.h5", dir));
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return h5_fail(path, "cannot open");
    int64_t version = 0, v;
    char *mc_text = NULL;
    memset(s, 0, sizeof *s);
    Status st = read_i64_attr(f, path, "format_version", &version);
    if (st == STATUS_OK && version != CHECKPOINT_FORMAT_VERSION)
        st = errorf("%s: checkpoint format version %lld, this mlatrain reads version %d", path, (long long)version,
                    CHECKPOINT_FORMAT_VERSION);
    if (st == STATUS_OK) st = read_i64_attr(f, path, "step", &s->step);
    if (st == STATUS_OK) st = read_i64_attr(f, path, "tokens", &s->tokens);
    if (st == STATUS_OK) st = read_i64_attr(f, path, "world_size", &v);
    s->world_size = (int)v;
    if (st == STATUS_OK) st = read_i64_attr(f, path, "has_cursor", &v);
    s->has_cursor = (int)v;
    if (st == STATUS_OK) st = read_i64_attr(f, path, "cursor_epoch", &v);
    s->cursor.epoch = (uint64_t)v;
    if (st == STATUS_OK) st = read_i64_attr(f, path, "cursor_position", &v);
    s->cursor.position = (uint64_t)v;
    if (st == STATUS_OK) st = read_i64_attr(f, path, "cursor_windows_per_epoch", &v);
    s->cursor.windows_per_epoch = (uint64_t)v;
    if (st == STATUS_OK) st = read_string_attr(f, path, "model_config", &mc_text);
    if (st == STATUS_OK) st = read_string_attr(f, path, "effective_config", config_json);
    H5Fclose(f);
    cJSON *mc_json = st == STATUS_OK ? cJSON_Parse(mc_text) : NULL;
    if (st == STATUS_OK && !mc_json) st = errorf("%s: the model config attribute is not JSON", path);
    if (st == STATUS_OK) st = model_config_from_json(mc_json, path, mc);
    cJSON_Delete(mc_json);
    free(mc_text);
    if (st != STATUS_OK) {
        free(*config_json);
        *config_json = NULL;
    }
    return st;
}

Status checkpoint_load(const char *dir, Model *m) {
    hdf5_quiet();
    char path[PATH_LEN];
    TRY(pathf(path, "%s/model.h5", dir));
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return h5_fail(path, "cannot open");
    model_weights_changed(m);
    Status st = read_tensor_group(f, path, "model", m, NULL);
    int pairs = (int)(m->cfg.mla.qk_rope_head_dim / 2), L = (int)m->cfg.num_hidden_layers;
    if (st == STATUS_OK && model_config_mla_layers(&m->cfg) > 0) {
        float *inv = malloc((size_t)(L * pairs) * sizeof(float));
        if (!inv) st = errorf("%s: out of memory", path);
        if (st == STATUS_OK) st = read_f32(f, path, "mla_inv_freq", inv, 2, (int64_t[]){L, pairs});
        for (int l = 0; l < L && st == STATUS_OK; l++)
            if (m->cfg.layer_attention[l] == ATTENTION_MLA) st = model_set_mla_rope(m, l, inv + (size_t)l * (size_t)pairs);
        free(inv);
    }
    H5Fclose(f);
    return st;
}

/* Copies the part of one optimizer file that overlaps the wanted range. */
static Status read_optimizer_piece(const char *path, OptimizerShard *want, int64_t *covered) {
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return h5_fail(path, "cannot open");
    int64_t step = 0, n_total = 0, lo = 0, hi = 0;
    Status st = read_i64_attr(f, path, "adamw_step", &step);
    if (st == STATUS_OK) st = read_i64_attr(f, path, "n_total", &n_total);
    if (st == STATUS_OK) st = read_i64_attr(f, path, "lo", &lo);
    if (st == STATUS_OK) st = read_i64_attr(f, path, "hi", &hi);
    if (st == STATUS_OK && n_total != want->n_total)
        st = errorf("%s: holds moments of %lld values, the model has %lld", path, (long long)n_total,
                    (long long)want->n_total);
    if (st == STATUS_OK && !(0 <= lo && lo <= hi && hi <= n_total))
        st = errorf("%s: range [%lld, %lld) is not within [0, %lld)", path, (long long)lo, (long long)hi,
                    (long long)n_total);
    int64_t a = lo > want->lo ? lo : want->lo, b = hi < want->hi ? hi : want->hi;
    if (st == STATUS_OK && a < b) {
        float *m = malloc((size_t)(hi - lo) * sizeof(float)), *v = malloc((size_t)(hi - lo) * sizeof(float));
        if (!m || !v) st = errorf("%s: out of memory", path);
        if (st == STATUS_OK) st = read_f32(f, path, "m", m, 1, (int64_t[]){hi - lo});
        if (st == STATUS_OK) st = read_f32(f, path, "v", v, 1, (int64_t[]){hi - lo});
        if (st == STATUS_OK) {
            memcpy(want->m + (a - want->lo), m + (a - lo), (size_t)(b - a) * sizeof(float));
            memcpy(want->v + (a - want->lo), v + (a - lo), (size_t)(b - a) * sizeof(float));
            *covered += b - a;
            want->adamw_step = step;
        }
        free(m);
        free(v);
    }
    H5Fclose(f);
    return st;
}

Status checkpoint_load_optimizer(const char *dir, OptimizerShard *want) {
    hdf5_quiet();
    DIR *d = opendir(dir);
    if (!d) return errorf("%s: cannot open: %s", dir, strerror(errno));
    struct dirent *e;
    Status st = STATUS_OK;
    int64_t covered = 0;
    char path[PATH_LEN];
    /* Files' ranges are disjoint (the writers' shards), so the covered counts add up exactly. */
    while ((e = readdir(d)) && st == STATUS_OK) {
        if (strncmp(e->d_name, "optimizer_rank", 14) != 0) continue;
        st = pathf(path, "%s/%s", dir, e->d_name);
        if (st == STATUS_OK) st = read_optimizer_piece(path, want, &covered);
    }
    closedir(d);
    if (st == STATUS_OK && covered != want->hi - want->lo)
        st = errorf("%s: the optimizer files cover %lld of the %lld moments [%lld, %lld) this rank needs", dir,
                    (long long)covered, (long long)(want->hi - want->lo), (long long)want->lo, (long long)want->hi);
    return st;
}

Status checkpoint_list(const char *run_dir, int64_t **steps, int *n) {
    char ckdir[PATH_LEN];
    *steps = NULL;
    *n = 0;
    TRY(pathf(ckdir, "%s/checkpoints", run_dir));
    TRY(list_steps(ckdir, steps, n));
    for (int i = 0, j = *n - 1; i < j; i++, j--) { /* newest first -> oldest first */
        int64_t s = (*steps)[i];
        (*steps)[i] = (*steps)[j];
        (*steps)[j] = s;
    }
    return STATUS_OK;
}

Status checkpoint_step_dir(const char *run_dir, int64_t step, char *out, size_t n) {
    char path[PATH_LEN];
    TRY(pathf(path, "%s/checkpoints/step_%09lld", run_dir, (long long)step));
    if (snprintf(out, n, "%s", path) >= (int)n) return errorf("%s: path too long", path);
    return STATUS_OK;
}
