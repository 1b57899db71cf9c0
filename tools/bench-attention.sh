#!/usr/bin/env bash
# Causal attention, forward and backward, mlatrain's kernels beside PyTorch's
# scaled_dot_product_attention at the shapes a distillation step runs (bf16 on cuda): bench_1b's MLA
# student (q/k 64 + 32 shared, v 64, 32 heads), its GQA teacher (32 heads over 8, 64) and
# bench_8b_1b's teacher (32 over 8, 128), B = 4, T = 2048. Each shape runs ours, then PyTorch's, one
# after the other; prints a Markdown table (times, TFLOP/s in FlashAttention's count, ours over
# PyTorch's speed) and keeps the JSON lines.
#
# usage: tools/bench-attention.sh [--device cuda|cpu] [--tokens T] [--batch B] [--out FILE.jsonl]
#   (cpu: a smoke run; float32 there). BUILD_DIR (default build), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
device=cuda tokens=2048 batch=4 out=""
while [ $# -gt 0 ]; do
    case "$1" in
    --device) device=$2; shift 2 ;;
    --tokens) tokens=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "bench-attention: unknown option $1" >&2; exit 2 ;;
    esac
done
bench=${BUILD_DIR:-build}/bench_attention
python=${PYTHON:-python3}
[ -x "$bench" ] || { echo "bench-attention: $bench is missing (build the bench_attention target)" >&2; exit 1; }
dtype=()
[ "$device" = cuda ] && dtype=(--bf16)
results=${out:-$(mktemp)}
: >"$results"
shapes=(
    "1b student (MLA)|--heads 32 --kv-heads 32 --dk 64 --ds 32 --dv 64"
    "1b teacher (GQA)|--heads 32 --kv-heads 8 --dk 64 --ds 0 --dv 64"
    "8b teacher (GQA)|--heads 32 --kv-heads 8 --dk 128 --ds 0 --dv 128"
)
status=0
for shape in "${shapes[@]}"; do
    label=${shape%%|*}
    read -ra args <<<"${shape#*|}"
    common=(--device "$device" --batch "$batch" --tokens "$tokens" "${args[@]}" "${dtype[@]}" --label "$label")
    "$bench" "${common[@]}" >>"$results" || status=1
    "$python" tools/bench_attention_torch.py "${common[@]}" >>"$results" || status=1
done
"$python" - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print("| shape | pass | mlatrain ms | TFLOP/s | PyTorch SDPA ms | TFLOP/s | mlatrain / PyTorch speed |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    if not r["impl"].startswith("mlatrain"):
        continue
    base = [b for b in rows if b["impl"].startswith("torch") and b["label"] == r["label"] and b["pass"] == r["pass"]]
    b = base[0] if base else None
    print("| %s | %s | %.3f | %.1f | %s | %s | %s |" % (
        r["label"], r["pass"], r["ms"], r["tflops"], "%.3f" % b["ms"] if b else "-", "%.1f" % b["tflops"] if b else "-",
        "%.2fx" % (b["ms"] / r["ms"]) if b else "-"))
PY
[ -n "$out" ] || rm -f "$results"
exit $status
