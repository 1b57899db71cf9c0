/* Block-wide reductions whose order depends on the block size alone: each thread's value goes into
 * shared memory and a fixed tree adds them, so the same inputs give the same bits on every run. */
#pragma once

#include <cuda_runtime.h>

/* Threads per block of every kernel that reduces with these: a power of two, so the tree halves. */
#define REDUCE_BLOCK_THREADS 256

/* Sum over the block of each thread's v; every thread gets the result. `shared` holds
 * REDUCE_BLOCK_THREADS values of T; it is free again when this returns. */
template <typename T>
__device__ T block_sum(T v, T *shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int stride = REDUCE_BLOCK_THREADS / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
        __syncthreads();
    }
    T total = shared[0];
    __syncthreads();
    return total;
}

/* Max over the block of v, and the lowest index holding it (each thread passes the lowest index
 * of its own maximum); every thread gets both. */
__device__ inline void block_max_argmax(float v, long long at, float *shared_v, long long *shared_at,
                                        float *max_out, long long *at_out) {
    shared_v[threadIdx.x] = v;
    shared_at[threadIdx.x] = at;
    __syncthreads();
    for (int stride = REDUCE_BLOCK_THREADS / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) {
            float a = shared_v[threadIdx.x], b = shared_v[threadIdx.x + stride];
            long long ia = shared_at[threadIdx.x], ib = shared_at[threadIdx.x + stride];
            if (b > a || (b == a && ib < ia)) {
                shared_v[threadIdx.x] = b;
                shared_at[threadIdx.x] = ib;
            }
        }
        __syncthreads();
    }
    *max_out = shared_v[0];
    *at_out = shared_at[0];
    __syncthreads();
}
