#!/usr/bin/env bash
# `mlatrain data text --tokenizer` end to end: the eos id from the model folder, --eos-id, the
# token count HF tokenizers gives (tests/fixtures/tokenizer), and one-line errors for a bad
# tokenizer, bad input and misused options, with no output file left behind.
set -u
bin="$1"
here="$(cd "$(dirname "$0")" && pwd)"
fixtures="$here/../fixtures/tokenizer"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
. "$(dirname "$0")/harness.sh"

field() { # file, column of `data summary`'s row for it
    awk -v f="$1" -v c="$2" '$1 == f { print $c }' "$work/out"
}

# Three fixture texts, one per line: HF's ids with special tokens plus eos after each.
python3 - "$fixtures/llama3" "$work/in.txt" "$work/want" "$work/eos" <<'PY'
import json, sys
cases = json.load(open(sys.argv[1] + "/expected.json", encoding="utf-8"))["cases"]
eos = json.load(open(sys.argv[1] + "/tokenizer.json", encoding="utf-8"))["model"]["vocab"]["<|end_of_text|>"]
picked = [c for c in cases if c["text"] and "\n" not in c["text"] and c["text"].strip() == c["text"]][:3]
open(sys.argv[2], "w", encoding="utf-8").write("".join(c["text"] + "\n" for c in picked))
print(sum(len(c["ids_special"]) + (c["ids_special"][-1] != eos) for c in picked), file=open(sys.argv[3], "w"))
print(eos, file=open(sys.argv[4], "w"))
PY
run "$bin" data text "$work/in.txt" --docs line --tokenizer "$fixtures/llama3/tokenizer.json" --out "$work/l3.h5"
check "data text --tokenizer exits 0 (stderr: $err)" test "$rc" -eq 0
check "eos comes from the vocabulary's <|end_of_text|> (out: $out)" \
    grep -q "eos_id $(cat "$work/eos") from the token <|end_of_text|>" "$work/out"
run "$bin" data summary "$work/l3.h5"
check "the tokens HF gives, plus eos per document ($(cat "$work/want") vs $(field "$work/l3.h5" 2))" \
    test "$(field "$work/l3.h5" 2)" = "$(cat "$work/want")"
check "vocab_size is the tokenizer's" test "$(field "$work/l3.h5" 4)" = 528
check "three documents" test "$(field "$work/l3.h5" 6)" = 3

# A model folder: config.json's eos_token_id, else tokenizer_config.json's eos_token; --eos-id
# overrides both.
mkdir -p "$work/model"
cp "$fixtures/smollm/tokenizer.json" "$work/model/"
echo '{"eos_token_id": [2, 0]}' >"$work/model/config.json"
run "$bin" data text "$work/in.txt" --tokenizer "$work/model" --out "$work/s.h5"
check "eos from config.json (out: $out)" grep -q "eos_id 2 from config.json" "$work/out"
mkdir -p "$work/model2"
cp "$fixtures/smollm/tokenizer.json" "$work/model2/"
echo '{"eos_token": {"content": "<|im_start|>"}}' >"$work/model2/tokenizer_config.json"
run "$bin" data text "$work/in.txt" --tokenizer "$work/model2/tokenizer.json" --out "$work/s.h5"
check "eos from tokenizer_config.json's eos_token (out: $out)" grep -q "eos_id 1 from tokenizer_config.json" "$work/out"
run "$bin" data text "$work/in.txt" --tokenizer "$work/model" --eos-id 1 --out "$work/s.h5"
check "--eos-id overrides (out: $out)" grep -q "eos_id 1 from --eos-id" "$work/out"

# Errors: one line, exit 1, nothing written.
expect_error "a missing tokenizer" "$bin" data text "$work/in.txt" --tokenizer "$work/none" --out "$work/e.h5" -- \
    "$work/none"
printf '{"model": {"type": "WordPiece", "vocab": {}}}' >"$work/wp.json"
expect_error "a WordPiece tokenizer" "$bin" data text "$work/in.txt" --tokenizer "$work/wp.json" --out "$work/e.h5" -- \
    "model.type \"WordPiece\" is not supported"
printf 'good line\nbad \xff line\n' >"$work/bad.txt"
expect_error "invalid UTF-8" "$bin" data text "$work/bad.txt" --docs line --tokenizer "$work/model" \
    --out "$work/e.h5" -- "bad.txt: document 2: the text is not valid UTF-8"
expect_error "--eos-id past the vocabulary" "$bin" data text "$work/in.txt" --tokenizer "$work/model" --eos-id 9999 \
    --out "$work/e.h5" -- "--eos-id 9999 is not below the tokenizer's vocabulary size 523"
expect_error "--eos-id without --tokenizer" "$bin" data text "$work/in.txt" --eos-id 3 --out "$work/e.h5" -- \
    "--eos-id needs --tokenizer"
check "no output after the errors" test ! -e "$work/e.h5"

echo "test_data_tokenizer: $checks checks, $failed failed"
[ "$failed" -eq 0 ]
