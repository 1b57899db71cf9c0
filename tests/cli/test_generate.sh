#!/usr/bin/env bash
# `mlatrain generate` end to end: an MLA student and a hybrid from convert, a GQA model and its
# checkpoint from a short training run; --json's counts and the cache's measured bytes against the
# per-layer formula, greedy and seeded runs repeated, absorbed against expanded MLA attention, and
# text through a tokenizer.json; one-line errors for bad models, bad ids and bad options.
set -u
bin="$1"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
. "$(dirname "$0")/harness.sh"

# The value of a top-level or kv_cache number in --json's one line.
field() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p" "$work/out"; }
ids_of() { sed -n 's/.*"ids":\[\([0-9,]*\)\].*/\1/p' "$work/out"; }

run "$bin" generate --help
check "generate --help exits 0" test "$rc" -eq 0
run "$bin" --help
check "--help lists generate" grep -q "generate" "$work/out"

# Models: tiny_convert.json's student (2 MLA layers, r 16 + dr 4), its hybrid (layer 0 keeps GQA:
# 2 kv heads x head_dim 8), and a GQA model trained for two steps (run.dir/final and its checkpoint).
run "$bin" convert --config "$here/tiny_convert.json" --out "$work/mla" --dtype f32
check "convert (mla) exits 0 (stderr: $err)" test "$rc" -eq 0
run "$bin" convert --config "$here/tiny_convert.json" --out "$work/hybrid" --dtype f32 --set 'student.mla.gqa_layers=[0]'
check "convert (hybrid) exits 0 (stderr: $err)" test "$rc" -eq 0
"$bin" data text "$here/../../README.md" --docs paragraph --out "$work/train.h5" --val-out "$work/val.h5" \
    --val-fraction 0.2 --seed 1 >/dev/null
run "$bin" --config "$here/tiny_train.json" --set "run.dir=$work/run" --set "data.train=$work/train.h5" \
    --set "data.val=$work/val.h5" --set train.max_steps=2 --set checkpoint.every_steps=2 --set eval.every_steps=0
check "training exits 0 (stderr: $err)" test "$rc" -eq 0

# name, model, vocab, expected cache bytes per token (float32, over both layers)
check_model() {
    local name="$1" model="$2" per_token="$3"
    run "$bin" generate --model "$model" --prompt-ids 1,2,3 --max-new-tokens 5 --ignore-eos --json
    check "$name: generate exits 0 (stderr: $err)" test "$rc" -eq 0
    check "$name: 5 new tokens" test "$(field new_tokens)" = 5
    check "$name: 4 fed one at a time" test "$(field decode_tokens)" = 4
    check "$name: $per_token cache bytes per token (got $(field bytes_per_token))" test "$(field bytes_per_token)" = "$per_token"
    check "$name: 7 tokens cached, $((7 * per_token)) bytes filled" test "$(field bytes_filled)" = $((7 * per_token))
    check "$name: as many allocated" test "$(field bytes_allocated)" = $((7 * per_token))
    local first
    first=$(ids_of)
    check "$name: five ids (got '$first')" test "$(echo "$first" | tr ',' '\n' | wc -l)" -eq 5
    run "$bin" generate --model "$model" --prompt-ids 1,2,3 --max-new-tokens 5 --ignore-eos --json --threads 1
    check "$name: greedy again on one thread, the same ids" test "$(ids_of)" = "$first"
    run "$bin" generate --model "$model" --prompt-ids 1,2,3 --max-new-tokens 5 --ignore-eos
    check "$name: plain output is the ids" test "$out" = "$first"
    check "$name: a timing line on stderr" grep -q "decode: 4 tokens" "$work/err"
}
check_model "mla" "$work/mla" $((2 * (16 + 4) * 4))
check_model "hybrid" "$work/hybrid" $(((2 * 2 * 8 + 16 + 4) * 4))
check_model "gqa (run.dir/final)" "$work/run/final" $((2 * 2 * 2 * 8 * 4))
check_model "gqa (checkpoint)" "$work/run/checkpoints/step_000000002" $((2 * 2 * 2 * 8 * 4))
check_model "gqa (run directory)" "$work/run" $((2 * 2 * 2 * 8 * 4))

