#!/usr/bin/env bash
# Data parallelism on the CPU with MPI: 2 ranks x half the batch against 1 rank x the whole batch
# (final weights within float32 reduction rounding), the same with ZeRO-1, a 2-rank checkpoint
# resumed on 1 and on 2 ranks, and every rank's replica identical (the trainer checks that itself).
set -u
bin="$1"
compare="$2"
mpirun="$3"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
. "$(dirname "$0")/../cli/harness.sh"
mpi() { "$mpirun" --allow-run-as-root --oversubscribe -np "$@"; }

"$bin" data text "$here/../../README.md" "$here/../../docs/"*.md --docs paragraph --out "$work/train.h5" \
    --val-out "$work/val.h5" --val-fraction 0.2 --seed 1 >/dev/null
common=(--set "data.train=$work/train.h5" --set "data.val=$work/val.h5" --set run.threads=1)
cfg="$here/data_parallel.json"

"$bin" --config "$cfg" "${common[@]}" --set "run.dir=$work/one" >"$work/one.log" 2>&1
check "1 rank completes" test $? -eq 0
mpi 2 "$bin" --config "$cfg" "${common[@]}" --set "run.dir=$work/two" >"$work/two.log" 2>&1
check "2 ranks complete ($(tail -2 "$work/two.log"))" test $? -eq 0
check "2 ranks x half the batch == 1 rank x the whole batch" "$compare" "$work/one/final" "$work/two/final" 1e-5
mpi 2 "$bin" --config "$cfg" "${common[@]}" --set "run.dir=$work/zero" --set dist.zero1=true >"$work/zero.log" 2>&1
check "2 ranks with ZeRO-1 complete ($(tail -2 "$work/zero.log"))" test $? -eq 0
check "ZeRO-1 gives the weights of the replicated optimizer" "$compare" "$work/two/final" "$work/zero/final" 1e-6
check "a ZeRO-1 checkpoint holds one optimizer file per rank" \
    test -s "$work/zero/checkpoints/step_000000012/optimizer_rank00001.h5"

# A 2-rank ZeRO-1 run stopped at step 6, resumed on 1 rank (replicated moments) and on 2 ranks.
for resume_ranks in 1 2; do
    dir="$work/stop$resume_ranks"
    mpi 2 "$bin" --config "$cfg" "${common[@]}" --set "run.dir=$dir" --set dist.zero1=true \
        --set train.max_steps=6 --set optim.schedule=constant >/dev/null 2>&1
    if [ "$resume_ranks" -eq 1 ]; then
        "$bin" --config "$cfg" "${common[@]}" --set "run.dir=$dir" --set dist.zero1=true \
            --set train.max_steps=12 --set optim.schedule=constant >"$work/resume.log" 2>&1
    else
        mpi 2 "$bin" --config "$cfg" "${common[@]}" --set "run.dir=$dir" --set dist.zero1=true \
            --set train.max_steps=12 --set optim.schedule=constant >"$work/resume.log" 2>&1
    fi
    check "a 2-rank checkpoint resumes on $resume_ranks rank(s) ($(tail -2 "$work/resume.log"))" test $? -eq 0
    check "... from step 6" grep -q "resuming from .*step_000000006" "$work/resume.log"
done
mpi 2 "$bin" --config "$cfg" "${common[@]}" --set "run.dir=$work/straight" --set dist.zero1=true \
    --set train.max_steps=12 --set optim.schedule=constant >/dev/null 2>&1
check "resumed on 2 ranks == straight on 2 ranks (bitwise)" "$compare" "$work/straight/final" "$work/stop2/final" 0
check "resumed on 1 rank == straight on 2 ranks (within reduction rounding)" \
    "$compare" "$work/straight/final" "$work/stop1/final" 1e-5

# A rank killed mid-run ends the whole job, with a message naming the rank, well within the timeout.
dir="$work/killed"
mpi 2 "$bin" --config "$cfg" "${common[@]}" --set "run.dir=$dir" --set train.max_steps=100000 \
    --set checkpoint.every_steps=0 --set dist.timeout_s=20 >"$work/killed.log" 2>&1 &
job=$!
for _ in $(seq 1 200); do
    [ -s "$dir/metrics.jsonl" ] && [ "$(wc -l <"$dir/metrics.jsonl")" -ge 2 ] && break
    sleep 0.1
done
victim=$(pgrep -f "run.dir=$dir" | while read -r p; do [ "$(cat /proc/$p/comm)" = mlatrain ] && echo "$p"; done | tail -1)
start=$(date +%s)
[ -n "$victim" ] && kill -9 "$victim"
wait "$job"
rc=$?
elapsed=$(($(date +%s) - start))
check "killing a rank ends the job non-zero (rc $rc)" test -n "$victim" -a "$rc" -ne 0
check "... within the 20 s timeout (${elapsed} s)" test "$elapsed" -le 20
check "... naming the rank ($(grep -m1 -i "rank" "$work/killed.log"))" grep -qiE "rank [0-9]+.*(killed|signal|died|stuck)" "$work/killed.log"

echo "test_data_parallel: $checks checks, $failed failed"
[ "$failed" -eq 0 ]
