#!/usr/bin/env bash
# The whole GPU check in one command, for a machine with an NVIDIA GPU, CUDA's compiler, CMake and
# a python with PyTorch, and neither network nor apt: what tools/gpu-prepare.sh put in .gpu-carry/
# stands in for apt. Stages, each under `timeout` and all within one time budget, run in the order
# env, deps, build, tests, attention, bench, probe, decode, hf, memcheck, racecheck (the figures
# before the slower checks, so that one short call yields them):
#   env        what the machine has: GPU, driver, nvcc, host compiler, CMake, python packages
#   deps       the build dependencies: the machine's own where pkg-config finds them all, else the
#              carried Debian packages unpacked (dpkg-deb -x, no dpkg database) into BUILD_DIR/deps
#   build      configure and build for sm_90a; warnings shown and counted, never fatal
#   tests      ctest -L gpu (test_gpu_ops, _step or _elementwise skipping counts as a failure)
#   memcheck   compute-sanitizer --tool memcheck on test_gpu_ops and test_gpu_elementwise
#   hf         the carried student: stock transformers on the GPU against the CPU's logits and loss
#              (recorded by gpu-prepare.sh), and `mlatrain eval` on the GPU, bf16 and fp32, against
#              transformers' loss
#   decode     tools/decode-bench.sh on the GPU: a SmolLM2-135M-shaped Llama with random weights
#              (made here by transformers: decode time does not depend on the values, and real
#              weights are too large to carry) against the 6x MLA student convert makes from it,
#              contexts 512 to 8192, bf16
#   attention  tools/bench-attention.sh: the attention kernels forward and backward beside PyTorch's
#              scaled_dot_product_attention at bench_1b's and bench_8b_1b's shapes
#   bench      tools/gpu-bench.sh's bench: ours on bench_1b (and --op-times) beside PyTorch eager
#              and torch.compile, then bench_8b_1b beside eager
#   probe      tools/gpu-bench.sh's probe: the largest batch that fits, ours and PyTorch
#   racecheck  (only when named in STAGES) compute-sanitizer --tool racecheck on test_gpu_ops
# It writes OUT_DIR/gpu-check-summary.txt (each stage's status and time, the machine, the figures,
# the tail of each failure) and OUT_DIR/gpu-check-logs.tar.gz. A stage left out, or one that no
# longer fits in the budget, is listed as skipped, never as passed; exit status 0 only when every
# stage that ran passed.
#
# Environment (all optional):
#   STAGES      comma- or space-separated (default env,deps,build,tests,memcheck,hf,decode,attention,bench,probe)
#   SKIP        stages to take out of that list (e.g. SKIP=bench,probe)
#   NO_GPU=1    a dry run on a machine without a GPU: the stages that need one report skipped
#   BUDGET_S    seconds for the whole run (default 510)
#   BUILD_DIR   build folder (default build-gpu; an existing one is rebuilt incrementally)
#   CARRY_DIR   what gpu-prepare.sh filled (default .gpu-carry)
#   OUT_DIR     where the summary and the logs go (default $OUT where set, else BUILD_DIR)
#   DEPS        auto (default): the machine's own when complete, else the carried ones; carried:
#               always the carried ones, the machine's own hidden from pkg-config and CMake (and
#               MPI left out, as on a bare machine); system: the machine's own or fail
#   DEPS_LINK_ALL=1  put every carried library on the loader path, not only those the machine
#               lacks (tools/gpu-dry-run.sh: the carried set must be complete by itself)
#   JOBS        build jobs (default: every core)
#   BUILD_TIMEOUT, TESTS_TIMEOUT, SANITIZER_TIMEOUT  caps in seconds of the build (400), ctest (240)
#               and each sanitizer run (150), within the budget
#   CMAKE_ARGS  extra configure flags
#   PYTHON      a python with torch (default python3)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
start=$(date +%s)
deadline=$((start + ${BUDGET_S:-510}))

