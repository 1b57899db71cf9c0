/* mla_convert: the student's config from the teacher's and the options, the passes over the
 * calibration tokens (RoPE pair importance or RoRoPE's fit; each layer converted (student_layer.c),
 * its o_proj fitted and its error measured; the measured choice of a hybrid's GQA layers), and the
 * report. */
#include "model/convert/convert.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/progress.h"
#include "core/rng.h"
#include "model/convert/convert_layer.h"
#include "model/convert/output_fit.h"
#include "model/convert/rorope.h"
#include "model/convert/student_layer.h"
#include "model/convert/teacher_layer.h"
#include "model/layers.h"

static Status student_config(const ModelConfig *tc, const ConvertOptions *o, ModelConfig *sc) {
    *sc = *tc;
    sc->mla = o->dims;
    sc->mla.rope_theta = 0;
    int L = (int)tc->num_hidden_layers;
    for (int l = 0; l < L; l++) {
        if (tc->layer_attention[l] != ATTENTION_GQA)
            return errorf("convert: the teacher's layer %d is not GQA attention; conversion starts from a GQA model", l);
        sc->layer_attention[l] = ATTENTION_MLA;
    }
    for (int i = 0; i < o->n_gqa_layers; i++) {
        int l = o->gqa_layers[i];
        if (l < 0 || l >= L)
            return errorf("student.mla.gqa_layers: layer %d does not exist (the teacher has %d layers)", l, L);
        sc->layer_attention[l] = ATTENTION_GQA;
    }
    if (model_config_mla_layers(sc) == 0)
        return errorf("student.mla.gqa_layers: every layer keeps GQA attention; nothing to convert");
    if (o->init == MLA_INIT_EXACT) {
        if (o->dims.q_lora_rank != 0)
            return errorf("student.mla.q_lora_rank: the exact conversion needs 0 (a normed q bottleneck is lossy)");
        int64_t kv = tc->num_key_value_heads * tc->head_dim;
        sc->mla.kv_lora_rank = kv;
        sc->mla.qk_rope_head_dim = kv;
        sc->mla.qk_nope_head_dim = 0;
        sc->mla.v_head_dim = tc->head_dim;
    }
    /* A Qwen2 teacher's q/k/v biases live on in q_proj (q_a_proj) and kv_a_proj_with_mqa unless dropped. */
    sc->mla.attention_bias = tc->qkv_bias && !o->drop_biases;
    if (o->energy > 0 && sc->mla.kv_lora_rank <= 0) sc->mla.kv_lora_rank = 8; /* the energy pass sets it */
    strcpy(sc->architecture, "DeepseekV2ForCausalLM");
    strcpy(sc->model_type, "deepseek_v2");
    if (model_config_validate(sc) != STATUS_OK) return error_context("student: ");
    return STATUS_OK;
}

/* Every student parameter whose name and shape the teacher shares starts as the teacher's. */
static Status copy_shared_params(Model *student, Model *teacher) {
    Backend *be = student->be;
    for (int i = 0; i < student->n_params; i++) {
        Param *p = &student->params[i];
        Param *q = model_find_param(teacher, p->name);
        if (!q || q->value->ndim != p->value->ndim || tensor_numel(*q->value) != tensor_numel(*p->value)) continue;
        float *host = NULL;
        Status st = convert_download(be, *q->value, &host);
        if (st == STATUS_OK) st = be->upload(be, *p->value, host);
        free(host);
        TRY(st);
    }
    return STATUS_OK;
}

/* Pair importance from weights: per pair, sum over query heads of ||W_q pair rows|| x ||W_k pair rows||
 * of the head's group. */
