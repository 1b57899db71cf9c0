/* RoRoPE for one layer: per RoPE frequency pair, the orthogonal rotation across kv heads that puts
 * most of the keys' energy in its first components, and which rotated components keep RoPE. */
#pragma once

#include <stdint.h>

#include "core/status.h"
#include "model/convert/convert_layer.h"

/* What RoRoPE measures on one layer's calibration tokens. A slot is (pair i, rotated component c);
 * the teacher's score is the sum over slots of q_slot . RoPE-rotated k_slot. */
typedef struct {
    int64_t H, K, half;
    double *R;        /* [half][K][K] R[i][c][g]: rotated component c of pair i = sum_g R k_g (rows orthonormal) */
    double *energy;   /* [half][K] the keys' energy in each slot (calibration mean of |k_slot|^2) */
    double *damage;   /* [half][K] attention-weighted score energy lost if the slot drops RoPE, summed over heads */
    double *M;        /* [H][half][K][4] position-free 2x2 maps (M_aa, M_ab, M_ba, M_bb) a head's query pair
                         goes through when the slot drops RoPE: q . R(t-s) k ~= q^T M k, fitted by
                         attention-weighted least squares (identity where the fit had no data) */
    double *received; /* [fit_seqs*T] the attention each of the fit's tokens receives, averaged over
                         heads and queries (an attention sink's is large) */
    int64_t n_received;
} RoropeFit;

/* a: the layer's normed input, B sequences of T tokens [B*T, D] (float32). The rotation comes from
 * all B sequences; the attention-weighted fit (damage, M) from the first fit_seqs of them, with the
 * teacher's own attention probabilities. inv_freq [hd/2]: the teacher's frequencies. */
Status rorope_fit(const GqaWeights *t, const float *inv_freq, const float *a, int64_t B, int64_t T, int64_t fit_seqs,
                  RoropeFit *out);
void rorope_fit_free(RoropeFit *f);

/* The P slots (of half*K) that keep RoPE, as (pair, component) ascending. step 0: free choice, the
 * largest damage, ties to the lower index (a pair may give several components). step > 0: one slot
 * on each of pairs 0, step, 2 step, ..., the frequencies DeepSeek's config can express (rope_theta
 * theta^(step dr / hd)), the component that would lose most. */
Status rorope_choose_slots(const RoropeFit *f, int P, int step, int *pair, int *comp);

/* The step for rorope_choose_slots that keeps most damage over all n layers (config.json has one
 * rope_theta for every layer), each layer weighing its share of its own damage. */
int rorope_exportable_step(const RoropeFit *const *fits, int n, int P);

/* The key split RoRoPE gives: the chosen slots in the shared rope key (rotated key rows, each head's
 * query pair times R[i][c][g(h)]), every other slot's two rotated key rows in the no-RoPE part, its
 * query rows through the fitted map M^T (fitted = 0: the identity, plain RoPE removal). */
Status rorope_split(const GqaWeights *t, const float *inv_freq, const RoropeFit *f, int P, const int *pair,
                    const int *comp, int fitted, KeySplit *ks);
