/* Decoding attention on the CPU: one token against the KV cache, split over the keys as
 * flash-decoding does: each task takes one kv head and a fixed-size chunk of cached tokens and
 * keeps, per query head of the group, the chunk's max score, its sum of exponentials and its
 * weighted values; the chunks are then combined in order. The chunk size is fixed, so the result
 * does not depend on the thread count; and an absorbed MLA cache (one kv head) still spreads over
 * every thread. */
#include "cpu_ops.h"
#include "vector_math.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Cached tokens per task: a chunk's keys (256 x 64 floats) stay in L2 while every head of the
 * group reads them. */
enum { DECODE_CHUNK = 256 };

Status cpu_attention_decode(Backend *be, Tensor out, Tensor q, Tensor k, Tensor k_shared, Tensor v, float scale) {
    const char *op = "attention_decode";
    DecodeDims dm;
    TRY(attention_decode_check(out, q, k, k_shared, v, scale, DT_F32, &dm));
    const int64_t H = dm.H, n = dm.n, Hk = dm.Hk, Dk = dm.Dk, Ds = dm.Ds, Dv = dm.Dv, Dq = Dk + Ds, group = H / Hk;
    const int64_t nchunks = (n + DECODE_CHUNK - 1) / DECODE_CHUNK, ntasks = Hk * nchunks;

    /* Per task and head of its group: max, sum of exponentials, weighted values [Dv]; then the
     * scores of one chunk per thread. */
    float *mx = malloc((size_t)(ntasks * group) * sizeof *mx);
    float *sum = malloc((size_t)(ntasks * group) * sizeof *sum);
    float *acc = malloc((size_t)(ntasks * group * (Dv > 0 ? Dv : 1)) * sizeof *acc);
    if (!mx || !sum || !acc) {
        free(mx);
        free(sum);
        free(acc);
        return errorf("%s: out of memory for the partial sums of %lld chunks", op, (long long)ntasks);
    }
    const float *qp = tensor_f32(q), *kp = tensor_f32(k), *vp = tensor_f32(v);
    const float *ksp = Ds ? tensor_f32(k_shared) : NULL;

#pragma omp parallel for schedule(static)
    for (int64_t task = 0; task < ntasks; task++) {
        const int64_t g = task / nchunks, j0 = (task % nchunks) * DECODE_CHUNK;
        const int64_t j1 = j0 + DECODE_CHUNK < n ? j0 + DECODE_CHUNK : n;
        float s[DECODE_CHUNK];
        for (int64_t hi = 0; hi < group; hi++) {
            const float *qh = qp + (g * group + hi) * Dq;
            float m = -INFINITY;
            for (int64_t j = j0; j < j1; j++) {
                float d = Dk ? cpu_dot(qh, kp + (j * Hk + g) * Dk, Dk) : 0.0f;
                if (Ds) d += cpu_dot(qh + Dk, ksp + j * Ds, Ds);
                s[j - j0] = scale * d;
                m = s[j - j0] > m ? s[j - j0] : m;
            }
            for (int64_t j = 0; j < j1 - j0; j++) s[j] = cpu_expf(s[j] - m);
            float *o = acc + (task * group + hi) * Dv;
            memset(o, 0, (size_t)Dv * sizeof *o);
            for (int64_t j = j0; j < j1; j++) {
                const float p = s[j - j0], *vj = vp + (j * Hk + g) * Dv;
                for (int64_t d = 0; d < Dv; d++) o[d] += p * vj[d];
            }
            mx[task * group + hi] = m;
            sum[task * group + hi] = cpu_sum(s, j1 - j0);
        }
    }

    /* Chunks in order: rescale each to the overall max, add, divide by the total. */
    float *outp = tensor_f32(out);
    for (int64_t h = 0; h < H; h++) {
        const int64_t g = h / group, hi = h % group;
        float m = -INFINITY, l = 0.0f;
        for (int64_t c = 0; c < nchunks; c++) {
            float mc = mx[(g * nchunks + c) * group + hi];
            m = mc > m ? mc : m;
        }
        float *o = outp + h * Dv;
        memset(o, 0, (size_t)Dv * sizeof *o);
        for (int64_t c = 0; c < nchunks; c++) {
            const int64_t t = (g * nchunks + c) * group + hi;
            const float w = expf(mx[t] - m), *oc = acc + t * Dv;
            l += w * sum[t];
            for (int64_t d = 0; d < Dv; d++) o[d] += w * oc[d];
        }
        const float inv = 1.0f / l;
        for (int64_t d = 0; d < Dv; d++) o[d] *= inv;
    }
    free(mx);
    free(sum);
    free(acc);
    return STATUS_OK;
}