static Status importance_from_weights(Backend *be, const ModelConfig *c, const LayerWeights *w, double *imp) {
    int64_t D = c->hidden_size, H = c->num_attention_heads, K = c->num_key_value_heads, hd = c->head_dim, half = hd / 2;
    float *wq = NULL, *wk = NULL;
    Status st = convert_download(be, w->q_proj, &wq);
    if (st == STATUS_OK) st = convert_download(be, w->k_proj, &wk);
    for (int64_t i = 0; st == STATUS_OK && i < half; i++) {
        imp[i] = 0;
        for (int64_t h = 0; h < H; h++) {
            int64_t g = h / (H / K);
            double nq = 0, nk = 0;
            for (int64_t d = 0; d < D; d++) {
                double a = wq[(h * hd + i) * D + d], b = wq[(h * hd + half + i) * D + d];
                double e = wk[(g * hd + i) * D + d], f = wk[(g * hd + half + i) * D + d];
                nq += a * a + b * b;
                nk += e * e + f * f;
            }
            imp[i] += sqrt(nq) * sqrt(nk);
        }
    }
    free(wq);
    free(wk);
    return st;
}

/* Pair importance from activations: per pair, sum over query heads of mean |q pair| x mean |k pair|
 * of the head's group (MHA2MLA), q and k as the layer computes them on calibration tokens. */
static Status importance_from_activations(Backend *be, const ModelConfig *c, const LayerCache *cache, int64_t N,
                                          double *imp) {
    int64_t H = c->num_attention_heads, K = c->num_key_value_heads, hd = c->head_dim, half = hd / 2;
    float *q = NULL, *k = NULL;
    double *mq = calloc((size_t)(H * half), sizeof(double)), *mk = calloc((size_t)(K * half), sizeof(double));
    Status st = mq && mk ? STATUS_OK : errorf("convert: out of memory");
    if (st == STATUS_OK) st = convert_download(be, cache->q, &q);
    if (st == STATUS_OK) st = convert_download(be, cache->k, &k);
    for (int64_t n = 0; st == STATUS_OK && n < N; n++) {
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < half; i++)
                mq[h * half + i] += hypot(q[(n * H + h) * hd + i], q[(n * H + h) * hd + half + i]);
        for (int64_t g = 0; g < K; g++)
            for (int64_t i = 0; i < half; i++)
                mk[g * half + i] += hypot(k[(n * K + g) * hd + i], k[(n * K + g) * hd + half + i]);
    }
    for (int64_t i = 0; st == STATUS_OK && i < half; i++) {
        imp[i] = 0;
        for (int64_t h = 0; h < H; h++) imp[i] += (mq[h * half + i] / (double)N) * (mk[(h / (H / K)) * half + i] / (double)N);
    }
    free(q);
    free(k);
    free(mq);
    free(mk);
    return st;
}

typedef struct {
    Model *teacher;
    ForwardState *tst;
    Tensor ids;
    int layer;          /* the next layer to run; -1 before the embedding */
} TeacherStream;

/* Runs the teacher's embedding and layers < `layer`'s attention, so the reused cache holds layer
 * `layer`'s input x, normed input a, q, k and its attention output h - x. */
static Status stream_begin(TeacherStream *s, Model *teacher, const int32_t *ids, int64_t B, int64_t T) {
    memset(s, 0, sizeof *s);
    s->teacher = teacher;
    Backend *be = teacher->be;
    int64_t N = B * T;
    TRY(forward_state_create(&s->tst, teacher, B, T, 0));
    TRY(be->alloc(be, &s->ids, DT_I32, 1, &N));
    TRY(be->upload(be, s->ids, ids));
    TRY(be->ops.embedding_forward(be, s->tst->caches[0].x, s->ids, teacher->embed));
    return STATUS_OK;
}

static Status stream_attention(TeacherStream *s, int l) {
    return gqa_attention_forward(s->teacher, s->tst, l, &s->tst->caches[0]);
}

static Status stream_mlp(TeacherStream *s, int l) {
    LayerCache *c = &s->tst->caches[0];
    return mlp_forward(s->teacher, s->tst, l, c, c->x);
}

static void stream_end(TeacherStream *s) {
    if (s->ids.data) s->teacher->be->release(s->teacher->be, &s->ids);
    forward_state_destroy(s->tst);
}

/* ||(h_s - x) - (h_t - x)|| / ||h_t - x||: the attention outputs, the residual input cancelled; and
 * the same difference against ||x||. */
