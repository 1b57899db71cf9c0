#!/usr/bin/env bash
# Installs the dependencies, builds mlatrain (with the CUDA backend when nvcc is present), and runs
# every test with ctest. GPU-labelled tests report "skipped: no CUDA device" on machines without one.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DMLATRAIN_WERROR=ON >/dev/null
cmake --build build -j"$jobs"
cd build
ctest --output-on-failure -j"$jobs" "$@"