ALL_STAGES=(env deps build tests memcheck hf decode attention bench probe racecheck)
GPU_STAGES=" tests memcheck hf decode attention bench probe racecheck "
stages=" $(echo "${STAGES:-env,deps,build,tests,memcheck,hf,decode,attention,bench,probe}" | tr ',' ' ') "
for s in $stages $(echo "${SKIP:-}" | tr ',' ' '); do
    [[ " ${ALL_STAGES[*]} " == *" $s "* ]] || { echo "gpu-check: unknown stage '$s' (${ALL_STAGES[*]})" >&2; exit 2; }
done
for s in $(echo "${SKIP:-}" | tr ',' ' '); do stages=${stages// $s / }; done
want() { [[ "$stages" == *" $1 "* ]]; }

mkdir -p "${BUILD_DIR:-build-gpu}" || exit 1
build=$(cd "${BUILD_DIR:-build-gpu}" && pwd)
carry=${CARRY_DIR:-.gpu-carry}
[ -d "$carry" ] && carry=$(cd "$carry" && pwd)
out=${OUT_DIR:-${OUT:-$build}}
mkdir -p "$out" || exit 1
out=$(cd "$out" && pwd)
logs="$build/gpu-check-logs"
rm -rf "$logs" && mkdir -p "$logs" || exit 1
python=${PYTHON:-python3}
jobs=${JOBS:-$(nproc 2>/dev/null || echo 2)}
summary="$out/gpu-check-summary.txt"
table="$logs/stages.txt"
: >"$table"
notes="$logs/notes.txt"
: >"$notes"
failed=0

gpu=1
if [ "${NO_GPU:-0}" = 1 ]; then
    gpu=0
    gpu_why="NO_GPU=1"
elif ! nvidia-smi -L >/dev/null 2>&1; then
    gpu=0
    gpu_why="nvidia-smi finds no GPU"
fi

# One line of the stage table: name, status, seconds, a short note.
record() { printf '%-10s %-34s %5s  %s\n' "$1" "$2" "$3" "${4:-}" >>"$table"; }
note() { printf '%s\n' "$*" >>"$notes"; }
left() { echo $((deadline - $(date +%s))); }

# stage NAME MIN_SECONDS FUNCTION: runs FUNCTION (which may set stage_note) when the stage is
# wanted, its needs are met and at least MIN_SECONDS of the budget are left; records the outcome.
stage_note=""
deps_failed=""
build_failed=""
NEEDS_BUILD=" tests memcheck hf decode attention bench probe bench+probe racecheck "
stage() {
    local name=$1 min=$2 fn=$3 t0 rc
    if ! want "$name"; then
        record "$name" "skipped (not asked for)" 0
        return 0
    fi
    if [[ "$GPU_STAGES" == *" $name "* ]] && [ $gpu -eq 0 ]; then
        if [ "${NO_GPU:-0}" = 1 ]; then
            record "$name" "skipped (no GPU: $gpu_why)" 0
        else
            record "$name" "FAILED (no GPU: $gpu_why)" 0
            failed=1
        fi
        return 0
    fi
    if [ "$name" = build ] && [ -n "$deps_failed" ]; then
        record "$name" "skipped (deps failed)" 0
        return 0
    fi
    if [[ "$NEEDS_BUILD" == *" $name "* ]] && { [ -n "$build_failed" ] || [ ! -x "$build/mlatrain" ]; }; then
        record "$name" "skipped (no build)" 0
        return 0
    fi
    if [ "$(left)" -lt "$min" ]; then
        record "$name" "skipped (time: $(left) s left)" 0
        return 0
    fi
    echo "== $name ($(left) s of the budget left)"
    stage_note=""
    t0=$(date +%s)
    "$fn" >"$logs/$name.log" 2>&1
    rc=$?
    cat "$logs/$name.log" | tail -n 15
    if [ $rc -eq 0 ]; then
        record "$name" ok "$(($(date +%s) - t0))" "$stage_note"
    else
        record "$name" "FAILED" "$(($(date +%s) - t0))" "$stage_note"
        [ "$name" = deps ] && deps_failed=1
        [ "$name" = build ] && build_failed=1
        { echo "---- $name failed: the end of its log"; tail -n 40 "$logs/$name.log"; } >>"$notes"
        failed=1
    fi
    return $rc
}

# Runs a command with what is left of the budget (at most CAP seconds).
bounded() {
    local cap=$1 l
    shift
    l=$(($(left) - 5))
    [ "$l" -lt "$cap" ] && cap=$l
    [ "$cap" -gt 0 ] || { echo "out of time"; return 124; }
    timeout "$cap" "$@"
}

env_stage() {
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || echo "nvidia-smi: none"
    nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
    "$nvcc" --version | tail -n 2
    ${CC:-cc} --version | head -n 1
    cmake --version | head -n 1
    echo "pkg-config: $(pkg-config --version 2>/dev/null || echo none)"
    ls /usr/local/cuda/lib64/ 2>/dev/null | grep -E '^lib(cublas|cublasLt|nccl|cudart)\.so' | tr '\n' ' '
    echo
    (command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || echo "compute-sanitizer: none")
    "$python" -c 'import sys, torch, transformers, h5py, numpy; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "h5py", h5py.__version__, "numpy", numpy.__version__)' ||
        echo "python: $python lacks torch, transformers, h5py or numpy"
    ldd --version | head -n 1
    [ -f "$carry/debs/glibc.txt" ] && echo "carried libraries need up to $(cat "$carry/debs/glibc.txt")"
    stage_note=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
    return 0
}

# ---- deps ----
PKG_MODULES=(openblas lapacke libcjson hdf5-serial libpcre2-8 libutf8proc)
deps_cmake_args=()
deps_lib_path=""

# A .deb's files into a folder: dpkg-deb where there is one, else the ar archive read by python.
unpack_deb() {
    dpkg-deb -x "$1" "$2" 2>/dev/null && return 0
    "$python" - "$1" "$2" <<'EOF'
import io, sys, tarfile
data = open(sys.argv[1], 'rb').read()
assert data[:8] == b'!<arch>\n', 'not an ar archive'
at = 8
while at < len(data):
    name, size = data[at:at + 16].decode().strip().rstrip('/'), int(data[at + 48:at + 58])
    body = data[at + 60:at + 60 + size]
    if name.startswith('data.tar'):
        tarfile.open(fileobj=io.BytesIO(body)).extractall(sys.argv[2])
        break
    at += 60 + size + size % 2
EOF
}

deps_stage() {
    local mode=${DEPS:-auto} root="$build/deps" multi lib n=0
    if [ "$mode" != carried ] && pkg-config --exists "${PKG_MODULES[@]}"; then
        stage_note="the machine's own"
        echo "the machine's own: $(pkg-config --modversion "${PKG_MODULES[@]}" | tr '\n' ' ')"
        return 0
    fi
    if [ "$mode" = system ]; then
        echo "DEPS=system, but pkg-config does not find ${PKG_MODULES[*]}"
        return 1
    fi
    if ! ls "$carry"/debs/*.deb >/dev/null 2>&1; then
        echo "no carried packages in $carry/debs: run tools/gpu-prepare.sh on a Debian 12 machine and carry $(basename "$carry")"
        return 1
    fi
    rm -rf "$root" && mkdir -p "$root/pkgconfig" "$root/lib" || return 1
    for d in "$carry"/debs/*.deb; do
        unpack_deb "$d" "$root" || { echo "cannot unpack $d"; return 1; }
        n=$((n + 1))
    done
    multi="$root/usr/lib/x86_64-linux-gnu"
    cp "$multi/openblas-openmp/pkgconfig/openblas.pc" "$root/pkgconfig/" &&
        cp "$multi/openblas-openmp/pkgconfig/blas-openblas.pc" "$root/pkgconfig/blas.pc" &&
        cp "$multi/openblas-openmp/pkgconfig/lapack-openblas.pc" "$root/pkgconfig/lapack.pc" &&
        cp "$multi/pkgconfig/lapacke.pc" "$multi/pkgconfig/libcjson.pc" "$multi/pkgconfig/hdf5-serial.pc" \
            "$multi/pkgconfig/libpcre2-8.pc" "$multi/pkgconfig/libutf8proc.pc" "$root/pkgconfig/" || return 1
    sed -i -E "s#(^|[=[:space:]]|-I|-L)/usr#\1$root/usr#g" "$root/pkgconfig"/*.pc
    # lapacke.h, cjson/, pcre2.h and utf8proc.h sit in /usr/include, which the compiler searches by
    # itself; the unpacked copies are named, so that they come before any of the machine's.
    sed -i "s#^Cflags:.*#& -I$root/usr/include#" "$root/pkgconfig/lapacke.pc" "$root/pkgconfig/libcjson.pc" \
        "$root/pkgconfig/libpcre2-8.pc" "$root/pkgconfig/libutf8proc.pc"
    # The libraries the build links against always come from here; the ones they load only where
    # the machine has no library of that name (its own, possibly newer, is kept). Debian's
    # alternatives links (libblas.so.3, liblapack.so.3) are made by hand.
    # (Debian keeps a few base libraries, zlib among them, in /lib rather than /usr/lib.)
    for lib in "$multi"/*.so* "$multi"/openblas-openmp/*.so* "$multi"/hdf5/serial/*.so* "$root"/lib/x86_64-linux-gnu/*.so*; do
        [ -e "$lib" ] || continue
        case "$(basename "$lib")" in
        libcjson* | libopenblas* | libblas* | liblapack* | libtmglib* | libhdf5* | libpkgconf* | libpcre2-8* | libutf8proc*)
            ln -sf "$lib" "$root/lib/" ;;
        *) [ "${DEPS_LINK_ALL:-0}" != 1 ] &&
            "$(command -v ldconfig || echo /sbin/ldconfig)" -p 2>/dev/null | grep -q "^[[:space:]]*$(basename "$lib") " ||
            ln -sf "$lib" "$root/lib/" ;;
        esac
    done
    ln -sf "$multi/openblas-openmp/libblas.so.3" "$root/lib/libblas.so.3"
    ln -sf "$multi/openblas-openmp/liblapack.so.3" "$root/lib/liblapack.so.3"
    deps_lib_path="$root/lib"
    export LD_LIBRARY_PATH="$deps_lib_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    # PKG_CONFIG_LIBDIR replaces pkg-config's search path: only the unpacked modules are seen.
    export PKG_CONFIG_LIBDIR="$root/pkgconfig"
    unset PKG_CONFIG_PATH
    if [ "$mode" = carried ] || ! pkg-config --version >/dev/null 2>&1; then
        deps_cmake_args+=("-DPKG_CONFIG_EXECUTABLE=$root/usr/bin/pkgconf")
        export PATH="$root/usr/bin:$PATH"
    fi
    if [ "$mode" = carried ]; then
        deps_cmake_args+=(-DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON)
    fi
    "$root/usr/bin/pkgconf" --modversion "${PKG_MODULES[@]}" | tr '\n' ' ' || return 1
    echo
    stage_note="carried: $n packages"
    echo "$n packages unpacked into $root"
}

# NCCL: CMake looks beside the CUDA toolkit; a machine whose copy came with PyTorch (the
# nvidia-nccl-* wheel) has it in site-packages, perhaps without its header, which is carried.
find_nccl() {
    local sites lib inc
    if ls /usr/local/cuda/lib64/libnccl.so* /usr/local/cuda/lib/libnccl.so* >/dev/null 2>&1 &&
        ls /usr/local/cuda/include/nccl.h >/dev/null 2>&1; then return 0; fi
    sites=$("$python" -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)
    # shellcheck disable=SC2086  # a list of folders
    lib=$(find $sites /usr/lib/x86_64-linux-gnu /usr/local/cuda/lib64 -name 'libnccl.so*' 2>/dev/null | sort | head -n 1)
    # shellcheck disable=SC2086
    inc=$(find $sites /usr/include /usr/local/cuda/include -name nccl.h 2>/dev/null | head -n 1)
    [ -n "$inc" ] || inc=$(ls "$carry/include/nccl.h" 2>/dev/null)
    if [ -z "$lib" ] || [ -z "$inc" ]; then
        echo "NCCL: library '${lib}' header '${inc}': not found"
        return 1
    fi
    deps_cmake_args+=("-DNCCL_LIBRARY=$lib" "-DNCCL_INCLUDE_DIR=$(dirname "$inc")")
    deps_lib_path="$(dirname "$lib")${deps_lib_path:+:$deps_lib_path}"
    export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "NCCL: $lib, $inc"
}

build_stage() {
    find_nccl || return 1
    # shellcheck disable=SC2016  # expanded when the file is read, not now
    [ -n "$deps_lib_path" ] && printf 'export LD_LIBRARY_PATH="%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"\n' "$deps_lib_path" \
        >"$build/gpu-env.sh" || : >"$build/gpu-env.sh"
    # -Werror stays off here: a newer host compiler's new warning must not stop the whole check.
    # shellcheck disable=SC2086  # CMAKE_ARGS is a list of flags
    if ! bounded 120 cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMLATRAIN_CUDA=ON -DMLATRAIN_WERROR=OFF \
        -DCMAKE_CUDA_ARCHITECTURES=90a "${deps_cmake_args[@]}" ${CMAKE_ARGS:-} >"$logs/configure.log" 2>&1; then
        tail -n 30 "$logs/configure.log"
        echo "configure failed"
        return 1
    fi
    grep "mlatrain:" "$logs/configure.log"
    grep -q "CUDA backend on" "$logs/configure.log" || { echo "the CUDA backend is not on (is nvcc found?)"; return 1; }
    # With the carried dependencies, every library pkg-config resolved must be an unpacked one.
    if [ "${DEPS:-auto}" = carried ]; then
        local outside
        outside=$(grep -E '^pkgcfg_lib_[A-Z]+_[a-z0-9_]+:FILEPATH=' "$build/CMakeCache.txt" | grep -v "=$build/deps/")
        [ -z "$outside" ] || { echo "configure found libraries outside the carried prefix: $outside"; return 1; }
    fi
    if ! bounded "${BUILD_TIMEOUT:-400}" cmake --build "$build" -j"$jobs" >"$logs/build-output.log" 2>&1; then
        grep -E "error|Error" "$logs/build-output.log" | head -n 30
        echo "build failed"
        return 1
    fi
    local warnings
    warnings=$(grep -c "warning" "$logs/build-output.log")
    stage_note="$warnings warning lines"
    { echo "---- build warnings (first 25 of $warnings lines)"; grep -A 2 "warning" "$logs/build-output.log" | head -n 75; } >>"$notes"
    echo "built; $warnings warning lines"
}

# The library path the build found its libraries on.
load_env() {
    # shellcheck disable=SC1091
    [ -f "$build/gpu-env.sh" ] && . "$build/gpu-env.sh"
    return 0
}

tests_stage() {
    load_env
    (cd "$build" && bounded "${TESTS_TIMEOUT:-240}" ctest -L gpu -j4 --output-on-failure --no-tests=error) >"$logs/ctest.log" 2>&1
    local rc=$?
    grep -E "Test +#|tests passed|Skipped|Failed" "$logs/ctest.log"
    stage_note=$(grep -E "tests passed" "$logs/ctest.log" | head -n 1)
    # One GPU is enough for these: skipped means the backend did not see it (the NCCL tests need two).
    if grep -E -q "test_gpu_(ops|step|elementwise) .*(Skipped|Not Run)" "$logs/ctest.log"; then
        echo "a single-GPU test skipped on a machine with a GPU"
        return 1
    fi
    return $rc
}

sanitize() {
    local tool=$1 cap=$2 sanitizer rc
    shift 2
    sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    load_env
    for t in "$@"; do
        bounded "$cap" "$sanitizer" --tool "$tool" --error-exitcode 99 "$build/$t" >"$logs/$tool-$t.log" 2>&1
        rc=$?
        echo "$t: exit $rc; $(grep -E "^$t:" "$logs/$tool-$t.log" | tail -n 1); $(grep "SUMMARY" "$logs/$tool-$t.log" | tail -n 1)"
        grep -m 10 "=========  *\(Invalid\|Race\|Program hit\|Error\)" "$logs/$tool-$t.log"
        [ $rc -eq 0 ] || return 1
    done
}
memcheck_stage() { sanitize memcheck "${SANITIZER_TIMEOUT:-150}" test_gpu_elementwise test_gpu_ops; }
racecheck_stage() { sanitize racecheck "${SANITIZER_TIMEOUT:-200}" test_gpu_ops; }

hf_stage() {
    local s="$carry/student" ref loss fails=0
    load_env
    [ -f "$s/hf/config.json" ] && [ -f "$s/val.h5" ] && [ -f "$s/mlatrain-cpu.json" ] ||
        { echo "no carried student in $s: run tools/gpu-prepare.sh"; return 1; }
    for precision in bf16 fp32; do
        if ! bounded 90 "$build/mlatrain" eval --config "$s/eval.json" --set device=cuda --set precision=$precision \
            --set "student.init_from=$s/hf" --set "data.val=$s/val.h5" --json "$logs/hf-mlatrain-$precision.json" \
            >"$logs/hf-mlatrain-$precision.log" 2>&1; then
            tail -n 5 "$logs/hf-mlatrain-$precision.log"
            return 1
        fi
    done
    read -r cpu bf fp < <("$python" - "$s/mlatrain-cpu.json" "$logs/hf-mlatrain-bf16.json" "$logs/hf-mlatrain-fp32.json" <<'EOF'
import json, sys
print(*[json.load(open(p))["student"]["loss"] for p in sys.argv[1:]])
EOF
    )
    echo "mlatrain eval of the export: CPU (gpu-prepare) $cpu, CUDA bf16 $bf, CUDA fp32 $fp"
    ref=()
    [ -f "$s/logits.npy" ] && ref=(--compare-logits "$s/logits.npy" --max-logits-rel 1e-4)
    # transformers on the GPU in f32 against mlatrain's CUDA fp32 loss and the CPU's logits.
    bounded 120 "$python" tools/check-export-transformers.py "$s/hf" "$s/val.h5" "$fp" --seq 128 --windows 8 \
        --device cuda "${ref[@]}" --max-loss-rel 1e-4 --json "$logs/hf-transformers.json" 2>&1 | sed "/Loading weights/d" ||
        fails=1
    # mlatrain's bf16 CUDA loss against its CPU f32 loss: the bf16 contract's 1e-2.
    "$python" -c 'import sys; a, b = map(float, sys.argv[1:]); r = abs(a - b) / b; print(f"CUDA bf16 against CPU f32: relative {r:.2e} (at most 1e-2)"); sys.exit(r > 1e-2)' "$bf" "$cpu" || fails=1
    stage_note=$("$python" - "$logs/hf-transformers.json" 2>/dev/null <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print("HF loss rel %.1e, logits rel %.1e" % (r["loss_rel"], r.get("logits_rel", float("nan"))))
EOF
    )
    return $fails
}

decode_stage() {
    local d="$build/decode-models" rc
    load_env
    rm -rf "$d" && mkdir -p "$d" || return 1
    bounded 90 "$python" - "$d/teacher" <<'EOF' || { echo "could not write the random teacher"; return 1; }
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                  num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                  rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
torch.manual_seed(0)
LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(sys.argv[1])
EOF
    # The 6x student of tools/quality-bench.sh's table (r 48 + dr 16 against 2 x 3 x 64), from the
    # weights alone: the calibrated conversion's quality is beside the point of a speed figure.
    printf '{"run": {"dir": "%s"}, "student": {"init_from": "%s", "mla": {"kv_lora_rank": 48, "qk_rope_head_dim": 16, "qk_nope_head_dim": 64, "v_head_dim": 64, "init": "svd", "rope_select": "uniform", "latent_basis": "weights", "output_fit": "none", "calibration_tokens": 512}}}\n' \
        "$d/run" "$d/teacher" >"$d/convert.json"
    if ! bounded 120 "$build/mlatrain" convert --config "$d/convert.json" --out "$d/student" >"$logs/decode-convert.log" 2>&1; then
        tail -n 5 "$logs/decode-convert.log"
        return 1
    fi
    MLATRAIN="$build/mlatrain" bounded 150 tools/decode-bench.sh "$d/teacher" "$d/student" --device cuda --new 32 \
        >"$logs/decode-table.md" 2>&1
    rc=$?
    cat "$logs/decode-table.md"
    stage_note=$(grep -E '^\| 4096 \| student' "$logs/decode-table.md" | awk -F'|' '{gsub(/ /, "", $8); print "student/teacher decode at 4k: " $8}')
    rm -rf "$d"
    return $rc
}

attention_stage() {
    load_env
    BUILD_DIR="$build" PYTHON="$python" bounded 90 tools/bench-attention.sh --device cuda \
        --out "$logs/attention.jsonl" >"$logs/attention-table.md" 2>&1
    local rc=$?
    cat "$logs/attention-table.md"
    stage_note=$(grep -E '^\| 1b student \(MLA\) \| backward' "$logs/attention-table.md" | awk -F'|' '{gsub(/ /, "", $8); print "student backward vs SDPA: " $8}')
    return $rc
}

bench_stage() {
    local which=$1 l
    l=$(($(left) - 10 - bench_reserve))
    TORCH_BENCH="$carry/bench/torch_distill.py" BUILD_DIR="$build" LOG_DIR="$logs/bench" BUDGET_S=$l \
        STAGES="$which" PYTHON="$python" tools/gpu-bench.sh
}
bench_and_probe_stage() { bench_stage "$bench_which"; }

# ---- the run ----
stage env 5 env_stage
stage deps 20 deps_stage
stage build 60 build_stage
stage tests 30 tests_stage
stage attention 30 attention_stage
# bench and probe share one tools/gpu-bench.sh run (one table); its budget is what is left but the
# time the later measuring stages need (the sanitizers come last: one call of the device tool is
# too short for everything, and the figures matter first).
bench_reserve=0
want decode && bench_reserve=$((bench_reserve + 90))
want hf && bench_reserve=$((bench_reserve + 45))
bench_which=""
want bench && bench_which=bench
want probe && bench_which=${bench_which:+$bench_which,}probe
want bench || record bench "skipped (not asked for)" 0
want probe || record probe "skipped (not asked for)" 0
if [ -n "$bench_which" ]; then
    name=${bench_which//,/+}
    ALL_STAGES+=("$name")
    GPU_STAGES+="$name "
    stages+="$name "
    stage "$name" 90 bench_and_probe_stage
fi
stage decode 60 decode_stage
stage hf 30 hf_stage
stage memcheck 40 memcheck_stage
stage racecheck 60 racecheck_stage

# ---- the summary ----
{
    echo "mlatrain GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
        "($(git status --porcelain 2>/dev/null | grep -c .) changed files), $(($(date +%s) - start)) s"
    echo
    printf '%-10s %-34s %5s  %s\n' stage status secs note
    cat "$table"
    echo
    [ -f "$logs/env.log" ] && { echo "---- the machine"; cat "$logs/env.log"; echo; }
    [ -f "$logs/ctest.log" ] && { echo "---- ctest -L gpu"; grep -E "Test +#|tests passed|Total Test" "$logs/ctest.log"; echo; }
    for f in "$logs"/memcheck-*.log "$logs"/racecheck-*.log; do
        [ -f "$f" ] && echo "$(basename "$f" .log): $(grep SUMMARY "$f" | tail -n 1) $(grep -E '^test_gpu_[a-z]+:' "$f" | tail -n 1)"
    done
    [ -f "$logs/hf.log" ] && { echo; echo "---- hf"; cat "$logs/hf.log"; }
    [ -f "$logs/attention-table.md" ] && { echo; echo "---- attention (bf16, B 4, T 2048)"; cat "$logs/attention-table.md"; }
    [ -f "$logs/decode-table.md" ] && { echo; echo "---- decode (random SmolLM2-shaped teacher, 6x student, bf16)"; cat "$logs/decode-table.md"; }
    [ -f "$logs/bench/table.txt" ] && { echo; echo "---- bench"; cat "$logs/bench/table.txt"; }
    echo
    cat "$notes"
} >"$summary"
tar -czf "$out/gpu-check-logs.tar.gz" -C "$build" gpu-check-logs 2>/dev/null
echo
cat "$table"
echo "gpu-check: summary in $summary, logs in $out/gpu-check-logs.tar.gz"
exit $failed