run "$bin" generate --model "$work/mla" --prompt-ids 5,6,7,8 --max-new-tokens 6 --ignore-eos --json
absorbed=$(ids_of)
run "$bin" generate --model "$work/mla" --prompt-ids 5,6,7,8 --max-new-tokens 6 --ignore-eos --json --mla-attention expanded
check "expanded MLA attention gives the absorbed ids ($absorbed, got $(ids_of))" test "$(ids_of)" = "$absorbed"
run "$bin" generate --model "$work/mla" --prompt-ids 5,6,7,8 --max-new-tokens 8 --ignore-eos --json --seed 11 --temperature 1.5 --top-p 0.9
sampled=$(ids_of)
run "$bin" generate --model "$work/mla" --prompt-ids 5,6,7,8 --max-new-tokens 8 --ignore-eos --json --seed 11 --temperature 1.5 --top-p 0.9
check "a seed reproduces a sampled generation ($sampled, got $(ids_of))" test "$(ids_of)" = "$sampled"
run "$bin" generate --model "$work/mla" --prompt-ids 5,6,7,8 --max-new-tokens 8 --ignore-eos --json --seed 12 --temperature 1.5 --top-p 0.9
check "another seed samples other tokens" test "$(ids_of)" != "$sampled"

# Text: a byte-level BPE tokenizer.json with one token per byte and no merges (ids = the UTF-8 bytes,
# <eos> 256), given with --tokenizer, then found beside the model.
mkdir -p "$work/tok"
python3 - "$work/tok/tokenizer.json" <<'PY'
import json, sys
# GPT-2's byte-to-unicode map: every byte as a printable character.
bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
cs = bs[:]
n = 0
for b in range(256):
    if b not in bs:
        bs.append(b)
        cs.append(256 + n)
        n += 1
char = dict(zip(bs, (chr(c) for c in cs)))
vocab = {char[b]: b for b in range(256)}
vocab["<eos>"] = 256
tok = {"version": "1.0", "truncation": None, "padding": None,
       "added_tokens": [{"id": 256, "content": "<eos>", "single_word": False, "lstrip": False, "rstrip": False,
                         "normalized": False, "special": True}],
       "normalizer": None,
       "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
       "post_processor": None,
       "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
       "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                 "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                 "vocab": vocab, "merges": []}}
json.dump(tok, open(sys.argv[1], "w"), ensure_ascii=False)
PY
run "$bin" generate --model "$work/mla" --tokenizer "$work/tok" --prompt "Hi é" --max-new-tokens 5 --ignore-eos --json
check "--prompt exits 0 (stderr: $err)" test "$rc" -eq 0
from_text=$(ids_of)
check "--prompt is encoded to its 5 bytes" grep -q '"prompt_tokens":5' "$work/out"
check "the new tokens come with their text" grep -q '"text":"' "$work/out"
run "$bin" generate --model "$work/mla" --prompt-ids 72,105,32,195,169 --max-new-tokens 5 --ignore-eos --json
check "--prompt gives what its ids give ($from_text, got $(ids_of))" test "$(ids_of)" = "$from_text"
check "without a tokenizer there is no text" grep -q '"text":null' "$work/out"
cp -r "$work/mla" "$work/mla_tok"
cp "$work/tok/tokenizer.json" "$work/mla_tok/"
run "$bin" generate --model "$work/mla_tok" --prompt "Hi é" --max-new-tokens 5 --ignore-eos --json
check "the model folder's tokenizer.json is used ($from_text, got $(ids_of))" test "$(ids_of)" = "$from_text"
run "$bin" generate --model "$work/mla_tok" --prompt "Hi é" --max-new-tokens 5 --ignore-eos
check "plain output is the text (exit $rc)" test "$rc" -eq 0 -a "$(wc -l <"$work/out")" -ge 1
expect_error "--prompt without a tokenizer" "$bin" generate --model "$work/mla" --prompt "Hi" -- "tokenizer"
printf '{"model": {"type": "Unigram"}}' >"$work/bad_tokenizer.json"
expect_error "an unsupported tokenizer" "$bin" generate --model "$work/mla" --tokenizer "$work/bad_tokenizer.json" \
    --prompt "Hi" -- "--tokenizer"

