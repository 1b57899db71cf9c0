/* Thread-local error messages behind Status: each thread (and so each OpenMP worker or rank
 * thread) keeps its own, so concurrent failures do not overwrite one another. */
#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

enum { ERROR_MESSAGE_MAX = 2048 };
static _Thread_local char error_buffer[ERROR_MESSAGE_MAX];

Status errorf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_buffer, sizeof error_buffer, fmt, ap);
    va_end(ap);
    return STATUS_ERROR;
}

Status error_context(const char *fmt, ...) {
    char prefix[ERROR_MESSAGE_MAX];
    char old[ERROR_MESSAGE_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, error_buffer, sizeof old);
    /* prefix then the old message, truncated to the buffer */
    size_t np = strnlen(prefix, ERROR_MESSAGE_MAX - 1);
    size_t no = strnlen(old, ERROR_MESSAGE_MAX - 1 - np);
    memcpy(error_buffer, prefix, np);
    memcpy(error_buffer + np, old, no);
    error_buffer[np + no] = '\0';
    return STATUS_ERROR;
}

const char *error_message(void) { return error_buffer; }

void error_clear(void) { error_buffer[0] = '\0'; }
