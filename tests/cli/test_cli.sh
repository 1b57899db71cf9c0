#!/usr/bin/env bash
# The mlatrain command line end to end: exit codes, one-line errors naming what is wrong, and
# `convert` writing a complete student (config, weights, report) that the loader reads back.
set -u
bin="$1"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
. "$(dirname "$0")/harness.sh"

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

# With data: calibration from data.train, and the training-free figures on data.val, printed and in
# the report; the default conversion (rorope, latent from activations) on real text.
root=$(cd "$here/../.." && pwd)
"$bin" data text "$root/README.md" "$root/docs/"*.md --docs paragraph --out "$work/train.h5" \
    --val-out "$work/val.h5" --val-fraction 0.2 --seed 1 >/dev/null
run "$bin" convert --config "$here/tiny_convert.json" --out "$work/student_data" --dtype f32 \
    --set "data.train=$work/train.h5" --set "data.val=$work/val.h5" --set student.mla.rope_select=rorope \
    --set eval.max_windows=2
check "convert with data exits 0 (stderr: $err)" test "$rc" -eq 0
check "calibration comes from data.train" grep -q "sequences of 64 tokens (data.train)" "$work/out"
check "convert prints the training-free perplexities" grep -q "training-free, on data.val (2 windows, 128 tokens): source ppl" "$work/out"
check "the report holds them" grep -q '"training_free"' "$work/student_data/report.json"

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
expect_error "an unknown option" "$bin" convert --config "$here/tiny_convert.json" --steps 3 -- "unknown option --steps"

# Training end to end on byte-level text (this repository's docs), then evaluation with --json.
run "$bin" data text "$here/../../README.md" "$here/../../docs/"*.md --docs paragraph --out "$work/train.h5" \
    --val-out "$work/val.h5" --val-fraction 0.2 --seed 1
check "data text exits 0 (stderr: $err)" test "$rc" -eq 0
sets=(--set "run.dir=$work/run" --set "data.train=$work/train.h5" --set "data.val=$work/val.h5")
run "$bin" --config "$here/tiny_train.json" "${sets[@]}"
check "training exits 0 (stderr: $err)" test "$rc" -eq 0
for f in metrics.jsonl effective_config.json final/config.json final/model.safetensors; do
    check "training wrote $f" test -s "$work/run/$f"
done
check "metrics.jsonl: the evaluation at init and a line per logged step, with its evaluation" test "$(grep -c "\"eval\"" "$work/run/metrics.jsonl")" -eq 3 -a "$(wc -l <"$work/run/metrics.jsonl")" -eq 3
check "the run ends with its summary table" grep -q "student after training" "$work/out"
run "$bin" --config "$here/tiny_train.json" "${sets[@]}"
check "a finished run started again finds its last checkpoint and ends (rc $rc)" test "$rc" -eq 0
check "... saying the run is complete" grep -q "is complete: its checkpoint .*step_000000020" "$work/out"
mv "$work/run/checkpoints" "$work/run/checkpoints.moved"
expect_error "a run.dir with metrics but no checkpoint" "$bin" --config "$here/tiny_train.json" "${sets[@]}" -- \
    "already holds a run" "--restart"
mv "$work/run/checkpoints.moved" "$work/run/checkpoints"
run "$bin" eval --config "$here/tiny_train.json" "${sets[@]}" --set "student.init_from=\"$work/run/final\"" \
    --json "$work/eval.json"
check "eval exits 0 (stderr: $err)" test "$rc" -eq 0
for key in '"student"' '"loss"' '"ppl"' '"windows"' '"tokens"' '"kv_bytes_per_token"'; do
    check "eval.json has $key" grep -qF "$key" "$work/eval.json"
done
final_loss=$(tail -1 "$work/run/metrics.jsonl" | sed 's/.*"eval": {"loss": \([0-9.e+-]*\).*/\1/')
check "eval of run.dir/final reproduces the run's last evaluation ($final_loss)" \
    grep -q "student: loss $(printf '%.4f' "$final_loss")" "$work/out"
expect_error "a config naming a data file that does not exist" "$bin" --config "$here/tiny_train.json" \
    --set "run.dir=$work/run2" --set "data.train=$work/missing.h5" -- "missing.h5"
expect_error "a wrong type via --set" "$bin" --config "$here/tiny_train.json" --set "optim.lr=fast" -- \
    "optim.lr" "expected a number"

# bench: one JSON line of figures (bf16 storage on the CPU too), and the GPU configs refused where
# there is no GPU with one line saying so.
root="$(cd "$here/../.." && pwd)"
expect_error "bench with an unknown key" "$bin" bench --config "$root/configs/bench_cpu_tiny.json" --steps 1 \
    --set precison=bf16 -- "precison"
run "$bin" bench --config "$root/configs/bench_cpu_tiny.json" --steps 1 --set precision=bf16
check "bench exits 0 (stderr: $err)" test "$rc" -eq 0
for key in '"tok_s": ' '"gflop_per_tok": ' '"precision": "bf16"' '"recompute": "none"' '"loss": '; do
    check "bench prints $key" grep -qF "$key" "$work/out"
done
expect_error "bench --op-times on the cpu" "$bin" bench --config "$root/configs/bench_cpu_tiny.json" --steps 1 \
    --op-times -- '--op-times needs "device": "cuda"' 
if ! nvidia-smi >/dev/null 2>&1; then
    for cfg in bench_1b bench_8b_1b; do
        expect_error "bench $cfg without a GPU" "$bin" bench --config "$root/configs/$cfg.json" --steps 1 -- \
            'device "cuda"'
    done
fi

echo "test_cli: $checks checks, $failed failed"
[ "$failed" -eq 0 ]
