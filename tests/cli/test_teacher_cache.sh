#!/usr/bin/env bash
# The cached teacher end to end: a teacher-cache run killed with SIGKILL continues to files
# byte-identical to an uninterrupted run's; training from a cache at k = vocab follows the live
# teacher's losses step by step within 1e-3; a cached run resumed from a checkpoint ends with the
# weights of an uninterrupted one; a cache of other settings or an incomplete one is refused by name.
set -u
bin="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$(mktemp -d)"
pid=
trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$work"' EXIT
. "$(dirname "$0")/harness.sh"

"$bin" data text "$root/README.md" "$root/docs/"*.md --docs paragraph --out "$work/train.h5" \
    --val-out "$work/val.h5" --val-fraction 0.2 --seed 1 >/dev/null
base=(--config "$here/tiny_distill.json" --set "data.train=$work/train.h5" --set "data.val=$work/val.h5"
      --set log.every_steps=1 --set eval.every_steps=0 --set loss.temperature=2)

# ---- teacher-cache: an uninterrupted run, then one killed twice and continued ----
"$bin" teacher-cache "${base[@]}" --out "$work/straight" --top-k 257 --shard-windows 8 >"$work/straight.out" 2>&1
check "the uninterrupted teacher-cache run exits 0 ($(tail -1 "$work/straight.out"))" test $? -eq 0
shards=$(ls "$work/straight" | grep -c '^shard-.*\.h5$')
check "it wrote several shards ($shards)" test "$shards" -gt 4

# Waits until folder $1 holds $2 shards.
wait_for_shards() {
    local i
    for ((i = 0; i < 20000; i++)); do
        [ "$(ls "$1" 2>/dev/null | grep -c '^shard-.*\.h5$')" -ge "$2" ] && return 0
        sleep 0.001
    done
    return 1
}
interrupted=0
for kill_at in 2 $((shards / 2)); do
    "$bin" teacher-cache "${base[@]}" --out "$work/resumed" --top-k 257 --shard-windows 8 \
        >"$work/resumed.$kill_at.out" 2>&1 &
    pid=$!
    wait_for_shards "$work/resumed" "$kill_at"
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    [ $? -eq 137 ] && interrupted=$((interrupted + 1))
    pid=
done
have=$(ls "$work/resumed" | grep -c '^shard-.*\.h5$')
echo "test_teacher_cache: $interrupted of 2 runs killed before their end; $have of $shards shards written"
check "a kill left the cache incomplete ($have of $shards shards)" test "$have" -lt "$shards"
expect_error "training on an incomplete cache" "$bin" "${base[@]}" --set "run.dir=$work/incomplete" \
    --set "teacher.cache=$work/resumed" -- "is missing" "incomplete"
"$bin" teacher-cache "${base[@]}" --out "$work/resumed" --top-k 257 --shard-windows 8 >"$work/resumed.out" 2>&1
check "the continued run exits 0 ($(tail -1 "$work/resumed.out"))" test $? -eq 0
check "the continued run kept the shards already written" grep -q "($have already written)" "$work/resumed.out"
check "no temporary file is left" test -z "$(ls "$work/resumed" | grep tmp)"
same=1
for f in "$work/straight/"*; do
    cmp -s "$f" "$work/resumed/$(basename "$f")" || { same=0; echo "differs: $(basename "$f")" >&2; }
done
check "the continued cache is byte-identical to the uninterrupted one" test "$same" -eq 1
check "both hold the same files" test "$(ls "$work/straight")" = "$(ls "$work/resumed")"

expect_error "continuing a cache with another top-k" "$bin" teacher-cache "${base[@]}" --out "$work/straight" \
    --top-k 16 --shard-windows 8 -- "top_k 257" "16"
expect_error "continuing a cache at another temperature" "$bin" teacher-cache "${base[@]}" --out "$work/straight" \
    --set loss.temperature=1 --top-k 257 --shard-windows 8 -- "loss.temperature 2" "is 1"

expect_error "top-k above the vocabulary" "$bin" teacher-cache "${base[@]}" --out "$work/big" --top-k 300 \
    -- "--top-k 300" "vocab_size 257"
expect_error "no output folder" "$bin" teacher-cache "${base[@]}" -- "--out DIR is required"
expect_error "no teacher" "$bin" teacher-cache "${base[@]}" --set teacher=null --out "$work/none" -- "teacher: required"
expect_error "a folder of other files" "$bin" teacher-cache "${base[@]}" --out "$work" -- "$work" "not a teacher cache"
check "refused runs leave no folder behind" test ! -e "$work/big" -a ! -e "$work/none"