static Status attention_error(Backend *be, Tensor x, Tensor h_teacher, Tensor h_student, double *err,
                              double *stream_err) {
    float *x_ = NULL, *ht = NULL, *hs = NULL;
    Status st = convert_download(be, x, &x_);
    if (st == STATUS_OK) st = convert_download(be, h_teacher, &ht);
    if (st == STATUS_OK) st = convert_download(be, h_student, &hs);
    if (st == STATUS_OK) {
        double num = 0, den = 0, xx = 0;
        for (int64_t i = 0; i < tensor_numel(x); i++) {
            double ot = (double)ht[i] - x_[i], os = (double)hs[i] - x_[i];
            num += (os - ot) * (os - ot);
            den += ot * ot;
            xx += (double)x_[i] * x_[i];
        }
        *err = den > 0 ? sqrt(num / den) : sqrt(num);
        *stream_err = xx > 0 ? sqrt(num / xx) : sqrt(num);
    }
    free(x_);
    free(ht);
    free(hs);
    return st;
}

/* How many calibration sequences the attention-weighted RoRoPE fit reads: it costs T^2 per head
 * and sequence, and two sequences of 512 already pin its 2x2 maps down. */
enum { ROROPE_FIT_SEQS = 2 };

/* The student's o_proj refitted so that its own attention (z, the heads' weighted values)
 * produces h_target - x_base: the teacher's attention output, or, fed the student's own stream,
 * what takes that stream to the teacher's. */
static Status refit_output(Model *student, int l, Tensor z, Tensor h_target, Tensor x_base, double ridge) {
    Backend *be = student->be;
    Tensor o = student->layers[l].o_proj;
    int64_t N = z.shape[0], F = z.shape[1], D = o.shape[0];
    float *Z = NULL, *Y = NULL, *x = NULL, *W = NULL;
    Status st = convert_download(be, z, &Z);
    if (st == STATUS_OK) st = convert_download(be, h_target, &Y);
    if (st == STATUS_OK) st = convert_download(be, x_base, &x);
    if (st == STATUS_OK) st = convert_download(be, o, &W);
    if (st == STATUS_OK) {
        for (int64_t i = 0; i < N * D; i++) Y[i] -= x[i];
        st = output_projection_fit(Z, Y, N, F, D, ridge, W);
    }
    if (st == STATUS_OK) st = be->upload(be, o, W);
    free(Z);
    free(Y);
    free(x);
    free(W);
    if (st != STATUS_OK) return error_context("layer %d o_proj fit: ", l);
    return STATUS_OK;
}

static Status copy_tensor(Backend *be, Tensor dst, Tensor src) {
    TRY(be->zero(be, dst));
    return be->ops.accumulate(be, dst, src);
}

/* Random calibration tokens when no data is given. */
static int32_t *random_ids(const ConvertOptions *o, int64_t vocab, int64_t N) {
    int32_t *ids = malloc((size_t)N * sizeof(int32_t));
    if (ids)
        for (int64_t i = 0; i < N; i++) ids[i] = (int32_t)rng_below(o->seed, 77, (uint64_t)i, (uint64_t)vocab);
    return ids;
}

typedef struct {
    ModelConfig sc;
    int (*pairs)[MODEL_MAX_LAYERS];   /* [L][MODEL_MAX_LAYERS] */
    float *teacher_inv_freq;
    int32_t *own_ids;
    TeacherStream ts;
    ForwardState *sst;
    RoropeFit *fits;                  /* [L] RoRoPE's measurements, MLA layers only */
    int rope_step;                    /* rorope: the pair spacing every layer keeps (0: free choice) */
    Tensor xs;                        /* the student's own residual stream, when fitted on it */
} ConvertWork;

/* RoRoPE's pass: each MLA layer's rotation and attention-weighted fit on the teacher's own input,
 * then the one pair spacing all layers share when the student must stay exportable. */
