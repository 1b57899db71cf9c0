#!/usr/bin/env bash
# Evaluation of runs end to end: `data mc` converting HellaSwag-style text, multiple-choice tasks in
# training's metrics and in `eval`, `eval --checkpoint` on a checkpoint folder and on a run
# directory, the sweep over two runs (its every figure equal to the single evaluation's),
# `export --checkpoint` of a checkpoint, tools/plot --sweep, and the documented h5py reading.
set -u
bin="$1"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
. "$(dirname "$0")/harness.sh"

# A JSON document without its layout, so that cJSON's pretty and compact forms compare equal.
compact() { tr -d ' \n\t' <"$1"; }

# The Python that has the module $1, or nothing.
python_with() {
    local py
    for py in python3 /usr/bin/python3; do
        if command -v "$py" >/dev/null && "$py" -c "import $1" 2>/dev/null; then
            echo "$py"
            return
        fi
    done
}

# ---- the converter ----
run "$bin" data mc "$here/hellaswag_sample.jsonl" --out "$work/hs.jsonl"
check "data mc exits 0 (stderr: $err)" test "$rc" -eq 0
check "data mc reports 3 items, 12 endings" grep -q "3 items, 12 endings" "$work/out"
check "the context starts with eos, then the bytes of ctx ('A m')" grep -q '^{"context": \[256, 65, 32, 109,' "$work/hs.jsonl"
check "each ending starts with a space (32)" test "$(grep -o '"endings": \[\[32, ' "$work/hs.jsonl" | wc -l)" -eq 3
check "labels as given, a string label read as a number" \
    test "$(grep -o '"label": [0-9]*' "$work/hs.jsonl" | tr '\n' ' ')" = '"label": 2 "label": 0 "label": 1 '
check "ctx_a and ctx_b joined when ctx is absent ('. the child')" \
    grep -q '46, 32, 116, 104, 101, 32, 99, 104, 105, 108, 100\], "endings"' "$work/hs.jsonl"
printf '{"ctx": "a", "endings": ["b", "c"], "label": 0}\n{"ctx": "a", "endings": ["b", "c"]}\n' >"$work/nolabel.jsonl"
expect_error "data mc: an item without a label" "$bin" data mc "$work/nolabel.jsonl" --out "$work/x.jsonl" -- \
    "nolabel.jsonl:2:" "label"
check "data mc wrote nothing on error" test ! -e "$work/x.jsonl"

# ---- two short distillation runs with the task evaluated along the way ----
"$bin" data text "$root/README.md" "$root/docs/"*.md --docs paragraph --out "$work/train.h5" \
    --val-out "$work/val.h5" --val-fraction 0.2 --seed 1 >/dev/null
sets=(--set "data.train=$work/train.h5" --set "data.val=$work/val.h5" --set "eval.tasks=[\"$work/hs.jsonl\"]")
run "$bin" --config "$here/tiny_distill.json" "${sets[@]}" --set "run.dir=$work/a"
check "run a exits 0 (stderr: $err)" test "$rc" -eq 0
check "training prints the task's accuracy" grep -q "task hs: accuracy" "$work/out"
check "metrics.jsonl: the task at every evaluation (steps 0, 4, 8, 12)" \
    test "$(grep -c '"tasks": {"hs": {"acc": [0-9.e-]*, "acc_norm": [0-9.e-]*, "n": 3}}' "$work/a/metrics.jsonl")" -eq 4
run "$bin" --config "$here/tiny_distill.json" "${sets[@]}" --set "run.dir=$work/b" --set optim.lr=1e-3 \
    --set train.max_steps=8
check "run b exits 0 (stderr: $err)" test "$rc" -eq 0

# ---- eval --checkpoint ----
cfg_a="$work/a/effective_config.json"
run "$bin" eval --config "$cfg_a" --checkpoint "$work/a/checkpoints/step_000000008" --json "$work/a8.json"
check "eval --checkpoint step_8 exits 0 (stderr: $err)" test "$rc" -eq 0
check "it names the checkpoint, step and tokens" grep -q "step_000000008: step 8, 3072 tokens trained" "$work/out"
check "it prints the task" grep -q "task hs (3 items): student accuracy" "$work/out"
for key in '"step":8,' '"train_tokens":3072,' '"checkpoint":' '"kl":' '"top1_agree":' '"tasks":' '"acc_norm":'; do
    check "the --json of a checkpoint has $key" grep -qF "$key" <(compact "$work/a8.json")
