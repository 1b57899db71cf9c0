/* The generation loop over a Decoder: the first new token comes from the prompt's last logits, each
 * further one from feeding the previous; the last token is emitted, never fed. */
#include "infer/generate.h"

#include <stdlib.h>
#include <string.h>

#include "core/clock.h"

static int is_eos(const GenerateOptions *o, int32_t id) {
    for (int i = 0; i < o->n_eos; i++)
        if (o->eos[i] == id) return 1;
    return 0;
}

static Status run(Decoder *d, const Model *m, const int32_t *prompt, int64_t n_prompt, const GenerateOptions *o,
                  GenerateResult *r, float *logits, double *probs) {
    const int64_t V = m->cfg.vocab_size;
    double t0 = monotonic_seconds();
    TRY(decoder_prefill(d, prompt, n_prompt, logits, NULL));
    r->prefill_seconds = monotonic_seconds() - t0;
    t0 = monotonic_seconds();
    for (int64_t i = 0; i < o->max_new_tokens; i++) {
        if (i > 0) {
            TRY(decoder_step(d, r->ids[i - 1], logits));
            r->decode_tokens++;
        }
        TRY(sample_token(logits, V, &o->sampling, (uint64_t)i, probs, &r->ids[i]));
        r->n_new = i + 1;
        if (is_eos(o, r->ids[i])) {
            r->stopped_at_eos = 1;
            break;
        }
    }
    r->decode_seconds = monotonic_seconds() - t0;
    return STATUS_OK;
}

Status generate(Model *m, const int32_t *prompt, int64_t n_prompt, const GenerateOptions *o, GenerateResult *r) {
    memset(r, 0, sizeof *r);
    if (o->max_new_tokens < 1)
        return errorf("generate: max_new_tokens must be >= 1, got %lld", (long long)o->max_new_tokens);
    if (n_prompt < 1) return errorf("generate: the prompt is empty");
    TRY(sampling_check(&o->sampling));
    const int64_t V = m->cfg.vocab_size;
    r->prompt_tokens = n_prompt;
    r->ids = malloc((size_t)o->max_new_tokens * sizeof *r->ids);
    float *logits = malloc((size_t)V * sizeof *logits);
    double *probs = o->sampling.greedy ? NULL : malloc((size_t)V * sizeof *probs);
    Decoder *d = NULL;
    Status st = STATUS_OK;
    if (!r->ids || !logits || (!o->sampling.greedy && !probs)) st = errorf("generate: out of memory");
    if (st == STATUS_OK) st = decoder_create(&d, m, n_prompt + o->max_new_tokens - 1, o->mla_mode);
    if (st == STATUS_OK) st = run(d, m, prompt, n_prompt, o, r, logits, probs);
    if (d) {
        const KvCache *kv = decoder_cache(d);
        r->kv_bytes_allocated = kv->bytes_allocated;
        r->kv_bytes_filled = kv_cache_bytes_filled(kv);
        r->kv_bytes_per_token = kv->bytes_per_token;
        r->kv_tokens = kv->length;
    }
    decoder_destroy(d);
    free(logits);
    free(probs);
    if (st != STATUS_OK) generate_result_free(r);
    return st;
}

void generate_result_free(GenerateResult *r) {
    free(r->ids);
    r->ids = NULL;
    r->n_new = 0;
}
