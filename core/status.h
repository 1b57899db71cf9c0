/* Errors as return values: a function returns STATUS_OK or an error whose message says what and
 * where. Library code never exits; only the CLI decides to, after printing error_message(). */
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { STATUS_OK = 0, STATUS_ERROR = 1 } Status;

/* Sets this thread's error message (printf-style) and returns STATUS_ERROR. */
Status errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prepends context ("loading layer 3: ") to this thread's current message; returns STATUS_ERROR. */
Status error_context(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The message of the last error on this thread ("" if none). */
const char *error_message(void);

void error_clear(void);

/* Propagate an error, unchanged, to the caller. */
#define TRY(expr)                                  \
    do {                                           \
        if ((expr) != STATUS_OK) return STATUS_ERROR; \
    } while (0)

#ifdef __cplusplus
}
#endif
