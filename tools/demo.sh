#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine, on the CPU, nothing downloaded but Debian packages:
# installs and builds, prepares the offline corpus (the King James Bible, bible-kjv), trains a small
# GQA teacher on it, converts the teacher to MLA at a 6x smaller KV cache, distills the student, and
# prints the summary table. Everything lands in runs/demo (removed first) and build/corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs" --target mlatrain >/dev/null
MLATRAIN=build/mlatrain tools/make-corpus.sh build/corpus
rm -rf runs/demo
echo "== 1/2: the teacher (GQA) learns the corpus"
build/mlatrain --config configs/demo_teacher.json "$@"
echo "== 2/2: the student (MLA, converted from the teacher) learns from the teacher"
build/mlatrain --config configs/demo_cpu.json "$@"
