/* A balanced Feistel network on the smallest even-width bit domain that holds n, keyed by Philox
 * with (seed, epoch), and cycle-walked back into [0, n): a permutation by construction. */
#include "data/shuffle.h"

#include "core/rng.h"

/* Six rounds: four make a Feistel network a strong pseudo-random permutation (Luby-Rackoff);
 * the two extra cost nothing next to a window's read. */
enum { SHUFFLE_ROUNDS = 6 };

/* Keeps the shuffle's Philox counters apart from those of weight initialisation under run.seed. */
static const uint64_t SHUFFLE_STREAM = 0x7368756666000000ull;

static uint64_t feistel(uint64_t seed, uint64_t stream, unsigned half_bits, uint64_t x) {
    uint64_t mask = (half_bits == 32) ? 0xFFFFFFFFull : ((1ull << half_bits) - 1);
    uint64_t left = x >> half_bits, right = x & mask;
    for (uint64_t round = 0; round < SHUFFLE_ROUNDS; round++) {
        uint32_t r[4];
        philox4x32(seed, stream, round << 32 | right, r);
        uint64_t next = left ^ (r[0] & mask);
        left = right;
        right = next;
    }
    return left << half_bits | right;
}

uint64_t shuffle_window(uint64_t seed, uint64_t epoch, uint64_t n, uint64_t position) {
    if (n <= 1) return 0;
    unsigned bits = 64 - (unsigned)__builtin_clzll(n - 1); /* n - 1 fits in `bits` bits */
    unsigned half_bits = (bits + 1) / 2;
    uint64_t stream = SHUFFLE_STREAM + epoch;
    /* The domain is below 4n, so each walk step lands in [0, n) with probability above 1/4. */
    uint64_t x = position;
    do {
        x = feistel(seed, stream, half_bits, x);
    } while (x >= n);
    return x;
}
