/* Top-k selection of the teacher's log-probs: a size-k heap per row (its root the least likely
 * kept id), rows in parallel; every row's result depends on that row alone. */
#include "train/teacher_topk.h"

#include <math.h>
#include <stdlib.h>

/* Whether (va, a) ranks below (vb, b): less likely, or as likely with a higher id. */
static int ranks_below(float va, int32_t a, float vb, int32_t b) { return va < vb || (va == vb && a > b); }

static void sift_down(int32_t *heap, int64_t n, int64_t i, const float *v) {
    for (;;) {
        int64_t l = 2 * i + 1, r = l + 1, low = i;
        if (l < n && ranks_below(v[heap[l]], heap[l], v[heap[low]], heap[low])) low = l;
        if (r < n && ranks_below(v[heap[r]], heap[r], v[heap[low]], heap[low])) low = r;
        if (low == i) return;
        int32_t t = heap[i];
        heap[i] = heap[low];
        heap[low] = t;
        i = low;
    }
}

/* One row: z [V] -> logprobs [k], ids [k]; heap [k] is scratch. Returns the first non-finite id or -1. */
static int64_t topk_row(const float *z, int64_t V, float T, int64_t k, float *logprobs, int32_t *ids, int32_t *heap) {
    float zmax = -INFINITY;
    for (int64_t v = 0; v < V; v++) {
        if (!isfinite(z[v])) return v;
        float s = z[v] / T;
        if (s > zmax) zmax = s;
    }
    double sum = 0;
    for (int64_t v = 0; v < V; v++) sum += exp((double)(z[v] / T) - (double)zmax);
    double lse = (double)zmax + log(sum);

    /* Keep the k most likely seen so far; the root is the one to drop first. */
    for (int64_t v = 0; v < k; v++) heap[v] = (int32_t)v;
    for (int64_t i = k / 2 - 1; i >= 0; i--) sift_down(heap, k, i, z);
    for (int64_t v = k; v < V; v++)
        if (ranks_below(z[heap[0]], heap[0], z[v], (int32_t)v)) {
            heap[0] = (int32_t)v;
            sift_down(heap, k, 0, z);
        }
    /* Popping the least likely first fills the output from its end. */
    for (int64_t n = k; n > 0; n--) {
        int32_t id = heap[0];
        ids[n - 1] = id;
        logprobs[n - 1] = (float)((double)(z[id] / T) - lse);
        heap[0] = heap[n - 1];
        sift_down(heap, n - 1, 0, z);
    }
    return -1;
}

Status teacher_topk_rows(const float *logits, int64_t rows, int64_t V, float T, int64_t k, float *logprobs,
                         int32_t *ids) {
    if (k < 1 || k > V) return errorf("teacher top-k: k = %lld is not in [1, %lld]", (long long)k, (long long)V);
    if (!(T > 0)) return errorf("teacher top-k: temperature %g is not > 0", (double)T);
    int64_t bad_row = -1, bad_id = -1;
    int out_of_memory = 0;
#pragma omp parallel if (rows > 1)
    {
        int32_t *heap = malloc((size_t)k * sizeof(int32_t));
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            if (!heap) {
#pragma omp atomic write
                out_of_memory = 1;
                continue;
            }
            int64_t bad = topk_row(logits + r * V, V, T, k, logprobs + r * k, ids + r * k, heap);
            if (bad >= 0) {
#pragma omp critical
                if (bad_row < 0 || r < bad_row) {
                    bad_row = r;
                    bad_id = bad;
                }
            }
        }
        free(heap);
    }
    if (out_of_memory) return errorf("teacher top-k: out of memory");
    if (bad_row >= 0)
        return errorf("teacher top-k: row %lld: logit of id %lld is %g", (long long)bad_row, (long long)bad_id,
                      (double)logits[bad_row * V + bad_id]);
    return STATUS_OK;
}
