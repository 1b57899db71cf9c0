#!/usr/bin/env bash
# SIGKILL at random moments of a run that writes a checkpoint after every step, many times over:
# checkpoints/latest, when present, always names a complete checkpoint (eval verifies its
# manifest's sizes and CRC-32s and loads it), every start resumes from what the last one left, and
# the run finally ends with weights byte-identical to an uninterrupted run. A kill comes a random
# few steps (and milliseconds) into a start, so it lands anywhere in a step or a save however fast
# the machine is; every sixth comes during start-up. MLATRAIN_KILLS sets how many (default 30).
set -u
bin="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$(mktemp -d)"
pid=
trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$work"' EXIT
. "$(dirname "$0")/harness.sh"
kills="${MLATRAIN_KILLS:-30}"

"$bin" data text "$root/README.md" "$root/docs/"*.md --docs paragraph --out "$work/train.h5" \
    --val-out "$work/val.h5" --val-fraction 0.2 --seed 1 >/dev/null
base=(--config "$here/tiny_train.json" --set "data.train=$work/train.h5" --set "data.val=$work/val.h5"
      --set run.threads=1 --set train.max_steps=1000 --set eval.every_steps=0 --set log.every_steps=1)
run="$work/run"
ck="$run/checkpoints"

# Waits until the output file $1 shows $2 training steps (a line per step: log.every_steps is 1).
wait_for_steps() {
    local i
    for ((i = 0; i < 6000; i++)); do
        [ "$(grep -c '^step ' "$1" 2>/dev/null)" -ge "$2" ] && return 0
        sleep 0.005
    done
    return 1
}

"$bin" "${base[@]}" --set "run.dir=$work/straight" --set checkpoint.every_steps=0 >"$work/straight.out" 2>&1
check "the uninterrupted run exits 0" test $? -eq 0

mid_save=0
resumed=0
killed=0
for ((i = 1; i <= kills; i++)); do
    # A start with no complete checkpoint behind it must say --restart (run.dir holds metrics).
    again=()
    [ -f "$ck/latest" ] || again=(--restart)
    tmp_before=$(find "$ck" -maxdepth 1 -name '.tmp_step_*' 2>/dev/null | wc -l)
    "$bin" "${base[@]}" --set "run.dir=$run" --set checkpoint.every_steps=1 --set checkpoint.keep_last=2 \
        "${again[@]}" >"$work/out.$i" 2>&1 &
    pid=$!
    if ((i % 6 == 0)); then
        sleep "$(printf '0.%03d' $((RANDOM % 300)))"
    else
        wait_for_steps "$work/out.$i" $((1 + RANDOM % 6))
        sleep "$(printf '0.%03d' $((RANDOM % 10)))"
    fi
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null # without bash's "Killed" line
    rc=$?
    pid=
    if [ "$rc" -eq 0 ]; then
        echo "test_sigkill: the run reached its end at start $i"
        break
    fi
    check "kill $i: the run was running when killed (status $rc: $(tail -1 "$work/out.$i"))" test "$rc" -eq 137
    killed=$((killed + 1))
    grep -q "resuming from" "$work/out.$i" && resumed=$((resumed + 1))
    tmp_after=$(find "$ck" -maxdepth 1 -name '.tmp_step_*' 2>/dev/null | wc -l)
    [ "$tmp_after" -gt "$tmp_before" ] && mid_save=$((mid_save + 1))
    if [ -f "$ck/latest" ]; then
        latest="$(cat "$ck/latest")"
        check "kill $i: latest ($latest) names a folder" test -d "$ck/$latest"
        check "kill $i: latest ($latest) is complete and valid" \
            "$bin" eval "${base[@]}" --set "run.dir=$run" --set eval.max_windows=1 --checkpoint "$ck/$latest" \
            >/dev/null
    fi
done
echo "test_sigkill: $killed kills, $mid_save of them during a save (a temporary folder left), $resumed starts" \
    "resumed, the last checkpoint $(cat "$ck/latest" 2>/dev/null)"
check "at least 20 kills hit a running run ($killed)" test "$killed" -ge $((kills < 20 ? kills : 20))
check "some starts resumed from a checkpoint ($resumed)" test "$resumed" -gt 0

"$bin" "${base[@]}" --set "run.dir=$run" --set checkpoint.every_steps=100 >"$work/last.out" 2>&1
check "the last start runs to the end ($(tail -1 "$work/last.out"))" test $? -eq 0
check "the last start resumed" grep -q "resuming from" "$work/last.out"
check "final weights byte-identical to the uninterrupted run" \
    cmp -s "$run/final/model.safetensors" "$work/straight/final/model.safetensors"

echo "test_sigkill: $checks checks, $failed failed"
[ "$failed" -eq 0 ]
