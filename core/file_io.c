/* file_write_atomic: temporary file, fsync, rename, fsync of the folder. */
#include "core/file_io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static Status write_all(int fd, const char *name, const char *data, size_t len) {
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, data + done, len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return errorf("%s: write failed: %s", name, n < 0 ? strerror(errno) : "no progress");
        done += (size_t)n;
    }
    return STATUS_OK;
}

void fsync_parent_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    int dfd = dir ? open(dir, O_RDONLY | O_DIRECTORY) : -1;
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    free(dir);
}

Status file_write_atomic(const char *path, const void *data, size_t n) {
    size_t tmp_size = strlen(path) + 16;
    char *tmp = malloc(tmp_size);
    if (!tmp) return errorf("%s: out of memory", path);
    snprintf(tmp, tmp_size, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        Status st = errorf("%s: cannot create a temporary file beside it: %s", path, strerror(errno));
        free(tmp);
        return st;
    }
    Status st = write_all(fd, tmp, data, n);
    /* mkstemp creates the file readable by its owner only; these files are for everyone. */
    if (st == STATUS_OK && fchmod(fd, 0644) != 0) st = errorf("%s: chmod failed: %s", tmp, strerror(errno));
    if (st == STATUS_OK && fsync(fd) != 0) st = errorf("%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) != 0 && st == STATUS_OK) st = errorf("%s: close failed: %s", tmp, strerror(errno));
    if (st == STATUS_OK && rename(tmp, path) != 0) st = errorf("%s: rename from %s failed: %s", path, tmp, strerror(errno));
    if (st != STATUS_OK) unlink(tmp);
    else fsync_parent_dir(path);
    free(tmp);
    return st;
}

Status make_dirs(const char *dir) {
    if (!*dir) return errorf("the output directory is an empty path");
    char *path = strdup(dir);
    if (!path) return errorf("%s: out of memory", dir);
    Status st = STATUS_OK;
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != '\0') continue;
        char at = *p;
        *p = '\0';
        struct stat info;
        if (mkdir(path, 0755) != 0 && errno != EEXIST) st = errorf("%s: cannot create: %s", path, strerror(errno));
        else if (stat(path, &info) != 0) st = errorf("%s: %s", path, strerror(errno));
        else if (!S_ISDIR(info.st_mode)) st = errorf("%s: exists and is not a directory", path);
        *p = at;
        if (st != STATUS_OK || at == '\0') break;
    }
    free(path);
    return st;
}
