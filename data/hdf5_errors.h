/* HDF5's errors in mlatrain's form: instead of printing its error stack, HDF5 hands it to us and
 * we keep the innermost message as the tail of our one-line error. */
#pragma once

/* Replaces HDF5's printing of errors on this thread with keeping the message (the setting is per
 * thread in threadsafe builds, so every entry point that calls HDF5 calls this first). */
void hdf5_quiet(void);

/* The innermost (most specific) message of the last HDF5 call that failed on this thread, e.g.
 * "data error detected by Fletcher32 checksum"; "no detail" if none. Kept when later calls (the
 * closes on an error path) succeed, so it may be read after them. */
const char *hdf5_error_detail(void);

/* Skips HDF5's exit handler, for a process that closes every HDF5 object it opens: after some
 * corrupted files HDF5 1.10 holds internal blocks it leaked, and the handler would print a
 * warning about them after our one-line error. Effective only before any other HDF5 call. */
void hdf5_skip_exit_cleanup(void);
