/* Reading a teacher cache: the manifest and the presence of every shard at open, then one window
 * at a time from its shard (a few shards kept open), its CRC-32 verified before any value is used. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/crc32.h"
#include "core/half.h"
#include "data/hdf5_errors.h"
#include "data/teacher_cache_shard.h"

enum { OPEN_SHARDS = 4 };

typedef struct {
    int64_t shard; /* -1: empty */
    CacheShard h;
    uint64_t last_used;
} ShardSlot;

struct TeacherCache {
    char *dir;
    TeacherCacheLayout layout;
    uint32_t manifest_crc;
    ShardSlot slots[OPEN_SHARDS];
    uint64_t clock;
    unsigned char *raw; /* one window's stored log-probs then ids */
};

/* dims of a dataset that must be rank ndim with these dims and a type of the class and size. */
static Status check_dataset(const char *path, hid_t ds, const char *name, int ndim, const hsize_t *want,
                            H5T_class_t cls, size_t size) {
    hid_t space = H5Dget_space(ds), type = H5Dget_type(ds);
    Status st = STATUS_OK;
    hsize_t dims[3] = {0, 0, 0};
    if (space < 0 || type < 0) {
        st = errorf("%s: cannot read the layout of /%s (%s)", path, name, hdf5_error_detail());
    } else if (H5Sget_simple_extent_ndims(space) != ndim) {
        st = errorf("%s: /%s has %d dimensions, expected %d", path, name, H5Sget_simple_extent_ndims(space), ndim);
    } else if (H5Tget_class(type) != cls || H5Tget_size(type) != size ||
               (cls == H5T_INTEGER && H5Tget_sign(type) != H5T_SGN_NONE)) {
        st = errorf("%s: /%s is not %s%zu", path, name, cls == H5T_FLOAT ? "float" : "uint", size * 8);
    } else {
        H5Sget_simple_extent_dims(space, dims, NULL);
        for (int i = 0; i < ndim && st == STATUS_OK; i++)
            if (dims[i] != want[i])
                st = errorf("%s: /%s has %llu along dimension %d, the manifest says %llu", path, name,
                            (unsigned long long)dims[i], i, (unsigned long long)want[i]);
    }
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    return st;
}

static Status read_u64_attribute(const char *path, hid_t obj, const char *name, uint64_t *out) {
    if (H5Aexists(obj, name) <= 0) return errorf("%s: attribute '%s' is missing", path, name);
    hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
    herr_t rc = attr < 0 ? -1 : H5Aread(attr, H5T_NATIVE_UINT64, out);
    if (attr >= 0) H5Aclose(attr);
    if (rc < 0) return errorf("%s: cannot read attribute '%s' (%s)", path, name, hdf5_error_detail());
    return STATUS_OK;
}

static hid_t open_dataset(hid_t file, const char *name) {
    /* Each window is read once per epoch: no chunk cache, the read goes straight to the caller. */
    hid_t dapl = H5Pcreate(H5P_DATASET_ACCESS);
    if (dapl < 0) return H5I_INVALID_HID;
    H5Pset_chunk_cache(dapl, 0, 0, 1.0);
    hid_t ds = H5Dopen2(file, name, dapl);
    H5Pclose(dapl);
    return ds;
}

void teacher_cache_shard_close(CacheShard *sh) {
    hid_t *hs[] = {&sh->logprobs, &sh->ids, &sh->crc, &sh->token_crc};
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++)
        if (*hs[i] >= 0) H5Dclose(*hs[i]);
    if (sh->file >= 0) H5Fclose(sh->file);
    sh->file = sh->logprobs = sh->ids = sh->crc = sh->token_crc = H5I_INVALID_HID;
}

