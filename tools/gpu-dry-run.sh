#!/usr/bin/env bash
# Rehearses tools/gpu-check.sh on this machine, without a GPU: a fresh clone of this checkout's
# HEAD with the carried folder copied in (as the device tool would send it), then the check with
# DEPS=carried, every carried library put on the loader path, NO_GPU=1 (the GPU stages must say
# "skipped"). As root where `unshare -m` works, the machine's own copies of the build dependencies
# (their Debian packages' files: headers, libraries, .pc files, pkg-config) are hidden behind empty
# bind mounts for the run, so configure, build and the programs' start-up can only have used the
# carried ones. Exit 0 when the check passed, every GPU stage said skipped, and the built program
# resolved each library either to the carried prefix or to glibc, GCC's runtime or CUDA.
#
# Environment: DRY_DIR (default /tmp/gpu-dry; removed first), CARRY_DIR (default .gpu-carry),
# JOBS (default 2), BUDGET_S (default 2400: a 2-core build is much slower than the device's).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
dry=${DRY_DIR:-/tmp/gpu-dry}
carry=${CARRY_DIR:-.gpu-carry}
[ -d "$carry" ] || { echo "gpu-dry-run: no $carry: run tools/gpu-prepare.sh first" >&2; exit 1; }
rm -rf "$dry" && git clone -q "$(pwd)" "$dry" && cp -a "$carry" "$dry/.gpu-carry" || exit 1
echo "gpu-dry-run: $dry at $(git -C "$dry" rev-parse --short HEAD), $(du -sh "$dry/.gpu-carry" | cut -f1) carried"

# The files of the machine's own packages of the build dependencies (of PCRE2 only the development
# files: grep and much else here load its runtime library).
hidden_packages=$(dpkg-query -W -f='${Package}\n' 2>/dev/null |
    grep -E '^(libopenblas|libcjson|liblapack|libblas|libhdf5|pkgconf|pkg-config|libpkgconf|libpcre2-dev|libutf8proc)' | sort -u)
hide=$(mktemp)
# Links are left out: a bind mount over a link covers its target, and libpcre2-dev's libpcre2-8.so
# points at the runtime library that mount itself loads.
for p in $hidden_packages; do dpkg -L "$p" 2>/dev/null; done | while read -r f; do
    [ -f "$f" ] && [ ! -L "$f" ] && echo "$f"
done | sort -u >"$hide"
# Debian's alternatives for BLAS and LAPACK live outside the packages' lists.
ls /usr/lib/x86_64-linux-gnu/lib{blas,lapack}.so* /usr/include/x86_64-linux-gnu/cblas.h 2>/dev/null >>"$hide"

check=(env NO_GPU=1 DEPS=carried DEPS_LINK_ALL=1 JOBS="${JOBS:-2}" BUDGET_S="${BUDGET_S:-2400}" BUILD_TIMEOUT=2300 OUT_DIR="$dry/out"
    BUILD_DIR="$dry/build-gpu" "$dry/tools/gpu-check.sh")
if [ "$(id -u)" -eq 0 ] && unshare -m --propagation private true 2>/dev/null; then
    echo "gpu-dry-run: hiding $(wc -l <"$hide") files of: $(echo $hidden_packages | tr '\n' ' ')"
    unshare -m --propagation private bash -c '
        while read -r f; do mount --bind /dev/null "$f" || exit 1; done <"$1"
        shift
        pkg-config --version >/dev/null 2>&1 && { echo "gpu-dry-run: pkg-config still runs" >&2; exit 1; }
        [ -s /usr/include/hdf5/serial/hdf5.h ] && { echo "gpu-dry-run: hdf5.h still visible" >&2; exit 1; }
        [ -s /usr/include/pcre2.h ] && { echo "gpu-dry-run: pcre2.h still visible" >&2; exit 1; }
        "$@"' hide "$hide" "${check[@]}"
    rc=$?
else
    echo "gpu-dry-run: cannot hide the machine's packages (needs root and unshare -m): DEPS=carried alone"
    "${check[@]}"
    rc=$?
fi
rm -f "$hide"
summary="$dry/out/gpu-check-summary.txt"
[ -f "$summary" ] || { echo "gpu-dry-run: no summary written" >&2; exit 1; }
sed -n '1,/^$/p;/^stage/,/^$/p' "$summary"
status=$rc
for s in tests memcheck hf decode attention bench+probe; do
    grep -E -q "^${s//+/\\+} +skipped \(no GPU" "$summary" || { echo "gpu-dry-run: stage $s did not report skipped"; status=1; }
done
[ -x "$dry/build-gpu/mlatrain" ] || { echo "gpu-dry-run: no mlatrain was built"; exit 1; }
# Where the built program's libraries come from, with the carried loader path.
# shellcheck disable=SC1091
outside=$( (. "$dry/build-gpu/gpu-env.sh" && ldd "$dry/build-gpu/mlatrain") |
    grep -v -E "=> $dry/build-gpu/deps/|linux-vdso|ld-linux|lib(c|m|gcc_s|stdc\+\+|gomp|dl|rt|pthread|resolv|util)\.so|/cuda|libnccl|libcudart|libcublas")
if [ -n "$outside" ]; then
    echo "gpu-dry-run: libraries from outside the carried prefix (or not found):"
    echo "$outside"
    status=1
else
    echo "gpu-dry-run: every library of mlatrain resolves to the carried prefix, glibc, GCC's runtime or CUDA"
fi
exit $status
