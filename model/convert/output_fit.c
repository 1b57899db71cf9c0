/* o_proj refitted by ridge regression: after the latent and the rope key are fixed, the value path
 * (W_o,h W_uv,h per head, d x r, any such matrix when r <= v_head_dim) is linear in W_o, so the best
 * one for the student's own attention probabilities is a linear least-squares problem; it absorbs
 * both the values' compression and part of the scores' error. */
#include "model/convert/output_fit.h"

#include <stdlib.h>

#include "model/convert/linalg.h"

Status output_projection_fit(const float *Z, const float *Y, int64_t N, int64_t F, int64_t D, double ridge, float *W) {
    if (N < 1 || F < 1 || D < 1) return errorf("output fit: empty problem (N %lld, F %lld, D %lld)", (long long)N, (long long)F, (long long)D);
    if (!(ridge > 0)) return errorf("output fit: the ridge must be > 0 (got %g)", ridge);
    double *G = malloc((size_t)(F * F) * sizeof(double)), *R = malloc((size_t)(F * D) * sizeof(double));
    Status st = G && R ? STATUS_OK : errorf("output fit: out of memory");
    if (st == STATUS_OK) st = cross_moment(Z, NULL, N, F, F, G);
    if (st == STATUS_OK) st = cross_moment(Z, Y, N, F, D, R);
    if (st == STATUS_OK) {
        double trace = 0;
        for (int64_t f = 0; f < F; f++) trace += G[f * F + f];
        double lambda = ridge * (trace > 0 ? trace / (double)F : 1.0);
        for (int64_t f = 0; f < F; f++) {
            G[f * F + f] += lambda;
            for (int64_t d = 0; d < D; d++) R[f * D + d] += lambda * W[d * F + f];
        }
        st = solve_spd(G, F, R, D);
    }
    if (st == STATUS_OK)
        for (int64_t d = 0; d < D; d++)
            for (int64_t f = 0; f < F; f++) W[d * F + f] = (float)R[f * D + d];
    free(G);
    free(R);
    return st;
}