done
run "$bin" eval --config "$cfg_a" --checkpoint "$work/a" --json "$work/a_latest.json"
check "eval --checkpoint RUN_DIR exits 0 (stderr: $err)" test "$rc" -eq 0
check "a run directory means its newest checkpoint (step 12)" grep -qF '"step":12,' <(compact "$work/a_latest.json")
last_loss=$(tail -1 "$work/a/metrics.jsonl" | sed 's/.*"eval": {"loss": \([0-9.e+-]*\).*/\1/')
check "the newest checkpoint's loss is the run's last evaluation ($last_loss)" \
    grep -q "student: loss $(printf '%.4f' "$last_loss")" "$work/out"

# ---- the sweep ----
run "$bin" eval --sweep "$work/a" "$work/b" --out "$work/sweep"
check "the sweep exits 0 (stderr: $err)" test "$rc" -eq 0
check "sweep.jsonl: init + 3 checkpoints of a, init + 2 of b" test "$(wc -l <"$work/sweep/sweep.jsonl")" -eq 7
check "sweep.csv: a header and 7 rows" test "$(wc -l <"$work/sweep/sweep.csv")" -eq 8
check "sweep.csv has the task's columns" grep -q "^run,step,tokens,loss,ppl,kl,top1_agree,.*,hs_acc,hs_acc_norm,hs_n$" "$work/sweep/sweep.csv"
check "the table's header" grep -q "run .* step .* tokens .* student ppl .* KL .* top-1 .* KV bytes/tok" "$work/out"
check "the table has a row for b at step 8" grep -q "/b .* 8 .* 3072 " "$work/out"
check "the table has the teacher's row" grep -q "^(teacher)" "$work/out"
# Every sweep line equals the single evaluation of the same student, field for field.
for step in 0 4 8 12; do
    if [ "$step" -eq 0 ]; then
        "$bin" eval --config "$cfg_a" --json "$work/single.json" >/dev/null 2>&1
    else
        "$bin" eval --config "$cfg_a" --checkpoint "$work/a/checkpoints/$(printf 'step_%09d' "$step")" \
            --json "$work/single.json" >/dev/null 2>&1
    fi
    grep "^{\"run\":\"$work/a\",\"step\":$step," "$work/sweep/sweep.jsonl" >"$work/line.json"
    check "run a step $step: the sweep's line is the single eval's --json" \
        test "$(sed "s|^{\"run\":\"$work/a\",\"step\":0,\"train_tokens\":0,\"checkpoint\":null,|{|; s|^{\"run\":\"$work/a\",|{|" "$work/line.json" | compact /dev/stdin)" = "$(compact "$work/single.json")"
done
metrics_loss() { grep "^{\"step\": $2," "$1/metrics.jsonl" | sed 's/.*"eval": {"loss": \([0-9.e+-]*\).*/\1/'; }
for step in 0 4 8; do
    check "run b step $step: the sweep's loss is the one training logged ($(metrics_loss "$work/b" "$step"))" \
        test "$(printf '%.9g' "$(grep "^{\"run\":\"$work/b\",\"step\":$step," "$work/sweep/sweep.jsonl" | sed 's/.*"student":{"loss":\([0-9.e+-]*\).*/\1/')")" = "$(metrics_loss "$work/b" "$step")"
done
# --config: one evaluation setting for every run; a damaged checkpoint is a note, not the end.
cp -r "$work/b" "$work/c"
printf 'x' | dd of="$work/c/checkpoints/step_000000004/model.h5" bs=1 seek=5000 conv=notrunc 2>/dev/null
run "$bin" eval --sweep "$work/c" --config "$cfg_a" --set eval.max_windows=2 --out "$work/sweep2"
check "a sweep over a damaged checkpoint exits 0 (stderr: $err)" test "$rc" -eq 0
check "it says which checkpoint it skipped and why" grep -q "skipping .*step_000000004: .*CRC-32" "$work/err"
check "the rest is evaluated (init and step 8)" test "$(wc -l <"$work/sweep2/sweep.jsonl")" -eq 2
check "--config --set decides the windows" test "$(grep -c '"windows":2,' "$work/sweep2/sweep.jsonl")" -eq 2

expect_error "eval --checkpoint of a damaged checkpoint" "$bin" eval --config "$cfg_a" \
    --checkpoint "$work/c/checkpoints/step_000000004" -- "step_000000004/model.h5" "corrupted"
