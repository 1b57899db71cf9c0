/* Which of the teacher's RoPE frequency pairs the MLA student keeps in its shared rope key
 * (MHA2MLA's partial-RoPE selections); the other dims become the no-RoPE part the latent holds. */
#include <stdlib.h>

#include "model/convert/convert.h"

Status rope_select_pairs(RopeSelect how, int head_dim, int rope_dim, const double *importance, int *pairs) {
    int half = head_dim / 2, P = rope_dim / 2;
    if (rope_dim % 2 || rope_dim < 2) return errorf("rope selection: qk_rope_head_dim = %d must be even and >= 2", rope_dim);
    if (P > half)
        return errorf("rope selection: qk_rope_head_dim = %d keeps more pairs than the teacher's head_dim = %d has",
                      rope_dim, head_dim);
    switch (how) {
    case ROPE_SELECT_HIGH:
        for (int j = 0; j < P; j++) pairs[j] = j;
        return STATUS_OK;
    case ROPE_SELECT_LOW:
        for (int j = 0; j < P; j++) pairs[j] = half - P + j;
        return STATUS_OK;
    case ROPE_SELECT_UNIFORM:
        if (half % P)
            return errorf("rope selection uniform: qk_rope_head_dim = %d must divide head_dim = %d", rope_dim, head_dim);
        for (int j = 0; j < P; j++) pairs[j] = j * (half / P);
        return STATUS_OK;
    case ROPE_SELECT_NORM: {
        /* The P largest, ties to the faster pair; then ascending, so the student's pairs keep the
         * teacher's order of frequencies. */
        char *taken = calloc((size_t)half, 1);
        if (!taken) return errorf("rope selection: out of memory");
        for (int j = 0; j < P; j++) {
            int best = -1;
            for (int i = 0; i < half; i++)
                if (!taken[i] && (best < 0 || importance[i] > importance[best])) best = i;
            taken[best] = 1;
        }
        int n = 0;
        for (int i = 0; i < half; i++)
            if (taken[i]) pairs[n++] = i;
        free(taken);
        return STATUS_OK;
    }
    case ROPE_SELECT_ROROPE:
    case ROPE_SELECT_ROROPE_FREE:
        break; /* chosen per layer from calibration keys (rorope.c) */
    }
    return errorf("rope selection: method %d does not select teacher pairs", (int)how);
}
