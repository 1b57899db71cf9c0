/* The error handler behind hdf5_error_detail: HDF5 calls it when an API call fails, before the
 * next call clears the stack, and the first frame walked upward is the innermost one. */
#include "data/hdf5_errors.h"

#include <hdf5.h>
#include <stdio.h>

static _Thread_local char detail[256];

static herr_t keep_innermost(unsigned n, const H5E_error2_t *err, void *data) {
    (void)data;
    if (n == 0 && err && err->desc) snprintf(detail, sizeof detail, "%s", err->desc);
    return 0;
}

static herr_t capture_stack(hid_t stack, void *data) {
    (void)data;
    detail[0] = '\0';
    H5Ewalk2(stack, H5E_WALK_UPWARD, keep_innermost, NULL);
    /* One line: HDF5 messages occasionally carry newlines. */
    for (char *p = detail; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    return 0;
}

void hdf5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, capture_stack, NULL); }

const char *hdf5_error_detail(void) { return detail[0] ? detail : "no detail"; }

void hdf5_skip_exit_cleanup(void) { H5dont_atexit(); }
