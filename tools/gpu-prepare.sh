#!/usr/bin/env bash
# Fills .gpu-carry/ (ignored by git) with what tools/gpu-check.sh needs on a bare GPU machine that
# has no network and no apt: run on a Debian 12 machine with apt and mlatrain's dependencies.
#   debs/      the build dependencies' Debian packages and every shared library they load that a
#              bare Ubuntu/Debian with CUDA and a C compiler may lack (found by following the
#              libraries' DT_NEEDED entries until each is carried or is glibc, libgcc_s, libstdc++
#              or libgomp), plus pkgconf; unpacked there with dpkg-deb -x, never installed
#   include/   nccl.h, for a machine whose NCCL came as PyTorch's wheel without its header
#   bench/     the PyTorch baseline torch_distill.py (TORCH_BENCH, else tools/bench/ in this checkout,
#              else ../shared/bench/ beside it)
#   student/   a small MLA student trained here on the CPU and exported in DeepSeek-V2's HF layout,
#              its validation tokens, mlatrain's CPU loss on them, and stock transformers' logits of
#              the first window on the CPU (reference.json, logits.npy), for the HF stage
# Then prints the sizes against the device tool's 64 MiB (working tree and carried folders
# together) and exits non-zero when they do not fit.
#
# Environment (all optional):
#   CARRY_DIR    default .gpu-carry
#   BUILD_DIR    a CPU build of mlatrain to use or make (default build-prepare; -j2)
#   PYTHON       a python with torch, transformers, h5py and numpy for the reference logits
#                (default python3); without them the HF stage there compares losses only
#   STEPS        which parts, comma-separated: debs, include, bench, student (default all)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$(pwd)
carry=${CARRY_DIR:-.gpu-carry}
mkdir -p "$carry" || exit 1
carry=$(cd "$carry" && pwd)
steps=${STEPS:-debs,include,bench,student}
want() { [[ ",$steps," == *",$1,"* ]]; }
python=${PYTHON:-python3}

# What mlatrain's build needs from Debian (tools/install-deps.sh names the -dev packages), and
# what is assumed on any machine with a C compiler: the sonames of glibc, GCC's runtime and OpenMP.
SEED_PACKAGES=(pkgconf-bin libpkgconf3 libcjson-dev libcjson1 libopenblas-openmp-dev libopenblas0-openmp
    liblapacke-dev liblapacke libhdf5-dev libhdf5-103-1 libpcre2-dev libpcre2-8-0 libutf8proc-dev libutf8proc2)
BASE_SONAMES='^(libc|libm|libdl|librt|libpthread|libresolv|libutil|ld-linux-x86-64|libgcc_s|libstdc\+\+|libgomp)\.so'

fail() {
    echo "gpu-prepare: $*" >&2
    exit 1
}

