#!/usr/bin/env bash
# Tokenizer throughput, mlatrain's C tokenizer beside HF tokenizers (Rust, through Python), both on
# one thread, on the same text cut the same way, in one run; then checks that both gave the same ids.
# Usage: tools/bench-tokenizer.sh TOKENIZER TEXT [BUILD_DIR]
#   TOKENIZER: a tokenizer.json or a model folder; TEXT: a UTF-8 file (e.g. tools/make-corpus.sh's)
#   BUILD_DIR (default build) holds bench_tokenizer; PYTHON (default python3) must import tokenizers.
# Two ways of cutting: paragraphs (documents split at blank lines, HF's encode_batch with parallelism
# off) and the whole file as one document.
set -euo pipefail
tok="$1"
text="$2"
build="${3:-build}"
python="${PYTHON:-python3}"
[ -d "$tok" ] && tok="$tok/tokenizer.json"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "tokenizer $tok, text $text ($(wc -c <"$text") bytes), $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
for mode in paragraphs whole; do
    flag=""
    [ "$mode" = paragraphs ] && flag=--paragraphs
    echo "== $mode"
    "$build/bench_tokenizer" "$tok" "$text" $flag --ids "$work/c.bin"
    TOKENIZERS_PARALLELISM=false RAYON_NUM_THREADS=1 "$python" - "$tok" "$text" "$mode" "$work/hf.bin" <<'PY'
import array, sys, time
import tokenizers
tk = tokenizers.Tokenizer.from_file(sys.argv[1])
text = open(sys.argv[2], encoding="utf-8", newline="").read()
docs = text.split("\n\n") if sys.argv[3] == "paragraphs" else [text]
best = None
for _ in range(3):
    t = time.perf_counter()
    encs = tk.encode_batch(docs, add_special_tokens=False)
    dt = time.perf_counter() - t
    best = dt if best is None else min(best, dt)
ids = array.array("i", (i for e in encs for i in e.ids))
n = len(ids)
size = len(text.encode("utf-8"))
print("HF tokenizers %s: %d tokens in %d documents, %d bytes, %.3f s (best of 3): %.0f tokens/s, %.1f MB/s"
      % (tokenizers.__version__, n, len(docs), size, best, n / best, size / best / 1e6))
ids.tofile(open(sys.argv[4], "wb"))
PY
    if cmp -s "$work/c.bin" "$work/hf.bin"; then
        echo "ids: identical ($(($(wc -c <"$work/c.bin") / 4)) tokens)"
    else
        echo "ids: DIFFERENT (first differing byte: $(cmp "$work/c.bin" "$work/hf.bin" | head -1))"
        exit 1
    fi
done
