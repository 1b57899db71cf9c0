/* One student MLA layer made from its teacher layer on the backend: the key split (RoRoPE or the
 * teacher's pairs) and the latent basis on the layer's calibration input, the q bottleneck, the
 * norms' fits, and the upload into the student. */
#include "model/convert/student_layer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/convert/latent_basis.h"
#include "model/convert/linalg.h"
#include "model/convert/q_bottleneck.h"
#include "model/convert/teacher_layer.h"
#include "model/layers.h"

Status convert_download(Backend *be, Tensor t, float **out) {
    *out = malloc(tensor_bytes(t) ? tensor_bytes(t) : 1);
    if (!*out) return errorf("convert: out of memory (%zu bytes)", tensor_bytes(t));
    return be->download(be, *out, t);
}

int rope_select_is_rorope(RopeSelect s) { return s == ROPE_SELECT_ROROPE || s == ROPE_SELECT_ROROPE_FREE; }

/* Calibration rows through a weight on the backend: out [N, rows] = a [N, D] w^T, to the host. */
static Status project_calibration(Backend *be, Tensor a, Tensor w, Tensor bias, float **out) {
    Tensor t;
    TRY(be->alloc(be, &t, DT_F32, 2, (int64_t[]){a.shape[0], w.shape[0]}));
    Status st = be->ops.linear_forward(be, t, a, w, bias);
    if (st == STATUS_OK) st = convert_download(be, t, out);
    be->release(be, &t);
    return st;
}

typedef struct {
    MlaWeights w;
    float *buffers[7];
} HostMla;

static void host_mla_free(HostMla *h) {
    for (int i = 0; i < 7; i++) free(h->buffers[i]);
}

/* D: the teacher layer's input width (hidden_size, plus one when biases ride as a last column). */
static Status host_mla_alloc(HostMla *h, const ModelConfig *sc, int64_t D) {
    memset(h, 0, sizeof *h);
    const MlaDims *a = &sc->mla;
    int64_t H = sc->num_attention_heads;
    MlaWeights *w = &h->w;
    *w = (MlaWeights){.D = D, .H = H, .r = a->kv_lora_rank, .dn = a->qk_nope_head_dim, .dr = a->qk_rope_head_dim,
                      .dv = a->v_head_dim};
    int64_t sizes[7] = {H * (w->dn + w->dr) * D, w->r * D, w->dr * D, H * w->dn * w->r + 1, H * w->dv * w->r,
                        D * H * w->dv, w->dr / 2};
    for (int i = 0; i < 7; i++) {
        h->buffers[i] = calloc((size_t)sizes[i], sizeof(float));
        if (!h->buffers[i]) return errorf("convert: out of memory");
    }
    w->q = h->buffers[0];
    w->latent = h->buffers[1];
    w->rope_key = h->buffers[2];
    w->up_k = h->buffers[3];
    w->up_v = h->buffers[4];
    w->o = h->buffers[5];
    w->inv_freq = h->buffers[6];
    return STATUS_OK;
}

/* Uploads rows [rows, D] of a projection converted on the widened input [rows, D + 1] (biased) or
 * on the plain one: the matrix to w, the last column to bias. */
static Status upload_projection(Backend *be, const float *src, int64_t rows, int64_t D, int biased, Tensor w,
                                Tensor bias) {
    if (!biased) return be->upload(be, w, src);
    float *W = malloc((size_t)(rows * D) * sizeof(float)), *b = malloc((size_t)rows * sizeof(float));
    Status st = W && b ? STATUS_OK : errorf("convert: out of memory");
    if (st == STATUS_OK) split_bias_column(src, rows, D, W, b);
    if (st == STATUS_OK) st = backend_upload_f32(be, w, W);
    if (st == STATUS_OK) st = backend_upload_f32(be, bias, b);
    free(W);
    free(b);
    return st;
}

