/* Multi-tensor launches: a list of tensors cut into fixed-size chunks, one block per chunk, the
 * list passed by value in the kernel's parameters in batches small enough for them (4 KB). */
#pragma once

#include <stdint.h>

enum { MULTI_TENSOR_BATCH = 32 };

/* Up to MULTI_TENSOR_BATCH tensors' fields; tensor i owns the blocks [first_block[i],
 * first_block[i + 1]) of the launch, chunk c of it being block first_block[i] + c. */
template <typename Fields> struct TensorBatch {
    Fields t[MULTI_TENSOR_BATCH];
    int64_t first_block[MULTI_TENSOR_BATCH + 1];
    int count;
};

/* The tensor whose chunks include `block`: the last i with first_block[i] <= block. */
template <typename Fields> __device__ inline int batch_tensor_of(const TensorBatch<Fields> &b, int64_t block) {
    int lo = 0, hi = b.count - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (b.first_block[mid] <= block) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* Adds a tensor of n values (n > 0) cut into chunks of `chunk`; returns whether the batch is now
 * full and must be launched (then reset with batch_clear). */
template <typename Fields>
inline int batch_add(TensorBatch<Fields> *b, Fields f, int64_t n, int64_t chunk) {
    if (b->count == 0) b->first_block[0] = 0;
    b->t[b->count] = f;
    b->first_block[b->count + 1] = b->first_block[b->count] + (n + chunk - 1) / chunk;
    b->count++;
    return b->count == MULTI_TENSOR_BATCH;
}

template <typename Fields> inline int64_t batch_blocks(const TensorBatch<Fields> &b) {
    return b.count ? b.first_block[b.count] : 0;
}

template <typename Fields> inline void batch_clear(TensorBatch<Fields> *b) { b->count = 0; }
