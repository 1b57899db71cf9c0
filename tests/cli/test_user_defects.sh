#!/usr/bin/env bash
# The command line as a new user meets it, following the README: Ctrl-C checkpoints like SIGTERM
# (a second one aborts); a finished run run again trains nothing and keeps its record; `train` is
# the explicit form of `--config`; eval reads model folders; data text names --docs when a split
# finds too few documents; CLI edges (--config --help, a missing export path, exporting a GQA model,
# did-you-mean for --set, --json ending in a newline); students written from an HF folder keep its
# eos list and tokenizer files and say their dtype in torch_dtype; progress lines on long steps;
# the shipped GPU configs parse; tools/plot's legend labels.
set -u
bin="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT
. "$(dirname "$0")/harness.sh"
# Job control: background runs get SIGINT as a terminal's Ctrl-C would deliver it (without it, the
# shell starts them with SIGINT ignored).
set -m
out="" err="" rc=0

# A value of a JSON file, as JSON ("[0, 256]", "\"float32\"").
jget() { python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); [v:=v[k] for k in sys.argv[2:]]; print(json.dumps(v))' "$@"; }

# Waits until the run in $1 has logged a training step.
wait_for_step() {
    local i
    for ((i = 0; i < 6000; i++)); do
        grep -qF '"lr"' "$1/metrics.jsonl" 2>/dev/null && return 0
        sleep 0.005
    done
    return 1
}

"$bin" data text "$root/README.md" "$root/docs/"*.md --docs paragraph --out "$work/train.h5" \
    --val-out "$work/val.h5" --val-fraction 0.2 --seed 1 >/dev/null
train=(--config "$here/tiny_train.json" --set "data.train=$work/train.h5" --set "data.val=$work/val.h5")

# ---- Ctrl-C: a checkpoint and status 3, as SIGTERM; the same command resumes ----
long=("${train[@]}" --set run.threads=1 --set train.max_steps=500 --set log.every_steps=1 --set eval.every_steps=0
      --set checkpoint.every_steps=100 --set train.micro_batch=8 --set train.global_batch=32)