Status teacher_cache_shard_open(CacheShard *sh, const char *path, const TeacherCacheLayout *l, uint64_t s,
                                uint32_t manifest_crc) {
    hdf5_quiet();
    sh->file = sh->logprobs = sh->ids = sh->crc = sh->token_crc = H5I_INVALID_HID;
    sh->windows = teacher_cache_windows_in_shard(l, s);
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0) return errorf("%s: cannot open (%s)", path, hdf5_error_detail());
    H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
    H5Pset_file_locking(fapl, 0, 1);
    sh->file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    if (sh->file < 0) return errorf("%s: not a readable HDF5 file (%s)", path, hdf5_error_detail());
    Status st = STATUS_OK;
    uint64_t first = 0, crc = 0;
    if (read_u64_attribute(path, sh->file, "first_window", &first) != STATUS_OK ||
        read_u64_attribute(path, sh->file, "manifest_crc32", &crc) != STATUS_OK) {
        st = STATUS_ERROR;
    } else if (first != s * l->shard_windows) {
        st = errorf("%s: holds windows from %llu, shard %llu starts at %llu", path, (unsigned long long)first,
                    (unsigned long long)s, (unsigned long long)(s * l->shard_windows));
    } else if (crc != manifest_crc) {
        st = errorf("%s: belongs to another cache (its manifest CRC-32 %08llx, this folder's %08x)", path,
                    (unsigned long long)crc, manifest_crc);
    }
    const char *names[] = {"logprobs", "ids", "crc32", "token_crc32"};
    hid_t *hs[] = {&sh->logprobs, &sh->ids, &sh->crc, &sh->token_crc};
    for (int i = 0; i < 4 && st == STATUS_OK; i++)
        if ((*hs[i] = open_dataset(sh->file, names[i])) < 0)
            st = errorf("%s: no readable dataset /%s (%s)", path, names[i], hdf5_error_detail());
    hsize_t rows[3] = {sh->windows, (hsize_t)l->seq_len, (hsize_t)l->top_k};
    if (st == STATUS_OK) st = check_dataset(path, sh->logprobs, "logprobs", 3, rows, H5T_FLOAT, (size_t)l->logprob_bytes);
    if (st == STATUS_OK) st = check_dataset(path, sh->ids, "ids", 3, rows, H5T_INTEGER, (size_t)l->id_bytes);
    if (st == STATUS_OK) st = check_dataset(path, sh->crc, "crc32", 1, rows, H5T_INTEGER, 4);
    if (st == STATUS_OK) st = check_dataset(path, sh->token_crc, "token_crc32", 1, rows, H5T_INTEGER, 4);
    if (st != STATUS_OK) teacher_cache_shard_close(sh);
    return st;
}

Status teacher_cache_open(TeacherCache **out, const char *dir) {
    *out = NULL;
    hdf5_quiet();
    TeacherCache *c = calloc(1, sizeof *c);
    if (!c || !(c->dir = strdup(dir))) {
        free(c);
        return errorf("%s: out of memory", dir);
    }
    for (int i = 0; i < OPEN_SHARDS; i++) {
        c->slots[i].shard = -1;
        c->slots[i].h.file = c->slots[i].h.logprobs = c->slots[i].h.ids = H5I_INVALID_HID;
        c->slots[i].h.crc = c->slots[i].h.token_crc = H5I_INVALID_HID;
    }
    Status st = teacher_cache_manifest_read(dir, &c->layout, &c->manifest_crc);
    const TeacherCacheLayout *l = &c->layout;
    uint64_t shards = st == STATUS_OK ? teacher_cache_shards(l) : 0;
    for (uint64_t s = 0; s < shards && st == STATUS_OK; s++) {
        char path[4096];
        struct stat sb;
        st = teacher_cache_shard_path(path, sizeof path, dir, s);
        if (st == STATUS_OK && stat(path, &sb) != 0)
            st = errorf("%s: shard %llu of %llu (%s) is missing: the cache is incomplete (run mlatrain teacher-cache "
                        "again to finish it)",
                        dir, (unsigned long long)s, (unsigned long long)shards, path);
    }
    size_t raw = st == STATUS_OK ? (size_t)(l->seq_len * teacher_cache_bytes_per_token(l)) : 0;
    if (st == STATUS_OK && !(c->raw = malloc(raw ? raw : 1))) st = errorf("%s: out of memory", dir);
    if (st != STATUS_OK) {
        teacher_cache_close(c);
        return STATUS_ERROR;
    }
    *out = c;
    return STATUS_OK;
}

void teacher_cache_close(TeacherCache *c) {
    if (!c) return;
    for (int i = 0; i < OPEN_SHARDS; i++)
        if (c->slots[i].shard >= 0) teacher_cache_shard_close(&c->slots[i].h);
    teacher_cache_layout_free(&c->layout);
    free(c->raw);
    free(c->dir);
    free(c);
}

const TeacherCacheLayout *teacher_cache_layout(const TeacherCache *c) { return &c->layout; }

static Status shard_handle(TeacherCache *c, uint64_t s, CacheShard **out) {
    ShardSlot *victim = &c->slots[0];
    for (int i = 0; i < OPEN_SHARDS; i++) {
        ShardSlot *slot = &c->slots[i];
        if (slot->shard == (int64_t)s) {
            slot->last_used = ++c->clock;
            *out = &slot->h;
            return STATUS_OK;
        }
        if (slot->shard < 0 || (victim->shard >= 0 && slot->last_used < victim->last_used)) victim = slot;
    }
    if (victim->shard >= 0) teacher_cache_shard_close(&victim->h);
    victim->shard = -1;
    char path[4096];
    TRY(teacher_cache_shard_path(path, sizeof path, c->dir, s));
    TRY(teacher_cache_shard_open(&victim->h, path, &c->layout, s, c->manifest_crc));
    victim->shard = (int64_t)s;
    victim->last_used = ++c->clock;
    *out = &victim->h;
    return STATUS_OK;
}

