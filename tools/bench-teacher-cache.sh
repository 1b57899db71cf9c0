#!/usr/bin/env bash
# The cached teacher against the live one, in one run on one machine: training step time (mean
# tok/s of the steps after the first two, rounds alternating live and cached so drift hits both)
# and the cache's disk bytes per token at k = 16 and 64, on configs/bench_cpu_small.json's shapes
# (8-layer 512-wide teacher and MLA student, vocab 8192, seq 512; 2 sequences a step, one thread, so
# a shared machine's load disturbs it less) over byte-tokenized docs;
# with --real, also on SmolLM2-135M (teacher.path REAL_HF, a few windows of REAL_DATA at k = 64).
# usage: tools/bench-teacher-cache.sh BUILD_DIR [--real REAL_HF REAL_DATA [--python PY]] [--steps N] [--rounds R]
# (--python: a Python with h5py, to cut the first windows out of REAL_DATA; default python3)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$(cd "$1" && pwd)/mlatrain"
shift
real_hf="" real_data="" python=python3 steps=6 rounds=2
while [ $# -gt 0 ]; do
    case "$1" in
    --real) real_hf="$2" real_data="$3"; shift 3 ;;
    --python) python="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Mean tok/s of a run's steps after the first two (metrics.jsonl).
mean_tok_s() {
    grep '"tok_s"' "$1/metrics.jsonl" | sed -E 's/.*"tok_s": ([0-9.e+]+).*/\1/' |
        awk 'NR > 2 {s += $1; n++} END {printf "%.1f", n ? s / n : 0}'
}
manifest() { sed -nE "s/.*\"$2\":[[:space:]]*([0-9]+).*/\\1/p" "$1/manifest.json"; }
disk_bytes() { du -cb "$1"/manifest.json "$1"/shard-*.h5 | tail -1 | cut -f1; }

# Times `--config $cfg` with the given --set options, live and cached at each k (the caches in
# $work/$tag-cache-k<k>), alternating.
compare() {
    local tag="$1" name="$2" cfg="$3" T="$4"
    shift 4
    local -a common=("$@")
    local -a kinds=(live "${ks[@]/#/k}")
    declare -A sum=()
    for kind in "${kinds[@]}"; do sum[$kind]=0; done
    for ((r = 1; r <= rounds; r++)); do
        for kind in "${kinds[@]}"; do
            local -a extra=()
            [ "$kind" != live ] && extra=(--set "teacher.cache=$work/$tag-cache-$kind")
            "$bin" --config "$cfg" "${common[@]}" --set "run.dir=$work/$tag-run-$kind-$r" \
                --set "train.max_steps=$steps" --set log.every_steps=1 --set eval.every_steps=0 \
                --set checkpoint.every_steps=0 "${extra[@]}" >"$work/$tag-$kind-$r.out" 2>&1 ||
                { tail -3 "$work/$tag-$kind-$r.out"; exit 1; }
            sum[$kind]=$(awk -v a="${sum[$kind]}" -v b="$(mean_tok_s "$work/$tag-run-$kind-$r")" 'BEGIN {print a + b}')
        done
    done
    local live
    live=$(awk -v s="${sum[live]}" -v r="$rounds" 'BEGIN {printf "%.1f", s / r}')
    printf '%-28s %10s %10s %9s %14s %14s\n' "$name" "tok/s" "step_s" "vs live" "bytes/token" "stored/token"
    for kind in "${kinds[@]}"; do
        local tok bpt="-" stored="-"
        tok=$(awk -v s="${sum[$kind]}" -v r="$rounds" 'BEGIN {printf "%.1f", s / r}')
        if [ "$kind" != live ]; then
            local dir="$work/$tag-cache-$kind" tokens
            tokens=$(($(manifest "$dir" windows) * T))
            bpt=$(awk -v b="$(disk_bytes "$dir")" -v t="$tokens" 'BEGIN {printf "%.1f", b / t}')
            stored=$(manifest "$dir" bytes_per_token)
        fi
        printf '%-28s %10s %10.3f %8.2fx %14s %14s\n' "  $kind" "$tok" \
            "$(awk -v t="$tok" -v n="$B_T" 'BEGIN {print n / t}')" "$(awk -v a="$tok" -v b="$live" 'BEGIN {print a / b}')" \
            "$bpt" "$stored"
    done
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"

# ---- bench_cpu_small's shapes ----
# About 18,000 byte tokens: 35 windows, more than the steps read (2 a step).
"$bin" data text "$root/README.md" "$root/docs/eval.md" --out "$work/docs.h5" >/dev/null
small=(--set "data.train=$work/docs.h5" --set run.threads=1 --set train.micro_batch=2 --set train.global_batch=2)
ks=(16 64)
for k in "${ks[@]}"; do
    "$bin" teacher-cache --config "$root/configs/bench_cpu_small.json" "${small[@]}" --out "$work/small-cache-k$k" \
        --top-k "$k" >"$work/cache-k$k.out"
    grep -E '^shard|complete' "$work/cache-k$k.out" | sed 's/^/  /'
done
B_T=$((2 * 512))
compare small bench_cpu_small "$root/configs/bench_cpu_small.json" 512 "${small[@]}"

# ---- SmolLM2-135M as teacher (and as a GQA student, so the step is the teacher's saving alone) ----
if [ -n "$real_hf" ]; then
    windows=6 seq=512
    # The first windows of the real data as a token file of their own.
    "$python" - "$real_data" "$work/real.jsonl" $((windows * (seq + 1))) <<'EOF' ||
import sys, json, h5py
with h5py.File(sys.argv[1], "r") as f:
    ids = f["tokens"][: int(sys.argv[3])].tolist()
open(sys.argv[2], "w").write(json.dumps(ids) + "\n")
EOF
        { echo "cannot slice $real_data (--python needs h5py)" >&2; exit 1; }
    "$bin" data jsonl "$work/real.jsonl" --out "$work/real.h5" --vocab-size 49152 --eos-id 2 >/dev/null
    cat >"$work/real.json" <<EOF
{"run": {"dir": "unused", "seed": 1}, "teacher": {"path": "$real_hf"},
 "student": {"init_from": "$real_hf"},
 "data": {"train": ["$work/real.h5"], "seq_len": $seq},
 "optim": {"lr": 1e-5, "warmup_steps": 0, "schedule": "constant"},
 "train": {"micro_batch": 1, "global_batch": 1}}
EOF
    ks=(64)
    "$bin" teacher-cache --config "$work/real.json" --out "$work/real-cache-k64" --top-k 64 >"$work/real-cache.out"
    grep -E '^shard|complete' "$work/real-cache.out" | sed 's/^/  /'
    B_T=$seq
    steps=4 rounds=1
    compare real "SmolLM2-135M, GQA student" "$work/real.json" "$seq"
fi