# bf16 storage: the cache holds half the bytes.
run "$bin" generate --model "$work/mla" --prompt-ids 1,2,3 --max-new-tokens 5 --ignore-eos --json --dtype bf16
check "--dtype bf16 exits 0 (stderr: $err)" test "$rc" -eq 0
check "--dtype bf16: $((2 * (16 + 4) * 2)) cache bytes per token (got $(field bytes_per_token))" \
    test "$(field bytes_per_token)" = $((2 * (16 + 4) * 2))
check "--dtype bf16: the cache says so" grep -q '"dtype":"bf16"' "$work/out"

# Stopping at eos: the config's eos_token_id made the first greedy token.
first=$(echo "$absorbed" | cut -d, -f1)
cp -r "$work/mla" "$work/mla_eos"
printf '{"eos_token_id": [299, %s]}\n' "$first" >"$work/mla_eos/generation_config.json"
run "$bin" generate --model "$work/mla_eos" --prompt-ids 5,6,7,8 --max-new-tokens 6 --json
check "generation stops at an id of generation_config.json's eos list" test "$(ids_of)" = "$first"
check "... and says so" grep -q '"stopped_at_eos":true' "$work/out"

# Errors.
expect_error "a model folder that does not exist" "$bin" generate --model "$work/nope" --prompt-ids 1 -- "$work/nope" \
    "No such file"
mkdir -p "$work/empty"
expect_error "a folder with no model" "$bin" generate --model "$work/empty" --prompt-ids 1 -- "no config.json"
expect_error "a non-numeric id" "$bin" generate --model "$work/mla" --prompt-ids 1,x,3 -- "--prompt-ids" "entry 2"
expect_error "an empty entry" "$bin" generate --model "$work/mla" --prompt-ids 1,,3 -- "--prompt-ids" "entry 2"
expect_error "a negative id" "$bin" generate --model "$work/mla" --prompt-ids -4 -- "--prompt-ids" "entry 1"
expect_error "an id past the vocabulary" "$bin" generate --model "$work/mla" --prompt-ids 1,300 -- \
    "id 300 (entry 2)" "vocabulary of 300"
expect_error "no prompt" "$bin" generate --model "$work/mla" -- "exactly one of --prompt"
expect_error "two prompts" "$bin" generate --model "$work/mla" --prompt-ids 1 --prompt hi -- "exactly one of --prompt"
expect_error "greedy and sampling" "$bin" generate --model "$work/mla" --prompt-ids 1 --greedy --temperature 0.7 -- \
    "--greedy cannot be combined"
expect_error "a bad top-p" "$bin" generate --model "$work/mla" --prompt-ids 1 --top-p 1.5 -- "--top-p"
expect_error "a zero temperature" "$bin" generate --model "$work/mla" --prompt-ids 1 --temperature 0 -- "--temperature"
expect_error "no new tokens" "$bin" generate --model "$work/mla" --prompt-ids 1 --max-new-tokens 0 -- "--max-new-tokens"
expect_error "past max_position_embeddings" "$bin" generate --model "$work/mla" --prompt-ids 1,2 --max-new-tokens 300 -- \
    "max_position_embeddings (256)"
expect_error "a bad dtype" "$bin" generate --model "$work/mla" --prompt-ids 1 --dtype f16 -- "--dtype" "f16"
expect_error "an unknown option" "$bin" generate --model "$work/mla" --prompt-ids 1 --beams 4 -- "unknown option --beams"
expect_error "no model" "$bin" generate --prompt-ids 1 -- "--model DIR is required"

echo "test_generate: $checks checks, $failed failed"
[ "$failed" -eq 0 ]