if want debs; then
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || fail "debs: needs apt-get and dpkg-deb"
    debs="$carry/debs" scan="$carry/.scan"
    rm -rf "$debs" "$scan" && mkdir -p "$debs" "$scan" || exit 1
    packages=("${SEED_PACKAGES[@]}")
    declare -A have=()
    # Download, unpack into a scratch root, list the sonames the unpacked libraries need that
    # nothing unpacked provides, find the installed package holding each, repeat.
    for round in 1 2 3 4 5 6 7 8; do
        new=()
        for p in "${packages[@]}"; do [ -n "${have[$p]:-}" ] || new+=("$p"); done
        [ ${#new[@]} -eq 0 ] && break
        # (apt's warning that it downloads as root, not as _apt, is noise here)
        if ! (cd "$debs" && apt-get download -q "${new[@]}" >/dev/null 2>"$scan.err"); then
            cat "$scan.err"
            fail "debs: apt-get download ${new[*]} failed"
        fi
        grep -v "unsandboxed as root" "$scan.err"
        for p in "${new[@]}"; do
            have[$p]=1
            dpkg-deb -x "$(ls "$debs/${p}"_*.deb | head -n 1)" "$scan" || fail "debs: cannot unpack $p"
        done
        mapfile -t libs < <(find "$scan" -name '*.so*' -type f)
        provided=$(for l in "${libs[@]}"; do readelf -d "$l" 2>/dev/null | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p'; done | sort -u)
        needed=$(for l in "${libs[@]}"; do readelf -d "$l" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; done | sort -u)
        packages=()
        for so in $needed; do
            [[ "$so" =~ $BASE_SONAMES ]] && continue
            grep -qx "$so" <<<"$provided" && continue
            owner=$(dpkg -S "*/$so" 2>/dev/null | grep -v diversion | head -n 1 | cut -d: -f1)
            [ -n "$owner" ] || fail "debs: no installed package provides $so (needed by the carried libraries)"
            packages+=("$owner")
        done
        mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u | grep -v '^$')
        [ "$round" -eq 8 ] && fail "debs: the dependency closure did not settle"
    done
    # The newest glibc symbol version the carried libraries ask for: the device's glibc must be at
    # least that (Debian 12 builds ask for at most 2.34 or so; Ubuntu 22.04 has 2.35, 24.04 2.39).
    glibc=$(find "$scan" -name '*.so*' -type f -exec objdump -T {} \; 2>/dev/null | grep -o 'GLIBC_2\.[0-9]*' |
        sort -t. -k2 -n | tail -n 1)
    rm -rf "$scan" "$scan.err"
    printf '%s\n' "${!have[@]}" | sort >"$debs/packages.txt"
    echo "$glibc" >"$debs/glibc.txt"
    echo "gpu-prepare: debs: $(ls "$debs"/*.deb | wc -l) packages ($(du -sh "$debs" | cut -f1)), newest glibc symbol $glibc"
fi

if want include; then
    mkdir -p "$carry/include" || exit 1
    nccl=$(ls /usr/local/cuda/include/nccl.h /usr/include/nccl.h 2>/dev/null | head -n 1)
    if [ -n "$nccl" ]; then
        cp "$nccl" "$carry/include/" && echo "gpu-prepare: include: $nccl"
    else
        echo "gpu-prepare: include: no nccl.h here; the device's NCCL must bring its own header"
    fi
fi

if want bench; then
    src=${TORCH_BENCH:-}
    for candidate in tools/bench/torch_distill.py ../shared/bench/torch_distill.py; do
        [ -z "$src" ] && [ -f "$candidate" ] && src=$candidate
    done
    [ -n "$src" ] && [ -f "$src" ] || fail "bench: no PyTorch baseline torch_distill.py (set TORCH_BENCH)"
    mkdir -p "$carry/bench" && cp "$src" "$carry/bench/torch_distill.py" || exit 1
    echo "gpu-prepare: bench: $src"
fi

if want student; then
    build=${BUILD_DIR:-build-prepare}
    if [ ! -x "$build/mlatrain" ]; then
        cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMLATRAIN_CUDA=OFF >/dev/null &&
            cmake --build "$build" -j2 --target mlatrain >/dev/null || fail "student: building $build/mlatrain failed"
    fi
    mlatrain=$(cd "$build" && pwd)/mlatrain
    work=$(mktemp -d) || exit 1
    trap 'rm -rf "$work"' EXIT
    out="$carry/student"
    rm -rf "$out" && mkdir -p "$out" || exit 1
    "$mlatrain" data text README.md docs/*.md --out "$work/train.h5" --docs paragraph --val-out "$out/val.h5" \
        --val-fraction 0.1 >"$work/data.log" 2>&1 || { cat "$work/data.log"; fail "student: token files"; }
    # The 1B students' attention widths (q/k 96 = 64 + 32, v 64) on a small model, trained briefly
    # so that its logits are far from uniform.
    "$mlatrain" --config tools/gpu-student.json --set "data.train=$work/train.h5" --set "data.val=$out/val.h5" \
        --set "run.dir=$work/run" >"$work/train.log" 2>&1 || { tail -n 5 "$work/train.log"; fail "student: training"; }
    "$mlatrain" export --checkpoint "$work/run" --out "$out/hf" --dtype f32 >"$work/export.log" 2>&1 ||
        { cat "$work/export.log"; fail "student: export"; }
    # Evaluating the export itself (already MLA: no conversion); the device overrides the paths.
    cat >"$out/eval.json" <<'EOF'
{"run": {"dir": "runs/gpu-student-eval"}, "device": "cpu", "student": {"init_from": "hf"},
 "data": {"train": [], "val": ["val.h5"], "seq_len": 128}, "eval": {"max_windows": 8}}
EOF
    "$mlatrain" eval --config "$out/eval.json" --set "data.val=$out/val.h5" --set "student.init_from=$out/hf" \
        --json "$out/mlatrain-cpu.json" >"$work/eval.log" 2>&1 ||
        { cat "$work/eval.log"; fail "student: evaluation of the export"; }
    loss=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["student"]["loss"])' "$out/mlatrain-cpu.json")
    if "$python" -c 'import torch, transformers, h5py, numpy' 2>/dev/null; then
        "$python" tools/check-export-transformers.py "$out/hf" "$out/val.h5" "$loss" --seq 128 --windows 8 \
            --save-logits "$out/logits.npy" --json "$out/reference.json" || fail "student: transformers reference"
    else
        echo "gpu-prepare: student: $python lacks torch/transformers/h5py/numpy: no reference logits"
    fi
    echo "gpu-prepare: student: $(du -sh "$out" | cut -f1), mlatrain CPU loss $loss"
fi

# What the device tool sends: tracked files and untracked ones git does not ignore, plus the carry.
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
carried=$(du -sb "$carry" | cut -f1)
limit=$((64 * 1024 * 1024))
echo "gpu-prepare: working tree $((tree / 1024)) KiB + $(basename "$carry") $((carried / 1024)) KiB" \
    "= $(((tree + carried) / 1024)) KiB of the device tool's $((limit / 1024)) KiB"
[ $((tree + carried)) -le $limit ] || fail "too large to carry"
