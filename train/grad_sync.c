/* grad_all_reduce: buckets are filled in parameter order with whole tensors (a tensor larger than a
 * bucket goes alone, in bucket-sized pieces), so the reduction's order is fixed by the model alone. */
#include "train/grad_sync.h"

#include <string.h>

static Status flush(Comm *c, Model *m, float *bucket, int first, int last, int64_t filled) {
    TRY(c->all_reduce_sum_f32(c, bucket, filled));
    int64_t off = 0;
    for (int i = first; i < last; i++) {
        Tensor *g = m->params[i].grad;
        memcpy(g->data, bucket + off, tensor_bytes(*g));
        off += tensor_numel(*g);
    }
    return STATUS_OK;
}

Status grad_all_reduce(Comm *c, Model *m, float *bucket) {
    if (c->env.world == 1) return STATUS_OK;
    if (strcmp(m->be->name, "cpu") != 0)
        return errorf("data-parallel gradients: device \"%s\" across %d ranks is not available; use device cpu",
                      m->be->name, c->env.world);
    int first = 0;
    int64_t filled = 0;
    for (int i = 0; i < m->n_params; i++) {
        Tensor *g = m->params[i].grad;
        int64_t n = tensor_numel(*g);
        if (n > GRAD_BUCKET_VALUES) { /* alone, in pieces, in place */
            TRY(flush(c, m, bucket, first, i, filled));
            for (int64_t o = 0; o < n; o += GRAD_BUCKET_VALUES) {
                int64_t k = n - o < GRAD_BUCKET_VALUES ? n - o : GRAD_BUCKET_VALUES;
                TRY(c->all_reduce_sum_f32(c, tensor_f32(*g) + o, k));
            }
            first = i + 1;
            filled = 0;
            continue;
        }
        if (filled + n > GRAD_BUCKET_VALUES) {
            TRY(flush(c, m, bucket, first, i, filled));
            first = i;
            filled = 0;
        }
        memcpy(bucket + filled, g->data, tensor_bytes(*g));
        filled += n;
    }
    return flush(c, m, bucket, first, m->n_params, filled);
}
