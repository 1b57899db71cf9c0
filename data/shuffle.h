/* The training order of an epoch: a keyed bijection of the window indices [0, n), computed
 * position by position, so an order of billions of windows takes no memory and no thread count. */
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The window read at `position` (< n) of epoch `epoch` under `seed`. For fixed (seed, epoch, n)
 * this is a permutation of [0, n); another seed or epoch gives another permutation. */
uint64_t shuffle_window(uint64_t seed, uint64_t epoch, uint64_t n, uint64_t position);

#ifdef __cplusplus
}
#endif