"$bin" "${long[@]}" --set "run.dir=$work/int" >"$work/int.out" 2>"$work/int.err" &
pid=$!
pids+=("$pid")
check "SIGINT: the run logs a step" wait_for_step "$work/int"
kill -INT "$pid"
wait "$pid"
rc=$?
check "SIGINT: exit status 3 like SIGTERM (got $rc)" test "$rc" -eq 3
latest="$(cat "$work/int/checkpoints/latest" 2>/dev/null)"
check "SIGINT: a complete checkpoint ($latest)" test -n "$latest" -a -f "$work/int/checkpoints/$latest/manifest.json"
check "SIGINT: stopped before the end ($latest)" test "$latest" != "step_000000500"
check "SIGINT: says a second Ctrl-C aborts" grep -q "Ctrl-C again aborts" "$work/int.err"
check "SIGINT: says how to resume" grep -q "the same command resumes" "$work/int.out"
stopped_at=0
[ -n "$latest" ] && stopped_at=$((10#${latest#step_}))
run "$bin" "${long[@]}" --set "run.dir=$work/int" --set train.max_steps=$((stopped_at + 2))
check "SIGINT: the same command resumes from it (stderr: $err)" \
    test "$rc" -eq 0 -a -n "$latest" -a -n "$(grep "resuming from .*$latest" "$work/out")"

# A second Ctrl-C aborts at once: the signal's own status, no checkpoint at the stop. Steps of 512
# micro-steps last long enough for the second to arrive while the first waits for its step.
"$bin" "${long[@]}" --set "run.dir=$work/int2" --set train.micro_batch=2 --set train.global_batch=1024 \
    >"$work/int2.out" 2>"$work/int2.err" &
pid=$!
pids+=("$pid")
check "SIGINT x2: the run logs a step" wait_for_step "$work/int2"
kill -INT "$pid"
for ((i = 0; i < 2000; i++)); do grep -q "Ctrl-C again" "$work/int2.err" && break; sleep 0.005; done
kill -INT "$pid"
wait "$pid"
rc=$?
check "SIGINT x2: killed by SIGINT, status 130 (got $rc)" test "$rc" -eq 130
check "SIGINT x2: no stop message" test -z "$(grep "stopped at step" "$work/int2.out")"

# ---- a finished run, run again with --set: says so, trains nothing, keeps its record ----
run "$bin" "${train[@]}" --set "run.dir=$work/a"
check "a 20-step run exits 0 (stderr: $err)" test "$rc" -eq 0
cp "$work/a/effective_config.json" "$work/a.effective" && cp "$work/a/metrics.jsonl" "$work/a.metrics"
run "$bin" "${train[@]}" --set "run.dir=$work/a" --set optim.lr=3e-4
check "the same run again exits 0 (stderr: $err)" test "$rc" -eq 0
check "it says the run is complete and how to go on ($out)" \
    test -n "$(grep "is complete" "$work/out" | grep "train.max_steps" | grep -- "--restart")"
check "effective_config.json is the run's, not the --set one" cmp -s "$work/a/effective_config.json" "$work/a.effective"
check "metrics.jsonl is unchanged" cmp -s "$work/a/metrics.jsonl" "$work/a.metrics"

# ---- `mlatrain train --config` is `mlatrain --config` ----
run "$bin" train "${train[@]}" --set "run.dir=$work/b"
check "train --config exits 0 (stderr: $err)" test "$rc" -eq 0
check "train --config trains the same model, bit for bit" cmp -s "$work/a/final/model.safetensors" "$work/b/final/model.safetensors"
run "$bin" train --help
check "train --help exits 0 and shows the usage" test "$rc" -eq 0 -a -n "$(grep "usage: mlatrain \[train\] --config" "$work/out")"
run "$bin" --config --help
check "--config --help shows the usage (rc $rc: $err)" test "$rc" -eq 0 -a -n "$(grep "usage:" "$work/out")"
expect_error "--config without its file" "$bin" --config --restart -- "--config" "missing value"

# ---- eval --checkpoint of a model folder ----
run "$bin" eval "${train[@]}" --set "run.dir=$work/a" --checkpoint "$work/a/final" --json "$work/eval_final.json"
check "eval --checkpoint run.dir/final exits 0 (stderr: $err)" test "$rc" -eq 0
run "$bin" eval "${train[@]}" --set "run.dir=$work/a" --checkpoint "$work/a" --json "$work/eval_ckpt.json"
check "eval --checkpoint RUN_DIR exits 0 (stderr: $err)" test "$rc" -eq 0
check "run.dir/final evaluates exactly as the run's last checkpoint" \
    test "$(jget "$work/eval_final.json" student loss)" = "$(jget "$work/eval_ckpt.json" student loss)"
check "the folder's --json names it" test "$(jget "$work/eval_final.json" checkpoint)" = "\"$work/a/final\""
check "--json ends with a newline" test "$(tail -c 1 "$work/eval_final.json" | od -An -tx1 | tr -d ' ')" = "0a"
expect_error "eval of a path that does not exist" "$bin" eval "${train[@]}" --checkpoint "$work/nope" -- \
    "$work/nope" "No such file or directory"
mkdir "$work/empty"
expect_error "eval of a folder that holds no model" "$bin" eval "${train[@]}" --checkpoint "$work/empty" -- \
    "not a checkpoint folder" "nor a model folder"

# ---- data text: two whole files cannot give a 5% validation split; the error names --docs ----
expect_error "data text, 2 files, --val-fraction 0.05" "$bin" data text "$root/README.md" "$root/docs/data.md" \
    --out "$work/t.h5" --val-out "$work/v.h5" --val-fraction 0.05 -- "no validation document out of 2" "--docs paragraph"
check "no output was left" test ! -e "$work/t.h5" -a ! -e "$work/v.h5"

# ---- CLI edges ----
expect_error "export of a path that does not exist" "$bin" export --checkpoint "$work/nope" --out "$work/x" -- \
    "--checkpoint $work/nope: No such file or directory"
check "... and not a file inside it" test -z "$(grep config.json "$work/err")"
expect_error "export of a GQA model" "$bin" export --checkpoint "$work/a/final" --out "$work/x" -- "GQA model" \
    "mlatrain convert"
check "... without internal function names" test -z "$(grep -E "hf_[a-z_]+\(|hf_model_|hf_config_" "$work/err")"
expect_error "--set optimizer.lr" "$bin" "${train[@]}" --set optimizer.lr=1e-3 -- 'did you mean "optim"'
expect_error "--set lr" "$bin" "${train[@]}" --set lr=1e-3 -- 'did you mean "optim.lr"'
expect_error "--set student.mla.kv_lora" "$bin" "${train[@]}" --set student.mla.kv_lora=8 -- 'did you mean "kv_lora_rank"'

# ---- a model folder with an eos list and tokenizer files: students keep both ----
teacher="$work/teacher"
cp -r "$work/a/final" "$teacher"
python3 - "$teacher" <<'EOF'
import json, sys
d = sys.argv[1]
cfg = json.load(open(f"{d}/config.json"))
cfg["eos_token_id"] = [256, 10]
json.dump(cfg, open(f"{d}/config.json", "w"), indent=2)
json.dump({"version": "1.0", "model": {"type": "BPE"}}, open(f"{d}/tokenizer.json", "w"))
json.dump({"eos_token": "<|eot_id|>", "chat_template": "{{ messages }}"}, open(f"{d}/tokenizer_config.json", "w"))
json.dump({"eos_token_id": [256, 10], "do_sample": True}, open(f"{d}/generation_config.json", "w"))
EOF
tokenizer_files=(tokenizer.json tokenizer_config.json generation_config.json)
check_student() { # folder, torch_dtype, what
    check "$3: torch_dtype $2" test "$(jget "$1/config.json" torch_dtype)" = "\"$2\""
    check "$3: the eos list kept whole" test "$(jget "$1/config.json" eos_token_id)" = "[256, 10]"
    local f
    for f in "${tokenizer_files[@]}"; do check "$3: $f copied" cmp -s "$teacher/$f" "$1/$f"; done
    check "$3: no tokenizer file that the source lacks" test ! -e "$1/special_tokens_map.json"
}
distill=(--config "$here/tiny_distill.json" --set "data.train=$work/train.h5" --set "data.val=$work/val.h5"
         --set teacher=null --set "teacher.path=$teacher" --set "student.init_from=$teacher" --set train.max_steps=4
         --set student.mla.latent_norm=true)
run "$bin" convert "${distill[@]}" --out "$work/converted" --set eval.max_windows=1
check "convert from the folder exits 0 (stderr: $err)" test "$rc" -eq 0
check_student "$work/converted" bfloat16 "convert"
run "$bin" "${distill[@]}" --set "run.dir=$work/c"
check "distilling from the folder exits 0 (stderr: $err)" test "$rc" -eq 0
check_student "$work/c/final" float32 "run.dir/final"
for dt in f16:float16 bf16:bfloat16 f32:float32; do
    run "$bin" export --checkpoint "$work/c" --out "$work/export_${dt%%:*}" --dtype "${dt%%:*}"
    check "export --dtype ${dt%%:*} of the run exits 0 (stderr: $err)" test "$rc" -eq 0
    check_student "$work/export_${dt%%:*}" "${dt#*:}" "export --dtype ${dt%%:*} of a checkpoint"
done
run "$bin" export --checkpoint "$work/c/final" --out "$work/export_final" --dtype f16
check "export of run.dir/final exits 0 (stderr: $err)" test "$rc" -eq 0
check_student "$work/export_final" float16 "export of run.dir/final"
check "an f32 export holds the weights of run.dir/final" \
    cmp -s "$work/c/final/model.safetensors" "$work/export_f32/model.safetensors"

# ---- progress lines on stderr: none within the interval (the harness sets a day), every update at 0 ----
run "$bin" convert "${distill[@]}" --out "$work/quiet" --set eval.max_windows=1
check "no progress line within the interval ($err)" test -z "$err"
export MLATRAIN_PROGRESS_SECONDS=0
run "$bin" convert "${distill[@]}" --out "$work/loud" --set eval.max_windows=2 --dtype f32
check "convert: a line per layer with an ETA" grep -qE "^convert: layer 1/2  0m0[0-9]s elapsed  ETA " "$work/err"
check "convert: a closing line" grep -q "^convert: layer 2/2  done in " "$work/err"
check "convert: evaluation windows" grep -q "^eval: window 2/2" "$work/err"
check "convert: writing the tensors" grep -qE "^writing model.safetensors: tensor [0-9]+/[0-9]+" "$work/err"
check "convert: loading the source folder" grep -qE "^loading $teacher: tensor [0-9]+/[0-9]+" "$work/err"
check "convert: nothing on stderr but progress" test -z "$(grep -vE "^(convert|eval|writing|loading)" "$work/err")"
run "$bin" data text "$root/README.md" "$root/docs/data.md" --docs paragraph --out "$work/p.h5"
check "data text: a line per input file" grep -q "^data: input file 2/2" "$work/err"
export MLATRAIN_PROGRESS_SECONDS=86400

# ---- the GPU configs the docs name parse, and say which model folder they expect ----
for c in distill_1b distill_8b_to_1b; do
    expect_error "configs/$c.json without its models" "$bin" --config "$root/configs/$c.json" --set device=cpu \
        --set "run.dir=$work/$c" -- "teacher: models/Llama-3." "No such file or directory" "--set teacher.path=DIR"
done

# ---- tools/plot: legends say what each curve is, and runs in folders of one name stay apart ----
python3 - "$root/tools/plot" <<'EOF'
import importlib.machinery, importlib.util, sys
loader = importlib.machinery.SourceFileLoader("plot", sys.argv[1])
plot = importlib.util.module_from_spec(importlib.util.spec_from_loader("plot", loader))
loader.exec_module(plot)
names = plot.run_labels(["runs/demo/teacher", "runs/demo/student"])
assert names == {"runs/demo/teacher": "teacher", "runs/demo/student": "student"}, names
names = plot.run_labels(["x/a/final", "y/a/final"])
assert len(set(names.values())) == 2 and names["x/a/final"].endswith("x/a/final"), names
labels = plot.curve_labels("student")
assert labels["teacher"] == "student: its teacher's validation loss", labels
assert labels["eval"] == "student: validation loss", labels
EOF
check "tools/plot: run and curve labels" test $? -eq 0

echo "test_user_defects: $checks checks, $failed failed"
[ "$failed" -eq 0 ]