/* Row `local` of a dataset of rank 1 or 3, in the file's own width (no conversion). */
static herr_t read_row(hid_t ds, hid_t mem_type, int ndim, uint64_t local, const hsize_t *row, void *dst) {
    hsize_t start[3] = {local, 0, 0}, count[3] = {1, row[0], row[1]};
    hid_t fspace = H5Dget_space(ds);
    hid_t mem = H5Screate_simple(ndim, count, NULL);
    herr_t rc = fspace < 0 || mem < 0 ? -1 : H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL);
    if (rc >= 0) rc = H5Dread(ds, mem_type, mem, fspace, H5P_DEFAULT, dst);
    if (mem >= 0) H5Sclose(mem);
    if (fspace >= 0) H5Sclose(fspace);
    return rc;
}

Status teacher_cache_read_window(TeacherCache *c, uint64_t w, const int32_t *tokens, float *logprobs,
                                 int32_t *ids) {
    hdf5_quiet();
    const TeacherCacheLayout *l = &c->layout;
    if (w >= l->windows)
        return errorf("%s: window %llu is past the cache's %llu windows", c->dir, (unsigned long long)w,
                      (unsigned long long)l->windows);
    uint64_t s = w / l->shard_windows, local = w % l->shard_windows;
    CacheShard *sh = NULL;
    if (shard_handle(c, s, &sh) != STATUS_OK) return STATUS_ERROR;
    int64_t n = l->seq_len * l->top_k;
    unsigned char *lp_raw = c->raw, *id_raw = c->raw + (size_t)n * (size_t)l->logprob_bytes;
    hsize_t row[2] = {(hsize_t)l->seq_len, (hsize_t)l->top_k}, one[2] = {1, 1};
    uint32_t stored = 0, stored_tokens = 0;
    hid_t lp_type = teacher_cache_logprob_type(l->logprob_bytes);
    herr_t rc = lp_type < 0 ? -1 : read_row(sh->logprobs, lp_type, 3, local, row, lp_raw);
    if (lp_type >= 0) H5Tclose(lp_type);
    if (rc >= 0) rc = read_row(sh->ids, l->id_bytes == 2 ? H5T_NATIVE_UINT16 : H5T_NATIVE_UINT32, 3, local, row, id_raw);
    if (rc >= 0) rc = read_row(sh->crc, H5T_NATIVE_UINT32, 1, local, one, &stored);
    if (rc >= 0) rc = read_row(sh->token_crc, H5T_NATIVE_UINT32, 1, local, one, &stored_tokens);
    char path[4096];
    if (rc < 0) {
        teacher_cache_shard_path(path, sizeof path, c->dir, s);
        return errorf("%s: cannot read window %llu (%s)", path, (unsigned long long)w, hdf5_error_detail());
    }
    uint32_t crc = crc32_update(0, c->raw, (size_t)n * (size_t)(l->logprob_bytes + l->id_bytes));
    if (crc != stored) {
        teacher_cache_shard_path(path, sizeof path, c->dir, s);
        return errorf("%s: window %llu fails its checksum (CRC-32 %08x, stored %08x): the shard is corrupt", path,
                      (unsigned long long)w, crc, stored);
    }
    if (tokens) {
        uint32_t tc = teacher_cache_token_crc(tokens, l->seq_len + 1);
        if (tc != stored_tokens) {
            teacher_cache_shard_path(path, sizeof path, c->dir, s);
            return errorf("%s: window %llu was made from other tokens than data.train's window %llu (token CRC-32 "
                          "%08x, the data's %08x)",
                          path, (unsigned long long)w, (unsigned long long)w, stored_tokens, tc);
        }
    }
    if (l->logprob_bytes == 2)
        f16_to_f32_array(logprobs, lp_raw, n);
    else
        memcpy(logprobs, lp_raw, (size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) {
        uint32_t id;
        if (l->id_bytes == 2) {
            uint16_t v;
            memcpy(&v, id_raw + 2 * i, 2);
            id = v;
        } else {
            memcpy(&id, id_raw + 4 * i, 4);
        }
        if (id >= l->vocab_size)
            return errorf("%s: window %llu holds id %u, not below vocab_size %u", c->dir, (unsigned long long)w, id,
                          l->vocab_size);
        ids[i] = (int32_t)id;
    }
    return STATUS_OK;
}

Status teacher_cache_disk_bytes(const char *dir, const TeacherCacheLayout *l, uint64_t *bytes) {
    *bytes = 0;
    char path[4096];
    struct stat sb;
    if (snprintf(path, sizeof path, "%s/%s", dir, TEACHER_CACHE_MANIFEST) >= (int)sizeof path)
        return errorf("%s: path too long", dir);
    if (stat(path, &sb) != 0) return errorf("%s: %s", path, strerror(errno));
    *bytes += (uint64_t)sb.st_size;
    for (uint64_t s = 0; s < teacher_cache_shards(l); s++) {
        TRY(teacher_cache_shard_path(path, sizeof path, dir, s));
        if (stat(path, &sb) != 0) return errorf("%s: %s", path, strerror(errno));
        *bytes += (uint64_t)sb.st_size;
    }
    return STATUS_OK;
}
