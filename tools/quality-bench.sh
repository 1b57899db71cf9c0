#!/usr/bin/env bash
# The conversion quality benchmark on a real pretrained model (not a test): for each conversion
# method and KV-cache ratio, the student's training-free perplexity on held-out text beside the
# teacher's, the conversion time and peak memory; then optionally one short distillation of the
# 6x student with its perplexity before and after.
#
# usage: tools/quality-bench.sh DIR [--methods LIST] [--ratios LIST] [--distill-tokens N] [--out FILE]
#   DIR holds hf/ (the teacher, an HF Llama/Qwen2/Mistral folder), kjv-train.h5 (calibration and
#   distillation tokens) and kjv-val.h5 (held out), as tools/real-model/get-smollm2.sh DIR makes them
#   (MLATRAIN=build/mlatrain tools/real-model/get-smollm2.sh DIR build/corpus/kjv.txt, after
#   tools/make-corpus.sh). Defaults: every method, ratios 2,4,6,8, no distillation (--distill-tokens
#   300000 runs in about 40 minutes on 2 cores), eval on 8 windows of 512 tokens.
# Prints a Markdown table; each conversion's report.json stays in DIR/quality-bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: tools/quality-bench.sh DIR [--methods LIST] [--ratios LIST] [--distill-tokens N] [--out FILE]}
shift
methods="xecomla,xecomla-nonorm,mha2mla,rorope-weights,rorope-nofit,rorope"
ratios="2,4,6,8"
distill_tokens=0
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --methods) methods=$2; shift 2 ;;
    --ratios) ratios=$2; shift 2 ;;
    --distill-tokens) distill_tokens=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "quality-bench: unknown option $1" >&2; exit 2 ;;
  esac
done
mlatrain=${MLATRAIN:-build/mlatrain}
windows=${WINDOWS:-8}
calib=${CALIB_TOKENS:-16384}
for f in "$dir/hf/config.json" "$dir/kjv-train.h5" "$dir/kjv-val.h5" "$mlatrain"; do
  [ -e "$f" ] || { echo "quality-bench: $f is missing (see the usage at the top of $0)" >&2; exit 1; }
done
work="$dir/quality-bench"
mkdir -p "$work"

# The teacher's KV values per token per layer, 2 K hd, from its config.
kv=$(python3 -c "import json,sys; c=json.load(open(sys.argv[1])); print(2*c['num_key_value_heads']*c.get('head_dim', c['hidden_size']//c['num_attention_heads']))" "$dir/hf/config.json")
hd=$(python3 -c "import json,sys; c=json.load(open(sys.argv[1])); print(c.get('head_dim', c['hidden_size']//c['num_attention_heads']))" "$dir/hf/config.json")

layers=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['num_hidden_layers'])" "$dir/hf/config.json")

# The layers a method keeps as GQA: rorope-gqaN keeps N, chosen by measurement (auto_gqa_layers).
gqa_of() { case "$1" in rorope-gqa*) echo "${1#rorope-gqa}" ;; *) echo 0 ;; esac; }

# r + dr for a ratio (method ratio): dr = 32 down to 4x, 16 beyond; r the rest of the per-layer
# budget, which a hybrid's GQA layers (2 K hd values each) take their share of first, so that every
# method at a ratio caches at most the same bytes.
dims_for() {
  local n dr=32
  n=$(gqa_of "$1")
  local budget=$(( (layers * kv / $2 - n * kv) / (layers - n) ))
  [ "$2" -gt 4 ] && dr=16
  echo "$(( budget - dr )) $dr"
}

# Method -> student.mla settings (besides the ranks). Names say whose method it is. Selections DeepSeek's
# config cannot express export re-based (allow_rebase); the figures are the converted student's own,
# measured before export.
settings_for() {
  case "$1" in
    xecomla)        echo '"init": "svd", "rope_select": "uniform", "latent_basis": "weights", "latent_norm": true, "output_fit": "none"' ;;
    xecomla-nonorm) echo '"init": "svd", "rope_select": "uniform", "latent_basis": "weights", "latent_norm": false, "output_fit": "none"' ;;
    mha2mla)        echo '"init": "svd", "rope_select": "norm", "latent_basis": "weights", "latent_norm": false, "output_fit": "none", "allow_rebase": true' ;;
    rorope-weights) echo '"init": "svd", "rope_select": "rorope", "latent_basis": "weights", "latent_norm": false, "output_fit": "none"' ;;
    rorope-nofit)   echo '"init": "svd", "rope_select": "rorope", "latent_basis": "activations", "latent_norm": false, "output_fit": "none"' ;;
    rorope-teacherfit) echo '"init": "svd", "rope_select": "rorope", "latent_basis": "activations", "latent_norm": false, "output_fit": "teacher_input"' ;;
    rorope)         echo '"init": "svd", "rope_select": "rorope", "latent_basis": "activations", "latent_norm": false, "output_fit": "student_input"' ;;
    rorope-gqa*)    echo '"init": "svd", "rope_select": "rorope", "latent_basis": "activations", "latent_norm": false, "output_fit": "student_input", "auto_gqa_layers": '"$(gqa_of "$1")" ;;
    rorope-free)    echo '"init": "svd", "rope_select": "rorope_free", "latent_basis": "activations", "latent_norm": false, "output_fit": "student_input", "allow_rebase": true' ;;
    *) echo "quality-bench: unknown method $1" >&2; exit 2 ;;
  esac
}

