/* The warp-level tensor-core and asynchronous-copy instructions of compute capability 8.0 and newer
 * (mma.sync, ldmatrix, cp.async), with the register layouts the kernels that use them rely on. */
#pragma once

#include <stdint.h>

#include "storage.cuh"

/* d += a b for one warp: A 16x16 bf16 row-major, B 16x8 bf16 column-major, D 16x8 f32. Lane l, with
 * g = l / 4 and t = l % 4, holds a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1], a[2] = A[g][2t+8, 2t+9],
 * a[3] = A[g+8][2t+8, 2t+9]; b[0] = B[2t, 2t+1][g], b[1] = B[2t+8, 2t+9][g]; d[0], d[1] = D[g][2t, 2t+1],
 * d[2], d[3] = D[g+8][2t, 2t+1]. A pair is packed with its lower index in the low 16 bits. */
__device__ __forceinline__ void mma_bf16_16x8x16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* Four 8x8 bf16 matrices from shared memory: lane l gives the address of row l % 8 of matrix l / 8
 * (16 bytes, 16-byte aligned) and receives in r[j] matrix j's row l / 4, columns 2(l % 4) and
 * 2(l % 4) + 1; with _trans, rows 2(l % 4) and 2(l % 4) + 1 of column l / 4. */
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const bf16 *row) {
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const bf16 *row) {
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

/* Two floats rounded to bf16 and packed, lo in the low half (an A operand pair). */
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(lo)) |
           (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(hi)) << 16;
}

/* 16 bytes global -> shared without passing through registers; both addresses 16-byte aligned.
 * Copies issued since the last commit form a group; wait<N> returns once at most N of the
 * committed groups are still in flight. A __syncthreads after the wait makes the data visible to
 * the other threads of the block. */
__device__ __forceinline__ void cp_async_16(bf16 *dst, const bf16 *src) {
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
