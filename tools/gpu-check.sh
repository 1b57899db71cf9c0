#!/usr/bin/env bash
# The GPU check in one command, for a machine with an NVIDIA GPU: configure with the CUDA backend
# for sm_90a, build, run the gpu-labelled tests, then compute-sanitizer's memcheck and racecheck on
# the op tests, printing their summaries. Exit status 0 only when every step that ran passed.
#
# Environment (all optional):
#   BUILD_DIR          build folder (default build-gpu); an existing one is rebuilt incrementally
#   CMAKE_ARGS         extra configure flags
#   JOBS               parallel build jobs (default: every core)
#   STAGES             which steps, comma- or space-separated: build, tests, sanitizer (default all)
#   BUILD_TIMEOUT      seconds for configure + build (default 300)
#   TESTS_TIMEOUT      seconds for ctest -L gpu (default 240)
#   SANITIZER_TIMEOUT  seconds for each compute-sanitizer tool (default 150)
#   DEBS_DIR           Debian 12 packages of the build dependencies (default .gpu-debs), unpacked
#                      into the build folder when the machine lacks them and cannot install them
#
# `tools/gpu-check.sh --fetch-debs [DIR]`, on a Debian 12 machine with apt, downloads those packages
# into DIR (default .gpu-debs) for a GPU machine without network access; nothing else is done.
#
# The build writes BUILD_DIR/gpu-env.sh, which sets LD_LIBRARY_PATH for the built programs when
# their libraries come from DEBS_DIR or from Python's nvidia-* wheels; tools/gpu-bench.sh reads it.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

# What mlatrain links (tools/install-deps.sh names the -dev packages) and what those libraries load
# in turn, as Debian 12 names them. Only the ones the machine lacks are put on the library path.
DEB_PACKAGES=(
    pkgconf-bin libpkgconf3
    libcjson1 libcjson-dev
    libopenblas0-openmp libopenblas-openmp-dev liblapacke liblapacke-dev libtmglib3 libgfortran5 libquadmath0
    libhdf5-103-1 libhdf5-dev libsz2 libaec0
    libcurl4 libnghttp2-14 librtmp1 libssh2-1 libpsl5 libldap-2.5-0 libgssapi-krb5-2 libkrb5-3 libk5crypto3
    libkrb5support0 libkeyutils1 libcom-err2 libsasl2-2 libsasl2-modules-db libdb5.3 libbrotli1 libidn2-0
    libunistring2 libgnutls30 libhogweed6 libnettle8 libgmp10 libp11-kit0 libtasn1-6 libffi8 libssl3 libzstd1
    zlib1g
)
PKG_MODULES=(openblas lapacke libcjson hdf5-serial)

if [ "${1:-}" = "--fetch-debs" ]; then
    dir=${2:-.gpu-debs}
    mkdir -p "$dir" && cd "$dir" || exit 1
    apt-get download "${DEB_PACKAGES[@]}" || exit 1
    echo "gpu-check: $(find . -maxdepth 1 -name '*.deb' | wc -l) packages in $(pwd) ($(du -sh . | cut -f1))"
    exit 0
fi

stages=${STAGES:-build,tests,sanitizer}
for s in ${stages//,/ }; do
    case "$s" in build | tests | sanitizer) ;; *) echo "gpu-check: STAGES: unknown stage '$s' (build, tests, sanitizer)" >&2; exit 2 ;; esac
done
want() { [[ ",${stages// /,}," == *",$1,"* ]]; }

mkdir -p "${BUILD_DIR:-build-gpu}" || exit 1
build=$(cd "${BUILD_DIR:-build-gpu}" && pwd)
jobs=${JOBS:-$(nproc 2>/dev/null || echo 2)}
debs=${DEBS_DIR:-.gpu-debs}
[ -d "$debs" ] && debs=$(cd "$debs" && pwd)
failed=()

