#!/usr/bin/env bash
# The GPU check in one command, for a machine with an NVIDIA GPU and the project's dependencies
# (tools/install-deps.sh): configure with the CUDA backend for sm_90a, build, run the gpu-labelled
# tests, then compute-sanitizer's memcheck and racecheck on the op tests, printing their summaries.
# Exit status 0 only when every step passed. BUILD_DIR (default build-gpu) and CMAKE_ARGS (extra
# configure flags) may be set in the environment.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
mkdir -p "${BUILD_DIR:-build-gpu}" || exit 1
build=$(cd "${BUILD_DIR:-build-gpu}" && pwd)
jobs=$(nproc 2>/dev/null || echo 2)
failed=()

echo "== the device"
if ! nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; then
    echo "gpu-check: nvidia-smi finds no GPU; the gpu tests would only report 'skipped'" >&2
    exit 1
fi

echo "== configure and build (CUDA architecture 90a) in $build"
# shellcheck disable=SC2086  # CMAKE_ARGS is a list of flags
if ! cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMLATRAIN_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
        -DMLATRAIN_WERROR=ON ${CMAKE_ARGS:-} >"$build/gpu-check-configure.log" 2>&1; then
    tail -n 30 "$build/gpu-check-configure.log"
    echo "gpu-check: configure failed (log: $build/gpu-check-configure.log)" >&2
    exit 1
fi
if ! grep -q "CUDA backend on" "$build/gpu-check-configure.log"; then
    echo "gpu-check: cmake did not enable the CUDA backend (is nvcc on PATH or in /usr/local/cuda?)" >&2
    exit 1
fi
if ! cmake --build "$build" -j"$jobs" >"$build/gpu-check-build.log" 2>&1; then
    tail -n 40 "$build/gpu-check-build.log"
    echo "gpu-check: build failed (log: $build/gpu-check-build.log)" >&2
    exit 1
fi

echo "== ctest -L gpu"
if ! (cd "$build" && ctest -L gpu --output-on-failure --no-tests=error | tee "$build/gpu-check-ctest.log"); then
    failed+=("ctest -L gpu")
fi
# One GPU is enough for these three: skipped here means the backend did not see it. (The NCCL tests
# skip with fewer than two GPUs, rightly.)
if grep -E -q "test_gpu_(ops|step|elementwise) .*(Skipped|Not Run)" "$build/gpu-check-ctest.log"; then
    failed+=("gpu tests skipped on a machine with a GPU")
fi

sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck; do
    echo "== compute-sanitizer --tool $tool $build/test_gpu_ops"
    log="$build/gpu-check-$tool.log"
    if ! "$sanitizer" --tool "$tool" --error-exitcode 99 "$build/test_gpu_ops" >"$log" 2>&1; then
        failed+=("compute-sanitizer $tool")
        grep -m 20 "=========" "$log"
    fi
    # The test's own verdict line and the tool's summary line.
    grep "test_gpu_ops:\|SUMMARY" "$log" || tail -n 5 "$log"
done

echo "== gpu-check summary"
if [ ${#failed[@]} -eq 0 ]; then
    echo "all passed: gpu tests, memcheck, racecheck"
    exit 0
fi
printf 'FAILED: %s\n' "${failed[@]}"
exit 1
