/* Reading token files: layout validation at open, hyperslab reads of a window with every id
 * checked against vocab_size, and the full scan behind `mlatrain data summary`. */
#include "data/token_file.h"

#include <errno.h>
#include <hdf5.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data/hdf5_errors.h"

struct TokenFile {
    char *path;
    hid_t file, dataset, file_space;
    TokenFileInfo info;
};

/* A scalar (or one-element) integer attribute of obj; *found = 0 when obj has none by that name. */
static Status read_int_attribute(const char *path, hid_t obj, const char *name, int *found, int64_t *value) {
    *found = 0;
    htri_t exists = H5Aexists(obj, name);
    if (exists < 0) return errorf("%s: cannot look up attribute '%s' (%s)", path, name, hdf5_error_detail());
    if (exists == 0) return STATUS_OK;
    hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
    if (attr < 0) return errorf("%s: cannot open attribute '%s' (%s)", path, name, hdf5_error_detail());
    hid_t type = H5Aget_type(attr), space = H5Aget_space(attr);
    Status st = STATUS_OK;
    if (type < 0 || space < 0) {
        st = errorf("%s: cannot read attribute '%s' (%s)", path, name, hdf5_error_detail());
    } else if (H5Tget_class(type) != H5T_INTEGER) {
        st = errorf("%s: attribute '%s' must be an integer", path, name);
    } else if (H5Sget_simple_extent_npoints(space) != 1) {
        st = errorf("%s: attribute '%s' must hold one value, it holds %lld", path, name,
                    (long long)H5Sget_simple_extent_npoints(space));
    } else if (H5Tget_sign(type) == H5T_SGN_NONE && H5Tget_size(type) == 8) {
        uint64_t u = 0;
        if (H5Aread(attr, H5T_NATIVE_UINT64, &u) < 0)
            st = errorf("%s: cannot read attribute '%s' (%s)", path, name, hdf5_error_detail());
        *value = u > INT64_MAX ? INT64_MAX : (int64_t)u;
    } else if (H5Aread(attr, H5T_NATIVE_INT64, value) < 0) {
        st = errorf("%s: cannot read attribute '%s' (%s)", path, name, hdf5_error_detail());
    }
    if (type >= 0) H5Tclose(type);
    if (space >= 0) H5Sclose(space);
    H5Aclose(attr);
    if (st == STATUS_OK) *found = 1;
    return st;
}

/* vocab_size and eos_id: on the root group as written here, or on /tokens as some tools put them. */
static Status read_attributes(TokenFile *f) {
    int64_t vocab = 0, eos = 0;
    int found = 0;
    TRY(read_int_attribute(f->path, f->file, "vocab_size", &found, &vocab));
    if (!found) TRY(read_int_attribute(f->path, f->dataset, "vocab_size", &found, &vocab));
    if (!found) return errorf("%s: attribute 'vocab_size' is missing", f->path);
    TRY(read_int_attribute(f->path, f->file, "eos_id", &found, &eos));
    if (!found) TRY(read_int_attribute(f->path, f->dataset, "eos_id", &found, &eos));
    if (!found) return errorf("%s: attribute 'eos_id' is missing", f->path);
    if (vocab < 1 || (uint64_t)vocab > TOKEN_FILE_MAX_VOCAB)
        return errorf("%s: vocab_size %lld is out of range [1, %u]", f->path, (long long)vocab, TOKEN_FILE_MAX_VOCAB);
    if (eos < 0 || eos >= vocab)
        return errorf("%s: eos_id %lld is not below vocab_size %lld", f->path, (long long)eos, (long long)vocab);
    f->info.vocab_size = (uint32_t)vocab;
    f->info.eos_id = (uint32_t)eos;
    return STATUS_OK;
}

