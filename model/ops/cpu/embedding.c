/* Token embedding on the CPU: a row gather forward, and backward a scatter-add into the table
 * that sums each element in token order, so the result never depends on the thread count. */
#include "cpu_ops.h"

#include <string.h>

/* Columns per work item in the backward scatter: a multiple of the 16-float cache line, so no two
 * threads write the same line of dtable. */
enum { EMBEDDING_COLUMN_BLOCK = 64 };

static Status check_ids(const char *op, const int32_t *ids, int64_t n, int64_t vocab) {
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab)
            return errorf("%s: ids[%lld] = %d is outside the vocabulary [0, %lld)", op, (long long)i,
                          ids[i], (long long)vocab);
    return STATUS_OK;
}

Status cpu_embedding_forward(Backend *be, Tensor out, Tensor ids, Tensor table) {
    TRY(tensor_check("embedding_forward", "table", table, DT_F32, 2, (int64_t[]){-1, -1}));
    TRY(tensor_check("embedding_forward", "ids", ids, DT_I32, 1, (int64_t[]){-1}));
    int64_t V = table.shape[0], D = table.shape[1], N = ids.shape[0];
    TRY(tensor_check("embedding_forward", "out", out, DT_F32, 2, (int64_t[]){N, D}));
    const int32_t *id = tensor_i32(ids);
    TRY(check_ids("embedding_forward", id, N, V));

    float *o = tensor_f32(out);               /* (N, D) */
    const float *w = tensor_f32(table);       /* (V, D) */
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) memcpy(o + n * D, w + (int64_t)id[n] * D, (size_t)D * sizeof(float));
    return STATUS_OK;
}

Status cpu_embedding_backward(Backend *be, Tensor dtable, Tensor dout, Tensor ids) {
    TRY(tensor_check("embedding_backward", "dtable", dtable, DT_F32, 2, (int64_t[]){-1, -1}));
    TRY(tensor_check("embedding_backward", "ids", ids, DT_I32, 1, (int64_t[]){-1}));
    int64_t V = dtable.shape[0], D = dtable.shape[1], N = ids.shape[0];
    TRY(tensor_check("embedding_backward", "dout", dout, DT_F32, 2, (int64_t[]){N, D}));
    const int32_t *id = tensor_i32(ids);
    TRY(check_ids("embedding_backward", id, N, V));

    float *dw = tensor_f32(dtable);           /* (V, D) */
    const float *g = tensor_f32(dout);        /* (N, D) */
    /* Threads own column ranges, and each walks all tokens in order: a repeated id is summed in
     * token order by one thread, with no atomics. */
    int64_t nblocks = (D + EMBEDDING_COLUMN_BLOCK - 1) / EMBEDDING_COLUMN_BLOCK;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t c0 = b * EMBEDDING_COLUMN_BLOCK;
        int64_t c1 = c0 + EMBEDDING_COLUMN_BLOCK < D ? c0 + EMBEDDING_COLUMN_BLOCK : D;
        for (int64_t n = 0; n < N; n++) {
            float *dst = dw + (int64_t)id[n] * D;
            const float *src = g + n * D;
            for (int64_t c = c0; c < c1; c++) dst[c] += src[c];
        }
    }
    return STATUS_OK;
}
