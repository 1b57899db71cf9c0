#!/usr/bin/env bash
# Runs the CUDA backend's GPU tests on the CPU: the kernels of model/ops/cuda compiled as C++ against
# an emulation of the CUDA runtime (each block's threads as fibers that switch only at barriers and
# warp-collective calls, in forward, reversed or shuffled order), of cuBLAS/cuBLASLt/CUB and of WMMA.
# It checks indexing, masking, barriers and the host code of every op against the CPU backend; not
# the hardware, its timing, or the real libraries; cuda_gemm's fallbacks (no cuBLASLt algorithm
# offered, offered ones refused) are forced through the emulated library. EMU_BUILD_DIR (default build-emu) holds a
# CPU-only build of the library; EMU_STEP=1 also runs test_gpu_step (several minutes); EMU_TRAIN=1
# also runs a whole tiny distillation (conversion, training, evaluation, checkpoints) with
# "device": "cuda" under the emulation and checks its figures against the same run on the CPU's
# bf16 storage (a few minutes), and again with train.recompute = "layers" and "mlp", which must give
# the same figures.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/tools/cuda-emu"
build=${EMU_BUILD_DIR:-$root/build-emu}
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DMLATRAIN_CUDA=OFF >/dev/null
cmake --build "$build" -j"$jobs" --target mlatrain mlatrain_lib mlatrain_test_harness test_gpu_ops >/dev/null
work="$build/cuda-emu"
mkdir -p "$work/src" "$work/obj"

