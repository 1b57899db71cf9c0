#!/usr/bin/env bash
# Installs the dependencies; builds the file parsers' tests with AddressSanitizer and UBSan and runs
# them on their malformed-input corpora; runs the CUDA kernels' op tests on the CPU under
# tools/cuda-emu; then builds mlatrain (with the CUDA backend when nvcc is
# present) and runs every test with ctest, whose closing summary is the verdict. GPU-labelled tests
# report "skipped: no CUDA device" on machines without one; test_slurm_dp starts a one-node Slurm
# cluster of its own (about 20 s, run alone) and reports "skipped" without Slurm or root. Arguments
# go to the full ctest run (e.g. -L gpu, which also skips the sanitizer pass).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
jobs=$(nproc 2>/dev/null || echo 2)
if [ $# -eq 0 ]; then
    echo "== the parsers under AddressSanitizer and UBSan"
    cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DMLATRAIN_SANITIZE=ON -DMLATRAIN_CUDA=OFF \
        -DMLATRAIN_WERROR=ON >/dev/null
    parsers=(test_safetensors test_hf_config test_hf_model test_config test_data test_data_loader test_tasks
             test_tokenizer)
    cmake --build build-asan -j"$jobs" --target "${parsers[@]}" >/dev/null
    (cd build-asan && UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        ctest --output-on-failure -j"$jobs" -R "^($(IFS='|'; echo "${parsers[*]}"))\$")
    echo "== the CUDA kernels on the CPU, under an emulation of the runtime (tools/cuda-emu)"
    tools/cuda-emu/run.sh
fi
echo "== the whole suite"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DMLATRAIN_WERROR=ON >/dev/null
cmake --build build -j"$jobs"
cd build
ctest --output-on-failure -j"$jobs" "$@"