/* The linear q bottleneck of q_bottleneck.h on the layer's calibration rows a [N, D] (widened by a
 * column of ones when the conversion was, m->D = D + 1). */
static Status q_bottleneck_from_calibration(Backend *be, const MlaWeights *m, Tensor a, int64_t k, uint64_t seed,
                                            float *qa, float *qb) {
    int64_t N = a.shape[0], D = a.shape[1];
    float *ah = malloc((size_t)(N * D) * sizeof(float));
    double *Ca = malloc((size_t)(m->D * m->D) * sizeof(double));
    Status st = ah && Ca ? be->download(be, ah, a) : errorf("convert: out of memory");
    if (st == STATUS_OK && m->D == D + 1) {
        float *wide = calibration_with_ones(ah, N, D);
        free(ah);
        ah = wide;
        if (!ah) st = errorf("convert: out of memory");
    }
    if (st == STATUS_OK) st = second_moment(ah, N, m->D, Ca);
    if (st == STATUS_OK) st = q_bottleneck_activations(m, Ca, k, seed, qa, qb);
    free(ah);
    free(Ca);
    return st;
}

/* Moves a converted layer into the student, fitting the norms that follow the latent and the q
 * bottleneck, or a linear q bottleneck itself, to the calibration rows a [N, D] (the layer's
 * normed input). seed: the bottleneck's channels beyond its rank. */
static Status install_layer(Model *student, int l, const HostMla *h, Tensor a, uint64_t seed) {
    Backend *be = student->be;
    LayerWeights *w = &student->layers[l];
    const MlaDims *d = &student->cfg.mla;
    const MlaWeights *m = &h->w;
    int64_t N = a.shape[0], D = student->cfg.hidden_size;
    int biased = d->attention_bias;
    if (m->D != D + biased) return errorf("convert: a layer converted at width %lld for hidden size %lld", (long long)m->D, (long long)D);
    TRY(upload_projection(be, m->latent, d->kv_lora_rank, D, biased, w->kv_a_latent, w->kv_a_latent_bias));
    TRY(upload_projection(be, m->rope_key, d->qk_rope_head_dim, D, biased, w->kv_a_rope, w->kv_a_rope_bias));
    if (d->qk_nope_head_dim > 0) TRY(be->upload(be, w->kv_b_k, m->up_k));
    TRY(be->upload(be, w->kv_b_v, m->up_v));
    /* o [D (+1), H dv]: a widened conversion's extra row belongs to no output (zero by construction). */
    TRY(be->upload(be, w->o_proj, m->o));
    TRY(model_set_mla_rope(student, l, m->inv_freq));
    Status st = STATUS_OK;
    float *c = NULL, *g = NULL, *qa = NULL, *qb = NULL;
    if (d->latent_norm) {
        g = malloc((size_t)d->kv_lora_rank * sizeof(float));
        if (!g) return errorf("convert: out of memory");
        st = project_calibration(be, a, w->kv_a_latent, w->kv_a_latent_bias, &c);
        if (st == STATUS_OK) st = latent_norm_scales(c, N, d->kv_lora_rank, MLA_LATENT_NORM_EPS, g);
        if (st == STATUS_OK) st = be->upload(be, w->kv_a_norm, g);
        free(c);
        free(g);
        c = g = NULL;
        TRY(st);
    }
    if (d->q_lora_rank == 0)
        return upload_projection(be, m->q, m->H * (m->dn + m->dr), D, biased, w->q_proj, w->q_bias);
    int64_t rows = m->H * (m->dn + m->dr), k = d->q_lora_rank;
    qa = malloc((size_t)(k * m->D) * sizeof(float));
    qb = malloc((size_t)(rows * k) * sizeof(float));
    g = malloc((size_t)k * sizeof(float));
    st = qa && qb && g ? STATUS_OK : errorf("convert: out of memory");
    /* A linear bottleneck is fitted to what the scores see, on the calibration input; a normed one
     * keeps the weights' SVD its norm's per-channel fit was made for. */
    if (st == STATUS_OK && !d->q_norm) st = q_bottleneck_from_calibration(be, m, a, k, seed, qa, qb);
    else if (st == STATUS_OK) st = factor_low_rank(m->q, rows, m->D, k, qa, qb);
    /* The bottleneck's bias is the last column of its down-projection: q_a_proj's, as DeepSeek has it. */
    if (st == STATUS_OK) st = upload_projection(be, qa, k, D, biased, w->q_a_proj, w->q_a_bias);
    if (st == STATUS_OK) st = be->upload(be, w->q_b_proj, qb);
    if (st == STATUS_OK && d->q_norm) st = project_calibration(be, a, w->q_a_proj, w->q_a_bias, &c);
    if (st == STATUS_OK && d->q_norm) st = latent_norm_scales(c, N, k, MLA_LATENT_NORM_EPS, g);
    if (st == STATUS_OK && d->q_norm) st = be->upload(be, w->q_a_norm, g);
    free(c);
    free(qa);
    free(qb);
    free(g);
    return st;
}