static Status rorope_pass(ConvertWork *wk, Model *teacher, const ConvertOptions *o, const int32_t *ids, int P) {
    const ModelConfig *tc = &teacher->cfg;
    Backend *be = teacher->be;
    int L = (int)tc->num_hidden_layers;
    int64_t B = o->n_calib_seqs, T = o->calib_seq, N = B * T, D = tc->hidden_size;
    wk->fits = calloc((size_t)L, sizeof *wk->fits);
    const RoropeFit **list = calloc((size_t)L, sizeof *list);
    float *ah = malloc((size_t)(N * D) * sizeof(float)), *wide = NULL;
    Status st = wk->fits && list && ah ? STATUS_OK : errorf("convert: out of memory");
    int n = 0;
    Progress progress;
    progress_begin(&progress, "convert: rotating rope pairs (RoRoPE), layer", L);
    if (st == STATUS_OK) st = stream_begin(&wk->ts, teacher, ids, B, T);
    for (int l = 0; st == STATUS_OK && l < L; l++) {
        st = stream_attention(&wk->ts, l);
        if (st == STATUS_OK && wk->sc.layer_attention[l] == ATTENTION_MLA) {
            TeacherLayer tl;
            int biased = wk->sc.mla.attention_bias;
            st = be->download(be, ah, wk->ts.tst->caches[0].a);
            if (st == STATUS_OK) st = teacher_layer_load(be, teacher, l, biased, 1, 0, &tl);
            if (st == STATUS_OK && biased && !(wide = calibration_with_ones(ah, N, D))) st = errorf("convert: out of memory");
            if (st == STATUS_OK)
                st = rorope_fit(&tl.g, wk->teacher_inv_freq, biased ? wide : ah, B, T, ROROPE_FIT_SEQS, &wk->fits[l]);
            if (st == STATUS_OK) list[n++] = &wk->fits[l];
            teacher_layer_free(&tl);
            free(wide);
            wide = NULL;
        }
        if (st == STATUS_OK) st = stream_mlp(&wk->ts, l);
        if (st != STATUS_OK) error_context("layer %d: ", l);
        progress_update(&progress, l + 1);
    }
    if (st == STATUS_OK) progress_end(&progress);
    stream_end(&wk->ts);
    memset(&wk->ts, 0, sizeof wk->ts);
    if (st == STATUS_OK) wk->rope_step = o->rope_select == ROPE_SELECT_ROROPE ? rorope_exportable_step(list, n, P) : 0;
    free(list);
    free(ah);
    return st;
}

