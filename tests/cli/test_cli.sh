#!/usr/bin/env bash
# The mlatrain command line end to end: exit codes, one-line errors naming what is wrong, and
# `convert` writing a complete student (config, weights, report) that the loader reads back.
set -u
bin="$1"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
checks=0
failed=0

check() { # description, then a command that must succeed
    local what="$1"
    shift
    checks=$((checks + 1))
    if ! "$@"; then
        failed=$((failed + 1))
        echo "FAIL: $what" >&2
    fi
}

# Runs the command; sets rc, out, err.
run() {
    "$@" >"$work/out" 2>"$work/err"
    rc=$?
    out="$(cat "$work/out")"
    err="$(cat "$work/err")"
}

# The command must fail with status 1 and exactly one stderr line containing each given text.
expect_error() {
    local what="$1" needle
    shift
    local -a cmd=()
    while [ "$1" != "--" ]; do cmd+=("$1"); shift; done
    shift
    run "${cmd[@]}"
    check "$what: exit status 1 (got $rc)" test "$rc" -eq 1
    check "$what: one line on stderr (got: $err)" test "$(printf '%s\n' "$err" | wc -l)" -eq 1
    for needle in "$@"; do
        check "$what: stderr mentions '$needle' (got: $err)" grep -qF -- "$needle" "$work/err"
    done
}

run "$bin" --help
check "--help exits 0" test "$rc" -eq 0
check "--help lists convert" grep -q "convert" "$work/out"
run "$bin" convert --help
check "convert --help exits 0" test "$rc" -eq 0
run "$bin" frobnicate
check "an unknown command exits 2 (got $rc)" test "$rc" -eq 2

# A whole conversion.
run "$bin" convert --config "$here/tiny_convert.json" --out "$work/student" --dtype f32
check "convert exits 0 (stderr: $err)" test "$rc" -eq 0
for f in config.json model.safetensors report.json; do
    check "convert wrote $f" test -s "$work/student/$f"
done
check "the report gives the KV bytes per token (2 layers x 2 x 2*2*8 vs 2 x 2 x (16+4))" \
    grep -q "teacher 128 bytes, student 80 bytes, 1.60x smaller" "$work/out"
check "config.json is DeepSeek-V2" grep -q '"model_type":[[:space:]]*"deepseek_v2"' "$work/student/config.json"
check "no temporary file is left" test -z "$(find "$work/student" -name '*.tmp*')"

# Export again as bf16 in shards: the weights read back as the bf16 rounding of the f32 export.
run "$bin" export --checkpoint "$work/student" --out "$work/student_bf16" --dtype bf16 --max-shard-gb 0.0001
check "export exits 0 (stderr: $err)" test "$rc" -eq 0
check "export wrote an index and shards" test -s "$work/student_bf16/model.safetensors.index.json"
run "$bin" export --checkpoint "$work/student_bf16" --out "$work/student_again" --dtype bf16 --max-shard-gb 0.0001
check "a bf16 export exports again (stderr: $err)" test "$rc" -eq 0
for f in "$work"/student_bf16/model-*.safetensors "$work/student_bf16/model.safetensors.index.json"; do
    check "bf16 -> bf16 export is bitwise stable: $(basename "$f")" cmp -s "$f" "$work/student_again/$(basename "$f")"
done
expect_error "export of a folder that does not exist" "$bin" export --checkpoint "$work/none" --out "$work/y" -- "none"

# Errors: one line, naming the file, key or path at fault, non-zero exit.
expect_error "missing config" "$bin" convert --config "$work/nope.json" --out "$work/x" -- "nope.json" "cannot read"
printf '{"run": {"dir": "d"}, "student": {"init_from": "m", "mla": {"kv_lora_rnk": 8}}}' >"$work/typo.json"
expect_error "misspelt key" "$bin" convert --config "$work/typo.json" --out "$work/x" -- \
    "student.mla.kv_lora_rnk" "did you mean" "kv_lora_rank"
printf '{"run": {"dir": "d"}, "student": {"init_from": "m", "mla": {}}' >"$work/bad.json"
expect_error "bad JSON" "$bin" convert --config "$work/bad.json" --out "$work/x" -- "bad.json" "invalid JSON"
expect_error "a source folder that does not exist" "$bin" convert --config "$here/tiny_convert.json" --out "$work/x" \
    --set "student.init_from=\"$work/no_model\"" -- "no_model"
expect_error "an out-of-range value" "$bin" convert --config "$here/tiny_convert.json" --out "$work/x" \
    --set student.mla.qk_rope_head_dim=3 -- "student.mla.qk_rope_head_dim"
expect_error "a layer that does not exist" "$bin" convert --config "$here/tiny_convert.json" --out "$work/x" \
    --set "student.mla.gqa_layers=[5]" -- "gqa_layers" "5"
expect_error "--out missing" "$bin" convert --config "$here/tiny_convert.json" -- "--out DIR is required"
: >"$work/afile"
expect_error "an output path under a file" "$bin" convert --config "$here/tiny_convert.json" --out "$work/afile/sub" -- \
    "afile"
expect_error "unknown demo option" "$bin" demo --steps 3 -- "unknown option --steps"

# The demo runs end to end (shortened).
run "$bin" demo --teacher-steps 20 --student-steps 20 --threads 1
check "demo exits 0 (stderr: $err)" test "$rc" -eq 0
check "demo prints the student's KL" grep -q "kl " "$work/out"

echo "test_cli: $checks checks, $failed failed"
[ "$failed" -eq 0 ]
