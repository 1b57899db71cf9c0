/* Writing a teacher cache: the manifest first (or the existing one compared), then whole shards,
 * each written to a temporary name, fsynced and renamed, so a killed writer loses at most the
 * shard it was writing and a later run continues with the shards that are missing. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/crc32.h"
#include "core/file_io.h"
#include "core/half.h"
#include "data/hdf5_errors.h"
#include "data/teacher_cache_shard.h"

struct TeacherCacheWriter {
    char *dir;
    TeacherCacheLayout layout;
    uint32_t manifest_crc;
    unsigned char *lp_raw, *id_raw; /* one shard in the stored widths */
};

/* The first setting in which an existing cache differs from what this run would write. */
static Status check_same_layout(const char *dir, const TeacherCacheLayout *have, const TeacherCacheLayout *want) {
    if (teacher_cache_check_made_from(dir, have, want) != STATUS_OK)
        return error_context("cannot continue the cache: ");
    const char *what = NULL;
    char a[32], b[32];
    if (have->top_k != want->top_k) {
        what = "top_k";
        snprintf(a, sizeof a, "%lld", (long long)have->top_k);
        snprintf(b, sizeof b, "%lld", (long long)want->top_k);
    } else if (have->logprob_bytes != want->logprob_bytes) {
        what = "the log-prob dtype";
        snprintf(a, sizeof a, "%s", have->logprob_bytes == 2 ? "f16" : "f32");
        snprintf(b, sizeof b, "%s", want->logprob_bytes == 2 ? "f16" : "f32");
    } else if (have->id_bytes != want->id_bytes) {
        what = "the id dtype";
        snprintf(a, sizeof a, "u%d", have->id_bytes * 8);
        snprintf(b, sizeof b, "u%d", want->id_bytes * 8);
    } else if (have->shard_windows != want->shard_windows) {
        what = "windows per shard";
        snprintf(a, sizeof a, "%llu", (unsigned long long)have->shard_windows);
        snprintf(b, sizeof b, "%llu", (unsigned long long)want->shard_windows);
    }
    if (what)
        return errorf("cannot continue the cache %s: it holds %s %s, this run asks for %s (choose another --out, or "
                      "remove it to start over)",
                      dir, what, a, b);
    return STATUS_OK;
}

/* Whether dir holds anything but what a cache's writer leaves (its shards, their temporary files). */
static int holds_other_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    int other = 0;
    while (!other && (e = readdir(d)))
        other = strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0 && strncmp(e->d_name, "shard-", 6) != 0;
    closedir(d);
    return other;
}

/* Shards a killed writer left half-written under their temporary names. */
static void remove_stale_temporaries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, "shard-", 6) != 0 || !strstr(e->d_name, ".h5.tmp.")) continue;
        char path[4096];
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) < (int)sizeof path) unlink(path);
    }
    closedir(d);
}

Status teacher_cache_writer_open(TeacherCacheWriter **out, const char *dir, const TeacherCacheLayout *layout) {
    *out = NULL;
    hdf5_quiet();
    const TeacherCacheLayout *l = layout;
    if (l->top_k < 1 || l->top_k > (int64_t)l->vocab_size)
        return errorf("top-k %lld must be in [1, vocab_size %u]", (long long)l->top_k, l->vocab_size);
    if (l->shard_windows < 1 || l->windows < 1 || l->n_files < 1)
        return errorf("%s: a cache needs at least one window and one window per shard", dir);
    if (l->id_bytes == 2 && l->vocab_size > 65536) return errorf("%s: u16 ids cannot hold vocab_size %u", dir, l->vocab_size);
    TeacherCacheWriter *w = calloc(1, sizeof *w);
    if (!w || !(w->dir = strdup(dir))) {
        free(w);
        return errorf("%s: out of memory", dir);
    }
    w->layout = *l;
    w->layout.file_windows = malloc((size_t)l->n_files * sizeof *l->file_windows);
    size_t per_shard = (size_t)l->shard_windows * (size_t)l->seq_len * (size_t)l->top_k;
    w->lp_raw = malloc(per_shard * (size_t)l->logprob_bytes);
    w->id_raw = malloc(per_shard * (size_t)l->id_bytes);
    Status st = STATUS_OK;
    if (!w->layout.file_windows || !w->lp_raw || !w->id_raw) {
        st = errorf("%s: out of memory for a shard of %llu windows", dir, (unsigned long long)l->shard_windows);
        goto done;
    }
    memcpy(w->layout.file_windows, l->file_windows, (size_t)l->n_files * sizeof *l->file_windows);
    st = make_dirs(dir);
    if (st != STATUS_OK) goto done;
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, TEACHER_CACHE_MANIFEST) >= (int)sizeof path) {
        st = errorf("%s: path too long", dir);
        goto done;
    }
    struct stat sb;
    if (stat(path, &sb) == 0) {
        TeacherCacheLayout have;
        st = teacher_cache_manifest_read(dir, &have, &w->manifest_crc);
        if (st == STATUS_OK) st = check_same_layout(dir, &have, l);
        teacher_cache_layout_free(&have);
    } else if (holds_other_files(dir)) {
        st = errorf("%s: the folder holds other files and no %s: not a teacher cache (choose an empty or new "
                    "folder)", dir, TEACHER_CACHE_MANIFEST);
    } else {
        char *text = NULL;
        st = teacher_cache_manifest_text(l, &text);
        if (st == STATUS_OK) st = file_write_atomic(path, text, strlen(text));
        if (st == STATUS_OK) w->manifest_crc = crc32_update(0, text, strlen(text));
        free(text);
    }
    if (st == STATUS_OK) remove_stale_temporaries(dir);
