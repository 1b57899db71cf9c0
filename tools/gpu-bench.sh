#!/usr/bin/env bash
# Everything a GPU machine is needed for, in one command sized to finish inside 10 minutes:
#   build, tests, sanitizer  tools/gpu-check.sh: build for sm_90a, ctest -L gpu, compute-sanitizer
#                            memcheck and racecheck on tests/test_gpu_ops
#   bench                    `mlatrain bench` and PyTorch's torch_distill.py side by side: ours on
#                            configs/bench_1b.json, torch 1b eager and compiled, ours on bench_1b
#                            with train.recompute = "mlp", ours on
#                            configs/bench_8b_1b.json, torch 8b (all B = 4, T = 2048); ours also with
#                            --op-times: the GPU time of every op, the "where the time goes" table
#   probe                    the largest batch (of PROBE_BATCHES) that fits at T = 2048, ours and torch;
#                            ours again with train.recompute = "layers" from the first batch that fails
#   ablation                 (not in the default list) ours on bench_1b one change undone at a time:
#                            attention on the float32-math tiles instead of the tensor cores
# then a table of tok/s, TFLOP/s, MFU (against the bf16 matrix-product peak mlatrain's bench
# measures), peak memory and the ratios the performance targets are stated in (docs/performance.md).
#
# Every stage runs under `timeout`; a stage that no longer fits in BUDGET_S is skipped and listed as
# such, so a later run with STAGES=build,bench,probe (the build is incremental when BUILD_DIR is
# still there) finishes the rest. Exit status 0 when every stage that ran passed (an out-of-memory
# result of the probe or of PyTorch is a result, not a failure).
#
# Environment (all optional; tools/gpu-check.sh's variables pass through):
#   STAGES          build, tests, sanitizer, bench, probe (default all), comma- or space-separated
#   BUDGET_S        seconds for the whole run (default 560)
#   BUILD_DIR       build folder (default build-gpu)
#   LOG_DIR         logs, results.jsonl and table.txt, at most 7 files (default BUILD_DIR/bench-logs)
#   TORCH_BENCH     the PyTorch baseline; default .gpu-carry/bench/torch_distill.py (tools/gpu-prepare.sh),
#                   else tools/bench/ in this checkout (it travels with the working tree), else
#                   ../shared/bench/ beside it
#   PYTHON          a python with torch and CUDA (default python3)
#   PROBE_TEACHER   1b or 8b: the pair the probe runs (default 1b)
#   PROBE_BATCHES   batch sizes the probe tries, ascending (default "8 16")
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
start=$(date +%s)
deadline=$((start + ${BUDGET_S:-560}))
stages=${STAGES:-build,tests,sanitizer,bench,probe}
for s in ${stages//,/ }; do
    case "$s" in build | tests | sanitizer | bench | probe | ablation) ;;
    *) echo "gpu-bench: STAGES: unknown stage '$s' (build, tests, sanitizer, bench, probe, ablation)" >&2; exit 2 ;;
    esac
done
want() { [[ ",${stages// /,}," == *",$1,"* ]]; }

export BUILD_DIR=${BUILD_DIR:-build-gpu}
mkdir -p "$BUILD_DIR" || exit 1
build=$(cd "$BUILD_DIR" && pwd)
logs=${LOG_DIR:-$build/bench-logs}
mkdir -p "$logs" || exit 1
results="$logs/results.jsonl"
: >"$results"
python=${PYTHON:-python3}
failed=0

# Appends one run's record: its name, status, seconds, and the JSON lines it printed (bench figures
# and, for PyTorch, the memory figures its own line leaves out), or null.
record() {
    local name=$1 status=$2 seconds=$3 log=${4:-} result=null extra=null ops=null
    if [ -n "$log" ] && [ -f "$log" ]; then
        result=$(grep -E '^\{.*"tok_s"' "$log" | tail -n 1)
        extra=$(grep -E '^\{.*"(max_reserved_gb|oom)"' "$log" | tail -n 1)
        ops=$(grep -E '^\{.*"op_times"' "$log" | tail -n 1)
        [ -n "$result" ] || result=null
        [ -n "$extra" ] || extra=null
        [ -n "$ops" ] || ops=null
    fi
    printf '{"run": "%s", "status": "%s", "seconds": %s, "result": %s, "extra": %s, "ops": %s}\n' \
        "$name" "$status" "$seconds" "$result" "$extra" "$ops" >>"$results"
}

