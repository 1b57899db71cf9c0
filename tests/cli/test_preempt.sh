#!/usr/bin/env bash
# Preemption end to end: SIGUSR1 or SIGTERM during a run -> a complete checkpoint and exit status 3;
# the same command again resumes and ends with final weights byte-identical to an uninterrupted
# run. The same through tools/slurm/mlatrain.sbatch, which passes USR1 on and requeues the job
# (scontrol replaced by a stand-in that records its arguments).
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

# Waits until the run in $1 has logged a training step (metrics.jsonl has a line with "lr").
wait_for_step() {
    local i
    for ((i = 0; i < 6000; i++)); do
        grep -qF '"lr"' "$1/metrics.jsonl" 2>/dev/null && return 0
        sleep 0.005
    done
    return 1
}

# The run's metrics without the wall-clock fields.
metrics() { sed 's/, "tok_s": [^,]*, "elapsed": [^,}]*//' "$1/metrics.jsonl"; }

"$bin" data text "$root/README.md" "$root/docs/"*.md --docs paragraph --out "$work/train.h5" \
    --val-out "$work/val.h5" --val-fraction 0.2 --seed 1 >/dev/null
# 500 steps of the tiny model on one thread (a millisecond or more each): long enough to be stopped
# midway, checkpoints every 100.
base=(--config "$here/tiny_train.json" --set "data.train=$work/train.h5" --set "data.val=$work/val.h5"
      --set run.threads=1 --set train.max_steps=500 --set log.every_steps=1 --set eval.every_steps=100
      --set checkpoint.every_steps=100)

"$bin" "${base[@]}" --set "run.dir=$work/straight" >"$work/straight.out" 2>&1
check "the uninterrupted run exits 0" test $? -eq 0

for sig in USR1 TERM; do
    run="$work/run_$sig"
    "$bin" "${base[@]}" --set "run.dir=$run" >"$work/$sig.out" 2>&1 &
    pid=$!
    pids+=("$pid")
    check "SIG$sig: the run logs a step" wait_for_step "$run"
    kill -"$sig" "$pid"
    wait "$pid"
    rc=$?
    check "SIG$sig: exit status 3 (got $rc; $(tail -1 "$work/$sig.out"))" test "$rc" -eq 3
    latest="$(cat "$run/checkpoints/latest" 2>/dev/null)"
    check "SIG$sig: checkpoints/latest names a checkpoint ($latest)" test -n "$latest" -a -f "$run/checkpoints/$latest/manifest.json"
    check "SIG$sig: stopped before the end ($latest)" test "$latest" != "step_000000500"
    check "SIG$sig: the checkpoint is complete (eval reads and verifies it)" \
        "$bin" eval "${base[@]}" --set "run.dir=$run" --set eval.max_windows=1 --checkpoint "$run" --json "$work/$sig.json" >/dev/null
    check "SIG$sig: says how to resume" grep -q "the same command resumes" "$work/$sig.out"
    "$bin" "${base[@]}" --set "run.dir=$run" >"$work/$sig.resume.out" 2>&1
    check "SIG$sig: the same command again exits 0 ($(tail -1 "$work/$sig.resume.out"))" test $? -eq 0
    check "SIG$sig: it resumed" grep -q "resuming from .*$latest" "$work/$sig.resume.out"
    check "SIG$sig: final weights byte-identical to the uninterrupted run" \
        cmp -s "$run/final/model.safetensors" "$work/straight/final/model.safetensors"
    check "SIG$sig: every logged figure equal to the uninterrupted run's" \
        cmp -s <(metrics "$run") <(metrics "$work/straight")
done

# The sbatch script outside Slurm's daemons: SLURM_JOB_ID set, scontrol a recorder.
mkdir -p "$work/fakebin"
printf '#!/bin/sh\necho "$@" >>"%s/scontrol.calls"\n' "$work" >"$work/fakebin/scontrol"
chmod +x "$work/fakebin/scontrol"
run="$work/run_slurm"
slurm_env=(env "PATH=$work/fakebin:$PATH" SLURM_JOB_ID=4242 "MLATRAIN=$bin")
"${slurm_env[@]}" bash "$root/tools/slurm/mlatrain.sbatch" "$here/tiny_train.json" "${base[@]:2}" \
    --set "run.dir=$run" >"$work/slurm.out" 2>&1 &
pid=$!
pids+=("$pid")
check "sbatch script: the run logs a step" wait_for_step "$run"
kill -USR1 "$pid" # Slurm's --signal=B:USR1 reaches the batch shell only
wait "$pid"
rc=$?
check "sbatch script: exit status 3 after USR1 (got $rc: $(tail -2 "$work/slurm.out"))" test "$rc" -eq 3
check "sbatch script: passed USR1 on" grep -q "got SIGUSR1, passing it to mlatrain" "$work/slurm.out"
check "sbatch script: requeued its job ($(cat "$work/scontrol.calls" 2>/dev/null))" \
    test "$(cat "$work/scontrol.calls" 2>/dev/null)" = "requeue 4242"
SLURM_RESTART_COUNT=1 "${slurm_env[@]}" bash "$root/tools/slurm/mlatrain.sbatch" "$here/tiny_train.json" \
    "${base[@]:2}" --set "run.dir=$run" >"$work/slurm2.out" 2>&1
check "sbatch script, requeued start: exit status 0 ($(tail -1 "$work/slurm2.out"))" test $? -eq 0
check "sbatch script, requeued start: resumed" grep -q "resuming from" "$work/slurm2.out"
check "sbatch script, requeued start: no second requeue" test "$(wc -l <"$work/scontrol.calls")" -eq 1
check "sbatch script: final weights byte-identical to the uninterrupted run" \
    cmp -s "$run/final/model.safetensors" "$work/straight/final/model.safetensors"

echo "test_preempt: $checks checks, $failed failed"
[ "$failed" -eq 0 ]