static Status run_convert(ConvertWork *wk, Model **out, Model *teacher, const ConvertOptions *o, ConvertReport *rep,
                          const int32_t *ids) {
    Backend *be = teacher->be;
    const ModelConfig *tc = &teacher->cfg;
    int L = (int)tc->num_hidden_layers;
    int64_t hd = tc->head_dim, B = o->n_calib_seqs, T = o->calib_seq, N = B * T;
    TRY(student_config(tc, o, &wk->sc));
    ModelConfig *sc = &wk->sc;
    wk->teacher_inv_freq = malloc((size_t)(hd / 2) * sizeof(float));
    wk->pairs = calloc((size_t)L, sizeof *wk->pairs);
    if (!wk->teacher_inv_freq || !wk->pairs) return errorf("convert: out of memory");
    TRY(rope_inv_freq(&tc->rope, (int)hd, wk->teacher_inv_freq));

    /* Which RoPE pairs each MLA layer keeps. */
    int P = (int)(sc->mla.qk_rope_head_dim / 2);
    if (o->init == MLA_INIT_SVD && rope_select_is_rorope(o->rope_select) && o->energy > 0)
        return errorf("student.mla.energy: ranks by energy need rope_select high, low, uniform or norm; with %s give "
                      "kv_lora_rank", o->rope_select == ROPE_SELECT_ROROPE ? "rorope" : "rorope_free");
    if (o->init == MLA_INIT_SVD && !rope_select_is_rorope(o->rope_select)) {
        double *imp = calloc((size_t)(hd / 2), sizeof(double));
        if (!imp) return errorf("convert: out of memory");
        Status st = STATUS_OK;
        int from_acts = o->rope_select == ROPE_SELECT_NORM && o->calib_from_data;
        if (from_acts) st = stream_begin(&wk->ts, teacher, ids, B, T);
        for (int l = 0; st == STATUS_OK && l < L; l++) {
            if (from_acts) st = stream_attention(&wk->ts, l);
            if (st == STATUS_OK && sc->layer_attention[l] == ATTENTION_MLA && o->rope_select == ROPE_SELECT_NORM)
                st = from_acts ? importance_from_activations(be, tc, &wk->ts.tst->caches[0], N, imp)
                               : importance_from_weights(be, tc, &teacher->layers[l], imp);
            if (st == STATUS_OK && sc->layer_attention[l] == ATTENTION_MLA)
                st = rope_select_pairs(o->rope_select, (int)hd, P * 2, imp, wk->pairs[l]);
            if (st == STATUS_OK && from_acts) st = stream_mlp(&wk->ts, l);
            if (st != STATUS_OK) error_context("layer %d: ", l);
        }
        if (from_acts) stream_end(&wk->ts);
        memset(&wk->ts, 0, sizeof wk->ts);
        free(imp);
        TRY(st);
    }

    if (o->init == MLA_INIT_SVD && rope_select_is_rorope(o->rope_select)) TRY(rorope_pass(wk, teacher, o, ids, P));

    /* Ranks by energy: the largest any layer needs, since DeepSeek's config has one kv_lora_rank. */
    if (o->init == MLA_INIT_SVD && o->energy > 0) {
        int64_t rows = tc->num_key_value_heads * (2 * hd - 2 * P), k = rows < tc->hidden_size + 1 ? rows : tc->hidden_size + 1;
        double *sigma = malloc((size_t)k * sizeof(double));
        if (!sigma) return errorf("convert: out of memory");
        int64_t r_max = 8;
        for (int l = 0; l < L; l++) {
            if (sc->layer_attention[l] != ATTENTION_MLA) continue;
            TeacherLayer tl;
            int64_t count = 0;
            Status st = teacher_layer_load(be, teacher, l, sc->mla.attention_bias, 0, 1, &tl);
            if (st == STATUS_OK) st = latent_spectrum(&tl.g, wk->pairs[l], P, sigma, &count);
            teacher_layer_free(&tl);
            if (st != STATUS_OK) {
                free(sigma);
                return error_context("layer %d spectrum: ", l);
            }
            rep->layers[l].rank_chosen = rank_for_energy(sigma, count, o->energy);
            if (rep->layers[l].rank_chosen > r_max) r_max = rep->layers[l].rank_chosen;
        }
        free(sigma);
        /* A fixed kv_lora_rank given with energy caps the chosen rank. */
        if (o->dims.kv_lora_rank > 0 && r_max > o->dims.kv_lora_rank) r_max = o->dims.kv_lora_rank;
        sc->mla.kv_lora_rank = r_max;
    }

    Model *student = NULL;
    TRY(model_create(&student, be, sc, teacher->max_seq));
    *out = student;
    TRY(model_init_random(student, o->seed, 0.02f));
    TRY(copy_shared_params(student, teacher));

    /* The conversion pass: each layer converted from the teacher's weights, then its o_proj
     * refitted so that its attention gives the teacher's attention output. On the student's own
     * stream (the default) the layer is calibrated and fitted on what the converted layers below
     * actually hand it, so each layer makes up part of their error; otherwise on the teacher's
     * input to the layer. The reported error is always measured on the teacher's input, so that
     * layers compare. */
    TRY(stream_begin(&wk->ts, teacher, ids, B, T));
    TRY(forward_state_create(&wk->sst, student, B, T, 0));
    LayerCache *tcache = &wk->ts.tst->caches[0], *scache = &wk->sst->caches[0];
    int fit_out = o->init == MLA_INIT_SVD && o->output_fit != OUTPUT_FIT_NONE;
    int own_stream = fit_out && o->output_fit == OUTPUT_FIT_STUDENT_INPUT;
    double ridge = o->output_fit_ridge > 0 ? o->output_fit_ridge : OUTPUT_FIT_RIDGE;
    if (own_stream) TRY(be->alloc(be, &wk->xs, DT_F32, 2, (int64_t[]){N, tc->hidden_size}));
    Progress progress;
    progress_begin(&progress, "convert: layer", L);
    for (int l = 0; l < L; l++) {
        LayerReport *lr = &rep->layers[l];
        lr->kind = sc->layer_attention[l];
        if (own_stream && l == 0) TRY(copy_tensor(be, wk->xs, tcache->x));
        TRY(stream_attention(&wk->ts, l));
        if (lr->kind == ATTENTION_MLA) {
            /* Calibrated on what the layer will be fed: on its own stream, the student's normed input. */
            Tensor calib = tcache->a;
            if (own_stream) {
                TRY(be->ops.rmsnorm_forward(be, scache->a, scache->rstd1, wk->xs, student->layers[l].input_norm,
                                            (float)sc->rms_norm_eps));
                calib = scache->a;
            }
            if (o->init != MLA_INIT_RANDOM)
                TRY(convert_layer(student, teacher, l, o, wk->teacher_inv_freq, wk->pairs[l],
                                  wk->fits ? &wk->fits[l] : NULL, wk->rope_step, calib, lr));
            if (own_stream) {
                TRY(copy_tensor(be, scache->x, wk->xs));
                if (mla_attention_forward(student, wk->sst, l, scache) != STATUS_OK) return error_context("layer %d: ", l);
                TRY(refit_output(student, l, scache->attn, tcache->h, tcache->x, ridge));
                /* The stream goes on through the refitted layer: the heads' values do not depend on
                 * o_proj, so only the output product is redone (as the layer's forward does it). */
                Status fw = be->ops.linear_residual_forward(be, scache->h, scache->attn, student->layers[l].o_proj,
                                                            scache->x);
                if (fw == STATUS_OK) fw = mlp_forward(student, wk->sst, l, scache, wk->xs);
                if (fw != STATUS_OK) return error_context("layer %d: ", l);
            }
            TRY(copy_tensor(be, scache->x, tcache->x));
            if (mla_attention_forward(student, wk->sst, l, scache) != STATUS_OK) return error_context("layer %d: ", l);
            if (fit_out && !own_stream) {
                TRY(refit_output(student, l, scache->attn, tcache->h, tcache->x, ridge));
                if (mla_attention_forward(student, wk->sst, l, scache) != STATUS_OK) return error_context("layer %d: ", l);
            }
            TRY(attention_error(be, tcache->x, tcache->h, scache->h, &lr->attn_rel_error, &lr->stream_error));
            if (o->init == MLA_INIT_RANDOM) lr->kept_energy = 0;
        } else {
            lr->kept_energy = 1.0;
            lr->attn_rel_error = 0.0;
        }
        if (own_stream && lr->kind == ATTENTION_GQA) {
            /* The student's own stream goes on through a layer it shares with the teacher. */
            TRY(copy_tensor(be, scache->x, wk->xs));
            Status fw = gqa_attention_forward(student, wk->sst, l, scache);
            if (fw == STATUS_OK) fw = mlp_forward(student, wk->sst, l, scache, wk->xs);
            if (fw != STATUS_OK) return error_context("layer %d: ", l);
        }
        TRY(stream_mlp(&wk->ts, l));
        progress_update(&progress, l + 1);
    }
    progress_end(&progress);

    rep->n_layers = L;
    rep->dims = sc->mla;
    rep->calib_tokens = N;
    rep->kv_bytes_teacher = rep->kv_bytes_student = 0;
    for (int l = 0; l < L; l++) {
        rep->kv_bytes_teacher += 2 * model_config_kv_values_per_token(tc, l);
        rep->kv_bytes_student += 2 * model_config_kv_values_per_token(sc, l);
    }
    static const char *const inits[] = {"svd", "exact", "random"};
    static const char *const selects[] = {"high", "low", "uniform", "norm", "rorope", "rorope_free"};
    static const char *const fits[] = {", o_proj fitted on the student's stream", ", o_proj fitted on the teacher's input", ""};
    snprintf(rep->method, sizeof rep->method, "%s%s%s%s%s", inits[o->init], o->init == MLA_INIT_SVD ? ", rope_select " : "",
             o->init == MLA_INIT_SVD ? selects[o->rope_select] : "",
             o->init != MLA_INIT_SVD ? ""
             : o->latent_basis == LATENT_BASIS_ACTIVATIONS ? ", latent from activations"
                                                          : ", latent from weights",
             o->init == MLA_INIT_SVD ? fits[o->output_fit] : "");
    return STATUS_OK;
}