config_for() { # method ratio run_dir
  read -r r dr <<<"$(dims_for "$1" "$2")"
  local steps=$(( distill_tokens > 0 ? (distill_tokens + 4095) / 4096 : 1 ))
  cat <<EOF
{
  "run": {"dir": "$3", "seed": 1234},
  "device": "cpu",
  "teacher": {"path": "$dir/hf"},
  "student": {"init_from": "$dir/hf",
              "mla": {"kv_lora_rank": $r, "qk_rope_head_dim": $dr, "qk_nope_head_dim": $hd, "v_head_dim": $hd,
                      "calibration_tokens": $calib, $(settings_for "$1")}},
  "data": {"train": ["$dir/kjv-train.h5"], "val": ["$dir/kjv-val.h5"], "seq_len": 512},
  "loss": {"kl_weight": 0.5, "ce_weight": 0.5, "temperature": 1.0},
  "optim": {"lr": 2e-4, "min_lr": 2e-5, "warmup_steps": 10, "schedule": "cosine", "weight_decay": 0.0},
  "train": {"micro_batch": 4, "global_batch": 8, "max_steps": $steps},
  "checkpoint": {"every_steps": 20, "keep_last": 1},
  "eval": {"every_steps": $steps, "max_windows": $windows},
  "log": {"every_steps": 5}
}
EOF
}

field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$1" "$2"; }

table="| method | KV ratio (measured) | r + dr (MLA layers) | student ppl | teacher ppl | student / teacher | KL | top-1 | convert s | peak GB (with eval) |
|---|---|---|---|---|---|---|---|---|---|"
echo "$table"
IFS=, read -ra mlist <<<"$methods"
IFS=, read -ra rlist <<<"$ratios"
for m in "${mlist[@]}"; do
  for ratio in "${rlist[@]}"; do
    name="$m-${ratio}x"
    config_for "$m" "$ratio" "$work/runs/$name" > "$work/$name.json"
    rm -rf "$work/$name"
    if /usr/bin/time -f "%e %M" -o "$work/$name.time" "$mlatrain" convert --config "$work/$name.json" --out "$work/$name" \
         > "$work/$name.log" 2>&1; then
      read -r _ kb < "$work/$name.time"
      secs=$(sed -n 's/^converted in \([0-9.]*\) s$/\1/p' "$work/$name.log")
      rep="$work/$name/report.json"
      read -r r dr <<<"$(dims_for "$m" "$ratio")"
      row=$(printf "| %s | %sx (%.2fx) | %s | %.2f | %.2f | %.2f | %.3f | %.3f | %.0f | %.2f |" "$m" "$ratio" \
        "$(field "$rep" "d['kv_bytes_per_token']['ratio']")" "$((r + dr))" \
        "$(field "$rep" "d['training_free']['student_ppl']")" "$(field "$rep" "d['training_free']['source_ppl']")" \
        "$(field "$rep" "d['training_free']['student_ppl']/d['training_free']['source_ppl']")" \
        "$(field "$rep" "d['training_free']['kl']")" "$(field "$rep" "d['training_free']['top1_agree']")" \
        "$secs" "$(echo "$kb" | awk '{print $1/1048576}')")
    else
      row="| $m | ${ratio}x | - | failed: $(tail -1 "$work/$name.log") |"
    fi
    echo "$row"
    table="$table
$row"
  done
done

if [ "$distill_tokens" -gt 0 ]; then
  name="distill-rorope-6x"
  config_for rorope 6 "$work/runs/$name" > "$work/$name.json"
  echo
  echo "distillation of the 6x rorope student: $distill_tokens tokens (run.dir $work/runs/$name, resumes if interrupted)"
  "$mlatrain" --config "$work/$name.json" > "$work/$name.log" 2>&1 || { tail -3 "$work/$name.log"; exit 1; }
  grep -E '"eval"' "$work/runs/$name/metrics.jsonl" | python3 -c "
import json, sys
rows = [json.loads(l) for l in sys.stdin]
first, last = rows[0], rows[-1]
t = first['teacher_eval']['ppl']
print('| student | tokens | ppl | teacher ppl | student / teacher |')
print('|---|---|---|---|---|')
for r in (first, last):
    print('| rorope 6x | %d | %.2f | %.2f | %.2f |' % (r['tokens'], r['eval']['ppl'], t, r['eval']['ppl'] / t))
"
fi
[ -n "$out" ] && echo "$table" > "$out"
exit 0