/* One layer by a key split (RoRoPE or the teacher's pairs) and a latent basis (weights or
 * activations), on the layer's normed calibration input a [N, D]. */
static Status convert_layer_split(Backend *be, const GqaWeights *g, const ConvertOptions *o, const float *inv_freq,
                                  const int *pairs, const RoropeFit *fit, int step, int P, Tensor a, uint64_t layer,
                                  MlaWeights *w, LayerReport *rep) {
    int64_t D = g->D, N = a.shape[0], r = w->r, rows = 0, D_in = a.shape[1];
    float *ah = NULL;
    double *Ca = NULL, *latent = NULL, *up = NULL;
    int *pr = calloc((size_t)P + 1, sizeof(int)), *cp = calloc((size_t)P + 1, sizeof(int));
    KeySplit ks;
    memset(&ks, 0, sizeof ks);
    Status st = pr && cp ? STATUS_OK : errorf("convert: out of memory");
    if (st == STATUS_OK) {
        ah = malloc((size_t)(N * D_in) * sizeof(float));
        st = ah ? be->download(be, ah, a) : errorf("convert: out of memory");
    }
    if (st == STATUS_OK && D == D_in + 1) {
        /* Biases ride as a last input column: the calibration input gains its column of ones. */
        float *wide = calibration_with_ones(ah, N, D_in);
        free(ah);
        ah = wide;
        if (!ah) st = errorf("convert: out of memory");
    }
    if (st == STATUS_OK && fit) {
        st = rorope_choose_slots(fit, P, step, pr, cp);
        if (st == STATUS_OK) st = rorope_split(g, inv_freq, fit, P, pr, cp, 1, &ks);
    } else if (st == STATUS_OK) {
        memcpy(pr, pairs, (size_t)P * sizeof(int));
        st = key_split_pairs(g, inv_freq, pairs, P, &ks);
    }
    rows = ks.nk + g->K * g->hd;
    if (st == STATUS_OK) {
        latent = malloc((size_t)(r * D) * sizeof(double));
        up = malloc((size_t)(rows * r) * sizeof(double));
        if (!latent || !up) st = errorf("convert: out of memory");
    }
    if (st == STATUS_OK && o->latent_basis == LATENT_BASIS_ACTIVATIONS) {
        Ca = malloc((size_t)(D * D) * sizeof(double));
        st = Ca ? second_moment(ah, N, D, Ca) : errorf("convert: out of memory");
        /* Keys and values are read in proportion to the attention their token receives: an attention
         * sink's value reaches every output. Half that weighting, half the plain mean. */
        double *Ckv = NULL;
        if (st == STATUS_OK && fit && fit->n_received > 0) {
            Ckv = calloc((size_t)(D * D), sizeof(double));
            if (!Ckv) st = errorf("convert: out of memory");
            double total = 0;
            for (int64_t n = 0; st == STATUS_OK && n < fit->n_received; n++) total += fit->received[n];
            for (int64_t n = 0; st == STATUS_OK && n < fit->n_received && total > 0; n++) {
                double w = fit->received[n] / total;
                const float *row = ah + n * D;
                for (int64_t i = 0; i < D; i++)
                    for (int64_t j = 0; j <= i; j++) Ckv[i * D + j] += w * row[i] * row[j];
            }
            for (int64_t i = 0; st == STATUS_OK && i < D; i++)
                for (int64_t j = 0; j <= i; j++) {
                    double v = 0.5 * Ckv[i * D + j] + 0.5 * Ca[i * D + j];
                    Ckv[i * D + j] = Ckv[j * D + i] = v;
                }
        }
        if (st == STATUS_OK) st = latent_basis_activations(g, &ks, Ca, Ckv, r, latent, up, &rep->kept_energy);
        free(Ckv);
    } else if (st == STATUS_OK) {
        st = latent_basis_weights(g, &ks, r, latent, up, &rep->kept_energy);
    }
    if (st == STATUS_OK) st = mla_weights_from_split(g, &ks, latent, up, r, o->seed + layer * 1000003u, w);
    if (st == STATUS_OK) {
        rep->n_rope_pairs = P < MODEL_MAX_LAYERS ? P : MODEL_MAX_LAYERS;
        for (int j = 0; j < rep->n_rope_pairs; j++) {
            rep->rope_pairs[j] = pr[j];
            rep->rope_comps[j] = cp[j];
        }
    }
    free(pr);
    free(cp);
    free(ah);
    free(Ca);
    free(latent);
    free(up);
    key_split_free(&ks);
    return st;
}