expect_error "eval --checkpoint of a folder that is neither" "$bin" eval --config "$cfg_a" --checkpoint "$work" -- \
    "not a checkpoint folder"
expect_error "eval --sweep without runs" "$bin" eval --sweep --out "$work/x" -- "at least one run directory"
expect_error "eval --sweep with --json" "$bin" eval --sweep "$work/a" --json "$work/x.json" -- "--json is for one"
expect_error "eval --sweep of a folder without a run" "$bin" eval --sweep "$work/sweep" --out "$work/x" -- \
    "effective_config.json"
printf '{"context": [1], "endings": [[2], [300]], "label": 0}\n' >"$work/badtask.jsonl"
expect_error "a task with a token id past the vocabulary" "$bin" eval --config "$cfg_a" \
    --set "eval.tasks=[\"$work/badtask.jsonl\"]" -- "badtask.jsonl:1:" "endings[1][0] = 300"

# ---- export --checkpoint ----
run "$bin" export --checkpoint "$work/a" --out "$work/export_a" --dtype f32
check "export --checkpoint RUN_DIR exits 0 (stderr: $err)" test "$rc" -eq 0
run "$bin" export --checkpoint "$work/a/final" --out "$work/export_final" --dtype f32
check "export of run.dir/final exits 0 (stderr: $err)" test "$rc" -eq 0
check "the newest checkpoint exports to the bytes run.dir/final exports to" \
    cmp -s "$work/export_a/model.safetensors" "$work/export_final/model.safetensors"
run "$bin" export --checkpoint "$work/a/checkpoints/step_000000004" --out "$work/export_4"
check "export --checkpoint step_4 exits 0 (stderr: $err)" test "$rc" -eq 0
check "it wrote a DeepSeek-V2 config" grep -q '"model_type":[[:space:]]*"deepseek_v2"' "$work/export_4/config.json"

# ---- tools/plot --sweep ----
py="$(python_with matplotlib)"
if [ -n "$py" ]; then
    run "$py" "$root/tools/plot" --sweep "$work/sweep/sweep.jsonl" --out "$work/ppl.png"
    check "tools/plot --sweep exits 0 (stderr: $err)" test "$rc" -eq 0
    check "tools/plot --sweep wrote a PNG" test "$(head -c 4 "$work/ppl.png" | tail -c 3)" = "PNG"
    run "$py" "$root/tools/plot" "$work/a" "$work/b" --out "$work/loss.png"
    check "tools/plot RUN_DIR... still plots the loss curves (stderr: $err)" test "$rc" -eq 0 -a -s "$work/loss.png"
else
    echo "test_eval: tools/plot skipped: no Python with matplotlib"
fi

# ---- the h5py example of docs/checkpoints.md ----
py="$(python_with h5py)"
if [ -n "$py" ]; then
    sed -n '/^```python$/,/^```$/p' "$root/docs/checkpoints.md" | sed '1d;$d' >"$work/read_weight.py"
    run "$py" "$work/read_weight.py" "$work/a/checkpoints/step_000000012"
    check "the documented h5py example runs (stderr: $err)" test "$rc" -eq 0
    check "it reads the step and the embedding" grep -q "step 12, 4608 tokens; model.embed_tokens.weight (257, 32) float32" "$work/out"
    # The weight h5py reads is the one run.dir/final holds (float32 safetensors, read by hand).
    run "$py" - "$work/a/checkpoints/step_000000012/model.h5" "$work/a/final/model.safetensors" <<'EOF'
import json, struct, sys
import h5py
import numpy as np
with h5py.File(sys.argv[1], "r") as f:
    w = f["model/model.embed_tokens.weight"][...]
with open(sys.argv[2], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    meta = json.loads(f.read(n))["model.embed_tokens.weight"]
    f.seek(8 + n + meta["data_offsets"][0])
    s = np.frombuffer(f.read(meta["data_offsets"][1] - meta["data_offsets"][0]), dtype="<f4").reshape(meta["shape"])
sys.exit(0 if meta["dtype"] == "F32" and np.array_equal(w, s) else 1)
EOF
    check "h5py's embedding equals run.dir/final's bit for bit (stderr: $err)" test "$rc" -eq 0
else
    echo "test_eval: the h5py example skipped: no Python with h5py (Debian: apt-get install python3-h5py)"
fi

echo "test_eval: $checks checks, $failed failed"
[ "$failed" -eq 0 ]