# run NAME CAP_SECONDS LOG COMMAND...: runs COMMAND under timeout (CAP, or what is left of the budget
# less a reserve for the table), appending its output to LOG, and records it. Returns 0 when it
# passed, 1 when it failed or ran out of time, 2 when it was skipped (a run that would get under
# 30 s is), 3 when it ran out of device memory.
run() {
    local name=$1 cap=$2 log=$3 left t0 rc status
    shift 3
    left=$((deadline - $(date +%s) - 15))
    [ "$left" -lt "$cap" ] && cap=$left
    if [ "$cap" -lt 30 ]; then
        echo "== $name: skipped, ${left} s of the budget left"
        record "$name" "skipped (time)" 0
        return 2
    fi
    echo "== $name (at most $cap s)"
    local one="$build/last-run.log"
    t0=$(date +%s)
    timeout "$cap" "$@" >"$one" 2>&1
    rc=$?
    { echo "== $name: $*"; cat "$one"; } >>"$log"
    local ret=1
    if [ $rc -eq 0 ]; then status=ok ret=0
    elif [ $rc -eq 124 ]; then status="timeout (${cap} s)"
    elif [[ "$name" != check* ]] && grep -qiE 'out of memory|"oom": true' "$one"; then status=oom ret=3
    else status="failed (exit $rc)"
    fi
    grep -E '^\{' "$one" | tail -n 2
    [ $rc -ne 0 ] && tail -n 3 "$one" | grep -v '^{' | sed 's/^/   /'
    record "$name" "$status" "$(($(date +%s) - t0))" "$one"
    return $ret
}

echo "== the device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || {
    echo "gpu-bench: nvidia-smi finds no GPU" >&2
    exit 1
}

check_stages=""
for s in build tests sanitizer; do want "$s" && check_stages+="${check_stages:+,}$s"; done
if [ -n "$check_stages" ]; then
    export BUILD_TIMEOUT=${BUILD_TIMEOUT:-240} TESTS_TIMEOUT=${TESTS_TIMEOUT:-120} SANITIZER_TIMEOUT=${SANITIZER_TIMEOUT:-90}
    # gpu-check.sh's names: the dependencies go with the build, the sanitizer is memcheck and racecheck.
    gpu_check_stages=$(echo "$check_stages" | sed -e 's/build/deps,build/' -e 's/sanitizer/memcheck,racecheck/')
    run "check ($check_stages)" $((BUILD_TIMEOUT + TESTS_TIMEOUT + 2 * SANITIZER_TIMEOUT)) "$logs/check.log" \
        env STAGES="env,$gpu_check_stages" BUDGET_S=$((BUILD_TIMEOUT + TESTS_TIMEOUT + 2 * SANITIZER_TIMEOUT)) \
        OUT_DIR="$logs" tools/gpu-check.sh || failed=1
    grep -E "^(== |[a-z]+ +(ok|FAILED|skipped))" "$build/last-run.log"
fi
# The library path the build found its libraries on, for mlatrain only: PyTorch keeps the
# environment it came with.
# shellcheck disable=SC1091
mlatrain_path=$([ -f "$build/gpu-env.sh" ] && . "$build/gpu-env.sh"; printf '%s' "${LD_LIBRARY_PATH:-}")
mlatrain=(env "LD_LIBRARY_PATH=$mlatrain_path" "$build/mlatrain")

torch_bench=${TORCH_BENCH:-}
for candidate in .gpu-carry/bench/torch_distill.py tools/bench/torch_distill.py ../shared/bench/torch_distill.py; do
    [ -z "$torch_bench" ] && [ -f "$candidate" ] && torch_bench=$candidate
done
torch_ok=1
if ! want bench && ! want probe; then
    torch_ok=0
elif [ -z "$torch_bench" ] || [ ! -f "$torch_bench" ]; then
    echo "gpu-bench: no torch_distill.py (TORCH_BENCH, tools/bench/ or ../shared/bench/): PyTorch runs skipped"
    torch_ok=0
elif ! "$python" -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    echo "gpu-bench: $python has no torch with CUDA: PyTorch runs skipped"
    torch_ok=0
fi
# The baseline as its own __main__, then the memory figures its line leaves out: the caching
# allocator's reserved high-water mark and the device's used bytes. An out-of-memory error becomes
# a JSON line (exit 3), since a baseline that does not fit is a result.
cat >"$build/torch_run.py" <<'EOF'
import json, runpy, sys
import torch
path = sys.argv[1]
sys.argv = [path] + sys.argv[2:]
try:
    runpy.run_path(path, run_name='__main__')