done:
    if (st != STATUS_OK) {
        teacher_cache_writer_close(w);
        return STATUS_ERROR;
    }
    *out = w;
    return STATUS_OK;
}

void teacher_cache_writer_close(TeacherCacheWriter *w) {
    if (!w) return;
    teacher_cache_layout_free(&w->layout);
    free(w->lp_raw);
    free(w->id_raw);
    free(w->dir);
    free(w);
}

Status teacher_cache_shard_done(TeacherCacheWriter *w, uint64_t s, int *done) {
    *done = 0;
    char path[4096];
    TRY(teacher_cache_shard_path(path, sizeof path, w->dir, s));
    struct stat sb;
    if (stat(path, &sb) != 0) return STATUS_OK;
    CacheShard sh;
    if (teacher_cache_shard_open(&sh, path, &w->layout, s, w->manifest_crc) != STATUS_OK)
        return error_context("cannot continue the cache (remove the shard to compute it again): ");
    teacher_cache_shard_close(&sh);
    *done = 1;
    return STATUS_OK;
}

static herr_t write_u64_attribute(hid_t obj, const char *name, uint64_t value) {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = space < 0 ? -1 : H5Acreate2(obj, name, H5T_STD_U64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = attr < 0 ? -1 : H5Awrite(attr, H5T_NATIVE_UINT64, &value);
    if (attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    return rc;
}

/* A dataset of rank ndim written whole from data (in mem_type); chunked by window when ndim is 3. */
static herr_t write_dataset(hid_t file, const char *name, hid_t file_type, hid_t mem_type, int ndim,
                            const hsize_t *dims, const void *data) {
    hid_t space = H5Screate_simple(ndim, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    herr_t rc = space < 0 || dcpl < 0 ? -1 : 0;
    /* No modification times: the same shard computed twice is the same bytes. */
    if (rc >= 0) rc = H5Pset_obj_track_times(dcpl, 0);
    if (rc >= 0 && ndim == 3) {
        hsize_t chunk[3] = {1, dims[1], dims[2]};
        rc = H5Pset_chunk(dcpl, 3, chunk);
    }
    hid_t ds = rc < 0 ? -1 : H5Dcreate2(file, name, file_type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (ds < 0) rc = -1;
    if (rc >= 0) rc = H5Dwrite(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
    if (ds >= 0 && H5Dclose(ds) < 0) rc = -1;
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    return rc;
}

static Status sync_file(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return errorf("%s: cannot open to sync: %s", path, strerror(errno));
    int rc = fsync(fd);
    close(fd);
    if (rc != 0) return errorf("%s: fsync failed: %s", path, strerror(errno));
    return STATUS_OK;
}

Status teacher_cache_write_shard(TeacherCacheWriter *w, uint64_t s, const float *logprobs, const int32_t *ids,
                                 const uint32_t *token_crcs) {
    hdf5_quiet();
    const TeacherCacheLayout *l = &w->layout;
    if (s >= teacher_cache_shards(l))
        return errorf("%s: shard %llu is past the cache's %llu", w->dir, (unsigned long long)s,
                      (unsigned long long)teacher_cache_shards(l));
    uint64_t n = teacher_cache_windows_in_shard(l, s);
    int64_t per_window = l->seq_len * l->top_k, total = (int64_t)n * per_window;
    for (int64_t i = 0; i < total; i++)
        if (ids[i] < 0 || (uint32_t)ids[i] >= l->vocab_size)
            return errorf("%s: shard %llu: id %d is not below vocab_size %u", w->dir, (unsigned long long)s, ids[i],
                          l->vocab_size);
    if (l->logprob_bytes == 2)
        f32_to_f16_array(w->lp_raw, logprobs, total);
    else
        memcpy(w->lp_raw, logprobs, (size_t)total * sizeof(float));
    for (int64_t i = 0; i < total; i++) {
        if (l->id_bytes == 2) {
            uint16_t v = (uint16_t)ids[i];
            memcpy(w->id_raw + 2 * i, &v, 2);
        } else {
            uint32_t v = (uint32_t)ids[i];
            memcpy(w->id_raw + 4 * i, &v, 4);
        }
    }
    uint32_t *crcs = malloc((size_t)n * sizeof *crcs);
    if (!crcs) return errorf("%s: out of memory", w->dir);
    for (uint64_t k = 0; k < n; k++) {
        size_t lp = (size_t)per_window * (size_t)l->logprob_bytes, id = (size_t)per_window * (size_t)l->id_bytes;
        crcs[k] = crc32_update(crc32_update(0, w->lp_raw + k * lp, lp), w->id_raw + k * id, id);
    }

    char path[4096], tmp[4200];
    Status st = teacher_cache_shard_path(path, sizeof path, w->dir, s);
    if (st == STATUS_OK) snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    hid_t file = H5I_INVALID_HID;
    if (st == STATUS_OK) {
        hid_t fapl = H5Pcreate(H5P_FILE_ACCESS), fcpl = H5Pcreate(H5P_FILE_CREATE);
        /* The object formats token files use: metadata blocks carry checksums of their own. */
        if (fapl >= 0) H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_V110);
        /* No times on the root group either (see write_dataset). */
        if (fcpl >= 0) H5Pset_obj_track_times(fcpl, 0);
        file = fapl < 0 || fcpl < 0 ? -1 : H5Fcreate(tmp, H5F_ACC_TRUNC, fcpl, fapl);
        if (fapl >= 0) H5Pclose(fapl);
        if (fcpl >= 0) H5Pclose(fcpl);
        if (file < 0) st = errorf("%s: cannot create (%s)", tmp, hdf5_error_detail());
    }
    if (st == STATUS_OK) {
        hsize_t dims[3] = {n, (hsize_t)l->seq_len, (hsize_t)l->top_k};
        hid_t lp_type = teacher_cache_logprob_type(l->logprob_bytes);
        hid_t id_file = l->id_bytes == 2 ? H5T_STD_U16LE : H5T_STD_U32LE;
        hid_t id_mem = l->id_bytes == 2 ? H5T_NATIVE_UINT16 : H5T_NATIVE_UINT32;
        herr_t rc = lp_type < 0 ? -1 : write_u64_attribute(file, "first_window", s * l->shard_windows);
        if (rc >= 0) rc = write_u64_attribute(file, "manifest_crc32", w->manifest_crc);
        if (rc >= 0) rc = write_dataset(file, "logprobs", lp_type, lp_type, 3, dims, w->lp_raw);
        if (rc >= 0) rc = write_dataset(file, "ids", id_file, id_mem, 3, dims, w->id_raw);
        if (rc >= 0) rc = write_dataset(file, "crc32", H5T_STD_U32LE, H5T_NATIVE_UINT32, 1, dims, crcs);
        if (rc >= 0) rc = write_dataset(file, "token_crc32", H5T_STD_U32LE, H5T_NATIVE_UINT32, 1, dims, token_crcs);
        if (lp_type >= 0) H5Tclose(lp_type);
        if (rc < 0) st = errorf("%s: cannot write (%s)", tmp, hdf5_error_detail());
    }
    if (file >= 0 && H5Fclose(file) < 0 && st == STATUS_OK)
        st = errorf("%s: cannot close (%s)", tmp, hdf5_error_detail());
    free(crcs);
    if (st == STATUS_OK) st = sync_file(tmp);
    if (st == STATUS_OK && rename(tmp, path) != 0)
        st = errorf("%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
    if (st != STATUS_OK) {
        unlink(tmp);
        return STATUS_ERROR;
    }
    fsync_parent_dir(path);
    return STATUS_OK;
}
