/* Writing token files: ids are buffered a chunk at a time into a temporary file beside the
 * target, which is fsynced and renamed into place only when complete, so no half file is seen. */
#include <fcntl.h>
#include <hdf5.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/hdf5_errors.h"
#include "data/token_file.h"

struct TokenWriter {
    char *path, *tmp_path;
    hid_t file, dataset;
    uint32_t vocab_size, eos_id;
    int token_bytes;
    void *buf;            /* up to TOKEN_FILE_CHUNK ids in the on-disk width */
    size_t buffered;
    uint64_t written;     /* ids already in the dataset */
    int finished;
};

static Status write_attribute(TokenWriter *w, const char *name, int64_t value) {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = space < 0 ? -1 : H5Acreate2(w->file, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = attr < 0 ? -1 : H5Awrite(attr, H5T_NATIVE_INT64, &value);
    if (attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    if (rc < 0) return errorf("%s: cannot write attribute '%s' (%s)", w->path, name, hdf5_error_detail());
    return STATUS_OK;
}

/* The dataset is made on the first flush, so a file smaller than one chunk gets a chunk of its
 * own size rather than a mostly empty 64 Ki-token one. */
static Status create_dataset(TokenWriter *w, hsize_t chunk) {
    hsize_t zero = 0, unlimited = H5S_UNLIMITED;
    if (chunk == 0) chunk = 1;
    hid_t space = H5Screate_simple(1, &zero, &unlimited);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    herr_t rc = space < 0 || dcpl < 0 ? -1 : H5Pset_chunk(dcpl, 1, &chunk);
    if (rc >= 0) rc = H5Pset_fletcher32(dcpl);
    if (rc >= 0) {
        hid_t type = w->token_bytes == 2 ? H5T_STD_U16LE : H5T_STD_U32LE;
        w->dataset = H5Dcreate2(w->file, "tokens", type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
        if (w->dataset < 0) rc = -1;
    }
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    if (rc < 0) return errorf("%s: cannot create /tokens (%s)", w->path, hdf5_error_detail());
    return STATUS_OK;
}

static Status flush_buffer(TokenWriter *w) {
    if (w->dataset < 0) TRY(create_dataset(w, w->buffered < TOKEN_FILE_CHUNK ? w->buffered : TOKEN_FILE_CHUNK));
    if (w->buffered == 0) return STATUS_OK;
    hsize_t start = w->written, count = w->buffered, size = w->written + w->buffered;
    herr_t rc = H5Dset_extent(w->dataset, &size);
    hid_t fspace = rc < 0 ? -1 : H5Dget_space(w->dataset);
    hid_t mem = H5Screate_simple(1, &count, NULL);
    if (fspace < 0 || mem < 0) rc = -1;
    if (rc >= 0) rc = H5Sselect_hyperslab(fspace, H5S_SELECT_SET, &start, NULL, &count, NULL);
    if (rc >= 0)
        rc = H5Dwrite(w->dataset, w->token_bytes == 2 ? H5T_NATIVE_UINT16 : H5T_NATIVE_UINT32, mem, fspace,
                      H5P_DEFAULT, w->buf);
    if (mem >= 0) H5Sclose(mem);
    if (fspace >= 0) H5Sclose(fspace);
    if (rc < 0) return errorf("%s: cannot write tokens (%s)", w->path, hdf5_error_detail());
    w->written += w->buffered;
    w->buffered = 0;
    return STATUS_OK;
}

Status token_writer_create(TokenWriter **out, const char *path, uint32_t vocab_size, uint32_t eos_id) {
    *out = NULL;
    hdf5_quiet();
    if (vocab_size < 1 || vocab_size > TOKEN_FILE_MAX_VOCAB)
        return errorf("%s: vocab_size %u is out of range [1, %u]", path, vocab_size, TOKEN_FILE_MAX_VOCAB);
    if (eos_id >= vocab_size) return errorf("%s: eos_id %u is not below vocab_size %u", path, eos_id, vocab_size);
    TokenWriter *w = calloc(1, sizeof *w);
    if (!w) return errorf("%s: out of memory", path);
    w->file = w->dataset = H5I_INVALID_HID;
    size_t tmp_len = strlen(path) + 32;
    if (!(w->path = strdup(path)) || !(w->tmp_path = calloc(1, tmp_len))) goto oom;
    w->vocab_size = vocab_size;
    w->eos_id = eos_id;
    w->token_bytes = vocab_size <= 65536 ? 2 : 4;
    if (!(w->buf = malloc((size_t)TOKEN_FILE_CHUNK * (size_t)w->token_bytes))) goto oom;
    snprintf(w->tmp_path, tmp_len, "%s.tmp.%ld", path, (long)getpid());

    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    /* The 1.8 object formats: every metadata block carries a checksum (so corruption is reported,
     * not followed), and every HDF5 since 2008, h5py included, reads them. */
    H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_V110);
    w->file = H5Fcreate(w->tmp_path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    if (w->file < 0) {
        Status st = errorf("%s: cannot create (%s)", w->tmp_path, hdf5_error_detail());
        token_writer_discard(w);
        return st;
    }
    *out = w;
    return STATUS_OK;
oom:
    token_writer_discard(w);
    return errorf("%s: out of memory", path);
}

Status token_writer_append(TokenWriter *w, const int32_t *ids, size_t n) {
    hdf5_quiet();
    if (w->finished) return errorf("%s: append after finish", w->path);
    for (size_t i = 0; i < n; i++) {
        uint32_t id = (uint32_t)ids[i];
        if (ids[i] < 0 || id >= w->vocab_size)
            return errorf("%s: token %lld at position %llu is not below vocab_size %u", w->path, (long long)ids[i],
                          (unsigned long long)(w->written + w->buffered), w->vocab_size);
        if (w->token_bytes == 2)
            ((uint16_t *)w->buf)[w->buffered] = (uint16_t)id;
        else
            ((uint32_t *)w->buf)[w->buffered] = id;
        if (++w->buffered == TOKEN_FILE_CHUNK) TRY(flush_buffer(w));
    }
    return STATUS_OK;
}

uint64_t token_writer_count(const TokenWriter *w) { return w->written + w->buffered; }

/* fsync of a path opened read-only: enough on Linux for the data and, on a directory, the rename. */
static Status sync_path(const char *path, int directory) {
    int fd = open(path, O_RDONLY | (directory ? O_DIRECTORY : 0));
    if (fd < 0) return errorf("%s: cannot open to sync", path);
    int rc = fsync(fd);
    close(fd);
    if (rc != 0) return errorf("%s: fsync failed", path);
    return STATUS_OK;
}

Status token_writer_finish(TokenWriter *w) {
    hdf5_quiet();
    if (w->finished) return STATUS_OK;
    TRY(flush_buffer(w));
    TRY(write_attribute(w, "vocab_size", w->vocab_size));
    TRY(write_attribute(w, "eos_id", w->eos_id));
    herr_t rc = H5Dclose(w->dataset);
    w->dataset = H5I_INVALID_HID;
    if (rc >= 0) rc = H5Fclose(w->file);
    w->file = H5I_INVALID_HID;
    if (rc < 0) return errorf("%s: cannot close (%s)", w->tmp_path, hdf5_error_detail());
    TRY(sync_path(w->tmp_path, 0));
    w->finished = 1;
    return STATUS_OK;
}

Status token_writer_commit(TokenWriter *w) {
    Status st = token_writer_finish(w);
    if (st == STATUS_OK && rename(w->tmp_path, w->path) != 0)
        st = errorf("%s: cannot rename %s into place", w->path, w->tmp_path);
    if (st == STATUS_OK) {
        char *dir_copy = strdup(w->path);
        st = dir_copy ? sync_path(dirname(dir_copy), 1) : errorf("%s: out of memory", w->path);
        free(dir_copy);
        /* The file is in place even if the directory sync failed: nothing to remove. */
        free(w->tmp_path);
        w->tmp_path = NULL;
    }
    token_writer_discard(w);
    return st;
}

void token_writer_discard(TokenWriter *w) {
    if (!w) return;
    hdf5_quiet();
    if (w->dataset >= 0) H5Dclose(w->dataset);
    if (w->file >= 0) H5Fclose(w->file);
    if (w->tmp_path) unlink(w->tmp_path);
    free(w->buf);
    free(w->tmp_path);
    free(w->path);
    free(w);
}
