/* The latent of one MLA layer: the r-dimensional basis the no-RoPE keys and the values are
 * compressed into, from the weights alone (X-EcoMLA's SVD) or from calibration activations. */
#pragma once

#include <stdint.h>

#include "core/status.h"
#include "model/convert/convert_layer.h"

/* The stacked rows B = [ks->nope_key ; t->wv] ([nk + K hd, D]) approximated as up [rows, r] times
 * latent [r, D]. kept_energy: the share of the (weighted) spectrum the r directions hold. */

/* Weights only: the rank-r SVD of B (latent = S_r V_r^T, up = U_r). */
Status latent_basis_weights(const GqaWeights *t, const KeySplit *ks, int64_t r, double *latent, double *up,
                            double *kept_energy);

/* From activations: Ca [D, D] is the second moment of the layer's normed input, as queries see it;
 * Ckv [D, D] the same with each token weighted as keys and values are read (NULL: Ca). The latent spans the
 * principal directions of B x under a metric that weighs each error by what it costs: a no-RoPE key
 * error by the queries that read it (sum over heads of nope_q Ca nope_q^T), a value error by the
 * output projection it goes through (sum over a group's heads of Wo_h^T Wo_h); the two parts are
 * balanced to equal total weight (TransMLA's BKV, in the metric). up is then the least-squares map
 * from the latent back to B x on the calibration distribution. */
Status latent_basis_activations(const GqaWeights *t, const KeySplit *ks, const double *Ca, const double *Ckv, int64_t r,
                                double *latent, double *up, double *kept_energy);