# ---- training from the cache at k = vocab against the live teacher ----
"$bin" "${base[@]}" --set "run.dir=$work/live" >"$work/live.out" 2>&1
check "the live-teacher run exits 0" test $? -eq 0
"$bin" "${base[@]}" --set "run.dir=$work/cached" --set "teacher.cache=$work/straight" >"$work/cached.out" 2>&1
check "the cached-teacher run exits 0 ($(tail -1 "$work/cached.out"))" test $? -eq 0
field() { # metrics file, key: the key's value on each step line
    grep '"lr"' "$1" | sed -E "s/.*\"$2\": ([-0-9.e+]+).*/\\1/"
}
steps=$(field "$work/live/metrics.jsonl" loss | wc -l)
check "the live run logged 12 steps ($steps)" test "$steps" -eq 12
worst=$(paste <(field "$work/live/metrics.jsonl" loss) <(field "$work/cached/metrics.jsonl" loss) |
    awk 'BEGIN {w = -1} NF == 2 {d = $1 - $2; if (d < 0) d = -d; if (d > w) w = d} END {print w}')
kl_worst=$(paste <(field "$work/live/metrics.jsonl" kl) <(field "$work/cached/metrics.jsonl" kl) |
    awk 'BEGIN {w = -1} NF == 2 {d = $1 - $2; if (d < 0) d = -d; if (d > w) w = d} END {print w}')
echo "test_teacher_cache: k = vocab, f16 log-probs, T = 2: largest step loss difference $worst, kl $kl_worst"
check "cached losses within 1e-3 of the live teacher's at every step ($worst)" \
    awk -v w="$worst" 'BEGIN {exit !(w >= 0 && w < 1e-3)}'
check "the KL is learned from the cache too (it rises from ~0)" \
    awk -v k="$(field "$work/cached/metrics.jsonl" kl | tail -1)" 'BEGIN {exit !(k > 1e-3)}'

# ---- resume of a cached run ----
fixed=(--set optim.schedule=constant --set optim.warmup_steps=0 --set checkpoint.every_steps=3)
"$bin" "${base[@]}" "${fixed[@]}" --set "run.dir=$work/c_straight" --set "teacher.cache=$work/straight" \
    >/dev/null 2>&1
check "the uninterrupted cached run exits 0" test $? -eq 0
"$bin" "${base[@]}" "${fixed[@]}" --set "run.dir=$work/c_resumed" --set "teacher.cache=$work/straight" \
    --set train.max_steps=7 >/dev/null 2>&1
"$bin" "${base[@]}" "${fixed[@]}" --set "run.dir=$work/c_resumed" --set "teacher.cache=$work/straight" \
    >"$work/c_resumed.out" 2>&1
check "the second start resumes ($(tail -1 "$work/c_resumed.out"))" grep -q "resuming from" "$work/c_resumed.out"
check "resumed cached run: final weights byte-identical to the uninterrupted run" \
    cmp -s "$work/c_resumed/final/model.safetensors" "$work/c_straight/final/model.safetensors"
expect_error "resuming a cached run with the live teacher" "$bin" "${base[@]}" "${fixed[@]}" \
    --set "run.dir=$work/c_resumed" --set train.max_steps=20 -- "teacher.cache" "cannot resume"

# ---- a cache that does not match the run ----
expect_error "another temperature" "$bin" "${base[@]}" --set "run.dir=$work/x1" --set loss.temperature=1 \
    --set "teacher.cache=$work/straight" -- "loss.temperature 2" "loss.temperature is 1"
expect_error "another seq_len" "$bin" "${base[@]}" --set "run.dir=$work/x2" --set data.seq_len=64 \
    --set "teacher.cache=$work/straight" -- "data.seq_len 96" "data.seq_len is 64"
expect_error "another teacher" "$bin" "${base[@]}" --set "run.dir=$work/x3" --set teacher.seed=6 \
    --set "teacher.cache=$work/straight" -- "another teacher"
expect_error "other tokens" "$bin" "${base[@]}" --set "run.dir=$work/x4" --set "data.train=$work/val.h5" \
    --set "teacher.cache=$work/straight" -- "other tokens"
expect_error "not a cache" "$bin" "${base[@]}" --set "run.dir=$work/x5" --set "teacher.cache=$work" \
    -- "teacher.cache" "not a teacher cache"

echo "test_teacher_cache: $checks checks, $failed failed"
[ "$failed" -eq 0 ]