static void convert_work_free(ConvertWork *wk, Model *teacher) {
    int L = (int)teacher->cfg.num_hidden_layers;
    stream_end(&wk->ts);
    forward_state_destroy(wk->sst);
    if (wk->xs.data) teacher->be->release(teacher->be, &wk->xs);
    free(wk->pairs);
    free(wk->teacher_inv_freq);
    if (wk->fits)
        for (int l = 0; l < L; l++) rorope_fit_free(&wk->fits[l]);
    free(wk->fits);
    memset(wk, 0, sizeof *wk);
}

/* A hybrid's GQA layers by measurement: a first conversion (o_proj fitted on the teacher's input,
 * so every layer is judged alone) gives each layer's error against the residual stream; the
 * auto_gqa_layers largest join o's gqa_layers, in `chosen`, appended after the given ones. */
static Status choose_gqa_layers(Model *teacher, const ConvertOptions *o, const int32_t *ids, ConvertOptions *chosen) {
    int L = (int)teacher->cfg.num_hidden_layers;
    if (o->auto_gqa_layers >= L - o->n_gqa_layers)
        return errorf("student.mla.auto_gqa_layers: %d of the %d layers left to convert would leave no MLA layer",
                      o->auto_gqa_layers, L - o->n_gqa_layers);
    ConvertOptions measure = *o;
    measure.auto_gqa_layers = 0;
    if (measure.output_fit == OUTPUT_FIT_STUDENT_INPUT) measure.output_fit = OUTPUT_FIT_TEACHER_INPUT;
    ConvertReport *rep = calloc(1, sizeof *rep);
    if (!rep) return errorf("convert: out of memory");
    ConvertWork wk;
    memset(&wk, 0, sizeof wk);
    Model *student = NULL;
    fprintf(stderr, "convert: measuring every layer to choose %d GQA layer%s\n", o->auto_gqa_layers,
            o->auto_gqa_layers > 1 ? "s" : "");
    Status st = run_convert(&wk, &student, teacher, &measure, rep, ids);
    convert_work_free(&wk, teacher);
    model_destroy(student);
    *chosen = *o;
    for (int n = 0; st == STATUS_OK && n < o->auto_gqa_layers; n++) {
        int best = -1;
        for (int l = 0; l < L; l++)
            if (rep->layers[l].kind == ATTENTION_MLA && (best < 0 || rep->layers[l].stream_error > rep->layers[best].stream_error))
                best = l;
        rep->layers[best].kind = ATTENTION_GQA;
        chosen->gqa_layers[chosen->n_gqa_layers++] = best;
    }
    free(rep);
    if (st != STATUS_OK) return error_context("choosing GQA layers: ");
    return STATUS_OK;
}

