#!/usr/bin/env bash
# The decode benchmark (not a test): a GQA teacher against an MLA student converted from it, at
# growing context lengths, one after the other at each length so that both meet the same machine
# load. For each: prefill tok/s over the prompt, decode tok/s over the new tokens, and the KV cache's
# bytes as `mlatrain generate --json` measures them; then a check that the student's cache bytes are
# the teacher's times (r + dr) / (2 K hd) exactly.
#
# usage: tools/decode-bench.sh TEACHER STUDENT [--contexts LIST] [--new N] [--threads N] [--device D]
#   TEACHER: an HF Llama/Qwen2/Mistral folder; STUDENT: an all-MLA student `mlatrain convert` made
#   from it (e.g. tools/quality-bench.sh's DIR/quality-bench/rorope-6x). Defaults: contexts
#   512,1024,2048,4096,8192, 16 new tokens, the backend's default threads, cpu. At context C the
#   prompt is C - N tokens, so the N decode steps end at position C - 1.
# Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: tools/decode-bench.sh TEACHER STUDENT [--contexts LIST] [--new N] [--threads N] [--device D]"
teacher=${1:?$usage}
student=${2:?$usage}
shift 2
contexts="512,1024,2048,4096,8192"
new=16
threads=0
device=cpu
while [ $# -gt 0 ]; do
  case "$1" in
    --contexts) contexts=$2; shift 2 ;;
    --new) new=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    *) echo "decode-bench: unknown option $1" >&2; exit 2 ;;
  esac
done
mlatrain=${MLATRAIN:-build/mlatrain}
for f in "$teacher/config.json" "$student/config.json" "$mlatrain"; do
  [ -e "$f" ] || { echo "decode-bench: $f is missing ($usage)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The expected ratio from the two configs: (r + dr) / (2 K hd), as a reduced fraction.
read -r num den vocab < <(python3 - "$teacher/config.json" "$student/config.json" <<'PY'
import json, math, sys
t, s = (json.load(open(p)) for p in sys.argv[1:3])
hd = t.get("head_dim", t["hidden_size"] // t["num_attention_heads"])
num, den = s["kv_lora_rank"] + s["qk_rope_head_dim"], 2 * t["num_key_value_heads"] * hd
g = math.gcd(num, den)
print(num // g, den // g, min(t["vocab_size"], s["vocab_size"]))
PY
)

echo "device $device, threads $threads (0 = default), $new new tokens per context; expected cache ratio $num/$den"
echo
echo "| context | model | prefill tok/s | decode tok/s | KV cache bytes | bytes/token | student/teacher decode | cache ratio |"
echo "|---|---|---|---|---|---|---|---|"
status=0
IFS=, read -ra ctxs <<<"$contexts"
for ctx in "${ctxs[@]}"; do
  n_prompt=$((ctx - new))
  # A fixed pseudo-random prompt (decode time does not depend on which tokens; --ignore-eos keeps N steps).
  ids=$(python3 -c "import random,sys; r=random.Random(ctx:=int(sys.argv[1])); print(','.join(str(r.randrange(int(sys.argv[2]))) for _ in range(int(sys.argv[3]))))" "$ctx" "$vocab" "$n_prompt")
  for who in teacher student; do
    dir=$teacher
    [ "$who" = student ] && dir=$student
    "$mlatrain" generate --model "$dir" --prompt-ids "$ids" --max-new-tokens "$new" --ignore-eos --greedy --json \
      --threads "$threads" --device "$device" >"$work/$who.json"
  done
  python3 - "$work/teacher.json" "$work/student.json" "$ctx" "$num" "$den" <<'PY' || status=1
import json, sys
t, s = (json.load(open(p)) for p in sys.argv[1:3])
ctx, num, den = (int(x) for x in sys.argv[3:6])
exact = s["kv_cache"]["bytes_filled"] * den == t["kv_cache"]["bytes_filled"] * num
ratio = s["kv_cache"]["bytes_filled"] / t["kv_cache"]["bytes_filled"]
for name, r in (("teacher", t), ("student", s)):
    kv = r["kv_cache"]
    extra = "" if name == "teacher" else " %.2fx | %.4f (%s) |" % (
        s["decode_tok_s"] / t["decode_tok_s"], ratio, "exact" if exact else "NOT %d/%d" % (num, den))
    print("| %d | %s | %.1f | %.2f | %d | %d |%s" % (ctx, name, r["prefill_tok_s"], r["decode_tok_s"],
          kv["bytes_filled"], kv["bytes_per_token"], extra if extra else " | |"))
sys.exit(0 if exact else 1)
PY
done
exit $status