# The ops' sources; the backend's own lifetime (device, handles, measurements) is emu_backend.cpp.
for f in "$root"/model/ops/cuda/*.cu; do
    b=$(basename "$f" .cu)
    case $b in cuda_backend | matmul_peak | memory_figures) continue ;; esac
    python3 "$here/transform.py" "$f" "$work/src/$b.cpp"
done
# Their headers beside them, but warp_mma.cuh: a header's quoted includes look in its own folder
# first, so the instructions must come from the emulation's include folder, not model/ops/cuda.
for h in "$root"/model/ops/cuda/*.cuh; do
    [ "$(basename "$h")" = warp_mma.cuh ] || cp "$h" "$work/src/"
done
cxx=(g++ -std=c++17 -O2 -w -I"$here/include" -I"$work/src" -I"$root" -I"$root/model/ops/cuda" -include cuda_runtime.h)
pids=() objs=()
for f in "$work"/src/*.cpp "$here"/runtime.cpp "$here"/lt.cpp "$here"/emu_backend.cpp; do
    o="$work/obj/$(basename "$f" .cpp).o"
    objs+=("$o")
    "${cxx[@]}" -c "$f" -o "$o" &
    pids+=($!)
    if [ ${#pids[@]} -ge "$jobs" ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p"; done
# backend_create("cuda") reaches the emulated backend only when built with the CUDA define.
gcc -std=c11 -O2 -D_POSIX_C_SOURCE=200809L -DMLATRAIN_HAVE_CUDA=1 -I"$root" -c "$root/model/ops/backend.c" \
    -o "$work/obj/backend_cuda.o"
# The libraries the CPU build links its tests with.
read -r -a libs <<<"$(sed -e 's/.* -o test_gpu_ops //' "$build/CMakeFiles/test_gpu_ops.dir/link.txt")"
tests=(test_gpu_elementwise test_gpu_ops test_gpu_decode)
[ "${EMU_STEP:-0}" = 1 ] && tests+=(test_gpu_step)
status=0
for t in "${tests[@]}"; do
    gcc -std=c11 -O2 -D_POSIX_C_SOURCE=200809L -DMLATRAIN_HAVE_CUDA=1 -I"$root" -I"$root/tests" -c "$root/tests/$t.c" \
        -o "$work/obj/$t.o"
    (cd "$build" && g++ "$work/obj/$t.o" "$work/obj/backend_cuda.o" "${objs[@]}" "${libs[@]}" -fopenmp \
        -o "$work/$t")
    orders=(0)
    [ "$t" = test_gpu_ops ] && orders=(0 2)
    for order in "${orders[@]}"; do
        printf '%s (emulated, thread order %s): ' "$t" "$order"
        if ! EMU_ORDER=$order "$work/$t" >"$work/$t.$order.log" 2>&1; then
            status=1
            echo "FAILED"
            grep -m 20 FAIL "$work/$t.$order.log" || tail -n 20 "$work/$t.$order.log"
        else
            tail -n 1 "$work/$t.$order.log"
        fi
    done
done

# cuda_gemm's fallbacks: cuBLASLt's heuristic offering nothing (every mixed-precision product
# through cublasGemmEx), and offering three algorithms of which the first two are refused at
# launch (the third kept). The same op tests must pass, and the emulated library must say that
# the path was taken.
fallback() {
    local name=$1 expect=$2
    shift 2
    printf 'test_gpu_ops (emulated, %s): ' "$name"
    if ! env "$@" "$work/test_gpu_ops" >"$work/test_gpu_ops.$name.log" 2>&1; then
        status=1
        echo "FAILED"
        grep -m 20 FAIL "$work/test_gpu_ops.$name.log" || tail -n 20 "$work/test_gpu_ops.$name.log"
    elif ! grep -E -q "$expect" "$work/test_gpu_ops.$name.log"; then
        status=1
        echo "FAILED: the emulated cuBLASLt did not report the fallback ('$expect')"
    else
        echo "$(grep -E 'checks, [0-9]+ failed' "$work/test_gpu_ops.$name.log" | tail -n 1);" \
            "$(grep -m 1 'emu lt:' "$work/test_gpu_ops.$name.log")"
    fi
}
fallback no-heuristic-result "refused, [1-9][0-9]* cublasGemmEx" EMU_LT_ALGOS=0
fallback refused-algorithms "[1-9][0-9]* cuBLASLt algorithm\(s\) refused, 0 cublasGemmEx" EMU_LT_ALGOS=3 EMU_LT_FAILING_ALGOS=2

if [ "${EMU_TRAIN:-0}" = 1 ]; then
    gcc -std=c11 -O2 -D_POSIX_C_SOURCE=200809L -I"$root" -c "$root/train/main.c" -o "$work/obj/main.o"
    (cd "$build" && g++ "$work/obj/main.o" "$work/obj/backend_cuda.o" "${objs[@]}" "${libs[@]}" -fopenmp \
        -o "$work/mlatrain")
    run="$work/train"
    rm -rf "$run" && mkdir -p "$run"
    "$build/mlatrain" data text "$root/README.md" "$root"/docs/*.md --out "$run/train.h5" --docs paragraph \
        --val-out "$run/val.h5" --val-fraction 0.1 >/dev/null
    common=(--config "$here/tiny_distill.json" --set "data.train=$run/train.h5" --set "data.val=$run/val.h5")
    "$work/mlatrain" "${common[@]}" --set "run.dir=$run/cuda" >"$run/cuda.log" 2>&1 || status=1
    "$build/mlatrain" "${common[@]}" --set device=cpu --set precision=bf16 --set "run.dir=$run/cpu" \
        >"$run/cpu.log" 2>&1 || status=1
    # The last evaluation of each: the same to 1e-3 (both round the same f32 results to bf16; the
    # GPU's attention and loss round a few more intermediates).
    last() { grep "student after training" "$1" | awk '{print $4}'; }
    a=$(last "$run/cuda.log") b=$(last "$run/cpu.log")
    if [ -n "$a" ] && [ -n "$b" ] && awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-3 * b) }'; then
        echo "tiny distillation (emulated cuda, bf16): final val loss $a, cpu bf16 $b"
    else
        status=1
        echo "tiny distillation (emulated cuda, bf16): FAILED: final val loss '${a}' against the cpu's '${b}'"
        tail -n 5 "$run/cuda.log" "$run/cpu.log"
    fi
    # Recomputation through the CUDA ops: the same figures as keeping every activation.
    figures() { sed -E 's/"(tok_s|elapsed)": [^,}]*//g' "$1/metrics.jsonl"; }
    for mode in layers mlp; do
        "$work/mlatrain" "${common[@]}" --set "run.dir=$run/cuda-$mode" --set train.recompute=$mode \
            >"$run/cuda-$mode.log" 2>&1 || status=1
        c=$(last "$run/cuda-$mode.log")
        if [ -n "$a" ] && [ "$c" = "$a" ] && cmp -s <(figures "$run/cuda") <(figures "$run/cuda-$mode"); then
            echo "tiny distillation (emulated cuda, train.recompute = $mode): final val loss $c, every step's figures equal"
        else
            status=1
            echo "tiny distillation (emulated cuda, train.recompute = $mode): FAILED: final val loss '${c}' against '${a}'"
        fi
    done
fi
exit $status