# Unpacks DEBS_DIR into BUILD_DIR/deps when pkg-config (or the program itself) cannot find the build
# dependencies, and points pkg-config, CMake and the loader at that copy. Debian's alternatives
# links (libblas.so.3, liblapack.so.3, their .pc files) are made by hand, since no dpkg runs; the
# .pc files are rewritten to the unpacked prefix. Sets deps_cmake_args and deps_lib_path.
deps_cmake_args=()
deps_lib_path=""
setup_deps() {
    if command -v pkg-config >/dev/null && pkg-config --exists "${PKG_MODULES[@]}" 2>/dev/null; then return 0; fi
    if ! ls "$debs"/*.deb >/dev/null 2>&1; then
        echo "gpu-check: this machine lacks the build dependencies (pkg-config modules ${PKG_MODULES[*]}) and" \
             "$debs holds no .deb files: run tools/install-deps.sh, or tools/gpu-check.sh --fetch-debs on a Debian 12" \
             "machine and bring that folder along" >&2
        return 1
    fi
    local root="$build/deps" multi lib ldconfig
    ldconfig=$(command -v ldconfig || echo /sbin/ldconfig)
    rm -rf "$root" && mkdir -p "$root/pkgconfig" "$root/lib" || return 1
    for d in "$debs"/*.deb; do
        dpkg-deb -x "$d" "$root" 2>/dev/null || (cd "$root" && ar p "$d" data.tar.xz | tar -xJ) || return 1
    done
    multi="$root/usr/lib/x86_64-linux-gnu"
    cp "$multi/openblas-openmp/pkgconfig/openblas.pc" "$root/pkgconfig/" &&
        cp "$multi/openblas-openmp/pkgconfig/blas-openblas.pc" "$root/pkgconfig/blas.pc" &&
        cp "$multi/openblas-openmp/pkgconfig/lapack-openblas.pc" "$root/pkgconfig/lapack.pc" &&
        cp "$multi/pkgconfig/lapacke.pc" "$multi/pkgconfig/libcjson.pc" "$multi/pkgconfig/hdf5-serial.pc" "$root/pkgconfig/" ||
        return 1
    sed -i -E "s#(^|[=[:space:]]|-I|-L)/usr#\1$root/usr#g" "$root/pkgconfig"/*.pc
    # lapacke.h sits in /usr/include, which the compiler searches by itself; the unpacked copy is not.
    sed -i "s#^Cflags:.*#& -I$root/usr/include#" "$root/pkgconfig/lapacke.pc"
    # The libraries the build links against always come from here; the ones they load only where the
    # machine has no library of that name (a newer system copy is kept).
    for lib in "$multi"/*.so* "$multi"/openblas-openmp/*.so* "$multi"/hdf5/serial/*.so*; do
        [ -e "$lib" ] || continue
        case "$(basename "$lib")" in
            libcjson* | libopenblas* | libblas* | liblapack* | libtmglib* | libhdf5* | libpkgconf*) ln -sf "$lib" "$root/lib/" ;;
            *) "$ldconfig" -p 2>/dev/null | grep -q "^[[:space:]]*$(basename "$lib") " || ln -sf "$lib" "$root/lib/" ;;
        esac
    done
    ln -sf "$multi/openblas-openmp/libblas.so.3" "$root/lib/libblas.so.3"
    ln -sf "$multi/openblas-openmp/liblapack.so.3" "$root/lib/liblapack.so.3"
    export PKG_CONFIG_PATH="$root/pkgconfig"
    deps_lib_path="$root/lib"
    export LD_LIBRARY_PATH="$deps_lib_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    if ! command -v pkg-config >/dev/null; then deps_cmake_args+=("-DPKG_CONFIG_EXECUTABLE=$root/usr/bin/pkgconf"); fi
    echo "gpu-check: build dependencies unpacked from $debs into $root"
}

# cuDNN and NCCL: CMake looks beside the CUDA toolkit; a machine whose copies came with PyTorch
# (the nvidia-cudnn-* and nvidia-nccl-* wheels) has them in Python's site-packages instead.
find_python_nvidia() {
    local lib_name=$1 header=$2 var=$3 sites lib inc
    ls /usr/local/cuda/lib64/"$lib_name".so* /usr/local/cuda/lib/"$lib_name".so* >/dev/null 2>&1 && return 0
    "$(command -v ldconfig || echo /sbin/ldconfig)" -p 2>/dev/null | grep -q "$lib_name\.so" && return 0
    sites=$("${PYTHON:-python3}" -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null) || return 0
    # shellcheck disable=SC2086  # a list of folders
    lib=$(find $sites -path '*nvidia*' -name "$lib_name.so*" 2>/dev/null | sort | head -n 1)
    # shellcheck disable=SC2086
    inc=$(find $sites -path '*nvidia*' -name "$header" 2>/dev/null | head -n 1)
    [ -n "$lib" ] && [ -n "$inc" ] || return 0
    deps_cmake_args+=("-D${var}_LIBRARY=$lib" "-D${var}_INCLUDE_DIR=$(dirname "$inc")")
    deps_lib_path="$(dirname "$lib")${deps_lib_path:+:$deps_lib_path}"
    LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export LD_LIBRARY_PATH
    echo "gpu-check: $lib_name from $(dirname "$lib")"
}

echo "== the device"
if ! nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; then
    if want tests || want sanitizer; then
        echo "gpu-check: nvidia-smi finds no GPU; the gpu tests would only report 'skipped'" >&2
        exit 1
    fi
fi

if want build; then
    echo "== configure and build (CUDA architecture 90a, $jobs jobs) in $build"
    setup_deps || exit 1
    find_python_nvidia libcudnn cudnn.h CUDNN
    find_python_nvidia libnccl nccl.h NCCL
    # shellcheck disable=SC2016  # expanded when the file is read, not now
    printf 'export LD_LIBRARY_PATH="%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"\n' "$deps_lib_path" >"$build/gpu-env.sh"
    [ -n "$deps_lib_path" ] || : >"$build/gpu-env.sh"
    # shellcheck disable=SC2086  # CMAKE_ARGS is a list of flags
    if ! timeout "${BUILD_TIMEOUT:-300}" cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMLATRAIN_CUDA=ON \
            -DCMAKE_CUDA_ARCHITECTURES=90a -DMLATRAIN_WERROR=ON "${deps_cmake_args[@]}" ${CMAKE_ARGS:-} \
            >"$build/gpu-check-configure.log" 2>&1; then
        tail -n 30 "$build/gpu-check-configure.log"
        echo "gpu-check: configure failed (log: $build/gpu-check-configure.log)" >&2
        exit 1
    fi
    if ! grep -q "CUDA backend on" "$build/gpu-check-configure.log"; then
        echo "gpu-check: cmake did not enable the CUDA backend (is nvcc on PATH or in /usr/local/cuda?)" >&2
        exit 1
    fi
    start=$(date +%s)
    if ! timeout "${BUILD_TIMEOUT:-300}" cmake --build "$build" -j"$jobs" >"$build/gpu-check-build.log" 2>&1; then
        tail -n 40 "$build/gpu-check-build.log"
        echo "gpu-check: build failed or ran past ${BUILD_TIMEOUT:-300} s (log: $build/gpu-check-build.log)" >&2
        exit 1
    fi
    echo "built in $(($(date +%s) - start)) s"
fi
# The libraries the build found outside the system's paths.
# shellcheck disable=SC1091
[ -f "$build/gpu-env.sh" ] && . "$build/gpu-env.sh"

if want tests; then
    echo "== ctest -L gpu"
    if ! (cd "$build" && timeout "${TESTS_TIMEOUT:-240}" ctest -L gpu --output-on-failure --no-tests=error |
            tee "$build/gpu-check-ctest.log"); then
        failed+=("ctest -L gpu")
    fi
    # One GPU is enough for these three: skipped here means the backend did not see it. (The NCCL
    # tests skip with fewer than two GPUs, rightly.)
    if grep -E -q "test_gpu_(ops|step|elementwise) .*(Skipped|Not Run)" "$build/gpu-check-ctest.log"; then
        failed+=("gpu tests skipped on a machine with a GPU")
    fi
fi

if want sanitizer; then
    sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    for tool in memcheck racecheck; do
        echo "== compute-sanitizer --tool $tool $build/test_gpu_ops"
        log="$build/gpu-check-$tool.log"
        timeout "${SANITIZER_TIMEOUT:-150}" "$sanitizer" --tool "$tool" --error-exitcode 99 "$build/test_gpu_ops" >"$log" 2>&1
        rc=$?
        if [ $rc -eq 124 ]; then
            failed+=("compute-sanitizer $tool ran past ${SANITIZER_TIMEOUT:-150} s")
        elif [ $rc -ne 0 ]; then
            failed+=("compute-sanitizer $tool")
            grep -m 20 "=========" "$log"
        fi
        # The test's own verdict line and the tool's summary line.
        grep "test_gpu_ops:\|SUMMARY" "$log" || tail -n 5 "$log"
    done
fi

echo "== gpu-check summary"
if [ ${#failed[@]} -eq 0 ]; then
    echo "all passed: ${stages//,/, }"
    exit 0
fi
printf 'FAILED: %s\n' "${failed[@]}"
exit 1