Status convert_layer(Model *student, Model *teacher, int l, const ConvertOptions *o, const float *teacher_inv_freq,
                            const int *pairs, const RoropeFit *fit, int step, Tensor a, LayerReport *rep) {
    Backend *be = teacher->be;
    const ModelConfig *tc = &teacher->cfg;
    TeacherLayer tl;
    HostMla h;
    memset(&h, 0, sizeof h);
    Status st = teacher_layer_load(be, teacher, l, student->cfg.mla.attention_bias, 1, 1, &tl);
    if (st == STATUS_OK) st = host_mla_alloc(&h, &student->cfg, tl.g.D);
    const GqaWeights g = tl.g;
    int P = (int)(student->cfg.mla.qk_rope_head_dim / 2);
    if (st == STATUS_OK && o->init == MLA_INIT_EXACT) {
        st = mla_weights_exact(&g, teacher_inv_freq, &h.w);
        rep->kept_energy = 1.0;
        rep->n_rope_pairs = P < MODEL_MAX_LAYERS ? P : MODEL_MAX_LAYERS;
        for (int j = 0; j < rep->n_rope_pairs; j++) rep->rope_pairs[j] = (int)(j % (tc->head_dim / 2));
    } else if (st == STATUS_OK && (rope_select_is_rorope(o->rope_select) || o->latent_basis == LATENT_BASIS_ACTIVATIONS)) {
        st = convert_layer_split(be, &g, o, teacher_inv_freq, pairs, fit, step, P, a, (uint64_t)l, &h.w, rep);
    } else if (st == STATUS_OK) {
        st = mla_weights_from_svd(&g, teacher_inv_freq, pairs, P, o->seed + (uint64_t)l * 1000003u, &h.w,
                                  &rep->kept_energy);
        rep->n_rope_pairs = P;
        memcpy(rep->rope_pairs, pairs, (size_t)P * sizeof(int));
    }
    if (st == STATUS_OK) st = install_layer(student, l, &h, a, o->seed + (uint64_t)l * 1000003u);
    teacher_layer_free(&tl);
    host_mla_free(&h);
    if (st != STATUS_OK) return error_context("convert layer %d: ", l);
    return STATUS_OK;
}