Status mla_convert(Model **out, Model *teacher, const ConvertOptions *o, ConvertReport *rep) {
    *out = NULL;
    memset(rep, 0, sizeof *rep);
    if (o->n_calib_seqs < 1 || o->calib_seq < 1)
        return errorf("convert: calibration needs at least one sequence of one token (got %lld x %lld)",
                      (long long)o->n_calib_seqs, (long long)o->calib_seq);
    ConvertWork wk;
    memset(&wk, 0, sizeof wk);
    const int32_t *ids = o->calib_ids;
    if (!ids) {
        wk.own_ids = random_ids(o, teacher->cfg.vocab_size, o->n_calib_seqs * o->calib_seq);
        if (!wk.own_ids) return errorf("convert: out of memory");
        ids = wk.own_ids;
    }
    Model *student = NULL;
    ConvertOptions chosen;
    Status st = STATUS_OK;
    if (o->auto_gqa_layers > 0) {
        st = choose_gqa_layers(teacher, o, ids, &chosen);
        o = &chosen;
    }
    if (st == STATUS_OK) st = run_convert(&wk, &student, teacher, o, rep, ids);
    for (int l = 0; st == STATUS_OK && l < rep->n_layers; l++)
        for (int i = 0; i < o->n_gqa_layers; i++)
            if (o->gqa_layers[i] == l && i >= o->n_gqa_layers - o->auto_gqa_layers) rep->layers[l].auto_gqa = 1;
    free(wk.own_ids);
    wk.own_ids = NULL;
    convert_work_free(&wk, teacher);
    if (st != STATUS_OK) {
        model_destroy(student);
        return STATUS_ERROR;
    }
    *out = student;
    return STATUS_OK;
}
