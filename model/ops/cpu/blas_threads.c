/* Which OpenBLAS the process runs on, and one thread per OpenBLAS call whichever it is. The matrix
 * products are tiles over OpenMP threads, each tile one sgemm that must run single-threaded (bits
 * independent of the thread count, no oversubscription). Debian ships OpenBLAS three ways behind
 * one soname, libopenblas.so.0, chosen by the alternatives system at run time:
 *   - OpenMP: a call inside an OpenMP parallel region runs single-threaded by itself. Its
 *     openblas_set_num_threads also sets OpenMP's thread count for the whole program, so it is
 *     left alone here.
 *   - pthreads: OpenBLAS knows nothing of OpenMP and would run every tile on its own pool of one
 *     thread per core, under every OpenMP thread at once. It is set to one thread per call, for
 *     the whole process; nothing here wants more.
 *   - sequential: one thread always. */
#include "cpu_ops.h"

#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;

static void single_thread_per_call(void) {
    if (openblas_get_parallel() == OPENBLAS_THREAD) openblas_set_num_threads(1);
}

void cpu_blas_init(void) { pthread_once(&blas_once, single_thread_per_call); }

const char *cpu_blas_threading(void) {
    switch (openblas_get_parallel()) {
    case OPENBLAS_SEQUENTIAL: return "sequential";
    case OPENBLAS_THREAD: return "pthreads";
    case OPENBLAS_OPENMP: return "openmp";
    default: return "unknown";
    }
}

void cpu_blas_describe(char *buf, size_t size) {
    /* openblas_get_config(): "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ... Haswell MAX_THREADS=64";
     * the name and version are its first two words. */
    const char *config = openblas_get_config();
    size_t name = strcspn(config, " "), version = config[name] ? strcspn(config + name + 1, " ") : 0;
    snprintf(buf, size, "%.*s (%s), %s, %d threads, 1 per call", (int)(name + 1 + version), config,
             cpu_blas_threading(), openblas_get_corename(), omp_get_max_threads());
}