except Exception as e:  # torch.OutOfMemoryError, also when raised through torch.compile
    if 'out of memory' not in str(e).lower():
        raise
    print(json.dumps({"oom": True, "max_allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2)}), flush=True)
    sys.exit(3)
free, total = torch.cuda.mem_get_info()
print(json.dumps({"max_reserved_gb": round(torch.cuda.max_memory_reserved() / 1e9, 2),
                  "device_used_gb": round((total - free) / 1e9, 2)}), flush=True)
EOF
torch() {
    if [ $torch_ok -eq 0 ]; then
        record "$1" "skipped (no PyTorch baseline)" 0
        return 2
    fi
    local name=$1 cap=$2 log=$3
    shift 3
    PYTHONUNBUFFERED=1 run "$name" "$cap" "$log" "$python" "$build/torch_run.py" "$torch_bench" "$@"
}

if (want bench || want probe || want ablation) && ! "${mlatrain[@]}" bench --help >/dev/null 2>&1; then
    echo "gpu-bench: $build/mlatrain is not built or does not start (add build to STAGES): benchmarks skipped" >&2
    for s in bench probe ablation; do want $s && record "$s" "skipped (no mlatrain)" 0; done
    stages=${stages//bench/}
    stages=${stages//probe/}
    stages=${stages//ablation/}
    failed=1
fi
if want bench; then
    # Ours failing in any way is a failure; PyTorch running out of memory is a result.
    run "ours 1b" 150 "$logs/bench.log" "${mlatrain[@]}" bench --config configs/bench_1b.json --op-times
    case $? in 1 | 3) failed=1 ;; esac
    torch "torch 1b eager" 120 "$logs/bench.log" 1b 4
    [ $? -ne 1 ] || failed=1
    torch "torch 1b compile" 240 "$logs/bench.log" 1b 4 compile
    [ $? -ne 1 ] || failed=1
    # The memory side of the trade: the same step with the MLP's gate and up recomputed.
    run "ours 1b recompute mlp" 150 "$logs/bench.log" "${mlatrain[@]}" bench --config configs/bench_1b.json \
        --set train.recompute=mlp
    case $? in 1 | 3) failed=1 ;; esac
    run "ours 8b->1b" 200 "$logs/bench.log" "${mlatrain[@]}" bench --config configs/bench_8b_1b.json --op-times
    case $? in 1 | 3) failed=1 ;; esac
    torch "torch 8b->1b eager" 150 "$logs/bench.log" 8b 4
    [ $? -ne 1 ] || failed=1
fi

if want probe; then
    teacher=${PROBE_TEACHER:-1b}
    config=configs/bench_1b.json
    [ "$teacher" = 8b ] && config=configs/bench_8b_1b.json
    ours_fits=1 torch_fits=1 recompute_fits=1
    for b in ${PROBE_BATCHES:-8 16}; do
        if [ $ours_fits -eq 1 ]; then
            run "probe ours $teacher B=$b" 150 "$logs/probe.log" "${mlatrain[@]}" bench --config "$config" --steps 2 \
                --set train.micro_batch="$b" --set train.global_batch="$b" || ours_fits=0
        fi
        # Where keeping every activation no longer fits: the same batch with per-layer recomputation.
        if [ $ours_fits -eq 0 ] && [ $recompute_fits -eq 1 ]; then
            run "probe recompute $teacher B=$b" 150 "$logs/probe.log" "${mlatrain[@]}" bench --config "$config" \
                --steps 2 --set train.micro_batch="$b" --set train.global_batch="$b" --set train.recompute=layers ||
                recompute_fits=0
        fi
        if [ $torch_fits -eq 1 ]; then
            torch "probe torch $teacher B=$b" 150 "$logs/probe.log" "$teacher" "$b" || torch_fits=0
        fi
    done
fi

if want ablation; then
    run "ours 1b, attention tiles" 200 "$logs/ablation.log" env MLATRAIN_CUDA_ATTENTION=tiles "${mlatrain[@]}" \
        bench --config configs/bench_1b.json --steps 3
    case $? in 1 | 3) failed=1 ;; esac
fi

# The table, and the comparisons the targets are stated in.
"$python" - "$results" <<'EOF' | tee "$logs/table.txt"
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {r["run"]: r for r in runs}
res = lambda name: (by.get(name) or {}).get("result") or {}
peak = next((r["result"]["peak_tflops"] for r in runs if r.get("result") and "peak_tflops" in r["result"]), None)
def cell(v, fmt):
    return format(v, fmt) if isinstance(v, (int, float)) else "-"
print()
print(f"measured bf16 matrix-product peak: {cell(peak, '.1f')} TFLOP/s" + (f" ({res('ours 1b').get('gpu') or res('ours 8b->1b').get('gpu')})" if peak else ""))
print(f"{'run':<24} {'status':<22} {'tok/s':>8} {'TFLOP/s':>8} {'MFU':>6} {'peak GB':>8} {'used GB':>8} {'secs':>5}")
for r in runs:
    x, e = r.get("result") or {}, r.get("extra") or {}
    mfu = x.get("mfu", x["tflops"] / peak if peak and "tflops" in x else None)
    used = x.get("device_used_gb", e.get("device_used_gb"))
    print(f"{r['run']:<24} {r['status']:<22} {cell(x.get('tok_s'), '.0f'):>8} {cell(x.get('tflops'), '.1f'):>8} "
          f"{cell(mfu, '.3f'):>6} {cell(x.get('peak_mem_gb'), '.1f'):>8} {cell(used, '.1f'):>8} {r['seconds']:>5}")
print("(peak GB: ours, the high-water mark of its tensors and scratch over the steps; torch, max_memory_allocated."
      " used GB: cudaMemGetInfo's used bytes after the run, context and workspaces included)")
print()
def ratio(a, b, key):
    va, vb = res(a).get(key), res(b).get(key)
    return va / vb if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and vb else None
checks = [
    ("1b tok/s, ours / torch eager", ratio("ours 1b", "torch 1b eager", "tok_s"), ">=", 1.5),
    ("1b tok/s, ours / torch compile", ratio("ours 1b", "torch 1b compile", "tok_s"), ">=", 1.2),
    ("1b MFU, ours", res("ours 1b").get("mfu"), ">=", 0.55),
    ("1b peak memory, ours / torch eager", ratio("ours 1b", "torch 1b eager", "peak_mem_gb"), "<=", 0.5),
    ("1b peak memory, ours mlp recompute / eager", ratio("ours 1b recompute mlp", "torch 1b eager", "peak_mem_gb"), "<=", 0.5),
    ("1b tok/s, ours mlp recompute / eager", ratio("ours 1b recompute mlp", "torch 1b eager", "tok_s"), ">=", 1.5),
    ("8b->1b tok/s, ours", res("ours 8b->1b").get("tok_s"), ">=", 18000),
    ("8b->1b tok/s, ours / torch eager", ratio("ours 8b->1b", "torch 8b->1b eager", "tok_s"), ">=", None),
    ("8b->1b peak memory, ours / torch", ratio("ours 8b->1b", "torch 8b->1b eager", "peak_mem_gb"), "<=", None),
]
for name, v, op, target in checks:
    verdict = "" if v is None or target is None else ("met" if (v >= target if op == ">=" else v <= target) else "NOT met")
    tgt = f"target {op} {target}" if target is not None else ""
    print(f"{name:<44} {cell(v, '.3f' if isinstance(v, float) and v < 100 else '.0f'):>10}  {tgt:<16} {verdict}")
for r in runs:
    ops = ((r.get("ops") or {}).get("op_times")) or {}
    if ops.get("ops"):
        print()
        print(f"where the time goes, {r['run']} (GPU ms per step over {ops['steps']} profiled steps of {ops['step_ms']:.1f} ms):")
        for o in ops["ops"]:
            print(f"  {o['op']:<26} {o['ms']:>8.2f} ms  {100 * o['share']:5.1f}%  {o['calls']:>6.0f} calls")
        print(f"  {'other (memsets, copies, gaps)':<26} {ops['other_ms']:>8.2f} ms  {100 * ops['other_ms'] / ops['step_ms']:5.1f}%")
probe = [r for r in runs if r["run"].startswith("probe ")]
if probe:
    print()
    for side in ("ours", "recompute", "torch"):
        fits = [int(r["run"].split("B=")[1]) for r in probe if r["run"].startswith(f"probe {side}") and r["status"] == "ok"]
        fails = [(r["run"].split("B=")[1], r["status"]) for r in probe if r["run"].startswith(f"probe {side}") and r["status"] != "ok"]
        print(f"probe {side}: fits at B = {fits or 'none tried above 4'}" + (f"; B = {fails[0][0]}: {fails[0][1]}" if fails else ""))
EOF

echo "gpu-bench: $(($(date +%s) - start)) s; logs in $logs"
exit $failed
