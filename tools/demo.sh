#!/usr/bin/env bash
# The main job on a fresh machine: installs the dependencies, builds mlatrain, and runs a small
# end-to-end distillation on the CPU (`mlatrain demo`; extra arguments are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs" --target mlatrain >/dev/null
exec build/mlatrain demo "$@"