/* Rank, dtype, chunking and filters of /tokens, then the dataset handle reads go through. */
static Status open_tokens(TokenFile *f) {
    htri_t exists = H5Lexists(f->file, "tokens", H5P_DEFAULT);
    if (exists < 0) return errorf("%s: cannot look up /tokens (%s)", f->path, hdf5_error_detail());
    if (exists == 0) return errorf("%s: no dataset /tokens", f->path);
    hid_t ds = H5Dopen2(f->file, "tokens", H5P_DEFAULT);
    if (ds < 0) return errorf("%s: /tokens is not a readable dataset (%s)", f->path, hdf5_error_detail());
    hid_t space = H5Dget_space(ds), type = H5Dget_type(ds), dcpl = H5Dget_create_plist(ds);
    Status st = STATUS_OK;
    if (space < 0 || type < 0 || dcpl < 0) {
        st = errorf("%s: cannot read the layout of /tokens (%s)", f->path, hdf5_error_detail());
        goto done;
    }
    int rank = H5Sget_simple_extent_ndims(space);
    if (rank != 1) {
        st = errorf("%s: /tokens must be 1-D, it has %d dimensions", f->path, rank);
        goto done;
    }
    hsize_t n = 0;
    H5Sget_simple_extent_dims(space, &n, NULL);
    size_t size = H5Tget_size(type);
    if (H5Tget_class(type) != H5T_INTEGER || H5Tget_sign(type) != H5T_SGN_NONE || (size != 2 && size != 4)) {
        H5T_class_t cls = H5Tget_class(type);
        if (cls != H5T_INTEGER && cls != H5T_FLOAT)
            st = errorf("%s: /tokens is not numeric, expected uint16 or uint32", f->path);
        else
            st = errorf("%s: /tokens has dtype %s%zu, expected uint16 or uint32", f->path,
                        cls == H5T_FLOAT ? "float" : H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int", size * 8);
        goto done;
    }
    f->info.n_tokens = n;
    f->info.token_bytes = (int)size;
    if (H5Pget_layout(dcpl) == H5D_CHUNKED) {
        hsize_t chunk = 0;
        H5Pget_chunk(dcpl, 1, &chunk);
        f->info.chunk = chunk;
    }
    int nfilters = H5Pget_nfilters(dcpl);
    for (int i = 0; i < nfilters; i++) {
        unsigned flags = 0;
        size_t nelem = 0;
        unsigned config = 0;
        if (H5Pget_filter2(dcpl, (unsigned)i, &flags, &nelem, NULL, 0, NULL, &config) == H5Z_FILTER_FLETCHER32)
            f->info.fletcher32 = 1;
    }
done:
    if (type >= 0) H5Tclose(type);
    if (dcpl >= 0) H5Pclose(dcpl);
    H5Dclose(ds);
    if (st != STATUS_OK) {
        if (space >= 0) H5Sclose(space);
        return st;
    }
    f->file_space = space;

    /* HDF5 1.10 keeps a chunk per cache slot whatever the byte limit (measured: 521 slots held a
     * whole 64 MB file), so the slot count is what bounds memory. Three slots hold the chunk a
     * window is in and its neighbours (chunk i goes to slot i % 3), which is all sequential
     * reading reuses; a random window rarely finds its chunk cached anyway. */
    hid_t dapl = H5Pcreate(H5P_DATASET_ACCESS);
    size_t chunk_bytes = (size_t)f->info.chunk * (size_t)f->info.token_bytes;
    size_t cache = 3 * chunk_bytes < ((size_t)1 << 20) ? (size_t)1 << 20 : 3 * chunk_bytes;
    if (cache > ((size_t)64 << 20)) cache = (size_t)64 << 20;
    H5Pset_chunk_cache(dapl, 3, cache, 1.0);
    f->dataset = H5Dopen2(f->file, "tokens", dapl);
    H5Pclose(dapl);
    if (f->dataset < 0) return errorf("%s: cannot open /tokens (%s)", f->path, hdf5_error_detail());
    return STATUS_OK;
}

Status token_file_open(TokenFile **out, const char *path) {
    *out = NULL;
    hdf5_quiet();
    struct stat sb;
    if (stat(path, &sb) != 0) return errorf("%s: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode)) return errorf("%s: not a regular file", path);
    TokenFile *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return errorf("%s: out of memory", path);
    }
    f->file = f->dataset = f->file_space = H5I_INVALID_HID;
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    /* Closing the file then really closes it, whatever handles an error path left open. */
    H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
    /* No locks: token files are complete when they appear (written beside and renamed), and
     * cluster file systems without flock would otherwise refuse every open. */
    H5Pset_file_locking(fapl, 0, 1);
    f->file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    if (f->file < 0) {
        Status st = errorf("%s: not a readable HDF5 file (%s)", path, hdf5_error_detail());
        token_file_close(f);
        return st;
    }
    if (open_tokens(f) != STATUS_OK || read_attributes(f) != STATUS_OK) {
        token_file_close(f);
        return STATUS_ERROR;
    }
    *out = f;
    return STATUS_OK;
}

void token_file_close(TokenFile *f) {
    if (!f) return;
    if (f->file_space >= 0) H5Sclose(f->file_space);
    if (f->dataset >= 0) H5Dclose(f->dataset);
    if (f->file >= 0) H5Fclose(f->file);
    free(f->path);
    free(f);
}

const TokenFileInfo *token_file_info(const TokenFile *f) { return &f->info; }
const char *token_file_path(const TokenFile *f) { return f->path; }

Status token_file_read(TokenFile *f, uint64_t start, uint64_t count, int32_t *dst) {
    hdf5_quiet();
    if (start > f->info.n_tokens || count > f->info.n_tokens - start)
        return errorf("%s: tokens [%llu, %llu) are past the end (%llu tokens)", f->path, (unsigned long long)start,
                      (unsigned long long)(start + count), (unsigned long long)f->info.n_tokens);
    if (count == 0) return STATUS_OK;
    hsize_t h_start = start, h_count = count;
    hid_t mem = H5Screate_simple(1, &h_count, NULL);
    herr_t rc = mem < 0 ? -1 : H5Sselect_hyperslab(f->file_space, H5S_SELECT_SET, &h_start, NULL, &h_count, NULL);
    /* Read in the file's own width: HDF5's uint16 -> uint32 conversion costs more than the read.
     * uint16 ids land in the upper half of dst and are widened in place, front to back (element
     * i is read before anything at or past its bytes is written). */
    unsigned char *bytes = (unsigned char *)dst;
    int narrow = f->info.token_bytes == 2;
    if (rc >= 0)
        rc = H5Dread(f->dataset, narrow ? H5T_NATIVE_UINT16 : H5T_NATIVE_UINT32, mem, f->file_space, H5P_DEFAULT,
                     narrow ? bytes + 2 * count : bytes);
    if (mem >= 0) H5Sclose(mem);
    if (rc < 0)
        return errorf("%s: cannot read tokens [%llu, %llu): %s", f->path, (unsigned long long)start,
                      (unsigned long long)(start + count), hdf5_error_detail());
    uint32_t vocab = f->info.vocab_size, bad = 0;
    uint64_t bad_at = count;
    for (uint64_t i = 0; i < count; i++) {
        uint32_t id;
        if (narrow) {
            uint16_t v;
            memcpy(&v, bytes + 2 * count + 2 * i, 2);
            id = v;
        } else {
            memcpy(&id, bytes + 4 * i, 4);
        }
        dst[i] = (int32_t)id;
        if (id >= vocab && bad_at == count) {
            bad = id;
            bad_at = i;
        }
    }
    if (bad_at < count)
        return errorf("%s: token %u at position %llu is not below vocab_size %u", f->path, bad,
                      (unsigned long long)(start + bad_at), vocab);
    return STATUS_OK;
}

Status token_file_scan(const char *path, TokenFileStats *stats) {
    memset(stats, 0, sizeof *stats);
    TokenFile *f = NULL;
    TRY(token_file_open(&f, path));
    stats->info = f->info;
    uint64_t block = (uint64_t)TOKEN_FILE_CHUNK * 16, n = f->info.n_tokens;
    int32_t *buf = malloc((size_t)(n < block ? (n ? n : 1) : block) * sizeof *buf);
    if (!buf) {
        token_file_close(f);
        return errorf("%s: out of memory", path);
    }
    Status st = STATUS_OK;
    uint32_t eos = f->info.eos_id, last = eos;
    for (uint64_t at = 0; at < n && st == STATUS_OK; at += block) {
        uint64_t m = n - at < block ? n - at : block;
        st = token_file_read(f, at, m, buf);
        for (uint64_t i = 0; st == STATUS_OK && i < m; i++) {
            uint32_t id = (uint32_t)buf[i];
            stats->eos_count += id == eos;
            if (id > stats->max_id) stats->max_id = id;
        }
        if (st == STATUS_OK) last = (uint32_t)buf[m - 1];
    }
    stats->documents = stats->eos_count + (n > 0 && last != eos);
    free(buf);
    token_file_close(f);
    return st;
}
