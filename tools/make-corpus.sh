#!/usr/bin/env bash
# Builds the offline natural-text corpus: the King James Bible (1611, public domain) from Debian's
# bible-kjv package, one chapter per paragraph, and its byte-level train/val token files.
#
# usage: tools/make-corpus.sh [OUT_DIR]     (default build/corpus; MLATRAIN=path/to/mlatrain)
# writes OUT_DIR/kjv.txt (4.2 MB, 1189 chapters), kjv-train.h5 and kjv-val.h5 (5% of chapters).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/corpus}
mlatrain=${MLATRAIN:-build/mlatrain}

if ! command -v bible >/dev/null; then
  echo "make-corpus: the 'bible' program is missing: install Debian's bible-kjv (tools/install-deps.sh)" >&2
  exit 1
fi
mkdir -p "$out"

# bible -l0 prints unwrapped verses ("  12 text") under chapter headings ("Genesis 1") with blank
# lines around them. Kept: each heading, then its verses one per line without their numbers; a
# blank line between chapters, so `--docs paragraph` makes each chapter a document.
if [ ! -s "$out/kjv.txt" ]; then
  bible -l0 Gen1:1-Rev22:21 | awk '
    /^$/ { next }
    /^[^ ]/ { if (n++) print ""; print; next }
    { sub(/^ +[0-9]+ /, ""); print }
  ' > "$out/kjv.txt.tmp"
  chapters=$(grep -c '^$' "$out/kjv.txt.tmp" || true)
  if [ "$((chapters + 1))" -ne 1189 ]; then
    echo "make-corpus: expected 1189 chapters from bible, got $((chapters + 1))" >&2
    exit 1
  fi
  mv "$out/kjv.txt.tmp" "$out/kjv.txt"
fi

if [ ! -x "$mlatrain" ]; then
  echo "make-corpus: $mlatrain not found: build mlatrain first (or set MLATRAIN)" >&2
  exit 1
fi
"$mlatrain" data text "$out/kjv.txt" --docs paragraph --out "$out/kjv-train.h5" \
  --val-out "$out/kjv-val.h5" --val-fraction 0.05 --seed 1611
